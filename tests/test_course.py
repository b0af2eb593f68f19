"""`make course` machinery, on tiny notebooks made here (the real lessons run under nbval)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_tools import runner as course

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
        [sys.executable, "-m", "course_tools", "course", "--profile", "smoke",
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
    # the site (Sphinx): every lesson has a page linked from the front page, in order, the
    # failed one under a warning; the front page has the key results and the results table
    site = out / "site"
    index = (site / "index.html").read_text()
    positions = [index.find(f'href="{name}.html"') for name in ("00_good", "01_broken", "02_after")]
    assert -1 not in positions and positions == sorted(positions), positions
    for name in ("00_good", "01_broken", "02_after"):
        assert (site / f"{name}.html").is_file()
    assert "answer[numpy]=42 units" in index and "course-failed" in index
    assert "lesson bug here" in index and "Lesson 12 was not run" in index
    broken = (site / "01_broken.html").read_text()
    assert "failed" in broken and "RuntimeError" in broken and "papermill-error" not in broken
    assert (site / "_static" / "course.css").is_file() and (site / "search.html").is_file()
    assert not list(out.glob(".site-build-*"))  # the temporary build folder is gone
    assert "Site: " + str(site / "index.html") in text


@pytest.mark.slow
def test_bad_profile_parameter_fails_the_lesson_with_advice(lessons, tmp_path):
    run = course.run_lesson(lessons / "00_good.ipynb", tmp_path, profile="fast", timeout_s=120,
                            progress=False)
    assert run.status == "failed"
    assert "PROFILE must be one of" in run.error and "papermill" in run.error


def test_cli_rejects_bad_profile_and_lesson_before_running(lessons, tmp_path, capsys):
    from course_tools.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["course", "--profile", "quick", "--notebooks", str(lessons)])
    assert exc.value.code == 2
    assert "invalid choice: 'quick'" in capsys.readouterr().err
    assert main(["course", "--profile", "smoke", "--lessons", "09", "--notebooks", str(lessons),
                 "--out", str(tmp_path / "b")]) == 2
    assert "no lesson numbered ['09']" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def _run(lesson, name, status="ok", output=None, error=""):
    return course.LessonRun(lesson, name, status, 2.0, error, output)


def _executed(path: Path, *cells):
    """A notebook as papermill leaves it: cells are (source, tags, outputs) tuples."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "# 12 · Decision matrix\n\n[![Open In Colab](https://colab.research.google.com/assets/"
        "colab-badge.svg)](https://colab.research.google.com/github/someone/course/blob/v1/"
        "notebooks/12_decision_matrix.ipynb)")]
    for source, tags, outputs in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        cell.outputs = outputs
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_front_page_sources_matrix_badges_and_failed_lessons(tmp_path):
    from course_lib import results

    matrix = nbformat.v4.new_output("display_data", data={"text/html": "<table>ranking</table>",
                                                          "text/plain": "ranking"})
    lesson12 = _executed(tmp_path / "12.ipynb",
                         ("show(matrix)", ["front-page"], [matrix]),
                         ("print('untagged')", [], [nbformat.v4.new_output(
                             "stream", name="stdout", text="untagged")]))
    results.record("12", "score", 0.5, "1", framework="jax", key=True,
                   results_dir=tmp_path / "res")
    runs = [_run("00", "00_a", "failed", error="RuntimeError: no kernel"),
            _run("12", "12_decision_matrix", output=lesson12)]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "instructors.md").write_text("# Instructors\n")
    (docs / "about.md").write_text("# About\n")
    names = course.write_site_sources(runs, tmp_path / "src", tmp_path / "res", "smoke",
                                      docs_dir=docs)
    assert names == ["12_decision_matrix", "instructors", "about"]
    src = tmp_path / "src"
    assert (src / "conf.py").is_file() and (src / "_static" / "colab-badge.svg").is_file()
    page = (src / "12_decision_matrix.ipynb").read_text()
    assert "_static/colab-badge.svg" in page and "assets/colab-badge.svg" not in page
    index = nbformat.read(src / "index.ipynb", as_version=4)
    text = "\n".join(c.source for c in index.cells if c.cell_type == "markdown")
    assert "mybinder.org/v2/gh/someone/course/v1" in text and "_static/binder-badge.svg" in text
    assert "| 00 | a | <span class=\"course-failed\">failed</span> (no page" in text
    assert "RuntimeError: no kernel" in text and "[Decision matrix](12_decision_matrix.ipynb)" in text
    assert "12_decision_matrix\n```" in text and "instructors\nabout\n```" in text
    shown = [c for c in index.cells if c.cell_type == "code"]
    assert shown[0].source == "show(matrix)" and shown[0].outputs[0]["data"]["text/plain"] == "ranking"
    assert all("remove-input" in c.metadata["tags"] for c in shown)
    assert "untagged" not in str(index)  # untagged cells stay in the lesson
    assert "score" in shown[-1].outputs[0]["data"]["text/html"]  # the results summary


def test_front_page_says_when_lesson_12_did_not_run_or_failed(tmp_path):
    index = course.front_page([_run("00", "00_a")], {"00": "00_a"}, {}, tmp_path, "full", [])
    text = "\n".join(c.source for c in index.cells)
    assert "Lesson 12 was not run" in text and "No results were recorded" in text
    index = course.front_page([_run("12", "12_x", "failed", error="KeyError: 'w'")], {}, {},
                              tmp_path, "full", [])
    text = "\n".join(c.source for c in index.cells)
    assert "Lesson 12 failed in this run: KeyError: &#x27;w&#x27;" in text


@pytest.mark.slow
def test_failed_sphinx_build_leaves_the_previous_site(tmp_path, monkeypatch):
    broken = tmp_path / "site-files"
    import shutil

    shutil.copytree(course.SITE_FILES, broken)
    (broken / "conf.py").write_text("raise RuntimeError('conf is broken')\n")
    monkeypatch.setattr(course, "SITE_FILES", broken)
    site = tmp_path / "build" / "site"
    site.mkdir(parents=True)
    (site / "index.html").write_text("previous site")
    with pytest.raises(course.SiteError, match="conf is broken"):
        course.build_site([_run("00", "00_a")], site, tmp_path / "res", "smoke")
    assert (site / "index.html").read_text() == "previous site"
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["site"]  # no leftovers


def test_run_course_reports_a_site_that_could_not_be_built(lessons, tmp_path, monkeypatch,
                                                           capsys):
    def fake_lesson(path, out_dir, **kwargs):
        return _run(path.name[:2], path.stem, output=None)

    def broken_site(*args, **kwargs):
        raise course.SiteError("Sphinx failed (exit status 2):\nboom")

    monkeypatch.setattr(course, "run_lesson", fake_lesson)
    monkeypatch.setattr(course, "build_site", broken_site)
    status = course.run_course(lessons, tmp_path / "out", profile="smoke", progress=False)
    captured = capsys.readouterr()
    assert status == 1
    assert "3 passed, 0 failed" in captured.out and "Site: NOT BUILT (Sphinx failed" in captured.out
    assert "The site could not be built" in captured.err and "boom" in captured.err
