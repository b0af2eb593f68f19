"""Recording measurements as machine-readable results (CURRICULUM section 3.3).

Every figure a lesson measures (accuracy, seconds per step, peak memory, model size, parity)
is appended as one JSON object per line to ``<results dir>/<lesson>.jsonl``. Each record
carries the hardware and the framework versions that produced it, so that lesson 12 (and the
course site) can build tables from records rather than from prose.

The results directory is, in order: the ``results_dir`` argument, the environment variable
``COURSE_RESULTS_DIR``, or ``build/results`` under the course's root folder (the nearest
parent folder of the working directory holding ``pyproject.toml`` and ``course_lib/``; the
working directory itself when there is none, as on Colab).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, TypedDict, cast

from course_lib import paths, runtime

#: Fields every record has, in this order (the reader's column order).
FIELDS = (
    "lesson",
    "framework",
    "backend",
    "mode",
    "metric",
    "value",
    "unit",
    "device",
    "profile",
    "versions",
    "timestamp",
    "run_id",
)



class Record(TypedDict, total=False):
    """One result record: a line of ``<results_dir>/<lesson>.jsonl`` (see :data:`FIELDS`).

    ``value`` is a finite float in ``unit``; ``versions`` maps package -> version; extra fields
    a lesson adds (``passed``, ``tol``, ``size`` ...) follow the standard ones.
    """

    lesson: str
    framework: str
    backend: str | None
    mode: str | None
    metric: str
    value: float
    unit: str
    device: str
    profile: str | None
    versions: dict[str, str]
    timestamp: str
    run_id: str


_RUN_ID = os.environ.get("COURSE_RUN_ID") or uuid.uuid4().hex[:12]


course_root = paths.course_root  # the folder rules live in course_lib.paths
results_dir = paths.results_dir


def record(
    lesson: str,
    metric: str,
    value: float,
    unit: str,
    *,
    framework: str,
    backend: str | None = None,
    mode: str | None = None,
    device: str | None = None,
    results_dir: str | os.PathLike | None = None,
    **extra: Any,
) -> Record:
    """Append one measurement to the results store and return the record.

    Args:
        lesson: lesson id such as ``"01"`` (two digits) or ``"01_data"``; the file name is
            ``<lesson>.jsonl``.
        metric: what was measured, snake_case, e.g. ``"test_accuracy"``, ``"fit_time"``,
            ``"forward_max_abs_diff"``.
        value: a finite real number (bools are stored as 0/1).
        unit: the unit of ``value``: ``"s"``, ``"ms"``, ``"MB"``, ``"fraction"``, ``"abs"``...
        framework: ``"sklearn"``, ``"keras"``, ``"torch"``, ``"jax"``, ``"tensorflow"``,
            ``"xgboost"``, ``"numpy"``...
        backend: the Keras backend (``"tensorflow"``, ``"jax"``, ``"torch"``) where it applies.
        mode: how the framework ran, e.g. ``"eager"``, ``"jit"``, ``"tf.function"``.
        device: a description of the hardware; default :func:`runtime.device_description`.
        results_dir: overrides the results directory.
        **extra: further JSON-serialisable fields (model name, tolerance, sizes...).

    Returns:
        The record as written (a dict with :data:`FIELDS` and the extra keys).

    Raises:
        ValueError: empty lesson/metric/unit/framework, a value that is not a finite number,
            or extra fields that are not JSON-serialisable or clash with :data:`FIELDS`.
    """
    for name, text in (("lesson", lesson), ("metric", metric), ("unit", unit),
                       ("framework", framework)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"record(): {name} must be a non-empty string, got {text!r}")
    if isinstance(value, bool):
        value = int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"record(): value for metric {metric!r} must be a number, got {value!r}; "
            "convert tensors with float(x) or x.item() first"
        ) from None
    if not math.isfinite(number):
        raise ValueError(
            f"record(): value for metric {metric!r} is {number}; record only finite numbers "
            "(a NaN loss is a finding to explain in the lesson, not a result to average)"
        )
    clash = set(extra) & set(FIELDS)
    if clash:
        raise ValueError(f"record(): extra fields {sorted(clash)} clash with standard fields")
    row: dict[str, Any] = {
        "lesson": lesson,
        "framework": framework,
        "backend": backend,
        "mode": mode,
        "metric": metric,
        "value": number,
        "unit": unit,
        "device": device or runtime.device_description(),
        "profile": os.environ.get("COURSE_PROFILE_ACTIVE") or os.environ.get("COURSE_PROFILE"),
        "versions": runtime.framework_versions(),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "run_id": _RUN_ID,
        **extra,
    }
    try:
        line = json.dumps(row, sort_keys=False)
    except TypeError as exc:
        raise ValueError(f"record(): extra fields must be JSON-serialisable ({exc})") from None
    folder = _resolve(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # One write() of one line in append mode: concurrent writers never interleave lines.
    with open(folder / f"{lesson}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    return cast(Record, row)


def _resolve(path: str | os.PathLike | None) -> Path:
    return results_dir(path)


def read_results(results_dir: str | os.PathLike | None = None, lessons=None):
    """All records in the results directory as a pandas DataFrame, one row per record.

    Columns: :data:`FIELDS` first, then any extra fields. ``versions`` stays a dict.
    ``lessons``: an optional iterable of lesson ids to keep. An empty or missing directory
    gives an empty DataFrame with the standard columns. Lines that are not valid JSON (for
    example a record cut short by a crash) are skipped with a warning, never raised.
    """
    import warnings

    import pandas as pd

    folder = _resolve(results_dir)
    rows = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipped a line that is not JSON", stacklevel=2)
    frame = pd.DataFrame(rows)
    for column in FIELDS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    extras = [c for c in frame.columns if c not in FIELDS]
    frame = frame[list(FIELDS) + extras]
    if lessons is not None:
        frame = frame[frame["lesson"].isin(list(lessons))].reset_index(drop=True)
    return frame


def latest(frame):
    """Keep only the newest record of each (lesson, framework, backend, mode, metric, model)."""
    if frame.empty:
        return frame
    keys = [k for k in ("lesson", "framework", "backend", "mode", "metric", "model")
            if k in frame.columns]
    ordered = frame.sort_values("timestamp", kind="stable")
    return ordered.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def summary(frame):
    """A compact pivot of the newest records: one row per (lesson, framework, backend, mode,
    metric) with value and unit; used by the course summary and the site's front page."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame(columns=["lesson", "framework", "backend", "mode", "metric",
                                     "value", "unit"])
    cols = ["lesson", "framework", "backend", "mode", "metric", "value", "unit"]
    extra = ["model"] if "model" in frame.columns else []
    out = latest(frame)[cols[:5] + extra + cols[5:]].copy()
    return out.fillna({"backend": "", "mode": "", **({"model": ""} if extra else {})})
