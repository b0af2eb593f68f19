"""The lesson notebooks as source files: structure, cleanliness, links (nbval executes them)."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import colab

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_lessons():
    assert len(LESSONS) >= 2


@pytest.fixture(params=LESSONS, ids=lambda p: p.stem)
def lesson(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_first_code_cells_are_the_colab_setup_then_the_parameters(lesson):
    path, nb = lesson
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    setup, params = [c for c in nb.cells if c.cell_type == "code"][:2]
    assert setup.source == colab.setup_cell_source(path.name)
    assert "parameters" in params.metadata.get("tags", [])
    assert re.search(r'^PROFILE = os\.environ\.get\("COURSE_PROFILE", "full"\)', params.source, re.M)
    assert re.search(r"^SEED = \d+", params.source, re.M)


def test_badge_opens_this_very_notebook(lesson):
    path, nb = lesson
    badge = colab.find_badge(nb.cells[0].source)
    assert badge is not None, f"{path.name}: no Open in Colab badge in the title cell"
    assert badge == colab.badge_markdown(path.name)
    assert badge.endswith(f"/blob/{colab.RELEASE_REF}/notebooks/{path.name})")


def test_lesson_has_objectives_exercises_summary_and_links(lesson):
    path, nb = lesson
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "What you will learn" in text
    assert "## Exercises" in text and "## What we measured" in text
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert 2 <= tags.count("solution") <= 4 and tags.count("tests") == tags.count("solution")
    for target in re.findall(r"\]\(([0-9][0-9]_[a-z0-9_]+\.ipynb)\)", text):
        assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"


def test_notebooks_are_clean():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "nbclean.py"), "--check",
                           *map(str, LESSONS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
