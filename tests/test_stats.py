"""Statistics vs a brute-force float64 per-example GradientTape loop."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import RTOL_FLOAT32
from reference import per_example_gradients, relative_error

from tfstatprune._keras import keras
from tfstatprune.stats import WeightStatistics, collect_statistics


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed_form", "generic"])
def test_moments_match_float64_per_example_loop(tiny_mlp_data, closed_form):
    model, x, y = tiny_mlp_data
    got = collect_statistics(model, (x, y), batch_size=16, closed_form=closed_form, verbose=0)
    want = per_example_gradients(model, x, y)
    assert got.count == len(x)
    for w, g in zip(model.trainable_weights, want, strict=True):
        stats = got.weights[w.name]
        assert relative_error(stats.sum, g.sum(0)) < RTOL_FLOAT32, w.name
        assert relative_error(stats.sumsq, (g**2).sum(0)) < RTOL_FLOAT32, w.name
        assert relative_error(stats.variance, g.var(0)) < 1e-4, w.name
    assert got.generic == ([] if closed_form else [w.name for w in model.trainable_weights])


def test_chunking_and_dataset_input_do_not_change_the_result(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    whole = collect_statistics(model, (x, y), batch_size=60, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    chunked = collect_statistics(model, ds, batch_size=11, verbose=0)
    for name, stats in whole.weights.items():
        assert relative_error(chunked.weights[name].sumsq, stats.sumsq) < RTOL_FLOAT32


def test_unbatched_dataset_and_max_examples(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    ds = tf.data.Dataset.from_tensor_slices((x, y))  # single examples
    got = collect_statistics(model, ds, max_examples=25, batch_size=10, verbose=0)
    want = collect_statistics(model, (x[:25], y[:25]), verbose=0)
    assert got.count == 25
    for name, stats in want.weights.items():
        assert relative_error(got.weights[name].sum, stats.sum) < RTOL_FLOAT32


def test_regularizer_adds_its_curvature(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    got = collect_statistics(model, (x, y), verbose=0).weights
    fc1 = model.get_layer("fc1").kernel.name
    np.testing.assert_allclose(got[fc1].regularizer_curvature, 2e-3, rtol=1e-6)
    assert np.all(got[model.get_layer("fc2").kernel.name].regularizer_curvature == 0)


def test_sampled_ggn_estimates_the_exact_ggn_of_softmax_regression():
    # For softmax regression p = softmax(x W), the GGN diagonal of the
    # cross-entropy is mean_i x_ij^2 p_ik (1 - p_ik): an analytic reference.
    rng = np.random.default_rng(1)
    n, d, k = 3000, 5, 3
    x = (rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d)).astype(np.float32)
    w = rng.normal(scale=0.7, size=(d, k)).astype(np.float32)
    model = keras.Sequential([keras.layers.Dense(k, use_bias=False, activation="softmax")])
    model.build((None, d))
    model.set_weights([w])
    model.compile(loss="sparse_categorical_crossentropy")
    y = rng.integers(0, k, n)
    got = collect_statistics(model, (x, y), hessian="ggn", seed=3, verbose=0)
    stats = got.weights[model.layers[0].kernel.name]
    logits = x.astype(np.float64) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    exact = (x.astype(np.float64) ** 2).T @ (p * (1 - p)) / n
    assert relative_error(stats.ggn, exact) < 0.1
    assert np.corrcoef(stats.ggn.ravel(), exact.ravel())[0, 1] > 0.95


def test_merge_adds_in_float64():
    a = WeightStatistics(2, np.ones(3), np.ones(3) * 2)
    b = WeightStatistics(3, np.ones(3) * 4, np.ones(3) * 8)
    m = a.merge(b)
    assert m.count == 5
    np.testing.assert_array_equal(m.mean, np.ones(3))
    np.testing.assert_array_equal(m.variance, np.ones(3))
    with pytest.raises(ValueError, match="shapes"):
        a.merge(WeightStatistics(1, np.ones(2), np.ones(2)))


def test_errors_name_the_problem(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    with pytest.raises(ValueError, match="empty"):
        collect_statistics(model, (x[:0], y[:0]), verbose=0)
    with pytest.raises(ValueError, match="expects"):
        collect_statistics(model, (x.reshape(60, 16), y), verbose=0)
    with pytest.raises(ValueError, match="per example"):
        collect_statistics(
            model,
            (x, y),
            loss=lambda t, p: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(t, p)),
            verbose=0,
        )
    with pytest.raises(ValueError, match="hessian must be one of"):
        collect_statistics(model, (x, y), hessian="exact", verbose=0)
    with pytest.raises(ValueError, match="cross-entropy"):
        collect_statistics(model, (x, y), loss="mse", hessian="ggn", verbose=0)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        collect_statistics(model, [x, y], verbose=0)
    bare = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(ValueError, match="compile the model"):
        collect_statistics(bare, (np.zeros((2, 3)), np.zeros(2)), verbose=0)


def test_a_recompiled_loss_is_used(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    first = collect_statistics(model, (x, y), verbose=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy())
    model.compile("adam", lambda t, p: 2.0 * keras.losses.sparse_categorical_crossentropy(t, p))
    doubled = collect_statistics(model, (x, y), verbose=0)
    name = model.get_layer("fc2").kernel.name
    np.testing.assert_allclose(
        doubled.weights[name].sumsq, 4 * first.weights[name].sumsq, rtol=1e-5
    )


def test_layer_statistics_are_a_map_of_their_own(tiny_mlp_data):
    """Per-layer records in ``CollectedStatistics.layers``, checked in float64 numpy.

    The input factor of a Dense layer is ``X~^T X~`` of its inputs with a column
    of ones (bias); the zero count of a ReLU layer is the number of zeros of its
    output per unit. The kernel's record refers to the same layer record.
    """
    model, x, y = tiny_mlp_data
    got = collect_statistics(model, (x, y), kronecker=True, activations=True, verbose=0)
    assert set(got.layers) == {"fc1", "fc2", "output"}
    inputs = np.asarray(x, np.float64).reshape(len(x), -1)
    for name in ("fc1", "fc2"):
        layer = model.get_layer(name)
        a = np.hstack([inputs, np.ones((len(x), 1))])
        assert relative_error(got.layers[name].kronecker.inputs, a.T @ a) < RTOL_FLOAT32
        kernel, bias = (w.numpy().astype(np.float64) for w in layer.weights)
        z = inputs @ kernel + bias
        inputs = np.tanh(z) if name == "fc1" else np.maximum(z, 0.0)
        if name == "fc2":
            np.testing.assert_array_equal(got.layers[name].activations.zeros, (z <= 0).sum(0))
        assert got.weights[f"{name}/kernel:0"].layer is got.layers[name]
        assert got.weights[f"{name}/kernel:0"].kronecker is got.layers[name].kronecker
        assert got.weights[f"{name}/bias:0"].layer is None
    plain = collect_statistics(model, (x, y), verbose=0)
    assert plain.layers == {}
    assert all(st.kronecker is None and st.activations is None for st in plain.weights.values())
