"""Instructor tooling (issue 8): student releases per student, no leaks, autograding.

Fast tests use a tiny lesson written here (numpy only: a kernel starts in seconds). The real
lessons are checked for leaks without execution (every lesson of notebooks/, by glob), and
lesson 00 (the fastest) is graded end to end for a class of four: correct, blank, endless
loop, tampering.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import autograde as grading_run
from course_tools.grading import release as grading
from course_tools.runner import LESSON_PATTERN

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if LESSON_PATTERN.match(p.name))

# --------------------------------------------------------------------------- a tiny lesson

TINY_ANSWERS = {
    "ex1_solution": "def double(x):\n    return FACTOR * x",
    "ex2_solution": "total = int(np.sum(values))",
    "ex3_solution": "def ratio(a, b):\n    return a / b",
    "ex4_solution": "def clip(x):\n    return max(0, min(1, x))",
}


def _code(source: str, *tags: str):
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _md(source: str):
    return nbformat.v4.new_markdown_cell(source)


def tiny_lesson(folder: Path, number: str = "07") -> Path:
    """A lesson with four exercises (one with hidden tests, one with partial credit) and
    parameters FACTOR and SCALE."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        _md(f"# {number} · Tiny\n\n**What you will learn**\n\n- grading"),
        _code('import os\n\nPROFILE = os.environ.get("COURSE_PROFILE", "full")\nSEED = 0\n'
              'FACTOR = 2  # exercise 1\nSCALE = 1.0', "parameters"),
        _code("import numpy as np\n\nrng = np.random.default_rng(SEED)\n"
              "values = rng.integers(0, 10, size=5)\nprint(values)"),
        _md("### Exercise 1: double it\n\nWrite `double(x)` returning `FACTOR * x`."),
        _code("### BEGIN SOLUTION\n" + TINY_ANSWERS["ex1_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 2\nassert double(1) == FACTOR\nassert double(0) == 0\n"
              "### BEGIN HIDDEN TESTS\nassert double(21) == 21 * FACTOR, 'secret message 7731'\n"
              "assert double(-3) == -3 * FACTOR  # hidden-only-line-5521\n"
              "### END HIDDEN TESTS", "tests"),
        _md("### Exercise 2: sum\n\nSet `total` to the sum of `values`."),
        _code("# keep this line\n### BEGIN SOLUTION\n" + TINY_ANSWERS["ex2_solution"]
              + "\n### END SOLUTION", "solution"),
        _code("# points: 1\nassert total == int(values.sum())", "tests"),
        _md("### Exercise 3: ratio"),
        _code("### BEGIN SOLUTION\n" + TINY_ANSWERS["ex3_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 1\nassert ratio(6, 3) == 2", "tests"),
        _md("### Exercise 4: clip (partial credit: the tests cell shows the points earned)"),
        _code("### BEGIN SOLUTION\n" + TINY_ANSWERS["ex4_solution"] + "\n### END SOLUTION",
              "solution"),
        _code("# points: 2\nearned = 0.0\nearned += 1.0 if clip(-1) == 0 else 0.0\n"
              "earned += 1.0 if clip(5) == 1 else 0.0\nearned", "tests"),
        _code("# NBVAL_CHECK_OUTPUT\nprint('done')"),
    ]
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="done\n")]
    path = folder / f"{number}_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def write_roster(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def submit(release: Path, target: Path, answers: dict, edit=None) -> Path:
    """A student's returned notebook: the release with ``answers`` in the answer cells."""
    nb = nbformat.read(release, as_version=4)
    for cell in nb.cells:
        gid = grading._grade_id(cell)
        if gid in answers:
            cell.source = answers[gid]
    if edit:
        edit(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target


def instructor_answers(lesson_path: Path) -> dict:
    """The instructor's solution cells, as a student who answers perfectly returns them."""
    lesson = grading.load_lesson(lesson_path)
    return {grading._grade_id(c): c.source for c in lesson.nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def read_grades(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def run_cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "course_tools", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- roster


def test_student_seed_is_stable_and_differs_between_students():
    assert grading.student_seed("ada") == grading.student_seed("ada")
    seeds = {grading.student_seed(f"s{i:03d}") for i in range(200)}
    assert len(seeds) == 200 and all(0 <= s < 2**31 for s in seeds)


def test_roster_values_are_typed_and_seed_is_derived_unless_given(tmp_path):
    lesson = grading.load_lesson(tiny_lesson(tmp_path / "nb"))
    roster = write_roster(tmp_path / "r.csv", "id,name,seed,factor,SCALE\n"
                          "a,Ann,,3,\nb,Bob,11,,2\n")
    a, b = grading.read_roster(roster, [lesson])
    assert grading.student_parameters(a, lesson) == {"SEED": grading.student_seed("a"),
                                                     "FACTOR": 3}
    params_b = grading.student_parameters(b, lesson)
    assert params_b == {"SEED": 11, "SCALE": 2.0} and isinstance(params_b["SCALE"], float)


@pytest.mark.parametrize("text, message", [
    ("name,seed\nAnn,1", r"has no 'id' column .*id,name,seed"),
    ("id,name\na,Ann\nb,Bob\na,Again", r"id 'a' appears on lines 2 and 4"),
    ("id,name,EPOCS\na,Ann,3", r"column 'EPOCS' is not a parameter of any lesson .*FACTOR"),
    ("id,name,seed\na,Ann,abc", r"line 2 \(id a\): seed='abc' is not a whole number"),
    ("id,name,FACTOR\na,Ann,2.5", r"FACTOR='2.5' is not a whole number .*defaults to 2"),
    ("id,name,PROFILE\na,Ann,smoke", r"'PROFILE' cannot be set per student"),
    ("id,name\n../x,Evil", r"id '../x' must be 1-64 letters"),
    ("id,name", r"header but no students"),
])
def test_bad_roster_is_one_clear_error_and_writes_nothing(tmp_path, text, message):
    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "roster.csv", text)
    with pytest.raises(grading.RosterError, match=message):
        grading.assign(roster, tmp_path / "out", notebooks_dir=notebooks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb", "roster.csv"]


def test_cli_assign_bad_roster_prints_one_error_line(tmp_path):
    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "roster.csv", "id,name\na,Ann\na,Ann")
    proc = run_cli("assign", "--roster", roster, "--out", tmp_path / "out",
                   "--notebooks", notebooks, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: roster roster.csv: id 'a'"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_assign_refuses_a_non_empty_output_folder(tmp_path):
    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "r.csv", "id,name\na,Ann")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(grading.GradingError, match="already exists and is not empty"):
        grading.assign(roster, tmp_path / "out", notebooks_dir=notebooks)


# --------------------------------------------------------------------------- releases


def test_release_has_stubs_no_hidden_tests_no_outputs_and_the_students_parameters(tmp_path):
    notebooks = tmp_path / "nb"
    path = tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "r.csv", "id,name,FACTOR\nann,Ann,5\nbob,Bob,")
    written = grading.assign(roster, tmp_path / "out", notebooks_dir=notebooks)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "ann/07_tiny.ipynb", "bob/07_tiny.ipynb"]
    text = written[0].read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    cells = {grading._grade_id(c): c for c in nb.cells if grading._grade_id(c)}
    assert cells["ex1_solution"].source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert cells["ex2_solution"].source.startswith("# keep this line\n# YOUR CODE HERE")
    assert cells["ex1_tests"].source == "# points: 2\nassert double(1) == FACTOR\n" \
                                        "assert double(0) == 0"
    assert cells["injected_parameters"].source.splitlines()[1:] == [
        f"SEED = {grading.student_seed('ann')}", "FACTOR = 5"]
    assert nb.cells.index(cells["injected_parameters"]) == \
        nb.cells.index(cells["parameters"]) + 1
    for gid in ("ex1_tests", "parameters", "injected_parameters"):
        assert cells[gid].metadata["editable"] is False
        assert cells[gid].metadata["deletable"] is False
    assert all(c.outputs == [] and c.execution_count is None
               for c in nb.cells if c.cell_type == "code")
    for secret in ("secret message 7731", "hidden-only-line-5521", "return FACTOR * x",
                   "np.sum(values)", "return a / b", "BEGIN", "END SOLUTION"):
        assert secret not in text
    assert grading.find_leaks(grading.load_lesson(path), text) == []
    bob = nbformat.read(written[1], as_version=4)
    assert f"SEED = {grading.student_seed('bob')}" in bob.cells[2].source
    assert "FACTOR" not in bob.cells[2].source
    manifest = json.loads((tmp_path / "out" / "assignment.json").read_text())
    assert manifest["students"]["ann"]["parameters"]["07"]["FACTOR"] == 5


