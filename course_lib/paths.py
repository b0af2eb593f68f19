"""The course's address book: every folder rule and every environment variable, in one place.

Folders (each function below documents its order of precedence):

==========================  =====================================================================
:func:`course_root`         the checkout: nearest parent holding ``pyproject.toml`` and
                            ``course_lib/``
:func:`course_folder`       the checkout, or the folder of this installed package when it holds
                            ``notebooks/`` (a lesson executed from a copy elsewhere)
:func:`results_dir`         result records: ``$COURSE_RESULTS_DIR``, else ``build/results``
:func:`reference_dir`       committed reference records: ``$COURSE_REFERENCE_DIR``, else
                            ``results/reference``
:func:`data_dir`            shipped data: ``$COURSE_DATA_DIR``, else ``data/``
:func:`cache_dir`           downloads: ``$COURSE_CACHE_DIR``, else the user cache folder
:func:`lesson_build_dir`    a lesson's scratch files (worker scripts, exports):
                            ``build/lesson<NN>`` (``build/lesson<NN>-*`` while another
                            process holds it), else a temporary folder
==========================  =====================================================================

Every environment variable the project reads is listed in :data:`ENVIRONMENT` (a test checks
that the code reads no other and that none listed is unused). Only this module reads the folder
variables; the others ask it.

Files are written with :func:`write_text_atomic`, so that no reader ever sees half a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

#: Every environment variable the course reads: name -> (who sets it, what it does).
ENVIRONMENT: dict[str, tuple[str, str]] = {
    # folders
    "COURSE_RESULTS_DIR": ("you, the runner, make test", "where result records are written "
                           "and read (default build/results in the checkout)"),
    "COURSE_REFERENCE_DIR": ("the Colab setup", "the committed reference records (default "
                             "results/reference in the checkout)"),
    "COURSE_DATA_DIR": ("the Colab setup", "the shipped data (default data/ in the checkout)"),
    "COURSE_CACHE_DIR": ("you, the tests", "downloads cache (default the user cache folder)"),
    "COURSE_DECISION_RESULTS": ("you, the tests", "lesson 12 reads its records from this "
                                "folder instead of this run's results"),
    # a run
    "COURSE_PROFILE": ("you, the runner, make test", "'full' or 'smoke': the size of every "
                       "lesson's workload"),
    "COURSE_PROFILE_ACTIVE": ("runtime.profile()", "the profile a lesson actually chose, "
                              "copied into its records"),
    "COURSE_RUN_ID": ("the runner", "groups the records of one course run (default: a new id "
                      "per process)"),
    "COURSE_RAW_BASE_URL": ("the Colab lane", "where the Colab setup downloads data and "
                            "reference records (default: the repository on GitHub)"),
    # worker processes (course_lib.workers)
    "COURSE_WORKER_DIR": ("workers.run", "the worker's folder for results and progress marks"),
    "COURSE_WORKER_NAME": ("the lesson", "the worker's name when it is not a torchrun rank"),
    "COURSE_WORKER_TOKEN": ("workers.run", "marks every process of one job, so that a stop "
                            "reaches ranks in sessions of their own"),
    # tests and CI
    "COURSE_SKIP_BROWSER": ("you", "1: make test installs no chromium and skips the site's "
                            "browser test"),
    "COURSE_CHROMIUM": ("you", "the chromium binary for the site's browser test"),
    "COURSE_KERNEL_MEMORY_LIMIT_MB": ("you", "make test: a lesson kernel's peak memory target"),
    "COURSE_KERNEL_HARD_LIMIT_MB": ("you", "make test: a lesson kernel's peak memory limit"),
    "COURSE_PRIVATE_MEMORY_LIMIT_MB": ("you", "make test: a kernel's private memory limit"),
    "COURSE_TREE_MEMORY_LIMIT_MB": ("you", "make test: kernel + workers memory limit"),
    "COURSE_TREE_PRIVATE_LIMIT_MB": ("you", "make test: kernel + workers private memory limit"),
    # grading (course_tools.grading; set by the grader for its kernels, never by a student)
    "GRADER_SANDBOX": ("the grader", "the folder a graded kernel may write to"),
    "GRADER_ALLOW_WRITE": ("the grader", "further folders a graded kernel may write to"),
    "GRADER_DENY_READ": ("the grader", "files and folders a graded kernel may not read"),
    "GRADER_LOG": ("the grader", "where the guard logs what it refused"),
    "GRADER_ISOLATION": ("the instructor", "'bubblewrap' (the default) or 'none' (no sandbox, "
                         "trusted submissions only) for grade's kernels"),
}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def course_root(start: str | os.PathLike | None = None) -> Path | None:
    """The course's root folder: the nearest parent of ``start`` (default: the working
    directory) that holds both ``pyproject.toml`` and ``course_lib/``; None if there is none."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "course_lib").is_dir():
            return folder
    return None


