"""Colab plumbing: badges, the setup cell on a simulated Colab runtime, the version window."""

import functools
import http.server
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from course_lib import colab, data

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FRAMEWORK_NAMES = ("torch", "tensorflow", "keras", "jax", "flax")


def test_badge_points_at_the_notebook_at_the_pinned_release():
    badge = colab.badge_markdown("06_cnns_four_ways.ipynb")
    assert colab.find_badge(f"# 06 · CNNs\n\n{badge}\n") == badge
    assert (f"colab.research.google.com/github/{colab.GITHUB_REPO}/blob/{colab.RELEASE_REF}/"
            "notebooks/06_cnns_four_ways.ipynb)") in badge
    with pytest.raises(ValueError, match="NN_name.ipynb"):
        colab.badge_markdown("notes.ipynb")


def test_release_ref_is_a_tag_not_a_moving_branch():
    assert colab.RELEASE_REF not in {"main", "master", "HEAD", "develop"}
    assert colab.RELEASE_REF.startswith("v") and Version(colab.RELEASE_REF[1:])


def test_apply_to_notebook_is_idempotent_and_replaces_a_wrong_badge():
    import nbformat

    nb = nbformat.v4.new_notebook()
    wrong = colab.badge_markdown("07_sequence_models.ipynb")
    nb.cells = [nbformat.v4.new_markdown_cell(f"# 06 · CNNs\n\n{wrong}\n\nText."),
                nbformat.v4.new_code_cell("import os", metadata={"tags": ["parameters"]})]
    colab.apply_to_notebook(nb, "06_cnns_four_ways.ipynb")
    once = nbformat.writes(nb)
    colab.apply_to_notebook(nb, "06_cnns_four_ways.ipynb")
    assert nbformat.writes(nb) == once
    assert colab.find_badge(nb.cells[0].source) == colab.badge_markdown("06_cnns_four_ways.ipynb")
    assert nb.cells[0].source.endswith("Text.") and wrong not in nb.cells[0].source
    assert nb.cells[1].source == colab.setup_cell_source("06_cnns_four_ways.ipynb")
    assert nb.cells[2].metadata["tags"] == ["parameters"]


def _run_setup_cell(source, monkeypatch, *, on_colab):
    """Execute a setup cell with subprocess.run and colab.setup replaced by recorders."""
    commands, lessons = [], []
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    if on_colab:
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260801-060000")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(colab, "setup", lambda lesson, **kw: lessons.append(lesson))
    exec(compile(source, "<setup cell>", "exec"), {})
    return commands, lessons


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_setup_cell_on_a_simulated_colab_runtime(path, monkeypatch):
    source = colab.setup_cell_source(path.name)
    commands, lessons = _run_setup_cell(source, monkeypatch, on_colab=True)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q",
                         f"course_lib @ git+https://github.com/{colab.GITHUB_REPO}"
                         f"@{colab.RELEASE_REF}"]]
    assert lessons == [path.name[:2]]
    assert not any(name in " ".join(commands[0]) for name in FRAMEWORK_NAMES)


def test_setup_cell_does_nothing_elsewhere(monkeypatch):
    commands, lessons = _run_setup_cell(colab.setup_cell_source("04_jax.ipynb"), monkeypatch,
                                        on_colab=False)
    assert commands == [] and lessons == []


