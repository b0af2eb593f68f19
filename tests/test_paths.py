"""course_lib.paths.write_text_atomic: the one way the course writes a file others read."""

import os

import pytest

from course_lib import paths


def test_writes_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "status.json"
    assert paths.write_text_atomic(target, "one") == target
    paths.write_text_atomic(target, "two ü")
    assert target.read_text(encoding="utf-8") == "two ü"
    assert sorted(p.name for p in target.parent.iterdir()) == ["status.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "grades.csv"
    target.write_text("old", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        paths.write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["grades.csv"]
