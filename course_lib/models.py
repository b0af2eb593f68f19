"""Architectures as plain data, shared initial weights, and a float64 NumPy reference.

This is what lets every lesson show "same model, same numbers" (CURRICULUM section 3,
principle 2): the weights are made **once**, here, in NumPy, and every framework copies them in
with :mod:`course_lib.convert`. The float64 functions below are the yardstick the frameworks'
float32 outputs are compared with (:mod:`course_lib.parity`).

The lessons write their own ``nn.Module``, Keras model and JAX functions; nothing here builds a
framework model.

Canonical weight layout
-----------------------
The course stores weights as a ``list`` with one ``dict`` per layer, in the order the data flows
through the layers, each with a ``"kernel"`` and a ``"bias"`` (NumPy ``float32``). The layout is
the one Keras, JAX/Flax and TensorFlow use, so only PyTorch needs transposing:

=========  ================================  ===============
layer      ``"kernel"``                      ``"bias"``
=========  ================================  ===============
dense      ``(in_features, out_features)``   ``(out,)``
conv 2-D   ``(kh, kw, in_ch, out_ch)`` HWIO  ``(out_ch,)``
=========  ================================  ===============

A dense layer computes ``y = x @ kernel + bias`` with ``x`` of shape ``(batch, in_features)``.
Images are NHWC: ``(batch, height, width, channels)``.

Nothing in this module imports a deep-learning framework.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np


class LayerWeights(TypedDict):
    """One layer's weights in the course's canonical layout (float arrays).

    ``kernel``: dense ``(in, out)``; convolution ``(kh, kw, in, out)`` (HWIO).
    ``bias``: ``(out,)``. A model's weights are a ``list[LayerWeights]``, input layer first.
    """

    kernel: np.ndarray
    bias: np.ndarray


__all__ = [
    "ACTIVATIONS",
    "BIAS_INIT_LIMIT",
    "CNNSpec",
    "MLPSpec",
    "check_weights",
    "cnn_forward",
    "count_params",
    "glorot_limit",
    "init_weights",
    "layer_shapes",
    "mlp_forward",
    "sgd_reference",
    "softmax_cross_entropy",
]

#: Hidden-layer activations the reference implements (the output layer has none: it gives logits).
ACTIVATIONS = ("relu", "tanh", "sigmoid")

#: Biases are drawn from U(-BIAS_INIT_LIMIT, +BIAS_INIT_LIMIT). Frameworks start biases at zero;
#: the course does not, so that a bias copied into the wrong place changes the outputs.
BIAS_INIT_LIMIT = 0.1


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Architecture specs
# ---------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class MLPSpec:
    """A multi-layer perceptron: dense -> activation -> ... -> dense (logits).

    The defaults are the course's reference MLP for scikit-learn's digits: 8x8 images flattened
    to 64 features, two hidden layers of 64 units, 10 classes.

    Attributes:
        in_features: number of input features (int > 0).
        hidden: widths of the hidden layers, in order (tuple of ints > 0; a list is accepted and
            stored as a tuple, so papermill parameters can pass ``[32, 16]``). ``()`` gives a
            linear (softmax-regression) model.
        out_features: number of outputs (classes), int > 0.
        activation: activation after every hidden layer, one of :data:`ACTIVATIONS`.

    Raises:
        ValueError: a size is not a positive integer, or the activation is unknown.
    """

    in_features: int = 64
    hidden: tuple[int, ...] = (64, 64)
    out_features: int = 10
    activation: str = "relu"

    def __post_init__(self):
        _positive_int("in_features", self.in_features)
        _positive_int("out_features", self.out_features)
        if isinstance(self.hidden, (int, np.integer)):
            raise ValueError(
                f"hidden must be a sequence of layer widths, e.g. ({self.hidden},), "
                f"got the single integer {self.hidden!r}."
            )
        hidden = tuple(_positive_int("each hidden width", h) for h in self.hidden)
        object.__setattr__(self, "hidden", hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}."
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        """All layer widths from input to output, e.g. ``(64, 64, 64, 10)``."""
        return (self.in_features, *self.hidden, self.out_features)


@dataclass(frozen=True)
class CNNSpec:
    """A small CNN for NHWC images, by default scikit-learn's 8x8x1 digits.

    Layers, in order::

        conv kxk 'same' (c1) -> relu -> maxpool 2x2
        conv kxk 'same' (c2) -> relu -> maxpool 2x2
        flatten (in NHWC order: h, w, c) -> dense to out_features (logits)

    With the defaults the feature map before the flatten is ``(2, 2, 16)``, so the dense layer
    has 64 inputs. 'same' padding with stride 1 pads ``(k - 1) // 2`` zeros on every side; max
    pooling uses a 2x2 window with stride 2 and no padding.

    Attributes:
        height, width: image size in pixels; both must be divisible by 4 (two 2x2 poolings).
        in_channels: image channels (1 for digits).
        c1, c2: output channels of the two convolutions.
        out_features: number of classes.
        kernel_size: odd convolution size k (3 by default).

    Raises:
        ValueError: a size is not a positive integer, the image is not divisible by 4, or the
            kernel size is even.
    """

    height: int = 8
    width: int = 8
    in_channels: int = 1
    c1: int = 8
    c2: int = 16
    out_features: int = 10
    kernel_size: int = 3

    def __post_init__(self):
        for name in ("height", "width", "in_channels", "c1", "c2", "out_features", "kernel_size"):
            _positive_int(name, getattr(self, name))
        if self.height % 4 or self.width % 4:
            raise ValueError(
                f"height and width must be divisible by 4 (two 2x2 max-poolings), got "
                f"{self.height}x{self.width}; crop or pad the images."
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so that 'same' padding is symmetric, got {self.kernel_size}."
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image, NHWC without the batch axis: ``(height, width, in_channels)``."""
        return (self.height, self.width, self.in_channels)

    @property
    def flatten_shape(self) -> tuple[int, int, int]:
        """Feature map before the flatten, NHWC without the batch axis: ``(h, w, c2)``.

        Pass this as ``flatten_shape`` to :func:`course_lib.convert.to_torch`.
        """
        return (self.height // 4, self.width // 4, self.c2)

    @property
    def flatten_features(self) -> int:
        """Inputs of the dense layer: ``h * w * c2`` of :attr:`flatten_shape` (64 by default)."""
        h, w, c = self.flatten_shape
        return h * w * c


def layer_shapes(spec: MLPSpec | CNNSpec) -> list[dict]:
    """Kernel and bias shapes of every layer of ``spec`` in the canonical layout.

    Returns:
        A list, one dict per layer in data-flow order, with ``"kind"`` (``"dense"`` or
        ``"conv"``), ``"kernel"`` (shape tuple, ``(in, out)`` or HWIO) and ``"bias"``
        (``(out,)``).

    Raises:
        ValueError: ``spec`` is neither an :class:`MLPSpec` nor a :class:`CNNSpec`.
    """
    if isinstance(spec, MLPSpec):
        sizes = spec.sizes
        return [
            {"kind": "dense", "kernel": (n_in, n_out), "bias": (n_out,)}
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        ]
    if isinstance(spec, CNNSpec):
        k = spec.kernel_size
        return [
            {"kind": "conv", "kernel": (k, k, spec.in_channels, spec.c1), "bias": (spec.c1,)},
            {"kind": "conv", "kernel": (k, k, spec.c1, spec.c2), "bias": (spec.c2,)},
            {
                "kind": "dense",
                "kernel": (spec.flatten_features, spec.out_features),
                "bias": (spec.out_features,),
            },
        ]
    raise ValueError(f"Expected an MLPSpec or a CNNSpec, got {type(spec).__name__}.")


def count_params(spec: MLPSpec | CNNSpec) -> int:
    """Number of trainable parameters (kernel and bias entries) of ``spec``.

    For the default :class:`MLPSpec` this is 64*64+64 + 64*64+64 + 64*10+10 = 8970; for the
    default :class:`CNNSpec` 3*3*1*8+8 + 3*3*8*16+16 + 64*10+10 = 1898.

    Raises:
        ValueError: ``spec`` is not a spec.
    """
    return sum(
        int(np.prod(shapes["kernel"])) + int(np.prod(shapes["bias"]))
        for shapes in layer_shapes(spec)
    )


# ---------------------------------------------------------------------------------------------
# Initial weights
# ---------------------------------------------------------------------------------------------


def glorot_limit(kernel_shape: tuple[int, ...]) -> float:
    """Half-width ``sqrt(6 / (fan_in + fan_out))`` of the Glorot-uniform distribution.

    Source: X. Glorot and Y. Bengio (2010), "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS, eq. 16. Fans as in Keras's ``GlorotUniform``: for a
    dense kernel ``(in, out)``, ``fan_in = in`` and ``fan_out = out``; for a conv kernel
    ``(kh, kw, in_ch, out_ch)``, ``fan_in = kh*kw*in_ch`` and ``fan_out = kh*kw*out_ch``.

    Raises:
        ValueError: the shape is neither 2-D nor 4-D.
    """
    if len(kernel_shape) == 2:
        fan_in, fan_out = kernel_shape
    elif len(kernel_shape) == 4:
        kh, kw, c_in, c_out = kernel_shape
        fan_in, fan_out = kh * kw * c_in, kh * kw * c_out
    else:
        raise ValueError(f"Expected a 2-D or 4-D kernel shape, got {kernel_shape}.")
    return float(np.sqrt(6.0 / (fan_in + fan_out)))


def init_weights(spec: MLPSpec | CNNSpec, seed: int) -> list[LayerWeights]:
    """The initial weights every framework starts from, made once in NumPy.

    Kernels are Glorot-uniform (see :func:`glorot_limit`); biases are uniform in
    ``(-BIAS_INIT_LIMIT, +BIAS_INIT_LIMIT)`` = (-0.1, 0.1), deliberately nonzero. The numbers come
    from ``np.random.default_rng(seed)``, drawn layer by layer, kernel then bias, so the same
    ``seed`` and ``spec`` give the same weights on every machine.

    Args:
        spec: the architecture.
        seed: a non-negative integer.

    Returns:
        ``list[dict]``, one ``{"kernel": ..., "bias": ...}`` per layer in the canonical layout
        (module docstring), NumPy ``float32``.

    Raises:
        ValueError: ``seed`` is not a non-negative integer, or ``spec`` is not a spec.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    rng = np.random.default_rng(int(seed))
    weights: list[LayerWeights] = []
    for shapes in layer_shapes(spec):
        limit = glorot_limit(shapes["kernel"])
        kernel = rng.uniform(-limit, limit, size=shapes["kernel"]).astype(np.float32)
        bias = rng.uniform(-BIAS_INIT_LIMIT, BIAS_INIT_LIMIT, size=shapes["bias"]).astype(
            np.float32
        )
        weights.append({"kernel": kernel, "bias": bias})
    return weights


def check_weights(weights, spec: MLPSpec | CNNSpec | None = None) -> list[LayerWeights]:
    """Check that ``weights`` is in the canonical layout (and matches ``spec`` if given).

    Returns:
        ``weights`` unchanged, so that it can be used inline.

    Raises:
        ValueError: not a list of ``{"kernel", "bias"}`` dicts, a kernel that is not 2-D or 4-D,
            a bias that does not match its kernel's last axis, or a shape that differs from
            ``spec``'s. The message names the layer.
    """
    if isinstance(weights, dict) or not isinstance(weights, (list, tuple)):
        raise ValueError(
            "weights must be a list with one {'kernel': ..., 'bias': ...} dict per layer "
            f"(as made by init_weights), got {type(weights).__name__}."
        )
    for i, layer in enumerate(weights):
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            keys = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise ValueError(
                f"weights[{i}] must be a dict with exactly the keys 'kernel' and 'bias', got {keys}."
            )
        k_shape, b_shape = np.shape(layer["kernel"]), np.shape(layer["bias"])
        if len(k_shape) not in (2, 4):
            raise ValueError(
                f"weights[{i}]['kernel'] must be 2-D (in, out) or 4-D (kh, kw, in_ch, out_ch), "
                f"got shape {k_shape}."
            )
        if b_shape != (k_shape[-1],):
            raise ValueError(
                f"weights[{i}]['bias'] must have shape ({k_shape[-1]},) to match its kernel "
                f"{k_shape}, got {b_shape}."
            )
    if spec is not None:
        expected = layer_shapes(spec)
        if len(expected) != len(weights):
            raise ValueError(
                f"{type(spec).__name__} has {len(expected)} layers but weights has "
                f"{len(weights)}; make the weights with init_weights(spec, seed)."
            )
        for i, (shapes, layer) in enumerate(zip(expected, weights)):
            if np.shape(layer["kernel"]) != shapes["kernel"]:
                raise ValueError(
                    f"weights[{i}]['kernel'] has shape {np.shape(layer['kernel'])} but the spec "
                    f"needs {shapes['kernel']}."
                )
    return weights  # type: ignore[return-value]  # checked above: a sequence of layers


# ---------------------------------------------------------------------------------------------
# Float64 reference: building blocks
# ---------------------------------------------------------------------------------------------


def _activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")


def _activation_grad(z: np.ndarray, a: np.ndarray, activation: str) -> np.ndarray:
    """d activation(z) / dz, elementwise, from the pre-activation z and the output a."""
    if activation == "relu":
        return (z > 0).astype(z.dtype)  # 0 at z == 0, as in PyTorch, JAX and TensorFlow
    if activation == "tanh":
        return 1.0 - a * a
    if activation == "sigmoid":
        return a * (1.0 - a)
    raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")


def _as_float64_weights(weights) -> list[LayerWeights]:
    check_weights(weights)
    return [
        {
            "kernel": np.array(w["kernel"], dtype=np.float64),
            "bias": np.array(w["bias"], dtype=np.float64),
        }
        for w in weights
    ]


def _conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Stride-1 'same' 2-D cross-correlation, NHWC input, HWIO kernel.

    ``out[n, i, j, o] = bias[o] + sum_{di, dj, c} xpad[n, i + di, j + dj, c] * kernel[di, dj, c, o]``
    where ``xpad`` has ``(k - 1) // 2`` zeros on each side. Like every framework's "convolution"
    layer this does not flip the kernel.
    """
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    n, h, w, _ = x.shape
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[3]), dtype=np.float64)
    for di in range(kh):
        for dj in range(kw):
            out += xpad[:, di : di + h, dj : dj + w, :] @ kernel[di, dj]
    return out + bias


