"""Copy the course's NumPy weights into each framework's model, and back.

The weights come from :func:`course_lib.models.init_weights` in the course's canonical layout:
a ``list`` with one ``{"kernel": ..., "bias": ...}`` dict per layer, in data-flow order.

Layout rules (the whole point of this module)
---------------------------------------------

::

    layer     canonical = Keras, JAX, Flax, TF        PyTorch
    -----     --------------------------------        -------
    dense     kernel (in, out)                        Linear.weight (out, in) = kernel.T
    conv      kernel (kh, kw, in, out)   "HWIO"       Conv2d.weight (out, in, kh, kw) "OIHW"
                                                        = kernel.transpose(3, 2, 0, 1)
    images    (batch, h, w, c)           NHWC         (batch, c, h, w)  NCHW

Biases are ``(out,)`` everywhere. Three traps, all handled here:

1. **The transpose.** ``nn.Linear`` computes ``x @ weight.T + bias``, so its ``weight`` is the
   transpose of a Keras kernel. For a square layer (64 -> 64) copying the kernel without the
   transpose raises no error: it silently computes something else.
2. **Conv kernels.** HWIO -> OIHW is ``transpose(3, 2, 0, 1)`` (new axis 0 is old axis 3, ...).
3. **The flatten.** A CNN flattens its last feature map before the dense layer. In NHWC a
   ``(h, w, c)`` map flattens to feature ``(i * w + j) * c + k``; PyTorch flattens NCHW
   ``(c, h, w)`` to feature ``(k * h + i) * w + j``. Same numbers, different order, so the rows
   of that dense layer's kernel must be permuted (:func:`hwc_rows_to_chw`). The shapes agree
   either way, so nothing raises when this is forgotten.

Every function imports its framework when called: importing this module imports none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .models import LayerWeights, check_weights

__all__ = [
    "chw_rows_to_hwc",
    "flatten_permutation",
    "from_flax_nnx",
    "from_jax",
    "from_keras",
    "from_tf",
    "from_torch",
    "hwc_rows_to_chw",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "to_flax_linen_params",
    "to_flax_nnx",
    "to_jax",
    "to_keras",
    "to_tf",
    "to_torch",
]


# ---------------------------------------------------------------------------------------------
# Layout helpers (NumPy)
# ---------------------------------------------------------------------------------------------


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "permute")


def nhwc_to_nchw(x):
    """Images ``(batch, height, width, channels)`` -> ``(batch, channels, height, width)``.

    A NumPy array (or anything ``np.asarray`` accepts) gives a NumPy array of the same dtype;
    a torch tensor gives a torch tensor (``x.permute(0, 3, 1, 2)``, made contiguous).

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    if _is_torch_tensor(x):
        if x.ndim != 4:
            raise ValueError(f"Expected a 4-D NHWC batch, got shape {tuple(x.shape)}.")
        return x.permute(0, 3, 1, 2).contiguous()
    x = np.asarray(x)
    if x.ndim != 4:
        hint = " (add the channel axis with x[..., None])" if x.ndim == 3 else ""
        raise ValueError(f"Expected a 4-D NHWC batch, got shape {x.shape}{hint}.")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nchw_to_nhwc(x):
    """Images ``(batch, channels, height, width)`` -> ``(batch, height, width, channels)``.

    The inverse of :func:`nhwc_to_nchw`; same types in and out.

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    if _is_torch_tensor(x):
        if x.ndim != 4:
            raise ValueError(f"Expected a 4-D NCHW batch, got shape {tuple(x.shape)}.")
        return x.permute(0, 2, 3, 1).contiguous()
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"Expected a 4-D NCHW batch, got shape {x.shape}.")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _check_feature_shape(shape) -> tuple[int, int, int]:
    try:
        h, w, c = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"flatten_shape must be the NHWC feature-map shape (h, w, c) before the flatten, "
            f"e.g. CNNSpec().flatten_shape == (2, 2, 16); got {shape!r}."
        ) from None
    if min(h, w, c) <= 0:
        raise ValueError(f"flatten_shape must be positive, got {shape!r}.")
    return h, w, c


def flatten_permutation(feature_shape) -> np.ndarray:
    """Index array ``perm`` with ``flat_chw = flat_hwc[..., perm]`` for one feature map.

    ``feature_shape`` is ``(h, w, c)``. Entry ``p`` of a (c, h, w)-ordered flatten is entry
    ``perm[p]`` of the (h, w, c)-ordered flatten of the same map. Built by numbering the
    (h, w, c) positions, moving the axes to (c, h, w) and reading the numbers off::

        np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()

    ``np.argsort(perm)`` is the inverse permutation.

    Raises:
        ValueError: ``feature_shape`` is not three positive integers.
    """
    h, w, c = _check_feature_shape(feature_shape)
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def hwc_rows_to_chw(kernel, feature_shape) -> np.ndarray:
    """Reorder the input rows of a dense kernel ``(h*w*c, out)`` from NHWC to NCHW flatten order.

    Use on the first dense layer after a flatten when moving a canonical (Keras/JAX/TF) CNN to
    PyTorch, which flattens ``(c, h, w)``: row ``p`` of the result is the row that multiplies the
    same pixel and channel in a PyTorch flatten.

    Raises:
        ValueError: the kernel does not have ``h*w*c`` rows.
    """
    kernel = np.asarray(kernel)
    perm = flatten_permutation(feature_shape)
    if kernel.ndim != 2 or kernel.shape[0] != len(perm):
        raise ValueError(
            f"A dense kernel with {len(perm)} input rows (= h*w*c of {tuple(feature_shape)}) "
            f"is needed, got shape {kernel.shape}."
        )
    return kernel[perm]


def chw_rows_to_hwc(kernel, feature_shape) -> np.ndarray:
    """The inverse of :func:`hwc_rows_to_chw`: rows from NCHW back to NHWC flatten order.

    ``feature_shape`` is still the NHWC shape ``(h, w, c)``.

    Raises:
        ValueError: the kernel does not have ``h*w*c`` rows.
    """
    kernel = np.asarray(kernel)
    perm = flatten_permutation(feature_shape)
    if kernel.ndim != 2 or kernel.shape[0] != len(perm):
        raise ValueError(
            f"A dense kernel with {len(perm)} input rows (= h*w*c of {tuple(feature_shape)}) "
            f"is needed, got shape {kernel.shape}."
        )
    return kernel[np.argsort(perm)]


def _canonical(weights) -> list[LayerWeights]:
    """Checked NumPy float32 copies of canonical weights."""
    check_weights(weights)
    return [
        {
            "kernel": np.asarray(w["kernel"], dtype=np.float32),
            "bias": np.asarray(w["bias"], dtype=np.float32),
        }
        for w in weights
    ]


def _count_error(framework: str, names: list[str], weights) -> ValueError:
    return ValueError(
        f"The {framework} model has {len(names)} dense/conv layers ({', '.join(names) or 'none'}) "
        f"but weights has {len(weights)}; build the same architecture as the spec."
    )


def _kind(kernel_ndim: int) -> str:
    return "conv (4-D kernel)" if kernel_ndim == 4 else "dense (2-D kernel)"


# ---------------------------------------------------------------------------------------------
# Keras 3 (any backend)
# ---------------------------------------------------------------------------------------------


def _keras_layers(model) -> list:
    """Dense and Conv2D layers of a Keras model, depth-first in the order Keras tracks them.

    That is the order of ``model.layers`` (Sequential: as listed; functional: topological;
    subclassed: the order the layers were assigned in ``__init__``), descending into nested
    models and layers.
    """
    import keras

    found, seen = [], set()

    def children(layer):
        if hasattr(layer, "_flatten_layers"):
            return list(layer._flatten_layers(include_self=False, recursive=False))
        return list(getattr(layer, "layers", []))

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            found.append(layer)
            return
        kids = children(layer)
        own = {id(v) for v in layer.weights} - {id(v) for k in kids for v in k.weights}
        if own:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has weights of its own; the "
                "course's converters handle Dense and Conv2D layers only. Set its weights "
                "yourself with layer.set_weights(...)."
            )
        for kid in kids:
            visit(kid)

    for layer in children(model):
        visit(layer)
    return found


def to_keras(model, weights) -> None:
    """Set a built Keras 3 model's Dense/Conv2D weights from canonical weights, in place.

    Keras stores a Dense kernel as ``(in, out)`` and a Conv2D kernel as HWIO on every backend,
    and (with the default ``data_format="channels_last"``) flattens NHWC, so nothing is
    transposed or permuted: each layer gets ``layer.set_weights([kernel, bias])``.

    Args:
        model: a **built** Keras model (call it on a batch, or give it an ``Input``), e.g.
            ``keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
            ...])``. Layers are matched to ``weights`` in the order of ``model.layers``.
        weights: canonical weights (list of ``{"kernel", "bias"}``).

    Raises:
        ValueError: a different number of Dense/Conv2D layers, a layer whose kernel or bias shape
            differs (the message names the layer), an unbuilt layer, a layer without bias, a
            channels_first Conv2D, or another layer type with weights.
    """
    weights = _canonical(weights)
    layers = _keras_layers(model)
    if len(layers) != len(weights):
        raise _count_error("Keras", [layer.name for layer in layers], weights)
    for i, (layer, w) in enumerate(zip(layers, weights)):
        label = f"layer {i} ({type(layer).__name__} {layer.name!r})"
        if not layer.built:
            raise ValueError(
                f"{label} is not built yet: call the model on a batch or start it with "
                "keras.Input(shape) first."
            )
        if not layer.use_bias:
            raise ValueError(f"{label} has use_bias=False; the course's models have biases.")
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"{label} uses data_format={layer.data_format!r}; the course's Keras models are "
                "channels_last (NHWC)."
            )
        kernel_shape = tuple(layer.kernel.shape)
        if kernel_shape != w["kernel"].shape:
            raise ValueError(
                f"{label} has kernel shape {kernel_shape} but weights[{i}]['kernel'] is "
                f"{w['kernel'].shape}, a {_kind(w['kernel'].ndim)}."
            )
    # Only now, with every layer checked, change the model.
    for layer, w in zip(layers, weights):
        layer.set_weights([w["kernel"], w["bias"]])


def from_keras(model) -> list[LayerWeights]:
    """Canonical weights (NumPy float32) read from a Keras model's Dense/Conv2D layers.

    The inverse of :func:`to_keras`: ``from_keras(model)`` after ``to_keras(model, w)`` equals
    ``w`` exactly.

    Raises:
        ValueError: an unbuilt layer, a layer without bias, or another layer type with weights.
    """
    out: list[LayerWeights] = []
    for i, layer in enumerate(_keras_layers(model)):
        if not layer.built or not layer.use_bias:
            raise ValueError(
                f"layer {i} ({type(layer).__name__} {layer.name!r}) must be built and have a bias."
            )
        kernel, bias = layer.get_weights()
        out.append({"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)})
    return out


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


def _torch_layers(module) -> list[tuple[str, Any]]:
    """``(name, layer)`` for each nn.Linear / nn.Conv2d, in registration order.

    Registration order is the order the submodules were assigned in ``__init__`` (for
    ``nn.Sequential``: as listed), which is what ``module.named_modules()`` walks. Define the
    layers in the order the data flows through them.
    """
    import torch.nn as nn

    layers = []
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            layers.append((name or type(sub).__name__, sub))
        elif any(True for _ in sub.parameters(recurse=False)):
            raise ValueError(
                f"Module {name!r} ({type(sub).__name__}) has parameters of its own; the course's "
                "converters handle nn.Linear and nn.Conv2d only. Copy its parameters yourself."
            )
    return layers


def _flatten_layer_index(layers, kernels_ndim: list[int]) -> int | None:
    """Index of the first dense layer that follows a conv layer, or None."""
    for i in range(1, len(kernels_ndim)):
        if kernels_ndim[i] == 2 and kernels_ndim[i - 1] == 4:
            return i
    return None


def _resolve_flatten(layers, weights_ndim, flatten_shape, flatten_order):
    if hasattr(flatten_shape, "flatten_shape"):  # a CNNSpec
        flatten_shape = flatten_shape.flatten_shape
    if flatten_order not in ("chw", "hwc"):
        raise ValueError(f"flatten_order must be 'chw' or 'hwc', got {flatten_order!r}.")
    index = _flatten_layer_index(layers, weights_ndim)
    if index is None:
        if flatten_shape is not None:
            raise ValueError(
                "flatten_shape was given but the model has no dense layer after a conv layer."
            )
        return None, None
    if flatten_order == "hwc":
        return None, None
    if flatten_shape is None:
        raise ValueError(
            f"layer {index} ({type(layers[index][1]).__name__} {layers[index][0]!r}) is the first "
            "dense layer after a conv layer: "
            "its input rows must be reordered from the NHWC flatten (h, w, c) to PyTorch's "
            "(c, h, w). Pass flatten_shape=(h, w, c), the NHWC feature-map shape before the "
            "flatten (spec.flatten_shape for a CNNSpec), or flatten_order='hwc' if your module "
            "permutes to NHWC before flattening."
        )
    return index, _check_feature_shape(flatten_shape)


def _uninitialized(param) -> bool:
    import torch.nn.parameter as tp

    return isinstance(param, tp.UninitializedParameter)


def to_torch(module, weights, *, flatten_shape=None, flatten_order: str = "chw") -> None:
    """Copy canonical weights into a PyTorch module's nn.Linear / nn.Conv2d layers, in place.

    Layers are matched to ``weights`` in registration order (``module.named_modules()``).
    For each layer:

    * ``nn.Linear``: ``weight (out, in) = kernel.T``, ``bias = bias``;
    * ``nn.Conv2d``: ``weight (out, in, kh, kw) = kernel.transpose(3, 2, 0, 1)`` (HWIO -> OIHW);
    * the first ``nn.Linear`` after an ``nn.Conv2d``: its kernel rows are first reordered with
      :func:`hwc_rows_to_chw`, because ``torch.flatten`` of an NCHW map is in (c, h, w) order.

    The copy casts to each parameter's dtype and device and does not record gradients.

    Args:
        module: an ``nn.Module`` (e.g. ``nn.Sequential`` or your subclass).
        weights: canonical weights.
        flatten_shape: ``(h, w, c)``, the NHWC shape of the feature map that is flattened
            (``spec.flatten_shape``, ``(2, 2, 16)`` for the default :class:`CNNSpec`; the spec
            itself is accepted too). Required when a Linear follows a Conv2d, unless
            ``flatten_order="hwc"``.
        flatten_order: ``"chw"`` (default: the module flattens NCHW maps, e.g. ``x.flatten(1)``)
            or ``"hwc"`` (it permutes to NHWC first, so no reordering is needed).

    Raises:
        ValueError: a different number of layers, a shape that does not match (the message names
            the layer), a layer without bias or not yet initialised (``nn.LazyLinear``), a
            missing ``flatten_shape``, or another module with parameters.
    """
    import torch

    weights = _canonical(weights)
    layers = _torch_layers(module)
    if len(layers) != len(weights):
        raise _count_error("PyTorch", [name for name, _ in layers], weights)
    flat_index, feature_shape = _resolve_flatten(
        layers, [w["kernel"].ndim for w in weights], flatten_shape, flatten_order
    )
    # Check every layer before copying anything, so that an error leaves the module untouched.
    copies = []
    for i, ((name, layer), w) in enumerate(zip(layers, weights)):
        label = f"layer {i} ({type(layer).__name__} {name!r})"
        if layer.bias is None:
            raise ValueError(f"{label} has bias=False; the course's models have biases.")
        if _uninitialized(layer.weight):
            raise ValueError(f"{label} is lazy and not initialised: call the module once first.")
        kernel = w["kernel"]
        if isinstance(layer, torch.nn.Linear):
            if kernel.ndim != 2:
                raise ValueError(
                    f"{label} is dense but weights[{i}] is a {_kind(kernel.ndim)} {kernel.shape}."
                )
            if i == flat_index:
                kernel = hwc_rows_to_chw(kernel, feature_shape)
            torch_weight = kernel.T  # (in, out) -> (out, in)
        else:
            if kernel.ndim != 4:
                raise ValueError(
                    f"{label} is a conv but weights[{i}] is a {_kind(kernel.ndim)} {kernel.shape}."
                )
            torch_weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if tuple(layer.weight.shape) != torch_weight.shape:
            raise ValueError(
                f"{label} has weight shape {tuple(layer.weight.shape)} but weights[{i}]['kernel'] "
                f"{w['kernel'].shape} gives {torch_weight.shape} in PyTorch's layout."
            )
        copies.append((layer, np.ascontiguousarray(torch_weight), w["bias"]))
    with torch.no_grad():
        for layer, torch_weight, bias in copies:
            layer.weight.copy_(torch.from_numpy(torch_weight))
            layer.bias.copy_(torch.from_numpy(bias))


def from_torch(module, *, flatten_shape=None, flatten_order: str = "chw") -> list[LayerWeights]:
    """Canonical weights (NumPy float32) read from a PyTorch module: the inverse of :func:`to_torch`.

    ``Linear.weight.T`` -> kernel; ``Conv2d.weight.permute(2, 3, 1, 0)`` (OIHW -> HWIO); the
    first Linear after a Conv2d has its rows put back in NHWC order (:func:`chw_rows_to_hwc`).

    Args:
        module: an ``nn.Module``.
        flatten_shape, flatten_order: as in :func:`to_torch`.

    Raises:
        ValueError: a layer without bias or not initialised, a missing ``flatten_shape``, or
            another module with parameters.
    """
    layers = _torch_layers(module)
    for i, (name, layer) in enumerate(layers):
        if layer.bias is None or _uninitialized(layer.weight):
            raise ValueError(
                f"layer {i} ({type(layer).__name__} {name!r}) must be initialised and have a bias."
            )
    ndims = [layer.weight.ndim for _, layer in layers]
    flat_index, feature_shape = _resolve_flatten(layers, ndims, flatten_shape, flatten_order)
    out: list[LayerWeights] = []
    for i, (_, layer) in enumerate(layers):
        weight = layer.weight.detach().cpu().float().numpy()
        if weight.ndim == 4:
            kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        else:
            kernel = weight.T  # (out, in) -> (in, out)
            if i == flat_index:
                kernel = chw_rows_to_hwc(kernel, feature_shape)
        bias = layer.bias.detach().cpu().float().numpy()
        out.append({"kernel": np.ascontiguousarray(kernel), "bias": bias.copy()})
    return out


# ---------------------------------------------------------------------------------------------
# JAX (plain pytrees) and Flax
# ---------------------------------------------------------------------------------------------


def to_jax(weights) -> list[LayerWeights]:
    """Canonical weights as a JAX pytree: a ``list`` of ``{"kernel", "bias"}`` dicts of jax arrays.

    Same layout as the canonical weights (JAX code writes ``x @ kernel + bias`` and convolves
    with ``dimension_numbers=("NHWC", "HWIO", "NHWC")``), float32, on JAX's default device.
    A list of dicts is a pytree, so ``jax.grad`` of a loss of these params returns gradients
    of the same structure and ``jax.tree.map`` updates them.

    Raises:
        ValueError: malformed weights.
    """
    import jax.numpy as jnp

    return [
        {"kernel": jnp.asarray(w["kernel"]), "bias": jnp.asarray(w["bias"])}
        for w in _canonical(weights)
    ]


def _arrays_to_numpy(params, source: str) -> list[LayerWeights]:
    if isinstance(params, dict) or not isinstance(params, Sequence):
        raise ValueError(
            f"{source} expects a list of {{'kernel', 'bias'}} dicts (as made by its to_ "
            f"counterpart), got {type(params).__name__}."
        )
    out: list[LayerWeights] = []
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            raise ValueError(f"{source}: params[{i}] must be a dict with keys 'kernel' and 'bias'.")
        out.append(
            {
                "kernel": np.array(layer["kernel"], dtype=np.float32),
                "bias": np.array(layer["bias"], dtype=np.float32),
            }
        )
    return check_weights(out)


def from_jax(params) -> list[LayerWeights]:
    """Canonical weights (NumPy float32 copies) from a :func:`to_jax`-style pytree.

    Raises:
        ValueError: ``params`` is not a list of ``{"kernel", "bias"}`` dicts.
    """
    return _arrays_to_numpy(params, "from_jax")


def _nnx_layers(module) -> list:
    """nnx.Linear / nnx.Conv layers of an nnx module in definition order.

    Flax's own traversal (``nnx.iter_modules``, ``nnx.state``) sorts attributes by *name*, so
    ``self.fc2`` would come before ``self.fc10`` and ``self.out`` before ``self.hidden``.
    Instead this walks the attributes in the order they were assigned in ``__init__`` (like
    PyTorch's registration order), entering ``nnx.List`` / ``nnx.Sequential`` / lists / tuples /
    dicts in their own order.
    """
    from flax import nnx

    found, seen = [], set()
    nnx_list = getattr(nnx, "List", ())  # nnx.List exists from Flax 0.12 (Colab ships 0.11)

    def visit(obj, path):
        if id(obj) in seen:
            return
        if isinstance(obj, (nnx.Linear, nnx.Conv)):
            seen.add(id(obj))
            found.append((path or type(obj).__name__, obj))
        elif isinstance(obj, nnx.Variable):
            if isinstance(obj, nnx.Param):
                raise ValueError(
                    f"{path!r} is an nnx.Param outside an nnx.Linear/nnx.Conv; the course's "
                    "converters handle those two layer types only. Assign it yourself."
                )
        elif isinstance(obj, nnx_list) or isinstance(obj, (list, tuple)):
            seen.add(id(obj))
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]")
        elif isinstance(obj, dict):
            seen.add(id(obj))
            for key, item in obj.items():
                visit(item, f"{path}[{key!r}]")
        elif isinstance(obj, nnx.Module):
            seen.add(id(obj))
            for name, value in vars(obj).items():
                if not name.startswith("_pytree__"):
                    visit(value, f"{path}.{name}" if path else name)

    if isinstance(module, (list, tuple)):
        for i, layer in enumerate(module):
            visit(layer, f"[{i}]")
    else:
        visit(module, "")
    return found


def _variable_value(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set_variable(var, value) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:  # older Flax
        var.value = value


def to_flax_nnx(module, weights) -> None:
    """Assign canonical weights into a ``flax.nnx`` module's nnx.Linear / nnx.Conv layers, in place.

    ``nnx.Linear.kernel`` is ``(in, out)`` and ``nnx.Conv.kernel`` is HWIO on NHWC inputs, so the
    arrays go in unchanged. Layers are taken in the order they were assigned in ``__init__``
    (see below), or in the order of a list of layers passed as ``module``.

    Flax's own ``nnx.state``/``nnx.iter_modules`` order attributes alphabetically; this function
    deliberately does not, so that ``self.hidden`` then ``self.out`` maps to weights 0 then 1.
    A CNN written for NHWC inputs flattens (h, w, c) like the canonical layout: no permutation.

    Args:
        module: an ``nnx.Module`` (your model, ``nnx.Sequential``...) or a list of layers.
        weights: canonical weights.

    Raises:
        ValueError: a different number of layers, a shape that does not match (the message names
            the layer), a layer with ``use_bias=False``, or a bare ``nnx.Param`` outside those
            layer types.
    """
    import jax.numpy as jnp

    weights = _canonical(weights)
    layers = _nnx_layers(module)
    if len(layers) != len(weights):
        raise _count_error("Flax NNX", [path for path, _ in layers], weights)
    for i, ((path, layer), w) in enumerate(zip(layers, weights)):
        label = f"layer {i} ({type(layer).__name__} {path!r})"
        if getattr(layer, "bias", None) is None:
            raise ValueError(f"{label} has use_bias=False; the course's models have biases.")
        shape = tuple(_variable_value(layer.kernel).shape)
        if shape != w["kernel"].shape:
            raise ValueError(
                f"{label} has kernel shape {shape} but weights[{i}]['kernel'] is "
                f"{w['kernel'].shape}, a {_kind(w['kernel'].ndim)}."
            )
    # Only now, with every layer checked, change the model.
    for (_, layer), w in zip(layers, weights):
        _set_variable(layer.kernel, jnp.asarray(w["kernel"]))
        _set_variable(layer.bias, jnp.asarray(w["bias"]))


def from_flax_nnx(module) -> list[LayerWeights]:
    """Canonical weights (NumPy float32) from a ``flax.nnx`` module: the inverse of :func:`to_flax_nnx`.

    Raises:
        ValueError: a layer without bias, or a bare ``nnx.Param`` outside nnx.Linear/nnx.Conv.
    """
    out: list[LayerWeights] = []
    for i, (path, layer) in enumerate(_nnx_layers(module)):
        if getattr(layer, "bias", None) is None:
            raise ValueError(f"layer {i} ({path!r}) has no bias.")
        out.append(
            {
                "kernel": np.array(_variable_value(layer.kernel), dtype=np.float32),
                "bias": np.array(_variable_value(layer.bias), dtype=np.float32),
            }
        )
    return out


def to_flax_linen_params(weights, layer_names: Sequence[str]) -> dict:
    """Canonical weights as a Flax **linen** variables dict: ``{"params": {name: {...}}}``.

    For a linen module whose ``nn.Dense`` / ``nn.Conv`` submodules are named ``layer_names``
    (e.g. the auto-names ``["Dense_0", "Dense_1", "Dense_2"]`` of a ``@nn.compact`` MLP; check
    with ``model.init(...)["params"].keys()``). Linen uses the same kernel layouts as NNX. Pass
    the result to ``model.apply(variables, x)``.

    Raises:
        ValueError: the number of names differs from the number of layers, or names repeat.
    """
    import jax.numpy as jnp

    weights = _canonical(weights)
    names = list(layer_names)
    if len(names) != len(weights) or len(set(names)) != len(names):
        raise ValueError(
            f"Give {len(weights)} distinct layer names, one per layer of weights; got {names}."
        )
    return {
        "params": {
            name: {"kernel": jnp.asarray(w["kernel"]), "bias": jnp.asarray(w["bias"])}
            for name, w in zip(names, weights)
        }
    }


# ---------------------------------------------------------------------------------------------
# TensorFlow (plain variables)
# ---------------------------------------------------------------------------------------------


def to_tf(weights, *, trainable: bool = True) -> list[LayerWeights]:
    """Canonical weights as a ``list`` of ``{"kernel", "bias"}`` dicts of float32 ``tf.Variable``.

    Same layout as the canonical weights: TensorFlow writes ``x @ kernel + bias`` and its
    ``tf.nn.conv2d`` takes NHWC inputs with HWIO filters. Keep the list in a ``tf.Module``
    attribute and ``module.trainable_variables`` finds the variables; pass them to
    ``tf.GradientTape.gradient`` and update with ``var.assign_sub(lr * grad)``.

    Raises:
        ValueError: malformed weights.
    """
    import tensorflow as tf

    return [
        {
            "kernel": tf.Variable(w["kernel"], trainable=trainable, name=f"layer{i}_kernel"),
            "bias": tf.Variable(w["bias"], trainable=trainable, name=f"layer{i}_bias"),
        }
        for i, w in enumerate(_canonical(weights))
    ]


def from_tf(variables) -> list[LayerWeights]:
    """Canonical weights (NumPy float32 copies) from a :func:`to_tf`-style list of dicts.

    The values may be ``tf.Variable`` or ``tf.Tensor`` (anything ``np.array`` can read).

    Raises:
        ValueError: not a list of ``{"kernel", "bias"}`` dicts.
    """
    return _arrays_to_numpy(variables, "from_tf")
