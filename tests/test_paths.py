"""course_lib.paths.write_text_atomic: the one way the course writes a file others read."""

import os
import re
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parent.parent
# Where the project's own code, commands and notebooks live (not the build outputs).
SCANNED = [*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("course_tools/**/*.py"),
           *ROOT.glob("tools/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("notebooks/*.ipynb"),
           *ROOT.glob("student/*.ipynb"), ROOT / "Makefile", *ROOT.glob(".ci/*")]
VARIABLE = re.compile(r"\b(?:COURSE|GRADER)_[A-Z0-9_]*[A-Z0-9]\b")


def _variables_used() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for path in SCANNED:
        if path.is_file() and path.name != "paths.py" and path.name != "test_paths.py":
            for name in set(VARIABLE.findall(path.read_text(encoding="utf-8", errors="replace"))):
                used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return used


def test_every_environment_variable_read_is_in_the_address_book():
    unlisted = {name: files for name, files in _variables_used().items()
                if name not in paths.ENVIRONMENT}
    assert not unlisted, f"add these to course_lib.paths.ENVIRONMENT: {unlisted}"


def test_every_variable_in_the_address_book_is_used():
    unused = set(paths.ENVIRONMENT) - set(_variables_used())
    assert not unused, f"listed in course_lib.paths.ENVIRONMENT but read nowhere: {unused}"


def test_folder_rules_follow_the_environment_then_the_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "course"
    (checkout / "course_lib").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("", encoding="utf-8")
    (checkout / "notebooks" / "sub").mkdir(parents=True)
    monkeypatch.chdir(checkout / "notebooks" / "sub")
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    monkeypatch.delenv("COURSE_REFERENCE_DIR", raising=False)
    assert paths.course_root() == checkout
    assert paths.results_dir() == checkout / "build" / "results"
    assert paths.reference_dir() == checkout / "results" / "reference"
    assert paths.lesson_build_dir("11") == checkout / "build" / "lesson11"
    assert (checkout / "build" / "lesson11").is_dir()
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("COURSE_REFERENCE_DIR", str(tmp_path / "refs"))
    assert paths.results_dir() == tmp_path / "elsewhere"
    assert paths.reference_dir() == tmp_path / "refs"
    assert paths.results_dir(tmp_path / "given") == tmp_path / "given"


def test_a_second_process_running_the_same_lesson_gets_a_folder_of_its_own(tmp_path):
    checkout = tmp_path / "course"
    (checkout / "course_lib").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("", encoding="utf-8")
    claim = ("import sys; from course_lib import paths; "
             f"print(paths.lesson_build_dir('07', root={str(checkout)!r}), flush=True); "
             "sys.stdin.read()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", claim], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert Path(holder.stdout.readline().strip()) == checkout / "build" / "lesson07"
        second = subprocess.run([sys.executable, "-c", claim], input="", capture_output=True,
                                text=True, env=env, check=True).stdout.strip()
        assert Path(second).parent == checkout / "build"
        assert Path(second).name.startswith("lesson07-") and Path(second).is_dir()
    finally:
        holder.communicate("")
    # the holder has ended, so its claim went with it: the next run gets the usual folder
    third = subprocess.run([sys.executable, "-c", claim], input="", capture_output=True,
                           text=True, env=env, check=True).stdout.strip()
    assert Path(third) == checkout / "build" / "lesson07"


def test_outside_a_checkout_a_lesson_gets_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = paths.lesson_build_dir("10")
    assert folder.is_dir() and folder.name.startswith("course-lesson10-")
    assert tmp_path not in folder.parents
    folder.rmdir()
    with pytest.raises(ValueError, match="short id"):
        paths.lesson_build_dir("../10")


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    new = paths.write_text_atomic(tmp_path / "MANIFEST.json", "{}")
    umask = os.umask(0o022)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    new.chmod(0o640)
    paths.write_text_atomic(new, "{ }")
    assert new.stat().st_mode & 0o777 == 0o640
