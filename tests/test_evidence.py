"""course_lib.evidence (records -> evidence -> scores) and lesson 12 run on the fixture.

The fixture `tests/fixtures/results/` holds real records of a smoke-profile run of lessons
00-09 (its README says where they came from). The lesson tests run lesson 12 with papermill on
that fixture, or on copies of it with lessons removed, and read what it printed and recorded.
"""

import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from course_lib import evidence, results

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "results"
LESSON_12 = ROOT / "notebooks" / "12_decision_matrix.ipynb"


def _write(folder, lesson, metric, value, framework, device, **extra):
    return results.record(lesson, metric, value, "s", framework=framework, device=device,
                          results_dir=folder, **extra)


# --- records and sources -------------------------------------------------------------------

def test_records_are_labelled_with_source_and_hardware(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _write(run, "09", "step_time", 0.5, "torch", "CPU: laptop (2 cores); GPU: none")
    _write(ref / "h100-80gb", "09", "step_time", 0.01, "torch", "CPU: x; GPU: NVIDIA H100")
    frame = evidence.load_records(run, ref)
    assert set(frame["source"]) == {"this run", "reference: h100-80gb"}
    assert (frame["is_reference"] == frame["source"].str.startswith("reference: ")).all()
    hw = frame.set_index("source")["hardware"]
    assert hw["reference: h100-80gb"] == "CPU: x; GPU: NVIDIA H100"
    assert hw["this run"] == "CPU: laptop (2 cores); GPU: none"


def test_a_record_without_device_is_labelled_unknown(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "01.jsonl").write_text(json.dumps(
        {"lesson": "01", "framework": "torch", "metric": "fit_time", "value": 1.0,
         "unit": "s"}) + "\n")
    frame = evidence.load_records(tmp_path / "run", tmp_path / "none")
    assert frame["hardware"].tolist() == [evidence.UNKNOWN_HARDWARE]


def test_select_prefers_this_run_and_never_mixes_machines(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "reference"
    _write(run, "09", "step_time", 0.5, "torch", "laptop")
    _write(ref / "gpu", "09", "step_time", 0.01, "torch", "gpu box")
    _write(ref / "gpu", "09", "step_time", 0.02, "jax", "gpu box")
    _write(ref / "gpu", "09", "import_time", 1.0, "jax", "gpu box")
    frame = evidence.load_records(run, ref)
    rows, source = evidence.select(frame, "09", "step_time")
    assert source == "this run" and rows["framework"].tolist() == ["torch"]  # jax not borrowed
    rows, source = evidence.select(frame, "09", "import_time")
    assert source == "reference: gpu" and set(rows["hardware"]) == {"gpu box"}
    rows, source = evidence.select(frame, "10", "export_ok")
    assert source is None and rows.empty


def test_select_filters(tmp_path):
    run = tmp_path / "run"
    _write(run, "09", "step_time", 0.5, "torch", "cpu", model="mlp_large")
    _write(run, "09", "step_time", 0.1, "torch", "cpu", model="mlp_tiny")
    _write(run, "09", "step_time", 0.2, "torch", "cpu", model="mlp_large", experiment="threads")
    frame = evidence.load_records(run, tmp_path / "none")
    rows, _ = evidence.select(frame, "09", "step_time", model="mlp_large",
                              experiment=lambda v: not isinstance(v, str))
    assert rows["value"].tolist() == [0.5]
    rows, source = evidence.select(frame, "09", "step_time", no_such_column=1)
    assert rows.empty and source is None
    rows, _ = evidence.select(frame, "09", "step_time", no_such_column=lambda v: v is None)
    assert len(rows) == 3  # a column no record has is empty everywhere


def test_newest_run_kept_subprocess_records_too(tmp_path):
    run = tmp_path / "run"
    base = {"lesson": "09", "framework": "torch", "metric": "step_time", "unit": "s",
            "device": "cpu"}
    lines = [dict(base, value=9.0, run_id="old", timestamp="2026-11-01T10:00:00+00:00"),
             dict(base, value=1.0, run_id="kernel", timestamp="2026-11-02T10:00:00+00:00"),
             dict(base, value=2.0, run_id="worker", timestamp="2026-11-02T10:03:00+00:00")]
    run.mkdir()
    (run / "09.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    frame = evidence.load_records(run, tmp_path / "none")
    assert sorted(frame["value"]) == [1.0, 2.0]
    assert len(evidence.load_records(run, tmp_path / "none", newest_only=False)) == 3


# --- evidence rows -------------------------------------------------------------------------

def test_missing_is_nan_with_a_reason_never_zero():
    row = evidence.missing("torch", "export_routes", "lesson 10 was not run")
    assert math.isnan(row["value"]) and row["status"] == "missing"
    assert row["reason"] == "lesson 10 was not run"
    with pytest.raises(ValueError, match="reason"):
        evidence.missing("torch", "export_routes", " ")
    assert evidence.cell_text(row["value"], "", row["status"], row["reason"]) == \
        "missing: lesson 10 was not run"


def test_measured_needs_hardware_and_a_finite_value():
    row = evidence.measured("jax", "step_time", 0.0123, "s", lesson="09", metric="step_time",
                            hardware="CPU: x", source="this run")
    assert row["status"] == "measured" and evidence.cell_text(row["value"], "s") == "0.0123 s"
    with pytest.raises(ValueError, match="hardware"):
        evidence.measured("jax", "step_time", 1.0, "s", lesson="09", metric="m", hardware="",
                          source="this run")
    with pytest.raises(ValueError, match="missing"):
        evidence.measured("jax", "step_time", float("nan"), "s", lesson="09", metric="m",
                          hardware="h", source="s")


def test_evidence_table_refuses_duplicates():
    row = evidence.missing("jax", "memory", "not measured")
    with pytest.raises(ValueError, match="duplicate"):
        evidence.evidence_table([row, row])


def test_best_per_framework_and_from_rows(tmp_path):
    run = tmp_path / "run"
    _write(run, "09", "step_time", 0.5, "torch", "cpu", mode="eager")
    _write(run, "09", "step_time", 0.2, "torch", "cpu", mode="compile")
    _write(run, "09", "step_time", 0.3, "jax", "cpu", mode="jit")
    rows, source = evidence.select(evidence.load_records(run, tmp_path / "none"), "09",
                                   "step_time")
    best = evidence.best_per_framework(rows, "lower")
    assert dict(zip(best["framework"], best["value"], strict=True)) == {"jax": 0.3, "torch": 0.2}
    assert best.set_index("framework").loc["torch", "detail"] == "mode=compile"
    out = evidence.evidence_table(evidence.from_rows(
        best, "step_time", ["torch", "jax", "keras"], lesson="09", metric="step_time",
        source=source, absent="{framework} was not timed"))
    keras = out.set_index("framework").loc["keras"]
    assert keras["status"] == "missing" and keras["reason"] == "keras was not timed"
    assert math.isnan(keras["value"])
    with pytest.raises(ValueError):
        evidence.best_per_framework(rows, "faster")


# --- scores and the matrix -----------------------------------------------------------------

def test_normalise_methods_keep_missing_missing():
    times = pd.Series({"a": 1.0, "b": 2.0, "c": np.nan})
    ratio = evidence.normalise(times, "lower", "ratio")
    assert ratio["a"] == 1.0 and ratio["b"] == 0.5 and np.isnan(ratio["c"])
    acc = pd.Series({"a": 0.9, "b": 0.6})
    assert evidence.normalise(acc, "higher", "minmax").tolist() == [1.0, 0.0]
    assert evidence.normalise(acc, "higher", "rank").tolist() == [1.0, 0.0]
    assert evidence.normalise(pd.Series({"a": 3.0, "b": 3.0}), "lower", "minmax").tolist() == \
        [1.0, 1.0]
    with pytest.raises(ValueError, match="> 0"):
        evidence.normalise(pd.Series({"a": 0.0, "b": 1.0}), "lower", "ratio")
    with pytest.raises(ValueError, match="method"):
        evidence.normalise(acc, "higher", "zscore")


def _scores():
    return pd.DataFrame({"speed": [1.0, 0.5, np.nan], "ease": [0.2, 1.0, 0.9]},
                        index=pd.Index(["jax", "keras", "sklearn"], name="framework"))


def test_the_ranking_changes_when_the_weights_change():
    speed = evidence.weighted_scores(_scores(), {"speed": 3, "ease": 1})
    ease = evidence.weighted_scores(_scores(), {"speed": 1, "ease": 3})
    assert speed.index[0] == "jax"
    assert speed.loc["jax", "rank"] < speed.loc["keras", "rank"]
    assert ease.loc["keras", "rank"] < ease.loc["jax", "rank"]
    assert speed.loc["jax", "score"] == pytest.approx((3 * 1.0 + 1 * 0.2) / 4)


def test_a_missing_criterion_is_left_out_not_scored_zero():
    ranked = evidence.weighted_scores(_scores(), {"speed": 1, "ease": 1}, min_coverage=0.5)
    sk = ranked.loc["sklearn"]
    assert sk["score"] == pytest.approx(0.9)  # the mean of what was measured, not (0 + 0.9) / 2
    assert sk["coverage"] == pytest.approx(0.5) and sk["rank"] == 1
    strict = evidence.weighted_scores(_scores(), {"speed": 1, "ease": 1}, min_coverage=0.75)
    assert np.isnan(strict.loc["sklearn", "rank"]) and "not ranked" in strict.loc["sklearn", "note"]
    assert strict.index[-1] == "sklearn"


def test_weights_are_checked():
    with pytest.raises(KeyError, match="valid"):
        evidence.weighted_scores(_scores(), {"sped": 1})
    with pytest.raises(ValueError, match=">= 0"):
        evidence.weighted_scores(_scores(), {"speed": -1})
    with pytest.raises(ValueError, match="all weights are 0"):
        evidence.weighted_scores(_scores(), {"speed": 0})


def test_score_table_and_sources_used():
    ev = evidence.evidence_table([
        evidence.measured("jax", "step_time", 1.0, "s", lesson="09", metric="step_time",
                          hardware="gpu box", source="reference: gpu"),
        evidence.measured("torch", "step_time", 4.0, "s", lesson="09", metric="step_time",
                          hardware="gpu box", source="reference: gpu"),
        evidence.missing("keras", "step_time", "not timed"),
    ])
    scores = evidence.score_table(ev, {"step_time": "lower"})
    assert scores.loc["torch", "step_time"] == 0.25 and np.isnan(scores.loc["keras", "step_time"])
    used = evidence.sources_used(ev)
    assert used.to_dict("records") == [{"criterion": "step_time", "source": "reference: gpu",
                                        "hardware": "gpu box", "frameworks": "jax, torch"}]
    with pytest.raises(KeyError):
        evidence.score_table(ev, {})


# --- lines of code -------------------------------------------------------------------------

def test_count_model_lines_follows_helpers_and_skips_comments(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%matplotlib inline"),  # does not parse: skipped
        nbformat.v4.new_code_cell(
            "def layers():\n    # a comment\n    return [1, 2]\n\n\n"
            "def keras_model():\n    return keras.Sequential(layers())\n"),
        nbformat.v4.new_code_cell(
            "class Net(nn.Module):\n    def forward(self, x):\n\n        return x\n"),
        nbformat.v4.new_code_cell("class Other(nn.Module):\n    pass\n"),
    ]
    path = tmp_path / "06_x.ipynb"
    nbformat.write(nb, path)
    out = evidence.count_model_lines(path, {"keras": "keras.Sequential(", "torch": "(nn.Module)",
                                            "jax": "(nnx.Module)"}).set_index("framework")
    assert out.loc["keras", "lines"] == 4 and out.loc["keras", "definitions"] == \
        "keras_model, layers"
    assert out.loc["torch", "lines"] == 3 and out.loc["torch", "definitions"] == "Net"
    assert math.isnan(out.loc["jax", "lines"])
    with pytest.raises(FileNotFoundError):
        evidence.count_model_lines(tmp_path / "nope.ipynb", {})


def test_count_model_lines_on_lesson_06():
    out = evidence.count_model_lines(ROOT / "notebooks" / "06_cnns_four_ways.ipynb",
                                     {"torch": "(nn.Module)", "jax": "(nnx.Module)",
                                      "tensorflow": "(tf.Module)",
                                      "keras": ["keras.Sequential(", "keras.Model("]})
    assert out["lines"].notna().all() and out["lines"].between(3, 80).all(), out


# --- the fixture ---------------------------------------------------------------------------

def test_fixture_is_real_small_and_described():
    files = sorted(FIXTURE.glob("*.jsonl"))
    assert {f.stem for f in files} >= {f"{n:02d}" for n in range(10)}
    assert sum(f.stat().st_size for f in files) < 200_000
    assert (FIXTURE / "README.md").is_file()
    frame = evidence.load_records(FIXTURE, FIXTURE / "no-references")
    assert frame["hardware"].ne(evidence.UNKNOWN_HARDWARE).all()
    assert set(frame["profile"].dropna()) == {"smoke"}


# --- lesson 12 itself, run on the fixture ---------------------------------------------------

def _run_lesson(tmp_path, monkeypatch, name, **parameters):
    import papermill

    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / f"{name}-out"))
    parameters.setdefault("RESULTS_DIR", str(FIXTURE))
    parameters.setdefault("REFERENCE_DIR", str(tmp_path / "no-references"))
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(LESSON_12), str(out), parameters=parameters,
                               cwd=str(LESSON_12.parent), kernel_name="python3",
                               progress_bar=False, execution_timeout=300)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return text, results.read_results(tmp_path / f"{name}-out", lessons=["12"])


