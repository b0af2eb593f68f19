"""Colab and Binder plumbing: the "Open in Colab" badge, the Colab setup cell, what Colab ships.

Every lesson starts with

1. a badge in its first markdown cell, from :func:`badge_markdown`, pointing at the lesson's
   own file at :data:`RELEASE_REF` (the default branch until a release is tagged;
   ``tools/release.py`` rewrites every badge and cell to a tag in one commit);
2. a first code cell, from :func:`setup_cell_source`, which does nothing outside Colab. On
   Colab it installs ``course_lib`` from the repository at :data:`RELEASE_REF` (with its small
   core dependencies, which Colab already has) and then calls :func:`setup`, which installs
   only the lesson's packages that this runtime lacks and fetches the course's data files.
   TensorFlow, PyTorch, JAX, Keras and Flax are never installed there (:data:`NEVER_INSTALL`):
   reinstalling them would replace Colab's CUDA/TPU builds. Every pip call there holds the
   runtime's installed versions of :data:`HELD` as constraints (``pip install -c``), so that
   no dependency of a lesson package can upgrade them either; a package that cannot be
   installed beside them is reported and the lesson skips the part that needs it.

``tools/colab_lane.py`` (``make test-colab``) runs every lesson through this cell on Colab's
own versions (``colab/versions.txt``).

``tools/nbclean.py`` writes both into every lesson it cleans
(``course_tools.nbclean.apply_colab_cells``);
``tests/test_colab.py`` fails when one is missing or points at the wrong file.

Maintainers: :data:`GITHUB_REPO` and :data:`RELEASE_REF` are the only two settings;
``make release VERSION=vX.Y.Z`` sets the ref, rewrites every badge and cell, commits and tags.
"""

from __future__ import annotations

import functools
import importlib.metadata as _metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: ``owner/name`` of the course's GitHub repository.
GITHUB_REPO = "ml-frameworks-course/course"
#: The ref the Colab cells install and the badges open: a ref that exists in the repository.
#: The default branch until a release is tagged; ``make release VERSION=vX.Y.Z`` rewrites it
#: (and every badge and setup cell) to the tag in one commit, so that a lesson opened on Colab
#: runs the code it was tested with.
RELEASE_REF = "main"

#: What Colab's runtimes ship is ``colab/versions.txt`` (its published runtime list, with the
#: date and source): the versions ``make test-colab`` runs every lesson on, and the lower bounds
#: of ``pyproject.toml`` (``tests/test_colab.py`` checks both).

#: Distributions the setup never installs on Colab (Colab's own builds must stay).
NEVER_INSTALL = frozenset({
    "torch", "torchvision", "torchaudio", "torch-xla", "tensorflow", "tensorflow-cpu",
    "tf-keras", "keras", "jax", "jaxlib", "libtpu", "flax", "numpy",
})

#: Distributions whose installed versions every pip call of the setup holds as constraints:
#: the frameworks and the compiled libraries they are built against (a lesson package's
#: dependency must not upgrade them under the running runtime either).
HELD = NEVER_INSTALL | frozenset({
    "scikit-learn", "scipy", "pandas", "optax", "xgboost", "ml-dtypes", "protobuf",
    "tensorboard", "jax-cuda12-plugin", "jax-cuda12-pjrt", "orbax-checkpoint",
})

#: The file, in the runtime's temporary folder (``tempfile.gettempdir()``), where the setup
#: writes the held versions (``name==version`` lines) for ``pip install -c``.
HELD_CONSTRAINTS_NAME = "course-held-versions.txt"


def held_constraints_path() -> Path:
    """``<tempfile.gettempdir()>/``:data:`HELD_CONSTRAINTS_NAME` (``/tmp/...`` on Colab)."""
    return Path(tempfile.gettempdir()) / HELD_CONSTRAINTS_NAME


def normalise_name(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): ``"ML_Dtypes"`` -> ``"ml-dtypes"``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def held_constraints(path: str | os.PathLike | None = None) -> Path:
    """Write the installed versions of :data:`HELD` as pip constraints (``name==version``, one
    per line, sorted) to ``path`` (default :func:`held_constraints_path`) and return it.

    The setup cell's own copy of this logic runs before course_lib is installed;
    ``tests/test_colab.py`` checks that the two write the same file.
    """
    from course_lib import paths

    lines = sorted({f"{normalise_name(d.metadata['Name'])}=={d.version}"
                    for d in _metadata.distributions()
                    if d.metadata["Name"] and normalise_name(d.metadata["Name"]) in HELD})
    path = Path(path) if path is not None else held_constraints_path()
    return paths.write_text_atomic(path, "".join(f"{line}\n" for line in lines))

