"""The student edition (issue 18 items 1-3): generated from notebooks/, committed in student/,
no solution or hidden test in it, per-question feedback in its tests cells, solutions pages."""

import copy
import json
import linecache
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import check, colab
from course_tools import nbclean, student
from course_tools.grading import release

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STUDENT = ROOT / "student"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
REGENERATE = "python -m course_tools student"


def _code(source, *tags):
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def tiny_lesson(folder: Path) -> Path:
    """A lesson with three exercises: hidden tests, none, and partial credit."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    md = nbformat.v4.new_markdown_cell
    nb.cells = [
        md("# 07 · Tiny\n\n**What you will learn**\n\n- feedback"),
        _code('import os\n\nPROFILE = os.environ.get("COURSE_PROFILE", "full")\nSEED = 0\n'
              "FACTOR = 2", "parameters"),
        _code("values = [SEED, 1, 2]"),
        md("### Exercise 1: double it\n\nWrite `double(x)` returning `FACTOR * x`."),
        _code("### BEGIN SOLUTION\ndef double(x):\n    return FACTOR * x\n### END SOLUTION",
              "solution"),
        _code("# points: 2\nassert double(1) == FACTOR\nassert double(0) == 0\n"
              "### BEGIN HIDDEN TESTS\nassert double(21) == 21 * FACTOR, 'secret 7731'\n"
              "### END HIDDEN TESTS", "tests"),
        md("### Exercise 2: sum\n\nSet `total` to the sum of `values`."),
        _code("# keep this line\n### BEGIN SOLUTION\ntotal = sum(values)\n### END SOLUTION",
              "solution"),
        _code('# points: 1\nnote = """two\nlines"""\nassert total == sum(values), '
              '"total is not the sum of values"', "tests"),
        md("### Exercise 3: clip"),
        _code("### BEGIN SOLUTION\ndef clip(x):\n    return min(max(x, 0), 1)\n"
              "### END SOLUTION", "solution"),
        _code("# points: 2\nearned = 0.0\nearned += 1.0 if clip(-1) == 0 else 0.0\n"
              "earned += 1.0 if clip(5) == 1 else 0.0\nearned", "tests"),
        md("## What we measured"),
        _code("print('the end of the lesson')"),
    ]
    path = folder / "07_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def _by_id(nb):
    return {release._grade_id(c): c for c in nb.cells if release._grade_id(c)}


# --------------------------------------------------------------------------- student/


def test_student_folder_is_the_generated_edition_of_notebooks(tmp_path):
    """Regenerated in a temporary folder: student/ must be byte-identical (a drift means a
    lesson changed and the edition was not regenerated)."""
    student.write(NOTEBOOKS, tmp_path)
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("[0-9][0-9]_*.ipynb")}
    committed = {p.name: p.read_bytes() for p in STUDENT.glob("[0-9][0-9]_*.ipynb")}
    assert len(fresh) == len(LESSONS) >= 13
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"student/ is out of date for {stale}: run `{REGENERATE}` and commit student/"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_student_edition_has_no_solution_and_changes_only_the_exercises(path):
    """The committed file and a fresh one: no marker, no line of a solution or hidden test
    (also searched in the raw JSON text); the fresh one changes only the exercises' cells and
    the badge line (the drift test above says whether the two agree)."""
    lesson = release.load_lesson(path)
    target = STUDENT / path.name
    assert target.is_file(), f"{target} is missing: run `{REGENERATE}`"
    fresh = student.render(lesson)
    for raw in (target.read_text(encoding="utf-8"), fresh):
        assert release.find_leaks(lesson, raw) == []
        for line in release.secret_lines(lesson):
            if len(line) >= 16:
                assert json.dumps(line)[1:-1] not in raw, line
    edition = nbformat.reads(fresh, as_version=4)
    instructor = nbclean.clean(copy.deepcopy(lesson.nb))
    assert [c.id for c in edition.cells] == [c.id for c in instructor.cells]
    exercises = {e.tests_id: e for e in lesson.exercises}
    changed = set()
    for mine, theirs in zip(edition.cells, instructor.cells):
        if mine == theirs:
            continue
        gid = release._grade_id(mine)
        changed.add(gid or mine.id)
        if gid in exercises:
            assert mine.source.startswith(theirs.source.split("\n")[0] + "\n"
                                          + student.FEEDBACK_IMPORT)
            hidden = exercises[gid].hidden_tests
            assert f"hidden_tests={hidden}" in mine.source
            compile(mine.source, gid, "exec")
        elif gid and gid.endswith("_solution"):
            assert "raise NotImplementedError()" in mine.source
            assert student.RAISES in mine.metadata["tags"]
    allowed = {e.tests_id for e in lesson.exercises} | {e.solution_id for e in lesson.exercises}
    assert changed - allowed == {edition.cells[0].id}  # and the title's badge line
    assert exercises and {e.tests_id for e in lesson.exercises} <= changed


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_student_badge_opens_the_student_edition(path):
    nb = nbformat.read(STUDENT / path.name, as_version=4)
    title = nb.cells[0].source
    badge = colab.find_badge(title)
    assert (f"github/{colab.GITHUB_REPO}/blob/{colab.RELEASE_REF}/student/{path.name})"
            in badge)
    assert "/notebooks/" not in title
    assert nbclean.notebook_edition(nb) == "student"
    assert nb.cells[1].source == colab.setup_cell_source(path.name)


def test_drift_names_the_file_and_write_refuses_a_leaking_lesson(tmp_path):
    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    out = tmp_path / "student"
    assert [p.name for p in student.write(notebooks, out)] == ["07_tiny.ipynb"]
    first = (out / "07_tiny.ipynb").read_bytes()
    assert student.write(notebooks, out) == []  # deterministic: nothing to rewrite
    assert student.drift(notebooks, out) == []
    (out / "03_old.ipynb").write_text("{}")
    nb = nbformat.read(notebooks / "07_tiny.ipynb", as_version=4)
    nb.cells[2].source = "values = [SEED, 1, 2, 3]"
    nbformat.write(nb, notebooks / "07_tiny.ipynb")
    assert sorted(student.drift(notebooks, out)) == [
        f"{out / '03_old.ipynb'}: not a lesson of {notebooks}",
        f"{out / '07_tiny.ipynb'}: differs from its lesson"]
    assert (out / "07_tiny.ipynb").read_bytes() == first
    nb.cells[2].source = "# NBVAL_CHECK_OUTPUT\nprint(In[-1])"  # an output that shows it
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="    return FACTOR * x\n")]
    nbformat.write(nb, notebooks / "07_tiny.ipynb")
    with pytest.raises(release.GradingError, match="would contain line 'return FACTOR"):
        student.write(notebooks, out)
    assert (out / "07_tiny.ipynb").read_bytes() == first  # nothing written


def test_cli_check_reports_drift_with_the_command(tmp_path, capsys):
    from course_tools import cli

    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    out = tmp_path / "student"
    assert cli.main(["student", "--notebooks", str(notebooks), "--out", str(out),
                     "--check"]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert cli.main(["student", "--notebooks", str(notebooks), "--out", str(out)]) == 0
    assert cli.main(["student", "--notebooks", str(notebooks), "--out", str(out),
                     "--check"]) == 0


def test_feedback_cell_keeps_strings_and_scores_partial_credit(tmp_path):
    lesson = release.load_lesson(tiny_lesson(tmp_path))
    cells = _by_id(student.student_notebook(lesson))
    assert cells["ex1_solution"].source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert cells["ex2_solution"].source.startswith("# keep this line\n# YOUR CODE HERE")
    assert cells["ex1_tests"].source == (
        "# points: 2\nfrom course_lib import check\n\n"
        'with check.question("Exercise 1: double it", hidden_tests=True):\n'
        "    assert double(1) == FACTOR\n    assert double(0) == 0")
    assert '    note = """two\nlines"""\n' in cells["ex2_tests"].source  # the string unchanged
    assert cells["ex3_tests"].source.endswith(
        "points=2) as question:\n    earned = 0.0\n"
        "    earned += 1.0 if clip(-1) == 0 else 0.0\n"
        "    earned += 1.0 if clip(5) == 1 else 0.0\n    question.score(earned)")
    with pytest.raises(release.LessonFormatError, match="points: N"):
        student.feedback_source("assert True", "Exercise 9", hidden_tests=False)
    with pytest.raises(release.LessonFormatError, match="not valid Python"):
        student.feedback_source("# points: 1\n%time assert True", "Exercise 9",
                                hidden_tests=False)


# --------------------------------------------------------------------------- check


def _run_cell(source: str, namespace: dict, name: str) -> None:
    """Execute ``source`` as a notebook cell would be: its text in linecache, ``__main__``."""
    filename = f"<cell {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace.setdefault("__name__", "__main__")
    exec(compile(source, filename, "exec"), namespace)


def test_question_reports_pass_with_and_without_hidden_tests(capsys):
    namespace = {"check": check, "FACTOR": 2}
    _run_cell("def double(x):\n    return 2 * x\n", namespace, "answer")
    _run_cell('with check.question("Exercise 1", hidden_tests=True) as q:\n'
              "    assert double(2) == 2 * FACTOR\n", namespace, "tests1")
    assert namespace["q"].passed is True
    out = capsys.readouterr().out
    assert out == f"Exercise 1: {check.PASSED_MORE_TO_COME}\n"
    assert "all" not in out
    _run_cell('with check.question("Exercise 2", hidden_tests=False) as q:\n    pass\n',
              namespace, "tests2")
    assert capsys.readouterr().out == f"Exercise 2: {check.PASSED_ALL}\n"


def test_question_names_the_failing_check_its_line_and_the_values(capsys):
    namespace = {"check": check}
    _run_cell("total = 5\nvalues = [1, 2]\n", namespace, "answer")
    _run_cell('with check.question("Exercise 2", hidden_tests=True) as q:\n'
              "    assert len(values) == 2\n"
              "    assert total == sum(values)\n"
              "    assert False, 'never reached'\n", namespace, "tests")
    q = namespace["q"]
    assert q.passed is False and q.reason == "the condition is false"
    out = capsys.readouterr().out
    assert out.startswith("Exercise 2: a public check FAILED\n")
    assert "the check (line 3 of this cell): assert total == sum(values)" in out
    assert "where total = 5, values = [1, 2]" in out
    assert "never reached" not in out and check.PASSED_MORE_TO_COME not in out


def test_question_explains_an_unanswered_exercise_and_errors_in_the_answer(capsys):
    namespace = {"check": check}
    _run_cell("def ratio(a, b):\n    return a / b\n", namespace, "answer")
    _run_cell('with check.question("Exercise 3", hidden_tests=False) as q:\n'
              "    assert ratio(1, 0) == 0\n", namespace, "tests3")
    out = capsys.readouterr().out
    assert "ZeroDivisionError: division by zero" in out
    assert "raised in ratio(), line 2 of its cell: return a / b" in out
    _run_cell("def stub():\n    raise NotImplementedError()\n", namespace, "stub")
    _run_cell('with check.question("Exercise 4", hidden_tests=False) as q:\n'
              "    stub()\n", namespace, "tests4")
    assert namespace["q"].reason == check.NOT_ANSWERED
    with check.question("Exercise 4", hidden_tests=True) as q:
        raise RuntimeError("worker failed:\n  raise NotImplementedError()\nNotImplementedError")
    assert q.reason == check.NOT_ANSWERED and "RuntimeError: worker failed" in q.report
    _run_cell('with check.question("Exercise 5", hidden_tests=False) as q:\n'
              "    assert undefined_answer == 1\n", namespace, "tests5")
    assert "NameError: name 'undefined_answer' is not defined (answer the exercise" in \
        capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt), check.question("Exercise 6", hidden_tests=False):
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match="title"):
        check.question(" ", hidden_tests=False)


def test_partial_credit_below_the_points_is_a_failed_check(capsys):
    with check.question("Exercise 7", hidden_tests=False, points=2) as q:
        q.score(1.0)
    assert q.passed is False and "1 of 2 points" in capsys.readouterr().out
    with check.question("Exercise 7", hidden_tests=True, points=2) as q:
        q.score(2)
    assert q.passed is True
    with pytest.raises(ValueError, match="must be a number"):
        q.score("two")


@pytest.mark.slow
def test_executed_student_notebook_reports_a_passing_and_a_failing_check(tmp_path):
    """The tiny lesson's student edition with the parameters assign injects (papermill,
    FACTOR=5, the student's SEED), exercise 1 answered correctly, exercise 2 wrongly and
    exercise 3 not at all, executed top to bottom on a fresh kernel."""
    from nbclient import NotebookClient

    lesson = release.load_lesson(tiny_lesson(tmp_path / "nb"))
    nb = nbformat.reads(student.render(lesson), as_version=4)
    nb = release.inject_parameters(nb, {"SEED": 41, "FACTOR": 5}, lesson_name=lesson.name,
                                   student_id="ada")
    cells = _by_id(nb)
    cells["ex1_solution"].source = "def double(x):\n    return FACTOR * x"
    cells["ex2_solution"].source = "total = max(values)"
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert text(cells["ex1_tests"]) == f"Exercise 1: double it: {check.PASSED_MORE_TO_COME}\n"
    failed = text(cells["ex2_tests"])
    assert failed.startswith("Exercise 2: sum: a public check FAILED")
    assert "assert total == sum(values)" in failed and "total is not the sum of values" in failed
    assert "where total = 41, values = [41, 1, 2]" in failed  # the injected SEED
    assert [o.ename for o in cells["ex3_solution"].outputs if o.output_type == "error"] == [
        "NotImplementedError"]
    assert "NameError: name 'clip' is not defined (answer the exercise" in text(cells["ex3_tests"])
    assert text(nb.cells[-1]) == "the end of the lesson\n"  # the rest of the lesson ran
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code"
                   and student.RAISES not in c.metadata.get("tags", []) for o in c.outputs)
    assert re.search(r"all (tests|checks) passed", "".join(map(text, cells.values()))) is None


# --------------------------------------------------------------------------- solutions


def _hidden_lines(lesson) -> set:
    hidden = set()
    for cell in lesson.nb.cells:
        inside, _ = release._regions(cell.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
        hidden |= {line.strip() for line in inside if line.strip()}
    return hidden


def test_solutions_pages_fold_every_answer_and_show_no_hidden_test(tmp_path):
    from course_tools.site import solutions

    notebooks = tmp_path / "nb"
    tiny_lesson(notebooks)
    assert solutions.write_pages(notebooks, tmp_path / "site") == ["07_tiny_solutions"]
    page = (tmp_path / "site" / "07_tiny_solutions.md").read_text(encoding="utf-8")
    assert page.startswith("# 07 · Tiny: solutions\n")
    assert page.count("<details>") == page.count("</details>") == 3
    assert "    return FACTOR * x" in page and "# keep this line\ntotal = sum(values)" in page
    assert "secret 7731" not in page and "BEGIN" not in page and "END SOLUTION" not in page
    assert "/student/07_tiny.ipynb" in page
    bare = tmp_path / "bare"
    path = tiny_lesson(bare)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & {"solution", "tests"}]
    nbformat.write(nb, path)
    assert solutions.write_pages(bare, tmp_path / "site2") == []


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_each_lesson_solutions_page_has_its_answers_and_no_hidden_test(path):
    from course_tools.site import solutions

    lesson = release.load_lesson(path)
    page = solutions.solutions_page(lesson)
    answers = set()
    for exercise in lesson.exercises:
        source = lesson.cell(exercise.solution_id).source
        inside, _ = release._regions(source, "BEGIN SOLUTION", "END SOLUTION")
        answers |= {line.strip() for line in inside if line.strip()}
        assert f"## {exercise.title}\n" in page
    page_lines = {line.strip() for line in page.splitlines()}
    assert answers and answers <= page_lines
    hidden_only = _hidden_lines(lesson) - answers
    public = {line.strip() for c in lesson.nb.cells if "BEGIN" not in c.source
              for line in c.source.splitlines()}  # lines also in the lesson's open cells
    assert not {line for line in hidden_only - public if line in page_lines}


@pytest.mark.parametrize("number", ["00", "11"])
def test_graded_releases_hold_no_solution_and_their_badge_opens_the_student_edition(number):
    """assign's releases are made from the lesson, never from a solutions page: not one line
    of the page's answers that is a secret reaches them, and their badge line is the student
    edition's (never the instructor copy's)."""
    from course_tools.site import solutions

    lesson = release.load_lessons(NOTEBOOKS, [number])[0]
    made = release.make_release(lesson, {"SEED": 3}, student_id="ada")
    text = nbformat.writes(made)
    assert release.find_leaks(lesson, text) == []
    secrets = set(release.secret_lines(lesson))
    page = solutions.solutions_page(lesson)
    on_page = [line.strip() for line in page.splitlines() if line.strip() in secrets]
    assert on_page and not [line for line in on_page if len(line) >= 16 and line in text]
    assert nbclean.notebook_edition(made) == "student"
    assert "Instructor copy" not in made.cells[0].source


@pytest.mark.slow
def test_real_lesson_runs_to_the_end_with_a_right_a_wrong_and_an_unanswered_exercise(
        tmp_path, monkeypatch):
    """Lesson 00's student edition (smoke profile) on a fresh kernel, from student/ as a
    student opens it: exercise 1 answered as the instructor did, exercise 2 wrongly, exercise
    3 left as the stub. Every question prints its verdict and the lesson's last cells run."""
    from nbclient import NotebookClient

    from course_tools.site import solutions

    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    lesson = release.load_lessons(NOTEBOOKS, ["00"])[0]
    nb = nbformat.reads(student.render(lesson), as_version=4)
    cells = _by_id(nb)
    cells["ex1_solution"].source = solutions.answer_source(lesson.cell("ex1_solution").source)
    cells["ex2_solution"].source = "tf_over_jax = 2  # a ratio, but not a float"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(STUDENT)}}).execute()

    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    titles = {e.tests_id: e.title for e in lesson.exercises}
    assert text(cells["ex1_tests"]) == f"{titles['ex1_tests']}: {check.PASSED_ALL}\n"
    wrong = text(cells["ex2_tests"])
    assert "a public check FAILED" in wrong and "assert isinstance(tf_over_jax, float)" in wrong
    assert "where tf_over_jax = 2" in wrong
    assert "NameError: name 'two_draws' is not defined" in text(cells["ex3_tests"])
    errors = [(i, o.ename) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == [(nb.cells.index(cells["ex3_solution"]), "NotImplementedError")]
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert last.execution_count is not None and last.outputs  # "What we measured" ran


def test_site_pages_show_stubs_keep_other_outputs_and_link_the_solutions(tmp_path):
    """The site renders executed lessons: the answers (and their outputs) give way to stubs,
    the hidden tests go, other outputs stay, the answers are on the solutions page, and the
    lesson's Colab and Binder links open the student edition."""
    from course_tools import runner

    notebooks = tmp_path / "nb"
    path = tiny_lesson(notebooks)
    executed = nbformat.read(path, as_version=4)
    for cell in executed.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                                   text=f"out of {cell.source[:12]!r}")]
    out = tmp_path / "executed.ipynb"
    nbformat.write(executed, out)
    run = runner.LessonRun("07", "07_tiny", "ok", 1.0, "", out)
    names = runner.write_site_sources([run], tmp_path / "src", tmp_path / "res", "smoke",
                                      notebooks_dir=notebooks)
    assert names[0] == "07_tiny" and "07_tiny_solutions" in names
    page = (tmp_path / "src" / "07_tiny.ipynb").read_text(encoding="utf-8")
    assert "return FACTOR * x" not in page and "secret 7731" not in page
    assert "YOUR CODE HERE" in page and "out of " in page
    solutions_page = (tmp_path / "src" / "07_tiny_solutions.md").read_text(encoding="utf-8")
    assert "return FACTOR * x" in solutions_page
    index = (tmp_path / "src" / "index.ipynb").read_text(encoding="utf-8")
    assert ":caption: Solutions" in index and "07_tiny_solutions" in index