def _top(records, scenario):
    rows = records[(records["scenario"] == scenario) & (records["rank"] == 1)]
    return set(rows["framework"])


@pytest.mark.slow
def test_lesson_12_matrix_changes_with_the_weights(tmp_path, monkeypatch):
    if not LESSON_12.is_file():
        pytest.fail("notebooks/12_decision_matrix.ipynb is missing")
    from_nb = {}
    for name, tabular in (("accuracy", {"tabular_accuracy": 1}),
                          ("imports", {"import_time": 1})):
        weights = {"tabular data": tabular, "research": {"debugging": 1, "step_time": 1},
                   "production": {"parity": 1, "memory": 1}}
        text, recorded = _run_lesson(tmp_path, monkeypatch, name, WEIGHTS=weights)
        from_nb[name] = _top(recorded, "tabular data")
        assert set(recorded["scenario"]) == set(weights)
        # the hardware of the numbers is named, in the matrix and in every record it wrote
        device = evidence.load_records(FIXTURE, tmp_path / "none")["hardware"].iloc[0]
        assert f"this run = {device}" in text
        assert all(set(s) <= {"this run", "notebooks"} for s in recorded["sources"])
    assert from_nb["accuracy"] == {"sklearn"}, from_nb
    assert from_nb["accuracy"] != from_nb["imports"], from_nb


