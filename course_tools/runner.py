"""`make course`: execute every lesson with papermill and build the site and the results.

Outputs (under ``--out``, default ``build/``):
- ``notebooks/``: the executed notebooks (written even when a lesson fails, with its error);
- ``results/``: the records the lessons made (see :mod:`course_lib.results`) and
  ``lesson-runs.json``, each lesson's measured running time (:func:`record_lesson_time`; ``python
  -m course_tools plan --update-times build/results`` copies it into ``data/lesson-times.json``);
- ``logs/<run>/``: each lesson's full log ``NN_name.log`` (everything its kernel and papermill
  wrote: cell outputs, warnings, the C++ notices of the frameworks, a failure's traceback) and
  the site build's ``site.log``; ``<run>`` is the UTC start time and the run id;
- ``site/``: the course website (Sphinx, MyST-NB, sphinx-book-theme; static, offline, works
  from the file system): the executed lessons in order, a front page with each lesson's status,
  prerequisites, reading and running time and key results (small charts), lesson 12's decision matrix and the recorded results, and the pages of
  ``docs/`` (instructors). See :func:`build_site`.

The terminal gets one line per lesson (a tqdm progress bar over the lesson's code cells while
it runs, when the output is a terminal), then a summary; nothing the kernels write reaches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from course_lib import colab as colab_links
from course_lib import results as _results
from course_lib import runtime

LESSON_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclasses.dataclass
class LessonRun:
    """The outcome of executing one lesson."""

    lesson: str  # "00"
    name: str  # "00_setup_and_hardware"
    status: str  # "ok" | "failed"
    seconds: float
    error: str = ""  # for a failure: the failing cell and the error
    output: Path | None = None
    log: Path | None = None  # the lesson's full log (kernel and papermill output)


def find_lessons(folder: str | os.PathLike, lessons=None) -> list[Path]:
    """The lesson notebooks ``NN_name.ipynb`` in ``folder``, in teaching order.

    ``lessons``: optional lesson numbers (``["00", "3"]``) to keep. Raises ValueError for a
    number that matches no notebook (the message lists the ones there are).
    """
    found = sorted(p for p in Path(folder).glob("*.ipynb") if LESSON_PATTERN.match(p.name))
    if lessons:
        wanted = {f"{int(x):02d}" if str(x).isdigit() else str(x) for x in lessons}
        have = {p.name[:2] for p in found}
        missing = sorted(wanted - have)
        if missing:
            raise ValueError(f"no lesson numbered {missing}; the lessons are {sorted(have)}")
        found = [p for p in found if p.name[:2] in wanted]
    return found


def _describe_failure(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first = next((line for line in exc.source.splitlines() if line.strip()), "")
        return (f"cell {exc.cell_index} (execution count {exc.exec_count}, starts "
                f"{first[:60]!r}): {exc.ename}: {exc.evalue}".strip())
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[TextIO]:
    """Send everything this process and its children write to stdout and stderr (file
    descriptors 1 and 2, which the kernel papermill starts inherits) to the end of
    ``log_path`` until the block ends; yields the open log. POSIX semantics: on Windows a
    child started meanwhile may still write to the console."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(log_path, "a", encoding="utf-8", errors="replace", buffering=1) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield log
            finally:
                for stream in (sys.stdout, sys.stderr, log):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run_lesson(path: Path, out_dir: Path, *, profile: str, timeout_s: int | None,
               progress: bool = False, log_path: Path | None = None,
               on_cell: Callable[[int, int], None] | None = None) -> LessonRun:
    """Execute one notebook with papermill into ``out_dir/<name>.ipynb``; never raises for a
    failure inside the notebook (it is reported in the returned :class:`LessonRun`).

    Everything the execution writes to stdout and stderr (the kernel's own messages, the
    frameworks' C++ notices, the cells' printed output and warnings, papermill's messages
    and, for a failure, the traceback) goes to ``log_path`` (default
    ``out_dir/<name>.log``; appended to), never to the terminal. ``on_cell(done, total)`` is
    called as code cells start (``done`` of ``total`` code cells finished), from the thread
    running the notebook. ``progress``: also draw a tqdm bar over the cells on stdout while
    the lesson runs (erased at the end). ``timeout_s``: seconds one cell may run (None: no
    limit).
    """
    if not progress:
        return _execute(path, out_dir, profile, timeout_s, log_path, on_cell)
    term, owned = _terminal()
    try:
        with _progress_bar(term, path.stem, True) as update:
            def both(done: int, total: int) -> None:
                update(done, total)
                if on_cell:
                    on_cell(done, total)

            return _execute(path, out_dir, profile, timeout_s, log_path, both)
    finally:
        if owned:
            term.close()


