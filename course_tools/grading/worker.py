"""Execute one gradeable notebook in a fresh kernel; run as a subprocess by ``course_tools.grading.release``.

    python -m course_tools.grading.worker JOB_DIR

``JOB_DIR`` holds ``job.json`` (written by the grader: the working folder, the time limit of
the answer and tests cells, that of the lesson's other cells, the kernel's environment) and
``input.ipynb``. The notebook is executed with nbgrader's
``Execute`` preprocessor (errors do not stop the run; a cell over its time limit is interrupted
and gets a ``CellTimeoutError`` output). After every cell the executed notebook is saved to
``JOB_DIR/executed.ipynb`` and the progress to ``JOB_DIR/status.json``, so that when the grader
kills this process at the notebook's time limit, the cells that did run are still graded.

``status.json``: ``{"state": "running"|"completed"|"kernel_died"|"stuck"|"error",
"cell": index of the cell running or last run, "kernel_pid": ..., "message": ...}``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat

from course_lib.paths import write_text_atomic as _write_atomic


def run(job_dir: Path) -> int:
    """Execute ``job_dir/input.ipynb`` as described in the module docstring.

    Returns 0 when every cell was run (with or without errors), 1 when the run stopped early
    (dead kernel, a cell that could not be interrupted, another failure); the reason is in
    ``status.json``. Raises nothing for problems in the notebook.
    """
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbgrader.preprocessors import Execute, LimitOutput

    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    executed_path, status_path = job_dir / "executed.ipynb", job_dir / "status.json"
    status: dict = {"state": "starting", "cell": None, "kernel_pid": None, "message": ""}

    def save(nb=None) -> None:
        if nb is not None:
            _write_atomic(executed_path, nbformat.writes(nb))
        _write_atomic(status_path, json.dumps(status))

    class GradingExecute(Execute):
        """nbgrader's Execute, saving the notebook and the progress around every cell."""

        def on_cell_execute(self, **kwargs):
            if status["kernel_pid"] is None:
                provisioner = getattr(self.km, "provisioner", None)
                status["kernel_pid"] = getattr(provisioner, "pid", None)
            status.update(state="running", cell=kwargs["cell_index"])
            save()

        def on_cell_executed(self, **kwargs):
            super().on_cell_executed(**kwargs)
            limiter.preprocess_cell(kwargs["cell"], {}, kwargs["cell_index"])
            save(self.nb)

    nb = nbformat.read(job_dir / "input.ipynb", as_version=4)
    limiter = LimitOutput(max_lines=job.get("max_output_lines", 1000), max_traceback=100)
    # The kernel inherits this process's environment: the grader's choice, nothing else.
    os.environ.clear()
    os.environ.update(job["env"])
    exercise_cell = re.compile(r"^ex\d+_(solution|tests)$")

    def timeout_for(cell) -> int:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id") or ""
        if exercise_cell.match(grade_id):
            return job["cell_timeout"]
        return job.get("lesson_cell_timeout") or job["cell_timeout"]

    executor = GradingExecute(timeout=job["cell_timeout"], timeout_func=timeout_for,
                              kernel_name="python3",
                              startup_timeout=job.get("startup_timeout", 120))
    save()
    code = 0
    try:
        executor.preprocess(nb, {"metadata": {"path": job["cwd"]}})
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
    save(nb)
    return code


def main(argv=None) -> int:
    """Command line entry: ``python -m course_tools.grading.worker JOB_DIR``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m course_tools.grading.worker JOB_DIR", file=sys.stderr)
        return 2
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
