"""The course website in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, on a small site built here (two quick lessons executed by papermill, one of them
failing, copies of committed lessons, and a stand-in for lesson 12 with ``front-page`` cells).

Served by ``http.server`` on localhost and opened from ``file://``; every request that leaves
the machine is refused and counted (the site must work offline). Screenshots go to
``build/screenshots/``. ``make browser`` installs Chromium; ``COURSE_SKIP_BROWSER=1`` skips
these tests (and only that: a missing browser otherwise fails them).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from course_lib import results
from course_tools import runner as course

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("site-browser"),
              pytest.mark.timeout(170)]


def _chromium() -> str:
    if os.environ.get("COURSE_SKIP_BROWSER") == "1":
        pytest.skip("COURSE_SKIP_BROWSER=1: the site's browser test is skipped")
    path = os.environ.get("COURSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("Debian's chromium is not installed (/usr/bin/chromium): run `make browser` "
                    "(apt-get install chromium), or set COURSE_SKIP_BROWSER=1 to skip this test")
    return path


def _notebook(path: Path, *cells, title: str):
    """cells: code strings, or (kind, source, tags) tuples."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'import os\nPROFILE = os.environ.get("COURSE_PROFILE", "full")')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nA lesson made by the test."), params]
    for cell in cells:
        kind, source, tags = cell if isinstance(cell, tuple) else ("code", cell, [])
        new = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        made = new(source)
        if tags:
            made.metadata["tags"] = list(tags)
        nb.cells.append(made)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


PLOT = """%matplotlib inline
from course_lib import plotting, results
ax = plotting.plot_curves({"loss": [1.0, 0.5, 0.3, 0.2]}, ylabel="loss (nats)")
plotting.show_figure(ax.figure, alt="fixture-alt: one loss curve falling from 1.0 to 0.2")
graph = plotting.draw_graph({"a": "x", "b": "x @ kernel"}, [("a", "b")])
plotting.show_figure(graph.figure, alt="fixture-alt: a graph of two boxes")
results.record("03", "final_loss", 0.2, "nats", framework="numpy", key=True)"""

PLUMBING_CELL = 'results.record("03", "plumbing_fixture", 1.0, "count", framework="numpy")'

MATRIX = """%matplotlib inline
import pandas as pd
from course_lib import plotting
frame = pd.DataFrame({"framework": ["torch", "jax"], "scenario": ["research"] * 2,
                      "value": [0.8, 0.7]})
display(pd.DataFrame({"framework": ["torch", "jax"], "score": [0.8, 0.7]})
        .style.set_caption("decision-matrix-fixture"))
ax = plotting.grouped_bars(frame, group="scenario", series="framework", unit="score")
plotting.show_figure(ax.figure, alt="fixture-alt: scores of torch and jax for research")"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site of five lessons: 00 (committed, not executed), 03 (executed, with a plot),
    05 (executed, fails), 09 (committed) and a stand-in 12 whose front-page cells ran."""
    _chromium()  # fail or skip before building anything
    base = tmp_path_factory.mktemp("site")
    src, executed, res = base / "notebooks", base / "executed", base / "results"
    for folder in (src, executed, res):
        folder.mkdir()
    _notebook(src / "03_plot.ipynb", PLOT, ("code", PLUMBING_CELL, ["hide-input"]),
              title="03 · A plot")
    _notebook(src / "05_broken.ipynb", "x = 1", "raise RuntimeError('lesson bug here')",
              title="05 · Broken")
    _notebook(src / "12_decision_matrix.ipynb", ("code", MATRIX, ["front-page"]),
              ("markdown", "Weights: **research** favours debugging.", ["front-page"]),
              "print('not on the front page')", title="12 · Decision matrix")
    runs = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COURSE_RESULTS_DIR", str(res))  # the kernels record here
        _run_lessons(src, executed, runs)
    assert [r.status for r in runs if r.lesson == "05"] == ["failed"]
    assert all(r.status == "ok" for r in runs if r.lesson != "05"), [r.error for r in runs]
    results.record("09", "step_ms", 24.0, "ms", framework="jax", key=True, results_dir=res)
    index = course.build_site(runs, base / "build" / "site", res, "smoke",
                              docs_dir=ROOT / "docs")
    assert index.is_file()
    return index.parent, runs