def _execute(path: Path, out_dir: Path, profile: str, timeout_s: int | None,
             log_path: Path | None, on_cell: Callable[[int, int], None] | None) -> LessonRun:
    out = out_dir / path.name
    log_path = Path(log_path) if log_path is not None else out_dir / f"{path.stem}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _output_to(log_path) as log:
        cells = {"total": 0, "started": 0}

        def notebook_start(notebook, **_):
            cells["total"] = sum(1 for c in notebook.cells if _runs(c))
            if on_cell:
                on_cell(0, cells["total"])

        def cell_start(cell, cell_index, **_):
            if not _runs(cell):
                return
            if on_cell:
                on_cell(cells["started"], cells["total"])
            cells["started"] += 1
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            log.write(f"\n----- cell {cell_index} ({cells['started']}/{cells['total']}): "
                      f"{first[:70]}\n")

        log.write(f"===== {path.name}: profile {profile!r}, started "
                  f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M:%S} UTC; executed "
                  f"notebook: {out}\n")
        try:
            import papermill

            papermill.execute_notebook(
                str(path), str(out), parameters={"PROFILE": profile}, cwd=str(path.parent),
                kernel_name="python3", progress_bar=False, log_output=False,
                stdout_file=log, stderr_file=log, execution_timeout=timeout_s,
                on_notebook_start=notebook_start, on_cell_start=cell_start,
            )
            status, error = "ok", ""
        except Exception as exc:  # a failing lesson must not stop the others
            status, error = "failed", _describe_failure(exc)
            log.write(f"\n===== FAILED: {error}\n{_ANSI.sub('', str(exc)).strip()}\n")
        seconds = time.perf_counter() - start
        log.write(f"\n===== {status} in {seconds:.1f} s\n")
    if on_cell and status == "ok":
        on_cell(cells["total"], cells["total"])
    return LessonRun(path.name[:2], path.stem, status, seconds, error, out, log_path)


LESSON_RUNS_FILE = "lesson-runs.json"  # course_tools.plan.RUNS_FILE


def record_lesson_time(results_dir: Path, run: LessonRun, *, profile: str, run_id: str,
                       hardware: str | None = None) -> Path:
    """Append ``run``'s wall-clock time to ``results_dir/lesson-runs.json`` (a JSON list,
    rewritten atomically; a .json file, so :func:`course_lib.results.read_results`, which reads
    ``*.jsonl``, never mistakes it for records) and return its path.

    Each entry: ``lesson``, ``name``, ``status`` ("ok" | "failed"), ``seconds`` (float, wall
    clock from papermill's start to its end, kernel start included), ``profile``, ``lane``
    ("course"), ``hardware`` (default :func:`course_lib.runtime.device_description`), ``date``
    (when it ended, UTC, ``YYYY-MM-DDTHH:MM:SS``), ``run_id``, ``load_average`` (1-minute, as the lesson ended; None where
    the OS has none). ``python -m course_tools plan --update-times`` copies the
    passed lessons' times into ``data/lesson-times.json``. A file that is not such a list is
    kept beside as ``lesson-runs.json.bad`` and a new list started.
    """
    import json

    from course_lib.paths import write_text_atomic

    path = Path(results_dir) / LESSON_RUNS_FILE
    entries: list = []
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entries, list):
                raise ValueError("not a list")
        except ValueError:
            os.replace(path, path.with_name(LESSON_RUNS_FILE + ".bad"))
            entries = []
    entries.append({
        "lesson": run.lesson, "name": run.name, "status": run.status,
        "seconds": round(run.seconds, 1), "profile": profile, "lane": "course",
        "hardware": hardware or runtime.device_description(),
        "date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%dT%H:%M:%S}", "run_id": run_id,
        "load_average": _load_average()})
    return write_text_atomic(path, json.dumps(entries, indent=1) + "\n")


def _load_average() -> float | None:
    """The 1-minute load average as the lesson ends (how busy the machine was: a lesson
    timed on a shared machine is slower than on a quiet one); None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 1)
    except (AttributeError, OSError):
        return None


def _runs(cell) -> bool:
    """Whether nbclient executes ``cell`` (a code cell with some source)."""
    return cell.cell_type == "code" and bool(cell.source.strip())


def key_results(frame, lesson: str, limit: int = 3) -> str:
    """A short text of a lesson's headline records (those recorded with ``key=True``)."""
    parts = [f"{row['metric']}[{_key_result_label(row)}]={row['value']:.4g} {row['unit']}"
             for _, row in _key_rows(frame, lesson).head(limit).iterrows()]
    return "; ".join(parts)


def _key_rows(frame, lesson: str):
    """``lesson``'s headline records (``key=True``), the newest of each kind."""
    if frame.empty or "key" not in frame.columns:
        return frame.iloc[0:0]
    return _results.latest(frame[(frame["lesson"] == lesson) & (frame["key"] == True)])  # noqa: E712


