"""course_lib.bench (timing, synchronisation, FLOPs, peak, records) and the `bench` command.

No test asserts how fast anything runs: timings on a shared machine are noise. Time is either
faked (a clock the test advances) or only bounded from below (a sleep lasts at least as long
as asked).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from course_lib import bench, results
from course_tools import bench_cli
from course_tools.cli import build_parser


class FakeClock:
    """A clock that moves only when a fake workload says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def workload(clock, durations):
    """fn() that advances the clock by the next duration; raises if called too often."""
    remaining = list(durations)
    calls = []

    def fn():
        if not remaining:
            raise AssertionError("fn called more often than expected")
        seconds = remaining.pop(0)
        clock.now += seconds
        calls.append(seconds)
        return None

    return fn, calls, remaining


# ------------------------------------------------------------------------------ measure()


def test_median_iqr_min_max_on_a_fake_clock():
    clock = FakeClock()
    fn, calls, remaining = workload(clock, [10.0, 5.0, 5.0, 1.0, 2.0, 3.0, 4.0, 100.0])
    t = bench.measure(fn, sync=bench.sync_none, warmup=2, repeats=5, min_time=0, clock=clock)
    assert not remaining and len(calls) == 8
    assert t.first_call == pytest.approx(10.0)
    assert t.number == 1 and t.repeats == 5 and t.warmup == 2
    assert t.times == pytest.approx((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == pytest.approx(3.0)
    assert t.q1 == pytest.approx(2.0) and t.q3 == pytest.approx(4.0)
    assert t.iqr == pytest.approx(2.0)
    assert t.min == pytest.approx(1.0) and t.max == pytest.approx(100.0)
    assert t.gflops(6e9) == pytest.approx(2.0)
    summary = t.to_dict()
    assert summary["median"] == pytest.approx(3.0) and summary["first_call"] == pytest.approx(10)


def test_first_call_and_warmup_are_not_in_the_samples():
    clock = FakeClock()
    # a slow first call (compilation) and slow warm-up calls must not move the median
    fn, calls, _ = workload(clock, [50.0, 20.0, 20.0, 20.0] + [1.0] * 3)
    t = bench.measure(fn, sync=bench.sync_none, warmup=3, repeats=3, min_time=0, clock=clock)
    assert t.first_call == pytest.approx(50.0)
    assert t.times == pytest.approx((1.0, 1.0, 1.0))
    assert len(calls) == 1 + 3 + 3


def test_short_calls_are_grouped_into_samples_of_min_time():
    clock = FakeClock()
    # slowest warm-up call lasts 0.25 s and min_time is 1 s: samples of 4 calls
    durations = [1.0, 0.125, 0.25] + [0.25, 0.25, 0.25, 0.25] + [0.5, 0.5, 0.5, 0.5]
    fn, _, remaining = workload(clock, durations)
    t = bench.measure(fn, sync=bench.sync_none, warmup=2, repeats=2, min_time=1.0, clock=clock)
    assert t.number == 4 and not remaining
    assert t.times == pytest.approx((0.25, 0.5))  # seconds per call, not per sample


def test_sync_runs_after_every_call_inside_the_clock():
    clock = FakeClock()
    fn, calls, _ = workload(clock, [1.0] * 6)
    synced = []

    def slow_sync(result):  # a custom sync whose waiting must be timed too
        clock.now += 0.5
        synced.append(result)

    t = bench.measure(fn, sync=slow_sync, warmup=1, repeats=4, min_time=0, clock=clock)
    assert len(synced) == len(calls) == 6
    assert t.first_call == pytest.approx(1.5)
    assert t.median == pytest.approx(1.5)


def test_sleeping_function_is_timed_at_least_as_long_as_it_sleeps():
    t = bench.measure(lambda: time.sleep(0.01), sync=bench.sync_none, warmup=1, repeats=3,
                      min_time=0)
    assert t.repeats == 3 and t.number == 1
    assert t.min >= 0.0095  # a sleep never returns early (upper bounds would be timed asserts)
    assert t.first_call >= 0.0095
    assert t.q1 <= t.median <= t.q3 and t.iqr >= 0


def test_sync_is_required():
    with pytest.raises(TypeError, match="sync"):
        bench.measure(lambda: 1.0)  # keyword-only, no default
    with pytest.raises(bench.SyncError, match="sync_jax"):
        bench.measure(lambda: 1.0, sync=None)
    with pytest.raises(bench.SyncError, match="needs sync="):
        bench.measure(lambda: 1.0, sync="jax")


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"min_time": -1.0},
                                    {"repeats": 2.5}, {"max_number": 0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        bench.measure(lambda: None, sync=bench.sync_none, **kwargs)


def test_sync_tf_and_sync_jax_need_something_to_wait_for():
    with pytest.raises(bench.SyncError, match="no TensorFlow tensor"):
        bench.sync_tf(1.0)
    with pytest.raises(bench.SyncError):
        bench.measure(lambda: None, sync=bench.sync_tf)


# ------------------------------------------------------------------------------ JAX, torch


@pytest.fixture(scope="module")
def heavy_jax():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32))

    @jax.jit
    def chain(m):  # about 8 GFLOP: far longer than a dispatch
        return jax.lax.fori_loop(0, 30, lambda i, x: jnp.tanh(x @ m), m)

    chain(a).block_until_ready()  # compiled outside the tests
    return chain, a


