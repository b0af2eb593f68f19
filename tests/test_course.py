"""`make course` machinery, on tiny notebooks made here (the real lessons run under nbval)."""

import json
import os
import re
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
    assert "\r" not in text and not proc.stderr  # not a terminal: plain lines; kernels quiet
    (logs,) = (out / "logs").iterdir()
    assert f"log: {logs / '01_broken.log'}" in text and f"Logs: {logs}" in text
    assert "Traceback" in (logs / "01_broken.log").read_text()
    assert "exit status 0" in (logs / "site.log").read_text()
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
    # the key result as a chart whose alt text states it (issue 18 item 4: charts, not strings)
    assert 'alt="Key results of lesson 00. answer in units: numpy 42."' in index
    assert (site / "_static" / "charts" / "lesson-00.svg").is_file() and "course-failed" in index
    assert "lesson bug here" in index and "Lesson 12 was not run" in index
    broken = (site / "01_broken.html").read_text()
    assert "failed" in broken and "RuntimeError" in broken and "papermill-error" not in broken
    assert (site / "_static" / "course.css").is_file() and (site / "search.html").is_file()
    assert not list(out.glob(".site-build-*"))  # the temporary build folder is gone
    assert "Site: " + str(site / "index.html") in text


@pytest.mark.slow
def test_bad_profile_parameter_fails_the_lesson_with_advice(lessons, tmp_path):
    run = course.run_lesson(lessons / "00_good.ipynb", tmp_path, profile="fast", timeout_s=120)
    assert run.status == "failed"
    assert "PROFILE must be one of" in run.error and "papermill" in run.error
    assert run.log == tmp_path / "00_good.log" and "PROFILE must be one of" in run.log.read_text()


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
    # lessons first, then docs/ (instructors first); pages the site adds itself (the claims
    # register) come after
    assert names[:3] == ["12_decision_matrix", "instructors", "about"]
    src = tmp_path / "src"
    assert (src / "conf.py").is_file() and (src / "_static" / "colab-badge.svg").is_file()
    page = (src / "12_decision_matrix.ipynb").read_text()
    assert "_static/colab-badge.svg" in page and "assets/colab-badge.svg" not in page
    index = nbformat.read(src / "index.ipynb", as_version=4)
    text = "\n".join(c.source for c in index.cells if c.cell_type == "markdown")
    assert "mybinder.org/v2/gh/someone/course/v1" in text and "_static/binder-badge.svg" in text
    assert "| 00 | a | <span class=\"course-failed\">failed</span> (no page" in text
    assert "RuntimeError: no kernel" in text and "[Decision matrix](12_decision_matrix.ipynb)" in text
    assert "12_decision_matrix\n```" in text and "\ninstructors\nabout\n" in text
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
    _restore_course_environment(monkeypatch)
    status = course.run_course(lessons, tmp_path / "out", profile="smoke", progress=False)
    captured = capsys.readouterr()
    assert status == 1
    assert "3 passed, 0 failed" in captured.out and "Site: NOT BUILT (Sphinx failed" in captured.out
    assert "The site could not be built" in captured.err and "boom" in captured.err


def _restore_course_environment(monkeypatch, run_id="testrun0001"):
    """run_course sets these for the kernels; give them back after the test."""
    monkeypatch.setenv("COURSE_RUN_ID", run_id)
    for name in ("COURSE_RESULTS_DIR", "COURSE_PROFILE"):
        monkeypatch.setenv(name, "unset by the test")