@pytest.mark.parametrize("lesson", [f"{i:02d}" for i in range(13)])
def test_install_command_names_only_missing_packages_never_a_framework(lesson):
    nothing = colab.install_command(lesson, installed=lambda name: False)
    everything = colab.install_command(lesson, installed=lambda name: True)
    assert everything is None
    wanted = colab.LESSON_PACKAGES.get(lesson, ())
    if not wanted:
        assert nothing is None
        return
    assert nothing[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert nothing[5:] == list(wanted)
    named = {Requirement(r).name.lower() for r in nothing[5:]}
    assert not named & colab.NEVER_INSTALL
    assert not named & set(FRAMEWORK_NAMES)


def test_install_command_skips_what_is_installed():
    installed = {"onnx", "onnxruntime"}
    command = colab.install_command("10", installed=lambda name: name in installed)
    assert command and not {Requirement(r).name for r in command[5:]} & installed


def test_install_command_refuses_a_framework(monkeypatch):
    monkeypatch.setitem(colab.LESSON_PACKAGES, "99", ("torch>=2.11",))
    with pytest.raises(ValueError, match="Colab ships them"):
        colab.install_command("99", installed=lambda name: False)
    with pytest.raises(ValueError, match="two digits"):
        colab.install_command("6")


def test_setup_installs_missing_packages_only_on_colab(tmp_path):
    ran = []

    def run(cmd, **kw):
        ran.append(cmd)

    colab_env = {"COLAB_RELEASE_TAG": "x", "COLAB_GPU": "1"}
    done = colab.setup("10", environ=colab_env, run=run, installed=lambda n: False,
                       data_folder=lambda: tmp_path)
    assert ran == done and len(ran) == 1 and "onnxruntime>=1.20,<1.33" in ran[0]
    assert colab.setup("10", environ={}, run=run, installed=lambda n: False,
                       data_folder=lambda: tmp_path) == []
    assert colab.colab_accelerator(colab_env) == "GPU"
    assert colab.colab_accelerator({"COLAB_RELEASE_TAG": "x", "COLAB_TPU_ADDR": "10.0.0.2"}) == "TPU"


@pytest.fixture
def data_server(tmp_path):
    """A local HTTP server with the course's data/ at <repo>/<ref>/data/ (as raw GitHub has)."""
    served = tmp_path / "served"
    target = served / colab.GITHUB_REPO / colab.RELEASE_REF / "data"
    shutil.copytree(ROOT / "data", target)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", target
    server.shutdown()


def test_fetch_data_downloads_and_verifies_every_file(data_server, tmp_path):
    base_url, _ = data_server
    folder = colab.fetch_data(base_url=base_url, folder=tmp_path / "cache")
    assert (folder / "MANIFEST.json").is_file()
    for name, entry in data.manifest(ROOT / "data").items():
        assert data.sha256_of(folder / name) == entry["sha256"]


def test_fetch_data_with_a_corrupted_file_leaves_no_manifest(data_server, tmp_path):
    base_url, target = data_server
    name = sorted(data.manifest(ROOT / "data"))[0]
    (target / name).write_text("corrupted", encoding="utf-8")
    with pytest.raises(data.ChecksumMismatch):
        colab.fetch_data(base_url=base_url, folder=tmp_path / "cache")
    assert not (tmp_path / "cache" / "MANIFEST.json").exists()
    assert not (tmp_path / "cache" / name).exists()
    assert not list((tmp_path / "cache").glob(".*tmp")), "a temporary file was left behind"


def test_fetch_data_without_a_manifest_says_what_to_do(data_server, tmp_path):
    base_url, target = data_server
    (target / "MANIFEST.json").unlink()
    with pytest.raises(data.DataError, match="manifest"):
        colab.fetch_data(base_url=base_url, folder=tmp_path / "cache")


def _requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["frameworks"]]
    return project, {Requirement(r).name.lower(): Requirement(r) for r in reqs}


@pytest.mark.parametrize("runtime_kind", sorted(colab.COLAB_SHIPS))
def test_pyproject_ranges_admit_what_colab_ships(runtime_kind):
    """The version window: every lower bound admits Colab's versions (CURRICULUM section 8)."""
    project, reqs = _requirements()
    ships = colab.COLAB_SHIPS[runtime_kind]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(project["requires-python"]).contains(ships["python"])
    for name, version in ships.items():
        if name == "python":
            continue
        req = reqs.get(name) or reqs.get(f"{name}-cpu")
        assert req is not None, f"pyproject.toml does not declare {name}"
        assert req.specifier.contains(version), f"{req} does not admit Colab's {name} {version}"


def test_colab_table_matches_the_curriculum():
    text = (ROOT.parent / "shared" / "CURRICULUM.md")
    if not text.is_file():
        pytest.skip("../shared/CURRICULUM.md is not beside this checkout")
    section = text.read_text(encoding="utf-8").split("## 8.")[1]
    for name, version in colab.COLAB_SHIPS["cpu/gpu"].items():
        label = {"tensorflow": "TensorFlow", "keras": "Keras", "torch": "PyTorch", "jax": "JAX",
                 "flax": "Flax", "scikit-learn": "scikit-learn", "numpy": "NumPy",
                 "python": "Python"}[name]
        assert f"{label} {version}" in section, f"CURRICULUM section 8 no longer says {label} {version}"


def test_lesson_packages_use_the_ranges_of_pyproject():
    """LESSON_PACKAGES repeats ranges of pyproject.toml (Colab installs them without the
    repository's pyproject): they must not drift apart."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {}  # name -> specifier; "xgboost-cpu" (the lock's CPU build) also as "xgboost"
    for text in [*project["dependencies"], *(r for group in project["optional-dependencies"]
                                            .values() for r in group)]:
        req = Requirement(text)
        declared[req.name.lower()] = declared[req.name.lower().removesuffix("-cpu")] = req.specifier
    for lesson, wanted in colab.LESSON_PACKAGES.items():
        for text in wanted:
            req = Requirement(text)
            assert declared.get(req.name.lower()) == req.specifier, (lesson, text)


def test_binder_url_follows_the_colab_links():
    link = colab.colab_url("03_pytorch.ipynb", repo="someone/course", ref="v2")
    assert colab.binder_url_for(link) == colab.binder_url(repo="someone/course", ref="v2")
    assert colab.binder_url_for("https://example.org/x") is None