def test_jax_result_timed_without_its_sync_is_refused(heavy_jax):
    chain, a = heavy_jax
    for wrong in (bench.sync_none, bench.sync_torch, bench.sync_tf):
        with pytest.raises(bench.SyncError, match="sync_jax"):
            bench.measure(lambda: chain(a), sync=wrong, repeats=1)
    with pytest.raises(bench.SyncError, match="no JAX array"):
        bench.measure(lambda: None, sync=bench.sync_jax, repeats=1)


def test_custom_sync_that_does_not_wait_is_detected(heavy_jax):
    chain, a = heavy_jax
    with pytest.raises(bench.SyncError, match="did not wait"):
        bench.measure(lambda: chain(a), sync=lambda result: None, repeats=1)


def test_sync_jax_waits_and_times(heavy_jax):
    chain, a = heavy_jax
    results_seen = []

    def fn():
        out = chain(a)
        results_seen.append(out)
        return {"out": out, "loss": out[0, 0]}  # a pytree

    t = bench.measure(fn, sync=bench.sync_jax, warmup=1, repeats=2, min_time=0)
    assert t.repeats == 2 and t.median > 0
    assert all(r.is_ready() for r in results_seen)


def test_torch_tensors_need_sync_torch():
    torch = pytest.importorskip("torch")
    x = torch.ones(4)
    with pytest.raises(bench.SyncError, match="sync_torch"):
        bench.measure(lambda: x * 2, sync=bench.sync_none, repeats=1)
    t = bench.measure(lambda: x * 2, sync=bench.sync_torch, warmup=0, repeats=2, min_time=0)
    assert t.repeats == 2


# ------------------------------------------------------------------------------ FLOPs, sizes


def test_flop_formula_for_a_known_small_mlp():
    # 6 * B * (64*64 + 64*64 + 64*10) with B = 256
    assert bench.mlp_train_step_flops((64, 64, 64, 10), 256) == 6 * 256 * 8832 == 13_565_952
    # one layer 3 -> 2, batch 5: forward 2*5*3*2 = 60, step = 3x forward = 180
    assert bench.mlp_train_step_flops((3, 2), 5) == 180
    # the first layer's input gradient left out: 180 - 2*5*3*2 = 120
    assert bench.mlp_train_step_flops((3, 2), 5, count_input_grad=False) == 120
    assert bench.mlp_train_step_flops("large", 256) == 6 * 256 * (784 * 1024 + 1024 * 1024
                                                                   + 1024 * 10)


