"""Worker processes with a time limit: a script, ``torchrun``, a multi-device JAX or TF script.

Lesson 11 runs every distributed job in a child process: a worker defined in a notebook cannot
be pickled for ``torch.multiprocessing``, JAX and TensorFlow fix their device count when they
first initialise, and a collective that never completes (one rank that never joins, a stalled
all-reduce) must end with an error instead of hanging the student's kernel. This module is the
plumbing for that; the scripts themselves (the training loops, ``DistributedDataParallel``,
``shard_map``, ``MirroredStrategy``) stay in the lesson.

Parent side:

- :func:`run` starts a command in a new process session with its output going to a log file,
  waits for it at most ``timeout`` seconds, and on timeout ends the whole job: the process
  group, every descendant, and every process that inherited the run's token (``torchrun``
  starts each rank in a session of its own, so a process group alone does not reach them).
  It raises :class:`WorkerTimeout` (stalled) or :class:`WorkerCrashed` (non-zero exit, or a
  worker that wrote no result); both say which worker, how long, and show the output's tail.
- :func:`python_command` and :func:`torchrun_command` build the argument lists.
- :func:`scratch_dir` is where a lesson writes its worker scripts (``build/lessonNN`` under
  the course root, never committed; a temporary folder when there is no course root).

Worker side (inside the child; standard library only, cheap to import):

- :func:`report` writes a progress mark (``"init_process_group"``, ``"step 3"``), which is what
  lets a timeout name the worker that stalled and where;
- :func:`write_result` writes the worker's JSON result, which :func:`run` reads back.

The worker's name is ``rank<RANK>`` when the ``RANK`` variable is set (``torchrun`` sets it),
else the script's file name without ``.py`` (see :func:`worker_name`).

Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import paths

__all__ = [
    "WorkerCrashed",
    "WorkerError",
    "WorkerRun",
    "WorkerTimeout",
    "python_command",
    "read_results",
    "report",
    "run",
    "scratch_dir",
    "torchrun_command",
    "worker_name",
    "write_result",
]

#: Environment variables :func:`run` sets for the child (and that its descendants inherit).
DIR_VAR = "COURSE_WORKER_DIR"  # folder of results, progress marks and the log
NAME_VAR = "COURSE_WORKER_NAME"  # a worker's name, if you set it (see worker_name)
TOKEN_VAR = "COURSE_WORKER_TOKEN"  # marks every process of one run, so none is left behind

LOG_NAME = "output.log"
_RESULT_SUFFIX = ".result.json"
_PROGRESS_SUFFIX = ".progress.json"


# ---------------------------------------------------------------------------------------------
# Errors and results
# ---------------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker job that did not finish well. Subclasses say how.

    Attributes:
        name: the job's name (as given to :func:`run`).
        seconds: wall-clock seconds from start until the job ended or was stopped (float).
        returncode: the exit status (int; negative: killed by that signal), None if stopped.
        tail: the last lines of the job's combined stdout and stderr (str).
        workers: ``{worker: state}`` for the workers :func:`run` was told to expect, a state
            such as ``"finished"``, ``"no report"`` or ``"last report 'step 2' at 1.3 s"``.
        culprits: the workers blamed (list of names): those that did not finish, or those a
            launcher's own failure report names.
        log: path of the full log (``pathlib.Path``).
    """

    def __init__(self, message: str, *, name: str, seconds: float, returncode: int | None,
                 tail: str, workers: dict, culprits: list, log: Path):
        super().__init__(message)
        self.name = name
        self.seconds = seconds
        self.returncode = returncode
        self.tail = tail
        self.workers = workers
        self.culprits = culprits
        self.log = log


class WorkerTimeout(WorkerError):
    """The job ran past its time limit (a stalled collective, a rank that never joined, an
    endless loop) and was stopped, all its processes killed."""


class WorkerCrashed(WorkerError):
    """The job exited with a non-zero status, or exited without every expected result."""


