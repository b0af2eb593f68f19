"""Graded variants of the lessons: student releases per student (``assign``) and autograding
(``grade``, in :mod:`course_tools.grading.autograde`). CURRICULUM section 7, issue 8.

The lessons follow nbgrader's conventions (CONTRIBUTING.md): a cell tagged ``solution`` holds
the answer between ``### BEGIN SOLUTION`` / ``### END SOLUTION``; the next cell tagged
``tests`` starts with ``# points: N`` and may hold hidden tests between ``### BEGIN HIDDEN
TESTS`` / ``### END HIDDEN TESTS``; ``tools/nbclean.py`` derives the nbgrader cell metadata
(``grade_id`` ``exK_solution`` / ``exK_tests``, points, locked) from the tags. nbgrader's own
preprocessors do the work: ``ClearSolutions`` (the answer becomes ``# YOUR CODE HERE`` +
``raise NotImplementedError()``), ``ClearHiddenTests``, ``ClearOutput``, ``LockCells``,
``ComputeChecksums``, ``CheckCellMetadata``; papermill injects each student's parameters
after the ``parameters`` cell without executing anything (``prepare_only=True``).

A student release of lesson ``NN_name.ipynb`` for student ``ID`` is ``OUT/ID/NN_name.ipynb``.
The roster is a CSV file with a column ``id`` (it names the student's folder), ``name`` and
optionally one column per lesson parameter (``seed`` or ``SEED``, ``TRAIN_FRACTION``, ...;
names match the parameters cell case-insensitively; an empty value keeps the default).
``SEED`` is derived from the student id (:func:`student_seed`) unless the roster gives one.
"""

from __future__ import annotations

import ast
import copy
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib import paths
from course_tools import nbclean
from course_tools.runner import find_lessons

SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
PARAMETERS_ID, INJECTED_ID = "parameters", "injected_parameters"
INJECTED_CELL_ID = "injected-parameters"
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_COLUMNS = ("id", "name")
NOT_PER_STUDENT = ("PROFILE",)  # chosen when the notebook runs (COURSE_PROFILE), not per student
_NOT_LITERAL = object()


class GradingError(ValueError):
    """A problem the instructor must fix; the message is one line saying what to fix."""


class RosterError(GradingError):
    """The roster CSV is unusable (missing id column, duplicate ids, unknown parameter, ...)."""


class LessonFormatError(GradingError):
    """A lesson notebook does not follow the exercise conventions of CONTRIBUTING.md."""


@dataclass(frozen=True)
class Exercise:
    """One question: its answer cell, its tests cell and what the tests are worth."""

    number: int
    title: str
    solution_id: str
    tests_id: str
    points: float
    hidden_tests: bool

    @property
    def key(self) -> str:
        """Short name of the question, e.g. ``ex1`` (column names, feedback)."""
        return f"ex{self.number}"


@dataclass
class Lesson:
    """An instructor's lesson notebook with its nbgrader metadata set from the cell tags."""

    number: str
    path: Path
    nb: nbformat.NotebookNode
    parameters: dict = field(default_factory=dict)  # name -> (default value, source text)
    exercises: list = field(default_factory=list)

    @property
    def name(self) -> str:
        """The notebook's file name, e.g. ``00_setup_and_hardware.ipynb``."""
        return self.path.name

    def cell(self, grade_id: str):
        """The instructor's cell with nbgrader ``grade_id`` (None if there is none)."""
        return next((c for c in self.nb.cells if _grade_id(c) == grade_id), None)


@dataclass(frozen=True)
class Student:
    """One roster row: ``values`` are the non-empty parameter columns as typed per lesson."""

    id: str
    name: str
    row: int
    values: dict = field(default_factory=dict)  # lesson number -> {PARAMETER: value}


# --------------------------------------------------------------------------- lessons


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")



def _parse_parameters(source: str, where: str) -> dict:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise LessonFormatError(f"{where}: the parameters cell is not valid Python ({exc})") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            text = ast.get_source_segment(source, node.value) or ""
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = _NOT_LITERAL
            found[node.targets[0].id] = (value, text)
    return found


