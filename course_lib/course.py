"""`make course`: execute every lesson with papermill and build the site and the results.

Outputs (under ``--out``, default ``build/``):
- ``notebooks/``: the executed notebooks (written even when a lesson fails, with its error);
- ``results/``: the records the lessons made (see :mod:`course_lib.results`);
- ``site/index.html``: the executed lessons as HTML, an index linking them, and a summary
  table of the recorded results.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import sys
import time
import uuid
from pathlib import Path

from course_lib import results as _results
from course_lib import runtime

LESSON_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")


@dataclasses.dataclass
class LessonRun:
    """The outcome of executing one lesson."""

    lesson: str  # "00"
    name: str  # "00_setup_and_hardware"
    status: str  # "ok" | "failed"
    seconds: float
    error: str = ""  # for a failure: the failing cell and the error
    output: Path | None = None


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


def run_lesson(path: Path, out_dir: Path, *, profile: str, timeout_s: int | None,
               progress: bool) -> LessonRun:
    """Execute one notebook with papermill into ``out_dir/<name>.ipynb``; never raises for a
    failure inside the notebook (it is reported in the returned :class:`LessonRun`)."""
    import papermill

    out = out_dir / path.name
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path), str(out), parameters={"PROFILE": profile}, cwd=str(path.parent),
            kernel_name="python3", progress_bar=progress, log_output=False,
            execution_timeout=timeout_s,
        )
        status, error = "ok", ""
    except Exception as exc:  # a failing lesson must not stop the others
        status, error = "failed", _describe_failure(exc)
    return LessonRun(path.name[:2], path.stem, status, time.perf_counter() - start, error, out)


def key_results(frame, lesson: str, limit: int = 3) -> str:
    """A short text of a lesson's headline records (those recorded with ``key=True``)."""
    if frame.empty or "key" not in frame.columns:
        return ""
    rows = _results.latest(frame[(frame["lesson"] == lesson) & (frame["key"] == True)])  # noqa: E712
    parts = []
    for _, row in rows.head(limit).iterrows():
        who = "/".join(str(x) for x in (row["framework"], row["backend"], row["mode"])
                       if isinstance(x, str) and x)
        parts.append(f"{row['metric']}[{who}]={row['value']:.4g} {row['unit']}")
    return "; ".join(parts)


def build_site(runs: list[LessonRun], site_dir: Path, results_dir: Path, profile: str) -> Path:
    """Render each executed notebook to HTML (nbconvert's lab template) and write
    ``index.html`` linking them, with the summary of recorded results. Files are written to a
    temporary name and renamed, so a failure leaves no half-written page."""
    import nbformat
    from nbconvert import HTMLExporter

    site_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    links = []
    for run in runs:
        page = f"{run.name}.html"
        if run.output and run.output.is_file():
            body, _ = exporter.from_notebook_node(nbformat.read(run.output, as_version=4))
            _write_atomic(site_dir / page, body)
        else:
            page = ""
        links.append((run, page))
    frame = _results.read_results(results_dir)
    table = _results.summary(frame)
    rows = "\n".join(
        f"<tr><td>{html.escape(run.lesson)}</td>"
        f"<td>{f'<a href={html.escape(page)!r}>{html.escape(run.name)}</a>' if page else html.escape(run.name)}</td>"
        f"<td class={run.status}>{run.status}</td><td>{run.seconds:.1f} s</td>"
        f"<td>{html.escape(run.error or key_results(frame, run.lesson))}</td></tr>"
        for run, page in links
    )
    index = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Choosing and using ML frameworks: the course</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
.ok {{ color: #060; }} .failed {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>Choosing and using ML frameworks</h1>
<p>Executed with the <code>{html.escape(profile)}</code> profile on
<b>{html.escape(runtime.device_description())}</b>.</p>
<h2>Lessons</h2>
<table><tr><th>#</th><th>lesson</th><th>status</th><th>time</th><th>key results / error</th></tr>
{rows}
</table>
<h2>Recorded results ({len(frame)} records)</h2>
{table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)}
</body></html>
"""
    _write_atomic(site_dir / "index.html", index)
    return site_dir / "index.html"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_course(notebooks_dir: Path, out: Path, *, profile: str, lessons=None,
               timeout_s: int | None = None, progress: bool | None = None) -> int:
    """Execute the lessons in order, print progress and a summary, build the site.

    Returns the process exit status: 0 if every lesson ran, 1 if any failed. Raises
    ValueError for an unknown profile or lesson number (before anything runs).
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
    os.environ.setdefault("COURSE_RUN_ID", uuid.uuid4().hex[:12])
    progress = sys.stdout.isatty() if progress is None else progress
    runs: list[LessonRun] = []
    start = time.perf_counter()
    print(f"Running {len(paths)} lessons, profile {profile!r}, on {runtime.device_description()}",
          flush=True)
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path.stem} ... (course time {time.perf_counter() - start:.0f} s)",
              flush=True)
        run = run_lesson(path, nb_dir, profile=profile, timeout_s=timeout_s, progress=progress)
        runs.append(run)
        print(f"    {run.status} in {run.seconds:.1f} s" + (f": {run.error}" if run.error else ""),
              flush=True)
    index = build_site(runs, site_dir, results_dir, profile)
    frame = _results.read_results(results_dir)
    print("\nSummary")
    print(f"{'lesson':<34} {'status':<7} {'time':>8}  key results")
    for run in runs:
        detail = run.error if run.error else key_results(frame, run.lesson)
        print(f"{run.name:<34} {run.status:<7} {run.seconds:>7.1f}s  {detail}")
    failed = [r for r in runs if r.status != "ok"]
    print(f"\n{len(runs) - len(failed)} passed, {len(failed)} failed in "
          f"{time.perf_counter() - start:.0f} s. Site: {index}; results: {results_dir} "
          f"({len(frame)} records); notebooks: {nb_dir}")
    return 1 if failed else 0
