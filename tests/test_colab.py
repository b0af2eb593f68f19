"""Colab plumbing: badges, the setup cell on a simulated Colab runtime, the version window."""

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from course_lib import colab, data
from course_tools import nbclean

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


def test_release_ref_is_the_default_branch_or_a_release_tag_that_exists():
    """The badges must open something that exists: the default branch until a release is
    tagged (``make release`` then pins a tag, which must be in the repository)."""
    ref = colab.RELEASE_REF
    if ref == "main":
        return
    assert ref.startswith("v") and Version(ref[1:]), f"{ref!r}: 'main' or a vX.Y.Z tag"
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        proc = subprocess.run([git, "-C", str(ROOT), "rev-parse", "-q", "--verify",
                               f"refs/tags/{ref}"], capture_output=True, check=False)
        assert proc.returncode == 0, f"RELEASE_REF {ref} is not a tag of this repository"


STUDENT_LESSONS = sorted((ROOT / "student").glob("[0-9][0-9]_*.ipynb"))
ANY_COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/"
                           r"(?P<ref>[^/\s)]+)/(?P<folder>[\w.-]+)/(?P<name>[^\s)\"']+)")


def test_every_badge_and_setup_cell_names_the_same_ref():
    """Both editions' badges and setup cells, and the README's Binder and Colab badges."""
    import nbformat

    refs = {}
    for path in [*LESSONS, *STUDENT_LESSONS]:
        where = f"{path.parent.name}/{path.name}"
        nb = nbformat.read(path, as_version=4)
        for k, url in enumerate(ANY_COLAB_URL.finditer(nb.cells[0].source)):
            refs[f"{where} badge line link {k}"] = url["ref"]
        setup = next(c for c in nb.cells if c.cell_type == "code")
        refs[f"{where} setup cell"] = re.search(r"git\+https://github\.com/[^@\s]+@([^\"\s]+)",
                                               setup.source)[1]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    refs["README Binder badge"] = re.search(r"mybinder\.org/v2/gh/[^/]+/[^/]+/([^?\s)]+)", readme)[1]
    for url in ANY_COLAB_URL.finditer(readme):
        refs[f"README {url['name']}"] = url["ref"]
    assert len(STUDENT_LESSONS) == len(LESSONS)
    assert set(refs.values()) == {colab.RELEASE_REF}, {k: v for k, v in refs.items()
                                                       if v != colab.RELEASE_REF}


def test_every_colab_badge_of_the_readme_opens_the_student_edition():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = list(ANY_COLAB_URL.finditer(readme))
    assert {u["name"] for u in links} == {p.name for p in LESSONS}
    assert {u["folder"] for u in links} == {"student"}
    for path in LESSONS:
        assert f"](student/{path.name})" in readme


def test_badge_lines_name_their_edition_and_the_instructor_copy_says_so():
    import nbformat

    name = "06_cnns_four_ways.ipynb"
    instructor = nbclean.badge_line(name, edition="instructor")
    student = nbclean.badge_line(name, edition="student")
    assert instructor.startswith(colab.badge_markdown(name))  # opens this copy, notebooks/
    assert "**Instructor copy**" in instructor and "solutions" in instructor
    assert f"(https://colab.research.google.com/github/{colab.GITHUB_REPO}/blob/" \
           f"{colab.RELEASE_REF}/student/{name})" in instructor  # where students go
    assert colab.find_badge(student).endswith(f"/blob/{colab.RELEASE_REF}/student/{name})")
    assert "**Student edition**" in student and "notebooks/" not in student
    with pytest.raises(ValueError, match="edition"):
        nbclean.badge_line(name, edition="teacher")
    for edition in nbclean.EDITIONS:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# 06 · CNNs\n\n{colab.badge_markdown(name)}"
                                                  "\n\nText."),
                    nbformat.v4.new_code_cell("x = 1")]
        nbclean.apply_colab_cells(nb, name, edition=edition)
        once = nbformat.writes(nb)
        nbclean.apply_colab_cells(nb, name)  # the edition is kept from the badge
        assert nbformat.writes(nb) == once
        assert nbclean.notebook_edition(nb) == edition
        assert nb.cells[0].source == f"# 06 · CNNs\n\n{nbclean.badge_line(name, edition=edition)}\n\nText."
        assert len(nb.cells) == 3
    assert nbclean.set_badge_line(nb, name, edition="instructor")
    assert nbclean.notebook_edition(nb) == "instructor" and len(nb.cells) == 3
    bare = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 07 · Tiny")])
    assert not nbclean.set_badge_line(bare, "07_tiny.ipynb", edition="student")
    assert bare.cells[0].source == "# 07 · Tiny"


