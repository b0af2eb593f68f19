"""Keep lesson notebooks reviewable: strip outputs and execution counts.

Outputs are kept only in cells whose source contains ``# NBVAL_CHECK_OUTPUT``: nbval compares
those against a fresh run, so their (small, deterministic) outputs are part of the source.

Exercises follow nbgrader's conventions, derived here from two cell tags so that authors
never edit JSON metadata by hand:

- a cell tagged ``solution`` holds the answer between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` lines; it gets nbgrader metadata ``solution: true``, ``grade_id:
  exK_solution`` (K counts the solution cells from 1);
- the next cell tagged ``tests`` starts with ``# points: N`` and holds the tests: public asserts,
  then optionally hidden ones between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
  it gets ``grade: true, points: N, locked: true, grade_id: exK_tests``.

    python tools/nbclean.py notebooks/*.ipynb            # strip in place (this module's main)
    python tools/nbclean.py --check notebooks/*.ipynb    # exit 1 if a file is not clean
    python tools/nbclean.py --execute notebooks/00_*.ipynb
        # run on a fresh kernel (smoke profile) to refresh the check cells' outputs, then strip
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path

import nbformat

from course_lib import colab

CHECK = "# NBVAL_CHECK_OUTPUT"
KEEP_METADATA = {"tags", "nbgrader"}
LESSON = re.compile(r"\d\d_[A-Za-z0-9_]+\.ipynb")
POINTS = re.compile(r"^# points: (\d+(?:\.\d+)?)\s*$")


class ExerciseFormatError(ValueError):
    """A solution/tests cell does not follow the conventions above."""


def nbgrader_metadata(nb) -> None:
    """Set nbgrader metadata on the cells tagged ``solution`` and ``tests`` (in place)."""
    number = 0
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        cell.metadata.pop("nbgrader", None)
        if "solution" in tags:
            number += 1
            if "### BEGIN SOLUTION" not in cell.source or "### END SOLUTION" not in cell.source:
                raise ExerciseFormatError(f"cell {index}: a solution cell needs ### BEGIN "
                                          "SOLUTION and ### END SOLUTION lines")
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": f"ex{number}_solution",
                                         "locked": False, "schema_version": 3, "solution": True}
        elif "tests" in tags:
            first = cell.source.splitlines()[0] if cell.source else ""
            match = POINTS.match(first)
            if not match or number == 0:
                raise ExerciseFormatError(f"cell {index}: a tests cell must follow a solution "
                                          "cell and start with a '# points: N' line")
            points = float(match.group(1))
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": f"ex{number}_tests",
                                         "locked": True, "points": int(points)
                                         if points.is_integer() else points,
                                         "schema_version": 3, "solution": False}


def clean(nb, name: str | None = None):
    """Return a stripped copy of ``nb`` (an nbformat NotebookNode). With the lesson's file
    ``name`` (``NN_name.ipynb``), the Colab badge and setup cell are written too
    (:func:`apply_colab_cells`)."""
    nb = copy.deepcopy(nb)
    if name and LESSON.fullmatch(name):
        apply_colab_cells(nb, name)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
        **({"colab": nb.metadata["colab"]} if "colab" in nb.metadata else {}),
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_METADATA}
    nbgrader_metadata(nb)
    code_number = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            code_number += 1
            cell.execution_count = None
            if CHECK in cell.source:
                # nbval refuses a reference cell that has outputs but no execution count, so
                # check cells keep one: the cell's position among code cells (stable in diffs).
                cell.execution_count = code_number
                for out in cell.outputs:
                    if "execution_count" in out:
                        out["execution_count"] = code_number
                    if "metadata" in out:
                        out["metadata"] = {}
            else:
                cell.outputs = []
    return nb


def execute(path: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_profile = os.environ.setdefault("COURSE_PROFILE", "smoke")
    print(f"executing {path} (profile {env_profile}) ...", flush=True)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


#: The two editions of a lesson: ``notebooks/`` (the instructor's copy, with the solutions)
#: and ``student/`` (generated by ``python -m course_tools student``).
EDITIONS = ("instructor", "student")
EDITION_FOLDERS = {"instructor": "notebooks", "student": "student"}
_STUDENT_LINK = "/student/"


def edition_colab_url(notebook: str, *, edition: str = "student", repo: str = colab.GITHUB_REPO,
                      ref: str = colab.RELEASE_REF) -> str:
    """The Colab URL of lesson ``notebook`` in ``edition`` (``student/NN_name.ipynb`` or
    ``notebooks/NN_name.ipynb``) of ``repo`` at ``ref``. Raises ValueError for an unknown
    edition or a name that is not a lesson notebook (:func:`course_lib.colab.colab_url`)."""
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    url = colab.colab_url(notebook, repo=repo, ref=ref)
    head, name = url.rsplit("/notebooks/", 1)
    return f"{head}/{EDITION_FOLDERS[edition]}/{name}"


def badge_line(notebook: str, *, edition: str, repo: str = colab.GITHUB_REPO,
               ref: str = colab.RELEASE_REF) -> str:
    """The Markdown line under a lesson's title: the "Open in Colab" badge of this edition and
    what the edition is. The student edition's badge opens ``student/``; the instructor copy's
    badge opens ``notebooks/`` and the line says that it is the instructor's copy and where
    students go instead. Raises ValueError as :func:`edition_colab_url`."""
    url = edition_colab_url(notebook, edition=edition, repo=repo, ref=ref)
    badge = f"[![Open In Colab]({colab.BADGE_IMAGE})]({url})"
    if edition == "student":
        return (f"{badge} **Student edition**: answer the exercises in their cells; each "
                "tests cell says which check failed and why.")
    student = edition_colab_url(notebook, edition="student", repo=repo, ref=ref)
    return (f"{badge} **Instructor copy**, with the solutions and hidden tests in place. "
            f"Students: open the [student edition]({student}).")


def _is_badge_line(line: str) -> bool:
    badge = colab.find_badge(line)
    return badge is not None and line.strip().startswith(badge)


def notebook_edition(nb) -> str | None:
    """The edition named by ``nb``'s title badge (``"student"`` when it opens ``student/``,
    ``"instructor"`` for another badge), or None when the title has no badge."""
    title = nb.cells[0].source if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    line = next((x for x in title.split("\n") if _is_badge_line(x)), None)
    if line is None:
        return None
    return "student" if _STUDENT_LINK in (colab.find_badge(line) or "") else "instructor"


def set_badge_line(nb, notebook: str, *, edition: str, repo: str = colab.GITHUB_REPO,
                   ref: str = colab.RELEASE_REF) -> bool:
    """Replace the badge line under ``nb``'s title by ``edition``'s (:func:`badge_line`), in
    place, adding nothing else; return False (and change nothing) when the title has no
    badge line. ``assign``'s releases use it so that their badge opens the student edition.
    Raises ValueError as :func:`badge_line`."""
    title = nb.cells[0] if nb.cells and nb.cells[0].cell_type == "markdown" else None
    if title is None or not any(_is_badge_line(x) for x in title.source.split("\n")):
        return False
    new = badge_line(notebook, edition=edition, repo=repo, ref=ref)
    title.source = "\n".join(new if _is_badge_line(x) else x for x in title.source.split("\n"))
    return True


def apply_colab_cells(nb, notebook: str, *, repo: str = colab.GITHUB_REPO,
                      ref: str = colab.RELEASE_REF, edition: str | None = None):
    """Put the badge line and the setup cell into lesson notebook ``nb`` (in place); return ``nb``.

    ``nb`` is an nbformat 4 NotebookNode whose first cell is the markdown title (``# NN ·
    Title``). The badge line (:func:`badge_line`) goes on the line after the title (an
    existing badge line is replaced); the setup cell becomes the first code cell (an existing
    one, recognised by :data:`course_lib.colab.SETUP_MARKER`, is rewritten). ``edition`` is
    ``"instructor"`` or ``"student"``; None keeps the edition the existing badge names
    (:func:`notebook_edition`), else the instructor's. Raises ValueError when the first cell
    is not a markdown title, the name is not a lesson notebook or the edition is unknown.
    """
    title = nb.cells[0] if nb.cells else None
    if title is None or title.cell_type != "markdown" or not title.source.startswith("# "):
        raise ValueError(f"{notebook}: the first cell must be the markdown title '# NN · ...'")
    edition = edition or notebook_edition(nb) or "instructor"
    badge = badge_line(notebook, edition=edition, repo=repo, ref=ref)
    lines = [line for line in title.source.split("\n") if not _is_badge_line(line)]
    rest = "\n".join(lines[1:]).strip("\n")
    title.source = f"{lines[0]}\n\n{badge}" + (f"\n\n{rest}" if rest else "")
    source = colab.setup_cell_source(notebook, repo=repo, ref=ref)
    existing = next((c for c in nb.cells if c.cell_type == "code"
                     and c.source.startswith(colab.SETUP_MARKER)), None)
    if existing is not None:
        existing.source = source
        existing.outputs, existing.execution_count = [], None
        nb.cells.remove(existing)
        cell = existing
    else:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = "colab-setup"
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, cell)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--execute", action="store_true")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths:
        nb = execute(path) if args.execute else nbformat.read(path, as_version=4)
        cleaned = clean(nb, path.name)
        text = nbformat.writes(cleaned) + "\n"
        if args.check:
            if path.read_text(encoding="utf-8") != text:
                dirty.append(path)
        else:
            path.write_text(text, encoding="utf-8")
    if dirty:
        print("not clean (run: python tools/nbclean.py FILES):", *dirty, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
