"""Plan the lesson (issue 18 item 4): data/lessons.toml, reading and running times, the
generated Plan block and summary cell of every lesson (course_tools.plan)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from course_lib import colab, results
from course_tools import plan
from course_tools import runner as course

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
#: The projects' own documentation sites (issue 18: official docs of every API used).
OFFICIAL = {"keras.io", "docs.jax.dev", "docs.pytorch.org", "www.tensorflow.org",
            "scikit-learn.org", "onnxruntime.ai", "onnx.ai", "optax.readthedocs.io",
            "flax.readthedocs.io", "xgboost.readthedocs.io", "ai.google.dev",
            "docs.python.org", "pandas.pydata.org", "matplotlib.org"}

GOOD = """
[lessons."00"]
prerequisites = []
concepts = ["Python"]
measured = "what 00 measures"
[[lessons."00".reading]]
title = "Docs"
url = "https://docs.python.org/3/"

[lessons."01"]
prerequisites = [{lesson = "00", for = "seeding"}]
concepts = ["splits", "MLPs"]
measured = \"\"\"
line one
line two
\"\"\"
[[lessons."01".reading]]
title = "scikit-learn: cross-validation"
url = "https://scikit-learn.org/stable/modules/cross_validation.html"
api = "sklearn.model_selection.cross_val_score"
"""


def _toml(tmp_path, text=GOOD):
    path = tmp_path / "lessons.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _lesson(folder: Path, name: str, *cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = list(cells)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


def _tiny_course(tmp_path) -> Path:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    folder = tmp_path / "notebooks"
    for name, title in (("00_start.ipynb", "00 · Start"), ("01_next.ipynb", "01 · Next")):
        badge = colab.badge_markdown(name)
        _lesson(folder, name, md(f"# {title}\n\n{badge}\n\n**What you will learn**\n\n- x"),
                code(colab.setup_cell_source(name)),
                code('PROFILE = "full"', metadata={"tags": ["parameters"]}),
                md("one two three four"), code("x = 1  # five words here"),
                md("## What we measured"))
    return folder


# ------------------------------------------------------------------------- the real data
def test_every_lesson_has_a_plan_with_earlier_prerequisites_and_official_links():
    plans = plan.load_plans()
    lessons = sorted(p.name[:2] for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(plans) == lessons
    for lesson, entry in plans.items():
        assert all(p.lesson < lesson for p in entry.prerequisites), lesson
        assert 2 <= len(entry.measured.split()) and len(entry.reading) >= 3, lesson
        for link in entry.reading:
            assert urlsplit(link.url).netloc in OFFICIAL, (lesson, link.url)


def test_the_lessons_blocks_match_the_data():
    """Like the student edition's drift check: regenerate and compare, write nothing."""
    problems = plan.drift(NOTEBOOKS)
    assert problems == [], ("the plan blocks are out of date; run: python -m course_tools "
                            f"plan && python -m course_tools student: {problems}")


def test_every_lesson_shows_plan_times_and_ends_with_summary_and_reading():
    plans = plan.load_plans()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first, last = nb.cells[0].source, nb.cells[-1].source
        assert plan.PLAN_START in first and "**Reading time:**" in first, path.name
        assert "**Running time**" in first and "full profile:" in first, path.name
        for p in plans[path.name[:2]].prerequisites:
            target = next(NOTEBOOKS.glob(f"{p.lesson}_*.ipynb")).name
            assert f"]({target})" in first, (path.name, p.lesson)
        assert last.startswith(plan.END_START) and "**Further reading**" in last, path.name
        for link in plans[path.name[:2]].reading:
            assert f"]({link.url})" in last


def test_the_times_table_is_what_the_code_writes():
    times = plan.load_times()
    assert plan.TIMES_FILE.read_text(encoding="utf-8") == json.dumps(
        json.loads(plan.TIMES_FILE.read_text(encoding="utf-8")), indent=1) + "\n"
    for t in times:
        assert t.profile in plan.PROFILES and t.seconds > 0 and t.hardware, t


