"""Tests of course_lib.convert: layouts, round trips, traps, and forward passes in each framework.

Each framework's model here is written the way a lesson writes it; the converted weights must
give the float64 reference's logits to 1e-5 (float32 arithmetic). TensorFlow and Keras tests are
marked slow (TensorFlow takes seconds to import). Keras on all three backends is tested in
subprocesses in test_parity.py.
"""

import numpy as np
import pytest

from course_lib import convert
from course_lib.models import CNNSpec, MLPSpec, cnn_forward, init_weights, mlp_forward

FORWARD_TOL = 1e-5
HIDDEN = [(64, 64), (32, 16)]  # (64, 64): square kernels, where a missing transpose cannot raise
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits scaled to [0, 1]: flat (n, 64) and NHWC images (n, 8, 8, 1), float32."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)[:128]
    return {"flat": x, "images": x.reshape(-1, 8, 8, 1), "labels": data.target[:128]}


def assert_close(actual, reference, tol=FORWARD_TOL):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == reference.shape
    diff = np.abs(actual - reference).max()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        for name in ("kernel", "bias"):
            assert la[name].shape == lb[name].shape
            np.testing.assert_array_equal(la[name], lb[name])


# --------------------------------------------------------------------------------------------
# NumPy layout helpers
# --------------------------------------------------------------------------------------------


def test_nhwc_nchw_round_trip_and_errors():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    nchw = convert.nhwc_to_nchw(x)
    assert nchw.shape == (2, 5, 3, 4)
    assert nchw[1, 4, 2, 3] == x[1, 2, 3, 4]
    np.testing.assert_array_equal(convert.nchw_to_nhwc(nchw), x)
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        convert.nhwc_to_nchw(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="4-D"):
        convert.nchw_to_nhwc(np.zeros((8, 8)))


@pytest.mark.parametrize("shape", [(2, 2, 16), (3, 4, 5), (1, 1, 7)])
def test_flatten_permutation_maps_hwc_to_chw(shape):
    h, w, c = shape
    fmap = np.random.default_rng(0).normal(size=shape)
    perm = convert.flatten_permutation(shape)
    np.testing.assert_array_equal(fmap.reshape(-1)[perm], fmap.transpose(2, 0, 1).reshape(-1))
    # A dense layer gives the same output from either flatten once its rows are reordered.
    kernel = np.random.default_rng(1).normal(size=(h * w * c, 3))
    out_hwc = fmap.reshape(-1) @ kernel
    out_chw = fmap.transpose(2, 0, 1).reshape(-1) @ convert.hwc_rows_to_chw(kernel, shape)
    np.testing.assert_allclose(out_chw, out_hwc, rtol=1e-12)
    np.testing.assert_array_equal(
        convert.chw_rows_to_hwc(convert.hwc_rows_to_chw(kernel, shape), shape), kernel
    )


