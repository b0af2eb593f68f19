"""Solutions on demand: one page per lesson for the course website (issue 18 item 3).

A self-study reader works in the student edition (``student/``, no solutions in it) and can
reveal a solution deliberately on the site: each exercise of the lesson's page is folded in a
``<details>`` element (plain HTML, no JavaScript, no Sphinx extension), so that nothing of it
is in view while they work. The page is written from the instructor's lesson (the answer
cells, their ``### BEGIN/END SOLUTION`` marker lines left out); the hidden tests are never on
it. Graded releases (``assign``) and the student edition are built from the lessons, not from
these pages, and their leak check keeps every line of a solution out of them
(``tests/test_student.py`` checks both).

    from course_tools.site import solutions
    names = solutions.write_pages("notebooks", site_source_dir)   # the runner's site build

:func:`write_pages` writes ``NN_name_solutions.md`` (MyST Markdown) for each lesson with
exercises and returns the document names, to be listed in a toctree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from course_lib import colab, paths
from course_tools import nbclean
from course_tools.grading.release import MARKERS, Lesson, load_lessons

SUFFIX = "_solutions"


def _title(lesson: Lesson) -> str:
    first = lesson.nb.cells[0].source if lesson.nb.cells else ""
    match = re.match(r"#\s+(.+)", first)
    return match.group(1).strip() if match else lesson.path.stem


def answer_source(source: str) -> str:
    """An instructor's answer cell without its solution marker lines (the answer regions and
    the code around them, as the student will have written it). Raises nothing."""
    kept = [line for line in source.split("\n") if not any(m in line for m in MARKERS)]
    return "\n".join(kept).strip("\n")


def _fence(code: str) -> str:
    ticks = "```"
    while ticks in code:
        ticks += "`"
    return ticks


def page_name(lesson: Lesson) -> str:
    """The document name of ``lesson``'s solutions page, e.g. ``00_setup_and_hardware_solutions``."""
    return f"{lesson.path.stem}{SUFFIX}"


def solutions_page(lesson: Lesson, *, repo: str = colab.GITHUB_REPO,
                   ref: str = colab.RELEASE_REF) -> str:
    """The MyST Markdown source of ``lesson``'s solutions page.

    ``lesson`` comes from :func:`course_tools.grading.release.load_lesson`. The page has the
    lesson's title, a link to the student edition on Colab (try first), and per exercise its
    heading and its answer cell(s) folded in ``<details>``. Raises ValueError when the lesson
    has no exercise (there is no page to write).
    """
    if not lesson.exercises:
        raise ValueError(f"{lesson.name} has no exercise: no solutions page")
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in lesson.nb.cells}
    student = nbclean.edition_colab_url(lesson.name, edition="student", repo=repo, ref=ref)
    parts = [
        f"# {_title(lesson)}: solutions",
        "",
        f"Try each exercise first, in the [student edition]({student}) of the lesson: its "
        "tests cells say which check failed and why. Each solution below stays folded until "
        "you open it. When your work is graded, more checks run than the public ones.",
    ]
    for exercise in lesson.exercises:
        code = answer_source(cells[exercise.solution_id].source)
        fence = _fence(code)
        parts += ["", f"## {exercise.title}", "", "<details>",
                  f"<summary>Show the solution to exercise {exercise.number}</summary>", "",
                  f"{fence}python", code, fence, "", "</details>"]
    return "\n".join(parts) + "\n"


def write_pages(notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                lessons=None, repo: str = colab.GITHUB_REPO,
                ref: str = colab.RELEASE_REF) -> list[str]:
    """Write the solutions page of every lesson with exercises in ``notebooks_dir`` (all, or
    the numbers in ``lessons``) into ``out_dir`` as ``<name>.md`` (atomically); return the
    document names in lesson order.

    Raises:
        GradingError, LessonFormatError: see :func:`course_tools.grading.release.load_lessons`.
        OSError: ``out_dir`` cannot be written.
    """
    names = []
    for lesson in load_lessons(notebooks_dir, lessons):
        if not lesson.exercises:
            continue
        name = page_name(lesson)
        paths.write_text_atomic(Path(out_dir) / f"{name}.md",
                                solutions_page(lesson, repo=repo, ref=ref))
        names.append(name)
    return names
