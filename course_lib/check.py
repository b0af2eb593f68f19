"""Instant feedback on an exercise's public checks, in the student edition's tests cells.

The student edition (``python -m course_tools student``, ``student/NN_*.ipynb``) runs each
exercise's public checks inside :func:`question`::

    from course_lib import check

    with check.question("Exercise 1: count accelerators", hidden_tests=True):
        assert count_accelerators([]) == 0
        ...

and the cell prints one verdict for the question: the first check that failed, the line it is
on and why (the assertion's message or the exception, the values of the names it reads), or
``public checks passed; more checks run when your work is graded`` where the instructor's copy
holds hidden tests (never "all tests passed" then). A failed check is reported, not raised, so
that "Run all" goes on to the rest of the lesson. The checks are the lesson's own asserts, in
the notebook where the student reads them; this module only reports. Standard library only
(it runs on Colab before anything else is installed, offline, and with the parameters
``assign`` injects: the checks read the notebook's own variables).

Idea from otter-grader's per-question ``grader.check("q1")``; the conventions (answer cells,
public and hidden tests) are nbgrader's (CONTRIBUTING.md).
"""

from __future__ import annotations

import ast
import linecache
import sys
import textwrap
import types

#: What a question whose public checks passed reports when the instructor holds more checks.
PASSED_MORE_TO_COME = "public checks passed; more checks run when your work is graded"
#: What it reports when the public checks are all the checks there are.
PASSED_ALL = "its checks passed (this exercise has no other checks)"
#: What a question whose answer is still the stub reports.
NOT_ANSWERED = ("not answered yet: the answer cell still raises NotImplementedError. Replace "
                "'# YOUR CODE HERE' and 'raise NotImplementedError()' with your answer, run "
                "that cell, then this one")

_MAX_VALUE = 120  # characters of a value's repr shown in "where ..."
_MAX_REASON = 1500  # characters of an exception's message shown


class Question:
    """The context manager :func:`question` returns; after the block, ``passed`` (bool) and
    ``reason`` (str, empty when passed) say what happened, and ``report`` is the text printed.
    """

    def __init__(self, title: str, *, hidden_tests: bool, points: float | None = None,
                 stream=None):
        if not isinstance(title, str) or not title.strip():
            raise ValueError("check.question needs the exercise's title, e.g. 'Exercise 1'")
        self.title = title.strip()
        self.hidden_tests = bool(hidden_tests)
        self.points = points
        self.stream = stream
        self.passed: bool | None = None
        self.reason = ""
        self.report = ""
        self.earned: float | None = None

    def score(self, earned) -> float:
        """Record the points the public checks gave (a tests cell for partial credit ends
        with the points earned, nbgrader's convention) and return them as a float. Raises
        ValueError for a value that is not a number."""
        try:
            self.earned = float(earned)
        except (TypeError, ValueError):
            raise ValueError(f"the tests cell's points must be a number, got {earned!r}") from None
        return self.earned

    def __enter__(self) -> Question:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            partial = (self.earned is not None and self.points is not None
                       and self.earned < self.points)
            self.passed = not partial
            if partial:
                self.reason = f"the public checks gave {self.earned:g} of {self.points:g} points"
                self.report = f"{self.title}: a public check FAILED\n    why: {self.reason}"
            else:
                self.report = f"{self.title}: " + (PASSED_MORE_TO_COME if self.hidden_tests
                                                   else PASSED_ALL)
            self._print()
            return False
        if not issubclass(exc_type, Exception):  # KeyboardInterrupt, SystemExit: not ours
            return False
        self.passed = False
        self.reason, details = explain(exc, tb)
        why = self.reason.replace("\n", "\n        ")
        lines = [f"{self.title}: a public check FAILED", *(f"    {d}" for d in details),
                 f"    why: {why}"]
        if self.hidden_tests:
            lines.append("    (when it passes, more checks run when your work is graded)")
        self.report = "\n".join(lines)
        self._print()
        return True  # reported, not raised: the rest of the lesson still runs

    def _print(self) -> None:
        print(self.report, file=self.stream or sys.stdout, flush=True)


def question(title: str, *, hidden_tests: bool, points: float | None = None,
             stream=None) -> Question:
    """Run one exercise's public checks in a ``with`` block and print a verdict.

    Args:
        title: the exercise, as its heading names it, e.g. ``"Exercise 1: count accelerators"``.
        hidden_tests: True when the instructor's copy holds hidden tests for this exercise
            (the verdict then never says that all checks passed).
        points: what the exercise is worth; with :meth:`Question.score` (partial credit) a
            score below it is reported as a failed check.
        stream: where the verdict goes (default: ``sys.stdout`` at the time of printing).

    Returns a :class:`Question`. An ``Exception`` raised in the block is caught and reported
    (the first failing check; the block stops there); ``KeyboardInterrupt`` and
    ``SystemExit`` go through. Raises ValueError for an empty title.
    """
    return Question(title, hidden_tests=hidden_tests, points=points, stream=stream)


