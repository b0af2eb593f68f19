"""Tests of course_lib.models: specs, shared initial weights and the float64 reference (NumPy only)."""

import numpy as np
import pytest

from course_lib.models import (
    BIAS_INIT_LIMIT,
    CNNSpec,
    MLPSpec,
    check_weights,
    cnn_forward,
    count_params,
    glorot_limit,
    init_weights,
    layer_shapes,
    mlp_forward,
    sgd_reference,
    softmax_cross_entropy,
)

# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def test_mlp_spec_defaults_are_the_digits_reference():
    spec = MLPSpec()
    assert (spec.in_features, spec.hidden, spec.out_features, spec.activation) == (
        64,
        (64, 64),
        10,
        "relu",
    )
    assert spec.sizes == (64, 64, 64, 10)


def test_mlp_spec_accepts_a_list_of_hidden_sizes_and_stays_hashable():
    spec = MLPSpec(hidden=[32, 16])
    assert spec.hidden == (32, 16)
    assert hash(spec) == hash(MLPSpec(hidden=(32, 16)))
    assert MLPSpec(hidden=()).sizes == (64, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "gelu"}, "Unknown activation"),
        ({"hidden": 64}, "sequence of layer widths"),
        ({"hidden": (64, 0)}, "positive integer"),
        ({"hidden": (64, 2.5)}, "positive integer"),
        ({"in_features": -1}, "in_features"),
        ({"out_features": True}, "out_features"),
    ],
)
def test_mlp_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPSpec(**kwargs)


def test_cnn_spec_defaults_and_flatten_shape():
    spec = CNNSpec()
    assert spec.input_shape == (8, 8, 1)
    assert spec.flatten_shape == (2, 2, 16)
    assert spec.flatten_features == 64
    assert CNNSpec(height=16, width=12, c2=4).flatten_shape == (4, 3, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"height": 6}, "divisible by 4"), ({"kernel_size": 4}, "odd"), ({"c1": 0}, "c1")],
)
def test_cnn_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CNNSpec(**kwargs)


def test_layer_shapes_and_count_params():
    assert [s["kernel"] for s in layer_shapes(MLPSpec(hidden=(32, 16)))] == [
        (64, 32),
        (32, 16),
        (16, 10),
    ]
    assert count_params(MLPSpec()) == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10 == 8970
    cnn = layer_shapes(CNNSpec())
    assert [s["kind"] for s in cnn] == ["conv", "conv", "dense"]
    assert [s["kernel"] for s in cnn] == [(3, 3, 1, 8), (3, 3, 8, 16), (64, 10)]
    assert count_params(CNNSpec()) == 80 + 1168 + 650
    with pytest.raises(ValueError, match="MLPSpec or a CNNSpec"):
        count_params("mlp")


# --------------------------------------------------------------------------------------------
# Initial weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [MLPSpec(), MLPSpec(hidden=(32, 16)), CNNSpec()])
def test_init_weights_layout_dtype_and_determinism(spec):
    w = init_weights(spec, seed=3)
    check_weights(w, spec)
    for layer, shapes in zip(w, layer_shapes(spec)):
        assert layer["kernel"].dtype == np.float32 and layer["bias"].dtype == np.float32
        assert layer["kernel"].shape == shapes["kernel"]
        assert layer["bias"].shape == shapes["bias"]
        limit = glorot_limit(shapes["kernel"])
        assert np.abs(layer["kernel"]).max() <= limit
        assert np.abs(layer["bias"]).max() <= BIAS_INIT_LIMIT
        assert np.all(layer["bias"] != 0), "biases must be nonzero to expose a wrong bias mapping"
    again = init_weights(spec, seed=3)
    other = init_weights(spec, seed=4)
    for a, b, c in zip(w, again, other):
        np.testing.assert_array_equal(a["kernel"], b["kernel"])
        np.testing.assert_array_equal(a["bias"], b["bias"])
        assert not np.array_equal(a["kernel"], c["kernel"])


