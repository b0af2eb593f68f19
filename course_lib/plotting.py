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


# --- Concept figures: a figure with its text alternative, and boxes-and-arrows graphs --------


def show_figure(fig, alt: str, *, dpi: int = 96, tight: bool = True) -> None:
    """Display matplotlib figure ``fig`` as a PNG image with alt text ``alt``, then close it.

    The output is one display bundle: ``text/html`` (an ``<img alt="...">`` holding the PNG as
    a data URI, which Jupyter, Colab and the course site all prefer), ``image/png`` (the same
    PNG, for a front end that shows no HTML) and ``text/plain`` (the alt text, for plain-text
    readers). The alt text travels inside the output, so it survives ``tools/nbclean.py``
    (which strips cell metadata, such as MyST-NB's ``mystnb: image: alt``) and the student
    edition; the site's MyST-NB renders the HTML, alt included.

    Args:
        fig: a matplotlib ``Figure``; closed afterwards so the inline backend does not show
            it a second time.
        alt: the text alternative: what the figure shows, in one or two sentences (screen
            readers read it; https://www.w3.org/WAI/tutorials/images/informative/).
        dpi: resolution of the PNG in dots per inch.
        tight: crop the PNG to what was drawn (``bbox_inches="tight"``, which draws the
            figure twice); False keeps the figure's own size, faster for large drawings.

    Raises:
        ValueError: ``alt`` is empty or only white space (write what the figure shows).
    """
    import base64
    import html
    import io

    import matplotlib.pyplot as plt
    from IPython.display import display

    if not isinstance(alt, str) or not alt.strip():
        plt.close(fig)
        raise ValueError("show_figure(): give alt text that says what the figure shows")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    text = " ".join(alt.split())
    tag = (f'<img src="data:image/png;base64,{data}" alt="{html.escape(text, quote=True)}" '
           'style="max-width: 100%">')
    display({"text/html": tag, "image/png": data, "text/plain": f"[figure] {text}"}, raw=True)


def layered_positions(nodes: Sequence[str], edges: Sequence[tuple[str, str]]):
    """x, y positions for a directed acyclic graph drawn left to right.

    A node's column is the length of the longest path reaching it, then moved right to one
    column before its first use (so an input sits next to the step that reads it); the nodes
    of a column are spread evenly on y in the order ``nodes`` gives them.

    Args:
        nodes: node names, each once.
        edges: (source, target) pairs of names in ``nodes``.

    Returns:
        dict name -> (column, row) as floats; rows are centred on 0.

    Raises:
        ValueError: a duplicate node, an edge naming an unknown node, or a cycle.
    """
    if len(set(nodes)) != len(nodes):
        raise ValueError("layered_positions(): node names must be unique")
    known = set(nodes)
    for a, b in edges:
        if a not in known or b not in known:
            raise ValueError(f"layered_positions(): edge ({a!r}, {b!r}) names an unknown node")
    column = {n: 0 for n in nodes}
    for _ in range(len(nodes) + 1):
        changed = False
        for a, b in edges:
            if column[b] < column[a] + 1:
                column[b] = column[a] + 1
                changed = True
        if not changed:
            break
    else:
        raise ValueError("layered_positions(): the edges form a cycle")
    for _ in range(len(nodes) + 1):  # then each node moves right, to just before its first use
        changed = False
        for n in nodes:
            uses = [column[b] for a, b in edges if a == n]
            if uses and column[n] < min(uses) - 1:
                column[n], changed = min(uses) - 1, True
        if not changed:
            break
    by_column: dict[int, list[str]] = {}
    for n in nodes:
        by_column.setdefault(column[n], []).append(n)
    positions = {}
    for col, names in by_column.items():
        for i, n in enumerate(names):
            positions[n] = (float(col), (len(names) - 1) / 2 - i)
    return positions


