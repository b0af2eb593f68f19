"""``python -m course_tools bench``: lesson 09's training-step benchmarks outside Jupyter.

Runs **the lesson's own step code**: lesson 09 (``notebooks/09_performance.ipynb``) writes each
framework's training step to a small module with a ``%%writefile`` cell (``torch_step.py``,
``jax_step.py``, ``tf_step.py``, ``keras_step.py``, ``sklearn_step.py``); this command reads
those cells from the notebook, writes them to a temporary folder for the run, and imports
them (the records carry each module's SHA-256). There is no second copy that could drift; a
notebook without one of those cells is refused.

Each step (the reference MLP: forward, softmax cross-entropy, backward, plain SGD update,
batch ``--batch``) is timed **in alternation with the reference**, the
NumPy/BLAS float32 matmul rate of ``(256, 1024) @ (1024, 1024)``: one sample of each, back to
back, ``--repeats`` times in one loop (``course_lib.bench.interleaved``), each step sample after
an untimed 0.15 s pause that lets the reference's idle BLAS threads stop spinning
(``bench.SETTLE_S``). Each pair gives a ratio, step FLOP rate over reference rate; the median ratio is reported with its 95 % bootstrap interval. When the
reference's own samples spread more than 15 % (IQR/median), or its threads got less than 80 %
of the cores, the ratio is replaced by "machine too busy to measure". The CPU's theoretical
float32 peak (cores x clock x FMA width, from /proc/cpuinfo) is shown beside it.

Each framework runs in its own fresh Python process (Keras reads its backend once per
process; a fresh process also isolates memory and measures the framework's import cost),
under a time limit. Every figure is recorded like the lesson's (``course_lib.results``,
lesson ``09``, extra field ``source="cli"``) in ``--out``: ``step_time``,
``first_call_time``, ``achieved_gflops``, ``reference_rate``, ``ratio_to_reference`` (left
out when the machine was too busy), ``matmul_peak`` (the reference measured alone),
``theoretical_peak``, ``import_time`` and ``memory_after_import``; ``bench-summary.json``
holds the table printed at the end.

Frameworks and modes (the modes are the lesson's ``MODES``; ``--modes`` filters by name):

  torch                eager, compile (torch.compile)
  jax                  jit, nojit
  tensorflow           eager, function (tf.function), xla (tf.function(jit_compile=True))
  keras                one process per backend in --keras-backends:
                       fit_jit_compile, fit_no_jit_compile (model.fit over 10 batches, how
                       Keras users train: the mode the course's verdicts use), jit_compile,
                       no_jit_compile (train_on_batch)
  sklearn              partial_fit (MLPClassifier, solver="sgd")

Examples:
  python -m course_tools bench --sizes tiny --frameworks jax,torch --repeats 5
  python -m course_tools bench --sizes large --frameworks torch,jax,keras
  python -m course_tools bench --out results/reference/my-gpu          # everything, all sizes

On a machine with a CUDA GPU, PyTorch, JAX, TensorFlow and Keras run the steps on the GPU
(``ran_on="gpu"`` in the records), the reference is the framework's own float32 GPU matmul,
and each worker also records the GPU's matmul rate in float32, TF32 and bfloat16. This
module's top level imports only the standard library, so ``python -m course_tools --help``
stays fast; workers import what they benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from course_lib.runtime import memory_mb as _memory_mb  # stdlib only: measures the bare import

FRAMEWORKS = ("torch", "jax", "tensorflow", "keras", "sklearn")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
#: The module lesson 09 writes for each framework (its ``%%writefile`` cells).
STEP_FILES = {"torch": "torch_step.py", "jax": "jax_step.py", "tensorflow": "tf_step.py",
              "keras": "keras_step.py", "sklearn": "sklearn_step.py"}
#: Import name of each framework (what the worker imports first and times).
IMPORTS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "keras": "keras",
           "sklearn": "sklearn.neural_network"}
LEARNING_RATE = 0.01  # the lesson's LEARNING_RATE
DEFAULT_SIZES = "tiny,small,medium,large"
LESSON_NOTEBOOK = Path("notebooks") / "09_performance.ipynb"
_WRITEFILE = re.compile(r"^%%writefile\s+(?:\{\w+\}/)?(?P<name>[\w.-]+\.py)\s*$")


class LessonCodeError(ValueError):
    """Lesson 09's notebook is missing, unreadable, or lacks a step module's cell."""


# ---------------------------------------------------------------------------------------------
# The lesson's step code
# ---------------------------------------------------------------------------------------------


def default_notebook() -> Path:
    """``notebooks/09_performance.ipynb`` of the course root (the working directory's, else
    the one this package sits in)."""
    from course_lib import results

    root = results.course_root() or results.course_root(Path(__file__).resolve().parent)
    return (root or Path.cwd()) / LESSON_NOTEBOOK


def lesson_step_code(notebook: str | os.PathLike) -> dict[str, str]:
    """The step modules lesson 09 writes: ``{file name: source}`` from its ``%%writefile`` cells.

    A cell counts when its first line is ``%%writefile {SCRATCH}/<name>.py`` (or a plain
    path) and ``<name>.py`` is one of :data:`STEP_FILES`; the source is the rest of the cell,
    exactly what IPython writes to the file.

    Raises:
        LessonCodeError: the notebook cannot be read as JSON, or one of the step modules has
            no cell (the message names it and says what to do).
    """
    path = Path(notebook)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as exc:
        raise LessonCodeError(f"cannot read lesson 09's notebook {path}: {exc}; pass "
                              "--notebook PATH to the lesson's .ipynb") from None
    wanted = set(STEP_FILES.values())
    found: dict[str, str] = {}
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        first, _, body = source.partition("\n")
        match = _WRITEFILE.match(first.strip())
        if match and match["name"] in wanted:
            found[match["name"]] = body if body.endswith("\n") else body + "\n"
    missing = sorted(wanted - set(found))
    if missing:
        raise LessonCodeError(
            f"{path} has no %%writefile cell for {', '.join(missing)}: the bench runs only "
            "the lesson's own step code. Restore the cell(s) in section 3 of lesson 09, or "
            "pass --notebook with a lesson that has them.")
    return found


def lesson_modes(source: str) -> tuple[str, ...]:
    """The ``MODES = (...)`` a step module's source defines (read, not run), or ``()``."""
    import ast

    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "MODES" for t in node.targets):
            try:
                return tuple(ast.literal_eval(node.value))
            except ValueError:
                return ()
    return ()


