"""Structured pruning through mobile blocks: depthwise convolutions, squeeze-excite,
hard-swish as TF ops, ZeroPadding, Rescaling; the channel registry; cost counts.

The reference for every shrunk model is the zero-masked model it came from:
predictions equal within ``ATOL_EXACT`` (random weights: shrink is exact
whatever the weights are); removed counts are checked against the filters
killed by hand.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from test_shrink import kill, randomize

import tfstatprune as tsp
from tfstatprune import models
from tfstatprune._keras import keras
from tfstatprune.keras.graph import trace_units
from tfstatprune.shrink import shrink
from tfstatprune.structure import (
    ChannelRule,
    channel_graph,
    count_flops,
    nonzero_flops,
    register_channel_rule,
    require_rule,
    rule_for,
    unregister_channel_rule,
)

ATOL_EXACT = 1e-5
SLOW = not os.environ.get("TFSTATPRUNE_SLOW_TESTS")


def _hard_swish(x):
    """hard-swish as MobileNetV3 writes it: TF-op layers of add, relu6 and multiply."""
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def inverted_residual(expand: int = 24, squeeze: int = 6) -> keras.Model:
    """A MobileNetV2/V3-style block with squeeze-excite and hard-swish."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    block_in = x
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.Conv2D(expand, 1, name="expand")(x)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = _hard_swish(x)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(squeeze, 1, activation="relu", name="se_reduce")(s)
    s = keras.layers.Conv2D(expand, 1, activation="hard_sigmoid", name="se_expand")(s)
    x = keras.layers.Multiply()([x, s])
    x = keras.layers.Conv2D(8, 1, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Add()([x, block_in])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


def kws_model() -> keras.Model:
    """A Conv1D keyword-spotting model with DepthwiseConv1D blocks (49 frames x 10 MFCC)."""
    inputs = keras.Input((49, 10))
    x = keras.layers.Conv1D(16, 3, padding="same", name="c0")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    for k in range(2):
        x = keras.layers.DepthwiseConv1D(3, padding="same", name=f"dw{k}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv1D(16, 1, name=f"pw{k}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(12, name="head")(x))


def max_diff(a: keras.Model, b: keras.Model, x: np.ndarray) -> float:
    return float(np.abs(a(x, training=False) - b(x, training=False)).max())


def _images(n: int = 16, shape=(12, 12, 3)) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, *shape)).astype("float32")


# ----------------------------------------------------------------------------- shrink


def test_a_dead_expand_filter_removes_its_depthwise_channel_and_excitation_unit():
    model = inverted_residual()
    kill(model.get_layer("expand"), [1, 5, 6])
    result = shrink(model)
    x = _images()
    assert max_diff(model, result.model, x) <= ATOL_EXACT
    assert result.removed["expand"] == (21, 24)
    # squeeze-excite's Multiply couples the excitation's units to the channels
    assert result.removed["se_expand"] == (21, 24)
    assert result.model.get_layer("dw").depthwise_kernel.shape == (3, 3, 21, 1)
    assert result.model.get_layer("se_reduce").kernel.shape == (1, 1, 21, 6)
    assert result.model.get_layer("project").kernel.shape == (1, 1, 21, 8)
    assert result.model.get_layer("dw_bn").gamma.shape == (21,)
    # stem and project feed the residual Add and the head: coupled, alive
    assert result.removed["stem"] == (8, 8)
    assert result.params_after < result.params_before
    assert result.flops_after < result.flops_before


def test_shrink_stays_exact_when_normalization_makes_the_dead_channels_constant():
    model = inverted_residual()
    randomize(model, seed=1)
    kill(model.get_layer("expand"), [0, 2])
    result = shrink(model)
    assert max_diff(model, result.model, _images()) <= ATOL_EXACT


def test_hard_swish_tf_ops_fold_constants():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="a")(inputs)
    x = _hard_swish(x + 1.0)
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(x))
    kill(model.get_layer("a"), [1])  # outputs hard_swish(0 + 1) = 2/3, folded into b's bias
    result = shrink(model)
    assert result.removed["a"] == (2, 3)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    assert max_diff(model, result.model, x) <= ATOL_EXACT