def test_leak_check_finds_solutions_and_hidden_tests(tmp_path):
    lesson = grading.load_lesson(tiny_lesson(tmp_path / "nb"))
    leaks = grading.find_leaks(lesson, lesson.nb)
    assert "line 'return FACTOR * x'" in leaks
    assert any("hidden-only-line-5521" in leak for leak in leaks)
    assert "marker 'BEGIN SOLUTION'" in leaks


@pytest.mark.parametrize("path", LESSONS, ids=[p.name[:2] for p in LESSONS])
def test_no_solution_or_hidden_test_text_in_any_student_release(path, tmp_path):
    """Every lesson of notebooks/ (by glob: new lessons are covered automatically)."""
    lesson = grading.load_lesson(path)
    roster = write_roster(tmp_path / "roster.csv",
                          "id,name,seed\nada,Ada,\ngrace,Grace,7\nalan,Alan,")
    written = grading.assign(roster, tmp_path / "out", notebooks_dir=NOTEBOOKS,
                             lessons=[lesson.number])
    secrets = grading.secret_lines(lesson)
    assert bool(secrets) == bool(lesson.exercises), "the solutions should have lines to look for"
    for release in written:
        raw = release.read_text(encoding="utf-8")
        nb = json.loads(raw)
        assert grading.find_leaks(lesson, nb) == [], release
        for line in secrets:  # also on the raw file text (JSON-escaped)
            if len(line) >= 16:
                assert json.dumps(line)[1:-1] not in raw, (release, line)
        for marker in grading.MARKERS:
            assert marker not in raw
        assert all(not c.get("outputs") for c in nb["cells"])


