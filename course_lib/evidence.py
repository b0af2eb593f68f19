"""Gathering the recorded results of every lesson into evidence for lesson 12.

Lesson 12 builds its decision matrix from records, not from prose. This module is the data
wrangling behind it; the decisions (which measurement stands for which criterion, the weights,
the verdict rules) stay in the notebook, where the student reads and changes them.

- :func:`load_records` reads this run's records and the committed reference records
  (``results/reference/<machine>/*.jsonl``) into one table, every row labelled with its
  ``source`` (``"this run"`` or ``"reference: <machine>"``) and its ``hardware``.
- :func:`select` picks the rows of one measurement, from this run when it has them, else from
  the first reference folder that does, so that one criterion's numbers all come from one
  machine (times measured on different machines are not comparable).
- :func:`best_per_framework` keeps each framework's best configuration (backend, mode, model).
- :func:`measured` / :func:`missing` make the rows of the long evidence table: one row per
  (framework, criterion), with the value and unit, or ``status="missing"`` and the reason.
  A missing criterion is NaN with a reason, never 0.
- The decision matrix's arithmetic (normalising, weighting, ranking) is not here: lesson 12
  writes it where the student reads it.
- :func:`count_model_lines` counts the lines of code of a model's definition in each
  framework, read from a lesson notebook itself.

Nothing here imports a deep-learning framework: pandas, NumPy and the standard library only.
"""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from course_lib import results

#: ``source`` of the records of the current run.
THIS_RUN = "this run"
#: Columns of the long evidence table made by :func:`measured` / :func:`missing`.
EVIDENCE_COLUMNS = ("framework", "criterion", "value", "unit", "status", "reason", "lesson",
                    "metric", "detail", "hardware", "source")
UNKNOWN_HARDWARE = "unknown hardware (the record names none)"


def reference_label(folder: str | os.PathLike) -> str:
    """The ``source`` label of the reference records in ``folder``: ``"reference: <name>"``."""
    return f"reference: {Path(folder).name}"


def course_folder() -> Path | None:
    """The course's root folder: :func:`results.course_root` of the working directory, else
    the folder holding this installed ``course_lib`` when it has ``notebooks/`` (a notebook
    executed from a copy elsewhere, e.g. by a site builder); None when neither is found."""
    root = results.course_root()
    if root is not None:
        return root
    package_parent = Path(__file__).resolve().parent.parent
    return package_parent if (package_parent / "notebooks").is_dir() else None


def default_reference_dir() -> Path | None:
    """``$COURSE_REFERENCE_DIR`` (set by the Colab setup, which downloads the committed
    reference records), else ``results/reference`` under :func:`course_folder`, else None."""
    if os.environ.get("COURSE_REFERENCE_DIR"):
        return Path(os.environ["COURSE_REFERENCE_DIR"])
    root = course_folder()
    return root / "results" / "reference" if root else None


def _label(frame, source: str, is_reference: bool):
    frame = frame.copy()
    frame["source"] = source
    frame["is_reference"] = is_reference
    device = frame["device"].astype(object)
    frame["hardware"] = device.where(device.notna() & (device.astype(str).str.strip() != ""),
                                     UNKNOWN_HARDWARE)
    return frame


def newest_runs(frame, gap_minutes: float = 30.0):
    """Keep, per (source, lesson), only the records of the newest run of that lesson.

    A results folder written by several runs (a lesson run twice) would otherwise mix old and
    new figures. A run is told apart by time, not by ``run_id``: a lesson's worker
    subprocesses (lesson 09's benchmarks, lesson 11's engines) record under run ids of their
    own while the lesson runs. The records of one (source, lesson), in time order, are cut
    wherever ``gap_minutes`` pass without a record, and the last piece is kept. Records
    without a timestamp are kept.
    """
    import pandas as pd

    if frame.empty:
        return frame
    when = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce")
    keep = pd.Series(True, index=frame.index)
    for _, index in frame.groupby(["source", "lesson"], dropna=False).groups.items():
        times = when[index].dropna().sort_values()
        if times.empty:
            continue
        gaps = times.diff() > pd.Timedelta(minutes=gap_minutes)
        start = times[gaps].iloc[-1] if gaps.any() else times.iloc[0]
        keep[index] = ~(when[index] < start)
    return frame[keep].reset_index(drop=True)