@dataclass
class WorkerRun:
    """A job that finished well.

    Attributes:
        name: the job's name.
        args: the command (list of str).
        returncode: 0.
        seconds: wall-clock seconds, start-up (imports) included (float).
        output: the combined stdout and stderr (str).
        results: ``{worker: object}``, each worker's :func:`write_result` JSON, by name.
        run_dir: the folder holding the results, progress marks and ``output.log``.
    """

    name: str
    args: list
    returncode: int
    seconds: float
    output: str
    results: dict = field(default_factory=dict)
    run_dir: Path | None = None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the output."""
        return _tail(self.output, lines)


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def worker_name(name: str | None = None) -> str:
    """This worker's name: ``name`` if given, else ``rank<RANK>`` when ``RANK`` is set
    (``torchrun`` sets it), else ``$COURSE_WORKER_NAME`` when set, else the running script's
    file name without ``.py`` (``jax_dp`` for ``jax_dp.py``), else ``"worker"``."""
    if name:
        return name
    if os.environ.get("RANK"):
        return f"rank{os.environ['RANK']}"
    if os.environ.get(NAME_VAR):
        return os.environ[NAME_VAR]
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-") else ""
    return script or "worker"


def _worker_dir(result_dir) -> Path:
    folder = result_dir or os.environ.get(DIR_VAR)
    if not folder:
        raise RuntimeError(
            f"No result folder: pass result_dir=, or run this script through "
            f"course_lib.workers.run(), which sets ${DIR_VAR}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_json(path: Path, obj) -> None:
    paths.write_text_atomic(path, json.dumps(obj))  # a reader never sees half a file


def report(stage: str, *, name: str | None = None, result_dir=None) -> None:
    """Record that this worker reached ``stage`` (a short text such as ``"init_process_group"``
    or ``"step 3"``); call it before anything that may block. Costs one small file write.

    Raises:
        RuntimeError: no result folder (neither ``result_dir`` nor ``$COURSE_WORKER_DIR``).
    """
    path = _worker_dir(result_dir) / f"{worker_name(name)}{_PROGRESS_SUFFIX}"
    _write_json(path, {"stage": str(stage), "time": time.time(), "pid": os.getpid()})


def write_result(obj, *, name: str | None = None, result_dir=None) -> Path:
    """Write this worker's result (JSON-serialisable: dicts, lists, numbers, strings; convert
    arrays with ``.tolist()``) for :func:`run` to read back. Returns the file's path.

    Raises:
        TypeError: ``obj`` is not JSON-serialisable.
        RuntimeError: no result folder (neither ``result_dir`` nor ``$COURSE_WORKER_DIR``).
    """
    json.dumps(obj)  # fail here, in the worker, with the offending type
    path = _worker_dir(result_dir) / f"{worker_name(name)}{_RESULT_SUFFIX}"
    _write_json(path, obj)
    return path


def read_results(result_dir) -> dict:
    """``{worker: object}`` for every result written in ``result_dir`` (sorted by name).

    Raises:
        ValueError: a result file that is not valid JSON (the message names it).
    """
    found = {}
    for path in sorted(Path(result_dir).glob(f"*{_RESULT_SUFFIX}")):
        try:
            found[path.name[: -len(_RESULT_SUFFIX)]] = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    return found


def _progress(result_dir: Path) -> dict:
    found = {}
    for path in Path(result_dir).glob(f"*{_PROGRESS_SUFFIX}"):
        try:
            found[path.name[: -len(_PROGRESS_SUFFIX)]] = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            pass
    return found


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


def scratch_dir(lesson: str, *, root=None) -> Path:
    """The folder where lesson ``lesson`` (e.g. ``"11"``) writes its worker scripts, created:
    :func:`course_lib.paths.lesson_build_dir` (``build/lesson<lesson>`` in the checkout, else a
    new temporary folder)."""
    return paths.lesson_build_dir(lesson, root=root)


def python_command(script, *args) -> list:
    """``[python, script, *args]`` with this kernel's interpreter (so the same environment)."""
    return [sys.executable, str(script), *map(str, args)]