@pytest.mark.slow
def test_every_named_api_exists_in_the_installed_packages():
    """The further-reading links name the API they document; a renamed or removed API in the
    locked versions fails here (imports every framework: slow)."""
    code = (
        "import importlib, json, sys\n"
        "from course_tools import plan\n"
        "bad = []\n"
        "for lesson, p in plan.load_plans().items():\n"
        "    for link in p.reading:\n"
        "        if not link.api: continue\n"
        "        parts = link.api.split('.')\n"
        "        try:\n"
        "            obj = importlib.import_module(parts[0])\n"
        "            for i, attr in enumerate(parts[1:], 1):\n"
        "                try: obj = getattr(obj, attr)\n"
        "                except AttributeError:\n"
        "                    obj = importlib.import_module('.'.join(parts[:i + 1]))\n"
        "        except Exception as exc: bad.append([lesson, link.api, repr(exc)])\n"
        "print(json.dumps(bad))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------------- validation
def test_load_plans_reads_a_good_file(tmp_path):
    plans = plan.load_plans(_toml(tmp_path))
    assert list(plans) == ["00", "01"]
    assert plans["01"].prerequisites == (plan.Prerequisite("00", "seeding"),)
    assert plans["01"].measured == "line one\nline two"
    assert plans["01"].reading[0].api == "sklearn.model_selection.cross_val_score"


@pytest.mark.parametrize("old, new, message", [
    ('{lesson = "00", for = "seeding"}', '{lesson = "02", for = "x"}', "not an earlier lesson"),
    ('{lesson = "00", for = "seeding"}', '{lesson = "00"}', "each prerequisite is"),
    ('url = "https://docs.python.org/3/"', 'url = "http://docs.python.org/3/"', "not an https"),
    ('concepts = ["Python"]', 'concepts = []', "concepts must be a non-empty list"),
    ('measured = "what 00 measures"', 'measured = ""', "measured must be"),
    ('lessons."01"', 'lessons."1"', "two digits"),
    ('concepts = ["splits", "MLPs"]', 'concepts = ["splits"]\ncolour = "red"', "unknown field"),
    ('api = "sklearn.model_selection.cross_val_score"', 'api = "not a name"', "dotted name"),
    ('title = "Docs"', 'title = "Docs"\n', None),  # harmless: still valid
])
def test_bad_plans_are_refused_with_what_to_fix(tmp_path, old, new, message):
    path = _toml(tmp_path, GOOD.replace(old, new))
    if message is None:
        assert plan.load_plans(path)
        return
    with pytest.raises(plan.PlanError, match=message):
        plan.load_plans(path)


def test_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(plan.PlanError, match="is missing"):
        plan.load_plans(tmp_path / "none.toml")
    with pytest.raises(plan.PlanError, match="not valid TOML"):
        plan.load_plans(_toml(tmp_path, "[lessons\n"))
    duplicate = GOOD.replace('title = "Docs"\nurl = "https://docs.python.org/3/"',
                             'title = "Docs"\nurl = "https://docs.python.org/3/"\n'
                             '[[lessons."00".reading]]\ntitle = "Again"\n'
                             'url = "https://docs.python.org/3/"')
    with pytest.raises(plan.PlanError, match="listed twice"):
        plan.load_plans(_toml(tmp_path, duplicate))


# -------------------------------------------------------------------------- reading time
def test_word_counts_leave_out_setup_answers_tests_and_the_generated_blocks():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        md(f"# 00 · T\n\n{plan.PLAN_START}\nmany words in the plan\n{plan.PLAN_END}\n\nfour "
           "words of prose"),
        code(colab.setup_cell_source("00_t.ipynb")),
        code("a = 1  # six words", metadata={"tags": ["parameters"]}),
        code("secret answer words", metadata={"tags": ["solution"]}),
        code("assert hidden", metadata={"tags": ["tests"]}),
        md(f"{plan.END_START}\nsummary words\n{plan.END_END}"),
    ])
    counts = plan.word_counts(nb)
    assert counts == plan.Counts(prose=4 + 4, code=6)  # "# 00 · T" is 4 words


@pytest.mark.parametrize("prose, code, minutes", [
    (238, 0, 1), (238 * 3, 50 * 4, 7), (238 * 10, 50 * 20, 30), (238 * 12, 50 * 50, 60)])
def test_reading_time_is_computed_from_the_rates(prose, code, minutes):
    text = plan.reading_time(plan.Counts(prose, code))
    assert text.startswith(f"about {minutes} min:")
    assert f"at {plan.PROSE_WPM} words/min" in text and "Brysbaert 2019" in text
    assert f"at {plan.CODE_WPM} words/min (an assumption" in text


# -------------------------------------------------------------------------- running time
def _runs_file(folder: Path, entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / plan.RUNS_FILE).write_text(json.dumps(entries), encoding="utf-8")
    return folder


def _entry(lesson, seconds, date="2026-12-01", status="ok", profile="smoke", run_id="r1",
           hardware="CPU: Test (2 cores); GPU: none"):
    return {"lesson": lesson, "name": f"{lesson}_x", "status": status, "seconds": seconds,
            "profile": profile, "lane": "course", "hardware": hardware, "date": date,
            "run_id": run_id}


