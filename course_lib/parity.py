"""Show that several frameworks computed the same numbers as the float64 reference.

A lesson computes the same thing (logits of a forward pass, losses of the first SGD steps) in
each framework, from the same initial weights, and hands the outputs to :func:`parity_table`::

    table = parity_table(
        {"keras/jax": keras_logits, "torch": torch_logits, "jax": jax_logits},
        mlp_forward(weights, x),
        tol=1e-5,
        lesson="03",
    )
    show(table)
    assert_parity(table)

Nothing here imports a deep-learning framework: outputs are read through NumPy (torch tensors
are detached and moved to the CPU first).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["assert_parity", "max_abs_diff", "parity_table", "show", "split_key"]


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _to_numpy(values) -> np.ndarray:
    """float64 NumPy copy of an array from any framework (torch, JAX, TF, Keras, NumPy, lists)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor, maybe on a GPU
        values = values.detach().cpu()
    return np.array(values, dtype=np.float64)


def max_abs_diff(values, reference) -> float:
    """``max |values - reference|`` over all entries, as a Python float (NaN if any is NaN).

    Raises:
        ValueError: the shapes differ, or the arrays are empty.
    """
    a, b = _to_numpy(values), _to_numpy(reference)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} differs from the reference's {b.shape}.")
    if a.size == 0:
        raise ValueError("the arrays are empty.")
    diff = np.abs(a - b)
    return float("nan") if np.isnan(diff).any() else float(diff.max())


def split_key(key: str) -> tuple[str, str | None, str | None]:
    """Split an output key into ``(framework, backend, mode)``.

    * ``"keras/<backend>[/<mode>]"``: Keras on a backend, e.g. ``"keras/jax"`` ->
      ``("keras", "jax", None)``, ``"keras/torch/compiled"`` -> ``("keras", "torch", "compiled")``;
    * ``"<framework>[/<mode>]"`` for the others, e.g. ``"torch"`` -> ``("torch", None, None)``,
      ``"jax/jit"`` -> ``("jax", None, "jit")``, ``"tensorflow/graph"``.

    Raises:
        ValueError: an empty part, or more parts than above.
    """
    if not isinstance(key, str):
        raise ValueError(f"keys must be strings like 'torch' or 'keras/jax', got {key!r}.")
    parts = key.split("/")
    if any(not part for part in parts):
        raise ValueError(f"key {key!r} has an empty part; use e.g. 'torch' or 'keras/jax'.")
    if parts[0] == "keras" and len(parts) <= 3:
        return (
            "keras",
            (parts[1] if len(parts) > 1 else None),
            (parts[2] if len(parts) > 2 else None),
        )
    if parts[0] != "keras" and len(parts) <= 2:
        return parts[0], None, (parts[1] if len(parts) > 1 else None)
    raise ValueError(
        f"key {key!r} has too many parts; use 'framework', 'framework/mode', "
        "'keras/backend' or 'keras/backend/mode'."
    )


