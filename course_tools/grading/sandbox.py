"""The isolation each grading kernel runs in: bubblewrap, prlimit and setpriv (issue 16).

A graded kernel is started by the grading worker (:mod:`course_tools.grading.worker`) with the
command :func:`kernel_command` builds:

    prlimit --as=... --nproc=... --cpu=... --fsize=... --core=0 --
      bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp /var/tmp /dev/shm /run ...
            --tmpfs HIDDEN ...            (course root, HOME, lessons, submissions, grades)
            --ro-bind NEEDED NEEDED ...   (the Python install, virtual environment,
                                           course_lib, data, caches)
            --bind WORK WORK --bind IPC IPC --bind LOG LOG --ro-bind HOOK HOOK
            --unshare-{ipc,pid,net,uts,cgroup} --die-with-parent --new-session
            setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all
                    --bounding-set=-all --no-new-privs --           (when the grader is root;
                                        else: --unshare-all --cap-drop ALL, no setpriv)
            python -m ipykernel_launcher -f CONNECTION_FILE

so that the kernel and everything it starts:

- sees the machine's system files read-only, but not the course repository (lesson sources,
  ``build/``, ``.git/``), the grader's ``HOME``, the lessons folder, the submissions (other
  students), the grades folder or the other jobs' folders (each is an empty ``tmpfs``), and
  only its own working folder is writable;
- has no network (its own network namespace holds only a loopback device; it talks to the
  worker over Unix sockets in ``IPC``);
- has its own PID namespace (it cannot see or signal the grader, the worker or the other
  students' kernels) and, when the grader runs as root, runs as a user of its own
  (:func:`claim_uid`: uid 200000 + a slot unique among the kernels running now, with no
  entry in ``/etc/passwd``), so that the process limit (RLIMIT_NPROC, counted per user) is
  per kernel: one student's fork or thread bomb cannot starve the kernels started meanwhile
  (issue 16, H; with a shared ``nobody`` they died before replying to ``kernel_info``);
- runs under resource limits (:class:`Limits`: address space, processes, CPU seconds, file
  size, no core dumps; ``prlimit`` from util-linux).

Sources: bubblewrap(1) (https://github.com/containers/bubblewrap), prlimit(1), setpriv(1),
setrlimit(2) (RLIMIT_NPROC does not apply to uid 0, hence ``setpriv``), FIELD-NOTES "Grading
and sandboxing".
"""

from __future__ import annotations

import enum
import fcntl
import functools
import os
import shutil
import signal
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
KERNEL_UID_BASE = 200000  # per-kernel users: KERNEL_UID_BASE + slot (root graders only)
MAX_SLOTS = 10000
_SLOTS: dict = {}  # slot -> open lock file (flock held while the kernel's user is in use)
_SLOTS_LOCK = threading.Lock()
UID_LOCKS = (Path("/run/course-grade-uids"), Path("/tmp/course-grade-uids-0"))


def _lock_dir() -> Path:
    """A folder of root's own (mode 0700, not a link) for the slots' lock files.

    Raises:
        RuntimeError: neither candidate can be made or trusted.
    """
    for folder in UID_LOCKS:
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(folder)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o077:
            return folder
    raise RuntimeError("no private folder for the kernel users' lock files ("
                       f"{', '.join(map(str, UID_LOCKS))}); remove what is there")


class Isolation(enum.StrEnum):
    """How the grading kernels are isolated: ``bubblewrap`` (the sandbox above) or ``none``
    (the instructor's explicit choice: only the audit hook of
    :mod:`course_tools.grading.guard` and the process limits)."""

    BUBBLEWRAP = "bubblewrap"
    NONE = "none"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one graded kernel and everything it starts.

    ``memory_mb``: address space per process (MiB; RLIMIT_AS); ``processes``: processes and
    threads of the kernel's user (RLIMIT_NPROC; enforced when the grader is root, where each
    kernel runs as a user of its own, :func:`claim_uid`, so the limit is per kernel);
    ``cpu_seconds``: CPU time per process (RLIMIT_CPU); ``file_mb``: largest file written
    (MiB; RLIMIT_FSIZE); ``tmp_mb``: size of the kernel's private ``/tmp`` (MiB)."""

    memory_mb: int = 16384
    processes: int = 2048
    cpu_seconds: int = 7200
    file_mb: int = 1024
    tmp_mb: int = 512

    def check(self) -> None:
        """Raises ValueError naming the first limit that is not a positive whole number."""
        for name in ("memory_mb", "processes", "cpu_seconds", "file_mb", "tmp_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sandbox limit {name} must be a whole number >= 1, not "
                                 f"{value!r}")