def write_step_modules(notebook, folder) -> dict[str, str]:
    """Write the lesson's step modules into ``folder`` (atomically); return their SHA-256.

    Raises:
        LessonCodeError: as :func:`lesson_step_code`.
    """
    from course_lib.paths import write_text_atomic

    digests = {}
    for name, source in lesson_step_code(notebook).items():
        write_text_atomic(Path(folder) / name, source)
        digests[name] = hashlib.sha256(source.encode()).hexdigest()
    return digests


# ---------------------------------------------------------------------------------------------
# Command line (parent process)
# ---------------------------------------------------------------------------------------------


def _csv(choices=None):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one name")
        if choices is not None:
            bad = [s for s in items if s not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _pairs(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("needs at least 2 pairs for a spread")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench`` options to ``parser`` (used by ``python -m course_tools``)."""
    parser.add_argument("--sizes", default=DEFAULT_SIZES, metavar="LIST",
                        help="MLP sizes, comma-separated: tiny (64-64-64-10), small "
                             "(784-128-128-10), medium (784-512-512-10), large "
                             "(784-1024-1024-10), or widths like 784-256-10 "
                             f"(default {DEFAULT_SIZES})")
    parser.add_argument("--frameworks", type=_csv(FRAMEWORKS), default=list(FRAMEWORKS),
                        metavar="LIST", help=f"comma-separated, from {','.join(FRAMEWORKS)} "
                                             "(default: all)")
    parser.add_argument("--modes", type=_csv(), default=None, metavar="LIST",
                        help="only these modes, e.g. eager,jit,xla,fit_jit_compile (default: "
                             "all modes of each framework)")
    parser.add_argument("--keras-backends", type=_csv(KERAS_BACKENDS),
                        default=list(KERAS_BACKENDS), metavar="LIST",
                        help="Keras backends, one process each (default: all three)")
    parser.add_argument("--repeats", "--pairs", dest="repeats", type=_pairs, default=15,
                        metavar="N", help="pairs of samples (reference, step) per benchmark, "
                                          "in one loop (default 15)")
    parser.add_argument("--batch", type=_positive_int, default=256, metavar="B",
                        help="batch size (default 256)")
    parser.add_argument("--min-time", type=float, default=0.1, metavar="S",
                        help="seconds each timed sample lasts at least (default 0.1)")
    parser.add_argument("--out", default="build/bench-results", metavar="DIR",
                        help="results folder; records go to DIR/09.jsonl, the summary to "
                             "DIR/bench-summary.json (default build/bench-results)")
    parser.add_argument("--notebook", default=None, metavar="PATH",
                        help="lesson 09's notebook, whose %%%%writefile cells hold the step "
                             f"code (default: {LESSON_NOTEBOOK} of the course root)")
    parser.add_argument("--timeout", type=_positive_int, default=900, metavar="S",
                        help="seconds one framework's process may run before it is stopped "
                             "(default 900)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    parser.add_argument("--lesson", default="09", help="lesson id the records carry")
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser (``python -m course_tools.bench_cli``)."""
    parser = argparse.ArgumentParser(prog="python -m course_tools bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def jobs(frameworks, keras_backends) -> list[tuple[str, str | None]]:
    """(framework, keras backend) per worker process, in order."""
    out = []
    for framework in frameworks:
        if framework == "keras":
            out += [("keras", backend) for backend in keras_backends]
        else:
            out.append((framework, None))
    return out


def run(args: argparse.Namespace) -> int:
    """Run every worker in turn; print a table; return 0, 1 if a worker failed, 2 on bad
    input (an unknown size, a lesson without its step cells)."""
    from course_lib import bench

    try:
        sizes = bench.parse_sizes(args.sizes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    notebook = Path(args.notebook) if args.notebook else default_notebook()
    with tempfile.TemporaryDirectory(prefix="lesson09-steps-") as steps_dir:
        try:
            digests = write_step_modules(notebook, steps_dir)
        except LessonCodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"step code: the %%writefile cells of {notebook}", flush=True)
        return _run_workers(args, sizes, out, notebook, Path(steps_dir), digests)


def _run_workers(args, sizes, out: Path, notebook: Path, steps_dir: Path, digests) -> int:
    from course_lib import bench, results, runtime
    from course_lib.paths import write_text_atomic

    theory = bench.theoretical_peak()
    print(theory or "theoretical float32 peak: cannot be derived here", flush=True)
    if theory:
        results.record(args.lesson, "theoretical_peak", theory.gflops, "GFLOP/s",
                       framework="cpu", source="cli", results_dir=out, cores=theory.cores,
                       ghz=theory.ghz, flops_per_cycle=theory.flops_per_cycle,
                       vector=theory.vector, assumption=theory.assumption)
    failures, table = [], []
    started, load_before = time.perf_counter(), bench.load_average()
    code = lesson_step_code(notebook)
    for framework, backend in jobs(args.frameworks, args.keras_backends):
        label = framework + (f"[{backend}]" if backend else "")
        modes = lesson_modes(code[STEP_FILES[framework]])
        if args.modes and not set(args.modes) & set(modes):
            print(f"== {label}: skipped, none of --modes is one of its modes "
                  f"({', '.join(modes)})", flush=True)
            continue
        command = [sys.executable, "-m", "course_tools.bench_cli", "--worker", framework,
                   "--sizes", ",".join(name for name, _ in sizes),
                   "--modes", ",".join(args.modes or []), "--repeats", str(args.repeats),
                   "--batch", str(args.batch), "--min-time", str(args.min_time),
                   "--out", str(out), "--steps", str(steps_dir), "--seed", str(args.seed),
                   "--lesson", args.lesson,
                   "--code-sha256", digests[STEP_FILES[framework]]]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               "COURSE_RESULTS_DIR": str(out)}
        if backend:
            env["KERAS_BACKEND"] = backend
        print(f"== {label} at {args.sizes} (batch {args.batch}, {args.repeats} pairs)",
              flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            failures.append(f"{label}: stopped after {args.timeout} s (--timeout)")
            print(f"   {failures[-1]}", flush=True)
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                print("   " + _describe(row), flush=True)
                if row.get("kind") == "step":
                    table.append({"framework": framework, "backend": backend, **row})
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            failures.append(f"{label}: exit status {proc.returncode}\n{tail}")
            print(f"   FAILED ({proc.returncode}):\n{tail}", flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    summary = {"arguments": {k: v for k, v in vars(args).items() if k != "func"},
               "hardware": runtime.device_description(), "cpus": os.cpu_count(),
               "theoretical_peak": None if theory is None else {
                   "gflops": theory.gflops, "text": str(theory)},
               "load_1min_before": load_before, "load_1min_after": bench.load_average(),
               "seconds": time.perf_counter() - started, "notebook": str(notebook),
               "step_code_sha256": digests, "steps": table}
    write_text_atomic(out / "bench-summary.json", json.dumps(summary, indent=1) + "\n")
    print(format_table(table))
    print(f"records in {out / (args.lesson + '.jsonl')}, summary in "
          f"{out / 'bench-summary.json'} ({time.perf_counter() - started:.0f} s)")
    if failures:
        print("failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def format_table(rows: list[dict]) -> str:
    """The summary table: one line per (framework, mode, size), ratio or "too busy"."""
    lines = [f"{'framework':<18} {'mode':<19} {'size':<7} {'step ms':>9}  ratio to the "
             "reference (95 % interval)"]
    for row in rows:
        label = row["framework"] + (f"[{row['backend']}]" if row.get("backend") else "")
        s = row["summary"]
        ratio = (f"machine too busy to measure ({s['busy_reason']})" if s["status"] == "too busy"
                 else f"{s['ratio']:.2f} ({s['ratio_ci_low']:.2f}-{s['ratio_ci_high']:.2f})")
        lines.append(f"{label:<18} {row['mode']:<19} {row['model']:<7} "
                     f"{row['median'] * 1e3:9.2f}  {ratio}")
    return "\n".join(lines)


def _describe(row: dict) -> str:
    if row.get("kind") == "import":
        return (f"import {row['module']}: {row['import_time']:.2f} s, "
                f"{row['memory_mb']:.0f} MB after import")
    if row.get("kind") == "peak":
        return f"{row['text']}"
    s = row["summary"]
    text = (f"{row['model']:<12} {row['mode']:<19} step {row['median'] * 1e3:9.3f} ms "
            f"(IQR {row['iqr'] * 1e3:.3f}) first {row['first_call']:.2f} s  ")
    if s["status"] == "too busy":
        return text + f"machine too busy to measure: {s['busy_reason']}"
    return (text + f"{s['ratio']:.2f} x the {s['reference']} (95 % interval "
            f"{s['ratio_ci_low']:.2f}-{s['ratio_ci_high']:.2f}; reference "
            f"{s['reference_gflops']:.1f} GFLOP/s)")


def main(argv=None) -> int:
    """Entry point of ``python -m course_tools.bench_cli`` (parent, or ``--worker`` child)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------------------------------
# Worker (one fresh process per framework)
# ---------------------------------------------------------------------------------------------


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def worker_main(argv) -> int:
    """A worker: import the framework (timed), load the lesson's step module, measure the
    reference alone, then time every size and mode in alternation with it."""
    parser = argparse.ArgumentParser(prog="bench worker")
    parser.add_argument("framework", choices=FRAMEWORKS)
    for name in ("--sizes", "--out", "--lesson", "--steps"):
        parser.add_argument(name, required=True)
    parser.add_argument("--modes", default="")
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--min-time", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code-sha256", default=None)
    args = parser.parse_args(argv)

    import importlib

    import numpy as np  # every framework needs it: imported before the clock starts

    base_mb = _memory_mb()
    start = time.perf_counter()
    importlib.import_module(IMPORTS[args.framework])
    import_time = time.perf_counter() - start
    memory_mb = _memory_mb()

    from course_lib import bench, models, results, runtime

    runtime.seed_everything(args.seed, frameworks=())
    backend = None
    if args.framework == "keras":
        import keras

        backend = keras.backend.backend()
    common = {"source": "cli", "batch": args.batch, "results_dir": args.out}
    results.record(args.lesson, "import_time", import_time, "s", framework=args.framework,
                   backend=backend, mode="import", source="cli", results_dir=args.out,
                   note="numpy imported before the clock started")
    results.record(args.lesson, "memory_after_import", memory_mb, "MB",
                   framework=args.framework, backend=backend, mode="import", source="cli",
                   results_dir=args.out, memory_before_mb=base_mb)
    _emit({"kind": "import", "module": IMPORTS[args.framework], "import_time": import_time,
           "memory_mb": memory_mb})

    module = bench.load_module(Path(args.steps) / STEP_FILES[args.framework])
    wanted = [m for m in args.modes.split(",") if m]
    modes = [m for m in module.MODES if not wanted or m in wanted]
    steps_per_call = getattr(module, "STEPS_PER_CALL", {})

    gpu = _gpu_for(args.framework, backend)
    ran_on = "gpu" if gpu else "cpu"
    alone = bench.matmul_peak(repeats=max(3, args.repeats), min_time=max(0.05, args.min_time))
    bench.record_bench(args.lesson, alone, **common)
    _emit({"kind": "peak", "text": f"{alone} (alone, before the steps)"})
    reference = bench.matmul_reference()
    if gpu:  # on a GPU the yardstick is the GPU's own float32 product (TF32 off)
        for p in bench.gpu_matmul_peaks(framework="jax" if gpu == "jax" else "torch"):
            bench.record_bench(args.lesson, p, **common)
            _emit({"kind": "peak", "text": str(p)})
        reference = bench.matmul_reference(8192, "float32", m=8192, framework=gpu,
                                           device="gpu")
    try:
        for name, sizes in bench.parse_sizes(args.sizes):
            spec = models.MLPSpec(sizes[0], tuple(sizes[1:-1]), sizes[-1])
            rng = np.random.default_rng(args.seed)
            x = rng.standard_normal((args.batch, sizes[0]), dtype=np.float32)
            y = rng.integers(0, sizes[-1], args.batch).astype(np.int64)
            flops = bench.mlp_train_step_flops(sizes, args.batch)
            for mode in modes:
                step = module.make_step(sizes, mode, models.init_weights(spec, args.seed), x, y,
                                        LEARNING_RATE)
                measured = bench.interleaved(step, reference, sync=module.SYNC, flops=flops,
                                             steps_per_call=steps_per_call.get(mode, 1),
                                             pairs=args.repeats, warmup=2,
                                             min_time=args.min_time)
                extra: dict[str, Any] = ({"api": "fit" if mode.startswith("fit") else "train_on_batch"}
                                         if args.framework == "keras" else {})
                bench.record_interleaved(
                    args.lesson, measured, framework=args.framework, backend=backend,
                    mode=mode, model=f"mlp_{name}", ran_on=ran_on, sizes=list(sizes),
                    flops_exact=bench.mlp_train_step_flops(sizes, args.batch,
                                                           count_input_grad=False),
                    step_code=STEP_FILES[args.framework], step_code_sha256=args.code_sha256,
                    **extra, **common)
                _emit({"kind": "step", "model": f"mlp_{name}", "mode": mode,
                       **measured.step.to_dict(), "gflops": measured.step.gflops(flops),
                       "summary": measured.summary(), "interleaved": measured.to_dict()})
    finally:
        reference.restore()
    return 0


def _gpu_for(framework: str, backend: str | None) -> str | None:
    """Which framework's GPU the steps use (``"torch"``/``"jax"``/``"tensorflow"``), or None."""
    engine = backend if framework == "keras" else framework
    try:
        if engine == "torch":
            import torch

            return "torch" if torch.cuda.is_available() else None
        if engine == "jax":
            import jax

            return "jax" if jax.default_backend() == "gpu" else None
        if engine == "tensorflow":
            import tensorflow as tf

            return "tensorflow" if tf.config.list_physical_devices("GPU") else None
    except Exception:  # a broken accelerator stack: benchmark on the CPU
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