def test_update_times_keeps_passed_lessons_newest_per_profile_and_hardware(tmp_path):
    table = tmp_path / "lesson-times.json"
    first = _runs_file(tmp_path / "run1", [
        _entry("00", 61.0), _entry("01", 5.0, status="failed"),
        _entry("01", 300.0, profile="full")])
    changed = plan.update_times(first, table)
    assert sorted((t.lesson, t.profile, t.seconds) for t in changed) == [
        ("00", "smoke", 61.0), ("01", "full", 300.0)]
    older = _runs_file(tmp_path / "old", [_entry("00", 99.0, date="2026-11-01", run_id="r0")])
    assert plan.update_times(older, table) == []  # an older run never replaces a newer one
    same_day = _runs_file(tmp_path / "again", [_entry("00", 70.0), _entry("00", 61.5)])
    assert [t.seconds for t in plan.update_times(same_day, table)] == [70.0, 61.5]
    assert [t.seconds for t in plan.load_times(table) if t.lesson == "00"] == [61.5]  # the last
    newer = _runs_file(tmp_path / "run2", [
        _entry("00", 58.5, date="2026-12-02", run_id="r2"),
        _entry("00", 20.0, date="2026-12-02", run_id="r2", hardware="CPU: X; GPU: H200")])
    assert len(plan.update_times(newer, table)) == 2
    times = plan.load_times(table)
    assert sorted((t.lesson, t.profile, t.seconds) for t in times) == [
        ("00", "smoke", 20.0), ("00", "smoke", 58.5), ("01", "full", 300.0)]
    lines = plan.running_times("00", times)
    assert lines[0] == "smoke profile: 58 s on Test (2 cores), no GPU, measured 2026-12-02"
    assert lines[1] == "smoke profile: 20 s on X, GPU: H200, measured 2026-12-02"
    assert lines[-1] == "full profile: not measured yet"
    assert plan.running_times("01", times)[0] == "smoke profile: not measured yet"
    busy = plan.Timing("05", "full", "course", "CPU: T (2 cores); GPU: none", 30, "2026-12-03",
                       load_average=5.5)
    assert plan.running_times("05", [busy])[1] == (
        "full profile: 30 s on T (2 cores), no GPU, measured 2026-12-03, load average 5.5 as it "
        "ended (more than its 2 cores: the lesson shared the CPU, a quiet machine is faster)")


def test_update_times_reads_the_colab_lane_summary(tmp_path):
    lane = tmp_path / "colab"
    (lane / "runs" / "tpu" / "04" / "results").mkdir(parents=True)
    (lane / "runs" / "tpu" / "04" / "results" / "04.jsonl").write_text(json.dumps(
        {"device": "CPU: Lane (2 cores); GPU: none", "timestamp": "2026-11-30T10:00:00+00:00",
         "run_id": "lane1"}) + "\n")
    (lane / "summary.json").write_text(json.dumps({"lessons": [
        {"variant": "tpu", "lesson": "04", "seconds": 80.5, "status": "passed"},
        {"variant": "gpu", "lesson": "05", "seconds": 9.0, "status": "failed"}]}))
    changed = plan.update_times(lane, tmp_path / "t.json")
    assert [(t.lesson, t.lane, t.seconds, t.date, t.hardware) for t in changed] == [
        ("04", "colab-tpu", 80.5, "2026-11-30T10:00:00", "CPU: Lane (2 cores); GPU: none")]
    assert "Colab lane" in plan.running_times("04", changed)[0]


def test_update_times_refuses_folders_and_files_it_cannot_read(tmp_path):
    with pytest.raises(plan.PlanError, match="no lesson-runs.json"):
        plan.update_times(tmp_path, tmp_path / "t.json")
    (tmp_path / plan.RUNS_FILE).write_text("[{\"lesson\": \"00\", \"status\": \"ok\"}]")
    with pytest.raises(plan.PlanError, match="cannot read"):
        plan.update_times(tmp_path, tmp_path / "t.json")
    bad = tmp_path / "broken.json"
    bad.write_text("{\"times\": 3}")
    with pytest.raises(plan.PlanError, match="never by hand"):
        plan.load_times(bad)


