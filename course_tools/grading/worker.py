"""Execute one gradeable notebook in a fresh kernel; run as a subprocess by
:mod:`course_tools.grading.autograde`.

    python -m course_tools.grading.worker JOB_DIR

``JOB_DIR`` holds ``job.json`` (written by the grader: the working folder, the time limits,
the kernel's environment, the sandboxed kernel command of :mod:`course_tools.grading.sandbox`
or null, the names each answer cell may assign) and ``input.ipynb``. The notebook is executed
with nbgrader's ``Execute`` preprocessor (errors do not stop the run; a cell over its time
limit is interrupted and gets a ``CellTimeoutError`` output). After every cell the executed
notebook is saved to ``JOB_DIR/executed.ipynb`` and the progress to ``JOB_DIR/status.json``,
so that when the grader kills this process at the notebook's time limit, the cells that did
run are still graded. This process runs outside the sandbox: the kernel can neither see nor
write ``JOB_DIR`` (only its working folder and its socket folder), nor signal this process.

Tests cells (issue 16): before the first cell the grader's probe
(:mod:`course_tools.grading.kernel_probe`) is loaded into the kernel; before each answer cell
it records what the tests rely on; before each tests cell it checks and resets the IPython
hooks, built-ins and watched modules (signed reply); the tests cell runs without entering
IPython's history, wrapped so that its last statement reports, signed, that it ran to its end;
afterwards its source is removed from the kernel's caches. The findings go to the tests
cell's ``metadata["grading"]``: ``checked`` (the signed check before the tests answered),
``completed`` (the signed end-of-cell report arrived), ``tampering``, ``notes``.

The trusted check (issue 16, :mod:`course_tools.grading.observe`): ``job.json``'s ``plans``
(:func:`course_tools.grading.autograde.exercise_plan`) name what each tests cell reads of
the answer. In a student job (``mode`` ``student``) the kernel exports, before the first
answer cell (only the lesson's code has run), the inputs of every question, and around each
tests cell records the calls of the answer's functions and exports the observed values; each
export is copied at once, size-capped, to ``JOB_DIR/observations``. In a trusted job (``mode``
``trusted``, the instructor's lesson, those files in ``work/observed``) no probe is loaded and
no student code exists; each tests cell runs once on the reference (to decide whether it is
replayable) and once on the student's values and replayed calls: the verdict, with the
findings in the tests cell's ``metadata["trusted_check"]`` (``replayable``, ``why``,
``verdict``: ``ran``/``refused``, ``reason``). Cells after the last tests cell to decide
(``job.json``'s ``decide``: those that ran in the student's kernel) or with observations are
not run.

``status.json``: ``{"state": "running"|"completed"|"kernel_died"|"stuck"|"error",
"cell": index of the cell running or last run, "kernel_pid": ..., "message": ...,
"restarts": [indices of the cells after which the kernel was restarted],
"kernel_retried": why the first kernel died before its first reply (it is started once
more: no student code had run yet), if it did}``.
"""

from __future__ import annotations

import ast
import builtins
import copy
import hmac
import json
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat

from course_lib.paths import write_text_atomic as _write_atomic

PROBE_SOURCE = Path(__file__).with_name("kernel_probe.py")
OBSERVE_SOURCE = Path(__file__).with_name("observe.py")
OBSERVATIONS = "observations"  # the kernel's folder for them, in its working folder
BEFORE = "_before"  # the inputs exported before any student code ran
OBSERVED = "observed"  # the trusted kernel's folder of the student's observations
TRUSTED_TOKEN = "COURSE-TRUSTED "
TOKEN = "COURSE-GRADER "
KEY_LINE = re.compile(r"^COURSE-GRADER-KEY ([0-9a-f]{64})$", re.MULTILINE)
EXERCISE_CELL = re.compile(r"^ex\d+_(solution|tests)$")
KERNEL_NAME = "course-grading"
BUILTIN_NAMES = frozenset(dir(builtins))
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def names_used(source: str) -> list[str]:
    """The built-in names (``format``, ``int``...) that ``source`` (a tests cell, hidden
    tests included) refers to: its ``ast.Name`` nodes, or every identifier when Python cannot
    parse it (IPython magics). Only built-in names, so nothing else of the hidden tests
    reaches the kernel. Raises nothing."""
    try:
        found = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    except (SyntaxError, ValueError):
        found = set(IDENTIFIER.findall(source))
    return sorted(found & BUILTIN_NAMES)