def _conv2d_same_backward(x, kernel, d_out):
    """Gradients of :func:`_conv2d_same` w.r.t. its input, kernel and bias."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    n, h, w, c_in = x.shape
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    d_xpad = np.zeros_like(xpad)
    d_kernel = np.zeros_like(kernel)
    d_out_2d = d_out.reshape(-1, d_out.shape[-1])
    for di in range(kh):
        for dj in range(kw):
            window = xpad[:, di : di + h, dj : dj + w, :]
            d_kernel[di, dj] = window.reshape(-1, c_in).T @ d_out_2d
            d_xpad[:, di : di + h, dj : dj + w, :] += d_out @ kernel[di, dj].T
    d_x = d_xpad[:, ph : ph + h, pw : pw + w, :]
    return d_x, d_kernel, d_out.sum(axis=(0, 1, 2))


def _maxpool2x2(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, stride 2, NHWC (height and width must be even)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _maxpool2x2_backward(x: np.ndarray, d_out: np.ndarray) -> np.ndarray:
    """Send each window's gradient to its (first) maximum, as the frameworks do."""
    n, h, w, c = x.shape
    # windows: (n, h/2, w/2, c, 4), the 4 entries of each 2x2 window in row-major order
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(n, h // 2, w // 2, c, 4)
    first_max = np.argmax(windows, axis=-1)
    d_windows = np.zeros_like(windows)
    np.put_along_axis(d_windows, first_max[..., None], d_out[..., None], axis=-1)
    d_x = d_windows.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return d_x.reshape(n, h, w, c)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _check_labels(labels, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        hint = " (one-hot? use labels.argmax(axis=1))" if labels.ndim == 2 else ""
        raise ValueError(
            f"labels must be integer class indices of shape ({n},), got shape {labels.shape}{hint}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError("labels must be integer class indices, got non-integer values.")
        labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got values from {labels.min()} to {labels.max()}."
        )
    return labels


def softmax_cross_entropy(logits, labels) -> float:
    """Mean softmax cross-entropy (natural log, nats) of ``logits`` against integer ``labels``.

    ``loss = mean_n [ logsumexp(logits[n]) - logits[n, labels[n]] ]``, computed in float64 with
    the stable ``logsumexp(z) = max(z) + log(sum(exp(z - max(z))))``. This is what
    ``torch.nn.functional.cross_entropy``, ``optax.softmax_cross_entropy_with_integer_labels``
    (then ``.mean()``) and Keras's ``SparseCategoricalCrossentropy(from_logits=True)`` compute.

    Args:
        logits: ``(batch, classes)``, any real dtype.
        labels: ``(batch,)`` integers in ``[0, classes)``.

    Returns:
        A Python float.

    Raises:
        ValueError: logits not 2-D, labels of the wrong shape (e.g. one-hot) or out of range.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {z.shape}.")
    y = _check_labels(labels, z.shape[0], z.shape[1])
    m = z.max(axis=1)
    logsumexp = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(logsumexp - z[np.arange(len(y)), y]))


# ---------------------------------------------------------------------------------------------
# Float64 reference: forward passes
# ---------------------------------------------------------------------------------------------


def _mlp_forward_cache(weights64, x, activation):
    """Forward pass keeping what backprop needs: inputs of every layer and pre-activations."""
    inputs, pre = [], []
    a = x
    for i, layer in enumerate(weights64):
        z = a @ layer["kernel"] + layer["bias"]
        inputs.append(a)
        pre.append(z)
        a = z if i == len(weights64) - 1 else _activate(z, activation)
    return a, inputs, pre


def _check_2d_input(x, in_features: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(
            f"x must be 2-D (batch, features), got shape {x.shape}; flatten images with "
            "x.reshape(len(x), -1) and use x[None, :] for a single sample."
        )
    if x.shape[1] != in_features:
        raise ValueError(f"x has {x.shape[1]} features but the first layer expects {in_features}.")
    return x


def mlp_forward(weights, x, *, activation: str = "relu") -> np.ndarray:
    """Logits of an MLP in float64: ``a = act(a @ kernel + bias)`` per layer, no act at the end.

    Args:
        weights: canonical dense weights (``list`` of ``{"kernel": (in, out), "bias": (out,)}``),
            e.g. ``init_weights(MLPSpec(), seed)``; any float dtype, used as float64.
        x: inputs ``(batch, in_features)``, any real dtype, used as float64.
        activation: hidden activation, one of :data:`ACTIVATIONS`.

    Returns:
        Logits ``(batch, out_features)``, float64.

    Raises:
        ValueError: malformed weights, a conv kernel, consecutive layers whose sizes do not chain,
            ``x`` not 2-D or with the wrong number of features, unknown activation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}.")
    w64 = _as_float64_weights(weights)
    _check_dense_chain(w64)
    x = _check_2d_input(x, w64[0]["kernel"].shape[0])
    return _mlp_forward_cache(w64, x, activation)[0]


def _check_dense_chain(w64, start: int = 0):
    if len(w64) <= start:
        raise ValueError("weights has no dense layer.")
    for i in range(start, len(w64)):
        k = w64[i]["kernel"]
        if k.ndim != 2:
            raise ValueError(
                f"weights[{i}] is a conv kernel {k.shape}; mlp_forward takes dense layers only "
                "(use cnn_forward for CNNs)."
            )
        if i > start and w64[i - 1]["kernel"].shape[1] != k.shape[0]:
            raise ValueError(
                f"weights[{i - 1}] outputs {w64[i - 1]['kernel'].shape[1]} features but "
                f"weights[{i}] expects {k.shape[0]}."
            )


def _split_cnn(w64):
    """Number of conv layers at the front of a CNN weight list, after checking the structure."""
    n_conv = 0
    while n_conv < len(w64) and w64[n_conv]["kernel"].ndim == 4:
        n_conv += 1
    if n_conv == 0 or n_conv == len(w64):
        raise ValueError(
            "cnn_forward expects conv layers (4-D kernels) followed by at least one dense layer "
            "(2-D kernel), as made by init_weights(CNNSpec(), seed)."
        )
    for i in range(1, n_conv):
        if w64[i - 1]["kernel"].shape[3] != w64[i]["kernel"].shape[2]:
            raise ValueError(
                f"weights[{i - 1}] outputs {w64[i - 1]['kernel'].shape[3]} channels but "
                f"weights[{i}] expects {w64[i]['kernel'].shape[2]}."
            )
    _check_dense_chain(w64, start=n_conv)
    return n_conv


def _check_nhwc(x, w64, n_conv):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        hint = " (add the channel axis with x[..., None])" if x.ndim == 3 else ""
        raise ValueError(
            f"x must be NHWC (batch, height, width, channels), got shape {x.shape}{hint}."
        )
    c_in = w64[0]["kernel"].shape[2]
    if x.shape[3] != c_in:
        hint = " (is it NCHW? use convert.nchw_to_nhwc)" if x.shape[1] == c_in else ""
        raise ValueError(f"x has {x.shape[3]} channels but the first conv expects {c_in}{hint}.")
    factor = 2**n_conv
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"height and width must be divisible by {factor} ({n_conv} 2x2 max-poolings), "
            f"got {x.shape[1]}x{x.shape[2]}."
        )
    flat = (x.shape[1] // factor) * (x.shape[2] // factor) * w64[n_conv - 1]["kernel"].shape[3]
    if w64[n_conv]["kernel"].shape[0] != flat:
        raise ValueError(
            f"the flattened feature map has {flat} features but weights[{n_conv}] expects "
            f"{w64[n_conv]['kernel'].shape[0]}; check the image size."
        )
    return x


def _cnn_forward_cache(w64, x, n_conv):
    cache = []
    a = x
    for layer in w64[:n_conv]:
        z = _conv2d_same(a, layer["kernel"], layer["bias"])
        r = np.maximum(z, 0.0)
        cache.append((a, z, r))
        a = _maxpool2x2(r)
    pooled_shape = a.shape
    flat = a.reshape(len(a), -1)  # NHWC flatten: feature index = (h * W + w) * C + c
    logits, inputs, pre = _mlp_forward_cache(w64[n_conv:], flat, "relu")
    return logits, cache, pooled_shape, inputs, pre


def cnn_forward(weights, x_nhwc) -> np.ndarray:
    """Logits of the course CNN in float64 (layers as in :class:`CNNSpec`).

    Each conv layer is: stride-1 'same' cross-correlation (HWIO kernel, zero padding
    ``(k - 1) // 2``) -> relu -> 2x2 max pool (stride 2). The last feature map is flattened in
    NHWC order, i.e. feature ``(h * W + w) * C + c``, then dense layers follow (relu between them,
    none after the last).

    Args:
        weights: canonical weights, conv layers (4-D HWIO kernels) then dense layers, e.g.
            ``init_weights(CNNSpec(), seed)``.
        x_nhwc: images ``(batch, height, width, channels)``, any real dtype, used as float64.

    Returns:
        Logits ``(batch, out_features)``, float64.

    Raises:
        ValueError: malformed weights, ``x_nhwc`` not 4-D, wrong channel count (e.g. NCHW), or an
            image size that does not give the dense layer's input size.
    """
    w64 = _as_float64_weights(weights)
    n_conv = _split_cnn(w64)
    x = _check_nhwc(x_nhwc, w64, n_conv)
    return _cnn_forward_cache(w64, x, n_conv)[0]


# ---------------------------------------------------------------------------------------------
# Float64 reference: SGD with hand-written backprop
# ---------------------------------------------------------------------------------------------


def _dense_backward(w64, inputs, pre, d_logits, activation):
    """Backprop through dense layers. Returns per-layer grads and the gradient of the input.

    For ``z = a @ K + b``: ``dK = a.T @ dz``, ``db = sum_batch dz``, ``da = dz @ K.T``;
    through the activation ``dz = da * act'(z)``.
    """
    grads = [None] * len(w64)
    dz = d_logits
    for i in reversed(range(len(w64))):
        grads[i] = {"kernel": inputs[i].T @ dz, "bias": dz.sum(axis=0)}
        da = dz @ w64[i]["kernel"].T
        if i > 0:
            z_prev = pre[i - 1]
            dz = da * _activation_grad(z_prev, _activate(z_prev, activation), activation)
    return grads, da


def _loss_and_grads(spec, w64, x, y):
    if isinstance(spec, MLPSpec):
        logits, inputs, pre = _mlp_forward_cache(w64, x, spec.activation)
    else:
        logits, cache, pooled_shape, inputs, pre = _cnn_forward_cache(w64, x, 2)
    loss = softmax_cross_entropy(logits, y)
    # d(mean CE)/d logits = (softmax(logits) - one_hot(y)) / batch
    d_logits = _softmax(logits)
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    if isinstance(spec, MLPSpec):
        grads, _ = _dense_backward(w64, inputs, pre, d_logits, spec.activation)
        return loss, grads
    dense_grads, d_flat = _dense_backward(w64[2:], inputs, pre, d_logits, "relu")
    d_a = d_flat.reshape(pooled_shape)
    conv_grads = [None, None]
    for i in (1, 0):
        a_in, z, r = cache[i]
        d_r = _maxpool2x2_backward(r, d_a)
        d_z = d_r * (z > 0)
        d_a, d_k, d_b = _conv2d_same_backward(a_in, w64[i]["kernel"], d_z)
        conv_grads[i] = {"kernel": d_k, "bias": d_b}
    return loss, conv_grads + dense_grads


def sgd_reference(
    spec: MLPSpec | CNNSpec,
    weights,
    batches: Iterable,
    lr: float,
    *,
    return_weights: bool = False,
):
    """Plain SGD in float64 with hand-written backprop: the losses every framework must match.

    Each step takes the next ``(x, y)`` from ``batches`` and

    1. computes the mean softmax cross-entropy at the *current* weights (this is the loss
       recorded for the step),
    2. computes the gradient by backpropagation,
    3. updates every kernel and bias: ``w <- w - lr * dL/dw`` (no momentum, no weight decay).

    So ``losses[i]`` is computed with the weights after ``i`` updates: ``losses[0]`` is the loss
    of the initial weights. This is also what ``loss.item()`` gives in a PyTorch loop that calls
    ``optimizer.step()`` after computing the loss, and what Keras's ``train_on_batch`` returns.

    Backprop formulas: Goodfellow, Bengio and Courville (2016), *Deep Learning*, section 6.5;
    the softmax cross-entropy gradient ``(softmax(z) - one_hot(y)) / batch``, section 6.2.2.3.
    For the CNN, the gradient of a 2x2 max pool goes to the first maximum of each window and
    relu's derivative at 0 is 0, as in PyTorch, JAX and TensorFlow.

    Args:
        spec: :class:`MLPSpec` or :class:`CNNSpec` (for a CNN, ``x`` is NHWC).
        weights: the initial canonical weights (not modified).
        batches: iterable of ``(x, y)``: ``x`` of shape ``(batch, in_features)`` for an MLP or
            ``(batch, h, w, c)`` for a CNN, ``y`` integer labels ``(batch,)``.
        lr: learning rate, a positive float.
        return_weights: also return the weights after the last update.

    Returns:
        ``losses``, float64 array ``(n_steps,)``; with ``return_weights=True`` the tuple
        ``(losses, final_weights)``, the weights as float64 canonical weights.

    Raises:
        ValueError: weights that do not match ``spec``, a bad batch (the message gives its
            index), ``lr`` not positive, or no batches at all.
    """
    if not _is_real_number(lr) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}.")
    if not isinstance(spec, (MLPSpec, CNNSpec)):
        raise ValueError(f"Expected an MLPSpec or a CNNSpec, got {type(spec).__name__}.")
    check_weights(weights, spec)
    w64 = _as_float64_weights(weights)
    losses = []
    for step, batch in enumerate(batches):
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise ValueError(f"batch {step} must be a pair (x, y).") from None
        try:
            if isinstance(spec, MLPSpec):
                x = _check_2d_input(x, spec.in_features)
            else:
                x = _check_nhwc(x, w64, 2)
            y = _check_labels(y, x.shape[0], spec.out_features)
        except ValueError as err:
            raise ValueError(f"batch {step}: {err}") from None
        loss, grads = _loss_and_grads(spec, w64, x, y)
        losses.append(loss)
        for layer, grad in zip(w64, grads):
            layer["kernel"] -= lr * grad["kernel"]
            layer["bias"] -= lr * grad["bias"]
    if not losses:
        raise ValueError("batches is empty: give at least one (x, y) pair.")
    curve = np.asarray(losses, dtype=np.float64)
    return (curve, w64) if return_weights else curve
