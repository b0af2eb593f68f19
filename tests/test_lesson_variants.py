"""Lessons run again with other parameters and other Keras backends (papermill, smoke profile).

nbval runs every lesson once with its defaults. Here the parity lessons run again with another
SEED and other hidden sizes (parity must hold for any of them: the lessons assert it), and the
Keras lesson runs under the two Keras backends that nbval's run did not use.
"""

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

VARIANTS = [
    # (lesson file, papermill parameters, extra environment)
    ("02_keras3_three_backends.ipynb", {"SEED": 3, "HIDDEN": [32, 16]},
     {"KERAS_BACKEND": "tensorflow"}),
    ("02_keras3_three_backends.ipynb", {"SEED": 5, "HIDDEN": [48]}, {"KERAS_BACKEND": "torch"}),
    ("03_pytorch.ipynb", {"SEED": 3, "HIDDEN": [32, 16]}, {}),
    ("04_jax.ipynb", {"SEED": 4, "HIDDEN": [32, 32, 16]}, {}),
    ("05_tensorflow.ipynb", {"SEED": 6, "HIDDEN": [40]}, {}),
    ("06_cnns_four_ways.ipynb", {"SEED": 3, "CHANNELS": [4, 8]}, {"KERAS_BACKEND": "tensorflow"}),
    ("06_cnns_four_ways.ipynb", {"SEED": 5, "CHANNELS": [6, 12]}, {"KERAS_BACKEND": "torch"}),
    ("07_sequence_models.ipynb", {"SEED": 3, "HEADS": 4, "CONTEXT": 24},
     {"KERAS_BACKEND": "tensorflow"}),
    ("07_sequence_models.ipynb", {"SEED": 5, "D_MODEL": 48, "HEADS": 3}, {"KERAS_BACKEND": "torch"}),
    ("08_debugging.ipynb", {"SEED": 3}, {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("lesson, parameters, env", VARIANTS,
                         ids=[f"{v[0][:2]}-{'-'.join(f'{k}={v[1][k]}' for k in v[1])}"
                              f"{'-' + v[2]['KERAS_BACKEND'] if v[2] else ''}" for v in VARIANTS])
def test_lesson_runs_with_other_parameters(lesson, parameters, env, tmp_path, monkeypatch):
    import papermill

    path = NOTEBOOKS / lesson
    if not path.is_file():
        pytest.fail(f"{lesson} is missing")
    for key, value in {"COURSE_PROFILE": "smoke", **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    papermill.execute_notebook(str(path), str(tmp_path / lesson), parameters=parameters,
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               execution_timeout=600)
    from course_lib import results

    frame = results.read_results(tmp_path / "results")
    parity = frame[frame["metric"].isin(["forward_max_abs_diff", "loss_max_abs_diff"])]
    assert not parity.empty, "the lesson recorded no parity result"
    assert parity["passed"].all(), parity[["framework", "backend", "metric", "value"]]
    if env.get("KERAS_BACKEND"):
        assert env["KERAS_BACKEND"] in set(parity["backend"].dropna())
    assert set(frame["profile"].dropna()) == {"smoke"}, "the lesson did not run the smoke profile"