def draw_graph(nodes: Mapping[str, str], edges: Sequence[tuple[str, str] | tuple[str, str, str]],
               *, colors: Mapping[str, str] | None = None, positions=None, ax=None,
               title: str | None = None, fontsize: float = 8):
    """Boxes and arrows: a directed acyclic graph, laid out left to right.

    Args:
        nodes: name -> the text in its box (may hold newlines), in the order to stack them.
        edges: (source, target) or (source, target, label) with names in ``nodes``; a label
            is written at the arrow's middle.
        colors: name -> a matplotlib colour for its box (default light grey); a colour
            ``"none"`` draws a box without fill.
        positions: name -> (x, y) in data units (default :func:`layered_positions`).
        ax: an Axes to draw on (default: a new figure sized to the graph).
        title: the axes title.

    Returns:
        The Axes (axis lines hidden).

    Raises:
        ValueError: no nodes, or as :func:`layered_positions`.
    """
    import matplotlib.pyplot as plt

    if not nodes:
        raise ValueError("draw_graph(): give at least one node")
    pairs = [(e[0], e[1]) for e in edges]
    pos = dict(positions) if positions is not None else layered_positions(list(nodes), pairs)
    missing = [n for n in nodes if n not in pos]
    if missing:
        raise ValueError(f"draw_graph(): no position for {missing}")
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    if ax is None:
        width = min(15.0, 2.8 * (max(xs) - min(xs) + 1))
        height = min(10.0, 0.55 * (max(ys) - min(ys) + 1) + 0.8)
        _, ax = plt.subplots(figsize=(width, height))
    colors = colors or {}
    boxes = {name: ax.text(*pos[name], text, ha="center", va="center", fontsize=fontsize,
                           bbox={"boxstyle": "round,pad=0.35", "fc": colors.get(name, "0.92"),
                                 "ec": "0.3"})
             for name, text in nodes.items()}
    for edge in edges:
        a, b = edge[0], edge[1]
        # from the right edge of a's box to the left edge of b's (fractions of the boxes)
        ax.annotate("", xy=(0, 0.5), xycoords=boxes[b], xytext=(1, 0.5), textcoords=boxes[a],
                    arrowprops={"arrowstyle": "-|>", "color": "0.35", "lw": 1.0,
                                "shrinkA": 2, "shrinkB": 2})
        if len(edge) > 2 and edge[2]:
            ax.text((pos[a][0] + pos[b][0]) / 2, (pos[a][1] + pos[b][1]) / 2, edge[2],
                    fontsize=fontsize - 1, ha="center", va="center", color="0.2",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax


def small_bars(values: Mapping[str, float], *, unit: str, title: str | None = None,
               logx: bool | None = None, wrap: int | None = 24, ax=None):
    """A small horizontal bar chart: one labelled bar per entry of ``values`` (label ->
    value in ``unit``), top to bottom in the mapping's order, each with its value printed at
    its end (3 significant digits), for a summary such as the site's front page.

    Args:
        values: at least one finite number per label.
        unit: the unit of the values, shown on the x axis (``"s"``, ``"fraction"``...).
        title: a title above the bars (e.g. the metric's name).
        logx: log-scale the x axis; None (default) chooses it when every value is positive
            and the largest is over 100 times the smallest.
        wrap: break labels longer than this many characters onto more lines (None: never).
        ax: an Axes to draw on (default: a new figure sized to the number of bars).

    Returns:
        The Axes drawn on.

    Raises:
        ValueError: no values, a value that is not a finite number, or ``logx=True`` with a
            value <= 0.
    """
    import textwrap

    import numpy as np

    if not values:
        raise ValueError("small_bars(): give at least one value")
    labels = [textwrap.fill(str(k), wrap, break_on_hyphens=False) if wrap else str(k)
              for k in values]
    try:
        numbers = np.asarray([float(v) for v in values.values()], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"small_bars(): every value must be a number, got {dict(values)!r}") from None
    if not np.isfinite(numbers).all():
        raise ValueError(f"small_bars(): values must be finite, got {dict(values)!r}")
    positive = bool((numbers > 0).all())
    if logx is None:
        logx = positive and numbers.max() > 100 * numbers.min()
    if logx and not positive:
        raise ValueError("small_bars(): logx needs values > 0; use logx=False")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4.2, 0.3 * len(labels) + 0.9))
    positions = np.arange(len(labels))
    ax.barh(positions, numbers, height=0.6, color="C0")
    ax.set_yticks(positions, labels, fontsize="small")
    ax.invert_yaxis()  # the first entry on top
    if logx:
        ax.set_xscale("log")
    for y, value in zip(positions, numbers, strict=True):
        ax.annotate(f"{value:.3g}", (value, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize="x-small")
    ax.margins(x=0.25)
    ax.set_xlabel(unit, fontsize="small")
    ax.tick_params(axis="x", labelsize="x-small")
    if title:
        ax.set_title(title, fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return ax