SITE_FILES = Path(__file__).with_name("site")  # conf.py and _static/ of the Sphinx site
# Badge images the notebooks may load from the web; the site carries its own copies, so that
# it works offline (behind a firewall, from the file system).
_REMOTE_BADGES = (
    (re.compile(r"https?://colab\.research\.google\.com/assets/colab-badge\.svg"),
     "_static/colab-badge.svg"),
    (re.compile(r"https?://(?:static\.)?mybinder\.org/badge(?:_logo)?\.svg"),
     "_static/binder-badge.svg"),
    (re.compile(r"https?://img\.shields\.io/badge/[^\s)\"']*colab[^\s)\"']*", re.I),
     "_static/colab-badge.svg"),
    (re.compile(r"https?://img\.shields\.io/badge/[^\s)\"']*binder[^\s)\"']*", re.I),
     "_static/binder-badge.svg"),
)
FRONT_PAGE_TAG = "front-page"
DECISION_LESSON = "12"


class SiteError(RuntimeError):
    """The site could not be built (Sphinx failed); the previous ``build/site`` is untouched."""


def build_site(runs: list[LessonRun], site_dir: Path, results_dir: Path, profile: str, *,
               docs_dir: Path | None = None, timeout_s: float = 600,
               log_path: Path | None = None, notebooks_dir: Path | None = None) -> Path:
    """Build the course website into ``site_dir`` with Sphinx, MyST-NB and sphinx-book-theme,
    and return the path of its ``index.html``.

    Pages: the front page (the lessons with status, time and key results or error; the
    decision matrix, i.e. the outputs of the cells tagged ``front-page`` in the executed
    lesson 12; the summary of the records in ``results_dir``; the Binder badge), one page per
    executed notebook in ``runs`` (lesson order, with previous/next links; a failed lesson's
    page shows its notebook up to the failure under a warning; a lesson with no executed
    notebook is listed as failed), and one page per Markdown file in ``docs_dir`` (default:
    ``docs/`` next to the lessons' folder; ``instructors.md`` first), and, given the lessons'
    sources in ``notebooks_dir``, a solutions page per lesson with exercises (folded answers;
    the lesson pages show the exercises' stubs, never the answers). The notebooks are
    rendered as executed (``nb_execution_mode = "off"``); nothing is fetched from the network.
    The site has relative links only and needs no server.

    Sphinx writes into a temporary folder next to ``site_dir``, which replaces ``site_dir``
    only when the build succeeded. Raises :class:`SiteError` (with Sphinx's messages) when it
    fails or runs longer than ``timeout_s`` seconds; ``site_dir`` is then left as it was.
    Sphinx's warnings (and, when it fails, its other output) go to ``log_path`` when one is
    given, else to stderr.
    """
    site_dir = Path(site_dir).resolve()
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    if docs_dir is None:
        outputs = [r.output for r in runs if r.output is not None]
        docs_dir = outputs[0].parent.parent / "docs" if outputs else None
    work = Path(tempfile.mkdtemp(prefix=f".{site_dir.name}-build-", dir=site_dir.parent))
    try:
        src, html_dir = work / "src", work / "html"
        write_site_sources(runs, src, results_dir, profile, docs_dir=docs_dir,
                           notebooks_dir=notebooks_dir)
        _run_sphinx(src, html_dir, work / "doctrees", timeout_s, log_path)
        if not (html_dir / "index.html").is_file():
            raise SiteError(f"Sphinx wrote no index.html in {html_dir}")
        if site_dir.exists():
            os.replace(site_dir, work / "previous")
        os.replace(html_dir, site_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return site_dir / "index.html"


def _run_sphinx(src: Path, out: Path, doctrees: Path, timeout_s: float,
                log_path: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "auto", "-d",
           str(doctrees), str(src), str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=src)
    except subprocess.TimeoutExpired as exc:
        raise SiteError(f"Sphinx ran longer than {timeout_s:.0f} s") from exc
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"===== {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
                      f"===== exit status {proc.returncode}\n")
    elif proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr, flush=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
        raise SiteError(f"Sphinx failed (exit status {proc.returncode}):\n{tail}")


