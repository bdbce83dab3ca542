"""Tests of tfstatprune.shrink: physical removal of dead units and filters.

Every shrunk model is checked against the zero-masked model it came from: the
largest absolute difference of their predictions must be at most ``ATOL_EXACT``.
Weights are random (no training): shrink is exact whatever the weights are.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from hypothesis import given, settings
from hypothesis import strategies as st

from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.shrink import ShrinkResult, count_flops, shrink

ATOL_EXACT = 1e-5
N_SMALL = 512


@pytest.fixture(scope="module")
def mnist_test() -> np.ndarray:
    return datasets.mnist().x_test


def randomize(model: keras.Model, seed: int, scale: float = 0.1) -> None:
    """Random nonzero biases and BatchNormalization statistics, kernels kept."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.3, c),
                    rng.normal(0, 0.3, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, scale, layer.bias.shape))


def kill(layer: keras.layers.Layer, units, bias: float | list[float] = 0.0) -> None:
    """Zero the kernel slices of ``units`` and set their biases."""
    kernel = layer.kernel.numpy()
    kernel[..., units] = 0
    layer.kernel.assign(kernel)
    if layer.bias is not None:
        b = layer.bias.numpy()
        b[units] = bias
        layer.bias.assign(b)


def max_diff(a: keras.Model, b: keras.Model, x: np.ndarray) -> float:
    if len(x) <= N_SMALL:  # one eager call: no predict function to trace
        return float(np.abs(a(x, training=False) - b(x, training=False)).max())
    kwargs = {"batch_size": 1000, "verbose": 0}
    return float(np.abs(a.predict(x, **kwargs) - b.predict(x, **kwargs)).max())


def check(model: keras.Model, x: np.ndarray, **kwargs) -> ShrinkResult:
    """Shrink ``model``, check it is untouched and the predictions are the same."""
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    result = shrink(model, **kwargs)
    assert model.get_config() == config
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert max_diff(model, result.model, x) <= ATOL_EXACT
    return result


# --------------------------------------------------------------------------- Dense


def test_lenet_300_100_dead_units_removed_and_constant_folded(mnist_test: np.ndarray) -> None:
    model = models.lenet_300_100(seed=3)
    randomize(model, seed=3)
    rng = np.random.default_rng(3)
    fc1 = rng.choice(300, 120, replace=False)
    fc2 = rng.choice(100, 30, replace=False)
    kill(model.get_layer("fc1"), fc1)
    kill(model.get_layer("fc2"), fc2)
    # Dead units with a bias: relu(0.7) = 0.7 is folded into fc2's bias, relu(-0.3) = 0.
    kill(model.get_layer("fc1"), fc1[:2], [0.7, -0.3])
    kill(model.get_layer("output"), [4])  # the output layer keeps its units

    result = check(model, mnist_test)

    assert isinstance(result.model, keras.Sequential)
    assert result.removed == {"fc1": (180, 300), "fc2": (70, 100), "output": (10, 10)}
    assert result.model.get_layer("fc1").kernel.shape == (784, 180)
    assert result.model.get_layer("fc2").kernel.shape == (180, 70)
    assert result.model.get_layer("output").kernel.shape == (70, 10)
    assert result.params_after == 784 * 180 + 180 + 180 * 70 + 70 + 70 * 10 + 10
    # The folded 0.7 shows in fc2's bias.
    fc2_bias = model.get_layer("fc2").bias.numpy()
    kept = np.setdiff1d(np.arange(100), fc2)
    w_row = model.get_layer("fc2").kernel.numpy()[fc1[0], kept]
    np.testing.assert_allclose(
        result.model.get_layer("fc2").bias.numpy(), fc2_bias[kept] + 0.7 * w_row, atol=1e-6
    )


def mlp(activation: str = "relu", use_bias: bool = True, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation=activation, use_bias=use_bias, name="h1"),
            keras.layers.Dense(6, activation=activation, use_bias=use_bias, name="h2"),
            keras.layers.Dense(3, use_bias=use_bias, name="out"),
        ]
    )
    randomize(model, seed)
    return model


def random_x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N_SMALL, *shape)).astype(np.float32)