#: Packages a lesson needs beyond course_lib's core dependencies and the frameworks, as pip
#: requirements (ranges as in ``pyproject.toml``). Installed on Colab only when missing.
LESSON_PACKAGES: dict[str, tuple[str, ...]] = {
    "01": ("xgboost>=3.0.5,<4",),
    "04": ("optax>=0.2.8,<0.3",),
    "06": ("optax>=0.2.8,<0.3",),
    "07": ("optax>=0.2.8,<0.3",),
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
                       r"(?P<repo>[\w.-]+)/blob/(?P<ref>[^/\s)\"']+)/(?:notebooks|student)/[^\s)\"']+")


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
    student edition of the lessons (``student/``)."""
    return (f"https://mybinder.org/v2/gh/{repo}/{urllib.parse.quote(ref)}"
            "?urlpath=lab/tree/student")


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
    TPU). The cell needs nothing but the standard library before course_lib is installed: it
    writes the runtime's versions of :data:`HELD` to :func:`held_constraints_path` (as
    :func:`held_constraints` does) and installs course_lib under those constraints, so that
    none of its dependencies can replace a framework.
    """
    lesson = lesson_number(notebook)
    spec = f"course_lib @ git+https://github.com/{repo}@{ref}"
    held = ", ".join(f'"{name}"' for name in sorted(HELD))
    return (
        f"{SETUP_MARKER} (does nothing elsewhere): install course_lib at the course's ref\n"
        "# and only what this runtime lacks; Colab's TensorFlow, PyTorch, JAX and Keras are kept\n"
        "# (their installed versions are held as pip constraints).\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "COLAB_RELEASE_TAG" in os.environ:\n'
        "    import re\n"
        "    import tempfile\n"
        "    from importlib import metadata\n"
        "\n"
        f"    HELD = {{{held}}}\n"
        "    norm = [re.sub(r\"[-_.]+\", \"-\", d.metadata[\"Name\"] or \"\").lower() + \"==\" + d.version\n"
        "            for d in metadata.distributions()]\n"
        f'    held_file = os.path.join(tempfile.gettempdir(), "{HELD_CONSTRAINTS_NAME}")\n'
        '    with open(held_file, "w", encoding="utf-8") as held:\n'
        '        held.writelines(f"{line}\\n" for line in sorted(set(norm)) if line.split("==")[0] in HELD)\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", held_file,\n'
        f'                    "{spec}"], check=True)\n'
        "    from course_lib import colab\n"
        "\n"
        f'    colab.setup("{lesson}")'
    )


def _dist_name(requirement: str) -> str:
    return normalise_name(re.split(r"[\s<>=!~;\[@]", requirement.strip(), maxsplit=1)[0])


def _installed(name: str) -> bool:
    try:
        _metadata.version(name)
        return True
    except _metadata.PackageNotFoundError:
        return False


def install_command(lesson: str, *, installed: Callable[[str], bool] = _installed,
                    python: str | None = None,
                    constraints: str | os.PathLike | None = None) -> list[str] | None:
    """The pip command that installs lesson ``lesson``'s missing packages, or None.

    Args:
        lesson: two-digit lesson number, e.g. ``"10"``.
        installed: ``installed(distribution_name) -> bool`` (default: package metadata).
        python: the interpreter (default ``sys.executable``).
        constraints: a pip constraints file (``-c``), e.g. :func:`held_constraints`'s.

    Returns ``[python, "-m", "pip", "install", "-q", req, ...]`` (with ``"-c", constraints``
    after ``-q`` when given) naming only requirements of :data:`LESSON_PACKAGES` whose
    distribution is not installed; None when nothing is missing.

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
    held = ["-c", str(constraints)] if constraints is not None else []
    return [python or sys.executable, "-m", "pip", "install", "-q", *held, *missing]


#: Where Colab downloads the course's files from. ``COURSE_RAW_BASE_URL`` replaces it (a
#: mirror for a classroom behind a firewall; the Colab lane's local server), and serves the
#: same paths: ``<base>/<owner>/<name>/<ref>/<path>``.
RAW_BASE_URL = "https://raw.githubusercontent.com"


def raw_base_url() -> str:
    """``$COURSE_RAW_BASE_URL`` if set, else :data:`RAW_BASE_URL`."""
    return os.environ.get("COURSE_RAW_BASE_URL") or RAW_BASE_URL


def raw_url(path: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF,
            base_url: str | None = None) -> str:
    """The URL of repository file ``path`` at ``ref``: ``{base_url}/{repo}/{ref}/{path}``
    (``base_url`` defaults to :func:`raw_base_url`)."""
    base_url = base_url or raw_base_url()
    return f"{base_url.rstrip('/')}/{repo}/{urllib.parse.quote(ref)}/{path}"


def fetch_folder(path: str, *, repo: str = GITHUB_REPO, ref: str = RELEASE_REF,
                 base_url: str | None = None, folder: str | os.PathLike | None = None,
                 names: Sequence[str] | None = None) -> Path:
    """Download the files of repository folder ``path`` (``"data"``, ``"results/reference"``)
    at ``ref`` that its committed ``<path>/MANIFEST.json`` lists; return the local folder.

    The manifest maps each file's path relative to ``path`` (``"epyc-2core-cpu/09.jsonl"``)
    to an object with its ``sha256``: the same pooch registry the checkout's files are checked
    against (:func:`course_lib.data.fetch_registry`), which verifies every SHA-256 and never
    leaves a partial file.
    The manifest is written last, so a folder with a ``MANIFEST.json`` is complete. The
    default folder is ``<data.cache_dir()>/<path>/<ref>``; ``base_url`` defaults to
    :func:`raw_base_url`.

    Raises:
        course_lib.data.DataError: the manifest or a file could not be downloaded, or the
            manifest names a file outside the folder.
        course_lib.data.ChecksumMismatch: a file does not match the manifest's SHA-256.
    """
    import requests

    from course_lib import data

    folder = Path(folder) if folder is not None else data.cache_dir() / path / ref
    folder.mkdir(parents=True, exist_ok=True)
    url = raw_url(f"{path}/MANIFEST.json", repo=repo, ref=ref, base_url=base_url)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        manifest = response.json()
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise data.DataError(f"could not read the course's manifest at {url}: {exc}. "
                             "Check the runtime's network connection and run the cell "
                             "again.") from None
    if not isinstance(manifest, dict):
        raise data.DataError(f"{url} is not a course manifest (a JSON object)")
    data.fetch_registry(raw_url(path, repo=repo, ref=ref, base_url=base_url), manifest, folder,
                        names=names)
    from course_lib import paths

    paths.write_text_atomic(folder / "MANIFEST.json", json.dumps(manifest, indent=2))  # last
    return folder


def fetch_data(*, repo: str = GITHUB_REPO, ref: str = RELEASE_REF, base_url: str | None = None,
               folder: str | os.PathLike | None = None,
               names: Sequence[str] | None = None) -> Path:
    """The course's ``data/`` files at ``ref`` (:func:`fetch_folder` of ``"data"``)."""
    return fetch_folder("data", repo=repo, ref=ref, base_url=base_url, folder=folder,
                        names=names)


