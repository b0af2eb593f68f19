"""Autograding of returned notebooks: ``python -m course_tools grade`` (CURRICULUM section 7).

For every student of the roster and every lesson:

1. find the submission ``SUBMISSIONS/ID/NN_name.ipynb`` (a missing or unreadable file still
   gets a row, with the reason);
2. compare it with the student's release (rebuilt from the instructor's lesson, the roster and
   the student id, exactly as ``assign`` made it) and report tampering: a tests cell, the
   parameters cell or the injected parameters edited, cells deleted or duplicated;
3. build the gradeable notebook from the instructor's lesson: the instructor's cells
   everywhere (public *and* hidden tests included), except the student's code in the answer
   cells (matched by nbgrader ``grade_id``, else by cell id), with the roster's parameters
   injected again by papermill. Nothing else of the submission is run;
4. execute it in a separate process (:mod:`course_tools.grading.worker`, nbgrader's ``Execute``)
   with a fresh kernel whose working folder and ``HOME`` are a new temporary folder, a time
   limit per cell (the cell is interrupted) and per notebook (the process and the kernel are
   killed; the cells that ran are still graded), and a write guard
   (:mod:`course_tools.grading.guard`);
5. score each question: the points of its tests cell if that cell ran without an error
   (nbgrader's ``determine_grade``, so a tests cell whose last value is a number gives partial
   credit), else 0 with the reason. A failing hidden test is reported without its text.

Outputs in ``OUT``: ``grades.csv`` (one row per student: a column per question ``NN_exK``, the
lesson totals ``NN_total``, ``total``, ``max``, ``status``, ``reason``, ``seconds``),
``feedback/ID.md`` (for the student: which tests passed or failed and why; no hidden test
text) and ``graded/ID/NN_name.ipynb`` (the executed gradeable notebooks, with the hidden
tests: for the instructor only).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib import paths
from course_tools.grading import release as grading
from course_tools.grading.release import GradingError, Lesson, Student

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRACE_LINE = re.compile(r"Cell In\[(\d+)\], line (\d+)")
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_KEY|SSH_AUTH|_AUTH$",
                        re.IGNORECASE)
STATUS_ORDER = ("missing", "unreadable", "timeout", "crashed", "error", "tampered")
MAX_SUBMISSION_BYTES = 50 * 2**20


@dataclass
class Options:
    """How grading runs. Times in seconds: ``cell_timeout`` for the answer and tests cells
    (the student's code), ``lesson_cell_timeout`` for the lesson's other cells (training runs
    may need long), ``notebook_timeout`` for the whole notebook, kernel start included.
    ``profile`` is given to the notebooks as ``COURSE_PROFILE``; ``keep_temp`` leaves the
    per-notebook working folders in place."""

    cell_timeout: int = 300
    lesson_cell_timeout: int = 3600
    notebook_timeout: int = 3600
    jobs: int = 2
    profile: str = "full"
    keep_temp: bool = False
    startup_timeout: int = 120


@dataclass
class QuestionScore:
    """The grade of one question of one lesson."""

    key: str
    title: str
    points: float
    max_points: float
    passed: bool
    reason: str


@dataclass
class LessonGrade:
    """The grade of one lesson for one student. ``status``: ok, missing, unreadable,
    timeout (notebook time limit), crashed (kernel died / process failed), error (grader)."""

    lesson: str
    file: str
    status: str = "ok"
    reason: str = ""
    tampering: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    questions: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        """Points earned in this lesson."""
        return sum(q.points for q in self.questions)

    @property
    def max_points(self) -> float:
        """Points available in this lesson."""
        return sum(q.max_points for q in self.questions)


@dataclass
class StudentGrade:
    """All the lessons graded for one roster row."""

    student: Student
    lessons: list = field(default_factory=list)

    @property
    def total(self) -> float:
        """Points earned over the lessons."""
        return sum(g.total for g in self.lessons)

    @property
    def max_points(self) -> float:
        """Points available over the lessons."""
        return sum(g.max_points for g in self.lessons)

    @property
    def status(self) -> str:
        """``ok`` or the problems found, e.g. ``timeout,tampered``."""
        found = {g.status for g in self.lessons} | ({"tampered"} if any(
            g.tampering for g in self.lessons) else set())
        problems = [s for s in STATUS_ORDER if s in found]
        return ",".join(problems) or "ok"

    @property
    def reason(self) -> str:
        """One line: per lesson, what went wrong and why each lost question lost points
        (empty when nothing did)."""
        parts = []
        for g in self.lessons:
            bits = ([g.reason] if g.reason else []) + (
                [f"tampering: {'; '.join(g.tampering)}"] if g.tampering else [])
            if g.status in ("ok", "timeout", "crashed"):
                bits += [f"{q.key}: {q.reason.split('; ')[0]}" for q in g.questions
                         if not q.passed and not q.reason.startswith("not run")]
            if bits:
                parts.append(f"{g.lesson}: {'; '.join(bits)}")
        return " | ".join(parts)


# --------------------------------------------------------------------------- submissions


def _norm(source) -> str:
    if isinstance(source, list):  # a notebook read without nbformat's joining
        source = "".join(source)
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def find_submission(submissions: Path, student_id: str, lesson: Lesson) -> Path | None:
    """``submissions/ID/NN_name.ipynb``, else the one file ``submissions/ID/NN*.ipynb``
    (a renamed copy); None when there is none. Raises nothing."""
    folder = submissions / student_id
    exact = folder / lesson.name
    if exact.is_file():
        return exact
    candidates = sorted(folder.glob(f"{lesson.number}*.ipynb")) if folder.is_dir() else []
    return candidates[0] if len(candidates) == 1 else None


def _describe_cell(grade_id: str) -> str:
    if grade_id == grading.PARAMETERS_ID:
        return "the parameters cell"
    if grade_id == grading.INJECTED_ID:
        return "the injected parameters"
    match = re.match(r"ex(\d+)_(solution|tests)$", grade_id or "")
    if match:
        what = "answer cell" if match.group(2) == "solution" else "tests"
        return f"the {what} of exercise {match.group(1)}"
    return f"cell {grade_id}"


def check_submission(release, submission) -> tuple[list[str], list[str], dict]:
    """Compare a submission with the student's release.

    Returns ``(tampering, notes, answers)``: tampering found (locked cells edited or deleted,
    cells deleted or duplicated, recorded parameters changed), notes (edits and additions
    that are ignored because the instructor's cells are run) and the student's answer per
    solution ``grade_id`` (None when the answer cell is missing). Cells are matched by nbgrader
    ``grade_id``, else by cell id. Raises nothing.
    """
    tampering, notes, answers = [], [], {}
    by_grade, by_id, duplicates = {}, {}, set()
    for cell in submission.cells:
        gid = grading._grade_id(cell)
        if gid:
            if gid in by_grade:
                duplicates.add(gid)
            by_grade.setdefault(gid, cell)
        if cell.get("id"):
            by_id.setdefault(cell["id"], cell)
    for gid in sorted(duplicates):
        tampering.append(f"duplicated {_describe_cell(gid)}")
    matched, deleted, edited = set(), 0, 0
    for cell in release.cells:
        gid = grading._grade_id(cell)
        found = by_grade.get(gid) if gid else None
        if found is None and cell.get("id"):
            found = by_id.get(cell["id"])
            if found is not None and gid and grading._grade_id(found) not in (None, gid):
                found = None  # that id now belongs to another graded cell
        if found is not None:
            matched.add(id(found))
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answers[gid] = None if found is None else found.source
            if found is None:
                tampering.append(f"deleted {_describe_cell(gid)}")
        elif meta.get("locked") or meta.get("grade"):
            if found is None:
                tampering.append(f"deleted {_describe_cell(gid)}")
            elif _norm(found.source) != _norm(cell.source):
                tampering.append(f"edited {_describe_cell(gid)}")
        elif found is None:
            deleted += 1
        elif _norm(found.source) != _norm(cell.source):
            edited += 1
    if deleted:
        tampering.append(f"deleted {deleted} lesson cell(s)")
    expected = release.metadata.get("papermill", {}).get("parameters")
    recorded = submission.metadata.get("papermill", {}).get("parameters")
    if recorded is not None and expected is not None and recorded != expected:
        tampering.append("changed the recorded parameters")
    if edited:
        notes.append(f"{edited} lesson cell(s) you changed outside the answer cells were run "
                     "as the lesson has them")
    added = sum(1 for c in submission.cells if id(c) not in matched and _norm(c.source))
    if added:
        notes.append(f"{added} cell(s) you added were not run; put all your code in the "
                     "answer cells")
    return tampering, notes, answers


def build_gradeable(lesson: Lesson, answers: dict, parameters: dict, *, release=None,
                    student_id: str = ""):
    """The notebook that is executed: the instructor's lesson (all tests, hidden ones
    included) with the student's ``answers`` (solution ``grade_id`` -> source; missing or None:
    the release's stub) and ``parameters`` injected by papermill; no outputs.

    Raises:
        LessonFormatError: see :func:`course_tools.grading.release.make_release` (only when ``release``
            must be built here).
    """
    if release is None:
        release = grading.make_release(lesson, parameters, student_id=student_id)
    stubs = {grading._grade_id(c): c.source for c in release.cells
             if c.metadata.get("nbgrader", {}).get("solution")}
    nb = copy.deepcopy(lesson.nb)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answer = answers.get(meta["grade_id"])
            cell.source = answer if answer is not None else stubs.get(meta["grade_id"], "")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return grading.inject_parameters(nb, parameters, lesson_name=lesson.name,
                                     student_id=student_id)


# --------------------------------------------------------------------------- execution


@dataclass
class Execution:
    """What happened when a gradeable notebook ran: ``state`` completed, timeout,
    kernel_died, stuck, error or no_result; ``cell`` is the index of the last cell started."""

    nb: object
    state: str
    message: str
    cell: int | None
    seconds: float
    refused: list


def _kill_tree(pid: int) -> None:
    try:
        import psutil

        try:
            parent = psutil.Process(pid)
            procs = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    except ImportError:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_kernel(pid) -> None:
    """Kill the kernel's process group (the kernel starts its own session) if still alive."""
    if not pid:
        return
    try:
        import psutil

        proc = psutil.Process(pid)
        if "ipykernel" not in " ".join(proc.cmdline()):
            return  # the pid was reused by something else
        pgid = os.getpgid(pid)
        if pgid == pid:
            os.killpg(pgid, signal.SIGKILL)
        else:
            _kill_tree(pid)
    except Exception:  # noqa: BLE001 - gone already, or not ours
        pass


_LIVE: set = set()  # worker processes running now (killed if grading is interrupted)
_LIVE_LOCK = threading.Lock()
_STOP = threading.Event()  # set when grading is interrupted: start no new worker


def _kill_live() -> None:
    with _LIVE_LOCK:
        pids = [proc.pid for proc in _LIVE]
    for pid in pids:
        _kill_tree(pid)


def _kernel_env(sandbox: Path, hook_dir: Path, log: Path, deny_read: list, profile: str) -> dict:
    from course_lib import data

    env = {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)
           and not k.startswith(("GRADER_", "JPY_", "PYTEST_", "COURSE_", "PYDEVD"))}
    tmp = sandbox / "tmp"
    for folder in (tmp, sandbox / ".cache", sandbox / ".config", sandbox / ".local" / "share",
                   sandbox / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(sandbox), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp),
        "XDG_CACHE_HOME": str(sandbox / ".cache"), "XDG_CONFIG_HOME": str(sandbox / ".config"),
        "XDG_DATA_HOME": str(sandbox / ".local" / "share"),
        "MPLCONFIGDIR": str(sandbox / ".config" / "matplotlib"),
        "IPYTHONDIR": str(sandbox / ".ipython"),
        "JUPYTER_RUNTIME_DIR": str(sandbox / ".jupyter" / "runtime"),
        "JUPYTER_CONFIG_DIR": str(sandbox / ".jupyter"),
        "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
        "COURSE_PROFILE": profile,
        "COURSE_RESULTS_DIR": str(sandbox / "results"),
        "COURSE_CACHE_DIR": str(data.cache_dir()),
        "PYTHONPATH": os.pathsep.join([str(hook_dir)] + (
            [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        "GRADER_SANDBOX": str(sandbox),
        "GRADER_ALLOW_WRITE": os.pathsep.join([os.devnull, "/dev/shm"]),
        "GRADER_DENY_READ": os.pathsep.join(str(p) for p in deny_read),
        "GRADER_LOG": str(log),
        # Framework caches inside the sandbox too. An inherited path would make the kernel
        # write outside it, which the hook refuses and reports as tampering: torch's first
        # torch.compile in the grader's own process sets TORCHINDUCTOR_CACHE_DIR=/tmp/... in
        # os.environ (seen in the test suite), and an instructor's shell may set others.
        "TORCHINDUCTOR_CACHE_DIR": str(sandbox / ".cache" / "torchinductor"),
        "TRITON_CACHE_DIR": str(sandbox / ".cache" / "triton"),
        "TORCH_HOME": str(sandbox / ".cache" / "torch"),
        "KERAS_HOME": str(sandbox / ".keras"),
    })
    for name in ("JAX_COMPILATION_CACHE_DIR", "TF_XLA_FLAGS", "XLA_FLAGS", "CUDA_CACHE_PATH"):
        env.pop(name, None)  # may name folders outside the sandbox (dumps, caches)
    try:
        env["COURSE_DATA_DIR"] = str(data.data_dir())
    except Exception:  # noqa: BLE001 - no shipped data folder: the lessons do without
        pass
    return env


def execute_gradeable(nb, job_dir: Path, *, options: Options, hook_dir: Path,
                      deny_read: list) -> Execution:
    """Run ``nb`` in a worker subprocess inside ``job_dir`` (its working folder and HOME are
    ``job_dir/work``) under the time limits of ``options``; never raises for what the notebook
    does. The worker process and the kernel's process group are killed at the notebook time
    limit (and any kernel left behind is killed at the end).

    Raises:
        OSError: ``job_dir`` cannot be written (a grader problem, not the student's).
    """
    sandbox = job_dir / "work"
    sandbox.mkdir(parents=True)
    log = job_dir / "refused.log"
    env = _kernel_env(sandbox, hook_dir, log, deny_read, options.profile)
    (job_dir / "job.json").write_text(json.dumps({
        "cwd": str(sandbox), "cell_timeout": options.cell_timeout,
        "lesson_cell_timeout": max(options.lesson_cell_timeout, options.cell_timeout),
        "startup_timeout": options.startup_timeout, "env": env}), encoding="utf-8")
    nbformat.write(nb, job_dir / "input.ipynb")
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    if _STOP.is_set():
        raise RuntimeError("grading was interrupted")
    start = time.monotonic()
    with open(job_dir / "worker.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "course_tools.grading.worker",
                                 str(job_dir)], cwd=job_dir, stdout=out,
                                stderr=subprocess.STDOUT, env=worker_env,
                                start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        timed_out = False
        try:
            proc.wait(timeout=options.notebook_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc.pid)
            proc.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    seconds = time.monotonic() - start
    try:
        status = json.loads((job_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    _kill_kernel(status.get("kernel_pid"))
    try:
        executed = nbformat.read(job_dir / "executed.ipynb", as_version=4)
    except Exception:  # noqa: BLE001 - killed before the first cell finished, or garbled
        executed = None
    if timed_out:
        state = "timeout"
        message = f"the notebook went over its time limit of {options.notebook_timeout} s"
    elif status.get("state") in ("completed", "kernel_died", "stuck", "error"):
        state, message = status["state"], status.get("message", "")
    else:
        state = "no_result"
        tail = (job_dir / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
        message = f"the grading process stopped (exit {proc.returncode}): {' '.join(tail)}"
    refused = []
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            kind, _, path = line.partition("\t")
            entry = f"tried to {kind} {path}"
            if entry not in refused:
                refused.append(entry)
    return Execution(nb=executed, state=state, message=message, cell=status.get("cell"),
                     seconds=seconds, refused=refused)


# --------------------------------------------------------------------------- scoring


def _hidden_lines(source: str) -> set[int]:
    hidden, active = set(), False
    for number, line in enumerate(source.splitlines(), 1):
        if "BEGIN HIDDEN TESTS" in line:
            active = True
        elif "END HIDDEN TESTS" in line:
            active = False
        if active or "HIDDEN TESTS" in line:
            hidden.add(number)
    return hidden


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _test_failure(cell, instructor_source: str, cell_timeout: int) -> str:
    """Why a tests cell failed, without revealing hidden test text."""
    error = _errors(cell)[-1]
    ename, evalue = error.get("ename", "Error"), error.get("evalue", "")
    if any(e.get("ename") == "CellTimeoutError" for e in _errors(cell)):
        return f"the tests went over the cell time limit of {cell_timeout} s"
    count = cell.get("execution_count")
    line_no = None
    for line in error.get("traceback", []):
        for match in TRACE_LINE.finditer(ANSI.sub("", line)):
            if count is not None and int(match.group(1)) == count:
                line_no = int(match.group(2))
    hidden = _hidden_lines(instructor_source)
    lines = instructor_source.splitlines()
    if line_no is None or not 1 <= line_no <= len(lines):
        return (f"a test failed ({ename})" if hidden
                else f"a test failed: {ename}" + (f": {_short(evalue)}" if evalue else ""))
    if line_no in hidden:
        return f"a hidden test failed ({ename})"
    text = _short(lines[line_no - 1].strip(), 120)
    if ename == "AssertionError":
        return f"test `{text}` failed" + (f": {_short(evalue)}" if evalue else "")
    return f"test `{text}` raised {ename}" + (f": {_short(evalue)}" if evalue else "")


def _answer_problem(cell, stub: str, cell_timeout: int) -> str:
    if cell is None:
        return ""
    errors = _errors(cell)
    if _norm(cell.source) == _norm(stub):
        return "not answered"
    if any(e.get("ename") == "CellTimeoutError" for e in errors):
        return f"your answer went over the cell time limit of {cell_timeout} s"
    if errors:
        error = errors[0]
        evalue = error.get("evalue", "")
        return f"your answer raised {error.get('ename', 'an error')}" + (
            f": {_short(evalue, 120)}" if evalue else "")
    return ""


def _cell_label(nb, index) -> str:
    if index is None or nb is None or index >= len(nb.cells):
        return "the notebook"
    gid = grading._grade_id(nb.cells[index])
    return _describe_cell(gid) if gid else f"lesson cell {index + 1}"


def unanswered(answers: dict, stubs: dict) -> set:
    """The solution grade ids whose answer is missing or still the release's stub."""
    return {gid for gid, stub in stubs.items()
            if answers.get(gid) is None or _norm(answers[gid]) == _norm(stub)}


def score(lesson: Lesson, execution: Execution, *, stubs: dict, options: Options,
          not_answered=frozenset()) -> list:
    """One :class:`QuestionScore` per exercise of ``lesson`` from the executed notebook.

    A question whose answer cell is in ``not_answered`` (unchanged from the release, or
    deleted) gets 0, "not answered", whatever its tests did: nbgrader's rule for an answer
    cell whose checksum did not change. A tests cell that ran without an error gets nbgrader's
    ``determine_grade`` (all its points, or the partial credit it printed as its last value);
    stderr output (warnings) does not count as a failure here, unlike in nbgrader. A failed
    or unrun tests cell gets 0 and the reason. Raises nothing.
    """
    from nbgrader.utils import determine_grade

    nb = execution.nb
    cells = {grading._grade_id(c): c for c in (nb.cells if nb is not None else [])
             if grading._grade_id(c)}
    results = []
    for ex in lesson.exercises:
        if ex.solution_id in not_answered:
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False,
                                         "not answered"))
            continue
        tests, answer = cells.get(ex.tests_id), cells.get(ex.solution_id)
        instructor = lesson.cell(ex.tests_id).source
        ran = tests is not None and (tests.get("execution_count") is not None or tests.outputs)
        answer_note = _answer_problem(answer, stubs.get(ex.solution_id, ""),
                                      options.cell_timeout)
        if not ran:
            where = _cell_label(nb, execution.cell)
            why = {"timeout": f"{execution.message} (while running {where})",
                   "kernel_died": f"{execution.message} (while running {where})",
                   "stuck": f"{execution.message} ({where})"}.get(
                execution.state, execution.message or "the tests did not run")
            reason = f"not run: {why}"
            if answer_note:
                reason = f"{answer_note}; {reason}"
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason))
            continue
        if _errors(tests):
            reason = _test_failure(tests, instructor, options.cell_timeout)
            if answer_note:
                reason = f"{answer_note}; {reason}"
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason))
            continue
        graded = copy.deepcopy(tests)
        graded.outputs = [o for o in graded.outputs
                          if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        try:
            points, _ = determine_grade(graded)
        except (ValueError, KeyError) as exc:
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False,
                                         f"the tests printed an invalid partial grade ({exc})"))
            continue
        points = float(points or 0.0)
        passed = points >= ex.points
        reason = "all tests passed" if passed else f"partial credit: {points:g} of {ex.points:g}"
        results.append(QuestionScore(ex.key, ex.title, points, ex.points, passed, reason))
    return results