def _trees(cells):
    """The parsed source of each of ``cells`` that parses (the others are skipped)."""
    for cell in cells:
        try:
            yield ast.parse(cell.source)
        except (SyntaxError, ValueError):
            continue


def names_in_functions(cells) -> list[str]:
    """The built-in names used inside the functions and lambdas that ``cells`` (the lesson's
    own code cells) define: a tests cell that calls such a function uses them too, through
    the notebook's globals, where an answer's shadowing name would be found first. Raises
    nothing."""
    found: set = set()
    for tree in _trees(cells):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                found.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    return sorted(found & BUILTIN_NAMES)


def assigned_names(cells) -> list[str]:
    """The top-level names that ``cells`` (the lesson's own code cells) assign, define or
    import; unparsable cells are skipped. Raises nothing."""
    names: set = set()
    for tree in _trees(cells):
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
    return sorted(names)


def wrap_tests(source: str, challenge: str) -> str:
    """``source`` with a call ``__course_grader__("done", challenge)`` as its last statement;
    when the cell ends with an expression (a partial-credit value) the call wraps it and
    returns its value, so the cell's result is unchanged. Line numbers are kept. Raises
    nothing (a cell Python cannot parse gets the call appended)."""
    call = f"__course_grader__('done', {challenge!r}"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None and tree.body and isinstance(tree.body[-1], ast.Expr):
        node = tree.body[-1]
        lines = source.splitlines(keepends=True)

        def offset(line: int, col: int) -> int:
            before = sum(len(x) for x in lines[: line - 1])
            return before + len(lines[line - 1].encode()[:col].decode(errors="replace"))

        start = offset(node.lineno, node.col_offset)
        end = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        return f"{source[:start]}{call}, ({source[start:end]})){source[end:]}"
    return source.rstrip("\n") + f"\n{call})\n"


