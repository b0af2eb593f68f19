"""The Colab lane: every lesson, through its real Colab setup cell, on Colab's own versions.

``make test-colab`` runs this. It reproduces a Google Colab runtime as closely as a CPU-only
Linux machine without network (except the package registries) allows:

- **Python 3.13 and Colab's framework versions** (``colab/versions.txt``, the committed list
  with its date and source), in a virtual environment of their own under ``build/colab/env/``.
  Nothing of the course's lock (``requirements.lock``) is in it, and neither is ``course_lib``.
  The "tpu" variant is the same environment without TensorFlow (Colab's TPU runtimes ship
  none); JAX there runs on the CPU, as nothing here has a TPU.
- **The real setup cell.** Each lesson runs with papermill (smoke profile) in a kernel of that
  environment whose process has ``COLAB_RELEASE_TAG`` set, so the cell takes its Colab branch:
  it installs ``course_lib`` *non-editable* with pip from
  ``git+https://github.com/<GITHUB_REPO>@<RELEASE_REF>``. git rewrites that address to a local
  bare repository (``url.<path>.insteadOf``) holding a snapshot commit of this checkout's
  working tree under the badge's ref, so what is installed is this checkout as pip would get
  it from GitHub. The course's files that Colab downloads from raw.githubusercontent.com
  (data, reference records) come from a local HTTP server serving that same snapshot
  (``COURSE_RAW_BASE_URL``), and are checksummed by the real code.
- **A fresh runtime per lesson, from an empty folder.** Each lesson gets its own copy of the
  environment (hard links: a few seconds), an empty working folder (Colab's ``/content``) and
  an empty cache; nothing of one lesson's installs reaches the next.
- **Setup never replaces the runtime's frameworks.** After each lesson, ``pip freeze`` of the
  framework distributions (:data:`course_lib.colab.HELD`) must equal the environment's.

Run from the repository root with the course's own environment (it needs papermill)::

    .venv/bin/python tools/colab_lane.py --python313 /path/to/python3.13 [--lessons 02 10]
        [--variants gpu tpu] [--jobs 2]

It prints one line per lesson; the executed notebooks and logs are in ``build/colab/runs/``,
a summary in ``build/colab/summary.json``. Exit status 0 when every lesson passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import colab  # noqa: E402

VERSIONS = ROOT / "colab" / "versions.txt"
#: What the lane's runtime has besides colab/versions.txt: a Jupyter kernel and requests,
#: as every Colab runtime has. Not papermill, not nbformat's tools: course_lib's install must
#: bring what it needs.
RUNTIME_EXTRAS = ("ipykernel", "requests")
#: Uninstalled from the "gpu" environment to make the "tpu" one (Colab's TPU runtimes have no
#: TensorFlow).
TENSORFLOW_DISTS = ("tensorflow", "tensorboard", "tensorboard-data-server")
VARIANTS = ("gpu", "tpu")
#: What each lesson prints when TensorFlow is absent (the "tpu" variant checks it; None: the
#: lesson has no TensorFlow part). tests/test_no_tensorflow.py runs some of them on the lock.
NO_TENSORFLOW_PHRASES = {
    "00": "skips its TensorFlow parts",
    "01": "the TensorFlow MLP is skipped",
    "02": "skipped, the framework is not installed",
    "03": None,
    "04": None,
    "05": "TensorFlow lesson skipped",  # every later cell says so
    "06": "TensorFlow cannot be imported here",
    "07": "TensorFlow cannot be imported here",
    "08": "TensorFlow cannot be imported here",
    "09": "TensorFlow cannot be imported here",
    "10": "TensorFlow cannot be imported here",
    "11": "section 5 (MirroredStrategy) is skipped",
}
LESSON_TIMEOUT_S = 1500


def read_versions(path: Path = VERSIONS) -> dict[str, str]:
    """``{distribution: version}`` of ``colab/versions.txt`` (``name==version`` lines;
    ``#`` comments). Raises ValueError for any other kind of line."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {line!r}")
        pins[colab.normalise_name(match[1])] = match[2]
    return pins


def find_python313(explicit: str | None) -> str:
    """The Python 3.13 interpreter: ``explicit``, ``python3.13`` on PATH, or pyenv's newest
    3.13. Raises SystemExit with what to do when there is none."""
    candidates = [explicit] if explicit else []
    candidates.append(shutil.which("python3.13"))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p / "bin" / "python3.13") for p in sorted(pyenv.glob("3.13*"), reverse=True)]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.strip() == "(3, 13)":
            return candidate
        if explicit and candidate == explicit:
            break
    raise SystemExit("colab lane: Colab runs Python 3.13 and none was found "
                     f"({'PYTHON313=' + explicit + ' is not a Python 3.13' if explicit else 'no python3.13 on PATH or in pyenv'}). "
                     "Install it (e.g. `pyenv install 3.13`) or run "
                     "`make test-colab PYTHON313=/path/to/python3.13`.")


