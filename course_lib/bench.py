"""Benchmark plumbing for lesson 09: timing with warm-up and synchronisation, FLOP counts, the
machine's matmul peak, and recording every figure.

The code being timed (the training steps) stays in the lesson; this module only times it
(CURRICULUM principle 5: warm-up, synchronisation, several repeats, medians, the hardware next
to every number).

Timing a call honestly
----------------------
:func:`measure` times ``fn()`` like this::

    first call, alone         -> Timing.first_call   (includes tracing/compilation)
    `warmup` more calls       -> not counted
    `repeats` samples, each of `number` consecutive calls -> Timing.times (seconds per call)

and calls ``sync(result)`` after **every** call, inside the timed region. The synchronisation
is a required keyword argument with no default: JAX (always) and PyTorch/TensorFlow on a GPU
return before the work is done, so a clock stopped without waiting measures only the time to
*queue* the work (a JAX step of 24 ms then seems to take 0.06 ms). Pick one of

=====================  =================================================================
``sync_jax``           ``jax.block_until_ready(result)``; the result must hold JAX arrays
``sync_torch``         ``torch.cuda.synchronize()`` when CUDA is in use (``torch.mps``
                       likewise); on a CPU PyTorch runs synchronously, so it does nothing
``sync_tf``            reads every TensorFlow tensor in the result back (``.numpy()``)
``sync_none``          for work that is finished when the call returns: NumPy,
                       scikit-learn, Keras's ``train_on_batch`` (which returns NumPy values)
=====================  =================================================================

:func:`measure` also checks the first call's result against the choice: a result holding JAX
arrays timed with anything but ``sync_jax`` (or a torch/TensorFlow tensor without its sync)
raises :class:`SyncError`, and so does a ``sync_jax``/``sync_tf`` with nothing to wait for.
A custom ``sync`` callable is allowed; then every JAX array in the result must be ready after
it (``jax.Array.is_ready()``), else :class:`SyncError`.

Nothing here imports a deep-learning framework at import time; the sync functions use a
framework only when it is already imported.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SIZES",
    "Peak",
    "SyncError",
    "Timing",
    "gpu_matmul_peaks",
    "load_average",
    "matmul_flops",
    "matmul_peak",
    "measure",
    "mlp_train_step_flops",
    "parse_sizes",
    "record_bench",
    "sync_jax",
    "sync_none",
    "sync_tf",
    "sync_torch",
]

#: The reference MLP at four sizes (layer widths from input to output). ``tiny`` is the
#: course's digits MLP, where Python overhead dominates; ``large`` is where matrix products
#: dominate on a 2-core CPU (about 2.9 GFLOP per training step at batch 256).
SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (64, 64, 64, 10),
    "small": (784, 128, 128, 10),
    "medium": (784, 512, 512, 10),
    "large": (784, 1024, 1024, 10),
}


class SyncError(ValueError):
    """A benchmark's synchronisation is missing, wrong for its result, or did not wait."""


# ---------------------------------------------------------------------------------------------
# Synchronisation
# ---------------------------------------------------------------------------------------------


def _leaves(result) -> list:
    """The leaves of a (nested) result: tuples, lists, dicts, and JAX pytrees when JAX is in."""
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            return jax.tree_util.tree_leaves(result)
        except Exception:  # an object JAX cannot flatten: fall back to the plain walk
            pass
    out, stack = [], [result]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif item is not None:
            out.append(item)
    return out