def test_glorot_uniform_statistics():
    # U(-L, L) has variance L^2 / 3 = 2 / (fan_in + fan_out) (Glorot and Bengio 2010).
    kernel = init_weights(MLPSpec(in_features=400, hidden=(), out_features=200), seed=0)[0][
        "kernel"
    ]
    assert glorot_limit((400, 200)) == pytest.approx(np.sqrt(6 / 600))
    assert kernel.var() == pytest.approx(2 / 600, rel=0.02)
    # conv fans count the receptive field: 3*3*8 in, 3*3*16 out
    assert glorot_limit((3, 3, 8, 16)) == pytest.approx(np.sqrt(6 / (72 + 144)))


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_init_weights_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        init_weights(MLPSpec(), seed)


def test_check_weights_messages():
    w = init_weights(MLPSpec(), 0)
    with pytest.raises(ValueError, match="list with one"):
        check_weights(w[0])
    with pytest.raises(ValueError, match="exactly the keys"):
        check_weights([{"W": 1, "b": 2}])
    with pytest.raises(ValueError, match=r"bias'\] must have shape \(64,\)"):
        check_weights([{"kernel": w[0]["kernel"], "bias": w[2]["bias"]}])
    with pytest.raises(ValueError, match="has 3 layers but weights has 2"):
        check_weights(w[:2], MLPSpec())
    with pytest.raises(ValueError, match="spec needs"):
        check_weights(w, MLPSpec(hidden=(64, 32)))


# --------------------------------------------------------------------------------------------
# Loss and forward passes
# --------------------------------------------------------------------------------------------


def test_softmax_cross_entropy_matches_the_definition_and_is_stable():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4))
    labels = rng.integers(0, 4, size=7)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    naive = -np.mean(np.log(p[np.arange(7), labels]))
    assert softmax_cross_entropy(logits, labels) == pytest.approx(naive, rel=1e-12)
    # uniform logits: log(classes), whatever their size
    assert softmax_cross_entropy(np.full((3, 10), 1000.0), [0, 5, 9]) == pytest.approx(np.log(10))
    # huge logits would overflow exp() without the max shift
    assert softmax_cross_entropy([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)
    assert isinstance(softmax_cross_entropy(logits, labels), float)


def test_softmax_cross_entropy_rejects_bad_labels():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="one-hot"):
        softmax_cross_entropy(logits, np.eye(3)[[0, 1]])
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        softmax_cross_entropy(logits, [0, 3])
    with pytest.raises(ValueError, match="2-D"):
        softmax_cross_entropy(np.zeros(3), [0])


def test_mlp_forward_by_hand():
    w = [
        {"kernel": np.array([[1.0, -1.0], [2.0, 0.5]]), "bias": np.array([0.5, -3.0])},
        {"kernel": np.array([[1.0], [1.0]]), "bias": np.array([0.25])},
    ]
    x = np.array([[1.0, 1.0], [-1.0, 0.0]])
    # hidden = relu(x @ K + b) = relu([[3.5, -3.5], [-0.5, -2]]) = [[3.5, 0], [0, 0]]
    np.testing.assert_array_equal(mlp_forward(w, x), [[3.75], [0.25]])
    expected_tanh = np.tanh(x @ w[0]["kernel"] + w[0]["bias"]).sum(axis=1, keepdims=True) + 0.25
    np.testing.assert_allclose(mlp_forward(w, x, activation="tanh"), expected_tanh)


def test_mlp_forward_returns_float64_logits():
    spec = MLPSpec(hidden=(32, 16))
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    out = mlp_forward(init_weights(spec, 0), x)
    assert out.shape == (5, 10) and out.dtype == np.float64