def course_folder() -> Path | None:
    """:func:`course_root` of the working directory, else the folder holding this installed
    ``course_lib`` when it has ``notebooks/`` (a notebook executed from a copy elsewhere, e.g. by
    a site builder); None when neither is found (Colab)."""
    root = course_root()
    if root is not None:
        return root
    package_parent = Path(__file__).resolve().parent.parent
    return package_parent if (package_parent / "notebooks").is_dir() else None


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """Where result records are written and read: ``path`` if given, else
    ``$COURSE_RESULTS_DIR``, else ``build/results`` under :func:`course_root` (or under the
    working directory outside a checkout). Not created here."""
    if path is not None:
        return Path(path)
    return _env_path("COURSE_RESULTS_DIR") or (course_root() or Path.cwd()) / "build" / "results"


def reference_dir() -> Path | None:
    """The committed reference records: ``$COURSE_REFERENCE_DIR`` (set by the Colab setup,
    which downloads them), else ``results/reference`` under :func:`course_folder`, else None."""
    root = course_folder()
    return _env_path("COURSE_REFERENCE_DIR") or (root / "results" / "reference" if root else None)


def data_dir() -> Path:
    """The shipped data: ``$COURSE_DATA_DIR`` if set, else ``data/`` at :func:`course_root`
    when it holds ``MANIFEST.json``, else ``data/`` beside this package."""
    env = _env_path("COURSE_DATA_DIR")
    if env is not None:
        return env
    root = course_root()
    if root is not None and (root / "data" / "MANIFEST.json").is_file():
        return root / "data"
    return Path(__file__).resolve().parent.parent / "data"


def cache_dir() -> Path:
    """Where downloads are cached: ``$COURSE_CACHE_DIR``, else the OS's user cache folder for
    ``ml-frameworks-course`` (pooch's ``os_cache``, e.g. ``~/.cache/ml-frameworks-course``)."""
    env = _env_path("COURSE_CACHE_DIR")
    if env is not None:
        return env
    import pooch

    return Path(pooch.os_cache("ml-frameworks-course"))


#: Scratch folders this process holds: folder -> the open lock file that claims it.
_CLAIMED: dict[Path, object] = {}


def _claim(folder: Path) -> bool:
    """Claim ``folder`` for this process's lifetime with an exclusive ``flock`` on the file
    ``<folder>.lock`` beside it; False when another live process holds it. The kernel drops the
    lock when the process ends, however it ends, so a crashed run never leaves a stale claim.
    Where ``fcntl`` is missing (Windows) every claim succeeds, as before this rule existed."""
    if folder in _CLAIMED:
        return True
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one run of a lesson at a time is the user's care
        return True
    handle = open(folder.with_name(folder.name + ".lock"), "a+b")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _CLAIMED[folder] = handle
    return True


def lesson_build_dir(lesson: str, *, root: str | os.PathLike | None = None) -> Path:
    """A lesson's scratch folder (worker scripts, exported models), created.

    ``build/lesson<lesson>`` under :func:`course_root` of ``root`` (default: the working
    directory); git ignores ``build/``. The folder is claimed for this process's lifetime (a
    lock file ``build/lesson<lesson>.lock``): while another process, for example a second run
    of the same lesson, holds it, this one gets a new folder ``build/lesson<lesson>-*`` of its
    own, so that two runs never overwrite each other's worker inputs. (Seen in ``make test``:
    two runs of lesson 07 with different widths, one reading the other's ``tf_inputs.npz``.)
    Outside a checkout (Colab, a copied notebook) a new folder ``course-lesson<lesson>-*`` in
    the system's temporary folder, so that a lesson never litters the user's folders.

    Raises:
        ValueError: an empty lesson id, or one holding a path separator.
    """
    lesson = str(lesson)
    if not lesson or "/" in lesson or os.sep in lesson:
        raise ValueError(f"lesson must be a short id such as '10', got {lesson!r}.")
    base = course_root(root)
    if base is None:
        return Path(tempfile.mkdtemp(prefix=f"course-lesson{lesson}-"))
    folder = base / "build" / f"lesson{lesson}"
    folder.mkdir(parents=True, exist_ok=True)
    if _claim(folder):
        return folder
    return Path(tempfile.mkdtemp(prefix=f"lesson{lesson}-", dir=folder.parent))


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for a moment, in
    every thread): Linux's /proc/self/status, else the usual 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    The text goes to a new temporary file in the same folder (created with the parents it
    needs), which then replaces ``path`` in one ``os.replace``: a reader sees the old file or
    the new one, never a part, and a failure (disk full, an interrupt) leaves ``path`` as it
    was and no temporary file behind. The file keeps its permissions, or gets those ``open``
    would give a new one (0666 less the umask), so that other users (a sandboxed grading
    kernel) read it as before.

    Raises:
        OSError: the folder cannot be created or written (the original file is unchanged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the file keeps its mode; a new one gets open()'s (mkstemp's own is 0600)
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