def _kind(leaf) -> str | None:
    """Which framework's array ``leaf`` is (only frameworks already imported are checked)."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(leaf, jax.Array):
        return "jax"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(leaf, torch.Tensor):
        return "torch"
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "Tensor") and isinstance(leaf, (tf.Tensor, tf.Variable)):
        return "tensorflow"
    return None


def sync_none(result) -> None:
    """No synchronisation: for calls whose work is done when they return.

    Use it for NumPy, scikit-learn and Keras's ``train_on_batch`` (which converts its logs to
    NumPy before returning). :func:`measure` refuses it for a result holding JAX, PyTorch or
    TensorFlow tensors.
    """
    return None


def sync_jax(result) -> None:
    """Wait until every JAX array in ``result`` is computed (``jax.block_until_ready``).

    JAX dispatches asynchronously: a jitted call returns as soon as the work is *queued*.
    Return the step's outputs (new parameters and loss) so that there is something to wait on.

    Raises:
        SyncError: ``result`` holds no JAX array.
    """
    jax = sys.modules.get("jax")
    if jax is None or not any(_kind(leaf) == "jax" for leaf in _leaves(result)):
        raise SyncError(
            "sync_jax: the call returned no JAX array to wait for; return the step's outputs "
            "(e.g. `params, loss = step(params, x, y); return params, loss`)"
        )
    jax.block_until_ready(result)


def sync_torch(result) -> None:
    """Wait for PyTorch's queued GPU work: ``torch.cuda.synchronize()`` if CUDA is in use.

    On a CPU, PyTorch runs each operation before returning, so there is nothing to wait for and
    this does nothing (it is still required, so that the same benchmark is right on a GPU).
    On Apple GPUs it calls ``torch.mps.synchronize()``.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_initialized():  # cheap (a flag), unlike torch.cuda.is_available()
        torch.cuda.synchronize()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None \
            and torch.backends.mps.is_available():
        mps.synchronize()


def sync_tf(result) -> None:
    """Read every TensorFlow tensor in ``result`` back to the host (``.numpy()``).

    Reading a value waits for the work that produced it (on a GPU, too). Return something small
    (the loss) rather than all the weights, or the copy itself is timed.

    Raises:
        SyncError: ``result`` holds no TensorFlow tensor.
    """
    tensors = [leaf for leaf in _leaves(result) if _kind(leaf) == "tensorflow"]
    if not tensors:
        raise SyncError("sync_tf: the call returned no TensorFlow tensor to read back; "
                        "return the loss (a tf.Tensor) from the step")
    for tensor in tensors:
        tensor.numpy()


#: The syncs :func:`measure` knows, and which framework's arrays each one waits for.
_KNOWN_SYNCS = {sync_none: None, sync_jax: "jax", sync_torch: "torch", sync_tf: "tensorflow"}
_SYNC_NAMES = {"jax": "sync_jax", "torch": "sync_torch", "tensorflow": "sync_tf"}


def _check_sync_choice(sync, result) -> None:
    """Raise SyncError if ``sync`` cannot be right for ``result`` (run on the first call)."""
    kinds = {k for k in map(_kind, _leaves(result)) if k is not None}
    if sync in _KNOWN_SYNCS:
        wanted = _KNOWN_SYNCS[sync]
        wrong = sorted(kinds - {wanted})
        if wrong:
            name = _SYNC_NAMES[wrong[0]]
            raise SyncError(
                f"the call returned {wrong[0]} arrays but sync=bench.{sync.__name__}; "
                f"{'JAX dispatches asynchronously, so ' if wrong[0] == 'jax' else ''}"
                f"the clock would stop before the work is done. Use sync=bench.{name}."
            )