def test_the_runner_records_each_lessons_time_beside_the_results(tmp_path):
    res = tmp_path / "results"
    results.record("00", "answer", 1, "u", framework="numpy", results_dir=res)
    for status, seconds in (("ok", 12.34), ("failed", 3.0)):
        run = course.LessonRun("00", "00_a", status, seconds)
        course.record_lesson_time(res, run, profile="smoke", run_id="abc", hardware="CPU: T")
    entries = json.loads((res / plan.RUNS_FILE).read_text())
    assert [(e["status"], e["seconds"], e["profile"], e["hardware"]) for e in entries] == [
        ("ok", 12.3, "smoke", "CPU: T"), ("failed", 3.0, "smoke", "CPU: T")]
    assert len(results.read_results(res)) == 1  # the timing file is not a record
    times = plan.read_runs(res)
    assert [(t.lesson, t.seconds) for t in times] == [("00", 12.3)]
    (res / plan.RUNS_FILE).write_text("{broken")
    course.record_lesson_time(res, run, profile="smoke", run_id="abc", hardware="CPU: T")
    assert (res / (plan.RUNS_FILE + ".bad")).read_text() == "{broken"  # kept, not lost
    assert len(json.loads((res / plan.RUNS_FILE).read_text())) == 1


@pytest.mark.parametrize("seconds, text", [(42.4, "42 s"), (75.2, "1 min 15 s"),
                                           (3725, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert plan.format_seconds(seconds) == text


# ---------------------------------------------------------------------- generated blocks
def test_plan_writes_both_blocks_once_and_keeps_the_rest(tmp_path):
    folder = _tiny_course(tmp_path)
    plans = _toml(tmp_path)
    times = tmp_path / "times.json"
    plan.save_times([plan.Timing("01", "smoke", "course", "CPU: T (2 cores); GPU: none", 75.0,
                                 "2026-12-03")], times)
    before = nbformat.read(folder / "01_next.ipynb", as_version=4)
    changed = plan.write(folder, plans_file=plans, times_file=times)
    assert len(changed) == 2
    nb = nbformat.read(folder / "01_next.ipynb", as_version=4)
    first = nb.cells[0].source
    assert first.startswith("# 01 · Next\n\n" + colab.badge_markdown("01_next.ipynb"))
    assert "- **Before this lesson:** [00 · Start](00_start.ipynb) (seeding)." in first
    assert "- **You should know:** splits; MLPs." in first
    assert "\n  - smoke profile: 1 min 15 s on T (2 cores), no GPU, measured 2026-12-03\n" in first
    assert "\n  - full profile: not measured yet\n" in first
    assert first.endswith("**What you will learn**\n\n- x")
    assert nb.cells[-1].source.startswith(plan.END_START)
    assert "**What this lesson measured.** line one line two" in nb.cells[-1].source
    assert ("- [scikit-learn: cross-validation](https://scikit-learn.org/stable/modules/"
            "cross_validation.html)") in nb.cells[-1].source
    # nothing else changed: the other cells are the same, in the same order
    assert [c.source for c in nb.cells[1:-1]] == [c.source for c in before.cells[1:]]
    # a second run changes nothing, and --check agrees
    assert plan.write(folder, plans_file=plans, times_file=times) == []
    assert plan.drift(folder, plans_file=plans, times_file=times) == []
    # new data: the blocks are replaced in place, never added twice
    _toml(tmp_path, GOOD.replace("splits", "folds"))
    assert plan.drift(folder, plans_file=plans, times_file=times) == ["01_next.ipynb"]
    plan.write(folder, plans_file=plans, times_file=times)
    nb = nbformat.read(folder / "01_next.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert text.count(plan.PLAN_START) == 1 and text.count(plan.END_START) == 1
    assert "folds; MLPs" in text and len(nb.cells) == len(before.cells) + 1


def test_plan_refuses_a_lesson_without_an_entry(tmp_path):
    folder = _tiny_course(tmp_path)
    only_00 = GOOD.split('[lessons."01"]')[0]
    with pytest.raises(plan.PlanError, match=r"lessons \['01'\] have no entry"):
        plan.generate(folder, plans_file=_toml(tmp_path, only_00))


def test_cli_check_fails_on_drift_and_plan_fixes_it(tmp_path, capsys):
    from course_tools.cli import main

    folder = _tiny_course(tmp_path)  # lessons 00 and 01, planned in the real data/lessons.toml
    assert main(["plan", "--notebooks", str(folder), "--check"]) == 1
    assert "00_start.ipynb" in capsys.readouterr().err
    assert main(["plan", "--notebooks", str(folder)]) == 0
    assert "2 lesson(s) rewritten" in capsys.readouterr().out
    assert main(["plan", "--notebooks", str(folder), "--check"]) == 0
    assert main(["plan", "--notebooks", str(folder), "--update-times", str(tmp_path)]) == 2
    assert "no lesson-runs.json" in capsys.readouterr().err
