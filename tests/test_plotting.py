import matplotlib

matplotlib.use("Agg")
import pandas as pd
import pytest

from course_lib import plotting


def test_plot_curves_draws_one_line_per_label():
    ax = plotting.plot_curves({"torch": [3, 2, 1], "jax": [3, 2.5, 1.5]}, ylabel="loss (nats)")
    assert [line.get_label() for line in ax.get_lines()] == ["torch", "jax"]
    assert list(ax.get_lines()[1].get_ydata()) == [3, 2.5, 1.5]
    assert ax.get_ylabel() == "loss (nats)"


@pytest.mark.parametrize("curves, kwargs, message", [
    ({}, {}, "at least one"),
    ({"a": []}, {}, "empty"),
    ({"a": [1, 0]}, {"logy": True}, "<= 0"),
])
def test_plot_curves_rejects_bad_input(curves, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_curves(curves, ylabel="y", **kwargs)


def test_grouped_bars_leaves_missing_pairs_empty():
    frame = pd.DataFrame({"fw": ["torch", "torch", "jax"], "ds": ["a", "b", "a"],
                          "value": [1.0, 2.0, 3.0]})
    ax = plotting.grouped_bars(frame, group="fw", series="ds", unit="s")
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [1.0, 2.0, 3.0]  # (jax, b) is missing: no bar, not a zero bar
    assert ax.get_ylabel() == "value (s)"


def test_grouped_bars_rejects_duplicates_and_unknown_columns():
    frame = pd.DataFrame({"fw": ["torch", "torch"], "ds": ["a", "a"], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match="aggregate"):
        plotting.grouped_bars(frame, group="fw", series="ds", unit="s")
    with pytest.raises(ValueError, match="no column 'speed'"):
        plotting.grouped_bars(frame, group="fw", series="ds", value="speed", unit="s")