# --------------------------------------------------------------------------- tampering


def _release_and_submission(tmp_path, edit):
    notebooks = tmp_path / "nb"
    lesson = grading.load_lesson(tiny_lesson(notebooks))
    release = grading.make_release(lesson, {"SEED": 3}, student_id="s")
    submission = nbformat.reads(nbformat.writes(release), as_version=4)
    edit(submission)
    return release, submission


def _cell(nb, gid):
    return next(c for c in nb.cells if grading._grade_id(c) == gid)


@pytest.mark.parametrize("edit, expected", [
    (lambda nb: None, []),
    (lambda nb: setattr(_cell(nb, "ex1_tests"), "source", "# points: 2\nassert True"),
     ["edited the tests of exercise 1"]),
    (lambda nb: setattr(_cell(nb, "injected_parameters"), "source", "SEED = 0"),
     ["edited the injected parameters"]),
    (lambda nb: nb.cells.remove(_cell(nb, "ex3_tests")), ["deleted the tests of exercise 3"]),
    (lambda nb: nb.cells.remove(_cell(nb, "ex2_solution")),
     ["deleted the answer cell of exercise 2"]),
    (lambda nb: nb.cells.pop(3), ["deleted 1 lesson cell(s)"]),
    (lambda nb: nb.cells.append(copy.deepcopy(_cell(nb, "ex1_tests"))),
     ["duplicated the tests of exercise 1"]),
    (lambda nb: nb.metadata.papermill.parameters.update(SEED=0),
     ["changed the recorded parameters"]),
])
def test_tampering_is_detected(tmp_path, edit, expected):
    release, submission = _release_and_submission(tmp_path, edit)
    tampering, _, answers = grading_run.check_submission(release, submission)
    assert tampering == expected
    assert set(answers) == {f"ex{k}_solution" for k in (1, 2, 3, 4)}


