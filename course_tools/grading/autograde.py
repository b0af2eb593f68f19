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
   with a fresh kernel in the sandbox of :mod:`course_tools.grading.sandbox` (bubblewrap: no
   network, own PID namespace, lesson sources, submissions and grades hidden, resource
   limits; ``grade`` refuses to run without it unless ``isolation="none"`` /
   ``GRADER_ISOLATION=none`` is chosen), whose working folder and ``HOME`` are a new
   temporary folder, a time limit per cell (the cell is interrupted; a cell that cannot be
   interrupted restarts the kernel and the cells before it run again) and per notebook (the
   process and the kernel are killed; the cells that ran are still graded), a write guard
   (:mod:`course_tools.grading.guard`) and the tests-cell probe
   (:mod:`course_tools.grading.kernel_probe`: hooks, built-ins and library functions reset
   before each tests cell, signed proof that the tests ran to their end, hidden tests kept
   out of the kernel's history);
5. score each question: the points of its tests cell if that cell ran without an error
   (nbgrader's ``determine_grade``, so a tests cell whose last value is a number gives partial
   credit), else 0 with the reason. A failing hidden test is reported without its text.

Outputs in ``OUT``: ``grades.csv`` (one row per student: a column per question ``NN_exK``, the
lesson totals ``NN_total``, ``total``, ``max``, ``status``, ``reason``, ``seconds``),
``feedback/ID.md`` (for the student: which tests passed or failed and why; no hidden test
text; every reason and note passes the releases' leak filter, :func:`withhold`) and
``graded/ID/NN_name.ipynb`` (the executed gradeable notebooks, with the hidden tests: for the
instructor only). ``OUT`` must be new or empty; it is written as a temporary sibling folder
renamed at the end.
"""

from __future__ import annotations

import copy
import csv
import enum
import errno
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import psutil

from course_lib import paths
from course_lib.workers import stop_process_tree
from course_tools.grading import release as grading
from course_tools.grading import sandbox as sandbox_tools
from course_tools.grading.release import GradingError, Lesson, Student
from course_tools.grading.sandbox import Isolation, Limits
from course_tools.runner import find_lessons

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRACE_LINE = re.compile(r"Cell In\[(\d+)\], line (\d+)")
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_KEY|SSH_AUTH|_AUTH$",
                        re.IGNORECASE)
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
    isolation: Isolation | str | None = None
    limits: Limits = field(default_factory=Limits)
    assignment: str | os.PathLike | None = None


class Status(enum.StrEnum):
    """A lesson's grading status (``grades.csv``'s ``status`` joins the problems in this
    order; ``ok`` when there is none)."""

    OK = "ok"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    WRONG_LESSON = "wrong lesson"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    ERROR = "error"
    TAMPERED = "tampered"


class State(enum.StrEnum):
    """How the execution of a gradeable notebook ended (:class:`Execution`)."""

    COMPLETED = "completed"
    TIMEOUT = "timeout"
    KERNEL_DIED = "kernel_died"
    STUCK = "stuck"
    ERROR = "error"
    NO_RESULT = "no_result"


STATUS_FOR_STATE = {State.TIMEOUT: Status.TIMEOUT, State.STUCK: Status.TIMEOUT,
                    State.KERNEL_DIED: Status.CRASHED, State.ERROR: Status.CRASHED,
                    State.NO_RESULT: Status.CRASHED}


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
    """The grade of one lesson for one student. ``status`` (:class:`Status`): ok, missing,
    unreadable, wrong lesson, timeout (notebook time limit), crashed (kernel died / process
    failed), error (grader); tampering is listed in ``tampering``."""

    lesson: str
    file: str
    status: Status = Status.OK
    reason: str = ""
    tampering: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    questions: list = field(default_factory=list)
    seconds: float = 0.0
    instructor_notes: list = field(default_factory=list)

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
        found = {g.status for g in self.lessons} | ({Status.TAMPERED} if any(
            g.tampering for g in self.lessons) else set())
        problems = [s.value for s in Status if s in found and s is not Status.OK]
        return ",".join(problems) or Status.OK.value

    @property
    def reason(self) -> str:
        """One line: per lesson, what went wrong and why each lost question lost points
        (empty when nothing did)."""
        parts = []
        for g in self.lessons:
            bits = ([g.reason] if g.reason else []) + (
                [f"tampering: {'; '.join(g.tampering)}"] if g.tampering else []) + (
                [f"instructor: {'; '.join(g.instructor_notes)}"] if g.instructor_notes else [])
            if g.status in (Status.OK, Status.TIMEOUT, Status.CRASHED):
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


class SubmissionError(ValueError):
    """A submission that is not a regular file of its own inside the submissions folder."""


def _no_follow_dir(parent_fd: int | None, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)


def find_submission(submissions: Path, student_id: str, lesson: Lesson) -> Path | None:
    """``submissions/ID/NN_name.ipynb``, else the one entry ``submissions/ID/NN*.ipynb``
    (a renamed copy); None when there is none. Symlinks count as entries (so that
    :func:`read_submission` refuses them rather than another file being graded). Raises
    nothing."""
    folder = submissions / student_id
    try:
        if folder.is_symlink() or not folder.is_dir():
            return None
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.name.endswith(".ipynb"))
    except OSError:
        return None
    if lesson.name in names:
        return folder / lesson.name
    candidates = [n for n in names if n.startswith(lesson.number)]
    return folder / candidates[0] if len(candidates) == 1 else None


def read_submission(submissions: Path, path: Path, limit: int = MAX_SUBMISSION_BYTES) -> str:
    """The text of the submission ``path`` (``submissions/ID/NAME``), read only as a regular
    file with a single link, through folders that are not symlinks (``O_NOFOLLOW`` at every
    step, ``fstat`` on the open file), at most ``limit`` bytes.

    Raises:
        SubmissionError: a symlink, hard link, device, FIFO or folder; larger than ``limit``;
            not UTF-8. The message says what to hand in instead.
    """
    relative = path.relative_to(submissions)
    if len(relative.parts) != 2:
        raise SubmissionError("not directly in the student's folder")
    fds = []
    try:
        try:
            fds.append(os.open(submissions, os.O_RDONLY | os.O_DIRECTORY))
            fds.append(_no_follow_dir(fds[-1], relative.parts[0]))
            fd = os.open(relative.parts[1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=fds[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SubmissionError("a symbolic link, not a notebook file; hand in the "
                                      "notebook itself") from None
            raise SubmissionError(f"cannot be opened ({exc.strerror})") from None
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SubmissionError("not a regular file; hand in the notebook itself")
        if info.st_nlink != 1:
            raise SubmissionError("a hard link to another file; hand in a copy of the "
                                  "notebook")
        if info.st_size > limit:
            raise SubmissionError(f"larger than {limit // 2**20} MB; clear the outputs "
                                  "before handing it in")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise SubmissionError(f"larger than {limit // 2**20} MB; clear the outputs "
                                  "before handing it in")
    finally:
        for fd in reversed(fds):
            os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("not UTF-8 text") from None


def _describe_cell(grade_id: str | None) -> str:
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
    ``grade_id``, else by cell id, else (notebooks written without cell ids, or ids changed by
    another editor) by their content: a lesson cell found unchanged anywhere is not deleted.
    Raises nothing.
    """
    tampering, notes, answers = [], [], {}
    by_grade: dict = {}
    by_id: dict = {}
    duplicates: set = set()
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
    by_content: dict = {}
    for cell in submission.cells:
        if not grading._grade_id(cell):
            by_content.setdefault((cell.get("cell_type"), _norm(cell.source)), []).append(cell)
    matched, deleted, edited = set(), 0, 0

    def take_by_content(cell):
        for found in by_content.get((cell.cell_type, _norm(cell.source)), []):
            if id(found) not in matched:
                return found
        return None

    for cell in release.cells:
        gid = grading._grade_id(cell)
        found = by_grade.get(gid) if gid else None
        if found is None and cell.get("id"):
            found = by_id.get(cell["id"])
            if found is not None and (id(found) in matched or (
                    gid and grading._grade_id(found) not in (None, gid))):
                found = None  # that id now belongs to another cell
        if found is None and not gid:
            found = take_by_content(cell)
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


def other_lesson(submission, lesson: Lesson, lessons) -> str | None:
    """The file name of another lesson that ``submission`` is a copy of (recorded by papermill
    in its metadata, else most of that lesson's code cells and few of ``lesson``'s found in
    it), or None. ``lessons``: the course's lessons (:class:`Lesson`). Raises nothing."""
    recorded = submission.metadata.get("papermill", {}).get("input_path")
    names = {other.name for other in lessons}
    if isinstance(recorded, str) and recorded != lesson.name and recorded in names:
        return recorded
    sources = {_norm(c.source) for c in submission.cells if _norm(c.source)}

    def share(nb) -> float:
        code = [_norm(c.source) for c in nb.cells
                if c.cell_type == "code" and _norm(c.source)
                and not c.metadata.get("nbgrader", {}).get("solution")]
        return sum(1 for c in code if c in sources) / max(1, len(code))

    if share(lesson.nb) >= 0.2:
        return None
    best = max((other for other in lessons if other.name != lesson.name), key=lambda o: share(
        o.nb), default=None)
    return best.name if best is not None and share(best.nb) >= 0.5 else None


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


def answer_names(lesson: Lesson) -> dict:
    """Per solution ``grade_id``, the names the instructor's answer cell assigns at its top
    level (assignments, definitions, imports): an answer may rebind those; any other lesson
    variable it changes is put back before the tests run. Raises nothing."""
    from course_tools.grading.worker import assigned_names

    return {cell.metadata["nbgrader"]["grade_id"]: assigned_names([cell])
            for cell in lesson.nb.cells if cell.metadata.get("nbgrader", {}).get("solution")}


def _top_level_stores(tree) -> set:
    """The names a module's statements bind at its top level (assignments, ``for`` and
    ``with`` targets, definitions, imports, walrus), not inside functions, classes, lambdas
    or comprehensions."""
    return {name for name, _, _ in _top_level_bindings(tree)}


def _top_level_bindings(tree) -> list:
    """``(name, first line, last line)`` of each top-level binding of :func:`_top_level_stores`
    (a definition spans its whole body)."""
    import ast

    found: list = []
    scoped = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
              ast.SetComp, ast.DictComp, ast.GeneratorExp)

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.append((child.name, child.lineno, child.end_lineno or child.lineno))
                continue
            if isinstance(child, scoped):
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store | ast.Del):
                found.append((child.id, child.lineno, child.end_lineno or child.lineno))
            elif isinstance(child, ast.alias):
                found.append(((child.asname or child.name).split(".")[0],
                              getattr(child, "lineno", 0), getattr(child, "end_lineno", 0)))
            visit(child)

    visit(tree)
    return found


