"""Lessons that do not need TensorFlow run where it is absent (Colab's TPU runtimes ship none).

Each lesson runs with papermill (smoke profile) in a kernel where `import tensorflow` fails
(tests/no_tensorflow/sitecustomize.py on PYTHONPATH). The lesson must finish, say what it
skipped, and record no TensorFlow figure. The JAX and Keras-on-JAX lessons are the ones a TPU
runtime is for; lessons 00 (setup) and 03 (PyTorch) run there too.
"""

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TF = Path(__file__).resolve().parent / "no_tensorflow"

LESSONS = [  # (lesson file, extra environment, a phrase the lesson prints about the skip)
    ("00_setup_and_hardware.ipynb", {}, "skips its TensorFlow parts"),
    ("01_data_and_classical_ml.ipynb", {}, "the TensorFlow MLP is skipped"),
    ("02_keras3_three_backends.ipynb", {"KERAS_BACKEND": "jax"}, "skipped, the framework is not installed"),
    ("03_pytorch.ipynb", {}, None),
    ("04_jax.ipynb", {}, None),
    ("05_tensorflow.ipynb", {}, "TensorFlow lesson skipped"),  # every later cell says so
    ("06_cnns_four_ways.ipynb", {}, "TensorFlow cannot be imported here"),
    ("07_sequence_models.ipynb", {}, "TensorFlow cannot be imported here"),
    ("08_debugging.ipynb", {}, "TensorFlow cannot be imported here"),
    ("09_performance.ipynb", {}, "TensorFlow cannot be imported here"),
    ("10_deployment.ipynb", {}, "TensorFlow cannot be imported here"),
    ("11_distributed.ipynb", {}, "section 5 (MirroredStrategy) is skipped"),
]
NOTHING_RECORDED = {"05_tensorflow.ipynb"}  # nothing of that lesson can run without TensorFlow


def test_the_simulation_hides_tensorflow(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("PYTHONPATH", str(NO_TF))
    proc = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("lesson, env, phrase", LESSONS, ids=[x[0][:2] for x in LESSONS])
def test_lesson_runs_without_tensorflow(lesson, env, phrase, tmp_path, monkeypatch):
    import papermill

    from course_lib import results

    path = ROOT / "notebooks" / lesson
    for key, value in {"COURSE_PROFILE": "smoke", "COURSE_RESULTS_DIR": str(tmp_path / "results"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(NO_TF),
                                                                  os.environ.get("PYTHONPATH")])),
                       **env}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / lesson
    papermill.execute_notebook(str(path), str(out), cwd=str(path.parent), kernel_name="python3",
                               progress_bar=False, execution_timeout=600)
    text = "\n".join(str(o.get("text", "")) for c in nbformat.read(out, as_version=4).cells
                     if c.cell_type == "code" for o in c.get("outputs", []))
    assert "tensorflow" not in text.lower() or phrase is not None
    if phrase:
        assert phrase in text
    frame = results.read_results(tmp_path / "results")
    if lesson in NOTHING_RECORDED:
        code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
        said = [any("skipped: " in str(o.get("text", "")) for o in c.get("outputs", []))
                for c in code]
        first = said.index(True)
        assert all(said[first:]) and len(said) - first > 10, said
        assert frame.empty
        return
    assert not frame.empty
    assert "tensorflow" not in set(frame["framework"].dropna())
    assert "tensorflow" not in set(frame["backend"].dropna())
