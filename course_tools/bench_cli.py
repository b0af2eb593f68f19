"""``python -m course_tools bench``: lesson 09's training-step benchmarks outside Jupyter.

Runs the reference MLP's training step (forward, softmax cross-entropy, backward, plain SGD
update, batch ``--batch``) at the chosen sizes in every chosen framework and mode, each
framework in its own fresh Python process (Keras reads its backend once per process; a fresh
process also isolates memory and measures the framework's import cost), under a time limit.
Every figure is recorded like the lesson's (``course_lib.results``, lesson ``09``, extra field
``source="cli"``) in ``--out``: ``step_time``, ``first_call_time``, ``achieved_gflops``,
``fraction_of_peak`` (of NumPy's float32 matmul measured in the same process just before; on
a GPU, of the GPU's float32 matmul with TF32 off),
``matmul_peak``, ``import_time`` and ``memory_after_import``.

Frameworks and modes (``--modes`` filters by name):

  torch                eager, compile (torch.compile)
  jax                  jit, nojit
  tensorflow           eager, function (tf.function), xla (tf.function(jit_compile=True))
  keras                one process per backend in --keras-backends:
                       jit_compile, no_jit_compile (model.compile(jit_compile=...), then
                       train_on_batch)
  sklearn              partial_fit (MLPClassifier, solver="sgd")

Examples:
  python -m course_tools bench --sizes tiny --frameworks jax,torch --repeats 3
  python -m course_tools bench --out results/reference/my-gpu          # everything, all sizes

On a machine with a CUDA GPU, PyTorch, JAX, TensorFlow and Keras run the steps on the GPU
(``ran_on="gpu"`` in the records), and each worker also records the GPU's matmul rate in
float32, TF32 and bfloat16. This module's top level imports only the standard library, so
``python -m course_tools --help`` stays fast; workers import what they benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from course_lib.runtime import memory_mb as _memory_mb  # stdlib only: measures the bare import

FRAMEWORKS = ("torch", "jax", "tensorflow", "keras", "sklearn")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
MODES = {
    "torch": ("eager", "compile"),
    "jax": ("jit", "nojit"),
    "tensorflow": ("eager", "function", "xla"),
    "keras": ("jit_compile", "no_jit_compile"),
    "sklearn": ("partial_fit",),
}
#: Import name of each framework (what the worker imports first and times).
IMPORTS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "keras": "keras",
           "sklearn": "sklearn.neural_network"}
LEARNING_RATE = 0.01
DEFAULT_SIZES = "tiny,small,medium,large"


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
                        help="only these modes, e.g. eager,jit,xla,jit_compile (default: all "
                             "modes of each framework)")
    parser.add_argument("--keras-backends", type=_csv(KERAS_BACKENDS),
                        default=list(KERAS_BACKENDS), metavar="LIST",
                        help="Keras backends, one process each (default: all three)")
    parser.add_argument("--repeats", type=_positive_int, default=7, metavar="N",
                        help="timed samples per benchmark; the median is reported (default 7)")
    parser.add_argument("--batch", type=_positive_int, default=256, metavar="B",
                        help="batch size (default 256)")
    parser.add_argument("--min-time", type=float, default=0.1, metavar="S",
                        help="seconds each timed sample lasts at least (default 0.1)")
    parser.add_argument("--out", default="build/bench-results", metavar="DIR",
                        help="results folder; records go to DIR/09.jsonl "
                             "(default build/bench-results)")
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
    """Run every worker in turn; print a table; return 0, or 1 if a worker failed."""
    from course_lib import bench

    try:
        sizes = bench.parse_sizes(args.sizes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    started = time.perf_counter()
    for framework, backend in jobs(args.frameworks, args.keras_backends):
        modes = [m for m in MODES[framework] if args.modes is None or m in args.modes]
        label = framework + (f"[{backend}]" if backend else "")
        if not modes:
            continue
        command = [sys.executable, "-m", "course_tools.bench_cli", "--worker", framework,
                   "--sizes", ",".join(name for name, _ in sizes),
                   "--modes", ",".join(modes), "--repeats", str(args.repeats),
                   "--batch", str(args.batch), "--min-time", str(args.min_time),
                   "--out", str(out), "--seed", str(args.seed), "--lesson", args.lesson]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               "COURSE_RESULTS_DIR": str(out)}
        if backend:
            env["KERAS_BACKEND"] = backend
        print(f"== {label}: {', '.join(modes)} at {args.sizes} (batch {args.batch})", flush=True)
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
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            failures.append(f"{label}: exit status {proc.returncode}\n{tail}")
            print(f"   FAILED ({proc.returncode}):\n{tail}", flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"records in {out / (args.lesson + '.jsonl')} ({time.perf_counter() - started:.0f} s)")
    if failures:
        print("failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def _describe(row: dict) -> str:
    if row.get("kind") == "import":
        return (f"import {row['module']}: {row['import_time']:.2f} s, "
                f"{row['memory_mb']:.0f} MB after import")
    if row.get("kind") == "peak":
        return f"{row['text']}"
    text = (f"{row['model']:<12} {row['mode']:<15} step {row['median'] * 1e3:9.3f} ms "
            f"(IQR {row['iqr'] * 1e3:.3f}) first {row['first_call']:.2f} s")
    if row.get("fraction") is not None:
        text += f"  {row['gflops']:.1f} GFLOP/s = {row['fraction']:.2f} of peak"
    return text


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
    """A worker: import the framework (timed), measure the peak, time every size and mode."""
    parser = argparse.ArgumentParser(prog="bench worker")
    parser.add_argument("framework", choices=FRAMEWORKS)
    for name in ("--sizes", "--modes", "--out", "--lesson"):
        parser.add_argument(name, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--min-time", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import importlib

    import numpy as np  # every framework needs it: imported before the clock starts

    base_mb = _memory_mb()
    start = time.perf_counter()
    importlib.import_module(IMPORTS[args.framework])
    import_time = time.perf_counter() - start
    memory_mb = _memory_mb()

    from course_lib import bench, results, runtime

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

    gpu = _gpu_for(args.framework, backend)
    ran_on = "gpu" if gpu else "cpu"
    peak = bench.matmul_peak(repeats=max(3, args.repeats), min_time=max(0.05, args.min_time))
    bench.record_bench(args.lesson, peak, **common)
    _emit({"kind": "peak", "text": str(peak)})
    if gpu:  # on a GPU the yardstick is the GPU's own float32 product (TF32 off)
        gpu_peaks = bench.gpu_matmul_peaks(framework="jax" if gpu == "jax" else "torch")
        for p in gpu_peaks:
            bench.record_bench(args.lesson, p, **common)
            _emit({"kind": "peak", "text": str(p)})
        peak = gpu_peaks[0] if gpu_peaks else peak

    builder = {"torch": torch_step, "jax": jax_step, "tensorflow": tf_step,
               "keras": keras_step, "sklearn": sklearn_step}[args.framework]
    for name, sizes in bench.parse_sizes(args.sizes):
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.batch, sizes[0]), dtype=np.float32)
        y = rng.integers(0, sizes[-1], args.batch).astype(np.int64)
        flops = bench.mlp_train_step_flops(sizes, args.batch)
        for mode in args.modes.split(","):
            fn, sync = builder(sizes, mode, x, y, args.seed)
            timing = bench.measure(fn, sync=sync, warmup=2, repeats=args.repeats,
                                   min_time=args.min_time)
            bench.record_bench(args.lesson, timing, framework=args.framework, backend=backend,
                               mode=mode, model=f"mlp_{name}", flops=flops, peak=peak,
                               ran_on=ran_on, sizes=list(sizes),
                               flops_exact=bench.mlp_train_step_flops(
                                   sizes, args.batch, count_input_grad=False), **common)
            _emit({"kind": "step", "model": f"mlp_{name}", "mode": mode, **timing.to_dict(),
                   "gflops": timing.gflops(flops), "fraction": timing.gflops(flops) / peak.gflops})
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


def _spec_and_weights(sizes, seed):
    from course_lib import models

    spec = models.MLPSpec(sizes[0], tuple(sizes[1:-1]), sizes[-1])
    return spec, models.init_weights(spec, seed)


# The training steps below are the lesson's (notebooks/09_performance.ipynb, section 3): the
# same MLP from the same weights, mean softmax cross-entropy, plain SGD (lr 0.01), one fixed
# batch. Each builder returns (fn, sync) for bench.measure.


def torch_step(sizes, mode, x, y, seed):
    """PyTorch: ``nn.Sequential`` of Linear/ReLU, ``torch.optim.SGD``; mode eager or compile."""
    import torch
    from torch import nn

    from course_lib import bench, convert

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))
    convert.to_torch(model, _spec_and_weights(sizes, seed)[1])
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    forward = model
    if mode == "compile":
        forward = torch.compile(model)
    elif mode != "eager":
        raise ValueError(f"torch has no mode {mode!r}")
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        loss = nn.functional.cross_entropy(forward(xt), yt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, bench.sync_torch


def jax_step(sizes, mode, x, y, seed):
    """JAX: pure functions, ``jax.value_and_grad``, SGD by ``jax.tree.map``; jit or nojit."""
    import jax
    import jax.numpy as jnp
    import optax

    from course_lib import bench, convert

    def loss_fn(params, x, y):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
        logits = x @ params[-1]["kernel"] + params[-1]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), loss

    if mode == "jit":
        train_step = jax.jit(train_step)
    elif mode != "nojit":
        raise ValueError(f"jax has no mode {mode!r}")
    state = {"params": convert.to_jax(_spec_and_weights(sizes, seed)[1])}
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def step():
        state["params"], loss = train_step(state["params"], xj, yj)
        return state["params"], loss

    return step, bench.sync_jax


def tf_step(sizes, mode, x, y, seed):
    """TensorFlow: ``GradientTape``, ``assign_sub``; eager, function or xla."""
    import tensorflow as tf

    from course_lib import bench, convert

    params = convert.to_tf(_spec_and_weights(sizes, seed)[1])
    variables = [v for layer in params for v in (layer["kernel"], layer["bias"])]
    xt, yt = tf.constant(x), tf.constant(y)

    def step():
        with tf.GradientTape() as tape:
            h = xt
            for layer in params[:-1]:
                h = tf.nn.relu(h @ layer["kernel"] + layer["bias"])
            logits = h @ params[-1]["kernel"] + params[-1]["bias"]
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yt, logits=logits))
        for var, grad in zip(variables, tape.gradient(loss, variables)):
            var.assign_sub(LEARNING_RATE * grad)
        return loss

    if mode == "function":
        step = tf.function(step)
    elif mode == "xla":
        step = tf.function(step, jit_compile=True)
    elif mode != "eager":
        raise ValueError(f"tensorflow has no mode {mode!r}")
    return step, bench.sync_tf


def keras_step(sizes, mode, x, y, seed):
    """Keras 3 on the process's backend: ``compile(jit_compile=...)``, ``train_on_batch``."""
    import keras

    from course_lib import bench, convert

    if mode not in ("jit_compile", "no_jit_compile"):
        raise ValueError(f"keras has no mode {mode!r}")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((sizes[0],))]
                             + [keras.layers.Dense(n, activation="relu") for n in sizes[1:-1]]
                             + [keras.layers.Dense(sizes[-1])])
    convert.to_keras(model, _spec_and_weights(sizes, seed)[1])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=mode == "jit_compile")

    def step():
        return model.train_on_batch(x, y)  # returns the loss as a NumPy/Python float

    return step, bench.sync_none


def sklearn_step(sizes, mode, x, y, seed):
    """scikit-learn: ``MLPClassifier(solver="sgd").partial_fit`` on one batch (NumPy, CPU)."""
    import warnings

    import numpy as np
    from sklearn.neural_network import MLPClassifier

    from course_lib import bench

    if mode != "partial_fit":
        raise ValueError(f"sklearn has no mode {mode!r}")
    model = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="sgd", momentum=0.0,
                          learning_rate_init=LEARNING_RATE, alpha=0.0, batch_size=len(x),
                          random_state=seed)
    classes = np.arange(sizes[-1])

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.partial_fit(x, y, classes=classes)
        return model.loss_

    return step, bench.sync_none


if __name__ == "__main__":
    sys.exit(main())