def torchrun_command(script, *args, nproc_per_node: int, nnodes: int = 1,
                     standalone: bool = True, options=()) -> list:
    """The ``torchrun`` command for ``script`` as a list, run as
    ``python -m torch.distributed.run`` so that it is this environment's torch.

    ``standalone=True`` (one machine, a local rendezvous) needs ``nnodes == 1``; for several
    machines pass ``standalone=False`` and the rendezvous options in ``options``, e.g.
    ``["--node_rank=0", "--rdzv_backend=c10d", "--rdzv_endpoint=host:29500"]``.

    Raises:
        ValueError: ``nproc_per_node`` or ``nnodes`` below 1, or standalone with nnodes > 1.
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node and nnodes must be >= 1, got {nproc_per_node}, {nnodes}")
    if standalone and nnodes != 1:
        raise ValueError("--standalone is for one node; pass standalone=False for nnodes > 1.")
    head = [sys.executable, "-m", "torch.distributed.run"]
    head += ["--standalone"] if standalone else []
    head += [f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", *map(str, options)]
    return [*head, str(script), *map(str, args)]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


_ERROR_LINE = re.compile(r"^(?:\[\w+\]:)?\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$", re.M)
_LAUNCHER_ERRORS = ("ChildFailedError", "SignalException")


def _first_error(output: str) -> str | None:
    """The first ``SomeError: message`` line of the output that is not the launcher's own
    (torchrun's ``ChildFailedError``): in a crash, usually the failing worker's exception."""
    for match in _ERROR_LINE.finditer(output):
        line = match.group(1).strip()
        if not any(name in line for name in _LAUNCHER_ERRORS):
            return line
    return None


def _condense(output: str) -> str:
    """The output without torchrun's own traceback (which says only that a child failed),
    keeping its failure summary: the workers' last lines stay within the tail."""
    launcher = output.rfind("Traceback (most recent call last):")
    summary = output.rfind("Root Cause")
    if "ChildFailedError" in output[launcher:] and launcher < summary:
        return output[:launcher] + "[torchrun's traceback left out]\n" + output[summary:]
    return output


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def _token_processes(token: str) -> list:
    """Every live process whose environment holds ``TOKEN_VAR=token``."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(TOKEN_VAR) == token:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _tree(pid: int, token: str | None) -> dict:
    """``{pid: psutil.Process}`` of ``pid``, its descendants and the token's processes."""
    import psutil

    procs = {}
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            procs[proc.pid] = proc
    except psutil.Error:
        pass
    for proc in _token_processes(token) if token else []:
        procs.setdefault(proc.pid, proc)
    procs.pop(os.getpid(), None)
    return procs


def _signal_all(pid: int, procs: dict, sig) -> None:
    try:
        if os.getpgid(pid) == pid != os.getpgid(0):  # a group leader, and not our own group
            os.killpg(pid, sig)
    except OSError:  # gone already, or not ours
        pass
    for proc in procs.values():
        try:
            proc.send_signal(sig)  # psutil refuses a pid that was reused meanwhile
        except Exception:  # noqa: BLE001 - gone already, or not ours
            pass


def stop_process_tree(pid: int, *, grace: float = 3.0, token: str | None = None,
                      wait: float = 10.0) -> list[int]:
    """Stop process ``pid`` and everything it started; the one way the course ends a job.

    Reaches the process group ``pid`` leads (a process started with ``start_new_session``),
    every descendant (found with psutil before any is signalled, since orphans are re-parented),
    and, given ``token``, every process whose environment holds ``COURSE_WORKER_TOKEN=token``
    (``torchrun`` starts each rank in a session of its own). SIGTERM first, ``grace`` seconds
    to exit, then SIGKILL to what is left (and to anything started meanwhile); returns when no
    such process is alive, or after ``wait`` more seconds.

    Args:
        pid: the job's root process id (int). A pid that no longer exists is not an error.
        grace: seconds (float >= 0) between SIGTERM and SIGKILL; 0 kills at once.
        token: the job's ``COURSE_WORKER_TOKEN`` value, or None.
        wait: seconds (float >= 0) to wait for the killed processes to disappear.

    Returns:
        The pids that were signalled (list of int; empty when nothing was alive).
    """
    import psutil

    procs = _tree(pid, token)
    _signal_all(pid, procs, signal.SIGTERM)
    if grace > 0 and procs:
        _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
        if not alive and not _tree(pid, token):
            return sorted(procs)
    late = _tree(pid, token)
    procs.update(late)
    _signal_all(pid, procs, signal.SIGKILL)
    psutil.wait_procs(list(procs.values()), timeout=wait)
    return sorted(procs)


def _end_job(popen: subprocess.Popen, token: str, grace: float) -> None:
    """Stop everything of the job (:func:`stop_process_tree`) and reap the launcher."""
    stop_process_tree(popen.pid, grace=grace, token=token)
    try:
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _job_alive(popen: subprocess.Popen, token: str) -> bool:
    return popen.poll() is None or bool(_token_processes(token))


def _describe_workers(expect, run_dir: Path, started: float) -> dict:
    done = read_results(run_dir)
    marks = _progress(run_dir)
    states = {}
    for worker in expect:
        if worker in done:
            states[worker] = "finished"
        elif worker in marks:
            mark = marks[worker]
            states[worker] = (f"last report {mark.get('stage')!r} at "
                              f"{mark.get('time', started) - started:.1f} s")
        else:
            states[worker] = "no report"
    return states


# torchrun's failure summary, after "Root Cause (first observed failure):":
# "rank      : 1 (local_rank: 1)"
_TORCHRUN_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank", re.M)


def run(args, *, timeout: float, name: str | None = None, expect=None, env=None,
        cwd=None, run_dir=None, tail_lines: int = 25, grace: float = 3.0,
        echo: bool = False) -> WorkerRun:
    """Run ``args`` (a list, e.g. from :func:`torchrun_command`) and wait at most ``timeout`` s.

    The child gets its own process session and the environment ``os.environ`` + ``env`` +
    ``COURSE_WORKER_DIR`` (= ``run_dir``), a unique ``COURSE_WORKER_TOKEN`` and
    ``PYTHONUNBUFFERED=1``. Its stdout and stderr go, together, to
    ``run_dir/output.log``.

    Args:
        args: the command, a list of str (a str is split with ``shlex``).
        timeout: seconds, start-up included, before the job is stopped (float > 0).
        name: the job's name in messages; default the script's file name.
        expect: the worker names that must each write a result (``["rank0", "rank1"]`` for
            torchrun; the script's name without ``.py`` for one process, see :func:`worker_name`);
            a timeout then names those that did not finish and where each last reported.
            None: expect nothing.
        env: extra environment variables (values converted with ``str``).
        cwd: working directory of the child.
        run_dir: folder for the log, results and progress marks; default a new temporary
            folder. Old results and marks in it are removed first.
        tail_lines: lines of output shown in an error message.
        grace: seconds between SIGTERM and SIGKILL when the job is stopped.
        echo: print the output as it arrives (a live view in a notebook).

    Returns:
        A :class:`WorkerRun` with the output and the workers' results.

    Raises:
        WorkerTimeout: the time limit passed; every process of the job was killed first.
        WorkerCrashed: a non-zero exit status, or an expected result missing after a clean exit.
        ValueError: ``timeout`` not a positive number, or an empty command.
        KeyboardInterrupt: interrupted (the job is killed first).
    """
    if isinstance(args, str):
        args = shlex.split(args)
    args = [str(a) for a in args]
    if not args:
        raise ValueError("run(): empty command")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"run(): timeout must be a positive number of seconds, got {timeout!r}")
    expect = list(expect or [])
    if name is None:
        script = next((a for a in args if a.endswith(".py")), args[-1])
        name = Path(script).name
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="worker-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.glob(f"*{_RESULT_SUFFIX}"), *run_dir.glob(f"*{_PROGRESS_SUFFIX}")]:
        old.unlink()
    log = run_dir / LOG_NAME
    token = uuid.uuid4().hex
    child_env = {**os.environ, **{k: str(v) for k, v in (env or {}).items()},
                 DIR_VAR: str(run_dir), TOKEN_VAR: token,
                 "PYTHONUNBUFFERED": "1"}

    started_wall = time.time()
    start = time.monotonic()
    printed = 0
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=child_env, cwd=cwd,
                                 start_new_session=True)
    try:
        while popen.poll() is None and time.monotonic() - start < timeout:
            time.sleep(0.05)
            if echo:
                printed = _echo(log, printed)
        if popen.poll() is None:
            output = _read(log)  # what the job said before it was stopped
            _end_job(popen, token, grace)
            seconds = time.monotonic() - start
            states = _describe_workers(expect, run_dir, started_wall)
            culprits = [w for w, s in states.items() if s != "finished"]
            who = "; ".join(f"{w}: {s}" for w, s in states.items())
            message = (f"{name} did not finish within its time limit of {timeout:g} s and was "
                       f"stopped (all its processes killed)."
                       + (f" Stalled: {', '.join(culprits)}." if culprits else "")
                       + (f"\nWorkers: {who}." if who else "")
                       + f"\nLast lines of its output ({log}):\n{_tail(output, tail_lines)}")
            raise WorkerTimeout(message, name=name, seconds=seconds, returncode=None,
                                tail=_tail(output, tail_lines), workers=states,
                                culprits=culprits, log=log)
    except KeyboardInterrupt:
        _end_job(popen, token, grace)
        raise
    # The launcher exited; anything it left behind (a rank in its own session) goes too.
    if _job_alive(popen, token):
        _end_job(popen, token, grace)
    seconds = time.monotonic() - start
    output = _read(log)
    if echo:
        _echo(log, printed)
    code = popen.returncode
    states = _describe_workers(expect, run_dir, started_wall)
    missing = [w for w, s in states.items() if s != "finished"]
    if code != 0 or missing:
        root_cause = output.rsplit("Root Cause", 1)[-1] if "Root Cause" in output else ""
        named = [f"rank{r}" for r in dict.fromkeys(_TORCHRUN_RANK.findall(root_cause))]
        culprits = named or missing
        how = (f"exited with status {code}" if code and code > 0 else
               f"was killed by signal {-code}" if code else "exited without every result")
        who = "; ".join(f"{w}: {s}" for w, s in states.items())
        error = _first_error(output)
        tail = _tail(_condense(output), tail_lines)
        message = (f"{name} {how} after {seconds:.1f} s."
                   + (f" Failed worker: {', '.join(culprits)}." if culprits else "")
                   + (f"\nError: {error}" if error else "")
                   + (f"\nWorkers: {who}." if who else "")
                   + f"\nLast lines of its output ({log}):\n{tail}")
        raise WorkerCrashed(message, name=name, seconds=seconds, returncode=code, tail=tail,
                            workers=states, culprits=culprits, log=log)
    return WorkerRun(name=name, args=args, returncode=code, seconds=seconds, output=output,
                     results=read_results(run_dir), run_dir=run_dir)


def _echo(log: Path, printed: int) -> int:
    try:
        with open(log, "rb") as fh:
            fh.seek(printed)
            chunk = fh.read()
    except OSError:
        return printed
    if chunk:
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return printed + len(chunk)
