"""The concept-figure helpers of course_lib.plotting (issue 18, item 5): figures shown with
their alt text, and boxes-and-arrows graphs laid out from their edges."""

import ast
import base64
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402

from course_lib import plotting  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """What show_figure displays: a list of (bundle, raw) pairs."""
    import IPython.display

    out = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: out.append((obj, raw)))
    return out


def test_show_figure_displays_the_png_with_its_alt_text_and_closes_the_figure(shown):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plotting.show_figure(fig, alt='A line falling from 1 to 0, "steeply" <fast> &\n  done')
    (bundle, raw), = shown
    assert raw is True and set(bundle) == {"text/html", "image/png", "text/plain"}
    html = bundle["text/html"]
    alt = re.search(r'alt="([^"]*)"', html).group(1)  # quotes and brackets escaped: one attribute
    assert alt == "A line falling from 1 to 0, &quot;steeply&quot; &lt;fast&gt; &amp; done"
    png = base64.b64decode(re.search(r"base64,([^\"]+)\"", html).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert base64.b64decode(bundle["image/png"]) == png  # the same image for a non-HTML viewer
    assert bundle["text/plain"] == '[figure] A line falling from 1 to 0, "steeply" <fast> & done'
    assert fig.number not in plt.get_fignums()  # closed: the inline backend will not show it twice


@pytest.mark.parametrize("alt", ["", "   \n", None])
def test_show_figure_refuses_a_figure_without_alt_text(shown, alt):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="alt text"):
        plotting.show_figure(fig, alt=alt)
    assert shown == [] and fig.number not in plt.get_fignums()


def test_layered_positions_put_each_node_just_before_its_first_use():
    # x and kernel feed matmul; bias is read only by add, two steps later
    edges = [("x", "matmul"), ("kernel", "matmul"), ("matmul", "add"), ("bias", "add")]
    pos = plotting.layered_positions(["x", "kernel", "bias", "matmul", "add"], edges)
    assert {n: p[0] for n, p in pos.items()} == {"x": 0, "kernel": 0, "matmul": 1, "bias": 1,
                                                 "add": 2}
    assert pos["x"][1] > pos["kernel"][1]  # stacked top-down in the order given
    assert pos["matmul"][1] == -pos["bias"][1]  # a column is centred on 0


@pytest.mark.parametrize("nodes, edges, message", [
    (["a", "a"], [], "unique"),
    (["a"], [("a", "b")], "unknown node"),
    (["a", "b"], [("a", "b"), ("b", "a")], "cycle"),
])
def test_layered_positions_reject_bad_graphs(nodes, edges, message):
    with pytest.raises(ValueError, match=message):
        plotting.layered_positions(nodes, edges)


def test_draw_graph_draws_one_box_per_node_and_one_arrow_per_edge():
    nodes = {"x": "x\n(2, 64)", "dot": "dot_general", "out": "add"}
    ax = plotting.draw_graph(nodes, [("x", "dot"), ("dot", "out", "logits")],
                             colors={"x": "#c6dbef"}, title="a jaxpr")
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("x\n(2, 64)") == 1 and "dot_general" in texts and "logits" in texts
    arrows = [c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]
    assert len(arrows) == 2
    box = next(t for t in ax.texts if t.get_text() == "x\n(2, 64)").get_bbox_patch()
    assert matplotlib.colors.to_hex(box.get_facecolor()) == "#c6dbef"
    assert ax.get_title() == "a jaxpr"
    plt.close(ax.figure)


def test_draw_graph_needs_nodes_and_positions_for_all_of_them():
    with pytest.raises(ValueError, match="at least one node"):
        plotting.draw_graph({}, [])
    with pytest.raises(ValueError, match="no position"):
        plotting.draw_graph({"a": "a", "b": "b"}, [], positions={"a": (0, 0)})


# --- the lessons: every figure is shown with its alt text -----------------------------------

LESSONS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAKES_A_FIGURE = re.compile(r"plt\.(subplots|figure)\(|plotting\.(plot_curves|grouped_bars|"
                            r"draw_graph)\(")


def _show_figure_alts(source: str) -> list:
    """The alt= argument of every plotting.show_figure call in a cell: the literal text, or
    the AST node when it is computed (an f-string, a concatenation)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())
    alts = []
    for node in ast.walk(ast.parse(code)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "show_figure"):
            alt = next((k.value for k in node.keywords if k.arg == "alt"), None)
            alts.append(alt.value if isinstance(alt, ast.Constant) else alt)
    return alts


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem[:2])
def test_every_figure_of_a_lesson_is_shown_with_alt_text(path):
    """A cell that draws a figure shows it with plotting.show_figure(fig, alt=...), never with
    plt.show() or as the inline backend's bare PNG, which would reach the site without alt."""
    nb = nbformat.read(path, as_version=4)
    bare, no_alt = [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        alts = _show_figure_alts(cell.source)
        if MAKES_A_FIGURE.search(cell.source) and (not alts or "plt.show()" in cell.source):
            bare.append(index)
        no_alt += [index for alt in alts if alt is None or (isinstance(alt, str) and not alt.strip())]
    assert not bare, f"{path.name}: cells draw a figure without plotting.show_figure: {bare}"
    assert not no_alt, f"{path.name}: show_figure without alt text in cells {no_alt}"


def test_the_concept_figures_of_issue_18_are_in_their_lessons():
    """Item 5's figures, each drawn from the lesson's own objects (found by what they read)."""
    wanted = {"03": ["loss.grad_fn", "captured[0].graph.nodes", "linear_layers(model)[-1].weight"],
              "04": ["mlp_jaxpr.jaxpr"], "05": ["get_concrete_function(", ".graph"],
              "06": ["convert.nhwc_to_nchw(numbered)", "torch_model.conv1.weight.shape"],
              "10": ['routes["metric"] == "export_ok"'], "11": ["all-reduce", "placement"]}
    for path in LESSONS:
        figures = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                            if c.cell_type == "code" and "show_figure" in c.source)
        for needle in wanted.get(path.stem[:2], []):
            assert needle in figures, f"{path.name}: no figure cell reads {needle!r}"
