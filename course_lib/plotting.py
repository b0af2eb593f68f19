"""Plots the lessons share: training curves and grouped bars with units.

Both return the matplotlib ``Axes`` they drew on, so a lesson can add to them. matplotlib is
imported when a function is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def plot_curves(curves: Mapping[str, Sequence[float]], *, ylabel: str, xlabel: str = "step",
                title: str | None = None, logy: bool = False, ax=None):
    """One line per entry of ``curves`` (label -> sequence of values, e.g. loss per step).

    Args:
        curves: at least one non-empty sequence of numbers per label.
        ylabel / xlabel: axis labels; give units, e.g. ``"loss (nats)"``.
        logy: log-scale the y axis (all values must then be positive).
        ax: an Axes to draw on (default: a new figure).

    Raises:
        ValueError: no curves, an empty curve, or ``logy`` with a non-positive value.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if not curves:
        raise ValueError("plot_curves(): give at least one curve")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for label, given in curves.items():
        values = np.asarray(given, dtype=float)
        if values.size == 0:
            raise ValueError(f"plot_curves(): curve {label!r} is empty")
        if logy and (values <= 0).any():
            raise ValueError(f"plot_curves(): curve {label!r} has values <= 0; use logy=False")
        ax.plot(np.arange(values.size), values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def grouped_bars(frame, *, group: str, series: str, value: str = "value", unit: str,
                 title: str | None = None, logy: bool = False, ax=None):
    """Grouped bar chart from a long table: one group of bars per distinct ``frame[group]``,
    one bar colour per distinct ``frame[series]``, bar height ``frame[value]`` in ``unit``.

    Missing (group, series) pairs are left empty, never drawn as zero. Duplicate pairs raise
    ValueError (aggregate first, e.g. with a median). ``frame`` is a pandas DataFrame.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    for column in (group, series, value):
        if column not in frame.columns:
            raise ValueError(f"grouped_bars(): no column {column!r} in {list(frame.columns)}")
    if frame.duplicated([group, series]).any():
        raise ValueError("grouped_bars(): several rows share a (group, series) pair; "
                         "aggregate them first (e.g. frame.groupby([...]).median())")
    table = frame.pivot(index=group, columns=series, values=value)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5, 1.2 * len(table.index) + 2), 3.5))
    width = 0.8 / max(1, len(table.columns))
    positions = np.arange(len(table.index))
    for i, name in enumerate(table.columns):
        heights = table[name].to_numpy(dtype=float)
        ok = ~np.isnan(heights)
        ax.bar(positions[ok] + i * width - 0.4 + width / 2, heights[ok], width, label=str(name))
    ax.set_xticks(positions, [str(g) for g in table.index], rotation=20, ha="right")
    ax.set_ylabel(f"{value} ({unit})")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return ax
