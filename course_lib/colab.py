"""Colab and Binder plumbing: the "Open in Colab" badge, the Colab setup cell, what Colab ships.

Every lesson starts with

1. a badge in its first markdown cell, from :func:`badge_markdown`, pointing at the lesson's
   own file at the course's pinned release (:data:`RELEASE_REF`, a tag, never a branch);
2. a first code cell, from :func:`setup_cell_source`, which does nothing outside Colab. On
   Colab it installs ``course_lib`` from the repository at :data:`RELEASE_REF` (with its small
   core dependencies, which Colab already has) and then calls :func:`setup`, which installs
   only the lesson's packages that this runtime lacks and fetches the course's data files.
   TensorFlow, PyTorch, JAX, Keras and Flax are never installed there (:data:`NEVER_INSTALL`):
   reinstalling them would replace Colab's CUDA/TPU builds.

``tools/nbclean.py`` writes both into every lesson it cleans (:func:`apply_to_notebook`);
``tests/test_colab.py`` fails when one is missing or points at the wrong file.

Maintainers: :data:`GITHUB_REPO` and :data:`RELEASE_REF` are the only two settings. After
tagging a release, set :data:`RELEASE_REF` to the tag and rewrite the cells.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: ``owner/name`` of the course's GitHub repository.
GITHUB_REPO = "ml-frameworks-course/course"
#: The release the Colab cells install and the badges open: a tag, so that a lesson opened
#: on Colab runs the code it was tested with (a branch would move under it).
RELEASE_REF = "v0.1.0"

#: What Colab's runtimes ship (its published runtime list, August 2026; CURRICULUM section 8).
#: ``tests/test_colab.py`` checks that ``pyproject.toml``'s lower bounds admit every version.
COLAB_SHIPS = {
    "cpu/gpu": {"python": "3.13", "tensorflow": "2.20", "keras": "3.13", "torch": "2.11",
                "jax": "0.7.2", "flax": "0.11", "scikit-learn": "1.6", "numpy": "2.1"},
    "tpu": {"python": "3.13", "jax": "0.7.2", "flax": "0.11", "torch": "2.11",
            "scikit-learn": "1.6", "numpy": "2.1"},  # PyTorch/XLA; no TensorFlow
}

#: Distributions the setup never installs on Colab (Colab's own builds must stay).
NEVER_INSTALL = frozenset({
    "torch", "torchvision", "torchaudio", "torch-xla", "tensorflow", "tensorflow-cpu",
    "tf-keras", "keras", "jax", "jaxlib", "libtpu", "flax", "numpy",
})

#: Packages a lesson needs beyond course_lib's core dependencies and the frameworks, as pip
#: requirements (ranges as in ``pyproject.toml``). Installed on Colab only when missing.
LESSON_PACKAGES: dict[str, tuple[str, ...]] = {
    "01": ("xgboost>=2.1,<4",),
    "04": ("optax>=0.2.4,<0.3",),
    "06": ("optax>=0.2.4,<0.3",),
    "07": ("optax>=0.2.4,<0.3",),
    "10": ("onnx>=1.17,<1.24", "onnxruntime>=1.20,<1.33", "skl2onnx>=1.18,<1.21",
           "onnxscript>=0.5,<0.8", "tf2onnx>=1.16,<1.18", "jax2onnx>=0.10,<0.18",
           "ai-edge-litert>=1.4,<2.4", "coremltools>=8.3,<10"),
}

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: The first line of every setup cell (how tools and tests recognise it).
SETUP_MARKER = "# Colab setup"
_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def colab_url(notebook: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF) -> str:
    """The URL that opens ``notebooks/<notebook>`` of ``repo`` at ``ref`` in Colab.

    ``notebook`` is a file name such as ``"06_cnns_four_ways.ipynb"``; a path is reduced to
    its name. Raises ValueError for a name that is not a lesson notebook (``NN_name.ipynb``).
    """
    name = Path(notebook).name
    if not re.fullmatch(r"\d\d_[A-Za-z0-9_]+\.ipynb", name):
        raise ValueError(f"not a lesson notebook name (NN_name.ipynb): {notebook!r}")
    return (f"https://colab.research.google.com/github/{repo}/blob/"
            f"{urllib.parse.quote(ref)}/notebooks/{name}")


#: Matches a :func:`colab_url` (of any repository and ref) and names its parts.
COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/(?P<owner>[\w.-]+)/"
                       r"(?P<repo>[\w.-]+)/blob/(?P<ref>[^/\s)\"']+)/notebooks/[^\s)\"']+")


def binder_url_for(colab_link: str) -> str | None:
    """The :func:`binder_url` of the repository and ref a :func:`colab_url` points at (None
    for a text that is not one), so that a page's Binder badge opens what its Colab badges do."""
    match = COLAB_URL.match(colab_link)
    if match is None:
        return None
    return binder_url(repo=f"{match['owner']}/{match['repo']}", ref=urllib.parse.unquote(match["ref"]))


