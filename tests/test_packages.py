"""Two packages: `course_lib` (what the notebooks import) and `course_tools` (the tooling).

The core must never import the tooling, the notebooks import only the core, and the core's
declared dependencies are all it needs (`make test-colab` also installs it alone on Python
3.13 and imports every module: `tools/colab_lane.py`, `check_core_install`)."""

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "course_lib").glob("*.py"))
TOOLS = sorted((ROOT / "course_tools").rglob("*.py"))


def _imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_never_imports_the_tooling(path):
    imported = _imported_modules(path.read_text(encoding="utf-8"))
    assert not {m for m in imported if m.split(".")[0] == "course_tools"}, path.name


def test_every_notebook_imports_only_the_core():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        imports = re.findall(r"^\s*(?:from|import)\s+(course_\w+)", code, re.M)
        assert set(imports) == {"course_lib"}, f"{path.name} imports {set(imports)}"


def test_the_core_imports_only_what_it_declares():
    """Third-party modules imported by course_lib (at any depth: lazily too) are its declared
    dependencies or the frameworks the lessons bring; never papermill, nbformat, Sphinx."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {d.split(">")[0].split("<")[0].split("=")[0].strip().replace("-", "_").lower()
                for d in project["dependencies"]}
    declared |= {"sklearn"} if "scikit_learn" in declared else set()
    frameworks = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "xgboost",
                  "onnx", "onnxruntime", "skl2onnx", "tf2onnx", "jax2onnx", "onnxscript",
                  "ai_edge_litert", "coremltools", "ml_dtypes"}
    optional = {"jinja2"}  # parity.show falls back to a plain table without it
    optional |= {"IPython"}  # the notebook kernel itself (runtime.skip_remaining_cells)
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in CORE:
        for module in _imported_modules(path.read_text(encoding="utf-8")):
            top = module.split(".")[0]
            if top in stdlib or top == "course_lib":
                continue
            assert top in declared | frameworks | optional, f"{path.name} imports {module}, not declared"
    assert not declared & {"papermill", "nbformat", "nbgrader", "sphinx"}


def test_tooling_dependencies_are_extras_that_include_tools():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("papermill") for d in extras["tools"])
    assert any(d.startswith("nbformat") for d in extras["tools"])
    for extra in ("site", "instructor"):
        assert "course_lib[tools]" in extras[extra]
    assert project["scripts"]["course"].startswith("course_tools.")
