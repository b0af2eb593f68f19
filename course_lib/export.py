"""Plumbing for lesson 10 (deployment): where exported files go, their size, running an ONNX
model in ONNX Runtime and comparing it with reference outputs, and inspecting an ONNX file.

The exports themselves (``torch.onnx.export``, ``model.export``, ``skl2onnx``, ``jax2onnx``,
the LiteRT converter) stay in the lesson: this module only handles what every route needs
afterwards.

- :func:`artifact_dir`: ``build/lesson<NN>/`` under the course's root (never committed: git
  ignores ``build/``), or a temporary folder when the notebook runs outside the repository.
- :func:`size_bytes`: the bytes an exported model takes on disk: a file, a folder (SavedModel,
  ``.mlpackage``) or an ONNX file together with its external ``.onnx.data`` weights.
- :func:`run_onnx`, :func:`compare`, :func:`check_onnx`: run a model in ONNX Runtime and measure
  how far its outputs are from the native model's (largest absolute difference, agreement of
  the predicted classes, accuracy).
- :func:`inspect_onnx`: what the file declares: inputs and outputs with their shapes (a name
  such as ``"batch"`` for a dynamic dimension), opsets, producer, operator counts, parameters.
- :func:`describe_error`: a failure as one short line, ``"Type: first line of the message"``, to
  print and record when a route fails.

Only NumPy is imported at import time; ``onnx`` and ``onnxruntime`` are imported when used.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from course_lib import paths

__all__ = [
    "artifact_dir",
    "check_onnx",
    "compare",
    "describe_error",
    "inspect_onnx",
    "run_onnx",
    "size_bytes",
]


def artifact_dir(lesson: str = "10", *, root: str | os.PathLike | None = None) -> Path:
    """The folder for a lesson's exported files, created if needed.

    ``<course root>/build/lesson<lesson>/`` when the working directory (or ``root``) lies in the
    course repository (found with :func:`course_lib.results.course_root`); else a folder
    ``course-lesson<lesson>-...`` in the system's temporary directory (a notebook opened
    outside the repository must not litter the user's folders). ``build/`` is ignored by git.

    Args:
        lesson: the lesson id, e.g. ``"10"``.
        root: where to start looking for the course root (default: the working directory).

    Returns:
        An existing folder (``pathlib.Path``).

    Raises:
        ValueError: an empty lesson id or one containing a path separator.
    """
    return paths.lesson_build_dir(lesson, root=root)


def _onnx_external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX file refers to (its initializers' ``location``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / name for name in sorted(names)]


def size_bytes(path: str | os.PathLike, *, onnx_external_data: bool = True) -> int:
    """Bytes on disk of an exported model.

    A file counts its own size; a folder (a SavedModel, a ``.mlpackage``, a Keras export) the
    sum of every file below it. For an ``.onnx`` file, the external-data files its weights are
    stored in (``torch.onnx.export`` writes ``model.onnx.data`` next to it by default) are added
    unless ``onnx_external_data=False``: the ``.onnx`` file alone may then hold only the graph.

    Returns:
        The size in bytes (int). Divide by 1e6 for MB.

    Raises:
        FileNotFoundError: ``path`` (or an external-data file an ONNX file names) is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No exported model at {path}.")
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    total = path.stat().st_size
    if onnx_external_data and path.suffix == ".onnx":
        for extra in _onnx_external_files(path):
            if not extra.is_file():
                raise FileNotFoundError(
                    f"{path.name} keeps its weights in {extra.name}, which is missing: copy the "
                    "data file along with the .onnx file (or export with external_data=False).")
            total += extra.stat().st_size
    return total


def _session(model, providers):
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto
        model = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"No ONNX file at {model}.")
        model = str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
    return ort.InferenceSession(model, sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


def run_onnx(model, inputs, *, providers: Sequence[str] | None = None, output: int | None = 0):
    """Run an ONNX model in ONNX Runtime.

    Args:
        model: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``; an
            ``onnxruntime.InferenceSession`` is used as it is.
        inputs: one array (for a model with a single input; cast to the input's dtype when that
            is float32/float64/int64/int8) or ``{input name: array}``.
        providers: ONNX Runtime execution providers, default ``["CPUExecutionProvider"]``.
        output: which output to return (index); None returns the list of all outputs.

    Returns:
        A NumPy array (or a list of them with ``output=None``), as ONNX Runtime returns them.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: one array given to a model with several inputs.
        onnxruntime's own errors (``InvalidArgument``, ``Fail``...) when the model cannot run
        these inputs, e.g. a batch size the file fixed at export.
    """
    session = model if hasattr(model, "get_inputs") else _session(model, providers)
    declared = session.get_inputs()
    if not isinstance(inputs, Mapping):
        if len(declared) != 1:
            raise ValueError(f"The model has {len(declared)} inputs "
                             f"({[i.name for i in declared]}): pass a dict of arrays.")
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                  "tensor(int64)": np.int64, "tensor(int8)": np.int8}
        dtype = dtypes.get(declared[0].type)
        array = np.asarray(inputs)
        inputs = {declared[0].name: array.astype(dtype, copy=False) if dtype else array}
    outputs = session.run(None, dict(inputs))
    return outputs if output is None else outputs[output]