def test_added_and_edited_cells_are_notes_not_tampering(tmp_path):
    def edit(nb):
        nb.cells.append(nbformat.v4.new_code_cell("helper = 1"))
        nb.cells[3].source += "\n# my note"
        _cell(nb, "ex1_solution").source = "def double(x):\n    return 2 * x"

    release, submission = _release_and_submission(tmp_path, edit)
    tampering, notes, answers = grading_run.check_submission(release, submission)
    assert tampering == []
    assert any("you added were not run" in n for n in notes)
    assert any("outside the answer cells" in n for n in notes)
    assert answers["ex1_solution"] == "def double(x):\n    return 2 * x"


def test_gradeable_notebook_keeps_instructor_cells_and_roster_parameters(tmp_path):
    lesson = grading.load_lesson(tiny_lesson(tmp_path / "nb"))
    nb = grading_run.build_gradeable(lesson, {"ex1_solution": "def double(x): return 0"},
                                     {"SEED": 4, "FACTOR": 9}, student_id="s")
    assert "### BEGIN HIDDEN TESTS" in _cell(nb, "ex1_tests").source
    assert _cell(nb, "ex1_solution").source == "def double(x): return 0"
    assert "raise NotImplementedError()" in _cell(nb, "ex3_solution").source
    assert _cell(nb, "injected_parameters").source.splitlines()[1:] == ["SEED = 4",
                                                                       "FACTOR = 9"]


def test_missing_and_unreadable_submissions_get_a_row_and_a_reason(tmp_path):
    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "r.csv",
                          "id,name\nnone,Nobody\nbad,Garbled\nren,Renamed\nblank,Blank")
    (tmp_path / "subs" / "bad").mkdir(parents=True)
    (tmp_path / "subs" / "bad" / "07_tiny.ipynb").write_text("{not json")
    (tmp_path / "subs" / "ren").mkdir()
    (tmp_path / "subs" / "ren" / "07_tiny (1).ipynb").write_text("[]")
    grading.assign(roster, tmp_path / "releases", notebooks_dir=notebooks)
    submit(tmp_path / "releases" / "blank" / "07_tiny.ipynb",
           tmp_path / "subs" / "blank" / "07_tiny.ipynb", {})
    start = time.monotonic()
    grades = grading_run.grade(tmp_path / "subs", roster, tmp_path / "out",
                               notebooks_dir=notebooks,
                               options=grading_run.Options(isolation="none"))
    assert time.monotonic() - start < 30  # nothing was executed
    assert [g.status for g in grades] == ["missing", "unreadable", "unreadable", "ok"]
    assert grades[3].total == 0 and grades[3].lessons[0].notes == [
        "not run: no answer cell was changed"]
    rows = read_grades(tmp_path / "out" / "grades.csv")
    assert rows["none"]["total"] == "0" and rows["none"]["max"] == "6"
    assert "no submission none/07_tiny.ipynb" in rows["none"]["reason"]
    assert "not a readable notebook" in rows["bad"]["reason"]
    feedback = (tmp_path / "out" / "feedback" / "bad.md").read_text()
    assert "unreadable" in feedback and "7731" not in feedback


# --------------------------------------------------------------------------- grading (kernels)


@pytest.mark.slow
def test_kernel_caches_stay_in_the_sandbox_whatever_the_grader_inherited(tmp_path, monkeypatch):
    """torch's first torch.compile sets TORCHINDUCTOR_CACHE_DIR=/tmp/... in the grader's own
    environment; a kernel inheriting it wrote there and was reported as tampering."""
    from course_tools.grading import autograde as grading_run

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_elsewhere")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/jax_cache_elsewhere")
    sandbox = tmp_path / "work"
    env = grading_run._kernel_env(sandbox, tmp_path / "hook", tmp_path / "refused.log", [],
                                  "smoke")
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCH_HOME", "KERAS_HOME",
                 "HOME", "TMPDIR", "XDG_CACHE_HOME"):
        assert Path(env[name]).is_relative_to(sandbox), (name, env[name])
    assert "JAX_COMPILATION_CACHE_DIR" not in env