def load_records(results_dir: str | os.PathLike | None = None,
                 reference_dir: str | os.PathLike | None = None, *, newest_only: bool = True):
    """This run's records and the reference records as one pandas DataFrame.

    Args:
        results_dir: this run's results folder (default :func:`results.results_dir`).
        reference_dir: a folder of reference folders, one per machine, each holding
            ``*.jsonl`` records (default :func:`default_reference_dir`). A folder that does not
            exist gives no reference rows.
        newest_only: keep only the newest run of each lesson per source (:func:`newest_runs`).

    Returns:
        The columns of :func:`results.read_results` plus ``source`` (``"this run"`` or
        ``"reference: <machine folder>"``), ``is_reference`` (bool) and ``hardware`` (the
        record's ``device``, or :data:`UNKNOWN_HARDWARE`). Empty (with those columns) when
        there are no records at all.
    """
    import pandas as pd

    frames = [_label(results.read_results(results_dir), THIS_RUN, False)]
    ref = Path(reference_dir) if reference_dir is not None else default_reference_dir()
    if ref is not None and ref.is_dir():
        for folder in sorted(p for p in ref.iterdir() if p.is_dir()):
            records = results.read_results(folder)
            if not records.empty:
                frames.append(_label(records, reference_label(folder), True))
    frames = [f for f in frames if not f.empty] or frames[:1]
    frame = pd.concat(frames, ignore_index=True, sort=False)
    return newest_runs(frame) if newest_only else frame


def _matches(frame, filters: Mapping):
    import pandas as pd

    mask = pd.Series(True, index=frame.index)
    for column, wanted in filters.items():
        # a column the records do not have is empty in every record
        values = frame[column] if column in frame.columns else pd.Series(
            [None] * len(frame), index=frame.index, dtype=object)
        if callable(wanted):
            mask &= values.map(lambda v, f=wanted: bool(f(v)))
        elif isinstance(wanted, (list, tuple, set, frozenset)):
            mask &= values.isin(list(wanted))
        elif wanted is None:
            mask &= values.isna()
        else:
            mask &= values == wanted
    return mask


def select(frame, lesson: str | Iterable[str], metric: str | Iterable[str], **filters):
    """The records of one measurement, all from one source.

    Args:
        frame: a table from :func:`load_records`.
        lesson / metric: a lesson id (``"06"``) and metric name, or iterables of them.
        **filters: column -> wanted value (equality), list/tuple/set (membership), None
            (the column is empty) or a callable (value -> bool). A column the records do
            not have counts as empty (None) in every record.

    Returns:
        ``(rows, source)``: the matching rows of this run if there are any, else those of the
        first reference source (alphabetical) that has some; ``(empty frame, None)`` when no
        source has the measurement.
    """
    lessons = [lesson] if isinstance(lesson, str) else list(lesson)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    rows = frame[frame["lesson"].isin(lessons) & frame["metric"].isin(metrics)]
    rows = rows[_matches(rows, filters)] if filters else rows
    if rows.empty:
        return rows, None
    sources = sorted(rows["source"].unique(), key=lambda s: (s != THIS_RUN, s))
    chosen = sources[0]
    return rows[rows["source"] == chosen].reset_index(drop=True), chosen


def describe(row, columns: Iterable[str] = ("backend", "mode", "model")) -> str:
    """A short text naming a record's configuration, e.g. ``"backend=jax, mode=jit"``."""
    parts = []
    for column in columns:
        value = row.get(column) if hasattr(row, "get") else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)) \
                and str(value) != "":
            parts.append(f"{column}={value}")
    return ", ".join(parts)


