"""course_lib.bench (timing, synchronisation, FLOPs, peak, records) and the `bench` command.

No test asserts how fast anything runs: timings on a shared machine are noise. Time is either
faked (a clock the test advances) or only bounded from below (a sleep lasts at least as long
as asked).
"""

import json
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
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--frameworks", "mxnet"])
    proc = subprocess.run([sys.executable, "-m", "course_tools", "bench", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--sizes", "--frameworks", "--repeats", "--batch", "--out", "--timeout",
                   "own fresh Python process", "fraction_of_peak"):
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
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frame = results.read_results(out)
    steps = frame[frame["metric"] == "step_time"]
    assert sorted(zip(steps["framework"], steps["mode"])) == [("jax", "jit"), ("torch", "eager")]
    assert (steps["model"] == "mlp_tiny").all() and (steps["source"] == "cli").all()
    assert (steps["value"] > 0).all() and (steps["repeats"] == 3).all()
    metrics = set(frame["metric"])
    assert {"first_call_time", "achieved_gflops", "fraction_of_peak", "matmul_peak",
            "import_time", "memory_after_import"} <= metrics
    assert set(frame.loc[frame["metric"] == "import_time", "framework"]) == {"jax", "torch"}
    assert "mlp_tiny" in proc.stdout


@pytest.mark.slow
def test_a_framework_that_runs_too_long_is_stopped(tmp_path):
    args = build_parser().parse_args(["bench", "--sizes", "tiny", "--frameworks", "jax",
                                      "--modes", "nojit", "--timeout", "1", "--out",
                                      str(tmp_path)])
    assert bench_cli.run(args) == 1