def test_sigmoid_dead_unit_is_a_constant_folded_into_the_next_bias() -> None:
    model = mlp("sigmoid")
    kill(model.get_layer("h1"), [2, 5])  # sigmoid(0) = 0.5, not 0
    result = check(model, random_x((5,)))
    assert result.removed["h1"] == (6, 8)


def test_folding_a_nonzero_constant_gives_a_bias_to_a_layer_without_one() -> None:
    model = mlp("sigmoid", use_bias=False)
    kill(model.get_layer("h1"), [0])
    result = check(model, random_x((5,)))
    assert result.removed["h1"] == (7, 8)
    assert result.model.get_layer("h2").bias is not None
    assert result.model.get_layer("out").bias is None


def test_unused_unit_is_removed_too() -> None:
    model = mlp()
    kernel = model.get_layer("h2").kernel.numpy()
    kernel[3, :] = 0  # h1 unit 3 is alive, but nobody reads it
    model.get_layer("h2").kernel.assign(kernel)
    result = check(model, random_x((5,)))
    assert result.removed["h1"] == (7, 8)


def test_atol_treats_tiny_weights_as_zero() -> None:
    model = mlp()
    layer = model.get_layer("h1")
    kernel = layer.kernel.numpy()
    kernel[:, 1] = 1e-9
    layer.kernel.assign(kernel)
    kill(layer, [], 0.0)
    bias = layer.bias.numpy()
    bias[1] = 0.0
    layer.bias.assign(bias)
    assert shrink(model).removed["h1"] == (8, 8)
    result = shrink(model, atol=1e-6)
    assert result.removed["h1"] == (7, 8)
    assert max_diff(model, result.model, random_x((5,))) <= 1e-6


def test_a_layer_keeps_one_unit_when_all_are_dead() -> None:
    model = mlp()
    kill(model.get_layer("h2"), list(range(6)), 0.25)
    result = check(model, random_x((5,)))
    assert result.removed["h2"] == (1, 6)
    # h2 is constant, so nobody needs h1 either: all of h1 but one unit goes.
    assert result.removed["h1"] == (1, 8)


@settings(max_examples=8, deadline=None)
@given(
    dead1=st.sets(st.integers(0, 7), max_size=8),
    dead2=st.sets(st.integers(0, 5), max_size=6),
    bias=st.floats(-1, 1),
)
def test_random_dead_sets_keep_predictions(dead1: set[int], dead2: set[int], bias: float) -> None:
    model = mlp("tanh", seed=1)
    kill(model.get_layer("h1"), sorted(dead1), bias)
    kill(model.get_layer("h2"), sorted(dead2), -bias)
    result = check(model, random_x((5,)))
    kept2 = max(6 - len(dead2), 1)
    assert result.removed["h2"] == (kept2, 6)
    if len(dead2) < 6:
        assert result.removed["h1"] == (max(8 - len(dead1), 1), 8)


# --------------------------------------------------------------------------- Conv


def conv_bn(second_padding: str) -> keras.Model:
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Conv2D(6, 3, padding=second_padding, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(10, name="out"),
        ]
    )
    randomize(model, 4)
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    # Channel 1 after its dead filter: a positive constant that survives the relu;
    # channels 5 and 6: negative ones, which the relu turns into 0.
    beta[[1, 5, 6]], mean[[1, 5, 6]] = [1.0, -3.0, -3.0], 0.0
    bn.set_weights([gamma, beta, mean, var])
    kill(model.get_layer("conv1"), [1, 5, 6], [0.2, -0.1, 0.0])
    kill(model.get_layer("conv2"), [0, 2])
    return model


def test_conv_bn_relu_conv_dead_filters_removed(mnist_test: np.ndarray) -> None:
    model = conv_bn("valid")
    result = check(model, mnist_test[:N_SMALL])
    assert result.removed == {"conv1": (5, 8), "conv2": (4, 6), "out": (10, 10)}
    small = result.model
    assert [w.shape for w in small.get_layer("bn").get_weights()] == [(5,)] * 4
    assert small.get_layer("conv2").kernel.shape == (3, 3, 5, 4)


