"""The student edition: ``student/NN_*.ipynb``, generated from the instructor's lessons.

    python -m course_tools student            # (re)write student/ from notebooks/
    python -m course_tools student --check    # exit 1 and name the files when student/ drifts

``notebooks/`` is the one source (the instructor's copy: each exercise's solution under its
prompt, hidden tests in its tests cell). The student edition of a lesson is that notebook,
cleaned as ``tools/nbclean.py`` cleans it, with

- each answer region replaced by nbgrader's stub (``# YOUR CODE HERE`` +
  ``raise NotImplementedError()``, nbgrader's ``ClearSolutions``, as in ``assign``'s releases),
  and the answer cell tagged ``raises-exception`` so that "Run all" in Jupyter goes past an
  unanswered exercise to the rest of the lesson;
- the hidden tests removed (``ClearHiddenTests``) and each tests cell's public checks run
  inside :func:`course_lib.check.question`, which prints per question which check failed and
  why, or that the public checks passed (and that more run at grading where hidden tests
  exist);
- the Colab badge opening the student edition (``course_tools.nbclean.apply_colab_cells``).

Nothing else changes: every other cell, its id and its committed check output are the
instructor's. Before anything is written every notebook passes the leak check of the graded
releases (:func:`course_tools.grading.release.find_leaks`: no marker, no line of a solution
or hidden test). The output is deterministic (same lessons, byte-identical files);
``tests/test_student.py`` regenerates it in a temporary folder and fails when ``student/``
differs. Solutions for self-study are the site's solutions pages
(:mod:`course_tools.site.solutions`), never in these files.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import os
import tokenize
from pathlib import Path

import nbformat

from course_lib import colab, paths
from course_tools import nbclean
from course_tools.grading.release import (
    GradingError,
    Lesson,
    LessonFormatError,
    _run,
    find_leaks,
    load_lessons,
)

STUDENT_DIR = "student"
#: The tag that lets Jupyter's "Run all" (and nbclient, nbval) go on past the answer cell's
#: NotImplementedError while the exercise is unanswered.
RAISES = "raises-exception"
FEEDBACK_IMPORT = "from course_lib import check"


def _indent_body(body: str, prefix: str = "    ") -> str:
    """``body`` indented by ``prefix``, except lines inside multi-line strings (indenting them
    would change the strings) and empty lines. Raises LessonFormatError when ``body`` cannot
    be tokenized."""
    keep: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(body + "\n").readline):
            if token.type == tokenize.STRING and token.end[0] > token.start[0]:
                keep.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise LessonFormatError(f"a tests cell is not valid Python ({exc})") from None
    return "\n".join(line if (number in keep or not line.strip()) else prefix + line
                     for number, line in enumerate(body.split("\n"), 1))


def _score_last_expression(body: str, title: str) -> tuple[str, bool]:
    """A tests cell for partial credit ends with an expression giving the points earned
    (nbgrader's convention); inside the ``with`` block it becomes ``question.score(...)``.
    Returns ``(body, whether it did)``."""
    try:
        tree = ast.parse(body)
    except SyntaxError as exc:
        raise LessonFormatError(f"{title}: the tests cell is not valid Python ({exc.msg}, "
                                f"line {exc.lineno})") from None
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr) or isinstance(last.value, ast.Call | ast.Constant):
        return body, False
    lines = body.split("\n")
    start, end = last.lineno - 1, last.end_lineno
    text = ast.get_source_segment(body, last.value)
    prefix = lines[start][:last.col_offset]
    return "\n".join(lines[:start] + [f"{prefix}question.score({text})"] + lines[end:]), True


def feedback_source(source: str, title: str, *, hidden_tests: bool) -> str:
    """The student edition's tests cell: the ``# points: N`` line, then the public checks of
    ``source`` (hidden tests already removed) run inside ``check.question(title, ...)``.

    Raises LessonFormatError when ``source`` does not start with ``# points: N`` or the result
    is not valid Python (a tests cell with IPython magics cannot be wrapped)."""
    lines = source.rstrip().split("\n")
    match = nbclean.POINTS.match(lines[0])
    if not match:
        raise LessonFormatError(f"{title}: the tests cell must start with '# points: N'")
    body = "\n".join(lines[1:]).strip("\n") or "pass"
    body, scored = _score_last_expression(body, title)
    points = f", points={match.group(1)}) as question" if scored else ")"
    wrapped = (f"{lines[0]}\n{FEEDBACK_IMPORT}\n\n"
               f"with check.question({json.dumps(title, ensure_ascii=False)}, "
               f"hidden_tests={bool(hidden_tests)}{points}:\n{_indent_body(body)}")
    try:
        compile(wrapped, f"<{title} tests>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise LessonFormatError(f"{title}: the tests cell cannot be wrapped for feedback "
                                f"({exc.msg}, line {exc.lineno}); keep tests cells plain "
                                "Python") from None
    return wrapped


def student_notebook(lesson: Lesson, *, repo: str = colab.GITHUB_REPO,
                     ref: str = colab.RELEASE_REF):
    """The student edition of ``lesson`` (a new NotebookNode; ``lesson.nb`` is unchanged).

    Raises:
        LessonFormatError: unbalanced markers or regions outside solution/tests cells
            (nbgrader's message), a tests cell that cannot be wrapped.
    """
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    nb = nbclean.clean(copy.deepcopy(lesson.nb))  # the instructor copy as nbclean leaves it
    for step in (ClearSolutions(), ClearHiddenTests()):
        nb = _run(step, nb, lesson.name)
    exercises = {e.tests_id: e for e in lesson.exercises}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        tags = cell.metadata.get("tags", [])
        if "solution" in tags and RAISES not in tags:
            cell.metadata["tags"] = [*tags, RAISES]
        elif grade_id in exercises:
            exercise = exercises[grade_id]
            cell.source = feedback_source(cell.source, exercise.title,
                                          hidden_tests=exercise.hidden_tests)
    nbclean.apply_colab_cells(nb, lesson.name, repo=repo, ref=ref, edition="student")
    return nb


def hide_answers(nb, name: str):
    """``nb`` (an executed instructor copy, e.g. a page of the site) with every answer region
    replaced by its stub and the answer cells' outputs removed, the hidden tests removed, and
    nothing else changed (the other outputs stay); a new NotebookNode. ``name`` labels errors.

    Raises:
        LessonFormatError: unbalanced solution/hidden-test markers (nbgrader's message).
    """
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    nb = copy.deepcopy(nb)
    nbclean.nbgrader_metadata(nb)
    for step in (ClearSolutions(), ClearHiddenTests()):
        nb = _run(step, nb, name)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.outputs = []
    return nb


def render(lesson: Lesson, *, repo: str = colab.GITHUB_REPO,
           ref: str = colab.RELEASE_REF) -> str:
    """The file text of ``lesson``'s student edition, after the leak check.

    Raises:
        LessonFormatError: see :func:`student_notebook`.
        GradingError: the edition would contain a marker or a line of a solution or hidden
            test (:func:`course_tools.grading.release.find_leaks`).
    """
    text = nbformat.writes(student_notebook(lesson, repo=repo, ref=ref)) + "\n"
    leaks = find_leaks(lesson, text)
    if leaks:
        raise GradingError(f"{lesson.name}: the student edition would contain {leaks[0]}; "
                           "check the solution/hidden-test markers")
    return text


def build(notebooks_dir: str | os.PathLike = "notebooks", *, lessons=None,
          repo: str = colab.GITHUB_REPO, ref: str = colab.RELEASE_REF) -> dict[str, str]:
    """``{file name: text}`` of the student edition of the lessons in ``notebooks_dir`` (all,
    or the numbers in ``lessons``). Raises GradingError/LessonFormatError as :func:`render`
    and :func:`course_tools.grading.release.load_lessons` do."""
    return {lesson.name: render(lesson, repo=repo, ref=ref)
            for lesson in load_lessons(notebooks_dir, lessons)}


def _stale(out: Path, wanted: dict[str, str]) -> list[Path]:
    return sorted(p for p in out.glob("[0-9][0-9]_*.ipynb") if p.name not in wanted)


def write(notebooks_dir: str | os.PathLike = "notebooks", out: str | os.PathLike = STUDENT_DIR,
          *, lessons=None, repo: str = colab.GITHUB_REPO,
          ref: str = colab.RELEASE_REF) -> list[Path]:
    """Write the student edition into ``out`` and return the files that changed.

    Every notebook is built and leak-checked before the first file is written; each file is
    replaced atomically, and only when its text changed. Without ``lessons`` (the whole
    course), lesson files in ``out`` that no longer match a lesson are removed.

    Raises:
        GradingError, LessonFormatError: see :func:`build`; nothing is written then.
        OSError: ``out`` cannot be written.
    """
    out = Path(out)
    wanted = build(notebooks_dir, lessons=lessons, repo=repo, ref=ref)
    changed = []
    for name, text in wanted.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            paths.write_text_atomic(path, text).chmod(0o644)  # a temporary file's 0600 else
            changed.append(path)
    if lessons is None:
        for path in _stale(out, wanted):
            path.unlink()
            changed.append(path)
    return changed


def drift(notebooks_dir: str | os.PathLike = "notebooks",
          out: str | os.PathLike = STUDENT_DIR, *, repo: str = colab.GITHUB_REPO,
          ref: str = colab.RELEASE_REF) -> list[str]:
    """What differs between ``out`` and a fresh student edition of ``notebooks_dir``: one line
    per file (missing, different, or no longer a lesson); empty when they agree. Raises as
    :func:`build`."""
    out = Path(out)
    wanted = build(notebooks_dir, repo=repo, ref=ref)
    problems = []
    for name, text in wanted.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from its lesson")
    problems += [f"{path}: not a lesson of {notebooks_dir}" for path in _stale(out, wanted)]
    return problems
