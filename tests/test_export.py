"""course_lib.export: artifact folder, sizes, ONNX Runtime runs, comparison, inspection."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from course_lib import export, results


def dense_relu_model(batch="batch", n_in=4, n_out=3, seed=0):
    """A tiny ONNX model: relu(x @ W + b), with a dynamic (named) or fixed batch size."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "dense_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n_out])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="test", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, w, b


def test_run_onnx_matches_numpy_for_path_bytes_and_proto(tmp_path):
    model, w, b = dense_relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).normal(size=(5, 4))  # float64: cast to the input's float32
    expected = np.maximum(x.astype(np.float32) @ w + b, 0)
    for source in (path, str(path), model.SerializeToString(), model):
        out = export.run_onnx(source, x)
        assert out.dtype == np.float32 and out.shape == (5, 3)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    outs = export.run_onnx(path, {"x": x.astype(np.float32)}, output=None)
    assert isinstance(outs, list) and len(outs) == 1


def test_dynamic_batch_runs_any_size_fixed_batch_refuses_others():
    dynamic, _, _ = dense_relu_model(batch="batch")
    fixed, _, _ = dense_relu_model(batch=2)
    for n in (1, 7):
        assert export.run_onnx(dynamic, np.ones((n, 4))).shape == (n, 3)
    assert export.run_onnx(fixed, np.ones((2, 4))).shape == (2, 3)
    with pytest.raises(Exception, match="(?i)invalid dimensions|Got"):
        export.run_onnx(fixed, np.ones((3, 4)))


def test_run_onnx_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        export.run_onnx(tmp_path / "missing.onnx", np.ones((1, 4)))


def test_compare_and_check_onnx():
    ref = np.array([[0.0, 1.0, 0.2], [2.0, 0.0, 0.0]])
    got = ref + np.array([[0.0, 1e-6, 0.0], [0.0, 0.0, 3.0]])  # second row changes its argmax
    c = export.compare(got, ref, labels=np.array([1, 0]))
    assert c["max_abs_diff"] == pytest.approx(3.0)
    assert c["argmax_agreement"] == 0.5 and c["accuracy"] == 0.5
    with pytest.raises(ValueError, match="Shapes differ"):
        export.compare(got[:1], ref)
    with pytest.raises(ValueError, match="labels"):
        export.compare(got, ref, labels=np.array([1, 0, 2]))
    with pytest.raises(ValueError, match="empty"):
        export.compare(np.zeros((0, 3)), np.zeros((0, 3)))
    assert np.isnan(export.compare([[np.nan, 0.0]], [[0.0, 0.0]])["max_abs_diff"])

    model, w, b = dense_relu_model()
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    reference = np.maximum(x.astype(np.float64) @ w + b, 0)
    checked = export.check_onnx(model, x, reference, tol=1e-5, labels=reference.argmax(1))
    assert checked["passed"] and checked["argmax_agreement"] == 1.0 and checked["accuracy"] == 1.0
    assert not export.check_onnx(model, x, reference + 1.0, tol=1e-5)["passed"]


def test_inspect_onnx(tmp_path):
    model, _, _ = dense_relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    info = export.inspect_onnx(path)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert info["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]
    assert info["opsets"] == {"": 17} and info["ir_version"] == 8
    assert info["op_counts"] == {"MatMul": 1, "Add": 1, "Relu": 1} and info["nodes"] == 3
    assert info["parameters"] == 4 * 3 + 3 and info["producer"] == "test 1"
    assert info["external_data"] is False
    assert export.inspect_onnx(dense_relu_model(batch=2)[0])["inputs"][0]["shape"] == [2, 4]
    with pytest.raises(FileNotFoundError):
        export.inspect_onnx(tmp_path / "nope.onnx")


def test_size_bytes_counts_external_data_and_folders(tmp_path):
    model, _, _ = dense_relu_model(n_in=64, n_out=64)
    inline = tmp_path / "inline.onnx"
    onnx.save(model, inline)
    split = tmp_path / "split.onnx"
    onnx.save(model, split, save_as_external_data=True, location="split.onnx.data",
              size_threshold=0)
    data_file = tmp_path / "split.onnx.data"
    assert data_file.is_file()
    assert export.inspect_onnx(split)["external_data"] is True
    graph_only = export.size_bytes(split, onnx_external_data=False)
    assert graph_only == split.stat().st_size < 1000  # the weights are elsewhere
    assert export.size_bytes(split) == graph_only + data_file.stat().st_size
    assert export.size_bytes(split) >= 64 * 64 * 4
    assert export.size_bytes(inline) == inline.stat().st_size
    np.testing.assert_allclose(export.run_onnx(split, np.ones((2, 64))),
                               export.run_onnx(inline, np.ones((2, 64))))
    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "a.pb").write_bytes(b"x" * 10)
    (folder / "variables" / "v").write_bytes(b"y" * 32)
    assert export.size_bytes(folder) == 42
    data_file.unlink()
    with pytest.raises(FileNotFoundError, match="split.onnx.data"):
        export.size_bytes(split)
    with pytest.raises(FileNotFoundError):
        export.size_bytes(tmp_path / "missing.tflite")


def test_artifact_dir_in_and_outside_the_course(tmp_path, monkeypatch):
    root = results.course_root(Path(__file__).parent)
    assert root is not None
    inside = export.artifact_dir("10", root=root / "notebooks")
    assert inside == root / "build" / "lesson10" and inside.is_dir()
    monkeypatch.chdir(tmp_path)
    outside = export.artifact_dir("10")
    assert outside.is_dir() and root not in outside.parents
    assert "lesson10" in outside.name
    with pytest.raises(ValueError):
        export.artifact_dir("../10")
    with pytest.raises(ValueError):
        export.artifact_dir("")


def test_describe_error():
    try:
        raise ValueError("\nfirst line\nsecond line")
    except ValueError as err:
        assert export.describe_error(err) == "ValueError: first line"
    assert export.describe_error(RuntimeError()) == "RuntimeError: (no message)"
    long = export.describe_error(RuntimeError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...")