def write_site_sources(runs: list[LessonRun], src: Path, results_dir: Path, profile: str, *,
                       docs_dir: Path | None = None,
                       notebooks_dir: Path | None = None) -> list[str]:
    """Write the Sphinx sources of the site into the new folder ``src``: ``conf.py`` and
    ``_static/`` (from ``course_tools/site``), the executed notebooks (remote badge images
    replaced by local copies; a failed lesson gets a warning cell after its title), the
    Markdown pages of ``docs_dir`` and the front page ``index.ipynb``. Returns the document
    names in navigation order (lessons first)."""
    import nbformat

    from course_tools import student  # (lazily: the grading code imports this module)
    from course_tools.site import solutions

    shutil.copytree(SITE_FILES, src, ignore=shutil.ignore_patterns("__pycache__"))
    pages: dict[str, str] = {}  # lesson -> document name
    colab: dict[str, str] = {}  # lesson -> "Open in Colab" url
    titles: dict[str, str] = {}  # lesson -> title of its first heading
    for run in runs:
        if not (run.output and Path(run.output).is_file()):
            continue
        nb = nbformat.read(run.output, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                heading = re.search(r"^# +(.+)$", cell.source, re.M)
                if heading and run.lesson not in titles:
                    titles[run.lesson] = re.sub(r"^\d\d\s*[·:.-]\s*", "", heading.group(1)).strip()
                found = colab_links.COLAB_URL.search(cell.source)
                if found and run.lesson not in colab:  # a student opens the student edition
                    colab[run.lesson] = found.group(0).replace("/notebooks/", "/student/")
                cell.source = _local_badges(cell.source)
        if run.status != "ok":
            _insert_failure_note(nb, run)
        nb = student.hide_answers(nb, run.name)  # the answers are on the solutions pages
        nbformat.write(nb, src / f"{run.name}.ipynb")
        pages[run.lesson] = run.name
    docs = []
    if docs_dir is not None and Path(docs_dir).is_dir():
        names = sorted(Path(docs_dir).glob("*.md"), key=lambda p: (p.stem != "instructors", p.name))
        for path in names:
            if path.stem == "index" or path.stem in pages.values():
                continue
            (src / path.name).write_text(_local_badges(path.read_text(encoding="utf-8")),
                                         encoding="utf-8")
            docs.append(path.stem)
    from course_tools.site import claims as claims_page  # the claims register as a page

    docs.append(claims_page.write_page(src, results_dir))
    solution_pages = (solutions.write_pages(notebooks_dir, src, lessons=sorted(pages))
                      if notebooks_dir is not None else [])
    from course_tools import plan as lesson_plan

    counts = {}
    for run in runs:
        if run.output and Path(run.output).is_file():
            counts[run.lesson] = lesson_plan.word_counts(nbformat.read(run.output, as_version=4))
    index = front_page(runs, pages, colab, results_dir, profile, docs, titles, solution_pages,
                       charts_dir=src / CHARTS_DIR, plans=lesson_plan.load_plans(),
                       times=lesson_plan.load_times(), counts=counts)
    nbformat.write(index, src / "index.ipynb")
    return (list(dict.fromkeys(pages[r.lesson] for r in runs if r.lesson in pages)) + docs
            + solution_pages)


def _local_badges(text: str) -> str:
    for pattern, local in _REMOTE_BADGES:
        text = pattern.sub(local, text)
    return text


def _insert_failure_note(nb, run: LessonRun) -> None:
    """Replace papermill's red error banners (raw HTML whose link points nowhere on the site)
    by a warning after the title and a note before the cell that failed."""
    import nbformat

    nb.cells = [c for c in nb.cells
                if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    note = nbformat.v4.new_markdown_cell(
        "````{warning}\nThis lesson **failed** in this run of the course, after "
        f"{run.seconds:.0f} s; the page shows the notebook up to the failure.\n\n"
        f"```text\n{run.error or 'no executed notebook'}\n```\n````")
    failing = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                    and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    if failing is not None:
        nb.cells.insert(failing, nbformat.v4.new_markdown_cell(
            "```{error}\nThe lesson stopped at the next cell: the cells after it did not run.\n```"))
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and c.source.lstrip().startswith("# ")), -1)
    nb.cells.insert(first + 1, note)


def _hardware(frame) -> list[str]:
    if frame.empty or "device" not in frame.columns:
        return []
    return sorted({str(d) for d in frame["device"].dropna() if str(d)})