def test_mlp_forward_rejects_bad_input():
    w = init_weights(MLPSpec(), 0)
    with pytest.raises(ValueError, match="reshape"):
        mlp_forward(w, np.zeros((5, 8, 8)))
    with pytest.raises(ValueError, match="x has 63 features"):
        mlp_forward(w, np.zeros((5, 63)))
    with pytest.raises(ValueError, match="Unknown activation"):
        mlp_forward(w, np.zeros((5, 64)), activation="softplus")
    with pytest.raises(ValueError, match="cnn_forward"):
        mlp_forward(init_weights(CNNSpec(), 0), np.zeros((5, 9)))
    with pytest.raises(ValueError, match="outputs 10 features but"):
        mlp_forward([w[0], w[2], w[2]], np.zeros((5, 64)))
    bad = [w[0], {"kernel": np.zeros((32, 10)), "bias": np.zeros(10)}]
    with pytest.raises(ValueError, match=r"weights\[1\] expects 32"):
        mlp_forward(bad, np.zeros((5, 64)))


def _naive_cnn(weights, x):
    """Independent, slow CNN: explicit loops over pixels for the convolutions and poolings."""

    def conv_same(a, kernel, bias):
        n, h, w, _ = a.shape
        k = kernel.shape[0]
        p = k // 2
        out = np.zeros((n, h, w, kernel.shape[3]))
        for i in range(h):
            for j in range(w):
                for di in range(k):
                    for dj in range(k):
                        ii, jj = i + di - p, j + dj - p
                        if 0 <= ii < h and 0 <= jj < w:
                            out[:, i, j, :] += a[:, ii, jj, :] @ kernel[di, dj]
        return out + bias

    def pool(a):
        n, h, w, c = a.shape
        out = np.empty((n, h // 2, w // 2, c))
        for i in range(h // 2):
            for j in range(w // 2):
                out[:, i, j, :] = a[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :].max(axis=(1, 2))
        return out

    a = np.asarray(x, dtype=np.float64)
    for layer in weights[:2]:
        a = pool(np.maximum(conv_same(a, layer["kernel"], layer["bias"]), 0))
    n, h, w, c = a.shape
    flat = np.zeros((n, h * w * c))
    for i in range(h):
        for j in range(w):
            for k in range(c):
                flat[:, (i * w + j) * c + k] = a[:, i, j, k]
    return flat @ weights[2]["kernel"] + weights[2]["bias"]


@pytest.mark.parametrize(
    "spec", [CNNSpec(), CNNSpec(height=12, width=8, in_channels=2, c1=3, c2=5)]
)
def test_cnn_forward_matches_naive_loops(spec):
    weights = init_weights(spec, 1)
    x = np.random.default_rng(1).normal(size=(4, *spec.input_shape))
    out = cnn_forward(weights, x)
    assert out.shape == (4, spec.out_features) and out.dtype == np.float64
    np.testing.assert_allclose(out, _naive_cnn(weights, x), rtol=0, atol=1e-12)


def test_cnn_forward_rejects_bad_input():
    w = init_weights(CNNSpec(), 0)
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        cnn_forward(w, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="NCHW"):
        cnn_forward(init_weights(CNNSpec(in_channels=3), 0), np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="flattened feature map has 144"):
        cnn_forward(w, np.zeros((2, 12, 12, 1)))
    with pytest.raises(ValueError, match="conv layers"):
        cnn_forward(init_weights(MLPSpec(), 0), np.zeros((2, 8, 8, 1)))


# --------------------------------------------------------------------------------------------
# SGD reference
# --------------------------------------------------------------------------------------------


def _random_batches(spec, n_steps, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    shape = (spec.in_features,) if isinstance(spec, MLPSpec) else spec.input_shape
    return [
        (rng.normal(size=(batch, *shape)), rng.integers(0, spec.out_features, batch))
        for _ in range(n_steps)
    ]


def _loss(spec, weights, x, y):
    if isinstance(spec, MLPSpec):
        return softmax_cross_entropy(mlp_forward(weights, x, activation=spec.activation), y)
    return softmax_cross_entropy(cnn_forward(weights, x), y)


@pytest.mark.parametrize(
    "spec",
    [
        MLPSpec(hidden=(6, 5)),
        MLPSpec(in_features=5, hidden=(4,), out_features=3, activation="tanh"),
        MLPSpec(in_features=5, hidden=(4, 4), out_features=3, activation="sigmoid"),
        CNNSpec(c1=3, c2=4),
    ],
    ids=["mlp-relu", "mlp-tanh", "mlp-sigmoid", "cnn"],
)
def test_sgd_gradient_matches_finite_differences(spec):
    """One SGD step is w - lr * grad, so (w0 - w1) / lr is the backprop gradient."""
    w0 = [{k: v.astype(np.float64) for k, v in layer.items()} for layer in init_weights(spec, 2)]
    x, y = _random_batches(spec, 1, batch=5, seed=2)[0]
    lr = 0.5
    _, w1 = sgd_reference(spec, w0, [(x, y)], lr, return_weights=True)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for i, layer in enumerate(w0):
        for name in ("kernel", "bias"):
            grad = (layer[name] - w1[i][name]) / lr
            for _ in range(8):
                idx = tuple(int(rng.integers(0, s)) for s in layer[name].shape)
                plus = [{k: v.copy() for k, v in lw.items()} for lw in w0]
                minus = [{k: v.copy() for k, v in lw.items()} for lw in w0]
                plus[i][name][idx] += eps
                minus[i][name][idx] -= eps
                numeric = (_loss(spec, plus, x, y) - _loss(spec, minus, x, y)) / (2 * eps)
                assert grad[idx] == pytest.approx(numeric, abs=1e-7), (i, name, idx)


@pytest.mark.parametrize("spec", [MLPSpec(), CNNSpec()], ids=["mlp", "cnn"])
def test_sgd_losses_are_taken_before_each_update(spec):
    w0 = init_weights(spec, 0)
    batches = _random_batches(spec, 3)
    losses, w3 = sgd_reference(spec, w0, batches, 0.1, return_weights=True)
    assert losses.shape == (3,) and losses.dtype == np.float64
    assert losses[0] == _loss(spec, w0, *batches[0])
    _, w1 = sgd_reference(spec, w0, batches[:1], 0.1, return_weights=True)
    assert losses[1] == pytest.approx(_loss(spec, w1, *batches[1]), rel=1e-14)
    # inputs untouched, outputs float64
    np.testing.assert_array_equal(w0[0]["kernel"], init_weights(spec, 0)[0]["kernel"])
    assert w3[0]["kernel"].dtype == np.float64


def test_sgd_on_one_batch_decreases_the_loss():
    spec = MLPSpec(hidden=(32, 16))
    batch = _random_batches(spec, 1)[0]
    losses = sgd_reference(spec, init_weights(spec, 0), [batch] * 30, 0.2)
    assert losses[-1] < 0.5 * losses[0]
    assert np.all(np.diff(losses) < 0)


def test_sgd_reference_accepts_a_generator():
    spec = MLPSpec(hidden=(8,))
    gen = (b for b in _random_batches(spec, 4))
    assert sgd_reference(spec, init_weights(spec, 0), gen, 0.1).shape == (4,)


def test_sgd_reference_rejects_bad_input():
    spec = MLPSpec()
    w = init_weights(spec, 0)
    batches = _random_batches(spec, 2)
    with pytest.raises(ValueError, match="lr"):
        sgd_reference(spec, w, batches, 0.0)
    with pytest.raises(ValueError, match="empty"):
        sgd_reference(spec, w, [], 0.1)
    with pytest.raises(ValueError, match="spec needs"):
        sgd_reference(MLPSpec(hidden=(64, 32)), w, batches, 0.1)
    with pytest.raises(ValueError, match="batch 1: labels"):
        sgd_reference(spec, w, [batches[0], (batches[1][0], batches[1][1][:3])], 0.1)
    with pytest.raises(ValueError, match="batch 0 must be a pair"):
        sgd_reference(spec, w, [batches[0][0]], 0.1)
    with pytest.raises(ValueError, match="MLPSpec or a CNNSpec"):
        sgd_reference("mlp", w, batches, 0.1)