def test_flop_formula_accepts_a_spec_and_rejects_nonsense():
    from course_lib.models import MLPSpec

    assert bench.mlp_train_step_flops(MLPSpec(), 32) == bench.mlp_train_step_flops(
        (64, 64, 64, 10), 32)
    for bad_sizes, bad_batch in (((64,), 1), ((64, 0, 10), 1), ((64, 10), 0), ((64, 10), 2.5)):
        with pytest.raises(ValueError):
            bench.mlp_train_step_flops(bad_sizes, bad_batch)


def test_matmul_flops():
    assert bench.matmul_flops(256, 1024, 1024) == 2 * 256 * 1024 * 1024
    with pytest.raises(ValueError):
        bench.matmul_flops(0, 1, 1)


def test_parse_sizes():
    assert bench.parse_sizes("tiny, large") == [("tiny", (64, 64, 64, 10)),
                                                ("large", (784, 1024, 1024, 10))]
    assert bench.parse_sizes("784-256-10") == [("784-256-10", (784, 256, 10))]
    for bad in ("huge", "10", "", "784-0-10"):
        with pytest.raises(ValueError):
            bench.parse_sizes(bad)


# ------------------------------------------------------------------------------ peak


def test_matmul_peak_with_numpy():
    p = bench.matmul_peak(64, repeats=3, min_time=0.001, m=32)
    assert p.shape == (32, 64, 64) and p.framework == "numpy" and p.device == "cpu"
    assert p.gflops > 0 and p.best_gflops >= p.gflops
    assert p.gflops == pytest.approx(bench.matmul_flops(32, 64, 64) / p.timing.median / 1e9)
    assert bench.Peak(**p.figures()).gflops == p.gflops
    assert "GFLOP/s" in str(p)


@pytest.mark.parametrize("kwargs", [{"dtype": "bfloat16"}, {"dtype": "tf32"}, {"dtype": "int8"},
                                    {"framework": "numpy", "device": "gpu"},
                                    {"framework": "mxnet"}, {"device": "tpu"}])
def test_matmul_peak_refuses_what_it_cannot_measure(kwargs):
    with pytest.raises(ValueError):
        bench.matmul_peak(16, **kwargs)


def test_gpu_peaks_are_empty_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert bench.gpu_matmul_peaks() == []


# ------------------------------------------------------------------------------ records


def _timing():
    return bench.Timing(times=(0.010, 0.012, 0.011, 0.020, 0.009), number=3, first_call=1.5,
                        warmup=2)


def test_record_bench_writes_every_figure_with_device_and_versions(tmp_path):
    peak = bench.Peak(gflops=100.0, best_gflops=120.0, shape=(256, 1024, 1024),
                      dtype="float32", framework="numpy", device="cpu")
    flops = 1.1e9  # 0.011 s median -> 100 GFLOP/s -> fraction 1.0
    rows = bench.record_bench("09", _timing(), framework="jax", mode="jit", model="mlp_x",
                              flops=flops, peak=peak, results_dir=tmp_path, batch=256,
                              key=True)
    assert [r["metric"] for r in rows] == ["step_time", "first_call_time", "achieved_gflops",
                                           "fraction_of_peak"]
    stored = [json.loads(line) for line in (tmp_path / "09.jsonl").read_text().splitlines()]
    assert stored == rows
    by_metric = {r["metric"]: r for r in stored}
    step = by_metric["step_time"]
    assert step["unit"] == "s" and step["value"] == pytest.approx(0.011)
    assert step["iqr"] == pytest.approx(0.012 - 0.010) and step["repeats"] == 5
    assert step["min"] == pytest.approx(0.009) and step["max"] == pytest.approx(0.020)
    assert by_metric["first_call_time"]["value"] == pytest.approx(1.5)
    assert by_metric["achieved_gflops"]["unit"] == "GFLOP/s"
    assert by_metric["achieved_gflops"]["value"] == pytest.approx(100.0)
    fraction = by_metric["fraction_of_peak"]
    assert fraction["value"] == pytest.approx(1.0) and fraction["unit"] == "fraction"
    assert fraction["best_fraction"] == pytest.approx(1.1e9 / 0.009 / 1e9 / 120.0)
    assert fraction["key"] is True and step["key"] is False
    for r in stored:
        assert r["framework"] == "jax" and r["mode"] == "jit" and r["model"] == "mlp_x"
        assert r["device"] and r["versions"]["jax"] is not None
        assert r["ran_on"] == "cpu" and "load_1min" in r and r["batch"] == 256
        assert r["flops"] == pytest.approx(flops)