def _parse(source: str):
    """The AST of a cell's ``source``, read as IPython reads it (``%%writefile`` and other
    magics become the Python calls they stand for, which bind no name), or None when it is
    not Python even then."""
    import ast

    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        pass
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError, ImportError):
        return None


def _free_reads(tree) -> set:
    """The names ``tree`` reads (anywhere) that it never binds (anywhere, arguments
    included): what it takes from the notebook's globals."""
    import ast

    loads: set[str] = set()
    stores: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
        elif isinstance(node, ast.arg):
            stores.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            stores.add(node.name)
        elif isinstance(node, ast.alias):
            stores.add((node.asname or node.name).split(".")[0])
    return loads - stores


def _imported(tree) -> set:
    import ast

    return {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) for a in node.names}


SOLUTION_BLOCK = re.compile(r"^[ \t]*###? BEGIN SOLUTION.*?^[ \t]*###? END SOLUTION[^\n]*$",
                            re.MULTILINE | re.DOTALL)


def exercise_plan(lesson: Lesson) -> dict:
    """Per tests ``grade_id``, what the trusted check (issue 16) needs from the student's
    kernel, computed from the instructor's lesson without running it:

    - ``observed``: the names the tests cell (hidden tests included) reads from the notebook
      that the instructor's solution (the ``BEGIN/END SOLUTION`` part of the answer cell,
      or the whole cell if that part cannot be told apart) binds at top level, or that a
      lesson cell between the answer and the tests binds (they derive from the answer); a
      definition whose body holds the solution is the solution's, and so is what the given
      lines after the solution bind;
    - ``inputs``: the names the tests read that the answer cell reads but does not bind,
      plus those that only the answer cell's given lines (outside the solution) bind: the
      answer must not change them. Modules (names bound by an import anywhere in the
      lesson) and built-ins are left out.

    Lists are sorted. An unparsable cell contributes nothing. Raises nothing.
    """
    import builtins

    cells = lesson.nb.cells
    index = {grading._grade_id(c): i for i, c in enumerate(cells) if grading._grade_id(c)}
    modules: set = set()
    for cell in cells:
        tree = _parse(cell.source) if cell.cell_type == "code" else None
        if tree is not None:
            modules |= _imported(tree)
    skip = modules | set(dir(builtins))
    plans: dict[str, Any] = {}
    for ex in lesson.exercises:
        answer_at, tests_at = index.get(ex.solution_id), index.get(ex.tests_id)
        if answer_at is None or tests_at is None:
            continue
        answer, tests = _parse(cells[answer_at].source), _parse(cells[tests_at].source)
        if answer is None or tests is None:
            plans[ex.tests_id] = {"observed": [], "inputs": []}
            continue
        bound = _top_level_stores(answer)
        source = cells[answer_at].source
        blocks = [(source.count("\n", 0, m.start()) + 1, source.count("\n", 0, m.end()) + 1)
                  for m in SOLUTION_BLOCK.finditer(source)]
        if not blocks:  # no markers: the whole cell is the answer
            given_bound, solution_bound = set(), bound
        else:
            # bound in the solution, or by given lines after it (derived from the answer)
            solution_bound = {name for name, first, last in _top_level_bindings(answer)
                              if any(first <= end and last >= start for start, end in blocks)
                              or first > blocks[0][1]}
            given_bound = bound - solution_bound
        between: set = set()
        for cell in cells[answer_at + 1:tests_at]:
            tree = _parse(cell.source) if cell.cell_type == "code" else None
            if tree is not None and not grading._grade_id(cell):
                between |= _top_level_stores(tree)
        reads = _free_reads(tests) - skip
        observed = reads & (solution_bound | between)
        inputs = reads & ((_free_reads(answer) - bound) | given_bound) - observed
        plans[ex.tests_id] = {"observed": sorted(observed), "inputs": sorted(inputs)}
    return plans