def badge_markdown(notebook: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF) -> str:
    """The Markdown of the "Open in Colab" badge for ``notebook`` (see :func:`colab_url`)."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, repo=repo, ref=ref)})"


BINDER_BADGE_IMAGE = "https://mybinder.org/badge_logo.svg"


def binder_url(*, repo: str = GITHUB_REPO, ref: str = RELEASE_REF) -> str:
    """The mybinder.org URL that builds ``binder/`` at ``ref`` and opens JupyterLab on the
    lessons (``notebooks/``)."""
    return (f"https://mybinder.org/v2/gh/{repo}/{urllib.parse.quote(ref)}"
            "?urlpath=lab/tree/notebooks")


def binder_badge_markdown(*, repo: str = GITHUB_REPO, ref: str = RELEASE_REF) -> str:
    """The Markdown of the "Launch Binder" badge (see :func:`binder_url`)."""
    return f"[![Launch Binder]({BINDER_BADGE_IMAGE})]({binder_url(repo=repo, ref=ref)})"


def find_badge(markdown: str) -> str | None:
    """The first "Open in Colab" badge in a Markdown text, or None."""
    match = _BADGE.search(markdown)
    return match.group(0) if match else None


def lesson_number(notebook: str) -> str:
    """``"06"`` for ``"06_cnns_four_ways.ipynb"`` (ValueError for other names)."""
    colab_url(notebook)  # validates the name
    return Path(notebook).name[:2]


def setup_cell_source(notebook: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF) -> str:
    """The source of a lesson's first code cell: the Colab setup (a no-op elsewhere).

    Detection: Colab sets ``COLAB_RELEASE_TAG`` in every runtime's environment (CPU, GPU and
    TPU). The cell needs nothing but the standard library before course_lib is installed.
    """
    lesson = lesson_number(notebook)
    spec = f"course_lib @ git+https://github.com/{repo}@{ref}"
    return (
        f"{SETUP_MARKER} (does nothing elsewhere): install course_lib at the course's release\n"
        "# and only what this runtime lacks; Colab's TensorFlow, PyTorch, JAX and Keras are kept.\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "COLAB_RELEASE_TAG" in os.environ:\n'
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{spec}"], check=True)\n'
        "    from course_lib import colab\n"
        "\n"
        f'    colab.setup("{lesson}")'
    )


def _dist_name(requirement: str) -> str:
    name = re.split(r"[\s<>=!~;\[@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name: str) -> bool:
    try:
        _metadata.version(name)
        return True
    except _metadata.PackageNotFoundError:
        return False


def install_command(lesson: str, *, installed: Callable[[str], bool] = _installed,
                    python: str | None = None) -> list[str] | None:
    """The pip command that installs lesson ``lesson``'s missing packages, or None.

    Args:
        lesson: two-digit lesson number, e.g. ``"10"``.
        installed: ``installed(distribution_name) -> bool`` (default: package metadata).
        python: the interpreter (default ``sys.executable``).

    Returns ``[python, "-m", "pip", "install", "-q", req, ...]`` naming only requirements of
    :data:`LESSON_PACKAGES` whose distribution is not installed; None when nothing is missing.

    Raises:
        ValueError: ``lesson`` is not two digits, or a requirement names a framework of
            :data:`NEVER_INSTALL` (a bug in :data:`LESSON_PACKAGES`).
    """
    if not re.fullmatch(r"\d\d", str(lesson)):
        raise ValueError(f"lesson must be two digits such as '06', got {lesson!r}")
    wanted = LESSON_PACKAGES.get(str(lesson), ())
    banned = sorted({_dist_name(r) for r in wanted} & NEVER_INSTALL)
    if banned:
        raise ValueError(f"lesson {lesson} would install {banned} on Colab; Colab ships them")
    missing = [r for r in wanted if not installed(_dist_name(r))]
    if not missing:
        return None
    return [python or sys.executable, "-m", "pip", "install", "-q", *missing]


def raw_url(path: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF,
            base_url: str = "https://raw.githubusercontent.com") -> str:
    """The URL of repository file ``path`` at ``ref``: ``{base_url}/{repo}/{ref}/{path}``."""
    return f"{base_url.rstrip('/')}/{repo}/{urllib.parse.quote(ref)}/{path}"


def fetch_data(*, repo: str = GITHUB_REPO, ref: str = RELEASE_REF,
               base_url: str = "https://raw.githubusercontent.com",
               folder: str | os.PathLike | None = None,
               names: Sequence[str] | None = None) -> Path:
    """Download the course's ``data/`` files at ``ref`` into a cache folder; return the folder.

    ``data/MANIFEST.json`` is read first (names, SHA-256s); every file is then downloaded with
    :func:`course_lib.data.fetch`, which verifies its SHA-256 after the download and never
    leaves a partial file. The manifest is written last, so a folder with a ``MANIFEST.json``
    is complete. ``base_url`` is for tests (a local HTTP server).

    Raises:
        course_lib.data.DataError: the manifest or a file could not be downloaded.
        course_lib.data.ChecksumMismatch: a file does not match the manifest's SHA-256.
    """
    import requests

    from course_lib import data

    folder = Path(folder) if folder is not None else data.cache_dir() / "data" / ref
    folder.mkdir(parents=True, exist_ok=True)
    url = raw_url("data/MANIFEST.json", repo=repo, ref=ref, base_url=base_url)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        manifest = response.json()
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise data.DataError(f"could not read the course's data manifest at {url}: {exc}. "
                             "Check the runtime's network connection and run the cell "
                             "again.") from None
    for name in names if names is not None else sorted(manifest):
        data.fetch(raw_url(f"data/{name}", repo=repo, ref=ref, base_url=base_url),
                   manifest[name]["sha256"], fname=name, folder=folder)
    tmp = folder / f".MANIFEST.json.{os.getpid()}.tmp"  # last: the folder is complete
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, folder / "MANIFEST.json")
    return folder


def setup(lesson: str, *, environ: Mapping[str, str] | None = None,
          run: Callable = subprocess.run, installed: Callable[[str], bool] = _installed,
          data_folder: Callable[[], Path] | None = None) -> list[list[str]]:
    """Prepare a Colab runtime for lesson ``lesson`` (called by the setup cell, on Colab only).

    Installs the lesson's missing packages (:func:`install_command`; never a framework),
    downloads the data files (:func:`fetch_data`) and points ``COURSE_DATA_DIR`` at them, and
    prints the runtime's accelerator. ``environ``, ``run``, ``installed`` and ``data_folder``
    are injectable for tests. Returns the commands it ran. Outside Colab it does nothing and
    returns ``[]``.
    """
    from course_lib import runtime

    env = os.environ if environ is None else environ
    if runtime.hosted_environment(env) != "colab":
        return []
    commands = []
    command = install_command(lesson, installed=installed)
    if command:
        print("Installing what this Colab runtime lacks:", " ".join(command[5:]))
        run(command, check=True)
        commands.append(command)
    folder = (data_folder or fetch_data)()
    if environ is None:
        os.environ["COURSE_DATA_DIR"] = str(folder)
    print(f"course_lib at {RELEASE_REF}; data in {folder}")
    print("Accelerator:", colab_accelerator(env))
    return commands


def colab_accelerator(environ: Mapping[str, str] | None = None) -> str:
    """``"TPU"``, ``"GPU"`` or ``"CPU"``: the kind of Colab runtime, from its environment
    (``COLAB_TPU_ADDR``/``TPU_ACCELERATOR_TYPE`` for TPUs, ``COLAB_GPU`` for GPUs)."""
    env = os.environ if environ is None else environ
    if env.get("COLAB_TPU_ADDR") or env.get("TPU_ACCELERATOR_TYPE"):
        return "TPU"
    if env.get("COLAB_GPU"):
        return "GPU"
    return "CPU"


def apply_to_notebook(nb, notebook: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF):
    """Put the badge and the setup cell into lesson notebook ``nb`` (in place); return ``nb``.

    ``nb`` is an nbformat 4 NotebookNode whose first cell is the markdown title (``# NN ·
    Title``). The badge goes on the line after the title (an existing badge is replaced); the
    setup cell becomes the first code cell (an existing one, recognised by
    :data:`SETUP_MARKER`, is rewritten). Raises ValueError when the first cell is not a
    markdown title or the name is not a lesson notebook.
    """
    import nbformat

    badge = badge_markdown(notebook, repo=repo, ref=ref)
    title = nb.cells[0] if nb.cells else None
    if title is None or title.cell_type != "markdown" or not title.source.startswith("# "):
        raise ValueError(f"{notebook}: the first cell must be the markdown title '# NN · ...'")
    lines = [line for line in title.source.split("\n") if find_badge(line) != line.strip()]
    rest = "\n".join(lines[1:]).strip("\n")
    title.source = f"{lines[0]}\n\n{badge}" + (f"\n\n{rest}" if rest else "")
    source = setup_cell_source(notebook, repo=repo, ref=ref)
    existing = next((c for c in nb.cells if c.cell_type == "code"
                     and c.source.startswith(SETUP_MARKER)), None)
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
