"""`make course` machinery, on tiny notebooks made here (the real lessons run under nbval)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import course

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, *cells: str):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('import os\nPROFILE = os.environ.get("COURSE_PROFILE", "full")')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), params,
                *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def lessons(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "00_good.ipynb",
              "from course_lib import results, runtime\nPROFILE = runtime.check_profile(PROFILE)",
              "results.record('00', 'answer', 42, 'units', framework='numpy', key=True)\nprint(PROFILE)")
    _notebook(folder / "01_broken.ipynb", "x = 1", "raise RuntimeError('lesson bug here')", "y = 2")
    _notebook(folder / "02_after.ipynb", "from course_lib import results",
              "results.record('02', 'ran', 1, 'bool', framework='numpy')")
    (folder / "notes.ipynb").write_text("{}")  # not a lesson: ignored
    return folder


def test_find_lessons_in_order_and_filters(lessons):
    assert [p.name for p in course.find_lessons(lessons)] == [
        "00_good.ipynb", "01_broken.ipynb", "02_after.ipynb"]
    assert [p.name for p in course.find_lessons(lessons, ["2", "00"])] == [
        "00_good.ipynb", "02_after.ipynb"]
    with pytest.raises(ValueError, match=r"no lesson numbered \['07'\]"):
        course.find_lessons(lessons, ["07"])


@pytest.mark.slow
def test_course_keeps_going_names_failing_cell_and_exits_nonzero(lessons, tmp_path):
    out = tmp_path / "build"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COURSE_RESULTS_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "course_lib", "course", "--profile", "smoke",
         "--notebooks", str(lessons), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = proc.stdout
    assert "[1/3] 00_good" in text and "[3/3] 02_after" in text
    assert "RuntimeError: lesson bug here" in text and "starts \"raise RuntimeError" in text
    assert "answer[numpy]=42 units" in text  # key result in the summary
    assert "2 passed, 1 failed" in text
    # the lesson after the failure ran and recorded
    records = [json.loads(line) for line in (out / "results" / "02.jsonl").read_text().splitlines()]
    assert records[0]["metric"] == "ran" and records[0]["profile"] == "smoke"
    good = json.loads((out / "results" / "00.jsonl").read_text())
    assert good["profile"] == "smoke" and good["value"] == 42
    # executed notebooks, including the failing one with its error
    executed = nbformat.read(out / "notebooks" / "01_broken.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells if c.cell_type == "code"
               for o in c.outputs)
    smoke = nbformat.read(out / "notebooks" / "00_good.ipynb", as_version=4)
    assert any("smoke" in o.get("text", "") for c in smoke.cells if c.cell_type == "code"
               for o in c.outputs)
    # the site links every lesson and shows the results table
    index = (out / "site" / "index.html").read_text()
    for name in ("00_good", "01_broken", "02_after"):
        assert f"{name}.html" in index and (out / "site" / f"{name}.html").is_file()
    assert "answer" in index and "failed" in index
    assert not list((out / "site").glob(".*.tmp"))


@pytest.mark.slow
def test_bad_profile_parameter_fails_the_lesson_with_advice(lessons, tmp_path):
    run = course.run_lesson(lessons / "00_good.ipynb", tmp_path, profile="fast", timeout_s=120,
                            progress=False)
    assert run.status == "failed"
    assert "PROFILE must be one of" in run.error and "papermill" in run.error


def test_cli_rejects_bad_profile_and_lesson_before_running(lessons, tmp_path, capsys):
    from course_lib.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["course", "--profile", "quick", "--notebooks", str(lessons)])
    assert exc.value.code == 2
    assert "invalid choice: 'quick'" in capsys.readouterr().err
    assert main(["course", "--profile", "smoke", "--lessons", "09", "--notebooks", str(lessons),
                 "--out", str(tmp_path / "b")]) == 2
    assert "no lesson numbered ['09']" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
