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

Measuring against a reference
-----------------------------
:func:`interleaved` times a training step and a reference product (:func:`matmul_reference`,
by default the NumPy/BLAS float32 matmul rate) in alternating samples in one loop, so that
load on the machine hits both alike; its :class:`Interleaved` gives the per-pair ratio (step
FLOP rate / reference rate), its median and a bootstrap interval, and refuses a number
("machine too busy to measure") when the reference's own spread exceeds
:data:`BUSY_THRESHOLD` or its threads got less than :data:`MIN_CPU_SHARE` of the cores.
:func:`theoretical_peak` gives the CPU's float32 peak on paper; :func:`load_module` imports
the step modules lesson 09 writes.

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
    "BUSY_THRESHOLD",
    "MIN_CPU_SHARE",
    "Interleaved",
    "Peak",
    "Reference",
    "SyncError",
    "TheoreticalPeak",
    "Timing",
    "bootstrap_median_interval",
    "bootstrap_ratio_interval",
    "gpu_matmul_peaks",
    "interleaved",
    "load_average",
    "load_module",
    "matmul_flops",
    "matmul_peak",
    "matmul_reference",
    "measure",
    "mlp_train_step_flops",
    "parse_sizes",
    "record_bench",
    "record_interleaved",
    "sync_jax",
    "sync_none",
    "sync_tf",
    "sync_torch",
    "theoretical_peak",
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
    _check_arguments("measure", fn, sync, warmup, min_time, max_number)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"measure(): repeats must be an int >= 1, got {repeats!r}")
    first_call, number = _warm_up(fn, sync, warmup, min_time, max_number, clock)
    times = [_sample(fn, sync, number, clock) for _ in range(repeats)]
    return Timing(times=tuple(times), number=number, first_call=first_call, warmup=warmup)