def front_page(runs: list[LessonRun], pages: dict[str, str], colab: dict[str, str],
               results_dir: Path, profile: str, docs: list[str],
               titles: dict[str, str] | None = None, solution_pages: list[str] | None = None,
               *, charts_dir: Path | None = None, plans: dict | None = None,
               times: list | None = None, counts: dict | None = None):
    """The front page as a notebook (rendered by MyST-NB like the lessons): introduction,
    badges, the lessons table, the decision matrix of lesson 12, the recorded results and the
    (hidden) navigation trees. ``pages`` maps lesson ids to document names, ``colab`` lesson
    ids to their "Open in Colab" links, ``titles`` lesson ids to their titles; ``docs`` are
    the extra pages (instructors first).

    The lessons table shows per lesson (see :func:`_lessons_table`): its status and time in
    this run; with ``plans`` (:func:`course_tools.plan.load_plans`) the lessons it builds on;
    with ``counts`` (lesson -> :class:`course_tools.plan.Counts`) its reading time; with
    ``times`` (:func:`course_tools.plan.load_times`) its measured running time per profile;
    and its key results (records made with ``key=True``) as a small bar chart written to
    ``charts_dir/lesson-NN.svg`` (an image whose alt text states every value), or as text
    when ``charts_dir`` is None, or the error of a failed lesson, or "no key result
    recorded"."""
    import nbformat

    frame = _results.read_results(results_dir)
    md = nbformat.v4.new_markdown_cell
    cells = []
    binder = _binder_url(colab)
    badges = ""
    if binder:
        badges = f"\n\n[![launch binder](_static/binder-badge.svg)]({binder})"
    devices = _hardware(frame)
    hardware = (", ".join(f"**{d}**" for d in devices) if devices
                else f"**{runtime.device_description()}**")
    instructors = ("\n\nFor instructors: [assigning and grading the exercises](instructors.md)."
                   if "instructors" in docs else "")
    cells.append(md(
        "# Choosing and using ML frameworks\n\n"
        "A course that builds the same models in scikit-learn, Keras 3 (on TensorFlow, JAX and "
        "PyTorch), PyTorch, JAX and TensorFlow, checks that they compute the same numbers, and "
        "measures them side by side, so that the claims of framework comparisons are tested "
        "rather than repeated. These pages are the lessons as they were executed in this run "
        f"(the `{profile}` profile), with every figure they recorded; the results come from "
        f"{hardware}. Each lesson opens in Colab from its badge; Binder runs the whole course "
        f"in the browser.{badges}{instructors}"))
    cells.append(md(_lessons_table(runs, pages, colab, frame, titles or {}, charts_dir=charts_dir,
                                   plans=plans, times=times, counts=counts)))
    cells.extend(_decision_matrix_cells(runs, pages))
    cells.extend(_results_cells(frame))
    toc = ["```{toctree}", ":hidden:", ":caption: Lessons", ""]
    toc += list(dict.fromkeys(pages[r.lesson] for r in runs if r.lesson in pages))
    toc += ["```"]
    if docs:
        toc += ["", "```{toctree}", ":hidden:", ":caption: Instructors and notes", "", *docs,
                "```"]
    if solution_pages:
        toc += ["", "```{toctree}", ":hidden:", ":caption: Solutions (open when stuck)", "",
                *solution_pages, "```"]
    cells.append(md("\n".join(toc)))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _binder_url(colab: dict[str, str]) -> str:
    return next(filter(None, map(colab_links.binder_url_for, colab.values())), "")