# --------------------------------------------------------------------------- execution


@dataclass
class Execution:
    """What happened when a gradeable notebook ran: ``state`` (:class:`State`); ``cell`` is
    the index of the last cell started."""

    nb: Any
    state: State
    message: str
    cell: int | None
    seconds: float
    refused: list
    probe_loaded: bool = True


def _kill_tree(pid: int) -> None:
    """Kill ``pid`` and everything it started at once (no grace: a grading job has nothing to
    save)."""
    stop_process_tree(pid, grace=0)


def _kill_kernel(pid) -> None:
    """Kill the kernel's process tree if that pid is still an ipykernel (not a reused pid)."""
    if not pid:
        return
    try:
        if "ipykernel" not in " ".join(psutil.Process(int(pid)).cmdline()):
            return  # the pid was reused by something else
    except (psutil.Error, ValueError, TypeError, OverflowError):
        return  # gone already, or not a pid
    _kill_tree(int(pid))


_LIVE: set = set()  # worker processes running now (killed if grading is interrupted)
_LIVE_LOCK = threading.Lock()
_STOP = threading.Event()  # set when grading is interrupted: start no new worker
_IPC_DIRS: set = set()  # socket folders outside the temporary root (short paths)


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


def _read_untrusted(path: Path, limit: int) -> str:
    """At most ``limit`` bytes of ``path`` as text, only if it is a regular file with one link
    (the kernel can write it: a symlink or hard link to another file reads as empty). Raises
    nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return ""
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def execute_gradeable(nb, job_dir: Path, *, options: Options, hook_dir: Path,
                      deny_read: list, isolation: Isolation = Isolation.NONE, hidden=(),
                      visible=(), keep=None, plans=None, trusted: Path | None = None,
                      decide=()) -> Execution:
    """Run ``nb`` in a worker subprocess inside ``job_dir`` (its working folder and HOME are
    ``job_dir/work``) under the time limits of ``options``; never raises for what the notebook
    does. With ``isolation`` bubblewrap the kernel runs in the sandbox of
    :mod:`course_tools.grading.sandbox` (``hidden``/``visible``: the folders it hides and
    shows again; ``options.limits``), so it can write only ``work/``, its socket folder and
    the guard's log, none of which the grader trusts: the grader reads only what the worker
    (outside the sandbox) wrote. ``keep``: per answer ``grade_id``, the names the answer cell
    may assign (:func:`answer_names`). ``plans``: :func:`exercise_plan`; the kernel
    exports the observations they name (issue 16, the trusted check) and the worker copies
    them to ``job_dir/observations``. ``trusted``: a student job's ``observations`` folder:
    this is then the trusted check's job (``nb`` is the instructor's lesson, no student
    code), with those files copied into its working folder; ``decide``: the tests ``grade_id``
    it must reach (it runs up to the last of them, or of those with observations, whichever
    comes later). The worker process and the kernel's process tree are
    killed at the notebook time limit (and any kernel left behind is killed at the end).

    When the grader is root each kernel runs as a user of its own (:func:`course_tools.
    grading.sandbox.claim_uid`; its process limit is its own), freed when the job ends.

    Raises:
        OSError: ``job_dir`` cannot be written (a grader problem, not the student's).
        RuntimeError: grading was interrupted; no kernel user is free.
    """
    uid = sandbox_tools.claim_uid() if isolation is Isolation.BUBBLEWRAP else None
    try:
        return _run_gradeable(nb, job_dir, options=options, hook_dir=hook_dir,
                              deny_read=deny_read, isolation=isolation, hidden=hidden,
                              visible=visible, keep=keep, uid=uid, plans=plans,
                              trusted=trusted, decide=decide)
    finally:
        sandbox_tools.release_uid(uid)  # after the kernel was killed: kills any leftover


def _run_gradeable(nb, job_dir: Path, *, options: Options, hook_dir: Path, deny_read: list,
                   isolation: Isolation, hidden, visible, keep, uid: int | None,
                   plans=None, trusted: Path | None = None, decide=()) -> Execution:
    """:func:`execute_gradeable` with the kernel's user ``uid`` (None: ``nobody`` or the
    grader's own user)."""
    job_dir.chmod(0o711)  # the sandbox's user must reach its bound folders, list nothing
    sandbox = job_dir / "work"
    sandbox.mkdir(parents=True)
    if trusted is not None:
        from course_tools.grading.worker import OBSERVED, _copy_observation

        for part in sorted(trusted.glob("*.json")) if trusted.is_dir() else []:
            _copy_observation(part.with_suffix(""), sandbox / OBSERVED / part.stem)
    log_dir = job_dir / "log"
    log_dir.mkdir()
    log = log_dir / "refused.log"
    ipc = job_dir / "ipc"
    if len(str(ipc)) > 60:  # Unix socket paths are limited to 107 bytes
        ipc = Path(tempfile.mkdtemp(prefix="cgk-", dir="/tmp"))
        ipc.chmod(0o711)
        with _LIVE_LOCK:
            _IPC_DIRS.add(ipc)  # removed at the end of grade() if the job could not
    else:
        ipc.mkdir()
    env = _kernel_env(sandbox, hook_dir, log, deny_read, options.profile)
    env["GRADER_ALLOW_WRITE"] += os.pathsep + str(ipc)  # its sockets and connection file
    kernel_argv = None
    if isolation is Isolation.BUBBLEWRAP:
        kernel_argv = sandbox_tools.kernel_command(
            sys.executable, work=sandbox, ipc=ipc, log_dir=log_dir, hook_dir=hook_dir,
            hidden=hidden, visible=visible, limits=options.limits, uid=uid)
        sandbox_tools.give_to_kernel(sandbox, ipc, log_dir, uid=uid)
    _write_text(job_dir / "job.json", json.dumps({
        "cwd": str(sandbox), "cell_timeout": options.cell_timeout,
        "lesson_cell_timeout": max(options.lesson_cell_timeout, options.cell_timeout),
        "startup_timeout": options.startup_timeout, "env": env, "ipc_dir": str(ipc),
        "kernel_argv": kernel_argv,
        "kernel_uid": (uid if uid is not None else sandbox_tools.kernel_uid())
        if kernel_argv else None,
        "keep": keep or {}, "plans": plans or {}, "decide": sorted(decide),
        "mode": "trusted" if trusted is not None else "student"}))
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
    if ipc.parent != job_dir:
        shutil.rmtree(ipc, ignore_errors=True)
        with _LIVE_LOCK:
            _IPC_DIRS.discard(ipc)
    try:
        executed = nbformat.read(job_dir / "executed.ipynb", as_version=4)
    except Exception:  # noqa: BLE001 - killed before the first cell finished, or garbled
        executed = None
    if timed_out:
        state = State.TIMEOUT
        message = f"the notebook went over its time limit of {options.notebook_timeout} s"
    elif status.get("state") in (State.COMPLETED, State.KERNEL_DIED, State.STUCK, State.ERROR):
        state, message = State(status["state"]), str(status.get("message", ""))
    else:
        state = State.NO_RESULT
        tail = (job_dir / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
        message = f"the grading process stopped (exit {proc.returncode}): {' '.join(tail)}"
    refused = _refusals(_read_untrusted(log, 64 * 1024))
    return Execution(nb=executed, state=state, message=message, cell=status.get("cell"),
                     seconds=seconds, refused=refused,
                     probe_loaded=status.get("probe_loaded") is not False)


def _refusals(log: str) -> list[str]:
    """The write guard's refusals (``log``: lines ``read|write<TAB>path``) as entries that
    name no student-chosen text: per kind and top folder (``/etc``, ``/root``; a folder name
    that is not a short identifier is not shown), the number of paths, e.g. ``tried to write
    2 path(s) under /root``. The paths themselves are the kernel's choice and could carry
    hidden tests out (issue 16). Raises nothing."""
    counts: dict = {}
    for line in log.splitlines():
        kind, _, path = line.partition("\t")
        if kind not in ("read", "write") or not path:
            continue
        top = path.lstrip("/").split("/", 1)[0]
        shown = top if IDENTIFIER.fullmatch(top.lstrip(".")) and top.lstrip(".") else None
        counts.setdefault((kind, f"/{shown}" if shown else "another folder"), set()).add(path)
    return [f"tried to {kind} {len(paths)} path(s) under {where}"
            for (kind, where), paths in sorted(counts.items())]


LONG_TOKEN = re.compile(r"[^\s,;:()'`\"]{41,}")


def _cut_tokens(text: str, limit: int = 300) -> str:
    """``text`` (an entry the kernel's probe sent) with every word longer than 40 characters
    cut to its first 20 and at most ``limit`` characters: a second bound, after the probe's
    own, on what a disarmed probe could carry out. Raises nothing."""
    return _short(LONG_TOKEN.sub(lambda m: m.group(0)[:20] + "…", str(text)), limit)


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
    """Why a tests cell failed, without revealing hidden test text. The exception's message
    may be the student's text (a replayed exception, a returned value in an assertion's
    message): long words are cut (:func:`_cut_tokens`), so no encoded blob gets through."""
    error = _errors(cell)[-1]
    ename, evalue = _cut_name(error.get("ename")), str(error.get("evalue", ""))
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
                else f"a test failed: {ename}" + (f": {_cut_tokens(evalue, 160)}" if evalue else ""))
    if line_no in hidden:
        return f"a hidden test failed ({ename})"
    text = _short(lines[line_no - 1].strip(), 120)
    if ename == "AssertionError":
        return f"test `{text}` failed" + (f": {_cut_tokens(evalue, 160)}" if evalue else "")
    return f"test `{text}` raised {ename}" + (f": {_cut_tokens(evalue, 160)}" if evalue else "")


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def _cut_name(ename) -> str:
    """An exception's type name as shown to a student: the last dotted part, a Python
    identifier of at most 40 characters, else "an error" (the name is the student's text)."""
    last = str(ename or "").rsplit(".", 1)[-1]
    match = IDENTIFIER.fullmatch(last)
    return match.group(0) if match else "an error"


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
        return f"your answer raised {_cut_name(error.get('ename'))}" + (
            f": {_cut_tokens(evalue, 120)}" if evalue else "")
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
          not_answered=frozenset(), trusted: Execution | None = None,
          plans: dict | None = None) -> list:
    """One :class:`QuestionScore` per exercise of ``lesson`` from the executed notebook.

    A question whose answer cell is in ``not_answered`` (unchanged from the release, or
    deleted) gets 0, "not answered", whatever its tests did: nbgrader's rule for an answer
    cell whose checksum did not change. A tests cell that ran without an error gets nbgrader's
    ``determine_grade`` (all its points, or the partial credit it printed as its last value);
    stderr output (warnings) does not count as a failure here, unlike in nbgrader. A failed
    or unrun tests cell gets 0 and the reason. A question the trusted check (``trusted``,
    :func:`run_trusted`) found replayable is decided by the trusted run of its tests alone
    (the student kernel's own tests outcome is ignored); the others as above. A question
    with observed names (``plans``, :func:`exercise_plan`, computed when None) whose tests
    passed in the student's kernel but that the trusted check did not reach (no trusted run,
    one that crashed or ran out of time, observations the answer kept from being exported)
    gets 0: its in-process verdict may have been disarmed, and only the trusted check's
    own finding "not replayable" sends a question back to it. Raises nothing.
    """
    from nbgrader.utils import determine_grade

    nb = execution.nb
    cells = {grading._grade_id(c): c for c in (nb.cells if nb is not None else [])
             if grading._grade_id(c)}
    verdicts = trusted_verdicts(trusted)
    plans = exercise_plan(lesson) if plans is None else plans
    results = []
    for ex in lesson.exercises:
        if ex.solution_id in not_answered:
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False,
                                         "not answered"))
            continue
        tests, answer = cells.get(ex.tests_id), cells.get(ex.solution_id)
        instructor_cell = lesson.cell(ex.tests_id)
        instructor = instructor_cell.source if instructor_cell is not None else ""
        ran = tests is not None and (tests.get("execution_count") is not None or tests.outputs)
        answer_note = _answer_problem(answer, stubs.get(ex.solution_id, ""),
                                      options.cell_timeout)
        if not ran:
            where = _cell_label(nb, execution.cell)
            why = {State.TIMEOUT: f"{execution.message} (while running {where})",
                   State.KERNEL_DIED: f"{execution.message} (while running {where})",
                   State.STUCK: f"{execution.message} ({where})"}.get(
                execution.state, execution.message or "the tests did not run")
            reason = f"not run: {why}"
            if answer_note:
                reason = f"{answer_note}; {reason}"
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason))
            continue
        verdict, trusted_cell = verdicts.get(ex.tests_id, ({}, None))
        if (plans.get(ex.tests_id) or {}).get("observed") and not _errors(tests) and not (
                "replayable" in verdict and (not verdict["replayable"] or verdict.get(
                    "verdict") in ("ran", "refused"))):
            reason = ("not decided: the trusted check "
                      + ("did not run" if trusted is None else "stopped before these tests")
                      + " (a grader error: grade again); the verdict of your own kernel is "
                      "not trusted")
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False,
                                         f"{answer_note}; {reason}" if answer_note
                                         else reason))
            continue
        if verdict.get("replayable") and verdict.get("verdict") in ("ran", "refused"):
            if verdict["verdict"] == "refused":
                reason = str(verdict.get("reason") or "your values could not be checked")
                results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False,
                                             f"{answer_note}; {reason}" if answer_note
                                             else reason))
                continue
            tests = trusted_cell  # the verdict: the tests run on your values, trusted
        if _errors(tests):
            reason = _test_failure(tests, instructor, options.cell_timeout)
            if answer_note:
                reason = f"{answer_note}; {reason}"
            results.append(QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason))
            continue
        proof = tests.metadata.get("grading", {}) if tests is not None else {}
        if tests is not trusted_cell and (tests is None or not (
                proof.get("checked") and proof.get("completed"))):
            reason = ("the tests could not prove that they ran to their end (the grader's "
                      "checks before or after them were disarmed)")
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