# --------------------------------------------------------------------------- one notebook


def _zero(lesson: Lesson, reason: str) -> list:
    return [QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason)
            for ex in lesson.exercises]


def grade_notebook(lesson: Lesson, student: Student, submissions: Path, out: Path, *,
                   options: Options, temp_root: Path, hook_dir: Path,
                   deny_read: list) -> LessonGrade:
    """Grade one student's copy of one lesson (steps 1-5 of the module docstring) and write
    the executed notebook to ``out/graded/ID/NN_name.ipynb``. Never raises: a problem with the
    submission or with grading it becomes the grade's status and reason."""
    result = LessonGrade(lesson=lesson.number, file=lesson.name)
    start = time.monotonic()
    try:
        path = find_submission(submissions, student.id, lesson)
        if path is None:
            result.status = "missing"
            result.reason = f"no submission {student.id}/{lesson.name}"
            result.questions = _zero(lesson, "no submission")
            return result
        if path.name != lesson.name:
            result.notes.append(f"graded {path.name} (expected the name {lesson.name})")
        try:
            if path.stat().st_size > MAX_SUBMISSION_BYTES:
                raise ValueError(f"larger than {MAX_SUBMISSION_BYTES // 2**20} MB; clear the "
                                 "outputs before handing it in")
            submission = nbformat.read(path, as_version=4)
            if not isinstance(submission.get("cells"), list) or not all(
                    isinstance(c, dict) and isinstance(c.get("source"), str | list)
                    for c in submission.cells):
                raise ValueError("no list of cells with sources")
            for cell in submission.cells:
                if not isinstance(cell.get("metadata"), dict):
                    cell["metadata"] = nbformat.NotebookNode()
            if not isinstance(submission.get("metadata"), dict):
                submission["metadata"] = nbformat.NotebookNode()
        except Exception as exc:  # noqa: BLE001 - anything unreadable is reported alike
            result.status = "unreadable"
            result.reason = f"{path.name} is not a readable notebook ({_short(exc, 100)})"
            result.questions = _zero(lesson, "the submission could not be read")
            return result
        parameters = grading.student_parameters(student, lesson)
        release = grading.make_release(lesson, parameters, student_id=student.id)
        result.tampering, notes, answers = check_submission(release, submission)
        result.notes += notes
        stubs = {grading._grade_id(c): c.source for c in release.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
        blank = unanswered(answers, stubs)
        if blank >= {ex.solution_id for ex in lesson.exercises}:
            result.notes.append("not run: no answer cell was changed")
            result.questions = _zero(lesson, "not answered")
            return result
        nb = build_gradeable(lesson, answers, parameters, release=release, student_id=student.id)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{student.id}-{lesson.number}-", dir=temp_root))
        try:
            execution = execute_gradeable(nb, job_dir, options=options, hook_dir=hook_dir,
                                          deny_read=deny_read)
        finally:
            if not options.keep_temp:
                shutil.rmtree(job_dir, ignore_errors=True)
        if execution.refused:
            result.tampering += [f"{r} (refused)" for r in execution.refused[:5]]
        if execution.state != "completed":
            result.status = {"timeout": "timeout", "kernel_died": "crashed", "stuck": "timeout",
                             "error": "crashed", "no_result": "crashed"}[execution.state]
            result.reason = f"{execution.message} (while running " \
                            f"{_cell_label(execution.nb or nb, execution.cell)})"
        if execution.nb is None:
            execution.nb = nb
        for index, cell in enumerate(execution.nb.cells):
            if cell.cell_type == "code" and not grading._grade_id(cell) and any(
                    e.get("ename") == "CellTimeoutError" for e in _errors(cell)):
                result.notes.append(f"lesson cell {index + 1} went over its time limit of "
                                    f"{max(options.lesson_cell_timeout, options.cell_timeout)}"
                                    " s and was interrupted")
        result.questions = score(lesson, execution, stubs=stubs, options=options,
                                 not_answered=blank)
        from nbgrader.preprocessors import LimitOutput

        graded, _ = LimitOutput().preprocess(execution.nb, {})
        target = out / "graded" / student.id / lesson.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(graded, target)
    except Exception as exc:  # noqa: BLE001 - one student's problem never stops the class
        result.status = "error"
        result.reason = f"grader error: {type(exc).__name__}: {_short(exc, 200)}"
        if not result.questions:
            result.questions = _zero(lesson, "not graded (grader error)")
    finally:
        result.seconds = time.monotonic() - start
    return result


# --------------------------------------------------------------------------- reports


def _fmt(points: float) -> str:
    return f"{points:g}"


def feedback_markdown(grade: StudentGrade, options: Options) -> str:
    """The student's feedback file (Markdown): per lesson, each question's points and why,
    tampering found and notes. Contains no hidden test and no solution. Raises nothing."""
    s = grade.student
    out = [f"# Feedback for {s.name} ({s.id})", "",
           f"**Total: {_fmt(grade.total)} / {_fmt(grade.max_points)}**", "",
           f"Each notebook ran from the top in a fresh kernel with the lesson's own cells and "
           f"your answer cells, the parameters given to you, a limit of {options.cell_timeout} s"
           f" per answer or tests cell and {options.notebook_timeout} s per notebook.", ""]
    for g in grade.lessons:
        out += [f"## {g.file}: {_fmt(g.total)} / {_fmt(g.max_points)}", ""]
        if g.status != "ok":
            out += [f"**{g.status}**: {g.reason}", ""]
        if g.tampering:
            out += ["**Changes to locked parts were found** (the lesson's own cells were run "
                    "instead):", ""] + [f"- {t}" for t in g.tampering] + [""]
        out += ["| Question | Points | Result |", "|---|---|---|"]
        for q in g.questions:
            result = ("passed" if q.passed else "failed") + f": {q.reason}"
            result = result.replace("|", "\\|")
            out.append(f"| {q.title} | {_fmt(q.points)} / {_fmt(q.max_points)} | {result} |")
        out.append("")
        if g.notes:
            out += ["Notes:", ""] + [f"- {n}" for n in g.notes] + [""]
    return "\n".join(out)


def grades_table(grades: list, lessons: list) -> tuple[list, list]:
    """``(columns, rows)`` of ``grades.csv``. Raises nothing."""
    columns = ["id", "name"]
    for lesson in lessons:
        columns += [f"{lesson.number}_{ex.key}" for ex in lesson.exercises]
        columns.append(f"{lesson.number}_total")
    columns += ["total", "max", "status", "reason", "seconds"]
    rows = []
    for grade in grades:
        row = {"id": grade.student.id, "name": grade.student.name}
        for g in grade.lessons:
            for q in g.questions:
                row[f"{g.lesson}_{q.key}"] = _fmt(q.points)
            row[f"{g.lesson}_total"] = _fmt(g.total)
        row.update(total=_fmt(grade.total), max=_fmt(grade.max_points), status=grade.status,
                   reason=grade.reason, seconds=f"{sum(g.seconds for g in grade.lessons):.0f}")
        rows.append(row)
    return columns, rows


_write_text = paths.write_text_atomic


def grade(submissions: str | os.PathLike, roster: str | os.PathLike, out: str | os.PathLike, *,
          notebooks_dir: str | os.PathLike = "notebooks", lessons=None,
          options: Options | None = None, progress=None) -> list[StudentGrade]:
    """Grade every roster student's submission of every chosen lesson; write ``out/grades.csv``,
    ``out/feedback/ID.md`` and ``out/graded/ID/*.ipynb``. ``options.jobs`` notebooks run at the
    same time. ``progress``: optional callable given one line per graded notebook.

    Returns the grades in roster order. One student's missing, broken, endless or tampered
    notebook only affects that student's row.

    Raises:
        GradingError / RosterError / LessonFormatError: the submissions folder does not exist,
            the roster or a lesson is unusable (nothing is graded then).
    """
    options = options or Options()
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise GradingError(f"submissions folder {submissions} does not exist")
    if min(options.jobs, options.cell_timeout, options.lesson_cell_timeout,
           options.notebook_timeout) < 1:
        raise GradingError("--jobs and the time limits must be at least 1")
    chosen = grading.load_lessons(notebooks_dir, lessons)
    students = grading.read_roster(roster, chosen, grading.course_parameters(notebooks_dir))
    out.mkdir(parents=True, exist_ok=True)
    temp_root = Path(tempfile.mkdtemp(prefix="course-grade-"))
    hook_dir = Path(tempfile.mkdtemp(prefix="course-grade-hook-"))
    shutil.copyfile(Path(__file__).with_name("guard.py"), hook_dir / "sitecustomize.py")
    deny_read = [p.resolve() for p in (Path(notebooks_dir), submissions, out, temp_root)]
    tasks = [(s, lesson) for s in students for lesson in chosen]
    _STOP.clear()
    done: dict = {}
    lock = threading.Lock()
    try:
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            futures = {pool.submit(grade_notebook, lesson, s, submissions, out, options=options,
                                   temp_root=temp_root, hook_dir=hook_dir,
                                   deny_read=deny_read): (s, lesson) for s, lesson in tasks}
            try:
                for future in as_completed(futures):
                    s, lesson = futures[future]
                    result = future.result()
                    with lock:
                        done[(s.id, lesson.number)] = result
                        if progress:
                            flag = "" if result.status == "ok" else f" {result.status}"
                            flag += " tampered" if result.tampering else ""
                            progress(f"[{len(done)}/{len(tasks)}] {s.id} {lesson.number}: "
                                     f"{_fmt(result.total)}/{_fmt(result.max_points)}{flag} "
                                     f"({result.seconds:.0f} s)")
            except BaseException:  # Ctrl-C: the workers run in their own sessions
                _STOP.set()
                pool.shutdown(wait=False, cancel_futures=True)
                _kill_live()
                raise
    finally:
        shutil.rmtree(hook_dir, ignore_errors=True)
        if not options.keep_temp:
            shutil.rmtree(temp_root, ignore_errors=True)
    grades = [StudentGrade(s, [done[(s.id, lesson.number)] for lesson in chosen])
              for s in students]
    for g in grades:
        _write_text(out / "feedback" / f"{g.student.id}.md", feedback_markdown(g, options))
    columns, rows = grades_table(grades, chosen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(out / "grades.csv", buffer.getvalue())
    return grades