def _run_as_nobody() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv") is not None


def _prefix(limits: Limits) -> list[str]:
    prlimit = shutil.which("prlimit")
    if not prlimit:
        return []
    return [prlimit, f"--as={limits.memory_mb * 2**20}", f"--nproc={limits.processes}",
            f"--cpu={limits.cpu_seconds}", f"--fsize={limits.file_mb * 2**20}", "--core=0",
            "--"]


def _namespaces() -> list[str]:
    # As root, bwrap mounts with root's rights (it can bind folders under a private HOME)
    # and setpriv then drops to nobody with no capabilities; otherwise bwrap makes a user
    # namespace and drops the capabilities itself.
    if _run_as_nobody():
        return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    return ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def _drop_user(uid: int | None = None) -> list[str]:
    if not _run_as_nobody():
        return []
    uid = NOBODY if uid is None else uid
    return [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}",
            "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            "--"]


@functools.lru_cache(maxsize=1)
def probe() -> tuple[Isolation | None, str]:
    """Which isolation this machine offers: ``(Isolation.BUBBLEWRAP, description)`` when
    ``bwrap`` is installed and can start a process with no network and its own PID namespace
    (as ``nobody`` when the grader is root), else ``(None, why not)``. Cached. Raises nothing.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, ("bubblewrap is not installed (Debian/Ubuntu: apt-get install "
                      "bubblewrap; `make test` installs it)")
    command = (_prefix(Limits()) + [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc",
                                    "/proc", *_namespaces()] + _drop_user() + ["true"])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"bubblewrap could not start ({exc})"
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:200]
        return None, (f"bubblewrap cannot create namespaces here ({detail}); user "
                      "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone)")
    user = "as nobody, " if _run_as_nobody() else ""
    return Isolation.BUBBLEWRAP, (f"bubblewrap {bwrap} ({user}no network, own PID namespace, "
                                  "lesson sources, submissions and grades hidden)")


def _existing(paths) -> list[str]:
    found = []
    for path in paths:
        if path is None:
            continue
        real = os.path.realpath(path)
        if os.path.isdir(real) and real != "/" and real not in found:
            found.append(real)
    return found


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def kernel_command(python: str, *, work: Path, ipc: Path, log_dir: Path, hook_dir: Path,
                   hidden, visible, limits: Limits, uid: int | None = None) -> list[str]:
    """The argv that starts an ipykernel in the sandbox; ``{connection_file}`` is left in it
    for jupyter_client to fill (a kernelspec's ``argv``).

    Args:
        python: the interpreter of the kernel (``sys.executable``; visible in the sandbox).
        work: the kernel's working folder (the only writable folder; same path inside).
        ipc: folder of the kernel's Unix sockets and connection file (writable).
        log_dir: folder of the write guard's log of refusals (writable).
        hook_dir: folder of the ``sitecustomize`` write guard (read-only).
        hidden: folders to hide (each becomes an empty tmpfs): course root, HOME, lessons,
            submissions, grades, the other jobs' folder. Missing ones are skipped.
        visible: folders inside hidden ones that the kernel needs, bound read-only again
            (virtual environment, course_lib, data, data cache). Missing ones are skipped.
        limits: :class:`Limits`.
        uid: the user the kernel runs as when the grader is root (:func:`claim_uid`);
            None: ``nobody``. Ignored when the grader is not root.

    Raises:
        RuntimeError: bubblewrap is not usable here (:func:`probe` says why).
    """
    isolation, why = probe()
    if isolation is not Isolation.BUBBLEWRAP:
        raise RuntimeError(why)
    limits.check()
    command = _prefix(limits) + [shutil.which("bwrap") or "bwrap",
                                 "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    size = str(limits.tmp_mb * 2**20)
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):  # world-writable like on the host
        command += ["--perms", "1777", "--size", size, "--tmpfs", folder]
    command += ["--tmpfs", "/run"]
    temporary = ["/tmp", "/run", "/var/tmp", "/dev/shm"]
    roots = list(temporary)
    for folder in _existing(hidden):
        if not _under(folder, roots):
            command += ["--tmpfs", folder]
            roots.append(folder)
    binds = [("--ro-bind", folder) for folder in _existing(visible)] + [
        (mode, os.path.realpath(folder)) for folder, mode in (
            (work, "--bind"), (ipc, "--bind"), (log_dir, "--bind"), (hook_dir, "--ro-bind"))]
    made = set()
    for mode, folder in binds:
        # bwrap makes missing parents 0700 (root's): make them 0755 so that nobody passes
        for ancestor in reversed(Path(folder).parents):
            parent = str(ancestor)
            if parent not in made and _under(parent, roots) and parent not in roots:
                command += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        command += [mode, folder, folder]
    command += ["--chdir", os.path.realpath(work), *_namespaces(), *_drop_user(uid),
                # inside the PID namespace the kernel's parent is pid 1: its parent poller would
                # stop it at once (bwrap --die-with-parent ends it with the worker instead)
                python, "-m", "ipykernel_launcher", "--IPKernelApp.parent_handle=1",
                "-f", "{connection_file}"]
    return command


def kernel_uid() -> int | None:
    """Whether the sandboxed kernels run as another user: 65534 (``nobody``, the user of
    :func:`probe`; each graded kernel gets its own, :func:`claim_uid`) when the grader is
    root and ``setpriv`` exists, else None (the grader's own user). Raises nothing."""
    return NOBODY if _run_as_nobody() else None


def _running_uids() -> set[int]:
    """The real uids of the processes running now (``/proc``). Raises nothing."""
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                found.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                continue
    return found


def claim_uid() -> int | None:
    """A user id of its own for one graded kernel: ``KERNEL_UID_BASE + slot``, the lowest
    slot neither claimed by a grader on this machine (an ``flock`` per slot in a folder of
    root's, :data:`UID_LOCKS`, held until :func:`release_uid`) nor the owner of a running
    process, so that RLIMIT_NPROC, which counts per user, is per kernel. None when
    the grader is not root (the kernel runs as the grader's user). Give it back with
    :func:`release_uid`.

    Raises:
        RuntimeError: all :data:`MAX_SLOTS` slots are in use (lower ``--jobs``); no
            private folder for the lock files.
    """
    if not _run_as_nobody():
        return None
    folder = _lock_dir()
    with _SLOTS_LOCK:
        busy = _running_uids()
        for slot in range(MAX_SLOTS):
            if slot in _SLOTS or KERNEL_UID_BASE + slot in busy:
                continue
            # an exclusive flock per slot, held until release_uid: another grader process
            # on this machine (a parallel test worker, a second instructor) skips it
            fd = os.open(folder / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _SLOTS[slot] = fd
            return KERNEL_UID_BASE + slot
    raise RuntimeError(f"no free kernel user among {MAX_SLOTS}; grade with fewer --jobs")


def release_uid(uid: int | None) -> None:
    """Kill whatever still runs as ``uid`` (a kernel's leftovers: the sandbox's PID namespace
    normally ends them with the kernel) and free its slot for the next kernel. None: nothing
    to do. Raises nothing."""
    if uid is None:
        return
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue
    with _SLOTS_LOCK:
        fd = _SLOTS.pop(uid - KERNEL_UID_BASE, None)
        if fd is not None:
            os.close(fd)  # frees the flock


def give_to_kernel(*folders: Path, uid: int | None = None) -> None:
    """Make ``folders`` (the working, socket and log folders) writable by the sandboxed
    kernel's user (``uid`` from :func:`claim_uid`, else ``nobody``, when the grader is root;
    nothing to do otherwise). Raises OSError."""
    if not _run_as_nobody():
        return
    uid = NOBODY if uid is None else uid
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                os.chown(name, uid, uid, follow_symlinks=False)