#: Lessons that read the course's committed reference records (``results/reference/``);
#: on Colab the setup downloads them and points ``COURSE_REFERENCE_DIR`` at them.
NEEDS_REFERENCES = frozenset({"09", "12"})


def _pip_install(requirements: Sequence[str], constraints: Path, run: Callable) -> list[str]:
    """Install ``requirements`` under ``constraints``; return those that could not be
    installed. All together first (one resolver run); if pip refuses, one at a time, so that
    a package that cannot live beside the runtime's frameworks does not stop the others."""
    base = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints)]
    if run([*base, *requirements], check=False).returncode == 0:
        return []
    failed = [r for r in requirements if run([*base, r], check=False).returncode != 0]
    return failed


def setup(lesson: str, *, environ: Mapping[str, str] | None = None,
          run: Callable = subprocess.run, installed: Callable[[str], bool] = _installed,
          data_folder: Callable[[], Path] | None = None,
          reference_folder: Callable[[], Path] | None = None,
          constraints: str | os.PathLike | None = None) -> list[list[str]]:
    """Prepare a Colab runtime for lesson ``lesson`` (called by the setup cell, on Colab only).

    Installs the lesson's missing packages (:func:`install_command`; never a framework) with
    the runtime's :data:`HELD` versions as constraints (:func:`held_constraints`). A package
    pip cannot install beside them (e.g. a release that needs a newer Flax) is named in a
    message and left out; the lesson skips the part that needs it (it checks with
    ``runtime.importable``). Then downloads the data files (:func:`fetch_data`) and points
    ``COURSE_DATA_DIR`` at them; for lessons of :data:`NEEDS_REFERENCES` also the reference
    records (``COURSE_REFERENCE_DIR``). Prints the runtime's accelerator.

    ``environ``, ``run``, ``installed``, ``data_folder``, ``reference_folder`` and
    ``constraints`` are injectable for tests. Returns the install commands it ran (the first
    attempt). Outside Colab it does nothing and returns ``[]``.

    Raises:
        course_lib.data.DataError, course_lib.data.ChecksumMismatch: a download failed.
    """
    from course_lib import runtime

    env = os.environ if environ is None else environ
    if runtime.hosted_environment(env) != "colab":
        return []
    commands = []
    constraints = Path(constraints) if constraints is not None else held_constraints_path()
    command = install_command(lesson, installed=installed, constraints=constraints)
    if command:
        held = held_constraints(constraints) if environ is None else constraints
        wanted = command[7:]
        print("Installing what this Colab runtime lacks:", " ".join(wanted))
        failed = _pip_install(wanted, held, run)
        commands.append(command)
        for requirement in failed:
            print(f"  could not install {requirement} beside this runtime's frameworks "
                  f"(held: {held}); the lesson skips the part that needs it")
    folder = (data_folder or fetch_data)()
    if environ is None:
        os.environ["COURSE_DATA_DIR"] = str(folder)
    if lesson in NEEDS_REFERENCES:
        references = (reference_folder or functools.partial(fetch_folder, "results/reference"))()
        if environ is None:
            os.environ["COURSE_REFERENCE_DIR"] = str(references)
        print(f"reference records in {references}")
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