@pytest.mark.slow
class TestTinyClass:
    """The tiny lesson graded for a class with every kind of problem (kernels start fast)."""

    @pytest.fixture(scope="class")
    def graded(self, tmp_path_factory):
        base = tmp_path_factory.mktemp("tiny")
        notebooks = base / "nb"
        tiny_lesson(notebooks)
        roster = write_roster(base / "roster.csv", "id,name,FACTOR\ngood,Good,3\n"
                              "wrong,Wrong,\ncrash,Crash,\nslow,Slow,\nsneaky,Sneaky,")
        releases = base / "releases"
        grading.assign(roster, releases, notebooks_dir=notebooks)
        subs = base / "subs"
        name = "07_tiny.ipynb"
        outside = base / "escaped.txt"
        answers = dict(TINY_ANSWERS)
        submit(releases / "good" / name, subs / "good" / name, answers)
        submit(releases / "wrong" / name, subs / "wrong" / name, {
            **answers, "ex1_solution": "def double(x):\n    return 2 * x if x < 5 else 0",
            "ex2_solution": "total = -1", "ex4_solution": "def clip(x):\n    return max(0, x)"})
        submit(releases / "crash" / name, subs / "crash" / name,
               {**answers, "ex2_solution": "import os\nos._exit(3)"})
        submit(releases / "slow" / name, subs / "slow" / name,
               {**answers, "ex2_solution": "import time\n\ntime.sleep(600)"})
        submit(releases / "sneaky" / name, subs / "sneaky" / name, {
            **answers, "ex1_solution": answers["ex1_solution"] + (
                f"\ntry:\n    open({str(outside)!r}, 'w').write('x')\nexcept OSError:\n"
                "    pass\n"
                f"try:\n    secrets = open({str(notebooks / name)!r}).read()\n"
                "except OSError:\n    secrets = ''")})
        # slow: a cell limit longer than the notebook limit, so the notebook limit kills it
        # (it sleeps rather than spins, to leave the CPU to the other tests)
        options = grading_run.Options(cell_timeout=60, lesson_cell_timeout=60,
                                      notebook_timeout=40, jobs=2, profile="smoke")
        start = time.monotonic()
        grades = grading_run.grade(subs, roster, base / "out", notebooks_dir=notebooks,
                                   options=options)
        return {"grades": {g.student.id: g for g in grades}, "out": base / "out",
                "seconds": time.monotonic() - start, "outside": outside}

    def test_correct_answers_get_full_marks_including_hidden_tests(self, graded):
        g = graded["grades"]["good"]
        assert g.status == "ok" and g.total == g.max_points == 6, g.reason

    def test_failures_are_explained_and_hidden_tests_stay_hidden(self, graded):
        g = graded["grades"]["wrong"].lessons[0]
        scores = {q.key: q for q in g.questions}
        assert scores["ex1"].points == 0
        assert scores["ex1"].reason == "a hidden test failed (AssertionError)"
        assert scores["ex2"].reason == "test `assert total == int(values.sum())` failed"
        assert scores["ex3"].points == 1
        assert scores["ex4"].points == 1 and scores["ex4"].reason == "partial credit: 1 of 2"
        feedback = (graded["out"] / "feedback" / "wrong.md").read_text()
        assert "7731" not in feedback and "5521" not in feedback and "a / b" not in feedback

    def test_crash_keeps_the_points_earned_before_it(self, graded):
        g = graded["grades"]["crash"].lessons[0]
        assert g.status == "crashed" and "kernel died" in g.reason
        scores = {q.key: q.points for q in g.questions}
        assert scores == {"ex1": 2, "ex2": 0, "ex3": 0, "ex4": 0}
        assert "not run" in g.questions[2].reason

    def test_notebook_time_limit_kills_and_grades_what_ran(self, graded):
        g = graded["grades"]["slow"].lessons[0]
        assert g.status == "timeout" and "time limit of 40 s" in g.reason
        assert "answer cell of exercise 2" in g.reason
        assert [q.points for q in g.questions] == [2, 0, 0, 0]
        # the student's kernel is killed at 40 s; the trusted check (issue 16) then runs the
        # lesson once more, only up to the tests of ex1, under the same limit
        assert g.seconds < 40 + 40 + 20
        import psutil

        left = [p for p in psutil.process_iter(["cmdline"])
                if "ipykernel" in " ".join(p.info["cmdline"] or [])
                and any(str(graded["out"].parent) in v for v in _environ(p))]
        assert not left, "a kernel outlived its notebook's time limit"

    def test_writes_outside_and_reading_the_lesson_are_refused_and_reported(self, graded):
        g = graded["grades"]["sneaky"]
        assert not graded["outside"].exists()
        assert g.total == 6 and g.status == "tampered"
        # counted per top folder: the paths are the student's text (issue 16, G)
        assert "tried to write 1 path(s) under /tmp (refused)" in g.reason
        assert "tried to read 1 path(s) under /tmp (refused)" in g.reason
        assert str(graded["outside"]) not in g.reason

    def test_grades_csv_has_a_row_per_student(self, graded):
        rows = read_grades(graded["out"] / "grades.csv")
        assert list(rows) == ["good", "wrong", "crash", "slow", "sneaky"]
        assert list(rows["good"])[:8] == ["id", "name", "07_ex1", "07_ex2", "07_ex3",
                                          "07_ex4", "07_total", "total"]
        assert rows["good"]["total"] == "6" and rows["slow"]["status"] == "timeout"
        assert rows["wrong"]["reason"] == (
            "07: ex1: a hidden test failed (AssertionError); ex2: test `assert total == "
            "int(values.sum())` failed; ex4: partial credit: 1 of 2")
        graded_nb = graded["out"] / "graded" / "good" / "07_tiny.ipynb"
        assert "BEGIN HIDDEN TESTS" in graded_nb.read_text()  # instructor only