def _run_lessons(src: Path, executed: Path, runs: list):
    for name in ("00_setup_and_hardware", "03_plot", "05_broken", "09_performance",
                 "12_decision_matrix"):
        if (ROOT / "notebooks" / f"{name}.ipynb").is_file() and name[:2] in ("00", "09"):
            shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", executed / f"{name}.ipynb")
            runs.append(course.LessonRun(name[:2], name, "ok", 1.0, "",
                                         executed / f"{name}.ipynb"))
        elif (src / f"{name}.ipynb").is_file():
            runs.append(course.run_lesson(src / f"{name}.ipynb", executed, profile="smoke",
                                          timeout_s=120, progress=False))


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    path = _chromium()
    with sync_playwright() as play:
        profile = Path(site[0]).parent / "chromium-profile"  # a fresh user-data dir
        context = play.chromium.launch_persistent_context(
            str(profile), executable_path=path, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 900}, service_workers="block")
        context.outside = []  # requests that would leave the machine (refused)

        def _route(route):
            url = urlparse(route.request.url)
            if url.scheme in ("file", "data", "blob") or url.hostname in ("127.0.0.1",
                                                                          "localhost"):
                return route.continue_()
            context.outside.append(route.request.url)
            return route.abort()

        context.route("**/*", _route)
        yield context
        context.close()


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site[0]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _open(context, url: str):
    """The page at ``url`` once loaded, with its console errors and uncaught exceptions."""
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}")
            if not r.url.endswith("favicon.ico") else None)
    response = page.goto(url, wait_until="load")
    assert response is None or response.ok, f"{url}: HTTP {response.status}"
    page.wait_for_load_state("networkidle")
    return page, problems


def _images(page) -> list[dict]:
    """Every ``<img>`` of the page's article: its src, whether it loaded, and its alt text."""
    return page.eval_on_selector_all(
        "article img", "els => els.map(e => ({src: e.getAttribute('src'), "
        "ok: e.complete && e.naturalWidth > 0, alt: (e.getAttribute('alt') || '').trim()}))")


def _is_plot(image: dict) -> bool:
    """A figure drawn by a lesson: a PNG file written by MyST-NB, or plotting.show_figure's
    PNG data URI (which carries the figure's alt text)."""
    src = image["src"] or ""
    return src.endswith(".png") or src.startswith("data:image/png")


def _assert_alt_text(name: str, images: list[dict]):
    """Every image has a text alternative (issue 18: every figure has alt text)."""
    missing = [i["src"][:80] for i in images if not i["alt"]]
    assert not missing, f"{name}: <img> without alt text: {missing}"


def _shot(page, name: str, full: bool = False):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full)


def test_front_page_lists_lessons_matrix_and_results(site, browser, server):
    page, problems = _open(browser, server)
    text = page.inner_text("article")
    for lesson in ("Setup and hardware", "A plot", "Broken", "Performance", "Decision matrix"):
        assert lesson in text
    assert "failed" in text and "lesson bug here" in text  # the failed lesson and its error
    assert "decision-matrix-fixture" in text and "research" in text  # the front-page outputs
    assert "not on the front page" not in text  # untagged cells stay in lesson 12
    assert "final_loss" in text and "step_ms" in text  # key results and the summary
    images = _images(page)
    assert any(i["src"].endswith("binder-badge.svg") for i in images)
    assert any(i["src"].endswith("colab-badge.svg") for i in images)
    assert any(_is_plot(i) for i in images), images  # the matrix's plot
    assert all(i["ok"] for i in images), images
    _assert_alt_text("front page", images)
    assert any(i["alt"].startswith("fixture-alt: scores") for i in images), images
    binder = page.get_attribute("a:has(img[src$='binder-badge.svg'])", "href")
    assert binder.startswith("https://mybinder.org/v2/gh/")
    _shot(page, "index", full=True)
    assert problems == [] and browser.outside == []
    page.close()