def test_flatten_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(h, w, c\)"):
        convert.flatten_permutation((2, 2))
    with pytest.raises(ValueError, match="64 input rows"):
        convert.hwc_rows_to_chw(np.zeros((60, 10)), (2, 2, 16))
    with pytest.raises(ValueError, match="positive"):
        convert.flatten_permutation((2, 0, 16))


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def torch_mlp(spec):
    from torch import nn

    layers = []
    for i, (n_in, n_out) in enumerate(zip(spec.sizes[:-1], spec.sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(spec.sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_cnn(spec, *, flatten_nhwc=False):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(spec.in_channels, spec.c1, 3, padding=1)
            self.conv2 = nn.Conv2d(spec.c1, spec.c2, 3, padding=1)
            self.fc = nn.Linear(spec.flatten_features, spec.out_features)

        def forward(self, x):  # x: NCHW
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            if flatten_nhwc:
                x = x.permute(0, 2, 3, 1)
            return self.fc(torch.flatten(x, 1))

    return CNN()


def torch_logits(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("seed", SEEDS)
def test_torch_mlp_forward_matches_reference(digits, hidden, seed):
    spec = MLPSpec(hidden=hidden)
    weights = init_weights(spec, seed)
    net = torch_mlp(spec)
    convert.to_torch(net, weights)
    assert_close(torch_logits(net, digits["flat"]), mlp_forward(weights, digits["flat"]))
    assert net[0].weight.shape == (hidden[0], 64)  # (out, in)
    assert_same_weights(convert.from_torch(net), weights)


def test_untransposed_square_weights_are_silently_wrong(digits):
    """The trap: a (64, 64) kernel fits nn.Linear.weight with or without the transpose."""
    import torch

    spec = MLPSpec(hidden=(64, 64))
    weights = init_weights(spec, 0)
    reference = mlp_forward(weights, digits["flat"])
    naive = torch_mlp(spec)
    with torch.no_grad():
        for layer, w in zip([m for m in naive if isinstance(m, torch.nn.Linear)], weights):
            kernel = torch.from_numpy(w["kernel"])
            # what a student might write: raises only where the shapes differ
            layer.weight.copy_(kernel if kernel.shape == layer.weight.shape else kernel.T)
            layer.bias.copy_(torch.from_numpy(w["bias"]))
    naive_diff = np.abs(torch_logits(naive, digits["flat"]) - reference).max()
    assert naive_diff > 0.1, f"the untransposed copy should be far off, got {naive_diff}"

    right = torch_mlp(spec)
    convert.to_torch(right, weights)
    assert_close(torch_logits(right, digits["flat"]), reference)
    # The two differ exactly by the transpose of the square kernels.
    np.testing.assert_array_equal(naive[0].weight.detach(), right[0].weight.detach().T)


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_cnn_forward_matches_reference(digits, seed):
    spec = CNNSpec()
    weights = init_weights(spec, seed)
    net = torch_cnn(spec)
    convert.to_torch(net, weights, flatten_shape=spec.flatten_shape)
    assert net.conv2.weight.shape == (16, 8, 3, 3)  # OIHW
    x_nchw = convert.nhwc_to_nchw(digits["images"])
    assert_close(torch_logits(net, x_nchw), cnn_forward(weights, digits["images"]))
    # also through the torch-tensor path of the layout helper
    import torch

    x_torch = convert.nhwc_to_nchw(torch.from_numpy(digits["images"]))
    assert isinstance(x_torch, torch.Tensor) and x_torch.is_contiguous()
    np.testing.assert_array_equal(x_torch.numpy(), x_nchw)
    assert_same_weights(convert.from_torch(net, flatten_shape=spec.flatten_shape), weights)
    other = torch_cnn(spec)
    convert.to_torch(other, weights, flatten_shape=spec)  # the spec itself is accepted too
    np.testing.assert_array_equal(other.fc.weight.detach(), net.fc.weight.detach())


def test_wrong_flatten_order_is_detected(digits):
    spec = CNNSpec()
    weights = init_weights(spec, 0)
    reference = cnn_forward(weights, digits["images"])
    x_nchw = convert.nhwc_to_nchw(digits["images"])

    net = torch_cnn(spec)
    with pytest.raises(ValueError, match=r"layer 2 \(Linear 'fc'\).*flatten_shape"):
        convert.to_torch(net, weights)
    # Claiming the module flattens NHWC when it flattens NCHW: no error, wrong logits.
    convert.to_torch(net, weights, flatten_order="hwc")
    assert np.abs(torch_logits(net, x_nchw) - reference).max() > 0.05

    # A module that really does permute to NHWC before flattening needs no reordering.
    nhwc_net = torch_cnn(spec, flatten_nhwc=True)
    convert.to_torch(nhwc_net, weights, flatten_order="hwc")
    assert_close(torch_logits(nhwc_net, x_nchw), reference)


def test_to_torch_shape_errors_name_the_layer():
    import torch
    from torch import nn

    weights = init_weights(MLPSpec(), 0)
    net = torch_mlp(MLPSpec(hidden=(64, 32)))
    before = net[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"layer 1 \(Linear '2'\) has weight shape \(32, 64\)"):
        convert.to_torch(net, init_weights(MLPSpec(hidden=(64, 16)), 0))
    # layer 0 did fit, but nothing is copied unless every layer fits
    assert torch.equal(net[0].weight.detach(), before)
    with pytest.raises(ValueError, match="has 2 dense/conv layers"):
        convert.to_torch(torch_mlp(MLPSpec(hidden=(64,))), weights)
    with pytest.raises(ValueError, match="is a conv but weights"):
        convert.to_torch(nn.Sequential(nn.Conv2d(1, 8, 3)), weights[:1])
    with pytest.raises(ValueError, match="BatchNorm1d"):
        convert.to_torch(nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64)), weights[:1])
    with pytest.raises(ValueError, match="bias=False"):
        convert.to_torch(nn.Sequential(nn.Linear(64, 64, bias=False)), weights[:1])
    with pytest.raises(ValueError, match="call the module once"):
        convert.to_torch(nn.Sequential(nn.LazyLinear(64)), weights[:1])
    with pytest.raises(ValueError, match="flatten_order"):
        convert.to_torch(torch_mlp(MLPSpec()), weights, flatten_order="whc")
    net = torch_mlp(MLPSpec()).to(torch.float64)  # the copy casts to the parameters' dtype
    convert.to_torch(net, weights)
    assert net[0].weight.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# JAX and Flax NNX
# --------------------------------------------------------------------------------------------


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
    x = x.reshape(x.shape[0], -1)
    return x @ params[2]["kernel"] + params[2]["bias"]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("seed", SEEDS)
def test_jax_mlp_forward_matches_reference(digits, hidden, seed):
    import jax

    weights = init_weights(MLPSpec(hidden=hidden), seed)
    params = convert.to_jax(weights)
    assert jax.tree.structure(params) == jax.tree.structure(
        [{"kernel": 0, "bias": 0}] * len(weights)
    )
    assert params[0]["kernel"].dtype == np.float32
    assert_close(jax_mlp(params, digits["flat"]), mlp_forward(weights, digits["flat"]))
    assert_same_weights(convert.from_jax(params), weights)


def test_jax_cnn_forward_matches_reference(digits):
    weights = init_weights(CNNSpec(), 0)
    assert_close(
        jax_cnn(convert.to_jax(weights), digits["images"]), cnn_forward(weights, digits["images"])
    )


def test_from_jax_rejects_other_structures():
    with pytest.raises(ValueError, match="list of"):
        convert.from_jax({"kernel": 1, "bias": 2})
    with pytest.raises(ValueError, match=r"params\[0\]"):
        convert.from_jax([{"w": 1}])


def nnx_mlp(spec):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            pairs = zip(spec.sizes[:-1], spec.sizes[1:])
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    return MLP(nnx.Rngs(0))


def nnx_cnn(spec):
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(spec.in_channels, spec.c1, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(spec.c1, spec.c2, (3, 3), padding="SAME", rngs=rngs)
            self.dense = nnx.Linear(spec.flatten_features, spec.out_features, rngs=rngs)

        def __call__(self, x):  # x: NHWC
            x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
            x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
            return self.dense(x.reshape(x.shape[0], -1))

    return CNN(nnx.Rngs(0))


@pytest.mark.parametrize("hidden", HIDDEN)
def test_flax_nnx_mlp_forward_matches_reference(digits, hidden):
    spec = MLPSpec(hidden=hidden)
    weights = init_weights(spec, 1)
    model = nnx_mlp(spec)
    convert.to_flax_nnx(model, weights)
    assert_close(model(digits["flat"]), mlp_forward(weights, digits["flat"]))
    assert_same_weights(convert.from_flax_nnx(model), weights)


def test_flax_nnx_cnn_forward_matches_reference(digits):
    spec = CNNSpec()
    weights = init_weights(spec, 0)
    model = nnx_cnn(spec)
    convert.to_flax_nnx(model, weights)  # NHWC and HWIO: no permutation anywhere
    assert_close(model(digits["images"]), cnn_forward(weights, digits["images"]))
    assert_same_weights(convert.from_flax_nnx(model), weights)


def test_flax_nnx_uses_definition_order_not_alphabetical(digits):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.input_layer = nnx.Linear(64, 32, rngs=rngs)
            self.hidden = nnx.Linear(32, 16, rngs=rngs)
            self.classifier = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.input_layer(x))
            return self.classifier(nnx.relu(self.hidden(x)))

    net = Net(nnx.Rngs(0))
    flax_order = [path[-1] for path, m in nnx.iter_modules(net) if isinstance(m, nnx.Linear)]
    assert flax_order == ["classifier", "hidden", "input_layer"]  # why we do not use it
    weights = init_weights(MLPSpec(hidden=(32, 16)), 0)
    convert.to_flax_nnx(net, weights)
    assert_close(net(digits["flat"]), mlp_forward(weights, digits["flat"]))
    # An explicit list of layers is taken in its own order.
    convert.to_flax_nnx([net.input_layer, net.hidden, net.classifier], weights)
    with pytest.raises(ValueError, match=r"layer 0 \(Linear '\[0\]'\) has kernel shape \(16, 10\)"):
        convert.to_flax_nnx([net.classifier, net.hidden, net.input_layer], weights)


def test_flax_nnx_errors():
    from flax import nnx

    weights = init_weights(MLPSpec(), 0)
    with pytest.raises(ValueError, match="has 4 dense/conv layers"):
        convert.to_flax_nnx(nnx_mlp(MLPSpec(hidden=(64, 64, 64))), weights)
    with pytest.raises(ValueError, match="use_bias=False"):
        convert.to_flax_nnx(nnx.Linear(64, 64, use_bias=False, rngs=nnx.Rngs(0)), weights[:1])

    class WithScale(nnx.Module):
        def __init__(self):
            self.scale = nnx.Param(np.ones(3, np.float32))

    with pytest.raises(ValueError, match="'scale' is an nnx.Param"):
        convert.to_flax_nnx(WithScale(), weights[:1])


def test_flax_linen_params(digits):
    from flax import linen

    class MLP(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.relu(linen.Dense(32)(x))
            x = linen.relu(linen.Dense(16)(x))
            return linen.Dense(10)(x)

    weights = init_weights(MLPSpec(hidden=(32, 16)), 0)
    variables = convert.to_flax_linen_params(weights, ["Dense_0", "Dense_1", "Dense_2"])
    assert_close(MLP().apply(variables, digits["flat"]), mlp_forward(weights, digits["flat"]))
    with pytest.raises(ValueError, match="3 distinct layer names"):
        convert.to_flax_linen_params(weights, ["Dense_0", "Dense_0", "Dense_1"])


# --------------------------------------------------------------------------------------------
# TensorFlow and Keras (in this process, on whatever backend Keras picks here)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("hidden", HIDDEN)
def test_tf_mlp_and_cnn_forward_match_reference(digits, hidden):
    import tensorflow as tf

    weights = init_weights(MLPSpec(hidden=hidden), 0)
    variables = convert.to_tf(weights)
    assert isinstance(variables[0]["kernel"], tf.Variable)
    x = tf.constant(digits["flat"])
    for layer in variables[:-1]:
        x = tf.nn.relu(tf.matmul(x, layer["kernel"]) + layer["bias"])
    logits = tf.matmul(x, variables[-1]["kernel"]) + variables[-1]["bias"]
    assert_close(logits.numpy(), mlp_forward(weights, digits["flat"]))
    assert_same_weights(convert.from_tf(variables), weights)

    cnn_weights = init_weights(CNNSpec(), 1)
    cnn = convert.to_tf(cnn_weights)
    x = tf.constant(digits["images"])
    for layer in cnn[:2]:
        x = tf.nn.conv2d(x, layer["kernel"], strides=1, padding="SAME") + layer["bias"]
        x = tf.nn.max_pool2d(tf.nn.relu(x), ksize=2, strides=2, padding="VALID")
    logits = tf.matmul(tf.reshape(x, (x.shape[0], -1)), cnn[2]["kernel"]) + cnn[2]["bias"]
    assert_close(logits.numpy(), cnn_forward(cnn_weights, digits["images"]))
    assert_same_weights(convert.from_tf(cnn), cnn_weights)


@pytest.mark.slow
def test_keras_in_this_process(digits):
    import keras

    spec = MLPSpec(hidden=(64, 64))
    weights = init_weights(spec, 0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    convert.to_keras(model, weights)
    logits = keras.ops.convert_to_numpy(model(digits["flat"]))
    assert_close(logits, mlp_forward(weights, digits["flat"]))
    assert_same_weights(convert.from_keras(model), weights)

    with pytest.raises(ValueError, match="has 3 dense/conv layers"):
        convert.to_keras(model, weights[:2])
    wrong = init_weights(MLPSpec(hidden=(64, 32)), 0)
    with pytest.raises(ValueError, match=r"layer 1 \(Dense '.*'\) has kernel shape \(64, 64\)"):
        convert.to_keras(model, wrong)
    unbuilt = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not built"):
        convert.to_keras(unbuilt, weights[2:])
    with pytest.raises(ValueError, match="BatchNormalization"):
        convert.to_keras(
            keras.Sequential([keras.Input((64,)), keras.layers.BatchNormalization()]), weights[:1]
        )

    # A subclassed model with a nested block: layers in assignment order, depth first.
    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(64, activation="relu")
            self.second = keras.layers.Dense(64, activation="relu")

        def call(self, x):
            return self.second(self.first(x))

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = keras.layers.Dense(10)

        def call(self, x):
            return self.head(self.block(x))

    net = Net()
    net(digits["flat"][:1])
    convert.to_keras(net, weights)
    assert_close(
        keras.ops.convert_to_numpy(net(digits["flat"])), mlp_forward(weights, digits["flat"])
    )

    cnn_spec = CNNSpec()
    cnn_weights = init_weights(cnn_spec, 0)
    cnn = keras.Sequential(
        [
            keras.Input(cnn_spec.input_shape),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    convert.to_keras(cnn, cnn_weights)  # channels_last: no permutation for Keras
    logits = keras.ops.convert_to_numpy(cnn(digits["images"]))
    assert_close(logits, cnn_forward(cnn_weights, digits["images"]))
    assert_same_weights(convert.from_keras(cnn), cnn_weights)