def test_same_padding_keeps_a_nonzero_constant_channel(mnist_test: np.ndarray) -> None:
    # Zero padding would show the constant of channel 1 as 0 on the border:
    # only the channels whose constant is 0 (5 and 6 after the relu) can go.
    result = check(conv_bn("same"), mnist_test[:N_SMALL])
    assert result.removed["conv1"] == (6, 8)


def test_one_by_one_same_convolution_folds_a_nonzero_constant() -> None:
    keras.utils.set_random_seed(12)
    model = keras.Sequential(
        [
            keras.Input((7, 7, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Conv2D(3, 1, padding="same", name="pointwise"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="out"),
        ]
    )
    randomize(model, 12)
    kill(model.get_layer("conv"), [0, 2], [0.5, 0.0])  # 1x1 "same" adds no padding
    result = check(model, random_x((7, 7, 2)))
    assert result.removed["conv"] == (2, 4)


def test_lenet5_dead_filters_and_units(mnist_test: np.ndarray) -> None:
    model = models.lenet5(seed=5)
    randomize(model, 5)
    rng = np.random.default_rng(5)
    # conv1 is linear: a dead filter is its bias everywhere, folded into conv2 (valid).
    kill(model.get_layer("conv1"), [0, 3, 7, 11, 19], [0.3, 0.0, -0.2, 0.0, 0.1])
    conv2 = rng.choice(50, 15, replace=False)
    kill(model.get_layer("conv2"), conv2, rng.normal(0, 0.2, 15).tolist())
    kill(model.get_layer("fc1"), rng.choice(500, 200, replace=False))

    result = check(model, mnist_test)

    assert result.removed == {
        "conv1": (15, 20),
        "conv2": (35, 50),
        "fc1": (300, 500),
        "output": (10, 10),
    }
    small = result.model
    assert small.get_layer("conv2").kernel.shape == (5, 5, 15, 35)
    assert small.get_layer("fc1").kernel.shape == (4 * 4 * 35, 300)
    assert result.params_after == (25 * 15 + 15) + (25 * 15 * 35 + 35) + (560 * 300 + 300) + (
        300 * 10 + 10
    )
    assert result.flops_after == 24 * 24 * 25 * 15 + 8 * 8 * 25 * 15 * 35 + 560 * 300 + 3000


# --------------------------------------------------------------------------- branches


def residual() -> keras.Model:
    keras.utils.set_random_seed(6)
    inputs = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", name="b")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 3, name="c")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(5, name="out")(x)
    model = keras.Model(inputs, outputs, name="residual")
    randomize(model, 6)
    return model


def test_residual_add_removes_only_channels_dead_in_every_branch() -> None:
    model = residual()
    # a feeds b through "same" padding: its dead filters need a zero constant.
    kill(model.get_layer("a"), [1, 2, 4], [0.0, 0.0, -1.0])
    # b's dead filters may have any bias: add -> relu -> c ("valid") folds it.
    kill(model.get_layer("b"), [1, 4, 5], [0.4, -0.2, 0.3])
    result = check(model, random_x((12, 12, 3)))
    # 1 and 4 are dead in both branches; 2 (only in a) and 5 (only in b) stay.
    assert result.removed == {"a": (6, 8), "b": (6, 8), "c": (4, 4), "out": (5, 5)}
    assert result.model.get_layer("b").kernel.shape == (3, 3, 6, 6)
    assert result.model.get_layer("c").kernel.shape == (3, 3, 6, 4)


def test_concatenate_offsets_channels() -> None:
    keras.utils.set_random_seed(7)
    inputs = keras.Input((10, 10, 2))
    p = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="p")(inputs)
    q = keras.layers.Conv2D(4, 1, activation="relu", name="q")(inputs)
    x = keras.layers.Concatenate(name="concat")([p, q])
    x = keras.layers.Conv2D(5, 3, name="r")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    model = keras.Model(inputs, outputs)
    randomize(model, 7)
    kill(model.get_layer("p"), [0, 3], [0.0, 0.5])
    kill(model.get_layer("q"), [1], [0.25])

    result = check(model, random_x((10, 10, 2)))

    assert result.removed == {"p": (4, 6), "q": (3, 4), "r": (5, 5), "out": (3, 3)}
    assert result.model.get_layer("r").kernel.shape == (3, 3, 7, 5)
    assert not isinstance(result.model, keras.Sequential)


def test_reshape_keeping_channels_last() -> None:
    keras.utils.set_random_seed(8)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Reshape((4, 16), name="rows"),  # 4 rows of 4 positions x 4 channels
            keras.layers.Dense(3, name="per_row"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="out"),
        ]
    )
    randomize(model, 8)
    kill(model.get_layer("conv"), [2], 0.6)
    result = check(model, random_x((6, 6, 1)))
    assert result.removed["conv"] == (3, 4)
    assert result.model.get_layer("rows").output_shape == (None, 4, 12)