@pytest.mark.slow
def test_lesson_12_shows_a_missing_lesson_and_labels_references(tmp_path, monkeypatch):
    if not LESSON_12.is_file():
        pytest.fail("notebooks/12_decision_matrix.ipynb is missing")
    partial = tmp_path / "partial"
    shutil.copytree(FIXTURE, partial)
    (partial / "06.jsonl").unlink()  # lesson 06 not run
    (partial / "09.jsonl").unlink()  # lesson 09 not run here, but in a reference folder
    reference = tmp_path / "reference" / "fixture-machine"
    reference.mkdir(parents=True)
    shutil.copy(FIXTURE / "09.jsonl", reference / "09.jsonl")
    text, recorded = _run_lesson(tmp_path, monkeypatch, "partial", RESULTS_DIR=str(partial),
                                 REFERENCE_DIR=str(tmp_path / "reference"))
    assert "missing: lesson 06 recorded no test_accuracy in this run or the references" in text
    assert "no records: the lesson was not run" in text  # the inventory lists it
    assert "reference: fixture-machine" in text  # lesson 09's numbers, labelled
    assert any("reference: fixture-machine" in s for s in recorded["sources"])
    assert not recorded.empty and recorded["value"].between(0, 1).all()
    assert "lesson 10 has no export_ok records in this run or the references" in text