# --------------------------------------------------------------------------- explaining


def explain(exc: BaseException, tb: types.TracebackType | None) -> tuple[str, list[str]]:
    """``(reason, details)`` for an exception raised by a check: the reason in one line, and
    the lines that locate it (the check's statement and line in the cell, where in the
    student's own code it was raised, the values of the names a failed assert reads).
    Raises nothing."""
    details: list[str] = []
    check_frame, line = (tb.tb_frame, tb.tb_lineno) if tb is not None else (None, None)
    statement = (_statement(check_frame, line)
                 if check_frame is not None and line is not None else None)
    if statement is not None:
        text, node = statement
        shown = text if text.count("\n") < 6 else "\n".join(text.splitlines()[:6] + ["..."])
        details.append(f"the check (line {line} of this cell): "
                       + shown.replace("\n", "\n" + " " * 8))
    elif line is not None:
        details.append(f"the check: line {line} of this cell")
    inner = _innermost_notebook_frame(tb)
    if inner is not None and inner[0] is not check_frame:
        frame, inner_line = inner
        code = linecache.getline(frame.f_code.co_filename, inner_line).strip()
        details.append(f"raised in {frame.f_code.co_name}(), line {inner_line} of its cell"
                       + (f": {code}" if code else ""))
    message = str(exc).strip()
    if len(message) > _MAX_REASON:
        message = message[:_MAX_REASON] + " ..."
    if isinstance(exc, NotImplementedError):
        return NOT_ANSWERED, details
    if "NotImplementedError" in message:  # the stub, run in a worker process
        details.append(f"{type(exc).__name__}: " + message.replace("\n", "\n" + " " * 8))
        return NOT_ANSWERED, details
    if isinstance(exc, AssertionError):
        reason = message or "the condition is false"
        if statement is not None and isinstance(statement[1], ast.Assert):
            where = _values(statement[1], check_frame)
            if where:
                details.append("where " + ", ".join(where))
        return reason, details
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, NameError):
        reason += (" (answer the exercise in its cell above and run that cell: it must "
                   "define the names the exercise asks for)")
    return reason, details


def _source(frame: types.FrameType) -> str:
    """The source of the cell or file ``frame`` runs (IPython registers each cell's source with
    linecache), or ``""``."""
    return "".join(linecache.getlines(frame.f_code.co_filename))


def _statement(frame: types.FrameType, line: int) -> tuple[str, ast.stmt] | None:
    """The innermost statement of ``frame``'s source that contains ``line``, as
    ``(source text, node)``; None when the source is not available."""
    source = _source(frame)
    if not source:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:  # e.g. a cell with IPython magics: show the line alone
        text = linecache.getline(frame.f_code.co_filename, line).strip()
        return (text, ast.Pass()) if text else None
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= line <= (node.end_lineno or node.lineno):
            span = (node.end_lineno or node.lineno) - node.lineno
            if best is None or span < best[0] or (span == best[0] and node.lineno >= best[1].lineno):
                best = (span, node)
    if best is None:
        return None
    text = ast.get_source_segment(source, best[1]) or ""
    return textwrap.dedent(text).strip(), best[1]


def _innermost_notebook_frame(tb) -> tuple[types.FrameType, int] | None:
    """The last traceback frame whose code belongs to the notebook (its globals are the
    notebook's ``__main__``): where in the student's own code the exception came from."""
    found = None
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == "__main__":
            found = (tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _values(node: ast.Assert, frame: types.FrameType | None) -> list[str]:
    """``name = value`` for the plain variables a failed assert reads (no calls are made:
    values are looked up, never recomputed); modules, functions and classes are left out."""
    if frame is None:
        return []
    shown, seen = [], set()
    for sub in ast.walk(node.test):
        if not isinstance(sub, ast.Name) or sub.id in seen:
            continue
        seen.add(sub.id)
        if sub.id in frame.f_locals:
            value = frame.f_locals[sub.id]
        elif sub.id in frame.f_globals:
            value = frame.f_globals[sub.id]
        else:
            continue
        if isinstance(value, types.ModuleType | types.FunctionType | types.BuiltinFunctionType
                      | types.MethodType | type):
            continue
        try:
            text = " ".join(repr(value).split())
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the verdict
            text = f"<{type(value).__name__}>"
        if len(text) > _MAX_VALUE:
            text = text[:_MAX_VALUE] + " ..."
        shown.append(f"{sub.id} = {text}")
    return shown