# --------------------------------------------------------------------------- counts


def small_model() -> keras.Model:
    keras.utils.set_random_seed(9)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, activation="relu", name="fc"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    randomize(model, 9)
    return model


def test_params_and_flops_against_hand_counts() -> None:
    model = small_model()
    # conv 3*3*1*4 + 4, flatten 4*4*4 = 64, fc 64*5 + 5, out 5*2 + 2
    assert model.count_params() == 40 + 325 + 12
    # conv: 4x4 positions * 3*3*1*4; fc 64*5; out 5*2
    assert count_flops(model) == 16 * 36 + 320 + 10
    kill(model.get_layer("conv"), [1], 0.5)
    kill(model.get_layer("fc"), [2])

    result = check(model, random_x((6, 6, 1)))

    assert result.removed == {"conv": (3, 4), "fc": (4, 5), "out": (2, 2)}
    assert (result.params_before, result.params_after) == (377, (27 + 3) + (48 * 4 + 4) + 10)
    assert (result.flops_before, result.flops_after) == (906, 16 * 27 + 48 * 4 + 8)
    text = str(result)
    for expected in ("conv", "fc", "20.0%", "377 -> 236", "906 -> 632"):
        assert expected in text


def test_count_flops_of_other_convolutions() -> None:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2),  # 6x6 * 3*3*2*2
            keras.layers.SeparableConv2D(3, 3),  # 4x4 * (3*3*4*1 + 1*1*4*3)
            keras.layers.Conv2DTranspose(2, 3),  # input 4x4 * 3*3*2*3
            keras.layers.Conv2D(4, 3, groups=2),  # 4x4 * 3*3*1*4
        ]
    )
    assert count_flops(model) == 36 * 36 + 16 * 48 + 16 * 54 + 16 * 36


# --------------------------------------------------------------------------- errors


def test_pruning_wrappers_must_be_stripped_first() -> None:
    pruned = tfmot.sparsity.keras.prune_low_magnitude(mlp())
    with pytest.raises(ValueError, match="strip it first with tfstatprune.strip_pruning"):
        shrink(pruned)


def test_subclassed_model_is_refused() -> None:
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="subclassed"):
        shrink(model)
    with pytest.raises(TypeError, match="subclassed"):
        count_flops(model)


def test_sequential_without_input_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="input shape"):
        shrink(keras.Sequential([keras.layers.Dense(2)]))


def test_bad_atol() -> None:
    with pytest.raises(ValueError, match="atol"):
        shrink(mlp(), atol=-1.0)


def with_layer_norm() -> keras.Model:
    keras.utils.set_random_seed(10)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="relu", name="h1"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def test_unsupported_layer_between_pruned_layers_is_named() -> None:
    model = with_layer_norm()
    kill(model.get_layer("h1"), [0, 1])
    with pytest.raises(ValueError, match="'norm' \\(LayerNormalization\\)") as error:
        shrink(model)
    assert "['h1']" in str(error.value)
    assert "Supported between pruned layers" in str(error.value)


def test_unsupported_layer_without_dead_units_is_fine() -> None:
    model = with_layer_norm()
    result = check(model, random_x((5,)))
    assert result.removed == {"h1": (8, 8), "out": (3, 3)}


def test_non_elementwise_layer_after_the_last_prunable_layer_keeps_its_units() -> None:
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu", name="h1"),
            keras.layers.Dense(4, name="logits"),
            keras.layers.Softmax(name="softmax"),
        ]
    )
    kill(model.get_layer("h1"), [2])
    kill(model.get_layer("logits"), [1])
    result = check(model, random_x((5,)))
    assert result.removed == {"h1": (5, 6), "logits": (4, 4)}