def test_release_tool_moves_every_readme_link_to_the_tag():
    sys.path.insert(0, str(ROOT / "tools"))
    import release as release_tool

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    moved = release_tool.set_readme_refs(readme, "v9.8.7", colab.binder_badge_markdown(ref="v9.8.7"))
    refs = {u["ref"] for u in ANY_COLAB_URL.finditer(moved)}
    assert refs == {"v9.8.7"} and colab.binder_badge_markdown(ref="v9.8.7") in moved
    assert release_tool.set_readme_refs(moved, colab.RELEASE_REF,
                                        colab.binder_badge_markdown()) == readme


def test_apply_to_notebook_is_idempotent_and_replaces_a_wrong_badge():
    import nbformat

    nb = nbformat.v4.new_notebook()
    wrong = colab.badge_markdown("07_sequence_models.ipynb")
    nb.cells = [nbformat.v4.new_markdown_cell(f"# 06 · CNNs\n\n{wrong}\n\nText."),
                nbformat.v4.new_code_cell("import os", metadata={"tags": ["parameters"]})]
    nbclean.apply_colab_cells(nb, "06_cnns_four_ways.ipynb")
    once = nbformat.writes(nb)
    nbclean.apply_colab_cells(nb, "06_cnns_four_ways.ipynb")
    assert nbformat.writes(nb) == once
    assert colab.find_badge(nb.cells[0].source) == colab.badge_markdown("06_cnns_four_ways.ipynb")
    assert nb.cells[0].source.endswith("Text.") and wrong not in nb.cells[0].source
    assert nb.cells[1].source == colab.setup_cell_source("06_cnns_four_ways.ipynb")
    assert nb.cells[2].metadata["tags"] == ["parameters"]


def _run_setup_cell(source, monkeypatch, tmp, *, on_colab):
    """Execute a setup cell with subprocess.run and colab.setup replaced by recorders."""
    commands, lessons = [], []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # the cell writes its held versions there
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    if on_colab:
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260801-060000")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(colab, "setup", lambda lesson, **kw: lessons.append(lesson))
    exec(compile(source, "<setup cell>", "exec"), {})
    return commands, lessons


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_setup_cell_on_a_simulated_colab_runtime(path, monkeypatch, tmp_path):
    source = colab.setup_cell_source(path.name)
    commands, lessons = _run_setup_cell(source, monkeypatch, tmp_path, on_colab=True)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", "-c",
                         str(tmp_path / colab.HELD_CONSTRAINTS_NAME),
                         f"course_lib @ git+https://github.com/{colab.GITHUB_REPO}"
                         f"@{colab.RELEASE_REF}"]]
    assert lessons == [path.name[:2]]
    assert not any(name in " ".join(commands[0]) for name in FRAMEWORK_NAMES)