def run(job_dir: Path) -> int:
    """Execute ``job_dir/input.ipynb`` as described in the module docstring.

    Returns 0 when every cell was run (with or without errors), 1 when the run stopped early
    (dead kernel, a cell that could not be interrupted twice, another failure); the reason is
    in ``status.json``. Raises nothing for problems in the notebook.
    """
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbgrader.preprocessors import Execute, LimitOutput

    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    executed_path, status_path = job_dir / "executed.ipynb", job_dir / "status.json"
    status: dict = {"state": "starting", "cell": None, "kernel_pid": None, "message": "",
                    "restarts": []}
    keep_names = job.get("keep", {})

    def save(nb=None) -> None:
        if nb is not None:
            _write_atomic(executed_path, nbformat.writes(nb))
        _write_atomic(status_path, json.dumps(status))

    def grade_id(cell) -> str:
        return cell.metadata.get("nbgrader", {}).get("grade_id") or ""

    class GradingExecute(Execute):
        """nbgrader's Execute, saving the notebook and the progress around every cell and
        running the tests cells through the probe."""

        key: bytes | None = None
        booted = False
        snapshot_taken = False
        stuck: set = set()

        def _export(self, index: int, stem: str, names) -> None:
            """Ask the kernel to write its observations ``stem`` (:mod:`.observe`) and copy
            them at once, size-capped, out of its reach into ``JOB_DIR/observations``."""
            self._probe(index, "export", f"{OBSERVATIONS}/{stem}", list(names))
            _copy_observation(Path(job["cwd"]) / OBSERVATIONS / stem,
                              job_dir / OBSERVATIONS / stem)

        def on_cell_execute(self, **kwargs):
            provisioner = getattr(self.km, "provisioner", None)
            status["kernel_pid"] = getattr(provisioner, "pid", None)
            status.update(state="running", cell=kwargs["cell_index"])
            save()

        def on_cell_executed(self, **kwargs):
            super().on_cell_executed(**kwargs)
            limiter.preprocess_cell(kwargs["cell"], {}, kwargs["cell_index"])
            save(self.nb)

        def _request(self, source: str, index: int):
            cell = nbformat.v4.new_code_cell(source)
            cell.metadata["grading_probe"] = True
            original = self.nb.cells[index]
            try:
                self.execute_cell(cell, index, store_history=False)
            finally:
                self.nb.cells[index] = original  # nbclient stores the executed cell there
            return cell

        def _signed(self, cell, challenge: str):
            """The verified payload of the probe's reply in ``cell``'s output, else None."""
            found = None
            for output in cell.get("outputs", []):
                if output.get("output_type") != "stream" or output.get("name") != "stdout":
                    continue
                kept = []
                for line in output.get("text", "").splitlines(keepends=True):
                    if not line.startswith(TOKEN):
                        kept.append(line)
                        continue
                    mac, _, text = line[len(TOKEN):].rstrip("\n").partition(" ")
                    if self.key is not None and found is None and hmac.compare_digest(
                            mac, hmac.new(self.key, (challenge + text).encode(),
                                          "sha256").hexdigest()):
                        try:
                            found = json.loads(text)
                        except ValueError:
                            found = None
                output["text"] = "".join(kept)
            cell.outputs = [o for o in cell.get("outputs", []) if not (
                o.get("output_type") == "stream" and not o.get("text"))]
            return found

        def _probe(self, index: int, command: str, *args):
            challenge = secrets.token_hex(16)
            call = ", ".join(repr(a) for a in (command, challenge, *args))
            cell = self._request(f"__course_grader__({call})", index)
            return self._signed(cell, challenge)

        def _boot(self, index: int) -> None:
            self.booted = True
            # the probe's functions get globals of their own and a copy of the built-ins
            # taken now, so names an answer defines or patches later never reach them
            source = (
                "def _course_grader_load(source, observe):\n"
                "    import builtins\n"
                "    tools = {'__builtins__': dict(vars(builtins)), '__name__': 'course_observe'}\n"
                "    exec(compile(observe, '<course-observe>', 'exec'), tools)\n"
                "    space = {'__builtins__': dict(vars(builtins)), '__name__': 'course_grader',\n"
                "             '_course_observe': tools}\n"
                "    exec(compile(source, '<course-grader>', 'exec'), space)\n"
                "    return space['_course_grader_boot']()\n"
                f"__course_grader__ = _course_grader_load({PROBE_SOURCE.read_text('utf-8')!r}, "
                f"{OBSERVE_SOURCE.read_text('utf-8')!r})\n"
                "del _course_grader_load\n")
            cell = self._request(source, index)
            text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                           if o.get("output_type") == "stream")
            match = KEY_LINE.search(text)
            self.key = bytes.fromhex(match.group(1)) if match else None
            status["probe_loaded"] = self.key is not None  # before any student code ran

        async def _ping(self, seconds: float) -> bool:
            """Whether the kernel answers a kernel_info request within ``seconds``."""
            msg_id = self.kc.kernel_info()
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await self.kc.shell_channel.get_msg(timeout=left)
                except Empty:
                    return False
                if msg.get("parent_header", {}).get("msg_id") == msg_id:
                    return True
            return False

        def _restart_and_replay(self, index: int, resources) -> None:
            """Restart the stuck kernel and run the cells before ``index`` again (those that
            never finished excepted), so that the questions after it are graded."""
            self.stuck.add(index)
            status["restarts"].append(index)
            run_sync(self.km.restart_kernel)(now=True)
            run_sync(self.kc.wait_for_ready)(timeout=job.get("startup_timeout", 120))
            self.booted, self.key = False, None
            for earlier in range(index):
                original = self.nb.cells[earlier]
                if original.cell_type != "code" or earlier in self.stuck:
                    continue
                try:
                    self.preprocess_cell(copy.deepcopy(original), resources, earlier,
                                         replay=True)
                finally:
                    self.nb.cells[earlier] = original

        def preprocess_cell(self, cell, resources, index, replay=False):
            try:
                cell, resources = self._run_cell(cell, resources, index)
                stuck = cell.cell_type == "code" and any(
                    o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])) \
                    and not run_sync(self._ping)(10)
            except CellTimeoutError:
                if replay:
                    raise
                stuck = True
                cell.outputs = list(cell.get("outputs", [])) + [nbformat.v4.new_output(
                    "error", ename="CellTimeoutError", evalue="the cell went over its time "
                    "limit and could not be interrupted", traceback=[])]
            if stuck and not replay:
                if len(self.stuck) >= 3:
                    raise CellTimeoutError("three cells could not be interrupted")
                self._restart_and_replay(index, resources)
                self.nb.cells[index] = cell
                cell.outputs.append(nbformat.v4.new_output(
                    "stream", name="stderr", text="[grader] this cell could not be "
                    "interrupted: the kernel was restarted and the cells before it run "
                    "again\n"))
                save(self.nb)
            return cell, resources

        def _run_cell(self, cell, resources, index):
            self._check_assign_resources(resources)
            if not self.booted:
                self._boot(index)
            gid = grade_id(cell)
            if cell.cell_type == "code" and gid.endswith("_solution") and self.key:
                if not self.snapshot_taken and snapshot_names:
                    # before any student code: these values are the lesson's own
                    self.snapshot_taken = True
                    self._export(index, BEFORE, snapshot_names)
                self._probe(index, "before_answer", keep_names.get(gid, []), lesson_names)
            if cell.cell_type != "code" or not gid.endswith("_tests") or not cell.source.strip():
                return self.execute_cell(cell, index, store_history=True), self.resources
            used = sorted(set(names_used(cell.source)) | set(lesson_builtins))
            check = self._probe(index, "before_tests", used) if self.key else None
            plan = plans.get(gid) or {}
            if self.key and plan.get("observed"):
                self._probe(index, "record", plan["observed"])
            challenge = secrets.token_hex(16)
            wrapped = nbformat.v4.new_code_cell(wrap_tests(cell.source, challenge))
            wrapped.metadata = cell.metadata
            try:
                self.execute_cell(wrapped, index, store_history=False)
            finally:
                self.nb.cells[index] = cell
                done = self._signed(wrapped, challenge)
                cell.outputs = wrapped.outputs
                cell.execution_count = wrapped.get("execution_count")
                cell.metadata["grading"] = {
                    "checked": check is not None,
                    "completed": bool(done and done.get("done")),
                    "tampering": [str(t)[:200] for t in (check or {}).get("tampering", [])],
                    "notes": [str(n)[:300] for n in (check or {}).get("notes", [])]}
                save(self.nb)
            after = self._probe(index, "after_tests") if self.key else None
            if self.key and plan.get("observed"):
                self._export(index, gid, plan["observed"] + plan.get("inputs", []))
            proof = cell.metadata["grading"]
            during = [f"{t} while the tests ran" for t in (after or {}).get("tampering", [])]
            proof["notes"] += [str(n)[:300] for n in (after or {}).get("notes", [])]
            if after is None or during:
                proof["completed"] = False  # the tests may have run disarmed
                proof["tampering"] += [str(t)[:200] for t in during]
            save(self.nb)
            return cell, self.resources

    class TrustedExecute(GradingExecute):
        """The trusted check: runs the instructor's lesson (no student code), and before each
        tests cell with observed names (``plans``) runs the tests once on the reference to
        find whether the question is replayable, then again with the student's values and
        replayed calls bound (:mod:`course_tools.grading.observe`): that run's outcome is the
        verdict. Findings in the tests cell's ``metadata["trusted_check"]``."""

        def _boot(self, index: int) -> None:
            self.booted = True
            self._request(
                "def _course_trusted_load(source):\n"
                "    space = {'__name__': 'course_observe'}\n"
                "    exec(compile(source, '<course-observe>', 'exec'), space)\n"
                "    return space\n"
                f"__course_trusted__ = _course_trusted_load("
                f"{OBSERVE_SOURCE.read_text('utf-8')!r})\n"
                "del _course_trusted_load\n", index)
            status["probe_loaded"] = True

        def _ask(self, index: int, command: str, *args) -> dict | None:
            call = ", ".join(["get_ipython().user_ns", *(repr(a) for a in args)])
            cell = self._request(f"__course_trusted__[{command!r}]({call})", index)
            for output in cell.get("outputs", []):
                for line in str(output.get("text", "")).splitlines():
                    if line.startswith(TRUSTED_TOKEN):
                        try:
                            return json.loads(line[len(TRUSTED_TOKEN):])
                        except ValueError:
                            return None
            return None

        def preprocess_cell(self, cell, resources, index, replay=False):
            # instructor code only: a cell that cannot be interrupted is the grader's problem
            return self._run_cell(cell, resources, index)

        def _run_cell(self, cell, resources, index):
            self._check_assign_resources(resources)
            if index > last_tests:
                return cell, self.resources  # nothing after the last tests is needed
            if not self.booted:
                self._boot(index)
            gid = grade_id(cell)
            if cell.cell_type != "code" or not gid.endswith("_tests") or not cell.source.strip():
                return self.execute_cell(cell, index, store_history=True), self.resources
            plan = plans.get(gid) or {}
            observed, inputs = list(plan.get("observed", [])), list(plan.get("inputs", []))
            info = {"replayable": False, "why": "", "verdict": None, "reason": ""}
            if not observed:
                info["why"] = "its tests read no name that the answer binds"
                self.execute_cell(cell, index, store_history=False)
                cell.metadata["trusted_check"] = info
                return cell, self.resources
            self._ask(index, "reference_begin", observed)
            reference = self._request(cell.source, index)
            reply = self._ask(index, "reference_end", observed, inputs)
            if any(o.get("output_type") == "error" for o in reference.get("outputs", [])):
                info["why"] = "the reference answer failed its own tests in the trusted kernel"
            elif reply is None:
                info["why"] = "the reference could not be checked"
            elif not reply.get("replayable"):
                info["why"] = str(reply.get("why", ""))[:300]
            if info["why"]:
                cell.outputs = reference.get("outputs", [])
                cell.metadata["trusted_check"] = info
                save(self.nb)
                return cell, self.resources
            info["replayable"] = True
            folder = Path(job["cwd"]) / OBSERVED
            before = folder / BEFORE
            answer = self._ask(index, "replay_begin", str(folder / gid),
                               str(before) if Path(f"{before}.json").exists() else None,
                               observed, inputs)
            if answer is not None and answer.get("ok"):
                self.execute_cell(cell, index, store_history=False)
                info["verdict"] = "ran"
            else:
                info["verdict"] = "refused"
                info["reason"] = str((answer or {}).get("why") or "the trusted check could "
                                     "not bind your notebook's values")[:300]
                cell.outputs = []
            self._ask(index, "replay_end")
            self.nb.cells[index] = cell
            cell.metadata["trusted_check"] = info
            save(self.nb)
            return cell, self.resources

    nb = nbformat.read(job_dir / "input.ipynb", as_version=4)
    trusted_mode = job.get("mode") == "trusted"
    if trusted_mode:  # up to the last tests to decide or with observations, whichever is later
        observed_dir = Path(job["cwd"]) / OBSERVED
        decide = set(job.get("decide") or [])
        last_tests = max((i for i, c in enumerate(nb.cells) if grade_id(c).endswith("_tests")
                          and (grade_id(c) in decide
                               or (observed_dir / f"{grade_id(c)}.json").exists())),
                         default=-1)
    else:
        last_tests = len(nb.cells)
    lesson_cells = [c for c in nb.cells
                    if c.cell_type == "code" and not EXERCISE_CELL.match(grade_id(c))]
    lesson_names = assigned_names(lesson_cells)
    plans = job.get("plans") or {}
    snapshot_names = sorted({n for p in plans.values() for n in p.get("inputs", [])})
    lesson_builtins = names_in_functions(lesson_cells)
    limiter = LimitOutput(max_lines=job.get("max_output_lines", 1000), max_traceback=100)
    # The kernel inherits this process's environment: the grader's choice, nothing else.
    os.environ.clear()
    os.environ.update(job["env"])
    ipc = Path(job["ipc_dir"])
    spec_dir = job_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = job.get("kernel_argv") or [sys.executable, "-m", "ipykernel_launcher", "-f",
                                      "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": "Python 3 (graded)", "language": "python",
        "interrupt_mode": "message", "metadata": {"debugger": False}}), encoding="utf-8")

    def timeout_for(cell) -> int:
        if trusted_mode:  # the instructor's code only
            return job.get("lesson_cell_timeout") or job["cell_timeout"]
        if EXERCISE_CELL.match(grade_id(cell)) or cell.metadata.get("grading_probe"):
            return job["cell_timeout"]
        return job.get("lesson_cell_timeout") or job["cell_timeout"]

    kernel_uid = job.get("kernel_uid")

    class SandboxKernelManager(AsyncKernelManager):
        """Hands the connection file to the sandbox's user (jupyter_client writes it 0600)."""

        def write_connection_file(self, **kwargs):
            result = super().write_connection_file(**kwargs)
            if kernel_uid is not None:
                os.chown(self.connection_file, kernel_uid, kernel_uid)
            return result

    def new_kernel_manager():
        return SandboxKernelManager(
            kernel_name=KERNEL_NAME, transport="ipc",
            connection_file=str(ipc / "kernel.json"),
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))

    def new_executor():
        return (TrustedExecute if trusted_mode else GradingExecute)(timeout=job["cell_timeout"], timeout_func=timeout_for,
                              kernel_name=KERNEL_NAME,
                              startup_timeout=job.get("startup_timeout", 120))

    save()
    code = 0
    km = new_kernel_manager()
    try:
        try:
            new_executor().preprocess(nb, {"metadata": {"path": job["cwd"]}}, km=km)
        except (RuntimeError, DeadKernelError) as exc:
            # a kernel that died before its first reply (before any cell, so before any
            # student code) is the machine's problem, not the student's: start it once more
            if status["cell"] is not None or not _died_at_start(exc):
                raise
            try:
                if km.has_kernel:
                    run_sync(km.shutdown_kernel)(now=True)
            except Exception:  # noqa: BLE001 - dead already
                pass
            status["kernel_retried"] = f"{type(exc).__name__}: {exc}"[:300]
            save()
            time.sleep(2)
            km = new_kernel_manager()
            new_executor().preprocess(nb, {"metadata": {"path": job["cwd"]}}, km=km)
        status.update(state="completed")
    except DeadKernelError:
        status.update(state="kernel_died", message="the kernel died (the code exited the "
                      "Python process, crashed it or ran out of memory)")
        code = 1
    except CellTimeoutError as exc:
        status.update(state="stuck", message="a cell over its time limit could not be "
                      f"interrupted: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        code = 1
    except Exception as exc:  # noqa: BLE001 - anything else is reported, never raised
        status.update(state="error", message=f"{type(exc).__name__}: {exc}"[:500])
        code = 1
    finally:
        try:
            if km.has_kernel:
                run_sync(km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001 - the grader kills what is left
            pass
        shutil.rmtree(ipc, ignore_errors=True)
    save(nb)
    return code


def _copy_observation(source: Path, target: Path) -> None:
    """Copy the observation ``source`` (``.json`` and ``.npz``, written by the kernel) to
    ``target``, each only as a regular file of its own within :mod:`.observe`'s size caps; a
    part that is not is left out (the trusted check then says the values are missing).
    Raises nothing."""
    from course_tools.grading import observe

    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix, limit in ((".json", observe.MAX_JSON_BYTES),
                          (".npz", observe.MAX_ARRAY_BYTES + 2**20)):
        destination = Path(f"{target}{suffix}")
        try:
            data = observe.read_regular(f"{source}{suffix}", limit, folder_too=True)
        except observe.ObservationError:
            destination.unlink(missing_ok=True)
            continue
        partial = destination.with_name(destination.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, destination)


def _died_at_start(exc: BaseException) -> bool:
    """Whether ``exc`` says the kernel died while starting (jupyter_client's "Kernel died
    before replying to kernel_info", or nbclient's dead kernel before any cell ran)."""
    from nbclient.exceptions import DeadKernelError

    return isinstance(exc, DeadKernelError) or "before replying to kernel_info" in str(exc)


def main(argv=None) -> int:
    """Command line entry: ``python -m course_tools.grading.worker JOB_DIR``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m course_tools.grading.worker JOB_DIR", file=sys.stderr)
        return 2
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