@pytest.mark.slow
def test_terminal_gets_one_line_per_lesson_and_the_logs_get_the_noise(tmp_path, monkeypatch,
                                                                        capfd):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "00_noisy.ipynb",
              # what TensorFlow's C++ code does: write to file descriptor 2 directly
              "import os, warnings\nos.write(2, b'oneDNN NOISE from C++\\n')\n"
              "warnings.warn('FRAMEWORK WARNING noise')\nprint('cell output text')",
              "from course_lib import results\n"
              "results.record('00', 'answer', 42, 'units', framework='numpy', key=True)")
    _notebook(folder / "01_broken.ipynb",
              "import sys\nprint('BROKEN STDERR NOISE', file=sys.stderr)",
              "raise RuntimeError('lesson bug here')")
    built = []
    monkeypatch.setattr(course, "build_site",
                        lambda runs, site_dir, *a, **k: built.append(runs) or site_dir / "index.html")
    _restore_course_environment(monkeypatch)
    out = tmp_path / "build"
    status = course.run_course(folder, out, profile="smoke", progress=False)
    captured = capfd.readouterr()
    assert status == 1
    (logs,) = (out / "logs").iterdir()
    assert logs.name.endswith("-testrun0001")
    lines = captured.out.splitlines()
    expected = ["Course: 2 lessons, profile 'smoke', on CPU: ",
                "[1/2] 00_noisy   ok ", "[2/2] 01_broken  FAILED ", "", "Summary (1 passed, 1 failed",
                "  00_noisy   ok ", "  01_broken  failed ", f"Site: {out / 'site' / 'index.html'}",
                f"Logs: {logs}", f"Results: {out / 'results'} (1 record); notebooks: "]
    assert len(lines) == len(expected), captured.out
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert lines[1].endswith(" answer[numpy]=42 units") and lines[5].endswith(" answer[numpy]=42 units")
    broken = logs / "01_broken.log"
    for line in (lines[2], lines[6]):
        assert "RuntimeError: lesson bug here" in line and line.endswith(f"(log: {broken})")
    assert "\r" not in captured.out and captured.err == ""
    for noise in ("oneDNN NOISE", "FRAMEWORK WARNING", "BROKEN STDERR", "cell output text",
                  "Kernel is running over TCP"):
        assert noise not in captured.out + captured.err
    noisy = (logs / "00_noisy.log").read_text()
    assert "oneDNN NOISE from C++" in noisy and "UserWarning: FRAMEWORK WARNING noise" in noisy
    assert "cell output text" in noisy and "===== ok in" in noisy
    text = broken.read_text()
    assert "BROKEN STDERR NOISE" in text and "Traceback" in text and "===== failed in" in text
    assert [r.log for r in built[0]] == [logs / "00_noisy.log", broken]


def test_progress_bar_draws_on_the_terminal_stream_and_erases_itself():
    import io

    stream = io.StringIO()
    with course._progress_bar(stream, "[1/2] 00_x", True) as update:
        update(3, 10)
    frames = stream.getvalue().split("\r")
    assert any(f.startswith("[1/2] 00_x: 3/10 cells |") for f in frames), frames
    assert frames[-1] == "" and not frames[-2].strip()  # the last frame blanks the line
    quiet = io.StringIO()
    with course._progress_bar(quiet, "[1/2] 00_x", False) as update:
        update(3, 10)
    assert quiet.getvalue() == ""


def test_a_bug_in_the_site_code_still_prints_the_summary(lessons, tmp_path, monkeypatch, capsys):
    def fake_lesson(path, out_dir, **kwargs):
        return _run(path.name[:2], path.stem, output=None)

    def buggy_site(*args, **kwargs):
        raise NameError("name 'paths' is not defined")

    monkeypatch.setattr(course, "run_lesson", fake_lesson)
    monkeypatch.setattr(course, "build_site", buggy_site)
    _restore_course_environment(monkeypatch)
    assert course.run_course(lessons, tmp_path / "out", profile="smoke", progress=False) == 1
    out = capsys.readouterr().out
    (logs,) = (tmp_path / "out" / "logs").iterdir()
    assert "3 passed, 0 failed" in out
    assert (f"Site: NOT BUILT (NameError: name 'paths' is not defined; see {logs / 'site.log'})"
            in out)
    assert "Traceback" in (logs / "site.log").read_text()