def compare(outputs, reference, *, labels=None) -> dict:
    """How far ``outputs`` are from ``reference`` (e.g. an export's logits vs the native model's).

    Args:
        outputs, reference: arrays of the same shape ``(n, classes)`` (or any shape: then the
            argmax is taken over the last axis).
        labels: optional true classes ``(n,)``, for the accuracy of ``outputs``.

    Returns:
        ``{"max_abs_diff": float, "argmax_agreement": float in [0, 1], "accuracy": float}``
        (``accuracy`` only with ``labels``). NaN anywhere gives a NaN difference.

    Raises:
        ValueError: the shapes differ, or the arrays are empty.
    """
    out = np.asarray(outputs, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"Shapes differ: outputs {out.shape}, reference {ref.shape}.")
    if out.size == 0:
        raise ValueError("Nothing to compare: the arrays are empty.")
    result = {"max_abs_diff": float(np.max(np.abs(out - ref))),
              "argmax_agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1)))}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != out.shape[:-1]:
            raise ValueError(f"labels must have shape {out.shape[:-1]}, got {labels.shape}.")
        result["accuracy"] = float(np.mean(out.argmax(-1) == labels))
    return result


def check_onnx(model, inputs, reference, *, labels=None, tol: float | None = None,
               providers: Sequence[str] | None = None, output: int = 0) -> dict:
    """Run ``model`` in ONNX Runtime on ``inputs`` and :func:`compare` with ``reference``.

    Returns :func:`compare`'s dict, plus ``"passed"`` (``max_abs_diff <= tol``) when ``tol``
    is given. Raises what :func:`run_onnx` and :func:`compare` raise.
    """
    result = compare(run_onnx(model, inputs, providers=providers, output=output), reference,
                     labels=labels)
    if tol is not None:
        result["passed"] = bool(result["max_abs_diff"] <= tol)
    return result


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
            for d in shape.dim]


def inspect_onnx(model) -> dict:
    """What an ONNX model declares, read with the ``onnx`` API (the weights are not loaded).

    Args:
        model: a path to an ``.onnx`` file or an ``onnx.ModelProto``.

    Returns:
        A dict: ``inputs`` and ``outputs`` (lists of ``{"name", "dtype", "shape"}``, a shape
        being a list whose entries are ints for fixed sizes and names such as ``"batch"`` for
        dynamic ones), ``opsets`` (``{domain: version}``, ``""`` being the default ONNX
        domain), ``ir_version``, ``producer`` (``"name version"``), ``op_counts``
        (``{operator: count}`` over the main graph, most common first), ``nodes`` (int),
        ``parameters`` (elements of all initializers, int) and ``external_data`` (bool: weights
        stored in another file).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"No ONNX file at {model}.")
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}

    def io(values):
        return [{"name": v.name,
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                 if v.type.tensor_type.elem_type else "?",
                 "shape": _dims(v)} for v in values if v.name not in initializer_names]

    counts = Counter(node.op_type for node in graph.node)
    return {
        "inputs": io(graph.input),
        "outputs": io(graph.output),
        "opsets": {o.domain: int(o.version) for o in model.opset_import},
        "ir_version": int(model.ir_version),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "op_counts": dict(counts.most_common()),
        "nodes": len(graph.node),
        "parameters": int(sum(int(np.prod(t.dims)) for t in graph.initializer)),
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL
                             for t in graph.initializer),
    }


def describe_error(err: BaseException, limit: int = 300) -> str:
    """``"ExceptionType: first non-empty line of the message"``, at most ``limit`` characters.

    For printing and recording a route that fails (the full traceback is rarely what a reader
    needs, and multi-line messages do not fit a table).
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else '(no message)'}"
    return text if len(text) <= limit else text[: limit - 3] + "..."