def _run(cmd, log=None, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if log is not None:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}\n")
    return proc


def build_environment(env_root: Path, python313: str) -> dict[str, Path]:
    """Create (once per content of colab/versions.txt) the "gpu" and "tpu" environments under
    ``env_root``; return ``{variant: venv folder}``. Each build is written to a temporary
    folder and moved into place when complete, so an interrupted build is never reused."""
    key = hashlib.sha256(VERSIONS.read_bytes() + " ".join(RUNTIME_EXTRAS).encode()
                         + python313.encode()).hexdigest()[:12]
    envs = {v: env_root / f"{v}-{key}" for v in VARIANTS}
    if all((p / "freeze.txt").is_file() for p in envs.values()):
        return envs
    if (env_root).exists():
        shutil.rmtree(env_root)
    (env_root).mkdir(parents=True)
    log = env_root / "build.log"
    staging = env_root / f".gpu-{key}.tmp"
    print(f"colab lane: building the Colab environment (Python 3.13, {VERSIONS.name}): "
          f"a few minutes, log {log.relative_to(ROOT)}", flush=True)
    t0 = time.perf_counter()
    _run([python313, "-m", "venv", staging], log, check=True)
    py = staging / "bin" / "python"
    requirements = [f"{name}=={version}" for name, version in read_versions().items()]
    proc = _run([py, "-m", "pip", "install", "--progress-bar", "off", "--upgrade", "pip"], log)
    proc = _run([py, "-m", "pip", "install", "--progress-bar", "off", *requirements,
                 *RUNTIME_EXTRAS], log)
    if proc.returncode:
        raise SystemExit(f"colab lane: installing Colab's versions failed; see {log}")
    for variant in VARIANTS:
        folder = staging if variant == "gpu" else env_root / f".{variant}-{key}.tmp"
        if variant == "tpu":
            _run(["cp", "-al", staging, folder], log, check=True)
            _run([folder / "bin" / "python", "-m", "pip", "uninstall", "-y", *TENSORFLOW_DISTS],
                 log, check=True)
        freeze = _run([folder / "bin" / "python", "-m", "pip", "freeze"], log, check=True).stdout
        (folder / "freeze.txt").unlink(missing_ok=True)  # a hard link to the gpu one otherwise
        (folder / "freeze.txt").write_text(freeze, encoding="utf-8")
    for variant in VARIANTS:
        tmp = staging if variant == "gpu" else env_root / f".{variant}-{key}.tmp"
        tmp.rename(envs[variant])
    print(f"colab lane: environment ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return envs


def held_versions(freeze: str) -> dict[str, str]:
    """``{distribution: line}`` of a ``pip freeze`` text, for the distributions setup must
    never replace (:data:`course_lib.colab.HELD`)."""
    held = {}
    for line in freeze.splitlines():
        name = colab.normalise_name(re.split(r"[=@ ]", line, maxsplit=1)[0])
        if name in colab.HELD:
            held[name] = line.strip()
    return held


def snapshot_repository(out: Path) -> tuple[Path, str]:
    """A bare repository at ``out/remote.git`` whose :data:`colab.RELEASE_REF` (a branch, or
    a tag for ``vX.Y.Z``) is one commit of this checkout's working tree: tracked and untracked
    files that ``.gitignore`` does not exclude. It is made with the bare repository as git
    directory and this checkout as work tree, so the checkout's own repository (if it has
    one: a source archive works too) is never touched. Returns the bare repository and the
    commit."""
    remote = out / "remote.git"
    if remote.exists():
        shutil.rmtree(remote)
    _run(["git", "init", "-q", "--bare", remote], check=True)
    env = {**os.environ, "GIT_DIR": str(remote), "GIT_WORK_TREE": str(ROOT),
           "GIT_AUTHOR_NAME": "colab lane", "GIT_AUTHOR_EMAIL": "lane@localhost",
           "GIT_COMMITTER_NAME": "colab lane", "GIT_COMMITTER_EMAIL": "lane@localhost"}
    _run(["git", "add", "-A"], env=env, cwd=ROOT, check=True)
    tree = _run(["git", "write-tree"], env=env, cwd=ROOT, check=True).stdout.strip()
    commit = _run(["git", "commit-tree", tree, "-m", "colab lane: working tree"],
                  env=env, cwd=ROOT, check=True).stdout.strip()
    kind = "tags" if re.fullmatch(r"v\d+(\.\d+)*", colab.RELEASE_REF) else "heads"
    _run(["git", "update-ref", f"refs/{kind}/{colab.RELEASE_REF}", commit], env=env, check=True)
    _run(["git", "symbolic-ref", "HEAD", f"refs/{kind}/{colab.RELEASE_REF}"], env=env)
    (remote / "index").unlink(missing_ok=True)
    return remote, commit


#: What the core install must never bring (the tooling's dependencies: ``course_tools``).
TOOLING_ONLY = ("papermill", "nbformat", "nbgrader", "sphinx", "myst-nb", "nbclient")


def check_core_install(python313: str, remote: Path, out: Path) -> list[str]:
    """Install ``course_lib`` alone, as the setup cell does (non-editable, from the snapshot at
    the badge's ref), into an empty Python 3.13 environment; import every module of the core
    there. Returns the problems found (empty when the core stands on its declared
    dependencies and brings none of :data:`TOOLING_ONLY`)."""
    log = out / "core-install.log"
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="colab-lane-core-") as tmp:
        venv = Path(tmp) / "core"
        _run([python313, "-m", "venv", venv], log, check=True)
        py = venv / "bin" / "python"
        spec = f"course_lib @ git+{remote.as_uri()}@{colab.RELEASE_REF}"
        if _run([py, "-m", "pip", "install", "--progress-bar", "off", spec], log).returncode:
            return [f"pip could not install the core alone (log: {log})"]
        probe = ("import importlib, pkgutil, course_lib\n"
                 "names = sorted(m.name for m in pkgutil.iter_modules(course_lib.__path__))\n"
                 "[importlib.import_module('course_lib.' + n) for n in names]\n"
                 "print(len(names))")
        proc = _run([py, "-c", probe], log, cwd=tmp)
        problems = [] if proc.returncode == 0 else [
            "a core module does not import with only the core's dependencies: "
            + (proc.stderr.strip().splitlines() or ["?"])[-1]]
        freeze = _run([py, "-m", "pip", "freeze"], log, check=True).stdout.lower()
        brought = [name for name in TOOLING_ONLY
                   if re.search(rf"^{re.escape(name)}[=@ ]", freeze, re.M)]
        if brought:
            problems.append(f"installing the core brought the tooling's {brought}")
    return problems


