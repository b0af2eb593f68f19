"""Shared fixtures: every unit test writes results to its own temporary folder."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch, request):
    if request.node.fspath.ext == ".ipynb":  # nbval items: results go where make test says
        return
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
