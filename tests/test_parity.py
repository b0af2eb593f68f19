"""Tests of course_lib.parity, and the course's central claim: same weights, same numbers.

The parity tests train the MLP (and the CNN) for 20 SGD steps in each framework from the shared
NumPy weights on the same batches of scikit-learn's digits, and compare the losses with the
float64 reference (course_lib.models.sgd_reference). Keras runs on each of its three backends in
its own subprocess, because the backend is fixed per process by KERAS_BACKEND.
"""

import functools
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from course_lib import convert, parity
from course_lib.models import (
    CNNSpec,
    MLPSpec,
    cnn_forward,
    init_weights,
    mlp_forward,
    sgd_reference,
)
from course_lib.parity import assert_parity, parity_table, show, split_key

ROOT = Path(__file__).resolve().parents[1]
FORWARD_TOL = 1e-5
LOSS_TOL = 1e-4
LR = 0.1
STEPS = 20
BATCH = 32
HIDDEN = [(64, 64), (32, 16)]
SEEDS = [0, 1]


# --------------------------------------------------------------------------------------------
# parity_table, assert_parity, show
# --------------------------------------------------------------------------------------------


def test_parity_table_rows_and_pass_fail():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    table = parity_table(
        {
            "torch": ref + 1e-7,
            "keras/jax": (ref - 2e-6).astype(np.float32),
            "jax/jit": ref.tolist(),
            "tensorflow": ref + np.array([[0, 0], [0, 1e-3]]),
        },
        ref,
        tol=1e-5,
    )
    assert list(table.index) == ["torch", "keras/jax", "jax/jit", "tensorflow"]
    assert list(table.columns) == ["framework", "backend", "mode", "max_abs_diff", "tol", "passed"]
    assert table.loc["torch", "max_abs_diff"] == pytest.approx(1e-7)
    assert table.loc["keras/jax", "max_abs_diff"] == pytest.approx(
        2e-6, rel=0.2
    )  # float32 rounding
    assert table.loc["jax/jit", "max_abs_diff"] == 0.0
    assert table.loc["keras/jax", "framework"] == "keras"
    assert table.loc["keras/jax", "backend"] == "jax"
    assert table.loc["jax/jit", "mode"] == "jit"
    assert table["passed"].tolist() == [True, True, True, False]
    assert table.attrs["metric"] == "forward_max_abs_diff"
    with pytest.raises(
        AssertionError, match=r"1 of 4 frameworks.*\n  tensorflow: 0\.001 > tol 1e-05"
    ):
        assert_parity(table)
    assert_parity(table.drop(index="tensorflow"))


def test_parity_table_reads_tensors_that_require_grad():
    torch = pytest.importorskip("torch")
    ref = np.linspace(0, 1, 6).reshape(2, 3)
    t = torch.tensor(ref, dtype=torch.float32, requires_grad=True) * 1.0
    table = parity_table({"torch": t}, ref, tol=1e-6, metric="loss_max_abs_diff")
    assert table.loc["torch", "passed"]
    assert table.attrs["metric"] == "loss_max_abs_diff"


def test_nan_and_inf_fail():
    ref = np.zeros(3)
    table = parity_table({"torch": [0.0, np.nan, 0.0], "jax": [0.0, np.inf, 0.0]}, ref, tol=1.0)
    assert not table["passed"].any()
    assert np.isnan(table.loc["torch", "max_abs_diff"])
    with pytest.raises(AssertionError, match="torch: nan"):
        assert_parity(table)