def to_decide(execution: Execution, plans: dict) -> list[str]:
    """The tests ``grade_id`` s the trusted check must decide: those with observed names
    (``plans``) whose tests cell ran in the student's kernel. Whether that kernel sent their
    observations does not matter: an answer that stops its own export (removes the files,
    blocks the folder) must not keep the in-process verdict it may have disarmed; the
    trusted check then refuses those values as unreadable. Raises nothing."""
    found = []
    for cell in execution.nb.cells if execution.nb is not None else []:
        tests_id = grading._grade_id(cell) or ""
        if (plans.get(tests_id) or {}).get("observed") and (
                cell.get("execution_count") is not None or cell.get("outputs")):
            found.append(tests_id)
    return found


def _worth_checking(execution: Execution, plans: dict) -> bool:
    """Whether the trusted check can change anything: some tests cell with observed names
    passed in the student's own kernel. When none passed there, every question already
    scores 0 and no trusted kernel is started (a kernel that runs the same tests on the same
    values fails them too; only the student's own code could make them fail there, so the
    saving costs an honest student nothing). Raises nothing."""
    if execution.nb is None:
        return False
    for cell in execution.nb.cells:
        tests_id = grading._grade_id(cell) or ""
        if (plans.get(tests_id) or {}).get("observed") \
                and cell.get("execution_count") is not None and not _errors(cell):
            return True
    return False


