import os
import subprocess
import sys

import pytest

from course_lib import runtime


def test_versions_come_from_metadata_without_importing_frameworks():
    code = ("import sys, course_lib.runtime as r; v = r.framework_versions(); "
            "print(v['torch'] is not None, v['jax'] is not None, "
            "any(m in sys.modules for m in ('torch', 'tensorflow', 'jax', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]


def test_versions_list_every_course_framework():
    versions = runtime.framework_versions()
    for name in ("python", "numpy", "scikit-learn", "torch", "tensorflow", "keras", "jax",
                 "flax", "optax", "xgboost", "onnx", "onnxruntime"):
        assert name in versions
    assert versions["tensorflow"] is not None, "tensorflow-cpu must count as tensorflow"


@pytest.mark.parametrize("environ, expected", [
    ({}, "local"),
    ({"COLAB_RELEASE_TAG": "release-colab_20260801"}, "colab"),
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"BINDER_SERVICE_HOST": "10.1.2.3"}, "binder"),
    ({"HOME": "/root"}, "local"),
])
def test_hosted_environment(environ, expected):
    assert runtime.hosted_environment(environ) == expected


def test_device_description_names_cpu_and_gpu():
    text = runtime.device_description()
    assert text.startswith("CPU: ")
    assert f"({os.cpu_count()} cores)" in text
    assert "GPU: " in text


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_check_profile_accepts_and_activates(profile, monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE_ACTIVE", raising=False)
    assert runtime.check_profile(profile) == profile
    assert os.environ["COURSE_PROFILE_ACTIVE"] == profile


@pytest.mark.parametrize("bad", ["fast", "Smoke", "", None])
def test_check_profile_rejects_with_advice(bad):
    with pytest.raises(ValueError, match=r"PROFILE must be one of .*papermill"):
        runtime.check_profile(bad)


def test_seed_everything_repeats_numpy_and_python():
    import random

    import numpy as np

    runtime.seed_everything(3, frameworks=())
    a = (random.random(), np.random.rand())
    runtime.seed_everything(3, frameworks=())
    assert (random.random(), np.random.rand()) == a
    runtime.seed_everything(4, frameworks=())
    assert (random.random(), np.random.rand()) != a


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(bad, frameworks=())


@pytest.mark.slow
def test_seed_everything_seeds_torch_tensorflow_and_returns_jax_key():
    import jax
    import numpy as np
    import tensorflow as tf
    import torch

    key = runtime.seed_everything(11)
    t1, f1 = torch.rand(4), tf.random.uniform([4]).numpy()
    key2 = runtime.seed_everything(11)
    assert torch.equal(t1, torch.rand(4))
    assert np.array_equal(f1, tf.random.uniform([4]).numpy())
    assert np.array_equal(jax.random.uniform(key, (3,)), jax.random.uniform(key2, (3,)))


@pytest.mark.slow
def test_accelerators_lists_cpu_for_each_framework():
    rows = runtime.accelerators(("torch", "jax"))
    kinds = {(r["framework"], r["kind"]) for r in rows}
    assert ("torch", "CPU") in kinds and ("jax", "CPU") in kinds
    assert all(r["version"] for r in rows)


def test_accelerators_reports_a_missing_framework_instead_of_raising(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorflow":
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    rows = runtime.accelerators(("tensorflow",))
    assert rows == [{"framework": "tensorflow", "version": None, "device": None, "kind": None,
                     "note": "cannot import: ImportError: No module named 'tensorflow'"}]


def test_accelerators_rejects_unknown_framework():
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        runtime.accelerators(("mxnet",))


def test_importable_finds_without_importing_and_sees_the_no_tensorflow_simulation():
    from pathlib import Path

    code = ("import sys, course_lib.runtime as r; "
            "print(r.importable('torch'), r.importable('tensorflow'), r.importable('no_such_pkg_x'), "
            "'torch' in sys.modules, 'tensorflow' in sys.modules)")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert plain.stdout.split() == ["True", "True", "False", "False", "False"]
    hidden = Path(__file__).parent / "no_tensorflow"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env)
    assert without.stdout.split() == ["True", "False", "False", "False", "False"]


@pytest.mark.parametrize("bad", ["", "tensorflow.keras", None])
def test_importable_rejects_dotted_or_empty_names(bad):
    with pytest.raises(ValueError, match="top-level package"):
        runtime.importable(bad)


def test_skip_remaining_cells_replaces_later_cells_with_the_reason(capsys):
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    try:
        runtime.skip_remaining_cells("TensorFlow is absent: switch the runtime")
        result = shell.run_cell("raise RuntimeError('this cell must not run')")
        assert result.error_in_exec is None and result.success
        runtime.skip_remaining_cells("second reason")
        shell.run_cell("1 / 0")
        out = capsys.readouterr().out
        assert "skipped: TensorFlow is absent: switch the runtime" in out
        assert "skipped: second reason" in out
        assert sum(getattr(t, "course_skip", False) for t in shell.input_transformers_cleanup) == 1
    finally:
        shell.input_transformers_cleanup[:] = [
            t for t in shell.input_transformers_cleanup if not getattr(t, "course_skip", False)]
    assert shell.run_cell("value = 6 * 7").success and shell.user_ns["value"] == 42


def test_skip_remaining_cells_needs_a_kernel_and_a_reason():
    with pytest.raises(ValueError, match="reason"):
        runtime.skip_remaining_cells("  ")
    code = "import course_lib.runtime as r; r.skip_remaining_cells('x')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "Jupyter or IPython kernel only" in proc.stderr


@pytest.mark.slow
def test_seed_everything_seeds_keras_without_importing_tensorflow_unless_named():
    code = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import keras
import course_lib.runtime as r
r.seed_everything(5, frameworks=("jax",))
a = keras.random.uniform((3,)).tolist()
no_tf = "tensorflow" not in sys.modules
r.seed_everything(5, frameworks=("jax",))
same = keras.random.uniform((3,)).tolist() == a
from keras.src.utils import module_utils
import tensorflow
later = module_utils.tensorflow.available
r.seed_everything(5)
print(no_tf, same, later, "tensorflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_memory_mb_now_and_peak():
    code = """
import course_lib.runtime as r
now, peak = r.memory_mb(), r.memory_mb(peak=True)
block = bytearray(64 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
grown = r.memory_mb()
del block
print(now, peak, grown, r.memory_mb(), r.memory_mb(peak=True))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    now, peak, grown, after, peak_after = map(float, out.stdout.split())
    assert 5 < now <= peak and grown - now >= 60
    # freed now; the peak remembers it (the kernel updates VmHWM lazily: within a few pages)
    assert after < grown - 50 and peak_after >= grown - 2