def _exercise_title(cells, index: int, number: int) -> str:
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            match = re.search(r"^#+\s*(Exercise\s+\d+.*)$", cell.source, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return f"Exercise {number}"


def load_lesson(path: str | os.PathLike) -> Lesson:
    """Read an instructor's lesson notebook and describe its parameters and exercises.

    The nbgrader metadata is derived from the ``solution``/``tests`` tags with
    ``tools/nbclean.py`` (in memory; the file is not changed), so a lesson that was not
    cleaned yet is graded by its tags.

    Raises:
        LessonFormatError: unreadable notebook, no ``parameters`` cell, an exercise that breaks
            the conventions (markers, ``# points: N``, a tests cell without a solution cell).
    """
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same message
        raise LessonFormatError(f"{path.name}: not a readable notebook ({exc})") from None
    try:
        nbclean.nbgrader_metadata(nb)
    except ValueError as exc:
        raise LessonFormatError(f"{path.name}: {exc}") from None
    params = next((c for c in nb.cells if c.cell_type == "code"
                   and "parameters" in c.metadata.get("tags", [])), None)
    if params is None:
        raise LessonFormatError(f"{path.name}: no code cell tagged 'parameters'")
    lesson = Lesson(number=path.name[:2], path=path, nb=nb,
                    parameters=_parse_parameters(params.source, path.name))
    solutions = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            solutions[meta["grade_id"]] = index
        elif meta.get("grade") and cell.cell_type == "code":
            tests_id = meta["grade_id"]
            number = int(re.sub(r"\D", "", tests_id) or len(lesson.exercises) + 1)
            solution_id = tests_id.replace("_tests", "_solution")
            if solution_id not in solutions:
                raise LessonFormatError(f"{path.name}: tests cell {tests_id} has no solution "
                                        f"cell {solution_id} before it")
            lesson.exercises.append(Exercise(
                number=number, title=_exercise_title(nb.cells, solutions[solution_id], number),
                solution_id=solution_id, tests_id=tests_id, points=float(meta["points"]),
                hidden_tests=HIDDEN_BEGIN in cell.source))
    return lesson


def load_lessons(notebooks_dir: str | os.PathLike = "notebooks", lessons=None) -> list[Lesson]:
    """The lessons ``NN_name.ipynb`` of ``notebooks_dir`` (all, or the numbers in ``lessons``).

    Raises:
        GradingError: the folder does not exist or holds no lesson; a lesson number that matches
            no notebook.
        LessonFormatError: see :func:`load_lesson`.
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise GradingError(f"lesson folder {folder} does not exist (use --notebooks)")
    try:
        paths = find_lessons(folder, lessons)
    except ValueError as exc:
        raise GradingError(str(exc)) from None
    if not paths:
        raise GradingError(f"no lesson notebooks NN_name.ipynb in {folder}")
    return [load_lesson(p) for p in paths]


# --------------------------------------------------------------------------- roster


def student_seed(student_id: str) -> int:
    """The default SEED of a student: a stable hash of the id, in ``[0, 2**31)``.

    The same id always gives the same seed (on any machine, in any Python), so a release can
    be rebuilt at grading time. Raises nothing.
    """
    digest = hashlib.sha256(f"course-seed:{student_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def _describe(value) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number",
            str: "text", list: "a list such as [64, 64]", tuple: "a tuple such as (1, 2)",
            dict: "a dict such as {'a': 1}"}.get(type(value), f"a {type(value).__name__}")


def _convert(raw: str, default):
    """Roster text -> value of the parameter's type; raises ValueError(expected type)."""
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(_describe(default))
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if isinstance(default, str):
            return raw
        raise ValueError("a Python literal such as 8, 0.5, [32, 16] or None"
                         if default is None else _describe(default)) from None
    if default is None:
        return value
    if isinstance(default, float) and isinstance(value, int | float) \
            and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        return value if isinstance(value, str) else raw
    if type(value) is not type(default):
        raise ValueError(_describe(default))
    return value


SEED_RANGE = (0, 2**32 - 1)  # what numpy, JAX (uint32 keys) and TensorFlow all accept
LARGEST = 10**9


def _check_range(name: str, value, default) -> None:
    """Raises ValueError(what the value must be) for a roster value out of range: ``SEED``
    in [0, 2**32 - 1]; a ``*FRACTION`` in (0, 1]; a number whose default is positive
    (non-negative) must be positive (non-negative) and at most 10**9 in size."""
    numbers = [v for v in (value if isinstance(value, list | tuple) else [value])
               if isinstance(v, int | float) and not isinstance(v, bool)]
    if name.upper() == "SEED":
        if not all(isinstance(v, int) and SEED_RANGE[0] <= v <= SEED_RANGE[1]
                   for v in numbers):
            raise ValueError(f"a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
        return
    if name.upper().endswith("FRACTION"):
        if not all(0 < v <= 1 for v in numbers):
            raise ValueError("a fraction in (0, 1]")
        return
    defaults = [v for v in (default if isinstance(default, list | tuple) else [default])
                if isinstance(v, int | float) and not isinstance(v, bool)]
    for v in numbers:
        if v != v or abs(v) > LARGEST:
            raise ValueError(f"a number no larger than {LARGEST:g}")
        if defaults and min(defaults) > 0 and v <= 0:
            raise ValueError("a positive number")
        if defaults and min(defaults) >= 0 and v < 0:
            raise ValueError("a number >= 0")


def course_parameters(notebooks_dir: str | os.PathLike) -> set[str]:
    """The parameter names of every lesson in ``notebooks_dir`` (lessons that cannot be read
    are skipped: this only serves to accept roster columns meant for other lessons). Raises
    nothing."""
    names = set()
    for path in find_lessons(notebooks_dir) if Path(notebooks_dir).is_dir() else []:
        try:
            nb = nbformat.read(path, as_version=4)
            cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
            names |= set(_parse_parameters(cell.source, path.name))
        except Exception:  # noqa: BLE001 - a lesson being written; its own command will say
            continue
    return names


def read_roster(path: str | os.PathLike, lessons: list[Lesson],
                other_parameters=()) -> list[Student]:
    """Read and check the roster against ``lessons``; return the students in file order.

    A parameter column must name a parameter of one of the lessons or of
    ``other_parameters`` (those of the course's other lessons: one roster serves every
    lesson); it is injected into the lessons that have that parameter. Its values are parsed
    as Python literals and must have the type of the parameter's default in each of
    ``lessons`` (an int where the default is a float is accepted).

    Raises:
        RosterError: missing file, no ``id`` column, empty or badly formed id, duplicate ids,
            a column that is no parameter of the lessons, a value of the wrong type, no rows.
            The message is one line naming the row/column to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise RosterError(f"roster {path} not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RosterError(f"roster {path}: cannot be read as a UTF-8 CSV file ({exc})") from None
    numbered = [(number, row) for number, row in enumerate(rows, 1)
                if any(v.strip() for v in row)]
    if not numbered:
        raise RosterError(f"roster {path} is empty; its first line must name the columns, "
                          "e.g. id,name,seed")
    header = [h.strip() for h in numbered[0][1]]
    lowered = [h.lower() for h in header]
    if "id" not in lowered:
        raise RosterError(f"roster {path.name} has no 'id' column (its columns: "
                          f"{', '.join(header) or 'none'}); the first line must name the "
                          "columns, e.g. id,name,seed")
    duplicate_columns = sorted({h for h in lowered if lowered.count(h) > 1})
    if duplicate_columns or "" in lowered:
        raise RosterError(f"roster {path.name}: column names must be unique and non-empty "
                          f"(check {', '.join(duplicate_columns) or 'the empty column name'})")
    by_name: dict = {}
    for lesson in lessons:
        for name in lesson.parameters:
            by_name.setdefault(name.lower(), name)
    for name in other_parameters:
        by_name.setdefault(name.lower(), name)
    columns = {}  # column index -> parameter name
    for index, column in enumerate(header):
        if column.lower() in RESERVED_COLUMNS:
            continue
        parameter = by_name.get(column.lower())
        if parameter is None:
            known = sorted(({p for lesson in lessons for p in lesson.parameters}
                            | set(other_parameters)) - {*NOT_PER_STUDENT})
            raise RosterError(
                f"roster {path.name}: column '{column}' is not a parameter of any lesson "
                f"(the parameters: {', '.join(known)}); rename or remove the column")
        if parameter in NOT_PER_STUDENT:
            raise RosterError(f"roster {path.name}: column '{column}' cannot be set per student "
                              "(the profile is chosen when the notebooks run); remove it")
        columns[index] = parameter
    id_index, name_index = lowered.index("id"), (lowered.index("name") if "name" in lowered
                                                 else None)
    students: list = []
    seen: dict = {}
    for number, row in numbered[1:]:
        if len(row) > len(header):
            raise RosterError(f"roster {path.name} line {number}: {len(row)} values for "
                              f"{len(header)} columns (a comma inside a value needs quotes)")
        row = [v.strip() for v in row] + [""] * (len(header) - len(row))
        student_id = row[id_index]
        if not STUDENT_ID.match(student_id):
            raise RosterError(
                f"roster {path.name} line {number}: id {student_id!r} must be 1-64 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit (it names the "
                "student's folder)")
        if student_id in seen:
            raise RosterError(f"roster {path.name}: id '{student_id}' appears on lines "
                              f"{seen[student_id]} and {number}; ids must be unique")
        seen[student_id] = number
        values = {}
        for lesson in lessons:
            typed = {}
            for index, parameter in columns.items():
                raw = row[index]
                if raw == "" or parameter not in lesson.parameters:
                    continue
                default, source = lesson.parameters[parameter]
                if default is _NOT_LITERAL:
                    raise RosterError(
                        f"roster {path.name}: column '{header[index]}' cannot be set per "
                        f"student: lesson {lesson.number}'s {parameter} = {source} is not a "
                        "plain value; remove the column")
                try:
                    typed[parameter] = _convert(raw, default)
                    _check_range(parameter, typed[parameter], default)
                except ValueError as exc:
                    raise RosterError(
                        f"roster {path.name} line {number} (id {student_id}): "
                        f"{header[index]}={raw!r} is not {exc} (lesson {lesson.number}'s "
                        f"{parameter} defaults to {source}); fix the value") from None
            values[lesson.number] = typed
        name = row[name_index] if name_index is not None else ""
        students.append(Student(id=student_id, name=name or student_id, row=number,
                                values=values))
    if not students:
        raise RosterError(f"roster {path.name} has a header but no students")
    return students


def student_parameters(student: Student, lesson: Lesson) -> dict:
    """The parameters injected into ``lesson`` for ``student``: the roster's values for that
    lesson, plus ``SEED`` from :func:`student_seed` when the lesson has a SEED and the roster
    gives none. Raises nothing."""
    values = dict(student.values.get(lesson.number, {}))
    if "SEED" in lesson.parameters and "SEED" not in values:
        values = {"SEED": student_seed(student.id), **values}
    return values


# --------------------------------------------------------------------------- releases


def _run(preprocessor, nb, where: str):
    try:
        nb, _ = preprocessor.preprocess(nb, {})
    except Exception as exc:  # nbgrader raises RuntimeError/ValidationError with the reason
        raise LessonFormatError(f"{where}: {type(preprocessor).__name__}: {exc}") from None
    return nb


def _lock_parameters_cell(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": PARAMETERS_ID,
                                         "locked": True, "schema_version": 3, "solution": False}
            return


def inject_parameters(nb, parameters: dict, *, lesson_name: str, student_id: str = ""):
    """Return a copy of ``nb`` with ``parameters`` injected by papermill (``prepare_only``:
    nothing is executed) in a locked cell right after the ``parameters`` cell.

    The parameters cell and the injected cell get nbgrader "read-only" metadata (grade ids
    ``parameters`` and ``injected_parameters``) so that nbgrader's ``LockCells`` locks them and
    the grader can find them. Raises nothing for a notebook that has a parameters cell.
    """
    import papermill

    nb = copy.deepcopy(nb)
    _lock_parameters_cell(nb)
    if parameters:
        logger = logging.getLogger("papermill")
        level = logger.level
        logger.setLevel(logging.ERROR)  # its info lines print the whole notebook
        try:
            nb = papermill.execute_notebook(nb, None, parameters=parameters, prepare_only=True,
                                            kernel_name="python3", language="python",
                                            progress_bar=False)
        finally:
            logger.setLevel(level)
    pm = nb.metadata.setdefault("papermill", {})
    # execute_notebook records its input (here the notebook object itself) and output
    pm["input_path"] = lesson_name
    pm["output_path"] = f"{student_id}/{lesson_name}" if student_id else lesson_name
    pm.pop("environment_variables", None)
    for cell in nb.cells:
        for key in ("tags", "papermill"):
            if key in cell.metadata and not cell.metadata[key]:
                del cell.metadata[key]
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = INJECTED_CELL_ID
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": INJECTED_ID,
                                         "locked": True, "schema_version": 3,
                                         "solution": False}
    return nb


def make_release(lesson: Lesson, parameters: dict, *, student_id: str = ""):
    """The student release of ``lesson`` with ``parameters`` injected (a new notebook).

    nbgrader's ClearSolutions / ClearHiddenTests / ClearOutput remove the answers (each solution
    region becomes ``# YOUR CODE HERE`` + ``raise NotImplementedError()``), the hidden tests and
    every output; then papermill injects the parameters; LockCells makes the tests and
    parameter cells read-only in Jupyter; ComputeChecksums records nbgrader checksums.

    Raises:
        LessonFormatError: a solution or hidden-test region outside a solution/tests cell,
            unbalanced markers, invalid nbgrader metadata (duplicate grade ids).
    """
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearOutput,
        ClearSolutions,
        ComputeChecksums,
        LockCells,
    )

    where = lesson.name
    nb = copy.deepcopy(lesson.nb)
    for step in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        nb = _run(step, nb, where)
    nbclean.set_badge_line(nb, lesson.name, edition="student")  # never the instructor copy
    nb = inject_parameters(nb, parameters, lesson_name=lesson.name, student_id=student_id)
    for step in (LockCells(), ComputeChecksums(), CheckCellMetadata()):
        nb = _run(step, nb, where)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
    return nb


def _regions(source: str, begin: str, end: str):
    """(inside, outside) lines of ``source`` for the regions between begin/end marker lines."""
    inside: list = []
    outside: list = []
    active = False
    for line in source.splitlines():
        if begin in line:
            active = True
        elif end in line:
            active = False
        else:
            (inside if active else outside).append(line)
    return inside, outside


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _strings(value)


def _matches(line: str, lines: set, texts: list) -> bool:
    return line in lines or (len(line) >= 16 and any(line in text for text in texts))


def secret_lines(lesson: Lesson) -> list[str]:
    """The lines a student must never see: those inside solution and hidden-test regions,
    stripped, except lines with no letter or digit and lines that also appear in the public
    part of the lesson (a solution line identical to a line of the lesson's own code is not a
    secret). Raises nothing."""
    secret, public = [], []
    for cell in lesson.nb.cells:
        inside_s, outside = _regions(cell.source, "BEGIN SOLUTION", "END SOLUTION")
        inside_h, outside = _regions("\n".join(outside), "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
        secret += inside_s + inside_h
        public += outside
    public_lines = {line.strip() for line in public}
    public_text = ["\n".join(public)]
    found = []
    for line in (s.strip() for s in secret):
        if re.search(r"[A-Za-z0-9]", line) and not _matches(line, public_lines, public_text) \
                and line not in found:
            found.append(line)
    return found


def find_leaks(lesson: Lesson, nb) -> list[str]:
    """What of the lesson's solutions and hidden tests appears in ``nb`` (a student release,
    as a NotebookNode/dict or as the notebook file's text): marker lines left behind and
    secret lines (:func:`secret_lines`) found in any string of the notebook (sources,
    outputs, metadata). An empty list means no leak. Raises nothing."""
    if isinstance(nb, str):
        nb = json.loads(nb)
    texts = list(_strings(nb))
    lines = {line.strip() for text in texts for line in text.splitlines()}
    leaks = [f"marker '{m}'" for m in MARKERS if any(m in text for text in texts)]
    leaks += [f"line {line!r}" for line in secret_lines(lesson) if _matches(line, lines, texts)]
    return leaks


_write_atomic = paths.write_text_atomic


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GradingError(f"{out} already exists and is not empty; choose a new folder or "
                           "remove it")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out`` in one rename."""
    staging.chmod(0o755)  # mkdtemp made it private
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    os.rename(staging, out)


def assign(roster: str | os.PathLike, out: str | os.PathLike, *,
           notebooks_dir: str | os.PathLike = "notebooks", lessons=None) -> list[Path]:
    """Write the student release of each lesson for each student: ``out/ID/NN_name.ipynb``.

    Everything is written into a temporary sibling folder first and renamed to ``out`` only
    when every release is complete and passed :func:`find_leaks`, so a bad roster or lesson
    leaves nothing behind. ``out/assignment.json`` records the lessons' checksums and each
    student's parameters (keep it; do not hand it out with the student folders).

    Returns the paths of the notebooks written.

    Raises:
        RosterError: see :func:`read_roster`.
        LessonFormatError: see :func:`load_lesson`, :func:`make_release`.
        GradingError: ``out`` exists and is not empty; a release would leak solution text.
    """
    out = Path(out)
    chosen = load_lessons(notebooks_dir, lessons)
    students = read_roster(roster, chosen, course_parameters(notebooks_dir))
    _check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    manifest: dict = {"lessons": {}, "students": {}}
    try:
        for lesson in chosen:
            manifest["lessons"][lesson.number] = {
                "file": lesson.name,
                "sha256": hashlib.sha256(lesson.path.read_bytes()).hexdigest(),
                "questions": {e.key: e.points for e in lesson.exercises}}
        written = []
        for student in students:
            manifest["students"][student.id] = {"name": student.name, "parameters": {}}
            for lesson in chosen:
                parameters = student_parameters(student, lesson)
                nb = make_release(lesson, parameters, student_id=student.id)
                text = nbformat.writes(nb) + "\n"
                leaks = find_leaks(lesson, text)
                if leaks:
                    raise GradingError(f"{lesson.name}: the release for {student.id} would "
                                       f"contain {leaks[0]}; check the solution/hidden-test "
                                       "markers")
                _write_atomic(staging / student.id / lesson.name, text)
                manifest["students"][student.id]["parameters"][lesson.number] = parameters
                written.append(out / student.id / lesson.name)
        _write_atomic(staging / "assignment.json", json.dumps(manifest, indent=1) + "\n")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written
