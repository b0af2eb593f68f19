"""Shared fixtures: every unit test writes results to its own temporary folder."""

import functools
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("COURSE_DECISION_RESULTS", str(Path(__file__).parent / "fixtures" / "results"))


@functools.cache
def _package_index_unreachable() -> str | None:
    """Why PyPI cannot be reached from here (None when it can): one TCP connection, 5 s."""
    import socket
    import urllib.parse

    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    host = urllib.parse.urlparse(index).hostname or "pypi.org"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return f"the package index {host} cannot be reached ({exc})"
    return None


@pytest.fixture(autouse=True)
def _network_or_skip(request):
    """Tests marked ``network`` are skipped, with the reason, where PyPI is unreachable."""
    if request.node.get_closest_marker("network") and _package_index_unreachable():
        pytest.skip(f"needs the network: {_package_index_unreachable()}")


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch, request):
    if request.node.fspath.ext == ".ipynb":  # nbval items: results go where make test says
        return
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))


# Parallel runs use `pytest -n 2 --dist loadgroup`. Every item gets an xdist group: the cells of
# one notebook (nbval) stay together on one worker, as do the tests of one module (or class);
# the slow lesson re-runs of test_lesson_variants.py each get their own group, so that they are
# spread over the workers instead of running one after another.
# tryfirst: xdist's own hook turns the markers into node-id suffixes, so ours must run before it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.path.name in ("test_lesson_variants.py", "test_no_tensorflow.py"):
            group = item.nodeid
        elif item.path.suffix == ".ipynb":
            group = "nb-" + item.path.stem
        else:
            cls = getattr(item, "cls", None)
            group = f"{item.path}::{cls.__name__}" if cls else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """Fail loudly if xdist did not apply the groups (a notebook split over workers fails
    cell by cell with NameErrors: seen with pytest 9.x and xdist 3.8, whose suffix pytest 9
    ignores)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not apply --dist loadgroup to {len(ungrouped)} tests (e.g. "
            f"{ungrouped[0]}): the cells of one notebook would run on different workers. "
            f"Install the versions in requirements.lock (pytest {pytest.__version__} is "
            "installed; the course needs pytest<9 with pytest-xdist 3.8).")


# Binder gives a lesson about 2 GB (CURRICULUM section 8); the course keeps every lesson's
# kernel under 1.5 GB in the smoke profile. The peak resident memory of each lesson's kernel
# (VmHWM, read from /proc when nbval has run its last cell) is recorded as the lesson's
# `peak_kernel_memory` (framework "python", mode "smoke"), `passed` when under 1.5 GB.
#
# VmHWM counts the pages of the frameworks' shared libraries that the kernel has mapped, and
# how many of those are mapped depends on what the page cache holds (the kernel maps cached
# pages around each one it touches): the same lesson 08 measured 1297 MB in a checkout whose
# virtual environment had been idle, 1434 MB in a freshly installed one, and 1526 MB there
# while another kernel loaded TensorFlow next to it (RssFile 411 vs 506 MB for `import
# tensorflow` alone, anonymous memory identical). Those library pages can be dropped and
# re-read under memory pressure; what a container can never give back (no swap) is the
# kernel's private memory, its anonymous pages, which do not depend on the page cache. So a
# lesson fails when its kernel's private memory peaks over PRIVATE_MEMORY_LIMIT_MB (1.25 GB:
# Binder's 2 GB, less the Jupyter server, less about 0.6 GB of library pages kept resident),
# sampled every 0.25 s and bounded below by VmHWM minus the file pages mapped at the end; or
# when VmHWM itself passes KERNEL_HARD_LIMIT_MB (1.75 GB). Measured in a fresh checkout with two
# kernels at once: VmHWM 0.15-1.53 GB, private 0.1-0.95 GB (lesson 07 the most).
KERNEL_MEMORY_LIMIT_MB = float(os.environ.get("COURSE_KERNEL_MEMORY_LIMIT_MB", 1536))
KERNEL_HARD_LIMIT_MB = float(os.environ.get("COURSE_KERNEL_HARD_LIMIT_MB", 1792))
PRIVATE_MEMORY_LIMIT_MB = float(os.environ.get("COURSE_PRIVATE_MEMORY_LIMIT_MB", 1280))
# The processes a lesson starts (the TensorFlow workers of lessons 01, 06, 07 and 09, JAX's in
# lesson 10, torchrun, per-backend scripts) run next to the kernel, and Binder's 2 GB holds them
# all. While a lesson has such processes, the memory of the kernel and all its descendants is
# sampled every 0.5 s and the peak recorded as `peak_process_tree_memory`: anonymous pages
# summed over the processes, pages of each mapped file counted once (the most any of them has
# resident), as a container is charged; `passed` when under Binder's 2 GB. Its library pages
# vary with the page cache as the kernel's do (lesson 10: 1730 MB in an idle checkout, 1964 MB
# in a fresh one), so the lesson fails on the tree's private (anonymous) memory, summed over the
# processes (`private_mb`), over TREE_PRIVATE_LIMIT_MB (1.5 GB: 2 GB less the Jupyter server
# and the libraries' pages). The sum of their Rss (an upper bound: shared pages counted in every
# process) is recorded as `rss_sum_mb`. Sampling can miss a spike shorter than its interval.
TREE_MEMORY_LIMIT_MB = float(os.environ.get("COURSE_TREE_MEMORY_LIMIT_MB", 2048))
TREE_PRIVATE_LIMIT_MB = float(os.environ.get("COURSE_TREE_PRIVATE_LIMIT_MB", 1536))
_HEX = frozenset("0123456789abcdef")


def _tree_pids(root: int) -> list[int]:
    """Process `root` and all its descendants (psutil; [root] if it is gone)."""
    import psutil

    try:
        return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return [root]


def _tree_memory_mb(pids) -> tuple[float, float, float]:
    """(memory charged, sum of Rss, anonymous) in MB of these processes, from /proc/<pid>/smaps.

    Charged: anonymous pages (heap, stacks, copied-on-write pages), summed over the processes;
    the other resident pages of each mapped file (shared libraries), counted once, the largest
    count any of the processes has. Processes that are gone are skipped."""
    summed_kb = rss_kb = 0  # summed_kb: the anonymous pages of all the processes
    files: dict[tuple[str, str], int] = {}
    for pid in pids:
        mine: dict[tuple[str, str], int] = {}
        try:
            with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as fh:
                key, rss = None, 0
                for line in fh:
                    if line[0] in _HEX:  # a mapping: start-end perms offset dev inode [path]
                        parts = line.split(maxsplit=5)
                        key = (parts[3], parts[4]) if parts[4] != "0" else None
                    elif line.startswith("Rss:"):
                        rss = int(line.split()[1])
                        rss_kb += rss
                    elif line.startswith("Anonymous:"):
                        anon = int(line.split()[1])
                        summed_kb += anon if key is not None else rss  # anon mapping: all of it
                        if key is not None:
                            mine[key] = mine.get(key, 0) + rss - anon
        except (OSError, ValueError, IndexError):
            continue
        for key, kb in mine.items():
            files[key] = max(files.get(key, 0), kb)
    return (summed_kb + sum(files.values())) / 1024, rss_kb / 1024, summed_kb / 1024


def _private_and_clean_mb(pid: int) -> tuple[float, float]:
    """(private, file) MB of one process from /proc/<pid>/smaps_rollup: private = its anonymous
    pages (heap, stacks, copied-on-write pages: what only swap could take away), file = its
    other resident pages (mapped files, mostly the frameworks' shared libraries). Not "dirty
    vs clean": the pages of a freshly installed library stay dirty in the page cache until
    written back, and would count as private."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Anonymous"):
                    fields[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    anon = fields.get("Anonymous", 0)
    return anon / 1024, (fields.get("Rss", 0) - anon) / 1024


class _TreeSampler(threading.Thread):
    """Samples the kernel's private memory every `interval` seconds, and its whole process tree
    (every other sample) while it has child processes (the kernel alone: its own VmHWM)."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True, name=f"tree-memory-{pid}")
        self.pid, self.interval = pid, interval
        self.peak = self.peak_rss_sum = self.peak_anon = self.peak_private = 0.0
        self._ticks = 0
        self._stop_event = threading.Event()

    def _sample(self, tree: bool = True):
        self.peak_private = max(self.peak_private, _private_and_clean_mb(self.pid)[0])
        if not tree:
            return
        pids = _tree_pids(self.pid)
        if len(pids) > 1:
            charged, rss_sum, anon = _tree_memory_mb(pids)
            self.peak, self.peak_rss_sum = max(self.peak, charged), max(self.peak_rss_sum, rss_sum)
            self.peak_anon = max(self.peak_anon, anon)

    def run(self):
        while not self._stop_event.wait(self.interval):
            self._ticks += 1
            self._sample(tree=self._ticks % 2 == 0)

    def stop(self) -> tuple[float, float, float]:
        """Stop sampling; (peak charged, peak Rss sum, peak anonymous) of the tree in MB, 0 if
        no child was ever seen. The kernel's private peak is in `peak_private`."""
        self._stop_event.set()
        self.join(timeout=10)
        self._sample(tree=False)
        return self.peak, self.peak_rss_sum, self.peak_anon


def _kernel_pid(notebook_item):
    kernel = getattr(notebook_item, "kernel", None)
    provisioner = getattr(getattr(kernel, "km", None), "provisioner", None)
    return getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None),
                                                        "pid", None)