def _check_ready(result) -> None:
    """After a custom sync: every JAX array in ``result`` must be computed."""
    for leaf in _leaves(result):
        if _kind(leaf) == "jax" and hasattr(leaf, "is_ready") and not leaf.is_ready():
            raise SyncError(
                "a JAX array in the result was still being computed after sync(): the "
                "synchronisation did not wait. Use sync=bench.sync_jax."
            )


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """What :func:`measure` measured. All times are in seconds per call.

    Attributes:
        times: one value per repeat: the duration of a sample of ``number`` calls divided by
            ``number``.
        number: calls per sample (chosen so that a sample lasts at least ``min_time``).
        first_call: the very first call, timed alone before any warm-up (includes tracing and
            compilation for jit/compile modes).
        warmup: untimed calls made after the first one.
    """

    times: tuple[float, ...]
    number: int
    first_call: float
    warmup: int

    @property
    def repeats(self) -> int:
        """How many samples ``times`` holds."""
        return len(self.times)

    @property
    def median(self) -> float:
        """Median of ``times`` (s): the figure the course reports."""
        return float(np.median(self.times))

    @property
    def q1(self) -> float:
        """First quartile of ``times`` (s), NumPy's default linear interpolation."""
        return float(np.percentile(self.times, 25))

    @property
    def q3(self) -> float:
        """Third quartile of ``times`` (s)."""
        return float(np.percentile(self.times, 75))

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1`` (s): the spread the course reports."""
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        """Fastest sample (s per call)."""
        return float(np.min(self.times))

    @property
    def max(self) -> float:
        """Slowest sample (s per call)."""
        return float(np.max(self.times))

    def gflops(self, flops: float) -> float:
        """Achieved GFLOP/s for ``flops`` floating-point operations per call, at the median."""
        return flops / self.median / 1e9

    def to_dict(self) -> dict:
        """A JSON-friendly summary (all seconds)."""
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "iqr": self.iqr,
                "min": self.min, "max": self.max, "first_call": self.first_call,
                "repeats": self.repeats, "number": self.number, "warmup": self.warmup}

    def __str__(self) -> str:
        return (f"{_fmt(self.median)} per call (IQR {_fmt(self.iqr)}, min {_fmt(self.min)}, "
                f"{self.repeats} x {self.number} calls); first call {_fmt(self.first_call)}")


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def measure(
    fn: Callable[[], Any],
    *,
    sync: Callable[[Any], Any],
    warmup: int = 2,
    repeats: int = 7,
    min_time: float = 0.05,
    max_number: int = 100_000,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()`` with a first call alone, warm-up, synchronisation and several repeats.

    Steps: (1) the first call, timed alone (``first_call``: compilation shows here);
    (2) ``warmup`` untimed calls; the slowest of them sets ``number`` = calls per sample,
    the smallest count that lasts at least ``min_time`` (at most ``max_number``; with no
    warm-up the first call sets it); (3)
    ``repeats`` samples of ``number`` calls each. ``sync(result)`` runs after every call, inside
    the timed region. See the module docstring for the choice of ``sync``.

    Args:
        fn: the work, called with no arguments (close over the data; a training step that
            returns new state should store it, e.g. in a dict, and return it).
        sync: required, keyword-only: :func:`sync_jax`, :func:`sync_torch`, :func:`sync_tf`,
            :func:`sync_none` or your own callable taking the result.
        warmup: untimed calls after the first (int >= 0).
        repeats: samples (int >= 1; 5 or more gives a meaningful median and IQR).
        min_time: seconds a sample should last at least (float >= 0); short calls are repeated
            ``number`` times in a sample so that the clock's resolution does not matter.
        max_number: cap on calls per sample.
        clock: a monotonic clock in seconds (tests pass a fake one).

    Returns:
        A :class:`Timing` (seconds per call).

    Raises:
        SyncError: ``sync`` missing (None) or not callable, or wrong for what ``fn`` returned
            (e.g. JAX arrays timed with ``sync_none``), or a custom ``sync`` that left a JAX
            array unfinished.
        ValueError: ``fn`` not callable, or ``warmup``, ``repeats``, ``min_time``,
            ``max_number`` out of range.
    """
    if sync is None or not callable(sync):
        raise SyncError(
            "measure() needs sync=: bench.sync_jax (JAX), bench.sync_torch (PyTorch), "
            "bench.sync_tf (TensorFlow) or bench.sync_none (NumPy, scikit-learn, Keras "
            f"train_on_batch); got {sync!r}"
        )
    if not callable(fn):
        raise ValueError(f"measure(): fn must be callable, got {type(fn).__name__}")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1),
                             ("max_number", max_number, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"measure(): {name} must be an int >= {low}, got {value!r}")
    if not (isinstance(min_time, (int, float)) and math.isfinite(min_time) and min_time >= 0):
        raise ValueError(f"measure(): min_time must be a number >= 0, got {min_time!r}")
    custom = sync not in _KNOWN_SYNCS

    start = clock()
    result = fn()
    _check_sync_choice(sync, result)
    sync(result)
    first_call = clock() - start
    if custom:
        _check_ready(result)

    slowest = first_call if warmup == 0 else 0.0
    for _ in range(warmup):
        start = clock()
        result = fn()
        sync(result)
        slowest = max(slowest, clock() - start)
        if custom:
            _check_ready(result)

    if slowest > 0:  # the slowest warm-up call: a call that was lucky once cannot inflate it
        number = min(max_number, max(1, math.ceil(min_time / slowest)))
    else:
        number = max_number if min_time > 0 else 1
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(number):
            sync(fn())
        times.append((clock() - start) / number)
    return Timing(times=tuple(times), number=number, first_call=first_call, warmup=warmup)