def serve_raw_files(out: Path, commit: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve the snapshot's files as raw.githubusercontent.com does
    (``/<owner>/<name>/<ref>/<path>``) on 127.0.0.1; return the server and its base URL."""
    served = out / "raw"
    if served.exists():
        shutil.rmtree(served)
    target = served / colab.GITHUB_REPO / colab.RELEASE_REF
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "--git-dir", str(out / "remote.git"), "archive", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the lane prints one line per lesson, not per request
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _outputs_text(notebook: Path) -> str:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                         + "\n".join(o.get("traceback", [])))
    return "\n".join(parts)


def _error_summary(notebook: Path, log: Path) -> str:
    """The failing cell's exception, from the executed notebook (else the log's last line)."""
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
        for index, cell in enumerate(nb.cells):
            for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
                if o.get("output_type") == "error":
                    return f"cell {index}: {o.get('ename')}: {str(o.get('evalue'))[:300]}"
    except Exception:  # noqa: BLE001 - the notebook may be missing or half-written
        pass
    lines = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


def run_lesson(notebook: Path, variant: str, env_dir: Path, out: Path, remote: Path,
               raw_url: str) -> dict:
    """Execute one lesson on a fresh copy of ``env_dir``; return its summary row.

    The runtime lives in a temporary folder *outside* the repository (on the same file system,
    for the hard links): a working folder inside it would let ``course_lib`` find this
    checkout as its course root, which Colab never has."""
    lesson = notebook.name[:2]
    keep = out / "runs" / variant / lesson  # what stays: the executed notebook and the log
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=f"colab-lane-{variant}-{lesson}-",
                                     dir=_scratch_dir(out)) as tmp:
        return _run_lesson(notebook, variant, env_dir, out, remote, raw_url, Path(tmp), keep)


def _scratch_dir(out: Path) -> str:
    """A folder outside the repository on the file system of ``out`` (hard links): the
    system's temporary folder, else a folder beside the checkout."""
    tmp = Path(tempfile.gettempdir())
    if tmp.stat().st_dev == out.stat().st_dev and ROOT not in tmp.resolve().parents:
        return str(tmp)
    beside = ROOT.parent / f".{ROOT.name}-colab-lane"
    beside.mkdir(exist_ok=True)
    if beside.stat().st_dev == out.stat().st_dev:
        return str(beside)
    raise SystemExit(f"colab lane: neither {tmp} nor {beside} is on the file system of {out}; "
                     "set TMPDIR to a folder outside the repository on that file system")