def _kernel_peak_mb(notebook_item):
    pid = _kernel_pid(notebook_item)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError, ValueError):
        return None
    return None


class _KernelMemory:
    """Registered as a plugin (below) because a conftest's per-test hooks only see the tests
    under its own folder, and the notebooks are not under tests/."""

    def __init__(self):
        self._samplers: dict[int, _TreeSampler] = {}  # id(notebook) -> its kernel's sampler

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        if item.path.suffix == ".ipynb" and id(item.parent) not in self._samplers:
            pid = _kernel_pid(item.parent)  # nbval has started the kernel by now
            if pid:
                self._samplers[id(item.parent)] = sampler = _TreeSampler(pid)
                sampler.start()
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        over = []
        last_cell = item.path.suffix == ".ipynb" and (nextitem is None
                                                       or nextitem.parent is not item.parent)
        sampler = self._samplers.pop(id(item.parent), None) if last_cell else None
        if last_cell and (peak := _kernel_peak_mb(item.parent)) is not None:
            from course_lib import results

            lesson = item.path.name[:2]
            profile = os.environ.get("COURSE_PROFILE", "full")
            tree = rss_sum = tree_anon = None
            private = clean_end = None
            if sampler is not None:
                tree, rss_sum, tree_anon = sampler.stop()
                private, clean_end = sampler.peak_private, _private_and_clean_mb(sampler.pid)[1]
                private = max(private, peak - clean_end)  # VmHWM is exact; file pages only grow
            results.record(lesson, "peak_kernel_memory", round(peak, 1), "MB",
                           framework="python", mode=profile,
                           limit_mb=KERNEL_MEMORY_LIMIT_MB, passed=peak <= KERNEL_MEMORY_LIMIT_MB,
                           hard_limit_mb=KERNEL_HARD_LIMIT_MB,
                           private_peak_mb=None if private is None else round(private, 1),
                           private_limit_mb=PRIVATE_MEMORY_LIMIT_MB,
                           file_mb_at_end=None if clean_end is None else round(clean_end, 1))
            if peak > KERNEL_HARD_LIMIT_MB:
                over.append(f"{item.path.name}: the kernel's peak memory was {peak:.0f} MB, over "
                            f"{KERNEL_HARD_LIMIT_MB:.0f} MB (Binder gives a lesson about 2 GB: "
                            "import only the frameworks a section needs, run the heavy ones in a "
                            "worker process, free large arrays)")
            if private is not None and private > PRIVATE_MEMORY_LIMIT_MB:
                over.append(f"{item.path.name}: the kernel's private (anonymous) memory peaked "
                            f"at {private:.0f} MB, over {PRIVATE_MEMORY_LIMIT_MB:.0f} MB")
            if sampler is not None:
                tree = max(tree, peak)  # the kernel alone, when it had no child at its peak
                tree_anon = max(tree_anon, private)
                results.record(lesson, "peak_process_tree_memory", round(tree, 1), "MB",
                               framework="python", mode=profile, limit_mb=TREE_MEMORY_LIMIT_MB,
                               passed=tree <= TREE_MEMORY_LIMIT_MB, rss_sum_mb=round(rss_sum, 1),
                               private_mb=round(tree_anon, 1),
                               private_limit_mb=TREE_PRIVATE_LIMIT_MB,
                               sampled_every_s=2 * sampler.interval)
                if tree_anon > TREE_PRIVATE_LIMIT_MB:
                    over.append(f"{item.path.name}: the kernel and the processes it started held "
                                f"{tree_anon:.0f} MB of private (anonymous) memory together, over "
                                f"{TREE_PRIVATE_LIMIT_MB:.0f} MB")
        elif sampler is not None:
            sampler.stop()
        outcome = yield
        if over:
            raise AssertionError("; ".join(over))
        return outcome


def pytest_configure(config):
    config.pluginmanager.register(_KernelMemory(), "course-kernel-memory")


def pytest_terminal_summary(terminalreporter):
    folder = os.environ.get("COURSE_RESULTS_DIR")
    if not folder or not os.path.isdir(folder):
        return
    import pandas as pd

    from course_lib import results

    frame = results.read_results(folder)
    if frame.empty or "metric" not in frame:
        return
    peaks = frame[frame["metric"] == "peak_kernel_memory"].sort_values("lesson")
    if peaks.empty:
        return
    trees = frame[frame["metric"] == "peak_process_tree_memory"].groupby("lesson")["value"].max()
    terminalreporter.section("peak memory per lesson (MB): kernel VmHWM, kernel private, "
                             "kernel + its processes")
    for _, row in peaks.iterrows():
        over = "" if row["value"] <= KERNEL_MEMORY_LIMIT_MB else "  over 1.5 GB"
        tree = trees.get(row["lesson"], float("nan"))
        private = row.get("private_peak_mb")
        private = float("nan") if private is None or pd.isna(private) else private
        terminalreporter.write_line(f"{row['lesson']}: {row['value']:7.0f}  {private:7.0f}  "
                                    f"{tree:7.0f}{over}")