@pytest.mark.slow
def test_lesson_12_reads_deployment_and_distributed_records(tmp_path, monkeypatch):
    """Lessons 10 and 11 are not in the fixture (they had no records when it was made): here
    a few records with their fields (route, variant, mode, passed, pitfall) are written by
    this test, clearly made up, to run lesson 12's code for them."""
    if not LESSON_12.is_file():
        pytest.fail("notebooks/12_decision_matrix.ipynb is missing")
    folder = tmp_path / "with-10-11"
    shutil.copytree(FIXTURE, folder)
    dev = "made up by tests/test_evidence.py"

    def rec(lesson, metric, value, unit, **fields):
        results.record(lesson, metric, value, unit, device=dev, results_dir=folder, **fields)

    rec("10", "export_ok", 1, "bool", framework="torch", mode="onnxruntime", model="mlp",
        route="torch.onnx.export (dynamo)")
    rec("10", "export_ok", 1, "bool", framework="sklearn", mode="onnxruntime", model="logreg",
        route="skl2onnx")
    rec("10", "export_ok", 0, "bool", framework="jax", model="cnn", route="jax2onnx",
        error="Unsupported pooling size")
    for variant, size in (("float32", 0.2), ("dynamic int8", 0.06)):
        rec("10", "model_size", size, "MB", framework="tensorflow", mode="litert", model="mlp",
            variant=variant, route="TFLiteConverter.from_keras_model")
    rec("10", "accuracy_change", -0.002, "fraction", framework="tensorflow", mode="litert",
        model="mlp", variant="dynamic int8")
    rec("10", "article_ranking_holds", 0, "bool", framework="all", model="mlp", batch=1)
    rec("11", "loss_max_abs_diff", 2e-7, "abs", framework="torch", mode="ddp-gloo-2",
        tol=1e-4, passed=True)
    rec("11", "loss_max_abs_diff", 3e-7, "abs", framework="jax", mode="shard_map-4",
        tol=1e-4, passed=True)
    rec("11", "loss_max_abs_diff", 0.4, "abs", framework="jax", mode="pitfall-4", tol=1e-4,
        passed=False)
    rec("11", "distributed_vs_single_max_abs_diff", 0.4, "abs", framework="jax",
        mode="pitfall-4", pitfall=True)
    text, _ = _run_lesson(tmp_path, monkeypatch, "with-10-11", RESULTS_DIR=str(folder))
    assert "worked: ONNX (torch.onnx.export (dynamo))" in text
    assert "worked: none; failed: jax2onnx (cnn)" in text  # tried, failed, named, not counted
    assert "holds only for sklearn, torch: an ONNX route worked for sklearn, torch (of jax, " \
        "sklearn, torch)" in text
    assert "holds (mlp: int8 file x0.30 of float32, accuracy -0.2 points)" in text
    assert "holds in 0 of 1 cases (mlp batch 1: no)" in text
    assert "jax: shard_map" in text and "torch: ddp-gloo" in text
    assert "pitfall" not in text.split("Every major framework trains data-parallel")[-1][:300]


def test_count_model_lines_reads_writefile_cells(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%%writefile {SCRATCH}/w.py\nimport tensorflow as tf\n\n\n"
                                          "class TFNet(tf.Module):\n    def __call__(self, x):\n"
                                          "        return x\n"),
                nbformat.v4.new_code_cell("%timeit 1 + 1")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    out = evidence.count_model_lines(tmp_path / "n.ipynb", {"tensorflow": "(tf.Module)"})
    assert out.set_index("framework").loc["tensorflow", "lines"] == 3