def parity_table(
    outputs: Mapping[str, object],
    reference,
    *,
    tol: float,
    metric: str = "forward_max_abs_diff",
    lesson: str | None = None,
    record: bool = True,
    unit: str = "abs",
) -> pd.DataFrame:
    """One row per framework: the largest absolute difference from the reference, and pass/fail.

    Works for anything compared entry by entry: logits of a forward pass (the default metric
    ``"forward_max_abs_diff"``), losses over the first steps of training (pass
    ``metric="loss_max_abs_diff"`` and arrays of losses), gradients, weights after training.

    A framework passes when ``max |output - reference| <= tol``; NaN or infinity fails.

    Args:
        outputs: ``{key: array}``, keys as in :func:`split_key` (``"torch"``, ``"jax"``,
            ``"tensorflow"``, ``"keras/jax"``...); arrays of any framework, same shape as
            ``reference``.
        reference: the float64 reference (e.g. :func:`course_lib.models.mlp_forward` or
            :func:`course_lib.models.sgd_reference`).
        tol: the tolerance, in the units of the outputs (a positive number; 1e-5 for a float32
            forward pass is typical).
        metric: the name the measurement is recorded under.
        lesson: the lesson's id, e.g. ``"03"`` or ``"03_pytorch"``; needed for recording.
        record: when true and ``lesson`` is given, call :func:`course_lib.results.record` once
            per framework with the value, ``tol`` and ``passed`` (a NaN or infinite difference
            is not recorded, with a warning: the store holds finite numbers only).
        unit: the unit recorded with the value (``"abs"``: an absolute difference in the units
            of the outputs, e.g. logits or nats of loss).

    Returns:
        A DataFrame indexed by key with columns ``framework``, ``backend``, ``mode``,
        ``max_abs_diff``, ``tol``, ``passed``; ``table.attrs`` holds ``metric``, ``unit`` and
        ``lesson``.

    Raises:
        ValueError: no outputs, a bad key, a tolerance that is not a positive number, or an
            output whose shape differs from the reference's (the message names the framework).
    """
    if not outputs:
        raise ValueError("outputs is empty: give {framework: array}, e.g. {'torch': logits}.")
    if not _is_real_number(tol) or not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive finite number, got {tol!r}.")
    ref = _to_numpy(reference)
    rows: list[dict[str, Any]] = []
    for key, values in outputs.items():
        framework, backend, mode = split_key(key)
        try:
            diff = max_abs_diff(values, ref)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
        passed = bool(np.isfinite(diff) and diff <= tol)
        rows.append(
            {
                "key": key,
                "framework": framework,
                "backend": backend,
                "mode": mode,
                "max_abs_diff": diff,
                "tol": float(tol),
                "passed": passed,
            }
        )
    table = pd.DataFrame(rows).set_index("key")
    table.attrs.update({"metric": metric, "unit": unit, "lesson": lesson})
    if record and lesson is not None:
        from . import results

        for row in rows:
            if not np.isfinite(row["max_abs_diff"]):
                # results.record stores finite numbers only: the failure shows in the table.
                warnings.warn(
                    f"parity_table: {row['key']} gave a non-finite difference "
                    f"({row['max_abs_diff']}); not recorded.",
                    stacklevel=2,
                )
                continue
            results.record(
                lesson,
                metric,
                row["max_abs_diff"],
                unit,
                framework=row["framework"],
                backend=row["backend"],
                mode=row["mode"],
                tol=float(tol),
                passed=row["passed"],
            )
    return table


def assert_parity(table: pd.DataFrame) -> None:
    """Raise ``AssertionError`` listing every framework of ``table`` that did not pass.

    Raises:
        AssertionError: at least one row has ``passed == False``; the message gives each key,
            its difference and the tolerance.
        ValueError: ``table`` is not a :func:`parity_table` result.
    """
    if not isinstance(table, pd.DataFrame) or not {"max_abs_diff", "tol", "passed"} <= set(
        table.columns
    ):
        raise ValueError("assert_parity expects the DataFrame returned by parity_table.")
    failed = table[~table["passed"].astype(bool)]
    if len(failed):
        metric = table.attrs.get("metric", "max_abs_diff")
        lines = [
            f"  {key}: {row['max_abs_diff']:.3g} > tol {row['tol']:.3g}"
            for key, row in failed.iterrows()
        ]
        raise AssertionError(
            f"{len(failed)} of {len(table)} frameworks differ from the reference ({metric}):\n"
            + "\n".join(lines)
        )


def show(table: pd.DataFrame):
    """The table for display in a notebook: differences in scientific notation, failures in red.

    Returns a pandas ``Styler`` (which needs jinja2), or the DataFrame itself without it.
    """
    try:
        import jinja2  # noqa: F401  (pandas' Styler needs it)
    except ImportError:
        return table

    def colour(passed):
        return "color: #1a7f37" if passed else "color: #cf222e; font-weight: bold"

    return table.style.format({"max_abs_diff": "{:.2e}", "tol": "{:.0e}"}).map(
        colour, subset=["passed"]
    )


def keras_step_loss(model, x, y) -> float:
    """The loss of one ``model.train_on_batch(x, y)`` step, on every Keras 3 release.

    ``train_on_batch`` computes the loss of the batch *before* its update. Keras 3.15 returns
    exactly that; Keras 3.13 and 3.14 (what Colab ships) return the running mean of the
    losses since the model's metrics were last reset (seen: 0.21 away from the step's loss
    after a few SGD steps). Resetting the metrics first (``model.reset_metrics()``) gives the
    step's own loss on both, which is what a parity check against a reference must compare.

    Args:
        model: a compiled ``keras.Model``.
        x, y: one batch, as ``train_on_batch`` takes them.

    Returns:
        The step's loss as a Python float (the call waits for the step to finish).
    """
    model.reset_metrics()
    return float(model.train_on_batch(x, y))