def _run_lesson(notebook: Path, variant: str, env_dir: Path, out: Path, remote: Path,
                raw_url: str, run_dir: Path, keep: Path) -> dict:
    lesson = notebook.name[:2]
    content, home, kernels = run_dir / "content", run_dir / "home", run_dir / "jupyter"
    for folder in (content, home, kernels / "kernels" / "colab", run_dir / "tmp"):
        folder.mkdir(parents=True)
    venv = run_dir / "runtime"
    log = keep / "papermill.log"
    executed = keep / notebook.name
    t0 = time.perf_counter()
    subprocess.run(["cp", "-al", str(env_dir), str(venv)], check=True)
    python = venv / "bin" / "python"
    (kernels / "kernels" / "colab" / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Colab lane ({variant})", "language": "python"}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COURSE_", "PYTHON", "VIRTUAL_ENV", "KERAS_", "JAX_", "XLA_",
                                "TF_", "COLAB_", "GIT_CONFIG", "JUPYTER", "PIP_"))}
    env.update({
        "COLAB_RELEASE_TAG": "release-colab-lane",  # what the setup cell takes as "on Colab"
        "COURSE_PROFILE": "smoke",
        "COURSE_RAW_BASE_URL": raw_url,
        "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(run_dir / "tmp"),  # the runtime's own /tmp (the setup's held versions)
        "PIP_CACHE_DIR": str(out / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_PROGRESS_BAR": "off",
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "JUPYTER_PATH": str(kernels), "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "agg",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.{remote.as_uri()}.insteadOf",
        "GIT_CONFIG_VALUE_0": f"https://github.com/{colab.GITHUB_REPO}",
    })
    for key in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT"):  # the machine's own pip setup
        if key in os.environ:
            env[key] = os.environ[key]
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebook), str(executed), "--cwd", str(content),
         "-k", "colab", "--execution-timeout", str(LESSON_TIMEOUT_S), "--no-progress-bar"],
        env=env, stdout=open(log, "w", encoding="utf-8"), stderr=subprocess.STDOUT,
        timeout=LESSON_TIMEOUT_S + 300, check=False)
    seconds = time.perf_counter() - t0
    row = {"variant": variant, "lesson": lesson, "seconds": round(seconds, 1),
           "log": str(log.relative_to(ROOT)), "notebook": str(executed.relative_to(ROOT))}
    problems = []
    if proc.returncode:
        problems.append(_error_summary(executed, log))
    before = held_versions((env_dir / "freeze.txt").read_text(encoding="utf-8"))
    after = held_versions(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                                         text=True, check=True).stdout)
    changed = sorted(f"{before.get(n, n + ' absent')} -> {after.get(n, 'removed')}"
                     for n in set(before) | set(after) if before.get(n) != after.get(n))
    row["frameworks_changed"] = changed
    if changed:
        problems.append("setup changed the runtime's frameworks: " + "; ".join(changed))
    if not proc.returncode and executed.is_file():
        text = _outputs_text(executed)
        if "Accelerator:" not in text:
            problems.append("the setup cell did not take its Colab branch")
        installed = subprocess.run([str(python), "-m", "pip", "show", "-f", "course_lib"],
                                   capture_output=True, text=True, check=False).stdout
        if "Editable project location" in installed or "Location:" not in installed:
            problems.append("course_lib was not installed non-editable by the setup cell")
        records = sorted(content.rglob("*.jsonl"))
        row["records"] = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in records)
        if variant == "tpu":
            if lesson == "05" and "Change runtime type" not in text:
                problems.append("lesson 05 did not tell the student to switch runtime")
            phrase = NO_TENSORFLOW_PHRASES.get(lesson)
            if phrase and phrase not in text:
                problems.append(f"the lesson did not say what it skipped ({phrase!r})")
            # lesson 12 measures nothing: it scores TensorFlow from the reference records
            tf_records = [p for p in records if lesson != "12"
                          and '"framework": "tensorflow"' in p.read_text(encoding="utf-8")]
            if tf_records:
                problems.append(f"TensorFlow figures recorded without TensorFlow: {tf_records}")
    row["status"] = "failed" if problems else "passed"
    row["problems"] = problems
    if (content / "build" / "results").is_dir():  # the lesson's records, for the reader
        shutil.copytree(content / "build" / "results", keep / "results")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python313", default=os.environ.get("PYTHON313") or None)
    parser.add_argument("--lessons", nargs="*", default=None, help="two-digit numbers (default: all)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "build" / "colab"),
                        help="executed notebooks, logs, summary (default build/colab)")
    parser.add_argument("--env-dir", default=str(ROOT / "build" / "colab" / "env"),
                        help="the Colab environments, built once (default build/colab/env)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.lessons:
        notebooks = [n for n in notebooks if n.name[:2] in set(args.lessons)]
        if not notebooks:
            raise SystemExit(f"colab lane: no lesson matches {args.lessons}")
    python313 = find_python313(args.python313)
    envs = build_environment(Path(args.env_dir).resolve(), python313)
    remote, commit = snapshot_repository(out)
    server, raw_url = serve_raw_files(out, commit)
    print(f"colab lane: {len(notebooks)} lessons x {args.variants}, smoke profile, "
          f"course_lib from this checkout (snapshot {commit[:10]}) at ref "
          f"'{colab.RELEASE_REF}'; logs in {(out / 'runs').relative_to(ROOT)}", flush=True)
    t_core = time.perf_counter()
    core_problems = check_core_install(python313, remote, out)
    print(f"  core   {'passed' if not core_problems else 'failed':6s} "
          f"{time.perf_counter() - t_core:5.0f} s  course_lib alone on Python 3.13: "
          + (" | ".join(core_problems) or "every module imports, no papermill/nbformat/Sphinx"),
          flush=True)
    snapshot = out / "raw" / colab.GITHUB_REPO / colab.RELEASE_REF / "notebooks"
    notebooks = [snapshot / nb.name for nb in notebooks]  # the lessons as committed in the snapshot
    jobs = [(nb, v) for v in args.variants for nb in notebooks]
    rows = []
    t0 = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_lesson, nb, v, envs[v], out, remote, raw_url): (nb, v)
                       for nb, v in jobs}
            for future in concurrent.futures.as_completed(futures):
                nb, v = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - one lesson's crash is reported, the rest run
                    row = {"variant": v, "lesson": nb.name[:2], "status": "failed",
                           "problems": [f"the lane itself failed: {exc!r}"], "seconds": 0}
                rows.append(row)
                line = (f"  {row['variant']} {row['lesson']} {row['status']:6s} "
                        f"{row['seconds']:5.0f} s")
                if row["status"] == "passed":
                    line += f"  {row.get('records', 0)} records, frameworks unchanged"
                else:
                    line += "  " + " | ".join(row["problems"]) + f"  (log: {row.get('log')})"
                print(line, flush=True)
    finally:
        server.shutdown()
    rows.sort(key=lambda r: (r["variant"], r["lesson"]))
    failed = [r for r in rows if r["status"] != "passed"]
    if core_problems:
        failed.append({"lesson": "core", "problems": core_problems})
    (out / "summary.json").write_text(json.dumps({
        "versions": read_versions(), "ref": colab.RELEASE_REF, "snapshot": commit,
        "python": python313, "seconds": round(time.perf_counter() - t0),
        "core_install": core_problems or "passed", "lessons": rows},
        indent=2), encoding="utf-8")
    print(f"colab lane: {len(rows) - len(failed) + bool(core_problems)}/{len(rows)} lessons passed in "
          f"{time.perf_counter() - t0:.0f} s; summary {(out / 'summary.json').relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