def test_kws_depthwise_conv1d_model_prunes_by_filter_and_shrinks():
    model = kws_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 49, 10)).astype("float32")
    y = rng.integers(0, 12, 64)
    pruned = tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity="filter", verbose=0)
    final = tsp.strip_pruning(pruned)
    result = tsp.shrink(final)
    assert max_diff(final, result.model, x[:16]) <= ATOL_EXACT
    assert result.removed["c0"][0] < 16
    assert result.model.get_layer("dw0").depthwise_kernel.shape[-2] == result.removed["c0"][0]
    assert result.params_after < result.params_before


def test_a_depth_multiplier_that_cannot_be_reconciled_names_the_layer():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 1, name="a")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="b")(x))
    kill(model.get_layer("a"), [1])
    with pytest.raises(ValueError, match="'dw2' \\(DepthwiseConv2D\\).*depth_multiplier=2"):
        shrink(model)


# ----------------------------------------------------------------------------- consistency


def test_dead_filters_reach_the_projection_through_the_depthwise_convolution():
    model = kws_model()
    rows = trace_units(model).dead_rows({"c0": np.isin(np.arange(16), [3, 7])})
    assert np.flatnonzero(rows["pw0"]).tolist() == [3, 7]
    assert not rows["pw1"].any()


def test_filter_granularity_leaves_depthwise_layers_to_their_input():
    model = kws_model()
    chosen = tsp.keras.consistency.choose_layers(model, None, "filter")
    assert [layer.name for layer in chosen] == ["c0", "pw0", "pw1"]


def test_coupled_channels_share_one_group():
    model = inverted_residual()
    graph = channel_graph(model, "test")
    root = graph.roots()
    expand, se_expand = graph.units_of["expand"], graph.units_of["se_expand"]
    assert (root[expand] == root[se_expand]).all()
    assert len(set(root[expand].tolist())) == 24


# ----------------------------------------------------------------------------- registry and cost


def test_registry_looks_up_the_mro_and_refuses_silent_overwrites():
    class MyDense(keras.layers.Dense):
        pass

    assert rule_for(MyDense(2)).name == "producer"
    with pytest.raises(ValueError, match="already has the channel rule"):
        register_channel_rule(keras.layers.Dense, ChannelRule())

    class Custom(keras.layers.Layer):
        pass

    assert rule_for(Custom()).name == "wall"
    with pytest.raises(KeyError, match="no channel rule"):
        require_rule(Custom())
    register_channel_rule(Custom, rule_for(keras.layers.Dropout(0.1)))
    try:
        assert require_rule(Custom()).name == "channelwise"
    finally:
        unregister_channel_rule(Custom)


def test_flops_count_depthwise_kernels_and_nonzero_flops_by_hand():
    model = kws_model()
    by_hand = 49 * 3 * 10 * 16 + 2 * (49 * 3 * 16 + 49 * 16 * 16) + 16 * 12
    assert count_flops(model) == by_hand
    lenet = models.lenet5()
    kernel = lenet.layers[0].kernel
    keep = np.random.default_rng(0).uniform(size=kernel.shape) < 0.5
    kernel.assign(kernel.numpy() * keep)
    positions = int(np.prod(lenet.layers[0].output_shape[1:-1]))  # the conv's output pixels
    removed = int(kernel.shape.num_elements() - np.count_nonzero(kernel.numpy())) * positions
    assert removed > 0 and nonzero_flops(lenet) == count_flops(lenet) - removed


# ----------------------------------------------------------------------------- stock models


@pytest.mark.skipif(SLOW, reason="about a minute each; set TFSTATPRUNE_SLOW_TESTS=1 to run")
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small"])
def test_stock_mobilenets_prune_by_filter_and_shrink(name):
    import tf_keras

    options = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(tf_keras.applications, name)(
        weights=None, input_shape=(96, 96, 3), classes=10, classifier_activation=None, **options
    )
    x = np.random.default_rng(0).uniform(0, 255, (64, 96, 96, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 64)
    pruned = tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity="filter", verbose=0)
    final = tsp.strip_pruning(pruned)
    result = tsp.shrink(final)
    scale = float(np.abs(final(x[:8], training=False)).max())
    # logits of a random-init, half-pruned net are tiny: the bound is relative to them
    assert max_diff(final, result.model, x[:8]) <= ATOL_EXACT * min(scale, 1.0)
    assert result.params_after < result.params_before