def best_per_framework(rows, better: str):
    """Each framework's best record: the lowest value (``better="lower"``) or the highest
    (``"higher"``) over its configurations. Returns the chosen rows, one per framework, with
    a ``detail`` column from :func:`describe`. Raises ValueError for another ``better``."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if rows.empty:
        out = rows.copy()
        out["detail"] = []
        return out
    ordered = rows.sort_values("value", ascending=better == "lower", kind="stable")
    best = ordered.drop_duplicates("framework", keep="first").copy()
    best["detail"] = [describe(r) for _, r in best.iterrows()]
    return best.sort_values("framework").reset_index(drop=True)


def measured(framework: str, criterion: str, value: float, unit: str, *, lesson: str,
             metric: str, hardware: str, source: str, detail: str = "") -> dict:
    """One row of the evidence table for a measured criterion.

    Raises:
        ValueError: a value that is not a finite number (a failed measurement is
            :func:`missing`, with its reason), or an empty hardware/source label.
    """
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{framework}/{criterion}: value {value!r} is not finite; "
                         "record it with missing(..., reason=...) instead")
    if not hardware or not source:
        raise ValueError(f"{framework}/{criterion}: every number needs its hardware and source")
    return {"framework": framework, "criterion": criterion, "value": number, "unit": unit,
            "status": "measured", "reason": "", "lesson": lesson, "metric": metric,
            "detail": detail, "hardware": hardware, "source": source}


def missing(framework: str, criterion: str, reason: str, *, lesson: str = "",
            metric: str = "", unit: str = "") -> dict:
    """One row of the evidence table for a criterion with no usable measurement: value NaN
    (never 0), ``status="missing"`` and the reason. Raises ValueError for an empty reason."""
    if not reason or not reason.strip():
        raise ValueError(f"{framework}/{criterion}: a missing value needs its reason")
    return {"framework": framework, "criterion": criterion, "value": math.nan, "unit": unit,
            "status": "missing", "reason": reason, "lesson": lesson, "metric": metric,
            "detail": "", "hardware": "", "source": ""}


def from_rows(chosen, criterion: str, frameworks: Iterable[str], *, unit: str | None = None,
              lesson: str, metric: str, source: str | None, absent: str,
              transform=None) -> list[dict]:
    """Evidence rows for ``frameworks`` from one chosen row per framework (e.g. the output of
    :func:`best_per_framework`): measured where the framework has a row, else missing with
    the reason ``absent`` (which may use ``{framework}``). ``transform(value) -> value`` may
    convert units; ``unit`` overrides the records' unit."""
    out = []
    by_framework = {r["framework"]: r for _, r in chosen.iterrows()} if len(chosen) else {}
    for framework in frameworks:
        row = by_framework.get(framework)
        if row is None:
            out.append(missing(framework, criterion, absent.format(framework=framework),
                               lesson=lesson, metric=metric, unit=unit or ""))
            continue
        value = row["value"] if transform is None else transform(row["value"])
        out.append(measured(framework, criterion, value, unit or row["unit"], lesson=lesson,
                            metric=metric, hardware=row["hardware"], source=source or THIS_RUN,
                            detail=row.get("detail", "") or describe(row)))
    return out


def evidence_table(rows: Iterable[Mapping]):
    """The long evidence table (:data:`EVIDENCE_COLUMNS`) from rows made by :func:`measured`
    and :func:`missing`. Raises ValueError when a (framework, criterion) appears twice."""
    import pandas as pd

    table = pd.DataFrame(list(rows), columns=list(EVIDENCE_COLUMNS))
    duplicated = table.duplicated(["framework", "criterion"])
    if duplicated.any():
        pairs = table.loc[duplicated, ["framework", "criterion"]].values.tolist()
        raise ValueError(f"evidence_table(): duplicate (framework, criterion) rows: {pairs}")
    return table