def _check_arguments(caller, fn, sync, warmup, min_time, max_number) -> None:
    """The argument checks :func:`measure` and :func:`interleaved` share."""
    if sync is None or not callable(sync):
        raise SyncError(
            f"{caller}() needs sync=: bench.sync_jax (JAX), bench.sync_torch (PyTorch), "
            "bench.sync_tf (TensorFlow) or bench.sync_none (NumPy, scikit-learn, Keras "
            f"train_on_batch); got {sync!r}"
        )
    if not callable(fn):
        raise ValueError(f"{caller}(): fn must be callable, got {type(fn).__name__}")
    for name, value, low in (("warmup", warmup, 0), ("max_number", max_number, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{caller}(): {name} must be an int >= {low}, got {value!r}")
    if not (isinstance(min_time, (int, float)) and math.isfinite(min_time) and min_time >= 0):
        raise ValueError(f"{caller}(): min_time must be a number >= 0, got {min_time!r}")


def _warm_up(fn, sync, warmup, min_time, max_number, clock) -> tuple[float, int]:
    """The first call (timed alone, sync checked) and the warm-up; returns
    ``(first_call seconds, calls per sample)``."""
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
    return first_call, number


def _sample(fn, sync, number, clock) -> float:
    """One timed sample: ``number`` synchronised calls; returns seconds per call."""
    start = clock()
    for _ in range(number):
        sync(fn())
    return (clock() - start) / number


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
    ref = matmul_reference(n, dtype, m=m, k=k, framework=framework, device=device, seed=seed)
    try:
        timing = measure(ref.fn, sync=ref.sync, warmup=2, repeats=repeats, min_time=min_time)
    finally:
        ref.restore()
    return Peak(gflops=ref.flops / timing.median / 1e9, best_gflops=ref.flops / timing.min / 1e9,
                shape=ref.shape, dtype=dtype, framework=framework, device=device,
                timing=timing, threads=_blas_threads() if framework == "numpy" else None)


@dataclass(frozen=True)
class Reference:
    """A dense matrix product to time next to a training step (see :func:`interleaved`).

    Attributes:
        fn: computes ``(m, k) @ (k, n)`` once; ``sync(fn())`` waits for it.
        sync: the synchronisation for ``fn``'s result.
        flops: FLOPs per call (:func:`matmul_flops`).
        shape: ``(m, k, n)``.
        dtype, framework, device: as in :func:`matmul_peak`.
        restore: undoes what building it changed (the TF32 switch on a GPU); call it when done.
    """

    fn: Callable[[], Any]
    sync: Callable[[Any], Any]
    flops: int
    shape: tuple[int, int, int]
    dtype: str
    framework: str
    device: str
    restore: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def name(self) -> str:
        """What the reference is, e.g. ``"NumPy/BLAS float32 matmul rate"``."""
        who = {"numpy": "NumPy/BLAS", "torch": "PyTorch", "jax": "JAX/XLA",
               "tensorflow": "TensorFlow"}[self.framework]
        where = "" if self.device == "cpu" else f" on the {self.device.upper()}"
        return f"{who} {self.dtype} matmul rate{where}"


def matmul_reference(
    n: int = 1024,
    dtype: str = "float32",
    *,
    m: int | None = 256,
    k: int | None = None,
    framework: str = "numpy",
    device: str = "cpu",
    seed: int = 0,
) -> Reference:
    """The product :func:`matmul_peak` times, ready to call: ``(m, k) @ (k, n)``.

    Arguments and errors as in :func:`matmul_peak` (which measures this reference alone);
    :func:`interleaved` times it in alternation with a training step. Call ``restore()``
    on the result when done (it switches TF32 back on a GPU).
    """
    m = n if m is None else m
    k = n if k is None else k
    flops = matmul_flops(m, k, n)
    if framework not in ("numpy", "torch", "jax", "tensorflow"):
        raise ValueError(f"matmul_reference(): unknown framework {framework!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"matmul_reference(): device must be 'cpu' or 'gpu', got {device!r}")
    if dtype not in ("float32", "float64", "tf32", "bfloat16"):
        raise ValueError(f"matmul_reference(): unknown dtype {dtype!r}")
    if device == "cpu" and dtype in ("tf32", "bfloat16"):
        raise ValueError(f"matmul_reference(): {dtype} is measured on a GPU only; on a CPU use "
                         "float32 (the course's dtype) or float64")
    if framework == "numpy" and device != "cpu":
        raise ValueError("matmul_reference(): NumPy runs on the CPU only; use framework='torch' "
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
            raise ValueError("matmul_reference(): torch sees no CUDA GPU")
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
            raise ValueError(f"matmul_reference(): JAX sees no {platform} device") from None
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
            raise ValueError("matmul_reference(): TensorFlow sees no GPU")
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

    def restore_flags():
        if restore is not None and framework == "torch":
            torch.backends.cuda.matmul.allow_tf32 = restore
        elif restore is not None and framework == "tensorflow":
            tf.config.experimental.enable_tensor_float_32_execution(restore)

    return Reference(fn=fn, sync=sync, flops=flops, shape=(m, k, n), dtype=dtype,
                     framework=framework, device=device, restore=restore_flags)


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
# A training step against the reference, in alternation
# ---------------------------------------------------------------------------------------------

#: The reference's relative spread (IQR / median of its rates, measured in the same loop as
#: the step) above which :class:`Interleaved` says "machine too busy to measure". The course
#: asks a ratio measured on a loaded machine to stay within 15 % of a quiet run's; when the
#: middle half of the reference's own samples already spans more than 15 % of its median,
#: the load is changing faster than a sample lasts, and no ratio can promise that.
BUSY_THRESHOLD = 0.15

#: The least share of the wall-clock time the reference's BLAS threads may run on a CPU
#: (process CPU time / wall time / threads, median over the pairs) before :class:`Interleaved`
#: says "machine too busy to measure". Below it, other programs held the cores: a threaded
#: BLAS then waits at every barrier for its descheduled thread, and on a busy 2-core machine
#: NumPy's product fell from about 100 to 17 GFLOP/s with a steady spread, which the IQR test
#: alone does not see. The ratio then measures how each library's threads cope with sharing
#: (lesson 09, section 5), not the framework.
MIN_CPU_SHARE = 0.8

#: Seconds :func:`interleaved` waits (untimed) before each *step* sample so that the
#: reference's idle BLAS threads stop spinning: OpenBLAS's threads keep polling for work for up
#: to about 2**28 cycles (0.1 s here) after a call (its THREAD_TIMEOUT), which on 2 cores slows
#: the step that follows. Not before the reference: waking its sleeping threads after a pause
#: made its own samples spread more (benchmarks/lesson09/run7-quiet-settle).
SETTLE_S = 0.15

BUSY_TEXT = "machine too busy to measure"


@dataclass(frozen=True)
class Interleaved:
    """A training step and a reference timed in alternating samples (:func:`interleaved`).

    Each *pair* is one sample of the reference and one of the step, taken back to back (the
    order swaps every pair, so a slow drift of the machine's load favours neither). Load that
    slows the machine during a pair slows both of its samples, so the ratio of their rates
    moves much less than either rate alone.

    Attributes:
        step: the step's :class:`Timing` (s per step), samples in pair order.
        reference: the reference's :class:`Timing` (s per call), samples in pair order.
        step_flops: FLOPs of one step; reference_flops: FLOPs of one reference call.
        reference_name: what the reference is, e.g. ``"NumPy/BLAS float32 matmul rate"``.
        order: the calls' labels in the order their samples ran (``"reference"``/``"step"``):
            how a reader (and the test) can see that they alternated.
        threshold: the busy threshold on the reference's relative IQR (:data:`BUSY_THRESHOLD`).
        cpu_share: per reference sample, the process's CPU time over the wall time over the
            reference's threads (None when not measured: a GPU reference, unknown threads).
        min_cpu_share: the least median ``cpu_share`` accepted (:data:`MIN_CPU_SHARE`).
    """

    step: Timing
    reference: Timing
    step_flops: float
    reference_flops: float
    reference_name: str
    order: tuple[str, ...]
    threshold: float = BUSY_THRESHOLD
    cpu_share: tuple[float, ...] | None = None
    min_cpu_share: float = MIN_CPU_SHARE

    @property
    def ratios(self) -> np.ndarray:
        """Per pair: the step's FLOP rate over the reference's (dimensionless)."""
        step_rate = self.step_flops / np.asarray(self.step.times)
        reference_rate = self.reference_flops / np.asarray(self.reference.times)
        return step_rate / reference_rate

    @property
    def reference_gflops(self) -> np.ndarray:
        """The reference's rate in each pair (GFLOP/s)."""
        return self.reference_flops / np.asarray(self.reference.times) / 1e9

    @property
    def reference_spread(self) -> float:
        """Relative IQR of the reference's rates: ``IQR / median`` (dimensionless)."""
        rates = self.reference_gflops
        q1, med, q3 = np.percentile(rates, [25, 50, 75])
        return float((q3 - q1) / med)

    @property
    def median_cpu_share(self) -> float | None:
        """Median of :attr:`cpu_share`, or None when not measured."""
        return float(np.median(self.cpu_share)) if self.cpu_share else None

    @property
    def busy_reason(self) -> str | None:
        """Why the machine was too busy, or None when it was not."""
        if self.reference_spread > self.threshold:
            return (f"the {self.reference_name} varied by {self.reference_spread:.0%} "
                    f"(IQR/median), more than {self.threshold:.0%}")
        share = self.median_cpu_share
        if share is not None and share < self.min_cpu_share:
            return (f"the reference's threads ran only {share:.0%} of the time (less than "
                    f"{self.min_cpu_share:.0%}): other programs held the cores")
        return None

    @property
    def too_busy(self) -> bool:
        """True when the reference's spread exceeds :attr:`threshold`, or its threads got
        less than :attr:`min_cpu_share` of the cores (see :data:`MIN_CPU_SHARE`)."""
        return self.busy_reason is not None

    @property
    def ratio(self) -> float:
        """Median of :attr:`ratios`."""
        return float(np.median(self.ratios))

    @property
    def ratio_iqr(self) -> tuple[float, float]:
        """First and third quartiles of :attr:`ratios`."""
        q1, q3 = np.percentile(self.ratios, [25, 75])
        return float(q1), float(q3)

    def ratio_interval(self, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the median ratio (Efron & Tibshirani 1993,
        *An Introduction to the Bootstrap*, ch. 13): ``resamples`` resamples of the pairs
        with replacement, seeded, so the interval is reproducible."""
        return bootstrap_median_interval(self.ratios, confidence, resamples, seed)

    def to_dict(self) -> dict:
        """Every field, JSON-friendly; :meth:`from_dict` rebuilds it (how a worker process
        hands its measurement back)."""
        import dataclasses

        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Interleaved:
        """The :class:`Interleaved` that :meth:`to_dict` wrote."""
        fields = dict(data)
        for name in ("step", "reference"):
            t = fields[name]
            fields[name] = Timing(times=tuple(t["times"]), number=t["number"],
                                  first_call=t["first_call"], warmup=t["warmup"])
        fields["order"] = tuple(fields["order"])
        if fields.get("cpu_share") is not None:
            fields["cpu_share"] = tuple(fields["cpu_share"])
        return cls(**fields)

    def summary(self) -> dict:
        """JSON-friendly figures: ratio, quartiles, interval, the reference's rate and spread,
        and ``status`` ``"measured"`` or ``"too busy"``."""
        low, high = self.ratio_interval()
        q1, q3 = self.ratio_iqr
        return {"ratio": self.ratio, "ratio_q1": q1, "ratio_q3": q3, "ratio_ci_low": low,
                "ratio_ci_high": high, "pairs": len(self.order) // 2,
                "reference": self.reference_name,
                "reference_gflops": float(np.median(self.reference_gflops)),
                "reference_spread": self.reference_spread, "busy_threshold": self.threshold,
                "reference_cpu_share": self.median_cpu_share,
                "min_cpu_share": self.min_cpu_share,
                "status": "too busy" if self.too_busy else "measured",
                "busy_reason": self.busy_reason}

    def __str__(self) -> str:
        if self.too_busy:
            return f"{BUSY_TEXT}: {self.busy_reason}"
        low, high = self.ratio_interval()
        return (f"{self.ratio:.2f} x the {self.reference_name} (95 % interval {low:.2f}-"
                f"{high:.2f}, {len(self.order) // 2} pairs; reference "
                f"{np.median(self.reference_gflops):.1f} GFLOP/s, spread "
                f"{self.reference_spread:.0%})")


def bootstrap_median_interval(values, confidence: float = 0.95, resamples: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (Efron & Tibshirani 1993).

    Args:
        values: one or more finite numbers.
        confidence: in (0, 1).
        resamples: bootstrap resamples (int >= 1).
        seed: for NumPy's generator (the interval is reproducible).

    Returns:
        ``(low, high)``; both equal the value when there is only one.

    Raises:
        ValueError: no values, a value that is not finite, or a confidence outside (0, 1).
    """
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0 or not np.isfinite(data).all():
        raise ValueError("bootstrap_median_interval(): give one or more finite numbers")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(int(resamples), data.size)), axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ratio_interval(times_a, times_b, confidence: float = 0.95,
                             resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(times_a) / median(times_b)``.

    For two steps timed in separate loops (e.g. a competitor's step over JAX's): each
    sample set is resampled with replacement on its own (Efron & Tibshirani 1993, ch. 13).

    Raises:
        ValueError: an empty or non-finite sample set, a confidence outside (0, 1).
    """
    a = np.asarray(times_a, dtype=float).ravel()
    b = np.asarray(times_b, dtype=float).ravel()
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("bootstrap_ratio_interval(): give finite samples on both sides")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    ratios = (np.median(rng.choice(a, size=(int(resamples), a.size)), axis=1)
              / np.median(rng.choice(b, size=(int(resamples), b.size)), axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def interleaved(
    step: Callable[[], Any],
    reference: Reference,
    *,
    sync: Callable[[Any], Any],
    flops: float,
    steps_per_call: int = 1,
    pairs: int = 15,
    warmup: int = 2,
    min_time: float = 0.1,
    max_number: int = 100_000,
    threshold: float = BUSY_THRESHOLD,
    min_cpu_share: float = MIN_CPU_SHARE,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
    settle: float = SETTLE_S,
    sleep: Callable[[float], Any] = time.sleep,
) -> Interleaved:
    """Time a training step and a reference product in alternating samples, in one loop.

    Both get :func:`measure`'s treatment first (first call alone, checked ``sync``, warm-up,
    samples of at least ``min_time``); then ``pairs`` times: one sample of the reference and
    one of the step, back to back, the order swapped every pair. Timing the reference
    *separately* (before the steps) lets a change of load between the two decide the ratio:
    on a busy 2-core machine that once read as a step at 7 times "the peak".

    Args:
        step: the training step, called with no arguments.
        reference: from :func:`matmul_reference`.
        sync: the step's synchronisation (see :func:`measure`).
        flops: FLOPs of one training step (:func:`mlp_train_step_flops`).
        steps_per_call: training steps one call of ``step`` makes (e.g. ``fit`` over 8
            batches); times are reported per step.
        pairs: samples of each (int >= 2; 15 or more for a useful interval).
        warmup, min_time, max_number, clock: as in :func:`measure`.
        threshold: the busy threshold on the reference's relative IQR.
        min_cpu_share: the least share of the cores the reference's threads must get
            (:data:`MIN_CPU_SHARE`); checked on a CPU reference only.
        threads: the reference's threads (None: NumPy's BLAS threads from threadpoolctl).
        cpu_clock: the process's CPU-time clock (tests pass a fake one).
        settle: seconds to wait, untimed, before each step sample (:data:`SETTLE_S`; >= 0).
        sleep: the wait (tests pass a fake one).

    Returns:
        An :class:`Interleaved` (times per step and per reference call, in pair order).

    Raises:
        SyncError, ValueError: as :func:`measure`; ``pairs`` < 2, ``flops`` or
            ``steps_per_call`` not positive.
    """
    _check_arguments("interleaved", step, sync, warmup, min_time, max_number)
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"interleaved(): pairs must be an int >= 2, got {pairs!r}")
    if not (isinstance(settle, (int, float)) and 0 <= settle < 60):
        raise ValueError(f"interleaved(): settle must be seconds in [0, 60), got {settle!r}")
    if not (isinstance(flops, (int, float, np.integer)) and flops > 0):
        raise ValueError(f"interleaved(): flops must be a positive number, got {flops!r}")
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) \
            or steps_per_call < 1:
        raise ValueError(f"interleaved(): steps_per_call must be an int >= 1, "
                         f"got {steps_per_call!r}")
    ref_first, ref_number = _warm_up(reference.fn, reference.sync, warmup, min_time,
                                     max_number, clock)
    step_first, step_number = _warm_up(step, sync, warmup, min_time, max_number, clock)
    if threads is None and reference.device == "cpu" and reference.framework == "numpy":
        threads = _blas_threads()
    order, ref_times, step_times, shares = [], [], [], []
    for i in range(pairs):
        for label in (("reference", "step") if i % 2 == 0 else ("step", "reference")):
            order.append(label)
            if settle and label == "step":
                sleep(settle)
            if label == "reference":
                cpu_start, wall_start = cpu_clock(), clock()
                ref_times.append(_sample(reference.fn, reference.sync, ref_number, clock))
                wall = clock() - wall_start
                if threads and wall > 0:
                    shares.append((cpu_clock() - cpu_start) / wall / threads)
            else:
                step_times.append(_sample(step, sync, step_number, clock) / steps_per_call)
    return Interleaved(
        step=Timing(times=tuple(step_times), number=step_number, first_call=step_first,
                    warmup=warmup),
        reference=Timing(times=tuple(ref_times), number=ref_number, first_call=ref_first,
                         warmup=warmup),
        step_flops=float(flops), reference_flops=float(reference.flops),
        reference_name=reference.name, order=tuple(order), threshold=threshold,
        cpu_share=tuple(shares) if threads and reference.device == "cpu" else None,
        min_cpu_share=min_cpu_share)


# ---------------------------------------------------------------------------------------------
# The processor's theoretical float32 rate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TheoreticalPeak:
    """A CPU's float32 peak on paper: ``cores x clock x FLOPs per cycle``.

    Attributes:
        gflops: the product, GFLOP/s.
        cores: physical cores this process may use.
        ghz: the clock used (GHz) and ``clock_source``: where it was read.
        flops_per_cycle: float32 FLOPs per core per cycle (``fma_units x lanes x 2``).
        vector: the widest vector extension found (``"avx512f"``, ``"avx2+fma"``...).
        assumption: what the figure assumes that the OS does not report.
    """

    gflops: float
    cores: int
    ghz: float
    clock_source: str
    flops_per_cycle: int
    vector: str
    assumption: str

    def __str__(self) -> str:
        return (f"theoretical float32 peak {self.gflops:.0f} GFLOP/s = {self.cores} cores x "
                f"{self.ghz:.2f} GHz ({self.clock_source}) x {self.flops_per_cycle} FLOP/cycle "
                f"({self.vector}); assumes {self.assumption}")


def theoretical_peak(cpuinfo: str | None = None, lscpu: str | None = None,
                     usable_cpus: int | None = None) -> TheoreticalPeak | None:
    """The CPU's theoretical float32 rate from ``/proc/cpuinfo`` (and ``lscpu``), or None.

    FLOPs per cycle per core from the vector flags: ``avx512f`` 16 float32 lanes, ``avx2``
    with ``fma`` 8 lanes, each fused multiply-add counting 2 FLOPs, times **2 FMA units per
    core** (Intel 64 and IA-32 Architectures Optimization Reference Manual: two FMA ports on
    Haswell and later client cores and on Xeon Scalable Gold 6000/Platinum; some Xeon
    Silver/Bronze and Gold 5000 parts have one 512-bit unit, which halves the figure; the OS
    does not report this). Without FMA: ``avx`` 8 lanes x (1 add + 1 multiply). The clock is
    ``lscpu``'s "CPU max MHz" where given, else ``/proc/cpuinfo``'s "cpu MHz" (under a
    hypervisor often the nominal clock; heavy AVX-512 work may run slower). Cores: physical
    cores (hyperthreads share their core's units), at most the CPUs this process may use.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (None: read it; not Linux: None returned).
        lscpu: the output of ``lscpu`` (None: run it if present; optional).
        usable_cpus: CPUs this process may use (None: ``os.sched_getaffinity``).

    Returns:
        A :class:`TheoreticalPeak`, or None where the flags or the clock cannot be read
        (not Linux, not x86, no clock figure).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            return None
    if lscpu is None:
        try:
            import subprocess

            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                   env={**os.environ, "LC_ALL": "C"}).stdout
        except (OSError, subprocess.SubprocessError):
            lscpu = ""
    fields: dict[str, list[str]] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, []).append(value)
    flags = set(fields.get("flags", [""])[0].split())
    if "avx512f" in flags:
        vector, per_cycle = "avx512f", 2 * 16 * 2
    elif "avx2" in flags and "fma" in flags:
        vector, per_cycle = "avx2+fma", 2 * 8 * 2
    elif "avx" in flags:
        vector, per_cycle = "avx", 8 * 2
    elif "sse2" in flags:
        vector, per_cycle = "sse2", 4 * 2
    else:
        return None
    info = {}
    for line in (lscpu or "").splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info[key] = value
    ghz, source = None, ""
    try:
        if info.get("CPU max MHz"):
            ghz, source = float(info["CPU max MHz"]) / 1000, "lscpu CPU max MHz"
        elif fields.get("cpu MHz"):
            ghz, source = float(fields["cpu MHz"][0]) / 1000, "/proc/cpuinfo cpu MHz"
    except ValueError:
        ghz = None
    if not ghz:
        return None
    cores_ids = set(zip(fields.get("physical id", []), fields.get("core id", [])))
    logical = len(fields.get("processor", [])) or (os.cpu_count() or 1)
    physical = len(cores_ids) if cores_ids else logical
    if usable_cpus is None:
        try:
            usable_cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            usable_cpus = logical
    threads_per_core = max(1, logical // max(1, physical))
    cores = max(1, min(physical, usable_cpus // threads_per_core or 1))
    return TheoreticalPeak(gflops=cores * ghz * per_cycle, cores=cores, ghz=ghz,
                           clock_source=source, flops_per_cycle=per_cycle, vector=vector,
                           assumption="2 FMA units per core and that clock under load")


# ---------------------------------------------------------------------------------------------
# The lesson's step code as a module
# ---------------------------------------------------------------------------------------------


def load_module(path, name: str | None = None):
    """Import the Python file ``path`` as a fresh module (re-read on every call).

    How lesson 09 and ``python -m course_tools bench`` load the step modules the lesson
    writes with ``%%writefile`` (``torch_step.py``...): no ``sys.path`` change, and a file
    rewritten by the lesson is read again instead of served from ``sys.modules``.

    Raises:
        FileNotFoundError: no such file (run the lesson's ``%%writefile`` cell first).
    """
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the lesson's %%writefile cell "
                                "that writes it first")
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
) -> list[Any]:
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

    common: dict[str, Any] = {"ran_on": ran_on, "load_1min": load_average(), **extra}
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
    spread: dict[str, Any] = {"q1": t.q1, "q3": t.q3, "iqr": t.iqr, "min": t.min, "max": t.max,
              "repeats": t.repeats, "number": t.number, "warmup": t.warmup}
    if flops is not None:
        common["flops"] = float(flops)
    kw: dict[str, Any] = {"framework": framework, "backend": backend, "mode": mode,
                          "results_dir": results_dir}
    rows = [results.record(lesson, "step_time", t.median, "s", **kw, **spread, **common,
                           key=key and (flops is None or peak is None)),
            results.record(lesson, "first_call_time", t.first_call, "s", **kw, **common)]
    if flops is not None:
        rows.append(results.record(lesson, "achieved_gflops", t.gflops(flops), "GFLOP/s",
                                   **kw, **common))
        if peak is not None:
            peak_gflops = peak.gflops if isinstance(peak, Peak) else float(peak)
            best: dict[str, Any] = {}
            if isinstance(peak, Peak):  # fastest step over fastest matmul: less hurt by load
                best = {"best_fraction": flops / t.min / 1e9 / peak.best_gflops,
                        "peak_dtype": peak.dtype, "peak_framework": peak.framework}
            rows.append(results.record(lesson, "fraction_of_peak",
                                       t.gflops(flops) / peak_gflops, "fraction", **kw,
                                       peak_gflops=peak_gflops, key=key, **best, **common))
    return rows


def record_interleaved(
    lesson: str,
    measured: Interleaved,
    *,
    framework: str,
    backend: str | None = None,
    mode: str | None = None,
    model: str | None = None,
    ran_on: str = "cpu",
    key: bool = False,
    results_dir=None,
    **extra: Any,
) -> list[Any]:
    """Record an :class:`Interleaved` measurement with :func:`course_lib.results.record`.

    Writes the step's figures as :func:`record_bench` does (``step_time``,
    ``first_call_time``, ``achieved_gflops``; no ``fraction_of_peak``), then
    ``reference_rate`` (GFLOP/s: the median of the reference samples taken in the same loop,
    with ``reference`` (its name), ``reference_spread``, ``reference_cpu_share`` and
    ``status`` ``"measured"``/``"too busy"``), and, unless the machine was too busy,
    ``ratio_to_reference`` (the median per-pair ratio, unit ``"ratio"``, with ``ratio_q1``,
    ``ratio_q3``, ``ratio_ci_low``, ``ratio_ci_high``: a 95 % bootstrap interval).

    Returns:
        The records written, in order.

    Raises:
        ValueError: as :func:`record_bench` and ``results.record``.
    """
    from course_lib import results

    if not isinstance(measured, Interleaved):
        raise ValueError(f"record_interleaved(): expected an Interleaved, got "
                         f"{type(measured).__name__}")
    summary = measured.summary()
    rows = record_bench(lesson, measured.step, framework=framework, backend=backend, mode=mode,
                        model=model, flops=measured.step_flops, ran_on=ran_on,
                        key=key and measured.too_busy, results_dir=results_dir,
                        interleaved=True, **extra)
    common: dict[str, Any] = {"framework": framework, "backend": backend, "mode": mode, "model": model,
              "results_dir": results_dir, "ran_on": ran_on, "load_1min": load_average(),
              "reference": summary["reference"], **extra}
    rows.append(results.record(
        lesson, "reference_rate", summary["reference_gflops"], "GFLOP/s", **common,
        reference_spread=summary["reference_spread"], busy_threshold=summary["busy_threshold"],
        reference_cpu_share=summary["reference_cpu_share"],
        min_cpu_share=summary["min_cpu_share"], status=summary["status"],
        busy_reason=summary["busy_reason"], pairs=summary["pairs"]))
    if not measured.too_busy:
        rows.append(results.record(
            lesson, "ratio_to_reference", summary["ratio"], "ratio", **common, key=key,
            **{name: summary[name] for name in ("ratio_q1", "ratio_q3", "ratio_ci_low",
                                                "ratio_ci_high", "pairs")}))
    return rows