def test_every_lesson_page_loads_with_its_plots_alt_text_and_no_console_errors(site, browser,
                                                                               server):
    site_dir, runs = site
    for run in runs:
        page, problems = _open(browser, server + f"{run.name}.html")
        assert run.name[3:].replace("_", " ").lower() in page.title().lower()
        images = _images(page)
        assert all(i["ok"] for i in images), (run.name, images)
        _assert_alt_text(run.name, images)
        if run.lesson in ("03", "12"):  # executed with a plot
            assert any(_is_plot(i) for i in images), (run.name, images)
        if run.lesson == "03":  # show_figure's alt text reaches the page, one per figure
            assert sorted(i["alt"] for i in images if i["alt"].startswith("fixture-alt")) == [
                "fixture-alt: a graph of two boxes",
                "fixture-alt: one loss curve falling from 1.0 to 0.2"], images
        if run.lesson in ("00", "09"):  # the lessons' own Colab badge, as a local copy
            assert any(i["src"].endswith("colab-badge.svg") for i in images), images
        if run.status == "failed":
            assert "failed" in page.inner_text("article .admonition")
            assert "RuntimeError" in page.inner_text("article")
        _shot(page, run.name)
        assert problems == [], (run.name, problems)
        page.close()
    assert browser.outside == []


def test_next_links_lead_from_the_front_page_through_every_lesson(site, browser, server):
    _, runs = site
    page, problems = _open(browser, server)
    visited = []
    for _ in range(len(runs)):
        page.click("a.right-next")
        page.wait_for_load_state("load")
        visited.append(Path(urlparse(page.url).path).stem)
    assert visited == [r.name for r in runs]
    _shot(page, "last-lesson")
    page.click("a.right-next")  # after the last lesson: the instructors' page
    page.wait_for_load_state("load")
    assert "Instructors" in page.inner_text("article h1")
    page.click("a.left-prev")
    page.wait_for_load_state("load")
    assert Path(urlparse(page.url).path).stem == runs[-1].name
    assert problems == [] and browser.outside == []
    page.close()


def test_site_works_from_the_file_system(site, browser):
    site_dir, runs = site
    page, problems = _open(browser, (site_dir / "index.html").as_uri())
    styled = page.evaluate(
        "getComputedStyle(document.querySelector('.bd-sidebar-primary')).display")
    assert styled != "none" and styled  # the theme's CSS loaded from disk
    page.click(f"nav.bd-links a[href='{runs[1].name}.html']")
    page.wait_for_load_state("load")
    assert page.url.startswith("file://") and page.url.endswith(f"{runs[1].name}.html")
    images = _images(page)
    assert images and all(i["ok"] for i in images), images
    _shot(page, "file-url")
    assert problems == [] and browser.outside == []
    page.close()


def test_plumbing_cells_are_collapsed_and_explained_once(site, browser, server):
    """A cell tagged ``hide-input`` shows as a closed <details> whose code is hidden until
    clicked; the appendix page that explains such cells (docs/plumbing.md) is on the site."""
    page, problems = _open(browser, server + "03_plot.html")
    hidden = page.locator("details.above-input", has_text="plumbing_fixture")
    assert hidden.count() == 1
    assert hidden.get_attribute("open") is None  # collapsed
    code = hidden.locator("pre", has_text="plumbing_fixture")
    assert not code.is_visible()
    hidden.locator("summary").click()
    assert code.is_visible()
    assert page.locator("pre:visible", has_text="show_figure").count() >= 1  # lesson code stays open
    page.close()
    page, more = _open(browser, server + "plumbing.html")
    assert "plumbing" in page.inner_text("article h1").lower()
    assert "hide-input" in page.inner_text("article")
    assert problems == [] and more == [] and browser.outside == []
    page.close()