def cell_text(value: float, unit: str, status: str = "measured", reason: str = "") -> str:
    """A value with its unit for a table cell (3 significant figures), or
    ``"missing: <reason>"``."""
    if status != "measured" or value is None or (isinstance(value, float) and math.isnan(value)):
        return f"missing: {reason}" if reason else "missing"
    return f"{value:.3g} {unit}".strip()


def sources_used(evidence):
    """Which hardware and source every criterion's numbers came from: one row per
    (criterion, source, hardware) with the frameworks measured there."""
    rows = evidence[evidence["status"] == "measured"]
    return (rows.groupby(["criterion", "source", "hardware"], sort=False)["framework"]
            .apply(lambda s: ", ".join(sorted(s))).reset_index(name="frameworks"))


# --- lines of code, counted from the notebooks --------------------------------------------

def _code_cells(notebook: str | os.PathLike) -> list[str]:
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def _definitions(notebook):
    """Top-level ``def``/``class`` statements of the notebook's code cells, in order:
    name -> (node, source lines of the cell). A ``%%writefile`` cell counts as the script it
    writes; other cells that do not parse (magics) are skipped."""
    found = {}
    for source in _code_cells(notebook):
        if source.startswith("%%writefile"):  # a worker script shown in the notebook (lesson 06)
            source = source.partition("\n")[2]
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in found:
                found[node.name] = (node, lines)
    return found


def _text(node, lines) -> str:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[start - 1:node.end_lineno])


def _code_lines(text: str) -> int:
    """Lines that are neither blank nor only a comment; a docstring counts (it is written)."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def _names_used(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def count_model_lines(notebook: str | os.PathLike, markers: Mapping[str, str | Iterable[str]],
                      *, follow_helpers: bool = True):
    """Lines of code of the same model in each framework, counted from a lesson notebook.

    For each framework, the model is the *first* top-level ``def`` or ``class`` of the
    notebook whose source contains one of its markers (e.g. ``"(nn.Module)"`` for a PyTorch
    class, ``"keras.Sequential("`` for a Keras builder function). With ``follow_helpers``
    the count adds the other top-level definitions of the notebook that the model uses by
    name, and those they use, transitively (a Keras builder's list of layers, a custom
    layer, the convolution helper of a hand-written JAX forward pass), except the other
    frameworks' models. Lines are counted without blank lines and comment-only lines.

    Args:
        notebook: path of an ``.ipynb`` file.
        markers: framework -> a marker string or several (any of them matches).

    Returns:
        DataFrame with one row per framework of ``markers``: ``framework``, ``lines`` (NaN
        when no definition matched), ``definitions`` (the names counted, model first),
        ``notebook`` (file name).

    Raises:
        FileNotFoundError: the notebook does not exist.
    """
    import pandas as pd

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"count_model_lines(): no notebook {path}")
    defs = _definitions(path)
    models = {}
    for framework, wanted in markers.items():
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        for name, (node, lines) in defs.items():
            if any(m in _text(node, lines) for m in wanted):
                models[framework] = name
                break
    rows = []
    for framework in markers:
        name = models.get(framework)
        if name is None:
            rows.append({"framework": framework, "lines": math.nan, "definitions": "",
                         "notebook": path.name})
            continue
        others = set(models.values()) - {name}
        counted, todo = [], [name]
        while todo:
            current = todo.pop(0)
            if current in counted:
                continue
            counted.append(current)
            if follow_helpers:
                node, _ = defs[current]
                todo += sorted(n for n in _names_used(node)
                               if n in defs and n not in others and n not in counted)
        total = sum(_code_lines(_text(*defs[n])) for n in counted)
        rows.append({"framework": framework, "lines": total, "definitions": ", ".join(counted),
                     "notebook": path.name})
    return pd.DataFrame(rows)