def test_front_page_draws_key_results_as_charts_with_alt_text(tmp_path):
    """Issue 18 item 4: per lesson the prerequisites, reading and running time, and the key
    results as a small chart whose alt text states the values; text when nothing was recorded."""
    from course_lib import results
    from course_tools import plan

    res = tmp_path / "res"
    for framework, accuracy, seconds in (("torch", 0.9667, 1.25), ("jax", 0.8861, 2.5)):
        results.record("02", "test_accuracy", accuracy, "fraction", framework=framework,
                       mode="eager", key=True, results_dir=res)
        results.record("02", "fit_time", seconds, "s", framework=framework, mode="eager",
                       key=True, results_dir=res)
    results.record("02", "not_a_headline", 7, "s", framework="torch", results_dir=res)
    runs = [_run("00", "00_a"), _run("02", "02_b"), _run("03", "03_c", "failed",
                                                         error="RuntimeError: boom")]
    plans = {"02": plan.LessonPlan("02", (plan.Prerequisite("00", "seeding"),), ("x",), "m",
                                   (plan.Link("Docs", "https://docs.python.org/3/"),))}
    times = [plan.Timing("02", "smoke", "course", "CPU: T (2 cores); GPU: none", 95.0,
                         "2026-12-03")]
    counts = {"02": plan.Counts(prose=238 * 4, code=50 * 3)}
    charts = tmp_path / "src" / course.CHARTS_DIR
    index = course.front_page(runs, {"00": "00_a", "02": "02_b"}, {}, res, "smoke", [],
                              charts_dir=charts, plans=plans, times=times, counts=counts)
    table = next(c.source for c in index.cells if "## The lessons" in c.source)
    row = next(line for line in table.splitlines() if line.startswith("| 02 |"))
    assert "| [00](00_a.ipynb) |" in row  # builds on lesson 00, linked
    assert re.sub(r"<span[^>]*>|</span>", "", row).count(
        "| this run: 2 s<br/>reading: about 7 min<br/>smoke: 1 min 35 s (T (2 cores), no GPU)"
        "<br/>full: not measured yet |") == 1
    assert '<img src="_static/charts/lesson-02.svg"' in row
    alt = re.search(r'alt="([^"]*)"', row).group(1)
    assert alt == ("Key results of lesson 02. test_accuracy in fraction: torch/eager 0.967, "
                   "jax/eager 0.886; fit_time in s: torch/eager 1.25, jax/eager 2.5.")
    assert "not_a_headline" not in row and "test_accuracy[" not in row  # a chart, not a string
    svg = (charts / "lesson-02.svg").read_text()
    assert svg.startswith("<?xml") and "test_accuracy" in svg and "torch/eager" in svg
    assert "0.967" in svg and "2.5" in svg  # the values are printed on the bars
    assert not (charts / "lesson-00.svg").exists()  # nothing recorded: no chart ...
    assert "| no key result recorded |" in next(
        line for line in table.splitlines() if line.startswith("| 00 |"))  # ... but text
    failed = next(line for line in table.splitlines() if line.startswith("| 03 |"))
    assert "RuntimeError: boom" in failed and "<img" not in failed
    # without a folder for charts, the text of the key results stays
    text = course.front_page(runs, {}, {}, res, "smoke", [])
    assert "test_accuracy[torch/eager]=0.9667 fraction" in "\n".join(c.source for c in text.cells)


def test_small_bars_prints_values_and_refuses_bad_input():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from course_lib import plotting

    ax = Figure().subplots()
    plotting.small_bars({"a": 1e-6, "b": 2e-3}, unit="s", title="latency", ax=ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert [t.get_text() for t in ax.texts] == ["1e-06", "0.002"]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "s"  # values 2000x apart
    ax = Figure().subplots()
    plotting.small_bars({"a": 0.0, "b": 0.5}, unit="fraction", ax=ax)
    assert ax.get_xscale() == "linear"
    for values, message in (({}, "at least one"), ({"a": float("nan")}, "finite"),
                            ({"a": "x"}, "must be a number")):
        with pytest.raises(ValueError, match=message):
            plotting.small_bars(values, unit="s", ax=Figure().subplots())
    with pytest.raises(ValueError, match="logx needs values > 0"):
        plotting.small_bars({"a": 0.0}, unit="s", logx=True, ax=Figure().subplots())
