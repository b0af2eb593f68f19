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


# Parallel runs use `pytest -n 2 --dist loadgroup`. Every item gets an xdist group: the cells of
# one notebook (nbval) stay together on one worker, as do the tests of one module (or class);
# the slow lesson re-runs of test_lesson_variants.py each get their own group, so that they are
# spread over the workers instead of running one after another.
# tryfirst: xdist's own hook turns the markers into node-id suffixes, so ours must run before it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.path.name == "test_lesson_variants.py":
            group = item.nodeid
        elif item.path.suffix == ".ipynb":
            group = "nb-" + item.path.stem
        else:
            cls = getattr(item, "cls", None)
            group = f"{item.path}::{cls.__name__}" if cls else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """Fail loudly if xdist did not apply the groups (a notebook split over workers fails
    cell by cell with NameErrors: seen with pytest 9.x and xdist 3.8, whose suffix pytest 9
    ignores)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not apply --dist loadgroup to {len(ungrouped)} tests (e.g. "
            f"{ungrouped[0]}): the cells of one notebook would run on different workers. "
            f"Install the versions in requirements.lock (pytest {pytest.__version__} is "
            "installed; the course needs pytest<9 with pytest-xdist 3.8).")