# ---------------------------------------------------------------------------------------------
# FLOP counts
# ---------------------------------------------------------------------------------------------


def _layer_sizes(sizes) -> tuple[int, ...]:
    sizes = getattr(sizes, "sizes", sizes)  # an MLPSpec gives its .sizes
    if isinstance(sizes, str):
        sizes = parse_sizes(sizes)[0][1]
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                             or s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be two or more positive ints, got {sizes!r}")
    return tuple(int(s) for s in sizes)


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of one ``(m, k) @ (k, n)`` product: ``2 * m * k * n`` (a multiply and an add per
    term; the usual convention, e.g. LAPACK Working Note 41).

    Raises:
        ValueError: a size that is not a positive int.
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"matmul_flops(): {name} must be a positive int, got {value!r}")
    return 2 * int(m) * int(k) * int(n)


def mlp_train_step_flops(sizes, batch: int, *, count_input_grad: bool = True) -> int:
    """FLOPs of one training step (forward, backward, update) of a dense MLP.

    Convention (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1;
    the "model FLOPs" of Chowdhery et al. 2022, PaLM, appendix B): only the matrix products
    count. A dense layer ``in -> out`` costs ``2 * B * in * out`` forward; backward computes the
    gradient with respect to the weights and to the layer's input, two products of the same
    size, so twice the forward. Per step::

        flops = 6 * B * sum(in_i * out_i)      over the layers i

    Biases, activations, the softmax and the SGD update are left out (they are O(B * width),
    under 1 % here). The frameworks do not compute the gradient with respect to the *data*
    (the first layer's input), so the work they really do is ``2 * B * in_0 * out_0`` less:
    ``count_input_grad=False`` gives that figure. The course reports fractions of peak with
    the convention (as "model FLOPs utilisation" does), and records both.

    Args:
        sizes: layer widths from input to output, e.g. ``(784, 1024, 1024, 10)``, an
            :class:`~course_lib.models.MLPSpec`, or a size name of :data:`SIZES`.
        batch: batch size B (int > 0).
        count_input_grad: count the first layer's input gradient (the convention) or not.

    Returns:
        FLOPs per step (int). Example: ``(64, 64, 64, 10)`` at batch 256 gives
        ``6 * 256 * (64*64 + 64*64 + 64*10) = 13_565_952``.

    Raises:
        ValueError: fewer than two sizes, a size or batch that is not a positive int.
    """
    sizes = _layer_sizes(sizes)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    pairs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    flops = 6 * int(batch) * pairs
    if not count_input_grad:
        flops -= 2 * int(batch) * sizes[0] * sizes[1]
    return flops