def test_parity_table_rejects_bad_input():
    ref = np.zeros((4, 10))
    with pytest.raises(ValueError, match=r"keras/torch: shape \(4, 9\) differs"):
        parity_table({"torch": ref, "keras/torch": np.zeros((4, 9))}, ref, tol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        parity_table({}, ref, tol=1e-5)
    for tol in (0, -1e-5, float("nan"), "1e-5", True):
        with pytest.raises(ValueError, match="tol"):
            parity_table({"torch": ref}, ref, tol=tol)
    with pytest.raises(ValueError, match="empty part"):
        parity_table({"keras/": ref}, ref, tol=1e-5)
    with pytest.raises(ValueError, match="assert_parity expects"):
        assert_parity(pd.DataFrame({"x": [1]}))


@pytest.mark.parametrize(
    "key, expected",
    [
        ("torch", ("torch", None, None)),
        ("torch/compiled", ("torch", None, "compiled")),
        ("keras", ("keras", None, None)),
        ("keras/tensorflow", ("keras", "tensorflow", None)),
        ("keras/jax/jit", ("keras", "jax", "jit")),
    ],
)
def test_split_key(key, expected):
    assert split_key(key) == expected


def test_split_key_rejects_too_many_parts():
    with pytest.raises(ValueError, match="too many parts"):
        split_key("torch/eager/cpu")


def test_show_styles_or_returns_the_table():
    table = parity_table({"torch": [1.0], "jax": [2.0]}, [1.0], tol=0.5)
    shown = show(table)
    html = shown.to_html() if hasattr(shown, "to_html") else shown.to_string()
    assert "torch" in html and "jax" in html


# --------------------------------------------------------------------------------------------
# Recording results
# --------------------------------------------------------------------------------------------


def test_parity_table_records_one_result_per_framework(monkeypatch):
    from course_lib import results

    calls = []

    def fake_record(lesson, metric, value, unit, *, framework, backend=None, mode=None, **extra):
        calls.append((lesson, metric, value, unit, framework, backend, mode, extra))
        return {}

    monkeypatch.setattr(results, "record", fake_record)
    ref = np.zeros(5)
    parity_table(
        {"keras/jax": ref + 1e-6, "torch": ref, "jax/jit": ref + 1.0},
        ref,
        tol=1e-5,
        metric="loss_max_abs_diff",
        lesson="03",
    )
    assert calls == [
        (
            "03",
            "loss_max_abs_diff",
            pytest.approx(1e-6),
            "abs",
            "keras",
            "jax",
            None,
            {"tol": 1e-5, "passed": True},
        ),
        ("03", "loss_max_abs_diff", 0.0, "abs", "torch", None, None, {"tol": 1e-5, "passed": True}),
        ("03", "loss_max_abs_diff", 1.0, "abs", "jax", None, "jit", {"tol": 1e-5, "passed": False}),
    ]
    calls.clear()
    parity_table({"torch": ref}, ref, tol=1e-5, lesson="03", record=False)
    parity_table({"torch": ref}, ref, tol=1e-5)  # no lesson: nothing to record under
    assert calls == []
    with pytest.warns(UserWarning, match="torch gave a non-finite difference"):
        parity_table({"torch": ref + np.nan, "jax": ref}, ref, tol=1e-5, lesson="03")
    assert [c[4] for c in calls] == ["jax"]


def test_parity_table_writes_to_the_results_store(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    ref = np.ones((3, 2))
    parity_table({"keras/torch": ref + 2e-7, "tensorflow": ref}, ref, tol=1e-5, lesson="06")
    lines = [json.loads(line) for line in (tmp_path / "06.jsonl").read_text().splitlines()]
    assert [(r["framework"], r["backend"]) for r in lines] == [
        ("keras", "torch"),
        ("tensorflow", None),
    ]
    first = lines[0]
    assert first["metric"] == "forward_max_abs_diff" and first["unit"] == "abs"
    assert first["value"] == pytest.approx(2e-7, rel=1e-6)
    assert first["tol"] == 1e-5 and first["passed"] is True


# --------------------------------------------------------------------------------------------
# Same weights, same batches, same numbers: torch, JAX, Flax NNX, TensorFlow
# --------------------------------------------------------------------------------------------


def digit_batches(seed, *, images=False, steps=STEPS, batch=BATCH):
    """The same ``steps`` batches of digits for every framework, in an order set by ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()  # bundled with scikit-learn: no download
    x = (data.data / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(x))[: steps * batch]
    return [(x[idx], data.target[idx].astype(np.int64)) for idx in order.reshape(steps, batch)]


def torch_sgd_losses(net, batches, lr, *, nchw=False):
    import torch
    from torch.nn import functional as F

    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        x = torch.from_numpy(convert.nhwc_to_nchw(x) if nchw else x)
        opt.zero_grad()
        loss = F.cross_entropy(net(x), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def torch_mlp(spec):
    from torch import nn

    layers = []
    for n_in, n_out in zip(spec.sizes[:-1], spec.sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def jax_mlp(params, x):
    import jax

    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ params[-1]["kernel"] + params[-1]["bias"]


def jax_cnn(params, x):
    import jax

    for layer in params[:2]:
        x = jax.lax.conv_general_dilated(
            x, layer["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jax.nn.relu(x + layer["bias"])
        x = jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return x.reshape(x.shape[0], -1) @ params[2]["kernel"] + params[2]["bias"]


@functools.cache
def _jax_sgd_step(forward):
    """One jitted SGD step for ``forward``, compiled once per forward function and shape."""
    import jax
    import optax

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    @jax.jit
    def step(p, x, y, lr):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        return jax.tree.map(lambda w, g: w - lr * g, p, grads), loss

    return step


def jax_sgd_losses(forward, params, batches, lr):
    step = _jax_sgd_step(forward)
    losses = []
    for x, y in batches:
        params, loss = step(params, x, y, lr)
        losses.append(float(loss))
    return np.array(losses)


@functools.cache
def _flax_nnx_parts():
    """The Flax NNX model class and jitted SGD step, defined once so that nnx.jit caches."""
    import optax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, spec, rngs):
            pairs = zip(spec.sizes[:-1], spec.sizes[1:])
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return MLP, step


def flax_nnx_sgd_losses(spec, weights, batches, lr):
    import optax
    from flax import nnx

    mlp_class, step = _flax_nnx_parts()
    model = mlp_class(spec, nnx.Rngs(0))
    convert.to_flax_nnx(model, weights)
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    return np.array([float(step(model, optimizer, x, y)) for x, y in batches])


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("seed", SEEDS)
def test_mlp_forward_and_sgd_parity_torch_jax_flax(hidden, seed):
    spec = MLPSpec(hidden=hidden)
    weights = init_weights(spec, seed)
    batches = digit_batches(seed)
    x_all = np.concatenate([x for x, _ in batches])

    net = torch_mlp(spec)
    convert.to_torch(net, weights)
    import torch

    with torch.no_grad():
        torch_logits = net(torch.from_numpy(x_all))
    forward = parity_table(
        {"torch": torch_logits, "jax": jax_mlp(convert.to_jax(weights), x_all)},
        mlp_forward(weights, x_all),
        tol=FORWARD_TOL,
    )
    assert_parity(forward)

    reference = sgd_reference(spec, weights, batches, LR)
    assert reference[-1] < reference[0]  # it learns, so the comparison is not trivial
    losses = parity_table(
        {
            "torch": torch_sgd_losses(net, batches, LR),
            "jax/jit": jax_sgd_losses(jax_mlp, convert.to_jax(weights), batches, LR),
            "jax/flax-nnx": flax_nnx_sgd_losses(spec, weights, batches, LR),
        },
        reference,
        tol=LOSS_TOL,
        metric="loss_max_abs_diff",
    )
    assert_parity(losses)


def test_cnn_sgd_parity_torch_jax():
    import torch
    from torch import nn

    spec = CNNSpec()
    weights = init_weights(spec, 0)
    batches = digit_batches(0, images=True)
    net = nn.Sequential(
        nn.Conv2d(1, spec.c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(spec.c1, spec.c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(spec.flatten_features, spec.out_features),
    )
    convert.to_torch(net, weights, flatten_shape=spec.flatten_shape)
    x = batches[0][0]
    with torch.no_grad():
        torch_logits = net(torch.from_numpy(convert.nhwc_to_nchw(x)))
    assert_parity(
        parity_table(
            {"torch": torch_logits, "jax": jax_cnn(convert.to_jax(weights), x)},
            cnn_forward(weights, x),
            tol=FORWARD_TOL,
        )
    )
    reference = sgd_reference(spec, weights, batches, LR)
    table = parity_table(
        {
            "torch": torch_sgd_losses(net, batches, LR, nchw=True),
            "jax/jit": jax_sgd_losses(jax_cnn, convert.to_jax(weights), batches, LR),
        },
        reference,
        tol=LOSS_TOL,
        metric="loss_max_abs_diff",
    )
    assert_parity(table)


@pytest.mark.slow
@pytest.mark.parametrize("hidden", HIDDEN)
def test_mlp_sgd_parity_tensorflow(hidden):
    import tensorflow as tf

    spec = MLPSpec(hidden=hidden)
    weights = init_weights(spec, 0)
    batches = digit_batches(0)
    variables = convert.to_tf(weights)
    flat = [v for layer in variables for v in (layer["kernel"], layer["bias"])]

    def forward(x):
        for layer in variables[:-1]:
            x = tf.nn.relu(tf.matmul(x, layer["kernel"]) + layer["bias"])
        return tf.matmul(x, variables[-1]["kernel"]) + variables[-1]["bias"]

    x_all = np.concatenate([x for x, _ in batches])
    assert_parity(
        parity_table({"tensorflow": forward(x_all)}, mlp_forward(weights, x_all), tol=FORWARD_TOL)
    )
    losses = []
    for x, y in batches:
        with tf.GradientTape() as tape:
            logits = forward(x)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        for var, grad in zip(flat, tape.gradient(loss, flat)):
            var.assign_sub(LR * grad)
        losses.append(float(loss))
    assert_parity(
        parity_table(
            {"tensorflow": losses},
            sgd_reference(spec, weights, batches, LR),
            tol=LOSS_TOL,
            metric="loss_max_abs_diff",
        )
    )


# --------------------------------------------------------------------------------------------
# Keras on each backend, one subprocess per backend
# --------------------------------------------------------------------------------------------

# Run as `python -c KERAS_SCRIPT CONFIG_JSON`; digit_batches and its constants are prepended
# from this file (see _keras_script) so that Keras sees exactly the batches the others see.
KERAS_SCRIPT = r"""
import json, sys
import numpy as np
import keras
from course_lib import convert
from course_lib.models import (CNNSpec, MLPSpec, cnn_forward, init_weights, mlp_forward,
                               sgd_reference)

cfg = json.loads(sys.argv[1])
lr = cfg["lr"]
result = {"backend": keras.backend.backend(), "forward": {}, "sgd": {}}

def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max())

def train(model, batches):
    out = []
    for x, y in batches:
        loss = model.train_on_batch(x, y)  # the loss before this step's update
        out.append(float(np.ravel(loss)[0]))
    return np.array(out)

def compile_sgd(model):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

for hidden in cfg["hidden"]:
    spec = MLPSpec(hidden=tuple(hidden))
    layers = [keras.Input((spec.in_features,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in spec.hidden]
    layers += [keras.layers.Dense(spec.out_features)]
    model = keras.Sequential(layers)
    compile_sgd(model)
    for seed in cfg["seeds"]:
        weights = init_weights(spec, seed)
        batches = digit_batches(seed)
        x_all = np.concatenate([x for x, _ in batches])
        convert.to_keras(model, weights)
        logits = keras.ops.convert_to_numpy(model(x_all))
        result["forward"][f"mlp{hidden}/seed{seed}"] = max_diff(logits, mlp_forward(weights, x_all))
        losses = train(model, batches)
        ref = sgd_reference(spec, weights, batches, lr)
        result["sgd"][f"mlp{hidden}/seed{seed}"] = max_diff(losses, ref)

spec = CNNSpec()
cnn = keras.Sequential([
    keras.Input(spec.input_shape),
    keras.layers.Conv2D(spec.c1, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(2),
    keras.layers.Conv2D(spec.c2, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(2),
    keras.layers.Flatten(),
    keras.layers.Dense(spec.out_features),
])
compile_sgd(cnn)
weights = init_weights(spec, 0)
batches = digit_batches(0, images=True)
x_all = np.concatenate([x for x, _ in batches])
convert.to_keras(cnn, weights)
result["forward"]["cnn/seed0"] = max_diff(keras.ops.convert_to_numpy(cnn(x_all)),
                                          cnn_forward(weights, x_all))
result["sgd"]["cnn/seed0"] = max_diff(train(cnn, batches), sgd_reference(spec, weights, batches, lr))
print("PARITY_JSON " + json.dumps(result))
"""


def _keras_script():
    header = f"import numpy as np\nSTEPS, BATCH = {STEPS}, {BATCH}\n"
    return header + inspect.getsource(digit_batches) + KERAS_SCRIPT


@pytest.mark.slow
class TestKerasBackends:
    """A class, so that `pytest -n 2 --dist loadscope` can run these on their own worker."""

    @pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
    def test_keras_parity_on_each_backend(self, backend):
        env = dict(os.environ)
        env["KERAS_BACKEND"] = backend
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        config = {"hidden": HIDDEN, "seeds": SEEDS, "lr": LR}
        proc = subprocess.run(
            [sys.executable, "-c", _keras_script(), json.dumps(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("PARITY_JSON ")]
        assert proc.returncode == 0 and lines, (
            f"Keras subprocess on {backend} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
        result = json.loads(lines[-1].removeprefix("PARITY_JSON "))
        assert result["backend"] == backend
        failures = [
            f"forward {name}: {d:.3g} > {FORWARD_TOL}"
            for name, d in result["forward"].items()
            if not d <= FORWARD_TOL
        ] + [
            f"sgd {name}: {d:.3g} > {LOSS_TOL}"
            for name, d in result["sgd"].items()
            if not d <= LOSS_TOL
        ]
        assert not failures, f"keras/{backend}:\n" + "\n".join(failures)
        assert len(result["forward"]) == len(HIDDEN) * len(SEEDS) + 1
        print(f"keras/{backend}", json.dumps(result))  # shown with pytest -s: the measured diffs


def test_parity_module_imports_no_framework():
    code = (
        "import sys, course_lib.parity, course_lib.convert, course_lib.models; "
        "print([m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert parity.__all__  # the module is importable on its own