@pytest.mark.slow
def test_stopping_the_grader_stops_its_kernels(tmp_path):
    import psutil

    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    roster = write_roster(tmp_path / "r.csv", "id,name\nzed,Zed")
    grading.assign(roster, tmp_path / "releases", notebooks_dir=notebooks)
    submit(tmp_path / "releases" / "zed" / "07_tiny.ipynb",
           tmp_path / "subs" / "zed" / "07_tiny.ipynb",
           {**TINY_ANSWERS, "ex2_solution": "import time\ntime.sleep(600)"})
    temp = tmp_path / "temp"
    temp.mkdir()

    def ours():
        return [p for p in psutil.process_iter(["cmdline"])
                if any(str(temp) in v for v in _environ(p))]

    proc = subprocess.Popen(
        [sys.executable, "-m", "course_tools", "grade", tmp_path / "subs", "--roster", roster,
         "--out", tmp_path / "out", "--notebooks", notebooks, "--cell-timeout", "600",
         "--notebook-timeout", "600", "--profile", "smoke"], cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("ipykernel" in " ".join(p.info["cmdline"] or []) for p in ours()):
        assert proc.poll() is None and time.monotonic() < deadline, "no kernel started"
        time.sleep(1)
    time.sleep(3)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    time.sleep(1)
    assert ours() == []
    assert not (tmp_path / "out" / "grades.csv").exists()
    assert list(temp.iterdir()) == []


def _environ(proc) -> list:
    try:
        return list(proc.environ().values())
    except Exception:  # noqa: BLE001 - gone or not ours
        return []


# --------------------------------------------------------------------------- lesson 00


@pytest.mark.slow
class TestLesson00Class:
    """assign + grade through the command line on lesson 00 for a class of four."""

    CELL, LESSON_CELL, NOTEBOOK, JOBS = 20, 240, 300, 2

    @pytest.fixture(scope="class")
    def graded(self, tmp_path_factory):
        base = tmp_path_factory.mktemp("class00")
        roster = write_roster(base / "roster.csv", "id,name,seed\ncorrect,Correct,\n"
                              "blank,Blank,\nendless,Endless,\ntamper,Tamper,12345")
        releases = base / "releases"
        proc = run_cli("assign", "--roster", roster, "--out", releases, "--lessons", "00",
                       timeout=300)
        assert proc.returncode == 0, proc.stderr
        lesson = next(p for p in LESSONS if p.name.startswith("00_"))
        name = lesson.name
        answers = instructor_answers(lesson)
        subs = base / "subs"
        outside = base / "outside.txt"
        submit(releases / "correct" / name, subs / "correct" / name, answers)
        submit(releases / "blank" / name, subs / "blank" / name, {})
        submit(releases / "endless" / name, subs / "endless" / name,
               {**answers, "ex1_solution": "while True:\n    pass"})

        def tamper(nb):
            tests = _cell(nb, "ex2_tests")
            tests.source = "# points: 1\npass"
            _cell(nb, "injected_parameters").source = "# Parameters\nSEED = 0\n"
            solution = _cell(nb, "ex1_solution")
            solution.source += (f"\ntry:\n    open({str(outside)!r}, 'w').write('x')\n"
                                "except OSError:\n    pass")

        submit(releases / "tamper" / name, subs / "tamper" / name, answers, edit=tamper)
        start = time.monotonic()
        proc = run_cli("grade", subs, "--roster", roster, "--out", base / "out",
                       "--lessons", "00", "--jobs", self.JOBS, "--cell-timeout", self.CELL,
                       "--lesson-cell-timeout", self.LESSON_CELL,
                       "--notebook-timeout", self.NOTEBOOK, "--profile", "smoke", timeout=900)
        seconds = time.monotonic() - start
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return {"rows": read_grades(base / "out" / "grades.csv"), "out": base / "out",
                "seconds": seconds, "outside": outside, "stdout": proc.stdout}

    def test_instructor_solutions_get_full_marks_for_every_variant(self, graded):
        """correct (SEED from its id) and tamper (SEED 12345 from the roster) answer with the
        instructor's solutions: full marks through the same pipeline."""
        for student in ("correct", "tamper"):
            row = graded["rows"][student]
            assert row["total"] == row["max"] == "4", row
        correct = graded["rows"]["correct"]
        assert correct["status"] == "ok", {k: v for k, v in correct.items() if "00_" not in k}

    def test_blank_gets_zero_with_a_reason(self, graded):
        row = graded["rows"]["blank"]
        assert [row[f"00_ex{k}"] for k in (1, 2, 3)] == ["0", "0", "0"]
        assert row["reason"] == "00: ex1: not answered; ex2: not answered; ex3: not answered"
        feedback = (graded["out"] / "feedback" / "blank.md").read_text()
        assert feedback.count("not answered") == 3

    def test_endless_loop_loses_only_that_question(self, graded):
        row = graded["rows"]["endless"]
        assert (row["00_ex1"], row["00_ex2"], row["00_ex3"]) == ("0", "1", "2"), row
        feedback = (graded["out"] / "feedback" / "endless.md").read_text()
        assert f"your answer went over the cell time limit of {self.CELL} s" in feedback

    def test_tampering_is_caught_and_has_no_effect(self, graded):
        row = graded["rows"]["tamper"]
        assert row["status"] == "tampered"
        for what in ("edited the tests of exercise 2", "edited the injected parameters",
                     "tried to write 1 path(s) under /tmp (refused)"):
            assert what in row["reason"]
        assert not graded["outside"].exists()

    def test_the_run_stays_within_its_time_limits(self, graded):
        """Each notebook runs twice at most (the student's kernel, then the trusted check's,
        issue 16), each under the notebook time limit."""
        rounds = -(-4 // self.JOBS)
        assert graded["seconds"] < rounds * 2 * self.NOTEBOOK + 60, graded["stdout"]
        assert all(float(r["seconds"]) <= 2 * self.NOTEBOOK + 15
                   for r in graded["rows"].values())

    def test_every_question_of_lesson_00_is_decided_by_the_trusted_check(self, graded):
        """Lesson 00's answers are plain data (a function returning ints, a float, a function
        returning arrays): the trusted kernel decides every question."""
        for student in ("correct", "tamper"):
            feedback = (graded["out"] / "feedback" / f"{student}.md").read_text()
            assert "given your values): ex1, ex2, ex3" in feedback, feedback
            assert "graded in your own kernel" not in feedback, feedback
            trusted = graded["out"] / "graded" / student / "00_setup_and_hardware.trusted.ipynb"
            assert trusted.is_file()