def parse_sizes(text: str | Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Size names or explicit widths -> ``[(name, widths), ...]``.

    Accepts a comma-separated string or a list: names from :data:`SIZES` (``"tiny"``) or
    widths joined by dashes (``"784-256-10"``, named by themselves).

    Raises:
        ValueError: an unknown name or malformed widths.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item in SIZES:
            out.append((item, SIZES[item]))
            continue
        try:
            widths = tuple(int(w) for w in item.split("-"))
        except ValueError:
            widths = ()
        if len(widths) < 2 or min(widths) <= 0:
            raise ValueError(f"unknown size {item!r}: use one of {', '.join(SIZES)} or widths "
                             "like 784-256-10")
        out.append((item, widths))
    if not out:
        raise ValueError("no sizes given")
    return out


# ---------------------------------------------------------------------------------------------
# The machine's limit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """A measured dense matmul rate.

    Attributes:
        gflops: GFLOP/s at the median time (the figure fractions of peak divide by).
        best_gflops: GFLOP/s at the fastest sample.
        shape: ``(m, k, n)`` of the product ``(m, k) @ (k, n)``.
        dtype: ``"float32"``, ``"float64"``, ``"tf32"`` or ``"bfloat16"``.
        framework: whose matmul: ``"numpy"`` (BLAS), ``"torch"``, ``"jax"``, ``"tensorflow"``.
        device: ``"cpu"`` or ``"gpu"``.
        timing: the :class:`Timing` behind it (None for a Peak rebuilt from its figures, e.g.
            ``Peak(**fields)`` in another process).
        threads: BLAS threads NumPy used (CPU), where known.
    """

    gflops: float
    best_gflops: float
    shape: tuple[int, int, int]
    dtype: str
    framework: str
    device: str
    timing: Timing | None = field(default=None, repr=False)
    threads: int | None = None

    def figures(self) -> dict:
        """The figures without the timing, JSON-friendly; ``Peak(**figures)`` rebuilds it
        (how a subprocess gets the same yardstick as the lesson)."""
        return {"gflops": self.gflops, "best_gflops": self.best_gflops,
                "shape": list(self.shape), "dtype": self.dtype, "framework": self.framework,
                "device": self.device, "threads": self.threads}

    def __str__(self) -> str:
        m, k, n = self.shape
        return (f"{self.framework} {self.dtype} matmul ({m}x{k}) @ ({k}x{n}) on {self.device}: "
                f"{self.gflops:.1f} GFLOP/s (best {self.best_gflops:.1f})")


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [info.get("num_threads") for info in threadpool_info()
              if info.get("user_api") == "blas"]
    return max(counts) if counts else None


def matmul_peak(
    n: int = 1024,
    dtype: str = "float32",
    *,
    m: int | None = 256,
    k: int | None = None,
    framework: str = "numpy",
    device: str = "cpu",
    repeats: int = 7,
    min_time: float = 0.2,
    seed: int = 0,
) -> Peak:
    """Measure the dense matmul rate ``(m, k) @ (k, n)`` in GFLOP/s: the machine's limit.

    On a CPU the default is NumPy's BLAS (OpenBLAS here) in float32. The default shape,
    ``(256, 1024) @ (1024, 1024)``, is the largest product of the reference MLP's biggest size
    at batch 256, so its training step can in principle reach this rate; a bigger square
    product may run somewhat faster (lesson 09 shows how the rate depends on the shape).
    On a GPU (``device="gpu"``) the framework's own matmul is used, ``framework="torch"`` or
    ``"jax"``, in ``"float32"`` (TF32 off), ``"tf32"`` or ``"bfloat16"``; sizes of 4096 or
    more are needed to approach a GPU's peak.

    Args:
        n: columns of the result (and ``k``, ``m`` when those are None).
        dtype: ``"float32"`` or ``"float64"`` anywhere; ``"tf32"``, ``"bfloat16"`` on a GPU.
        m, k: rows of the left operand and the inner size (None: ``n``).
        framework: ``"numpy"``, ``"torch"``, ``"jax"`` or ``"tensorflow"`` (imports it).
        device: ``"cpu"`` or ``"gpu"`` (``"numpy"`` is CPU only).
        repeats, min_time: as in :func:`measure`.
        seed: for the random operands.

    Returns:
        A :class:`Peak`; FLOPs per product from :func:`matmul_flops`.

    Raises:
        ValueError: an unknown framework, device or dtype, a dtype the device cannot do
            (``"tf32"``/``"bfloat16"`` on a CPU), or ``device="gpu"`` without a GPU visible to
            the framework.
    """
    m = n if m is None else m
    k = n if k is None else k
    flops = matmul_flops(m, k, n)
    if framework not in ("numpy", "torch", "jax", "tensorflow"):
        raise ValueError(f"matmul_peak(): unknown framework {framework!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"matmul_peak(): device must be 'cpu' or 'gpu', got {device!r}")
    if dtype not in ("float32", "float64", "tf32", "bfloat16"):
        raise ValueError(f"matmul_peak(): unknown dtype {dtype!r}")
    if device == "cpu" and dtype in ("tf32", "bfloat16"):
        raise ValueError(f"matmul_peak(): {dtype} is measured on a GPU only; on a CPU use "
                         "float32 (the course's dtype) or float64")
    if framework == "numpy" and device != "cpu":
        raise ValueError("matmul_peak(): NumPy runs on the CPU only; use framework='torch' "
                         "or 'jax' with device='gpu'")
    rng = np.random.default_rng(seed)
    a64 = rng.standard_normal((m, k))
    b64 = rng.standard_normal((k, n))
    np_dtype = np.float64 if dtype == "float64" else np.float32
    restore = None
    if framework == "numpy":
        a, b = a64.astype(np_dtype), b64.astype(np_dtype)
        out = np.empty((m, n), dtype=np_dtype)

        def fn():
            return np.matmul(a, b, out=out)

        sync = sync_none
    elif framework == "torch":
        import torch

        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("matmul_peak(): torch sees no CUDA GPU")
        dev = "cuda" if device == "gpu" else "cpu"
        t_dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(dtype, torch.float32)
        a = torch.from_numpy(a64).to(dev, t_dtype)
        b = torch.from_numpy(b64).to(dev, t_dtype)
        if dev == "cuda":
            restore = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

        def fn():
            return a @ b

        sync = sync_torch
    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        platform = "gpu" if device == "gpu" else "cpu"
        try:
            dev = jax.devices(platform)[0]
        except RuntimeError:
            raise ValueError(f"matmul_peak(): JAX sees no {platform} device") from None
        j_dtype = {"float64": jnp.float64, "bfloat16": jnp.bfloat16}.get(dtype, jnp.float32)
        a = jax.device_put(jnp.asarray(a64, dtype=j_dtype), dev)
        b = jax.device_put(jnp.asarray(b64, dtype=j_dtype), dev)
        precision = "tensorfloat32" if dtype == "tf32" else "highest"
        mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))

        def fn():
            return mm(a, b)

        sync = sync_jax
    else:  # tensorflow
        import tensorflow as tf

        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise ValueError("matmul_peak(): TensorFlow sees no GPU")
        tf_dtype = {"float64": tf.float64, "bfloat16": tf.bfloat16}.get(dtype, tf.float32)
        with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
            a = tf.constant(a64, dtype=tf_dtype)
            b = tf.constant(b64, dtype=tf_dtype)
        restore = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(dtype == "tf32")

        def fn():
            # reduce to one number: reading it back waits for the product, copies 4 bytes
            return tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1])

        sync = sync_tf
    try:
        timing = measure(fn, sync=sync, warmup=2, repeats=repeats, min_time=min_time)
    finally:
        if restore is not None and framework == "torch":
            torch.backends.cuda.matmul.allow_tf32 = restore
        elif restore is not None and framework == "tensorflow":
            tf.config.experimental.enable_tensor_float_32_execution(restore)
    return Peak(gflops=flops / timing.median / 1e9, best_gflops=flops / timing.min / 1e9,
                shape=(m, k, n), dtype=dtype, framework=framework, device=device,
                timing=timing, threads=_blas_threads() if framework == "numpy" else None)


def gpu_matmul_peaks(n: int = 8192, framework: str = "torch") -> list[Peak]:
    """The GPU's matmul rate in float32, TF32 and bfloat16, or ``[]`` when there is no GPU.

    Uses ``framework``'s own matmul (``"torch"`` or ``"jax"``; imports it). Never raises for a
    missing GPU: a CPU-only machine gets an empty list.
    """
    try:
        if framework == "torch":
            import torch

            present = torch.cuda.is_available()
        else:
            import jax

            present = any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # framework missing or broken: no GPU figures
        return []
    if not present:
        return []
    return [matmul_peak(n, dtype, m=n, framework=framework, device="gpu")
            for dtype in ("float32", "tf32", "bfloat16")]


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average (runnable processes) or None where the OS has none.

    Above the number of cores, other programs competed for the CPU while we measured.
    """
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def record_bench(
    lesson: str,
    measured: Timing | Peak,
    *,
    framework: str | None = None,
    backend: str | None = None,
    mode: str | None = None,
    model: str | None = None,
    flops: float | None = None,
    peak: Peak | float | None = None,
    ran_on: str = "cpu",
    key: bool = False,
    results_dir=None,
    **extra: Any,
) -> list[dict]:
    """Record a benchmark's figures with :func:`course_lib.results.record` (device, versions).

    For a :class:`Timing`: ``step_time`` (s, the median; ``q1``, ``q3``, ``iqr``, ``min``,
    ``max``, ``repeats``, ``number`` as extra fields), ``first_call_time`` (s); with ``flops``
    also ``achieved_gflops`` (GFLOP/s) and, with ``peak``, ``fraction_of_peak`` (fraction =
    achieved / peak GFLOP/s, both at the median; with a :class:`Peak`, also ``best_fraction``
    from the fastest step and the fastest matmul sample, which a busy machine distorts less). For a :class:`Peak`: ``matmul_peak``
    (GFLOP/s, with ``best_gflops``, ``shape``, ``dtype``, ``threads``; ``model`` defaults to
    ``"matmul_MxKxN"``). Every record also gets
    ``ran_on`` (``"cpu"``/``"gpu"``: where the timed work ran, which the machine's device
    description alone does not say) and ``load_1min`` (:func:`load_average`).

    Args:
        lesson: lesson id (``"09"``).
        measured: a :class:`Timing` or a :class:`Peak`.
        framework: required for a Timing (``"torch"``, ``"jax"``, ``"tensorflow"``,
            ``"keras"``, ``"sklearn"``); a Peak uses its own.
        backend, mode, model: as in ``results.record`` (``model`` e.g. ``"mlp_large"``).
        flops: FLOPs per call (e.g. :func:`mlp_train_step_flops`).
        peak: the :class:`Peak` (or its GFLOP/s) that ``fraction_of_peak`` divides by.
        ran_on: ``"cpu"`` or ``"gpu"``.
        key: mark ``fraction_of_peak`` (else ``step_time``) as a headline figure.
        results_dir: overrides the results directory.
        **extra: further JSON-serialisable fields (``batch``, ``sizes``, ``source``...).

    Returns:
        The records written, in order.

    Raises:
        ValueError: a Timing without ``framework``, ``peak`` without ``flops``, or anything
            ``results.record`` rejects.
    """
    from course_lib import results

    common = {"ran_on": ran_on, "load_1min": load_average(), **extra}
    if isinstance(measured, Peak) and model is None:  # one "model" per shape, for results.latest
        model = "matmul_" + "x".join(str(s) for s in measured.shape)
    if model is not None:
        common["model"] = model
    if isinstance(measured, Peak):
        p = measured
        return [results.record(
            lesson, "matmul_peak", p.gflops, "GFLOP/s", framework=p.framework,
            backend=backend, mode=mode or p.dtype, results_dir=results_dir, key=key,
            best_gflops=p.best_gflops, shape=list(p.shape), dtype=p.dtype,
            threads=p.threads, iqr_s=p.timing.iqr if p.timing else None,
            median_s=p.timing.median if p.timing else None,
            **{k: v for k, v in common.items() if k != "ran_on"}, ran_on=p.device)]
    if not isinstance(measured, Timing):
        raise ValueError(f"record_bench(): expected a Timing or a Peak, got {type(measured).__name__}")
    if not framework:
        raise ValueError("record_bench(): framework= is required for a Timing")
    if peak is not None and flops is None:
        raise ValueError("record_bench(): a fraction of peak needs flops=")
    t = measured
    spread = {"q1": t.q1, "q3": t.q3, "iqr": t.iqr, "min": t.min, "max": t.max,
              "repeats": t.repeats, "number": t.number, "warmup": t.warmup}
    if flops is not None:
        common["flops"] = float(flops)
    kw = {"framework": framework, "backend": backend, "mode": mode, "results_dir": results_dir}
    rows = [results.record(lesson, "step_time", t.median, "s", **kw, **spread, **common,
                           key=key and (flops is None or peak is None)),
            results.record(lesson, "first_call_time", t.first_call, "s", **kw, **common)]
    if flops is not None:
        rows.append(results.record(lesson, "achieved_gflops", t.gflops(flops), "GFLOP/s",
                                   **kw, **common))
        if peak is not None:
            peak_gflops = peak.gflops if isinstance(peak, Peak) else float(peak)
            best = {}
            if isinstance(peak, Peak):  # fastest step over fastest matmul: less hurt by load
                best = {"best_fraction": flops / t.min / 1e9 / peak.best_gflops,
                        "peak_dtype": peak.dtype, "peak_framework": peak.framework}
            rows.append(results.record(lesson, "fraction_of_peak",
                                       t.gflops(flops) / peak_gflops, "fraction", **kw,
                                       peak_gflops=peak_gflops, key=key, **best, **common))
    return rows
