import json
import math

import pytest

from course_lib import results, runtime


def test_record_writes_one_json_line_with_device_and_versions(tmp_path):
    row = results.record("01", "test_accuracy", 0.97, "fraction", framework="torch",
                         results_dir=tmp_path, dataset="digits")
    lines = (tmp_path / "01.jsonl").read_text().splitlines()
    assert len(lines) == 1
    stored = json.loads(lines[0])
    assert stored == row
    assert stored["value"] == 0.97 and stored["unit"] == "fraction"
    assert stored["device"] == runtime.device_description()
    assert stored["versions"]["python"].startswith("3.")
    assert stored["versions"]["numpy"] is not None
    assert stored["dataset"] == "digits"
    assert stored["timestamp"].endswith("+00:00")


def test_record_appends_and_reader_returns_table(tmp_path):
    for i, fw in enumerate(["torch", "jax", "tensorflow"]):
        results.record("03", "fit_time", 1.5 + i, "s", framework=fw, mode="eager",
                       results_dir=tmp_path)
    results.record("04", "fit_time", 9.0, "s", framework="jax", results_dir=tmp_path)
    frame = results.read_results(tmp_path)
    assert list(frame.columns[: len(results.FIELDS)]) == list(results.FIELDS)
    assert len(frame) == 4
    assert sorted(frame["framework"]) == ["jax", "jax", "tensorflow", "torch"]
    only = results.read_results(tmp_path, lessons=["04"])
    assert list(only["value"]) == [9.0]


def test_default_dir_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "here"))
    results.record("00", "import_time", 1.0, "s", framework="jax")
    assert (tmp_path / "here" / "00.jsonl").is_file()


def test_default_dir_is_build_results_under_course_root(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    (tmp_path / "course_lib").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert results.results_dir() == tmp_path / "build" / "results"


@pytest.mark.parametrize("bad", [math.nan, math.inf, "fast", None, [1.0]])
def test_record_rejects_values_that_are_not_finite_numbers(tmp_path, bad):
    with pytest.raises(ValueError, match="value for metric"):
        results.record("01", "loss", bad, "nats", framework="jax", results_dir=tmp_path)
    assert not (tmp_path / "01.jsonl").exists()


@pytest.mark.parametrize("field", ["lesson", "metric", "unit", "framework"])
def test_record_rejects_empty_names(tmp_path, field):
    args = {"lesson": "01", "metric": "m", "unit": "s", "framework": "jax"}
    args[field] = " "
    with pytest.raises(ValueError, match=field):
        results.record(args["lesson"], args["metric"], 1.0, args["unit"],
                       framework=args["framework"], results_dir=tmp_path)


def test_record_rejects_unserialisable_or_clashing_extras(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        results.record("01", "m", 1.0, "s", framework="jax", results_dir=tmp_path, obj=object())
    with pytest.raises(ValueError, match="clash"):
        results.record("01", "m", 1.0, "s", framework="jax", results_dir=tmp_path, device2=1,
                       timestamp="x")
    assert not (tmp_path / "01.jsonl").exists() or (tmp_path / "01.jsonl").read_text() == ""


def test_bool_values_are_stored_as_numbers(tmp_path):
    row = results.record("10", "export_ok", True, "bool", framework="torch", results_dir=tmp_path)
    assert row["value"] == 1.0


def test_reader_skips_a_truncated_line_with_a_warning(tmp_path):
    results.record("01", "m", 1.0, "s", framework="jax", results_dir=tmp_path)
    with open(tmp_path / "01.jsonl", "a") as fh:
        fh.write('{"lesson": "01", "metr')
    with pytest.warns(UserWarning, match="not JSON"):
        frame = results.read_results(tmp_path)
    assert len(frame) == 1


def test_empty_store_gives_empty_table_with_columns(tmp_path):
    frame = results.read_results(tmp_path / "nothing")
    assert frame.empty and list(frame.columns) == list(results.FIELDS)
    assert results.summary(frame).empty


def test_latest_keeps_newest_record_per_measurement(tmp_path):
    import pandas as pd

    frame = pd.DataFrame([
        {"lesson": "01", "framework": "jax", "backend": None, "mode": None, "metric": "m",
         "value": 1.0, "timestamp": "2026-01-01T00:00:00+00:00"},
        {"lesson": "01", "framework": "jax", "backend": None, "mode": None, "metric": "m",
         "value": 2.0, "timestamp": "2026-01-02T00:00:00+00:00"},
        {"lesson": "01", "framework": "torch", "backend": None, "mode": None, "metric": "m",
         "value": 3.0, "timestamp": "2026-01-01T00:00:00+00:00"},
    ])
    newest = results.latest(frame)
    assert sorted(newest["value"]) == [2.0, 3.0]