def _cell_text(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;")


CHARTS_DIR = Path("_static") / "charts"  # the key-result charts, under the site sources


def _lessons_table(runs, pages, colab, frame, titles, *, charts_dir: Path | None = None,
                   plans: dict | None = None, times: list | None = None,
                   counts: dict | None = None) -> str:
    """The front page's table of lessons (Markdown); see :func:`front_page`."""
    from course_tools import plan as lesson_plan

    plans = plans or {}
    lines = ["## The lessons", "",
             "Reading time: prose at 238 words per minute (Brysbaert 2019), code at 50 (an "
             "assumption). Running time: this run, and the last measured runs of each profile "
             "(`data/lesson-times.json`).", "",
             "| # | lesson | status | builds on | time | key results, or the error | |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        title = _cell_text(titles.get(run.lesson) or run.name[3:].replace("_", " "))
        name = f"[{title}]({pages[run.lesson]}.ipynb)" if run.lesson in pages else title
        status = f'<span class="course-{html.escape(run.status)}">{html.escape(run.status)}</span>'
        if run.status != "ok" and run.lesson not in pages:
            status += " (no page: the lesson did not produce a notebook)"
        plan = plans.get(run.lesson)
        before = ""
        if plan is not None:
            before = ", ".join(
                (f"[{p.lesson}]({pages[p.lesson]}.ipynb)" if p.lesson in pages else p.lesson)
                for p in plan.prerequisites) or "none"
        time_parts = [f"this run: {run.seconds:.0f} s"]
        if counts and run.lesson in counts:
            time_parts.append(
                f"reading: about {lesson_plan.total_reading_minutes(counts[run.lesson])} min")
        if times is not None:
            time_parts += lesson_plan.running_summary(run.lesson, times)
        if run.error:
            detail = _cell_text(run.error)
        else:
            chart = (_key_results_chart(frame, run.lesson, charts_dir)
                     if charts_dir is not None else None)
            if chart is not None:
                src, alt = chart
                detail = (f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" '
                          'class="course-chart" style="width: 16em; max-width: none"/>')
            else:
                detail = _cell_text(key_results(frame, run.lesson) or "no key result recorded")
        link = (f"[![Open in Colab](_static/colab-badge.svg)]({colab[run.lesson]})"
                if run.lesson in colab else "")
        when = "<br/>".join(f'<span style="white-space: nowrap">{_cell_text(x)}</span>'
                            if len(x) < 24 else _cell_text(x) for x in time_parts)
        lines.append(f"| {run.lesson} | {name} | {status} | {before} | {when} | {detail} | "
                     f"{link} |")
    return "\n".join(lines)


def _key_result_label(row) -> str:
    return "/".join(str(x) for x in (row["framework"], row["backend"], row["mode"])
                    if isinstance(x, str) and x)


def key_result_values(frame, lesson: str, *, metrics: int = 3,
                      bars: int = 8) -> list[tuple[str, str, dict[str, float]]]:
    """A lesson's headline records (``key=True``, newest of each kind) grouped for a chart:
    ``[(metric, unit, {label: value})]``, at most ``metrics`` metrics in the order first
    recorded and ``bars`` labels each (``framework/backend/mode``; a repeated label gets the
    record's ``model`` or a number)."""
    rows = _key_rows(frame, lesson)
    grouped: dict[tuple[str, str], list] = {}
    for _, row in rows.iterrows():
        grouped.setdefault((str(row["metric"]), str(row["unit"])), []).append(row)
    out = []
    for (metric, unit), members in list(grouped.items())[:metrics]:
        labels = [_key_result_label(row) or metric for row in members]
        values: dict[str, float] = {}
        for row, label in zip(members, labels, strict=True):
            model = row.get("model")
            if labels.count(label) > 1 and isinstance(model, str) and model:
                label = f"{label} ({model})"
            base, n = label, 2
            while label in values:
                label, n = f"{base} #{n}", n + 1
            if len(values) < bars:
                values[label] = float(row["value"])
        out.append((metric, unit, values))
    return out


def chart_alt_text(lesson: str, groups) -> str:
    """The alt text of a key-results chart: every value it shows, in words."""
    parts = [f"{metric} in {unit}: " + ", ".join(f"{label} {value:.3g}"
                                                for label, value in values.items())
             for metric, unit, values in groups]
    return f"Key results of lesson {lesson}. " + "; ".join(parts) + "."


def _key_results_chart(frame, lesson: str, charts_dir: Path) -> tuple[str, str] | None:
    """Draw ``lesson``'s key results (:func:`key_result_values`) as small bar charts, one
    panel per metric, into ``charts_dir/lesson-NN.svg``; return (the image's path relative to
    the site sources, its alt text), or None when the lesson recorded no key result."""
    import matplotlib
    from matplotlib.figure import Figure

    from course_lib import plotting

    groups = key_result_values(frame, lesson)
    if not groups:
        return None
    heights = [0.3 * sum(-(-len(label) // 24) for label in values) + 0.8  # 24: small_bars' wrap
               for _, _, values in groups]
    with matplotlib.rc_context({"svg.hashsalt": f"lesson-{lesson}", "svg.fonttype": "none"}):
        fig = Figure(figsize=(4.2, sum(heights)), layout="constrained")
        axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, (metric, unit, values) in zip(axes, groups, strict=True):
            plotting.small_bars(values, unit=unit, title=metric, ax=ax)
        Path(charts_dir).mkdir(parents=True, exist_ok=True)
        path = Path(charts_dir) / f"lesson-{lesson}.svg"
        fig.savefig(path, format="svg", metadata={"Date": None})
    return f"{CHARTS_DIR.as_posix()}/{path.name}", chart_alt_text(lesson, groups)


def _decision_matrix_cells(runs, pages) -> list:
    import nbformat

    md = nbformat.v4.new_markdown_cell
    head = "## The decision matrix\n\n"
    run = next((r for r in runs if r.lesson == DECISION_LESSON), None)
    if run is None:
        return [md(head + '<p class="course-missing">Lesson 12 was not run in this build of '
                   "the course, so there is no decision matrix here: run <code>make course"
                   "</code> (all lessons) to build it from the recorded results.</p>")]
    link = f"[lesson {run.lesson}]({pages[run.lesson]}.ipynb)" if run.lesson in pages else \
        f"lesson {run.lesson}"
    cells = []
    if run.status != "ok":
        shown_part = (f"\n\nWhat it showed before the failure follows; the whole notebook "
                      f"is {link}." if run.lesson in pages else "")
        cells.append(md(head + f'<p class="course-failed">Lesson 12 failed in this run: '
                        f"{_cell_text(run.error)}</p>{shown_part}"))
    else:
        cells.append(md(head + f"From {link}, which reads every recorded result; change its "
                        "weights in its `parameters` cell to rank the frameworks for your own "
                        "priorities."))
    shown = 0
    if run.output and Path(run.output).is_file():
        nb = nbformat.read(run.output, as_version=4)
        for cell in nb.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if FRONT_PAGE_TAG not in tags:
                continue
            if cell.cell_type == "markdown":
                cells.append(md(_local_badges(cell.source)))
                shown += 1
                continue
            if cell.cell_type != "code":
                continue
            copy = nbformat.v4.new_code_cell(cell.source)
            copy.outputs = [o for o in cell.get("outputs", []) if o.get("output_type") != "error"]
            copy.metadata["tags"] = ["remove-input"]
            cells.append(copy)
            shown += 1
    if not shown and run.lesson in pages:
        cells.append(md('<p class="course-missing">Lesson 12 produced no cell tagged '
                        "<code>front-page</code> in this run.</p>"))
    return cells


def _results_cells(frame) -> list:
    import nbformat

    md = nbformat.v4.new_markdown_cell
    if frame.empty:
        return [md("## Recorded results\n\n"
                   '<p class="course-missing">No results were recorded in this run.</p>')]
    table = _results.summary(frame)
    keys = frame[frame["key"] == True] if "key" in frame.columns else frame.iloc[:0]  # noqa: E712
    key_table = _results.summary(keys) if not keys.empty else None
    fmt = {"float_format": lambda v: f"{v:.4g}", "border": 0, "index": False,
           "classes": "course-results"}
    lessons = sorted(set(frame["lesson"].astype(str)))
    parts = [f"<p>{len(frame)} records from lesson{'s' if len(lessons) > 1 else ''} "
             f"{', '.join(lessons)}; the newest of each kind is shown, with the hardware it "
             f"was measured on: {html.escape(', '.join(_hardware(frame)) or 'not recorded')}."
             "</p>"]
    if key_table is not None:
        parts.append("<p><b>Headline results</b> (recorded with <code>key=True</code>):</p>")
        parts.append(key_table.to_html(**fmt))
    parts.append(f'<details class="course-all-results"><summary>All {len(table)} results'
                 f"</summary>{table.to_html(**fmt)}</details>")
    out = nbformat.v4.new_code_cell("results.summary(results.read_results())")
    out.metadata["tags"] = ["remove-input"]
    out.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": "\n".join(parts), "text/plain": table.to_string(index=False)})]
    return [md("## Recorded results"), out]


def _terminal() -> tuple[TextIO, bool]:
    """A stream to where stdout goes now, which keeps going there while
    :func:`_output_to` redirects file descriptors 1 and 2 to a lesson's log; and whether it
    is a new stream that the caller must close."""
    stream = sys.stdout
    with contextlib.suppress(Exception):
        stream.flush()
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # already a Python object (a test's capture)
        return stream, False
    if fd not in (1, 2):
        return stream, False
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(os.dup(fd), "w", encoding=encoding, errors="replace", buffering=1), True


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _progress_bar(stream: TextIO, desc: str, enabled: bool, *,
                  cells: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on ``stream`` while the block runs, redrawn every second so that its clock
    moves during a long cell, and erased at the end (the caller prints the lesson's line).
    Yields ``update(done, total)``; with ``enabled`` false there is no bar and ``update`` does
    nothing (output that is not a terminal gets plain lines only). ``cells`` false: a bar
    with the clock only."""
    if not enabled:
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, unit="cell", file=stream, leave=False, dynamic_ncols=True,
               bar_format=("{desc}: {n_fmt}/{total_fmt} cells |{bar:20}| {elapsed}" if cells
                           else "{desc}: {elapsed}"))
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    thread = threading.Thread(target=tick, name="course-progress", daemon=True)
    thread.start()
    try:
        yield update
    finally:
        stop.set()
        thread.join()
        bar.close()


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _lesson_detail(run: LessonRun, frame, run_id: str) -> str:
    """The lesson's error and where its log is, or its key results from this run."""
    if run.status != "ok":
        where = f"log: {run.log}" if run.log else "no log"
        return f"{_one_line(run.error or 'failed')} ({where})"
    if not frame.empty and "run_id" in frame.columns:
        frame = frame[frame["run_id"] == run_id]
    return _one_line(key_results(frame, run.lesson)) or "(no key result recorded)"


def run_course(notebooks_dir: Path, out: Path, *, profile: str, lessons=None,
               timeout_s: int | None = None, progress: bool | None = None) -> int:
    """Execute the lessons in order, report each on one line, build the site, summarise.

    The terminal (stdout) gets a header line, one line per lesson as it ends (status, time,
    and its key results, or for a failure the failing cell, the error and the path of the
    lesson's log), then a summary: one line per lesson and where the logs, the site, the
    results and the executed notebooks are. Everything the kernels and papermill write goes
    to ``<out>/logs/<run>/NN_name.log`` and Sphinx's output to ``.../site.log``, never to the
    terminal. ``progress``: show a tqdm bar over the running lesson's cells (default: when
    stdout is a terminal; otherwise only plain lines, no carriage returns).

    Returns the process exit status: 0 if every lesson ran and the site was built, 1 if any
    lesson failed or the site could not be built (the previous site is then kept), 130 if
    interrupted (Ctrl-C). Raises ValueError for an unknown profile or lesson number (before
    anything runs).
    """
    runtime.check_profile(profile)
    paths = find_lessons(notebooks_dir, lessons)
    if not paths:
        raise ValueError(f"no lesson notebooks (NN_name.ipynb) in {notebooks_dir}")
    out = out.resolve()
    nb_dir, results_dir, site_dir = out / "notebooks", out / "results", out / "site"
    nb_dir.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    os.environ["COURSE_RESULTS_DIR"] = str(results_dir)
    os.environ["COURSE_PROFILE"] = profile
    run_id = os.environ.setdefault("COURSE_RUN_ID", uuid.uuid4().hex[:12])
    started = _dt.datetime.now(_dt.UTC)
    log_dir = out / "logs" / f"{started:%Y%m%d-%H%M%S}-{run_id}"
    log_dir.mkdir(parents=True, exist_ok=True)
    term, owned = _terminal()
    try:
        return _run_course(paths, notebooks_dir, nb_dir, results_dir, site_dir, log_dir,
                           profile=profile, run_id=run_id, timeout_s=timeout_s, term=term,
                           bars=_is_tty(term) if progress is None else progress)
    finally:
        if owned:
            term.close()


def _run_course(paths, notebooks_dir, nb_dir, results_dir, site_dir, log_dir, *, profile,
                run_id, timeout_s, term, bars) -> int:
    def say(text: str = "") -> None:
        if bars:
            from tqdm import tqdm

            tqdm.write(text, file=term)
        else:
            print(text, file=term, flush=True)

    count, width = len(paths), max(len(p.stem) for p in paths)
    runs: list[LessonRun] = []
    start = time.perf_counter()
    say(f"Course: {count} lesson{'s' if count > 1 else ''}, profile {profile!r}, on "
        f"{runtime.device_description()}; logs in {log_dir}")
    current = None
    try:
        for i, path in enumerate(paths, 1):
            current = log_dir / f"{path.stem}.log"
            label = f"[{i}/{count}] {path.stem:<{width}}"
            with _progress_bar(term, label, bars) as update:
                run = run_lesson(path, nb_dir, profile=profile, timeout_s=timeout_s,
                                 log_path=current, on_cell=update)
            runs.append(run)
            record_lesson_time(results_dir, run, profile=profile, run_id=run_id)
            frame = _results.read_results(results_dir, lessons=[run.lesson])
            status = "ok" if run.status == "ok" else "FAILED"
            say(f"{label}  {status:<6} {run.seconds:7.1f} s  {_lesson_detail(run, frame, run_id)}")
        current = log_dir / "site.log"
        with _progress_bar(term, "building the site", bars, cells=False):
            try:
                index = build_site(runs, site_dir, results_dir, profile, log_path=current,
                                   docs_dir=Path(notebooks_dir).resolve().parent / "docs",
                                   notebooks_dir=Path(notebooks_dir))
                site_error = ""
            except SiteError as exc:  # the lessons ran: report them, then fail
                site_error, index = str(exc), None
            except Exception as exc:  # a bug in the site code: still report the lessons
                import traceback

                with open(current, "a", encoding="utf-8") as log:
                    log.write("===== the site build raised:\n" + traceback.format_exc())
                site_error, index = f"{type(exc).__name__}: {exc}", None
    except KeyboardInterrupt:
        say(f"\ninterrupted after {time.perf_counter() - start:.0f} s; the log of what was "
            f"running: {current}")
        return 130
    frame = _results.read_results(results_dir)
    failed = [r for r in runs if r.status != "ok"]
    say(f"\nSummary ({len(runs) - len(failed)} passed, {len(failed)} failed in "
        f"{time.perf_counter() - start:.0f} s):")
    for run in runs:
        say(f"  {run.name:<{width}}  {run.status:<6} {run.seconds:7.1f} s  "
            f"{_lesson_detail(run, frame, run_id)}")
    site_log = log_dir / "site.log"
    if index:
        warnings = _sphinx_warnings(site_log)
        site = f"{index}" + (f" ({warnings} Sphinx warnings in {site_log})" if warnings else "")
    else:
        site = f"NOT BUILT ({site_error.splitlines()[0]}" + (
            f"; see {site_log})" if site_log.is_file() else ")")
    say(f"Site: {site}\nLogs: {log_dir}\nResults: {results_dir} ({len(frame)} "
        f"record{'' if len(frame) == 1 else 's'}); notebooks: {nb_dir}")
    if site_error:
        print(f"The site could not be built; {site_dir} was left as it was.\n{site_error}",
              file=sys.stderr, flush=True)
    return 1 if failed or site_error else 0


def _sphinx_warnings(log_path: Path) -> int:
    """How many ``WARNING:`` lines Sphinx wrote to ``log_path`` (0 when there is no log)."""
    try:
        return log_path.read_text(encoding="utf-8", errors="replace").count("WARNING:")
    except OSError:
        return 0
