"""Structured pruning across layers: consistent masks, APoZ, network slimming, reports."""

from __future__ import annotations

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.keras.graph import batch_norm_after, output_layers, trace_units
from tfstatprune.stats import collect_statistics

ATOL_EXACT = 1e-5


def dead_units(kernel: np.ndarray) -> np.ndarray:
    return ~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)


def dead_rows(kernel: np.ndarray) -> np.ndarray:
    """Input rows (axis -2) that are all zero."""
    moved = np.moveaxis(kernel, -2, 0)
    return ~moved.reshape(moved.shape[0], -1).any(axis=1)


@pytest.fixture
def conv_bn_model():
    """conv1 -> BN -> ReLU -> conv2 -> max pool -> Flatten -> Dense, random BN statistics."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(6, 3, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights(
        [
            rng.uniform(0.2, 2.0, 6),
            rng.normal(0, 0.3, 6),
            rng.normal(0, 0.3, 6),
            rng.uniform(0.5, 2.0, 6),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    x = rng.random((40, 8, 8, 1), np.float32)
    y = rng.integers(0, 3, 40)
    return model, x, y


# --------------------------------------------------------------------------- consistency


def test_dense_chain_dead_units_zero_exactly_the_next_rows(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.5, "wald_diag", granularity="unit", verbose=0)
    k1, k2, k3 = (pruned.get_layer(n).kernel.numpy() for n in ("fc1", "fc2", "output"))
    dead1, dead2 = dead_units(k1), dead_units(k2)
    assert dead1.sum() == 6 and dead2.sum() == 4
    np.testing.assert_array_equal(dead_rows(k2), dead1)  # rows of fc2 reading dead fc1 units
    np.testing.assert_array_equal(dead_rows(k3), dead2)  # the output layer (not pruned) too
    assert not dead_units(k3).any()  # ... keeps all its classes
    assert np.all(k2[np.ix_(~dead1, ~dead2)] != 0)  # nothing else is touched
    report = {row.layer: row for row in tsp.sparsity_report(pruned).layers}
    assert report["fc2"].upstream == 6 * (8 - 4)
    assert report["fc2"].own == 4 * (12 + 1)  # dead columns and their biases
    assert report["fc2"].zeros == report["fc2"].own + report["fc2"].upstream
    assert report["output"] == ("output", 8 * 3 + 3, 4 * 3, 0, 4 * 3, 3, 0)
    assert report["fc1"].upstream == 0 and report["fc1"].dead_units == 6
    assert "upstream" in str(tsp.sparsity_report(pruned))


def test_conv_bn_relu_conv_flatten_dense_rows_follow_the_channels(conv_bn_model):
    model, x, y = conv_bn_model
    pruned = tsp.prune_once(
        model, (x, y), 0.5, "magnitude", granularity="filter", layers=["conv1", "conv2"]
    )
    k1, k2, k3 = (pruned.get_layer(n).kernel.numpy() for n in ("conv1", "conv2", "out"))
    dead1, dead2 = dead_units(k1), dead_units(k2)
    assert dead1.sum() == 3 and dead2.sum() == 2
    np.testing.assert_array_equal(dead_rows(k2), dead1)  # kernel[:, :, c, :] through BN, ReLU
    channel = np.arange(k3.shape[0]) % 4  # Flatten: row p * C + c reads channel c
    np.testing.assert_array_equal(dead_rows(k3), dead2[channel])
    report = {row.layer: row for row in tsp.sparsity_report(pruned).layers}
    assert report["conv2"].upstream == 3 * 9 * 2  # 3 dead channels x 3x3 taps x 2 live filters
    assert report["out"].upstream == int(dead2[channel].sum()) * 3


def test_add_and_concatenate_reconcile_their_inputs():
    inputs = keras.Input((5,))
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(inputs)
    added = keras.layers.Dense(2, name="after_add")(keras.layers.Add()([a, b]))
    joined = keras.layers.Dense(2, name="after_concat")(keras.layers.Concatenate()([a, b]))
    skip = keras.layers.Dense(2, name="after_skip")(keras.layers.Add()([a, inputs[:, :4]]))
    model = keras.Model(inputs, [added, joined, skip])
    graph = trace_units(model)
    rows = graph.dead_rows({"a": [True, True, False, False], "b": [True, False, True, False]})
    assert rows["after_add"].tolist() == [True, False, False, False]  # dead in both only
    assert rows["after_concat"].tolist() == [True, True, False, False, True, False, True, False]
    assert not rows["after_skip"].any()  # a model input feeds every channel
    assert sorted(output_layers(model)) == ["after_add", "after_concat", "after_skip"]


def test_inside_fit_wrapped_consumers_get_the_rows(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model, (x, y), "magnitude", tsp.OneShotSparsity(0.5, step=1), granularity="unit"
    )
    wrapped = [layer.layer.name for layer in pruned.layers if hasattr(layer, "pruning_vars")]
    assert wrapped == ["fc1", "fc2"]  # the output layer keeps its classes by default
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=1, batch_size=20, callbacks=tsp.callbacks(verbose=0), verbose=0)
    fc1, fc2 = (pruned.get_layer(f"prune_statistically_{n}") for n in ("fc1", "fc2"))
    dead1 = dead_units(fc1.current_masks()[fc1.layer.kernel.name])
    mask2 = fc2.current_masks()[fc2.layer.kernel.name]
    assert dead1.sum() == 6
    np.testing.assert_array_equal(dead_rows(mask2), dead1)
    assert dead_units(mask2).sum() == 4
    report = {row.layer: row for row in tsp.sparsity_report(pruned).layers}
    assert report["fc2"].upstream == 6 * 4
    final = tsp.strip_pruning(pruned)
    assert np.all(final.get_layer("fc2").kernel.numpy()[dead1] == 0)


def test_output_layers_are_unit_pruned_only_when_listed():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="only")])
    with pytest.raises(ValueError, match="output layers"):
        tsp.prune_once(model, None, 0.5, "magnitude", granularity="unit", verbose=0)
    pruned = tsp.prune_once(
        model, None, 0.5, "magnitude", granularity="unit", layers=["only"], verbose=0
    )
    assert dead_units(pruned.get_layer("only").kernel.numpy()).sum() == 2


@pytest.mark.parametrize("fixture", ["tiny_mlp_data", "conv_bn_model"])
def test_shrink_after_unit_pruning_keeps_predictions(fixture, request):
    model, x, y = request.getfixturevalue(fixture)
    pruned = tsp.prune_once(model, (x, y), 0.5, "wald_diag", granularity="unit", verbose=0)
    result = tsp.shrink(pruned)
    diff = np.abs(pruned(x, training=False) - result.model(x, training=False)).max()
    assert diff <= ATOL_EXACT
    assert result.params_after < result.params_before
    for name, (kept, total) in result.removed.items():
        if name not in output_layers(model):
            assert kept == total - round(0.5 * total), name


# --------------------------------------------------------------------------- APoZ


def test_apoz_against_a_hand_count():
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")
    logits = keras.layers.Dense(2, name="out")(hidden(inputs))  # linear: APoZ is meaningless
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.compile(loss="sparse_categorical_crossentropy")
    hidden.set_weights([np.array([[1.0, -1.0, 0.5], [1.0, 1.0, -2.0]]), np.array([0.0, 0.0, 0.1])])
    x = np.array([[1.0, 1.0], [-1.0, -1.0], [2.0, -1.0], [0.5, 0.0]], np.float32)
    y = np.array([0, 1, 0, 1])
    z = x @ hidden.kernel.numpy() + hidden.bias.numpy()
    expected = (np.maximum(z, 0) == 0).mean(axis=0)  # [0.5, 0.5, 0.25]
    stats = collect_statistics(
        model, (x, y), weights=[hidden.kernel], activations=True, batch_size=3, verbose=0
    )
    counts = stats.weights[hidden.kernel.name].activations
    np.testing.assert_allclose(counts.apoz, expected)
    assert counts.count == 4 and counts.activation == "relu"
    got = tsp.scores(model, (x, y), "apoz", granularity="unit", layers=["hidden"], verbose=0)
    np.testing.assert_allclose(got[hidden.kernel.name][0], 1 - expected)
    with pytest.raises(ValueError, match="granularity='unit'"):
        tsp.scores(model, (x, y), "apoz", layers=["hidden"], verbose=0)
    with pytest.raises(ValueError, match="linear"):
        tsp.scores(model, (x, y), "apoz", granularity="unit", layers=["out"], verbose=0)


def test_apoz_of_a_convolution_averages_examples_and_positions(conv_bn_model):
    model, x, y = conv_bn_model
    conv2 = model.get_layer("conv2")
    stats = collect_statistics(model, (x, y), weights=[conv2.kernel], activations=True, verbose=0)
    feature = keras.Model(model.input, conv2.output)(x).numpy()  # [40, 4, 4, 4] after relu
    expected = (feature == 0).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(stats.weights[conv2.kernel.name].activations.apoz, expected)


# --------------------------------------------------------------------------- network slimming


def test_bn_scale_scores_filters_by_the_following_gamma(conv_bn_model):
    model, x, y = conv_bn_model
    gamma = model.get_layer("bn").gamma.numpy()
    assert batch_norm_after(model, "conv1").name == "bn"
    assert batch_norm_after(model, "conv2") is None
    got = tsp.scores(model, None, "bn_scale", granularity="filter", layers=["conv1"], verbose=0)
    kernel = model.get_layer("conv1").kernel
    np.testing.assert_allclose(got[kernel.name][0, 0, 0], np.abs(gamma))
    pruned = tsp.prune_once(
        model, None, 0.5, "bn_scale", granularity="filter", layers=["conv1"], verbose=0
    )
    dead = dead_units(pruned.get_layer("conv1").kernel.numpy())
    np.testing.assert_array_equal(np.flatnonzero(dead), np.sort(np.argsort(np.abs(gamma))[:3]))
    with pytest.raises(ValueError, match="no BatchNormalization follows layer 'conv2'"):
        tsp.prune_once(model, None, 0.5, "bn_scale", granularity="filter", verbose=0)
    with pytest.raises(ValueError, match="granularity='unit'"):
        tsp.prune_once(model, None, 0.5, "bn_scale", layers=["conv1"], verbose=0)


# --------------------------------------------------------------------------- group Wald


def test_group_wald_of_a_unit_is_the_sum_of_its_members(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    kwargs = {"layers": ["fc1"], "verbose": 0}
    per_weight = tsp.scores(model, (x, y), "wald_diag", prune_bias=True, **kwargs)
    per_unit = tsp.scores(model, (x, y), "wald_diag", granularity="unit", **kwargs)
    layer = model.get_layer("fc1")
    members = per_weight[layer.kernel.name].sum(axis=0) + per_weight[layer.bias.name]
    np.testing.assert_allclose(per_unit[layer.kernel.name][0], members, rtol=1e-10)
