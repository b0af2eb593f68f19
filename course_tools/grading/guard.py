"""Write guard for graded student code (installed as ``sitecustomize`` in the grading kernel).

``course_tools.grading.autograde`` copies this file as ``sitecustomize.py`` into a folder that it puts first
on the kernel's ``PYTHONPATH``, so that every Python process of a graded notebook (the kernel
and any ``python`` it starts) imports it at start-up. When ``GRADER_SANDBOX`` is set, it adds a
Python audit hook (PEP 578) that:

- refuses (``PermissionError``) to create, write, delete, rename, link or change any file outside
  ``GRADER_SANDBOX`` and the folders listed in ``GRADER_ALLOW_WRITE`` (``os.pathsep``-separated),
  except the process's own ``/proc/<pid>/clear_refs`` (writing ``5`` there restarts the peak
  memory count, ``VmHWM``, as lesson 09's memory measurement does);
- refuses to open or list anything under the folders in ``GRADER_DENY_READ`` (the instructor's
  lessons, which hold the solutions and hidden tests, and the grader's own files);
- appends one line per refusal to the file ``GRADER_LOG`` (opened before the hook exists, so
  that the log can be written while the student's code cannot touch it).

This reports attempts; it is not the security boundary: audit hooks can be bypassed with
``ctypes``, and programs other than Python (a shell command started with ``subprocess`` or
``os.system``) are not watched at all. The boundary is the bubblewrap sandbox the kernel runs
in (:mod:`course_tools.grading.sandbox`). It uses the standard library only.
"""

from __future__ import annotations

import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# audit event -> positions of the path arguments that are written to
_WRITE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.link": (1,), "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.rmtree": (0,), "shutil.move": (0, 1),
    "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}
_READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,)}


def _folders(value: str | None) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in (value or "").split(os.pathsep) if p)


def _inside(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
               for folder in folders)


def install(environ=os.environ) -> bool:
    """Add the audit hook described above if ``GRADER_SANDBOX`` is set in ``environ``.

    Returns True when the hook was added. Raises nothing: a missing or unwritable log only
    means that refusals are not logged (they are still refused).
    """
    if not environ.get("GRADER_SANDBOX"):
        return False
    allowed = _folders(environ["GRADER_SANDBOX"] + os.pathsep
                       + environ.get("GRADER_ALLOW_WRITE", ""))
    denied = _folders(environ.get("GRADER_DENY_READ"))
    log_fd = -1
    if environ.get("GRADER_LOG"):
        try:
            log_fd = os.open(environ["GRADER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            log_fd = -1
    busy: list = []
    realpath, fspath = os.path.realpath, os.fspath

    def refuse(kind: str, path: str) -> None:
        if log_fd >= 0:
            try:
                os.write(log_fd, f"{kind}\t{path}\n".encode("utf-8", "replace"))
            except OSError:
                pass
        where = "outside its working folder" if kind == "write" else "the grader's files"
        raise PermissionError(f"graded code may not {kind} {where}: {path}")

    def resolve(arg):
        if isinstance(arg, int) or arg is None:
            return None  # a file descriptor: its path was checked when it was opened
        try:
            path = fspath(arg)
        except TypeError:
            return None
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        return realpath(path)

    def hook(event: str, args: tuple) -> None:
        if busy or not (event == "open" or event in _WRITE_EVENTS or event in _READ_EVENTS):
            return
        busy.append(1)
        try:
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, None))[:3]
                path = resolve(path)
                if path is None:
                    return
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
                if writes and not _inside(path, allowed) and path != (
                        f"/proc/{os.getpid()}/clear_refs"):  # its own memory peak reset
                    refuse("write", path)
                if _inside(path, denied) and not _inside(path, allowed):
                    refuse("read", path)
            elif event in _WRITE_EVENTS:
                for position in _WRITE_EVENTS[event]:
                    path = resolve(args[position]) if position < len(args) else None
                    if path is not None and not _inside(path, allowed):
                        refuse("write", path)
            else:
                for position in _READ_EVENTS[event]:
                    path = resolve(args[position]) if position < len(args) else None
                    if path is not None and _inside(path, denied) and not _inside(path, allowed):
                        refuse("read", path)
        finally:
            busy.clear()

    sys.addaudithook(hook)
    return True


if __name__ == "sitecustomize":
    install()
