"""Lessons that do not need TensorFlow run where it is absent (Colab's TPU runtimes ship none).

Each lesson runs with papermill (smoke profile) in a kernel where `import tensorflow` fails
(tests/no_tensorflow/sitecustomize.py on PYTHONPATH). The lesson must finish, say what it
skipped, and record no TensorFlow figure. `make test` runs three lessons so (see LESSONS);
CI's Colab lane runs all of them so on Colab's versions, with the same phrases.
"""

import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TF = Path(__file__).resolve().parent / "no_tensorflow"

sys.path.insert(0, str(ROOT / "tools"))
from colab_lane import NO_TENSORFLOW_PHRASES  # noqa: E402

#: Run here on the lock: the setup lesson, Keras on JAX (what a TPU runtime is for) and the
#: all-TensorFlow lesson that must refuse. CI's Colab lane ("tpu" variant, `make test-colab`)
#: runs every lesson without TensorFlow on Colab's own versions and checks the same phrases.
EXTRA_ENV = {"02": {"KERAS_BACKEND": "jax"}}
LESSONS = [(path.name, EXTRA_ENV.get(path.name[:2], {}), NO_TENSORFLOW_PHRASES[path.name[:2]])
           for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
           if path.name[:2] in ("00", "02", "05")]
NOTHING_RECORDED = {"05_tensorflow.ipynb"}  # nothing of that lesson can run without TensorFlow


def test_every_lesson_says_what_it_skips_without_tensorflow():
    lessons = {path.name[:2] for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(NO_TENSORFLOW_PHRASES) >= lessons - {"12"}  # 12 measures nothing itself


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
