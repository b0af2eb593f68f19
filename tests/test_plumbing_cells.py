"""Plumbing out of the way (issue 18, item 6): cells that exist for the course's machinery are
tagged ``hide-input`` (the site shows them collapsed), lesson code never is, and the rationale
of the machinery lives once, in docs/plumbing.md, which the lessons link to.

The rule, stated so that a program can check it on the lessons' source:

- *plumbing-only* cell: the Colab setup cell, or a code cell whose every top-level statement
  is a call of a plumbing function (:data:`PLUMBING_CALL`), an assignment of one, a ``for``
  loop of such statements, or a ``print`` whose arguments call nothing but plumbing
  functions. Each must be tagged ``hide-input``.
- a tagged cell holds no lesson code: no class definition, no ``%%writefile`` script (the code
  that a worker process runs stays readable), no exercise (``solution``/``tests``), no
  ``# NBVAL_CHECK_OUTPUT`` check, and no use of a deep-learning framework (``torch.``,
  ``tf.``, ``keras.``, ``jax.`` other than ``jax.clear_caches``, ...), nor an import of one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import colab

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TAG = "hide-input"
PLUMBING_CALL = re.compile(r"^(results\.record\w*|workers\.\w+|gc\.collect|jax\.clear_caches|"
                           r"runtime\.memory_mb|bench\.record_bench)$")
FRAMEWORKS = ("torch", "tf", "tensorflow", "keras", "jax", "jnp", "nnx", "flax", "optax")
ALLOWED_FRAMEWORK_CALLS = {"jax.clear_caches"}
APPENDIX = ROOT / "docs" / "plumbing.md"
LINK = re.compile(r"\]\((https://github\.com/[^/]+/[^/]+/blob/[^/]+/docs/plumbing\.md)[)#]")


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _code(source: str) -> str:
    """A cell's Python: IPython magics and shell lines blanked, so that ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def _plumbing_statement(stmt) -> bool:
    if isinstance(stmt, (ast.Expr, ast.Assign, ast.AnnAssign)) and isinstance(stmt.value,
                                                                               ast.Call):
        name = _dotted(stmt.value.func) or ""
        if PLUMBING_CALL.match(name):
            return True
        if name == "print":
            inner = [n for arg in stmt.value.args for n in ast.walk(arg) if isinstance(n, ast.Call)]
            return bool(inner) and all(PLUMBING_CALL.match(_dotted(n.func) or "") for n in inner)
        return False
    if isinstance(stmt, ast.For):
        return all(_plumbing_statement(s) for s in stmt.body) and not stmt.orelse
    return False


def is_plumbing_only(cell) -> bool:
    """True for the Colab setup cell and for code cells made only of plumbing statements."""
    if cell.cell_type != "code":
        return False
    if cell.source.startswith(colab.SETUP_MARKER):
        return True
    body = ast.parse(_code(cell.source)).body
    return bool(body) and all(_plumbing_statement(s) for s in body)


def lesson_code_in(cell) -> list[str]:
    """What in ``cell`` is lesson code (empty when it is plumbing only)."""
    found = []
    tags = cell.metadata.get("tags", [])
    found += [f"tag {t}" for t in ("solution", "tests") if t in tags]
    if cell.source.lstrip().startswith("%%writefile"):
        found.append("%%writefile script")
    if "# NBVAL_CHECK_OUTPUT" in cell.source:
        found.append("NBVAL_CHECK_OUTPUT check")
    if cell.source.startswith(colab.SETUP_MARKER):
        return found  # the setup cell installs frameworks by name (pip), uses none
    for node in ast.walk(ast.parse(_code(cell.source))):
        if isinstance(node, ast.ClassDef):
            found.append(f"class {node.name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            found += [f"import {m}" for m in modules if m.split(".")[0] in FRAMEWORKS]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func) or ""
            if name.split(".")[0] in FRAMEWORKS and name not in ALLOWED_FRAMEWORK_CALLS:
                found.append(f"call {name}")
    return found


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem[:2])
def test_plumbing_cells_are_tagged_and_tagged_cells_hold_no_lesson_code(path):
    nb = nbformat.read(path, as_version=4)
    untagged, misused = [], []
    for index, cell in enumerate(nb.cells):
        tagged = TAG in cell.metadata.get("tags", [])
        if cell.cell_type != "code":
            if tagged:
                misused.append((index, "a markdown cell"))
            continue
        if is_plumbing_only(cell) and not tagged:
            untagged.append((index, cell.source.splitlines()[0][:70]))
        if tagged and (found := lesson_code_in(cell)):
            misused.append((index, found))
    assert not untagged, (f"{path.name}: plumbing-only cells need the {TAG!r} tag "
                          f"(docs/plumbing.md): {untagged}")
    assert not misused, (f"{path.name}: cells tagged {TAG!r} hold lesson code; keep it visible "
                         f"(move the plumbing to a cell of its own): {misused}")


def test_the_rule_classifies_known_cells():
    code = nbformat.v4.new_code_cell
    assert is_plumbing_only(code('results.record("06", "x", 1.0, "abs", framework="torch")'))
    assert is_plumbing_only(code('for k, v in rows:\n    results.record("06", k, v, "s")'))
    assert is_plumbing_only(code("jax.clear_caches()\n"
                                 'print(f"{runtime.memory_mb():.0f} MB now")'))
    assert is_plumbing_only(code(colab.SETUP_MARKER + " (does nothing elsewhere)\nimport os"))
    assert not is_plumbing_only(code('loss = train(model)\nresults.record("06", "l", loss, "")'))
    assert not is_plumbing_only(code('print("accuracy", accuracy(model))'))
    assert lesson_code_in(code("class CNN(nn.Module):\n    pass")) == ["class CNN"]
    assert lesson_code_in(code("%%writefile w.py\nimport tensorflow as tf")) == [
        "%%writefile script", "import tensorflow"]
    assert lesson_code_in(code("jax.clear_caches()\ny = jax.jit(f)(x)")) == ["call jax.jit"]
    assert lesson_code_in(code('job = workers.run(cmd, timeout=60)\nnp.savez(f, x=x)')) == []


def test_the_appendix_explains_the_plumbing_once_and_the_lessons_link_to_it():
    text = APPENDIX.read_text(encoding="utf-8")
    for topic in ("Colab setup", "results.record", "workers.run", "jax.clear_caches", TAG,
                  "%%writefile"):
        assert topic in text, f"docs/plumbing.md does not explain {topic!r}"
    links = {}
    for path in LESSONS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                for url in LINK.findall(cell.source):
                    links[path.stem[:2]] = url
    assert links, "no lesson links to docs/plumbing.md"
    repo = f"https://github.com/{colab.GITHUB_REPO}/blob/"
    assert all(url.startswith(repo) for url in links.values()), links