def test_setup_cell_holds_the_same_versions_as_held_constraints(monkeypatch, tmp_path):
    """The cell's own copy of the held-versions logic (it runs before course_lib is
    installed) writes what colab.held_constraints writes, and holds the frameworks."""
    _run_setup_cell(colab.setup_cell_source("04_jax.ipynb"), monkeypatch, tmp_path, on_colab=True)
    by_cell = (tmp_path / colab.HELD_CONSTRAINTS_NAME).read_text(encoding="utf-8")
    by_lib = colab.held_constraints(tmp_path / "held.txt").read_text(encoding="utf-8")
    assert by_cell == by_lib
    names = {line.split("==")[0] for line in by_lib.splitlines()}
    assert {"numpy", "keras", "jax", "torch"} <= names  # installed in every course environment
    assert names <= colab.HELD


def test_setup_cell_does_nothing_elsewhere(monkeypatch, tmp_path):
    commands, lessons = _run_setup_cell(colab.setup_cell_source("04_jax.ipynb"), monkeypatch, tmp_path,
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


class _Pip:
    """A stand-in for subprocess.run that records pip commands and refuses ``refused``."""

    def __init__(self, refused=()):
        self.ran, self.refused = [], set(refused)

    def __call__(self, cmd, **kw):
        self.ran.append(cmd)
        wanted = {Requirement(r).name for r in cmd[7:]}
        return subprocess.CompletedProcess(cmd, 1 if wanted & self.refused else 0)


def test_setup_installs_missing_packages_only_on_colab(tmp_path):
    run = _Pip()
    held = tmp_path / "held.txt"
    colab_env = {"COLAB_RELEASE_TAG": "x", "COLAB_GPU": "1"}
    done = colab.setup("10", environ=colab_env, run=run, installed=lambda n: False,
                       data_folder=lambda: tmp_path, constraints=held)
    assert run.ran == done and len(run.ran) == 1 and "onnxruntime>=1.20,<1.33" in run.ran[0]
    assert run.ran[0][5:7] == ["-c", str(held)]  # the runtime's frameworks held
    assert colab.setup("10", environ={}, run=run, installed=lambda n: False,
                       data_folder=lambda: tmp_path) == []
    assert colab.colab_accelerator(colab_env) == "GPU"
    assert colab.colab_accelerator({"COLAB_RELEASE_TAG": "x", "COLAB_TPU_ADDR": "10.0.0.2"}) == "TPU"


def test_setup_installs_the_others_when_one_package_cannot_live_beside_the_frameworks(
        tmp_path, capsys):
    run = _Pip(refused={"jax2onnx"})
    colab.setup("10", environ={"COLAB_RELEASE_TAG": "x"}, run=run, installed=lambda n: False,
                data_folder=lambda: tmp_path, constraints=tmp_path / "held.txt")
    wanted = colab.LESSON_PACKAGES["10"]
    singles = [cmd[7:] for cmd in run.ran[1:]]
    assert singles == [[r] for r in wanted]  # all at once refused, then one by one
    out = capsys.readouterr().out
    assert "could not install jax2onnx" in out and "skips the part that needs it" in out
    assert "could not install onnx>" not in out


def test_setup_fetches_reference_records_for_the_lessons_that_read_them(tmp_path):
    fetched = []
    for lesson in ("01", "12"):
        colab.setup(lesson, environ={"COLAB_RELEASE_TAG": "x"}, run=_Pip(),
                    installed=lambda n: True, data_folder=lambda: tmp_path,
                    reference_folder=lambda lesson=lesson: fetched.append(lesson) or tmp_path)
    assert fetched == ["12"]


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


def test_fetch_folder_fetches_nested_reference_records_and_refuses_escapes(tmp_path):
    served = tmp_path / "served"
    shutil.copytree(ROOT / "results" / "reference",
                    served / colab.GITHUB_REPO / colab.RELEASE_REF / "results" / "reference")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        folder = colab.fetch_folder("results/reference", base_url=base, folder=tmp_path / "ref")
        manifest = json.loads((ROOT / "results" / "reference" / "MANIFEST.json").read_text())
        for name, entry in manifest.items():
            assert data.sha256_of(folder / name) == entry["sha256"]
        from course_lib import evidence

        records = evidence.load_records(tmp_path / "no-run", folder)
        assert set(records["lesson"]) >= {"09"} and records["is_reference"].all()
        manifest_path = served / colab.GITHUB_REPO / colab.RELEASE_REF / "results/reference/MANIFEST.json"
        manifest_path.write_text(json.dumps({"../../secret": {"sha256": "0" * 64}}))
        with pytest.raises(data.DataError, match="outside"):
            colab.fetch_folder("results/reference", base_url=base, folder=tmp_path / "evil")
    finally:
        server.shutdown()


def test_reference_manifest_lists_every_committed_reference_record():
    """results/reference/MANIFEST.json is what Colab's setup downloads and checks."""
    ref = ROOT / "results" / "reference"
    manifest = json.loads((ref / "MANIFEST.json").read_text(encoding="utf-8"))
    files = {str(p.relative_to(ref)) for p in ref.rglob("*.jsonl")}
    assert set(manifest) == files, "regenerate results/reference/MANIFEST.json (see its README)"
    for name, entry in manifest.items():
        assert data.sha256_of(ref / name) == entry["sha256"], f"{name} changed; regenerate"


def test_raw_base_url_can_be_a_mirror(monkeypatch):
    monkeypatch.delenv("COURSE_RAW_BASE_URL", raising=False)
    assert colab.raw_url("data/x.csv", ref="main").startswith(
        f"https://raw.githubusercontent.com/{colab.GITHUB_REPO}/main/")
    monkeypatch.setenv("COURSE_RAW_BASE_URL", "http://mirror.example/")
    assert colab.raw_url("data/x.csv", ref="main") == (
        f"http://mirror.example/{colab.GITHUB_REPO}/main/data/x.csv")


def test_fetch_data_without_a_manifest_says_what_to_do(data_server, tmp_path):
    base_url, target = data_server
    (target / "MANIFEST.json").unlink()
    with pytest.raises(data.DataError, match="manifest"):
        colab.fetch_data(base_url=base_url, folder=tmp_path / "cache")


def _requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["frameworks"]]
    return project, {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def _colab_versions():
    sys.path.insert(0, str(ROOT / "tools"))
    import colab_lane

    return colab_lane.read_versions()


def test_pyproject_lower_bounds_are_the_versions_the_colab_lane_runs():
    """The version window: each declared package's lower bound is exactly the version of
    colab/versions.txt (what make test-colab runs), so the bound is tested, not guessed."""
    project, reqs = _requirements()
    pins = _colab_versions()
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(project["requires-python"]).contains("3.13")
    checked = 0
    for name, version in pins.items():
        req = reqs.get(name) or reqs.get(f"{name}-cpu")
        if req is None:
            continue
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower == [version], f"{req}: its lower bound should be Colab's {version}"
        checked += 1
    assert checked >= 10
    for lesson, wanted in colab.LESSON_PACKAGES.items():
        for r in map(Requirement, wanted):
            pin = pins.get(r.name) or pins.get(r.name.removesuffix("-cpu"))
            assert pin is None or r.specifier.contains(pin), f"lesson {lesson}: {r} vs {pin}"


def test_colab_versions_match_the_curriculum():
    text = (ROOT.parent / "shared" / "CURRICULUM.md")
    if not text.is_file():
        pytest.skip("../shared/CURRICULUM.md is not beside this checkout")
    section = text.read_text(encoding="utf-8").split("## 8.")[1]
    pins = _colab_versions()
    labels = {"tensorflow": "TensorFlow", "keras": "Keras", "torch": "PyTorch", "jax": "JAX",
              "flax": "Flax", "scikit-learn": "scikit-learn", "numpy": "NumPy"}
    for name, label in labels.items():
        major_minor = ".".join(pins[name].split(".")[:2])
        assert f"{label} {major_minor}" in section, f"CURRICULUM section 8 no longer says {label} {major_minor}"