def run_trusted(lesson: Lesson, parameters: dict, student: Student, observations: Path,
                plans: dict, *, options: Options, context: Context, release=None,
                decide=()) -> Execution:
    """The trusted check of one student's notebook (issue 16): a fresh kernel in the same
    sandbox runs the instructor's lesson (reference solutions, all tests) with the student's
    ``parameters``; for each replayable question its tests run once more with the student's
    values and recorded calls (``observations``: the student job's folder of them, untrusted
    data, copied into the trusted kernel's working folder) bound, and that run is the
    verdict (``metadata["trusted_check"]`` of each tests cell). No student code runs in it.
    ``decide``: the tests it must reach (:func:`to_decide`), observations or not.
    Never raises for what the observations hold; OSError for the grader's own folders."""
    answers = {grading._grade_id(c): c.source for c in lesson.nb.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    reference = build_gradeable(lesson, answers, parameters, release=release,
                                student_id=student.id)
    job_dir = Path(tempfile.mkdtemp(prefix=f"{lesson.number}-trusted-", dir=context.temp_root))
    try:
        return execute_gradeable(reference, job_dir, options=options,
                                 hook_dir=context.hook_dir, deny_read=context.deny_read,
                                 isolation=context.isolation, hidden=context.hidden,
                                 visible=context.visible, plans=plans, trusted=observations,
                                 decide=decide)
    finally:
        if not options.keep_temp:
            shutil.rmtree(job_dir, ignore_errors=True)


def trusted_verdicts(trusted: Execution | None) -> dict:
    """Per tests ``grade_id``, ``(metadata["trusted_check"], cell)`` of the trusted run (empty
    without one). Raises nothing."""
    if trusted is None or trusted.nb is None:
        return {}
    return {grading._grade_id(c): (c.metadata["trusted_check"], c) for c in trusted.nb.cells
            if grading._grade_id(c) and isinstance(c.metadata.get("trusted_check"), dict)}


def disagreements(lesson: Lesson, execution: Execution,
                  trusted: Execution | None) -> list[str]:
    """Notes for the instructor: the questions whose tests passed in the student's own kernel
    but that the trusted check failed (the answer may have disarmed its tests there; the
    trusted verdict counts). Raises nothing."""
    verdicts = trusted_verdicts(trusted)
    cells = {grading._grade_id(c): c for c in (execution.nb.cells if execution.nb else [])
             if grading._grade_id(c)}
    found = []
    for ex in lesson.exercises:
        tests = cells.get(ex.tests_id)
        verdict, trusted_cell = verdicts.get(ex.tests_id, ({}, None))
        failed = verdict.get("verdict") == "refused" or (
            verdict.get("verdict") == "ran" and trusted_cell is not None
            and bool(_errors(trusted_cell)))
        if verdict.get("replayable") and failed and tests is not None \
                and tests.get("execution_count") is not None and not _errors(tests):
            found.append(ex.key)
    if not found:
        return []
    return [f"the tests of {', '.join(found)} passed in the student's own kernel but failed "
            "the trusted check (its verdict counts): look at the graded notebook for code "
            "that disarms tests"]


def grading_paths(lesson: Lesson, trusted: Execution | None) -> list[str]:
    """Notes saying which questions the trusted check decided, which were graded in the
    student's own kernel and why, and which a trusted check that stopped early did not
    reach (they score 0, :func:`score`). Raises nothing."""
    verdicts = trusted_verdicts(trusted)
    decided = [ex.key for ex in lesson.exercises
               if verdicts.get(ex.tests_id, ({}, None))[0].get("replayable")]
    stopped = trusted is not None and trusted.state is not State.COMPLETED
    missed = [ex.key for ex in lesson.exercises
              if stopped and ex.key not in decided and ex.tests_id not in verdicts]
    kept = [f"{ex.key} ({_short(verdicts[ex.tests_id][0].get('why') or 'not checked', 100)})"
            if ex.tests_id in verdicts else f"{ex.key} (its tests did not run in your notebook)"
            for ex in lesson.exercises if ex.key not in decided and ex.key not in missed]
    notes = []
    if decided:
        notes.append("graded by the trusted check (a kernel that ran none of your code, "
                     f"given your values): {', '.join(decided)}")
    if kept and trusted is not None:
        notes.append(f"graded in your own kernel: {'; '.join(kept)}")
    if missed:
        notes.append(f"not decided (the trusted check stopped early; grade again): "
                     f"{', '.join(missed)}")
    return notes


# --------------------------------------------------------------------------- one notebook


def _zero(lesson: Lesson, reason: str) -> list:
    return [QuestionScore(ex.key, ex.title, 0.0, ex.points, False, reason)
            for ex in lesson.exercises]


@dataclass
class Context:
    """What every notebook of one ``grade`` run shares: the temporary folders, the write
    guard, the isolation and the folders the sandbox hides and shows, the course's lessons
    (to recognise a wrong lesson) and the parameters ``assign`` recorded (``assignment.json``,
    or None)."""

    temp_root: Path
    hook_dir: Path
    deny_read: list
    isolation: Isolation = Isolation.NONE
    hidden: list = field(default_factory=list)
    visible: list = field(default_factory=list)
    lessons: list = field(default_factory=list)
    assignment: dict | None = None


def _read_notebook(text: str):
    submission = nbformat.reads(text, as_version=4)
    if not isinstance(submission.get("cells"), list) or not all(
            isinstance(c, dict) and isinstance(c.get("source"), str | list)
            for c in submission.cells):
        raise ValueError("no list of cells with sources")
    for cell in submission.cells:
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
        if isinstance(cell.source, list):
            cell["source"] = "".join(str(x) for x in cell.source)
        cell.setdefault("cell_type", "code")
    if not isinstance(submission.get("metadata"), dict):
        submission["metadata"] = nbformat.NotebookNode()
    return submission


def _given_parameters(student: Student, lesson: Lesson, submission, release, context) -> tuple:
    """``(parameters the student was given, note for the instructor or "")``. The roster's
    parameters are the ones graded; when ``assign`` recorded others (``assignment.json``), or
    the submission's recorded and injected parameters agree on others, the release compared
    with is built from those, so an edited roster is not blamed on the student."""
    roster = grading.student_parameters(student, lesson)
    given = None
    if context.assignment is not None:
        given = context.assignment.get("students", {}).get(student.id, {}).get(
            "parameters", {}).get(lesson.number)
    if given is None:
        recorded = submission.metadata.get("papermill", {}).get("parameters")
        injected = [c for c in submission.cells if grading._grade_id(c) == grading.INJECTED_ID]
        if isinstance(recorded, dict) and recorded != roster and injected:
            try:
                values = {name: value for name, (value, _) in grading._parse_parameters(
                    injected[0].source, lesson.name).items()}
            except GradingError:
                values = None
            if values == dict(recorded):
                given = values  # in the order of the injected cell, as assign wrote it
    if given is None or given == roster:
        return release, ""
    note = (f"the parameters in {student.id}'s notebook ({given}) differ from the roster's "
            f"({roster}): the roster was edited since assign, or the student changed them; "
            "graded with the roster's")
    return grading.make_release(lesson, given, student_id=student.id), note


def grade_notebook(lesson: Lesson, student: Student, submissions: Path, out: Path, *,
                   options: Options, context: Context) -> LessonGrade:
    """Grade one student's copy of one lesson (steps 1-5 of the module docstring) and write
    the executed notebook to ``out/graded/ID/NN_name.ipynb``. Never raises: a problem with the
    submission or with grading it becomes the grade's status and reason."""
    result = LessonGrade(lesson=lesson.number, file=lesson.name)
    start = time.monotonic()
    try:
        path = find_submission(submissions, student.id, lesson)
        if path is None:
            result.status = Status.MISSING
            result.reason = f"no submission {student.id}/{lesson.name}"
            result.questions = _zero(lesson, "no submission")
            return result
        if path.name != lesson.name:
            result.notes.append(f"graded {path.name} (expected the name {lesson.name})")
        try:
            submission = _read_notebook(read_submission(submissions, path))
        except Exception as exc:  # noqa: BLE001 - anything unreadable is reported alike
            result.status = Status.UNREADABLE
            result.reason = f"{path.name} is not a readable notebook ({_short(str(exc), 100)})"
            result.questions = _zero(lesson, "the submission could not be read")
            return result
        other = other_lesson(submission, lesson, context.lessons)
        if other is not None:
            result.status = Status.WRONG_LESSON
            result.reason = f"{path.name} is a copy of {other}, not of {lesson.name}"
            result.questions = _zero(lesson, "wrong lesson handed in")
            return result
        parameters = grading.student_parameters(student, lesson)
        release = grading.make_release(lesson, parameters, student_id=student.id)
        compared, instructor_note = _given_parameters(student, lesson, submission, release,
                                                      context)
        if instructor_note:
            result.instructor_notes.append(instructor_note)
        result.tampering, notes, answers = check_submission(compared, submission)
        result.notes += notes
        stubs = {grading._grade_id(c): c.source for c in release.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
        blank = unanswered(answers, stubs)
        if blank >= {ex.solution_id for ex in lesson.exercises}:
            result.notes.append("not run: no answer cell was changed")
            result.questions = _zero(lesson, "not answered")
            return result
        nb = build_gradeable(lesson, answers, parameters, release=release, student_id=student.id)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{lesson.number}-", dir=context.temp_root))
        plans = exercise_plan(lesson)
        trusted = None
        try:
            execution = execute_gradeable(
                nb, job_dir, options=options, hook_dir=context.hook_dir,
                deny_read=context.deny_read, isolation=context.isolation,
                hidden=context.hidden, visible=context.visible, keep=answer_names(lesson),
                plans=plans)
            if _worth_checking(execution, plans):
                trusted = run_trusted(lesson, parameters, student, job_dir / "observations",
                                      plans, options=options, context=context,
                                      release=release, decide=to_decide(execution, plans))
        finally:
            if not options.keep_temp:
                shutil.rmtree(job_dir, ignore_errors=True)
        if execution.refused:
            result.tampering += [f"{r} (refused)" for r in execution.refused[:5]]
        if execution.state is not State.COMPLETED:
            result.status = STATUS_FOR_STATE[execution.state]
            result.reason = f"{execution.message} (while running " \
                            f"{_cell_label(execution.nb or nb, execution.cell)})"
        if execution.nb is None:
            execution.nb = nb
        if not execution.probe_loaded:  # before any student code: the grader's problem
            result.status = Status.ERROR
            result.reason = ("grader error: the grader's probe could not be loaded into the "
                             "kernel (run again with --keep-temp and read worker.log)")
        for index, cell in enumerate(execution.nb.cells):
            if cell.cell_type == "code" and not grading._grade_id(cell) and any(
                    e.get("ename") == "CellTimeoutError" for e in _errors(cell)):
                result.notes.append(f"lesson cell {index + 1} went over its time limit of "
                                    f"{max(options.lesson_cell_timeout, options.cell_timeout)}"
                                    " s and was interrupted")
        for ex in lesson.exercises:
            tests = next((c for c in execution.nb.cells
                          if grading._grade_id(c) == ex.tests_id), None)
            proof = tests.metadata.get("grading") if tests is not None else None
            if not proof:
                continue
            for what in proof.get("tampering", [])[:20]:
                what = _cut_tokens(what)
                if not any(t.startswith(f"{what} (undone") for t in result.tampering):
                    result.tampering.append(f"{what} (undone before the tests of {ex.key})")
            for note in proof.get("notes", [])[:10]:
                result.notes.append(f"{ex.key}: {_cut_tokens(note)}")
            ran = tests is not None and (tests.get("execution_count") is not None
                                         or tests.outputs)
            if ran and execution.probe_loaded and not _errors(tests) and not (
                    proof.get("checked") and proof.get("completed")):
                result.tampering.append(f"the tests of {ex.key} could not prove that they ran "
                                        "to their end")
        if trusted is not None and (trusted.state is not State.COMPLETED
                                    or trusted.nb is None):
            result.status = Status.ERROR
            result.reason = (f"grader error: the trusted check did not complete "
                             f"({_short(trusted.message, 160)}); the questions it did not "
                             "decide score 0 until graded again (their in-process verdict "
                             "is not trusted)")
        result.questions = score(lesson, execution, stubs=stubs, options=options,
                                 not_answered=blank, trusted=trusted, plans=plans)
        result.notes += grading_paths(lesson, trusted)
        result.instructor_notes += disagreements(lesson, execution, trusted)
        from nbgrader.preprocessors import LimitOutput

        graded, _ = LimitOutput().preprocess(execution.nb, {})
        target = out / "graded" / student.id / lesson.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(graded, target)
        if trusted is not None and trusted.nb is not None:
            nbformat.write(LimitOutput().preprocess(trusted.nb, {})[0],
                           target.with_name(target.stem + ".trusted.ipynb"))
    except Exception as exc:  # noqa: BLE001 - one student's problem never stops the class
        result.status = Status.ERROR
        result.reason = f"grader error: {type(exc).__name__}: {_short(str(exc), 200)}"
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
        if g.status is not Status.OK:
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


WITHHELD = "(withheld: it quoted a solution or a hidden test)"


def withhold(text: str, secrets) -> str:
    """``text`` unless it contains a line of a solution or hidden test (``secrets``, from
    :func:`course_tools.grading.release.secret_lines`; whitespace-insensitive; lines of 10+
    characters anywhere, shorter ones as a whole line), else :data:`WITHHELD`. The same
    lines the releases are checked for. Raises nothing."""
    flat = " ".join(str(text).split())
    lines = {" ".join(line.split()) for line in str(text).splitlines()}
    for secret in secrets:
        secret = " ".join(secret.split())
        if secret in lines or (len(secret) >= 10 and secret in flat):
            return WITHHELD
    return text


def _withhold_grade(g: LessonGrade, secrets) -> None:
    g.reason = withhold(g.reason, secrets)
    g.tampering = [withhold(t, secrets) for t in g.tampering]
    g.notes = [withhold(n, secrets) for n in g.notes]
    g.instructor_notes = [withhold(n, secrets) for n in g.instructor_notes]
    for q in g.questions:
        q.reason = withhold(q.reason, secrets)


def resolve_isolation(options: Options) -> tuple[Isolation, str]:
    """The isolation to grade with and a line describing it: ``options.isolation`` (or the
    environment variable ``GRADER_ISOLATION``): ``bubblewrap``, ``none`` (explicitly no
    sandbox), or unset (bubblewrap, which must then be available).

    Raises:
        GradingError: no usable bubblewrap and no explicit ``none``; an unknown value.
    """
    wanted = options.isolation or os.environ.get("GRADER_ISOLATION") or "auto"
    if wanted not in ("auto", *Isolation.__members__.values()):
        raise GradingError(f"isolation {wanted!r} is unknown; use bubblewrap or none")
    if wanted == Isolation.NONE:
        return Isolation.NONE, ("none (chosen explicitly): kernels run as your user with "
                                "only an audit hook; for trusted submissions only")
    isolation, why = sandbox_tools.probe()
    if isolation is None:
        raise GradingError(f"no sandbox for the students' kernels: {why}. Install it, or "
                           "grade without isolation explicitly (GRADER_ISOLATION=none, "
                           "trusted submissions only)")
    return isolation, why


def _unreadable_for_kernel(folders, limit: int = 20) -> list[str]:
    """Files and folders under ``folders`` that the sandbox's user (``nobody``, when grading
    as root) cannot read, at most ``limit``; empty when the kernels run as the grader's own
    user. Raises nothing."""
    if sandbox_tools.kernel_uid() is None:
        return []
    found: list = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in dirs + files:
                path = os.path.join(root, name)
                try:
                    mode = os.stat(path).st_mode
                except OSError:
                    continue
                if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
                    found.append(path)
                    if len(found) >= limit:
                        return found
    return found


def _read_assignment(path) -> dict | None:
    if path is None:
        return None
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GradingError(f"assignment record {path} cannot be read ({exc}); give the "
                           "assignment.json that assign wrote") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("students"), dict):
        raise GradingError(f"{path} is not an assignment.json written by assign")
    return manifest


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
    try:
        options.limits.check()
    except ValueError as exc:
        raise GradingError(str(exc)) from None
    isolation, description = resolve_isolation(options)
    chosen = grading.load_lessons(notebooks_dir, lessons)
    students = grading.read_roster(roster, chosen, grading.course_parameters(notebooks_dir))
    assignment = _read_assignment(options.assignment)
    grading._check_new_folder(out)
    if progress:
        progress(f"isolation: {description}")
    course = list(chosen)
    for path in find_lessons(notebooks_dir):
        if path.name not in {lesson.name for lesson in course}:
            try:
                course.append(grading.load_lesson(path))
            except GradingError:
                continue  # a lesson being written: it cannot be a wrong copy's source
    secrets = sorted({line for lesson in course for line in grading.secret_lines(lesson)})
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    temp_root = Path(tempfile.mkdtemp(prefix="course-grade-"))
    temp_root.chmod(0o711)
    hook_dir = Path(tempfile.mkdtemp(prefix="course-grade-hook-"))
    shutil.copyfile(Path(__file__).with_name("guard.py"), hook_dir / "sitecustomize.py")
    hook_dir.chmod(0o755)
    deny_read = [p.resolve() for p in (Path(notebooks_dir), submissions, out, staging,
                                       temp_root)]
    import course_lib
    from course_lib import data

    package = Path(course_lib.__file__).resolve().parent
    visible = [Path(sys.base_prefix), Path(sys.prefix), package]
    for folder in (data.data_dir, data.cache_dir):
        try:
            visible.append(Path(folder()))
        except Exception:  # noqa: BLE001 - no such folder here: nothing to show
            pass
    hidden = [package.parent, Path.home(), *deny_read]
    unreadable = _unreadable_for_kernel(visible[2:])
    if progress and unreadable:
        progress(f"warning: the sandboxed kernels (user nobody) cannot read {len(unreadable)} "
                 f"file(s) the lessons may need, e.g. {', '.join(unreadable[:3])}; make them "
                 "readable (chmod a+r) or their lessons fail")
    context = Context(temp_root=temp_root, hook_dir=hook_dir, deny_read=deny_read,
                      isolation=isolation, hidden=hidden, visible=visible, lessons=course,
                      assignment=assignment)
    tasks = [(s, lesson) for s in students for lesson in chosen]
    _STOP.clear()
    done: dict = {}
    lock = threading.Lock()
    try:
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            futures = {pool.submit(grade_notebook, lesson, s, submissions, staging,
                                   options=options, context=context): (s, lesson)
                       for s, lesson in tasks}
            try:
                for future in as_completed(futures):
                    s, lesson = futures[future]
                    result = future.result()
                    _withhold_grade(result, secrets)
                    with lock:
                        done[(s.id, lesson.number)] = result
                        if progress:
                            flag = "" if result.status is Status.OK else f" {result.status}"
                            flag += " tampered" if result.tampering else ""
                            progress(f"[{len(done)}/{len(tasks)}] {s.id} {lesson.number}: "
                                     f"{_fmt(result.total)}/{_fmt(result.max_points)}{flag} "
                                     f"({result.seconds:.0f} s)")
            except BaseException:  # Ctrl-C: the workers run in their own sessions
                _STOP.set()
                pool.shutdown(wait=False, cancel_futures=True)
                _kill_live()
                raise
        grades = [StudentGrade(s, [done[(s.id, lesson.number)] for lesson in chosen])
                  for s in students]
        for g in grades:
            _write_text(staging / "feedback" / f"{g.student.id}.md",
                        feedback_markdown(g, options))
        columns, rows = grades_table(grades, chosen)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _write_text(staging / "grades.csv", buffer.getvalue())
        grading._publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(hook_dir, ignore_errors=True)
        with _LIVE_LOCK:
            leftover = list(_IPC_DIRS)
            _IPC_DIRS.clear()
        for folder in leftover:
            shutil.rmtree(folder, ignore_errors=True)
        if not options.keep_temp:
            shutil.rmtree(temp_root, ignore_errors=True)
    return grades