def test_record_bench_for_a_peak_and_its_errors(tmp_path):
    peak = bench.matmul_peak(32, repeats=2, min_time=0.001)
    (row,) = bench.record_bench("09", peak, results_dir=tmp_path)
    assert row["metric"] == "matmul_peak" and row["unit"] == "GFLOP/s"
    assert row["framework"] == "numpy" and row["shape"] == [256, 32, 32]
    assert row["value"] == pytest.approx(peak.gflops)
    with pytest.raises(ValueError, match="framework"):
        bench.record_bench("09", _timing(), results_dir=tmp_path)
    with pytest.raises(ValueError, match="flops"):
        bench.record_bench("09", _timing(), framework="jax", peak=peak, results_dir=tmp_path)
    with pytest.raises(ValueError, match="Timing or a Peak"):
        bench.record_bench("09", 0.5, framework="jax", results_dir=tmp_path)


# ------------------------------------------------------------------------------ the command


def test_bench_is_a_subcommand_and_documents_itself():
    args = build_parser().parse_args(["bench", "--sizes", "tiny", "--frameworks", "jax,torch",
                                      "--repeats", "3"])
    assert args.func is bench_cli.run and args.frameworks == ["jax", "torch"]
    assert args.repeats == 3 and args.batch == 256
    with pytest.raises(SystemExit):  # one pair gives no spread
        build_parser().parse_args(["bench", "--repeats", "1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--frameworks", "mxnet"])
    proc = subprocess.run([sys.executable, "-m", "course_tools", "bench", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--sizes", "--frameworks", "--repeats", "--batch", "--out", "--timeout",
                   "--notebook", "own fresh Python process", "ratio_to_reference",
                   "NumPy/BLAS float32 matmul rate", "machine too busy to measure"):
        assert option in proc.stdout


def test_keras_gets_one_process_per_backend():
    assert bench_cli.jobs(["torch", "keras", "jax"], ["jax", "torch"]) == [
        ("torch", None), ("keras", "jax"), ("keras", "torch"), ("jax", None)]


def test_bad_size_exits_with_status_2(tmp_path, capsys):
    args = build_parser().parse_args(["bench", "--sizes", "huge", "--out", str(tmp_path)])
    assert bench_cli.run(args) == 2
    assert "unknown size" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_real_run_writes_records(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "course_tools", "bench", "--sizes", "tiny", "--frameworks",
         "jax,torch", "--modes", "jit,eager", "--repeats", "3", "--min-time", "0.01",
         "--out", str(out)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "MARK_FILE": str(tmp_path / "unused")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frame = results.read_results(out)
    steps = frame[frame["metric"] == "step_time"]
    assert sorted(zip(steps["framework"], steps["mode"])) == [("jax", "jit"), ("torch", "eager")]
    assert (steps["model"] == "mlp_tiny").all() and (steps["source"] == "cli").all()
    assert (steps["value"] > 0).all() and (steps["repeats"] == 3).all()
    metrics = set(frame["metric"])
    assert {"first_call_time", "achieved_gflops", "reference_rate", "matmul_peak",
            "import_time", "memory_after_import"} <= metrics
    assert "fraction_of_peak" not in metrics  # the reference is named for what it is
    reference = frame[frame["metric"] == "reference_rate"]
    assert set(reference["reference"]) == {"NumPy/BLAS float32 matmul rate"}
    assert set(reference["status"]) <= {"measured", "too busy"}
    ratios = frame[frame["metric"] == "ratio_to_reference"]  # absent where too busy
    assert len(ratios) == (reference["status"] == "measured").sum()
    if len(ratios):  # a busy machine (the usual case on a shared runner) records none
        assert (ratios["ratio_ci_low"] <= ratios["value"]).all()
        assert (ratios["value"] <= ratios["ratio_ci_high"]).all()
    summary = json.loads((out / "bench-summary.json").read_text())
    assert len(summary["steps"]) == 2 and set(summary["step_code_sha256"]) == set(
        bench_cli.STEP_FILES.values())
    assert set(frame.loc[frame["metric"] == "import_time", "framework"]) == {"jax", "torch"}
    assert "mlp_tiny" in proc.stdout


@pytest.mark.slow
def test_a_framework_that_runs_too_long_is_stopped(tmp_path):
    args = build_parser().parse_args(["bench", "--sizes", "tiny", "--frameworks", "jax",
                                      "--modes", "nojit", "--timeout", "1", "--out",
                                      str(tmp_path)])
    assert bench_cli.run(args) == 1


@pytest.mark.slow
def test_the_bench_runs_the_lessons_code(tmp_path):
    """Change the lesson's torch cell: the bench runs the changed code (it leaves a mark)."""
    notebook = _lesson_copy(tmp_path, "torch_step.py", "from course_lib import bench, convert\n",
                            "from course_lib import bench, convert\nimport os\n"
                            "open(os.environ['MARK_FILE'], 'w').write('lesson code ran')\n")
    mark = tmp_path / "mark"
    proc = subprocess.run(
        [sys.executable, "-m", "course_tools", "bench", "--sizes", "tiny", "--frameworks",
         "torch", "--modes", "eager", "--repeats", "2", "--min-time", "0.001", "--notebook",
         str(notebook), "--out", str(tmp_path / "bench")], capture_output=True, text=True,
        timeout=600, env={**os.environ, "MARK_FILE": str(mark)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mark.read_text() == "lesson code ran"


# ------------------------------------------------------------------------------ lesson 09's code

LESSON = bench_cli.default_notebook()


def _lesson_copy(tmp_path, module, old, new):
    """A copy of lesson 09 whose `module` cell has `old` replaced by `new`."""
    nb = json.loads(LESSON.read_text(encoding="utf-8"))
    changed = 0
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and source.startswith(f"%%writefile {{SCRATCH}}/{module}"):
            assert old in source
            cell["source"] = source.replace(old, new)
            changed += 1
    assert changed == 1
    path = tmp_path / "09_performance.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def test_the_lesson_writes_every_step_module_the_bench_runs():
    code = bench_cli.lesson_step_code(LESSON)
    assert set(code) == set(bench_cli.STEP_FILES.values())
    for source in code.values():
        assert "def make_step(widths, mode, weights, x, y, lr)" in source
        assert "MODES = (" in source and "SYNC = bench.sync_" in source
        assert not source.startswith("%%")  # the magic line is not part of the module


def test_a_change_in_the_lesson_is_what_the_bench_loads(tmp_path):
    notebook = _lesson_copy(tmp_path, "sklearn_step.py", 'MODES = ("partial_fit",)',
                            'MODES = ("partial_fit",)\nCHANGED_IN_THE_LESSON = 42')
    digests = bench_cli.write_step_modules(notebook, tmp_path / "steps")
    original = bench_cli.lesson_step_code(LESSON)["sklearn_step.py"]
    assert digests["sklearn_step.py"] != __import__("hashlib").sha256(original.encode()).hexdigest()
    module = bench.load_module(tmp_path / "steps" / "sklearn_step.py")
    assert module.CHANGED_IN_THE_LESSON == 42 and module.MODES == ("partial_fit",)


def test_a_lesson_without_a_step_cell_is_refused(tmp_path, capsys):
    nb = json.loads(LESSON.read_text(encoding="utf-8"))
    nb["cells"] = [c for c in nb["cells"]
                   if "jax_step.py" not in "".join(c["source"]).split("\n", 1)[0]]
    path = tmp_path / "lesson.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(bench_cli.LessonCodeError, match="jax_step.py"):
        bench_cli.lesson_step_code(path)
    args = build_parser().parse_args(["bench", "--sizes", "tiny", "--notebook", str(path),
                                      "--out", str(tmp_path / "out")])
    assert bench_cli.run(args) == 2
    assert "no %%writefile cell for jax_step.py" in capsys.readouterr().err
    with pytest.raises(bench_cli.LessonCodeError, match="cannot read"):
        bench_cli.lesson_step_code(tmp_path / "missing.ipynb")


def test_load_module_reads_the_file_again(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("VALUE = 1\n")
    assert bench.load_module(path).VALUE == 1
    path.write_text("VALUE = 2\n")
    assert bench.load_module(path).VALUE == 2
    with pytest.raises(FileNotFoundError, match="%%writefile"):
        bench.load_module(tmp_path / "absent.py")


# ------------------------------------------------------------------------------ interleaving


class FakeReference:
    """A reference whose calls advance the fake clocks by given durations."""

    def __init__(self, clock, cpu, durations, cpu_per_call=None, flops=1e9):
        self.clock, self.cpu, self.durations = clock, cpu, list(durations)
        self.cpu_per_call = cpu_per_call
        self.calls = 0

    def as_reference(self, log):
        def fn():
            seconds = self.durations[min(self.calls, len(self.durations) - 1)]
            self.calls += 1
            self.clock.now += seconds
            self.cpu.now += seconds * 2 if self.cpu_per_call is None else self.cpu_per_call
            log.append("reference")

        return bench.Reference(fn=fn, sync=bench.sync_none, flops=int(1e9), shape=(1, 1, 1),
                               dtype="float32", framework="numpy", device="cpu")


def _interleave(reference_durations, step_seconds=0.5, pairs=6, cpu_per_call=None):
    clock, cpu = FakeClock(), FakeClock()
    log = []
    ref = FakeReference(clock, cpu, reference_durations, cpu_per_call).as_reference(log)

    def step():
        clock.now += step_seconds
        log.append("step")

    def sleep(seconds):  # the settle wait passes wall time that no sample may count
        clock.now += seconds
        log.append("settle")

    result = bench.interleaved(step, ref, sync=bench.sync_none, flops=2e9, pairs=pairs,
                               warmup=1, min_time=0, threads=2, clock=clock, cpu_clock=cpu,
                               sleep=sleep)
    return result, [entry for entry in log if entry != "settle"]


def test_every_step_sample_waits_untimed_for_the_blas_threads_to_settle():
    clock, cpu, log = FakeClock(), FakeClock(), []
    ref = FakeReference(clock, cpu, [0.1] * 6, None).as_reference(log)

    def step():
        clock.now += 0.5
        log.append("step")

    result = bench.interleaved(step, ref, sync=bench.sync_none, flops=2e9, pairs=2, warmup=1,
                               min_time=0, threads=2, clock=clock, cpu_clock=cpu, settle=3.0,
                               sleep=lambda s: (log.append(("settle", s)),
                                                setattr(clock, "now", clock.now + s)))
    timed = log[4:]  # after the first calls and warm-ups
    assert timed == ["reference", ("settle", 3.0), "step", ("settle", 3.0), "step", "reference"]
    assert result.ratios == pytest.approx([0.4, 0.4])  # the 3 s waits count in no sample
    with pytest.raises(ValueError, match="settle"):
        bench.interleaved(step, ref, sync=bench.sync_none, flops=2e9, settle=-1)


def test_reference_and_step_samples_alternate_in_one_loop():
    steady = [0.1] * 2 + [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]  # first call + warm-up, then 6 samples
    result, log = _interleave(steady, pairs=6)
    # warm-up: reference first call + 1 warm-up, step first call + 1 warm-up, then pairs
    assert log[:4] == ["reference", "reference", "step", "step"]
    timed = log[4:]
    assert timed == list(result.order) and len(timed) == 12
    assert result.order == ("reference", "step", "step", "reference") * 3  # order swaps
    assert result.step.repeats == result.reference.repeats == 6
    # 2 GFLOP in 0.5 s = 4 GFLOP/s against 1 GFLOP in 0.1 s = 10 GFLOP/s: 0.4 per pair
    assert result.ratios == pytest.approx([0.4] * 6)
    assert result.ratio == pytest.approx(0.4) and not result.too_busy
    assert result.ratio_interval() == pytest.approx((0.4, 0.4))
    assert "0.40 x the NumPy/BLAS float32 matmul rate" in str(result)
    assert result.median_cpu_share == pytest.approx(1.0)


def test_a_load_that_slows_both_samples_of_a_pair_leaves_the_ratio():
    clock, cpu = FakeClock(), FakeClock()
    slow = {"factor": 1.0}
    log = []

    def ref_fn():
        clock.now += 0.1 * slow["factor"]
        cpu.now += 0.2 * slow["factor"]
        log.append("reference")

    def step():
        clock.now += 0.5 * slow["factor"]
        log.append("step")
        slow["factor"] = 1.0 + 0.05 * (len(log) % 3)  # the load changes between pairs

    ref = bench.Reference(fn=ref_fn, sync=bench.sync_none, flops=int(1e9), shape=(1, 1, 1),
                          dtype="float32", framework="numpy", device="cpu")
    result = bench.interleaved(step, ref, sync=bench.sync_none, flops=2e9, pairs=8, warmup=0,
                               min_time=0, threads=2, clock=clock, cpu_clock=cpu, settle=0)
    assert max(result.step.times) > min(result.step.times)  # the step time itself moved
    assert not result.too_busy
    assert result.ratio == pytest.approx(0.4, rel=0.06)


def test_a_reference_spread_too_wide_is_refused_as_too_busy():
    wild = [0.1, 0.1] + [0.1, 0.3, 0.1, 0.25, 0.1, 0.4]
    result, _ = _interleave(wild, pairs=6)
    assert result.reference_spread > bench.BUSY_THRESHOLD
    assert result.too_busy and "IQR/median" in result.busy_reason
    assert str(result).startswith("machine too busy to measure")
    assert result.summary()["status"] == "too busy"


def test_a_reference_that_got_too_little_cpu_is_refused_even_when_steady():
    # steady times, but the two BLAS threads ran only 1.2 of 2 cores: others held the cores
    result, _ = _interleave([0.1] * 8, pairs=6, cpu_per_call=0.12)
    assert result.reference_spread == pytest.approx(0.0)
    assert result.median_cpu_share == pytest.approx(0.6)
    assert result.too_busy and "other programs held the cores" in result.busy_reason


def test_interleaved_checks_its_arguments_and_the_sync():
    ref = bench.matmul_reference(16, m=4)
    with pytest.raises(ValueError, match="pairs"):
        bench.interleaved(lambda: None, ref, sync=bench.sync_none, flops=1.0, pairs=1)
    with pytest.raises(ValueError, match="flops"):
        bench.interleaved(lambda: None, ref, sync=bench.sync_none, flops=0)
    with pytest.raises(ValueError, match="steps_per_call"):
        bench.interleaved(lambda: None, ref, sync=bench.sync_none, flops=1.0, steps_per_call=0)
    with pytest.raises(bench.SyncError, match="needs sync="):
        bench.interleaved(lambda: None, ref, sync=None, flops=1.0)


def test_steps_per_call_reports_time_per_step():
    clock, cpu = FakeClock(), FakeClock()

    def ref_fn():
        clock.now += 0.1

    def fit_ten_steps():
        clock.now += 1.0

    ref = bench.Reference(fn=ref_fn, sync=bench.sync_none, flops=int(1e9), shape=(1, 1, 1),
                          dtype="float32", framework="numpy", device="cpu")
    result = bench.interleaved(fit_ten_steps, ref, sync=bench.sync_none, flops=1e9,
                               steps_per_call=10, pairs=3, warmup=0, min_time=0, threads=None,
                               clock=clock, cpu_clock=cpu)
    assert result.step.times == pytest.approx((0.1, 0.1, 0.1))
    assert result.ratio == pytest.approx(1.0)


def test_interleaved_round_trips_through_json_and_records(tmp_path):
    result, _ = _interleave([0.1] * 8, pairs=4)
    again = bench.Interleaved.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    rows = bench.record_interleaved("09", result, framework="jax", mode="jit",
                                    model="mlp_x", results_dir=tmp_path, batch=256)
    metrics = [r["metric"] for r in rows]
    assert metrics == ["step_time", "first_call_time", "achieved_gflops", "reference_rate",
                       "ratio_to_reference"]
    ratio = rows[-1]
    assert ratio["value"] == pytest.approx(0.4) and ratio["unit"] == "ratio"
    assert ratio["reference"] == "NumPy/BLAS float32 matmul rate"
    assert ratio["ratio_ci_low"] <= ratio["value"] <= ratio["ratio_ci_high"]
    busy, _ = _interleave([0.1, 0.1] + [0.1, 0.3, 0.1, 0.25], pairs=4)
    rows = bench.record_interleaved("09", busy, framework="jax", mode="jit", model="mlp_x",
                                    results_dir=tmp_path)
    assert [r["metric"] for r in rows][-1] == "reference_rate"  # no ratio when too busy
    assert rows[-1]["status"] == "too busy" and rows[-1]["busy_reason"]


def test_bootstrap_intervals():
    assert bench.bootstrap_median_interval([2.0]) == (2.0, 2.0)
    low, high = bench.bootstrap_median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low <= 3.0 <= high <= 5.0
    low, high = bench.bootstrap_ratio_interval([2.0, 2.1, 1.9], [1.0, 1.05, 0.95])
    assert low <= 2.0 <= high and low > 1.5
    for bad in ([], [float("nan")]):
        with pytest.raises(ValueError):
            bench.bootstrap_median_interval(bad)


# ------------------------------------------------------------------------------ theoretical peak

CPUINFO = """processor\t: 0
physical id\t: 0
core id\t: 0
cpu MHz\t\t: 2300.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f
processor\t: 1
physical id\t: 0
core id\t: 1
cpu MHz\t\t: 2300.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f
"""


def test_theoretical_peak_from_cpuinfo():
    peak = bench.theoretical_peak(CPUINFO, lscpu="", usable_cpus=2)
    assert peak.cores == 2 and peak.ghz == pytest.approx(2.3)
    assert peak.flops_per_cycle == 64 and peak.vector == "avx512f"
    assert peak.gflops == pytest.approx(2 * 2.3 * 64)
    assert "2 FMA units" in str(peak)
    avx2 = CPUINFO.replace(" avx512f", "")
    assert bench.theoretical_peak(avx2, lscpu="", usable_cpus=2).flops_per_cycle == 32
    # lscpu's maximum clock wins over cpuinfo's current one; affinity caps the cores
    peak = bench.theoretical_peak(CPUINFO, lscpu="CPU max MHz:  3000.0000\n", usable_cpus=1)
    assert peak.ghz == pytest.approx(3.0) and peak.cores == 1
    assert peak.gflops == pytest.approx(3.0 * 64)


def test_theoretical_peak_is_none_when_it_cannot_be_derived():
    assert bench.theoretical_peak("processor\t: 0\nflags\t: fpu avx2 fma\n", lscpu="") is None
    assert bench.theoretical_peak("processor\t: 0\ncpu MHz\t: 2000\n", lscpu="") is None


def test_modes_come_from_the_lesson_and_filter_the_workers(tmp_path, capsys):
    notebook = _lesson_copy(tmp_path, "jax_step.py", 'MODES = ("jit", "nojit")',
                            'MODES = ("jit", "nojit", "patched")')
    code = bench_cli.lesson_step_code(notebook)
    assert bench_cli.lesson_modes(code["jax_step.py"]) == ("jit", "nojit", "patched")
    assert bench_cli.lesson_modes("X = 1\n") == ()
    # a framework none of whose lesson modes is asked for is skipped before any process starts
    args = build_parser().parse_args(["bench", "--sizes", "tiny", "--frameworks", "sklearn",
                                      "--modes", "patched", "--notebook", str(notebook),
                                      "--out", str(tmp_path / "out")])
    assert bench_cli.run(args) == 0
    assert "sklearn: skipped" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "bench-summary.json").read_text())
    assert summary["steps"] == [] and summary["step_code_sha256"]["jax_step.py"]
