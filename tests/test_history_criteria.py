"""Taylor, sensitivity and the training-history criteria vs hand computations.

References: float64 numpy formulas for a softmax regression (per-example
gradients in closed form), a manual GradientTape + SGD loop for the weight
history.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion, n2ps, sensitivity, taylor, weight_updates
from tfstatprune.granularity import group_ids
from tfstatprune.stats import WeightStatistics
from tfstatprune.stats.history import UpdateStatistics, variation_step

RTOL = 1e-4  # float32 statistics vs float64 references


def _softmax_regression(rng, n=120, d=5, k=3):
    """Dense(k, softmax) with a bias; data, and its float64 forward pass by hand."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(d, k)).astype(np.float32)
    b = rng.normal(scale=0.2, size=k).astype(np.float32)
    y = rng.integers(0, k, n)
    model = keras.Sequential(
        [keras.Input((d,)), keras.layers.Dense(k, activation="softmax", name="output")]
    )
    model.set_weights([w, b])
    model.compile(loss="sparse_categorical_crossentropy")
    z = x.astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return model, x, y, w.astype(np.float64), b.astype(np.float64), z, p


def test_taylor_by_hand_per_weight_and_per_unit():
    rng = np.random.default_rng(0)
    model, x, y, w, b, z, p = _softmax_regression(rng)
    delta = p - np.eye(3)[y]  # d loss_i / d z_i
    mean_grad_w = (x[:, :, None] * delta[:, None, :]).mean(0)
    mean_grad_b = delta.mean(0)
    layer = model.layers[0]

    got = tsp.scores(model, (x, y), "taylor", verbose=0, normalize=False)
    np.testing.assert_allclose(got[layer.kernel.name], np.abs(w * mean_grad_w), rtol=RTOL)

    # A unit: the paper's feature-map criterion |mean_i dC/dz_ij z_ij|, which equals
    # |sum over the unit's column and bias of theta * mean gradient|; then the
    # layer's L2 normalization.
    feature_map = np.abs((delta * z).mean(0))
    np.testing.assert_allclose(
        feature_map, np.abs((w * mean_grad_w).sum(0) + b * mean_grad_b), rtol=1e-10
    )
    units = tsp.scores(model, (x, y), "taylor", granularity="unit", layers=["output"], verbose=0)
    want = feature_map / np.linalg.norm(feature_map)
    np.testing.assert_allclose(units[layer.kernel.name][0], want, rtol=RTOL)
    np.testing.assert_allclose(units[layer.bias.name], want, rtol=RTOL)


def test_taylor_normalizes_and_handles_zero_scores():
    st = WeightStatistics(2, np.array([[2.0, 0.0], [4.0, 0.0]]), np.ones((2, 2)))
    theta = np.array([[3.0, 1.0], [1.0, 1.0]])  # |theta * gbar| = [[3, 0], [2, 0]]
    np.testing.assert_allclose(taylor(theta, st), np.array([[3, 0], [2, 0]]) / np.sqrt(13))
    assert np.all(taylor(theta, st._replace(sum=np.zeros((2, 2)))) == 0)
    grouping = group_ids(theta.shape, "unit")
    groups = get_criterion("taylor").group_scores([theta], [st], [grouping], normalize=False)
    np.testing.assert_allclose(groups, [5.0, 0.0])
    with pytest.raises(ValueError, match="gradient statistics"):
        taylor(theta, None)


def test_sensitivity_by_hand_on_softmax_regression():
    rng = np.random.default_rng(1)
    model, x, y, w, b, z, p = _softmax_regression(rng)
    # d p_(i, y_i) / d z_ik = p_iy (1[k = y_i] - p_ik)
    dp_dz = p[np.arange(len(y)), y][:, None] * (np.eye(3)[y] - p)
    s = np.abs((x[:, :, None] * dp_dz[:, None, :]).mean(0))
    kernel = model.layers[0].kernel.name
    got = tsp.scores(model, (x, y), "sensitivity", verbose=0)
    np.testing.assert_allclose(got[kernel], np.abs(w) * s, rtol=RTOL)
    alone = tsp.scores(model, (x, y), "sensitivity", verbose=0, weighted=False)
    np.testing.assert_allclose(alone[kernel], s, rtol=RTOL)
    # one-hot labels give the same output
    one_hot = tsp.scores(model, (x, np.eye(3)[y].astype(np.float32)), "sensitivity", verbose=0)
    np.testing.assert_allclose(one_hot[kernel], got[kernel], rtol=RTOL)
    st = WeightStatistics(2, np.array([1.0, -3.0]), np.ones(2))
    np.testing.assert_allclose(sensitivity(np.array([2.0, 0.0]), st), [1.0, 0.0])


def test_history_criteria_read_their_record_and_explain_what_is_missing():
    record = UpdateStatistics(4, np.array([0.5, 0.0]), np.array([1.0, 2.0]), np.array([0.1, 0.0]))
    theta = np.array([1.0, -2.0])
    np.testing.assert_array_equal(weight_updates(theta, record), [0.5, 0.0])
    np.testing.assert_array_equal(n2ps(theta, record), [0.1, 0.0])
    with pytest.raises(ValueError, match="WeightHistory"):
        weight_updates(theta, None)
    with pytest.raises(ValueError, match="WeightHistory"):
        n2ps(theta, WeightStatistics(2, np.zeros(2), np.zeros(2)))
    with pytest.raises(ValueError, match="no training step"):
        n2ps(theta, record._replace(steps=0))
    with pytest.raises(ValueError, match="shape"):
        n2ps(np.ones(3), record)
    with pytest.raises(ValueError, match="'variation'"):
        n2ps(theta, record._replace(variance=np.full(2, np.nan)))


def _tiny_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh", name="fc1"),
            keras.layers.Dense(3, activation="softmax", name="output"),
        ]
    )
    return model


def test_weight_history_records_what_a_manual_sgd_loop_does():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    batch, epochs, lr, window = 20, 2, 0.5, 4
    model = _tiny_classifier()
    initial = model.get_weights()

    # Manual loop: same data order, same optimizer, weights after every step.
    manual = _tiny_classifier()
    manual.set_weights(initial)
    optimizer = keras.optimizers.SGD(lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    trajectory = [[w.numpy().astype(np.float64) for w in manual.trainable_weights]]
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[start : start + batch], manual(x[start : start + batch]))
            grads = tape.gradient(loss, manual.trainable_weights)
            optimizer.apply_gradients(zip(grads, manual.trainable_weights, strict=True))
            trajectory.append([w.numpy().astype(np.float64) for w in manual.trainable_weights])

    windowed, plain = tsp.WeightHistory(window=window), tsp.WeightHistory()
    model.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    model.fit(
        x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[windowed, plain]
    )
    steps = epochs * len(x) // batch
    assert windowed.steps == plain.steps == steps
    for index, weight in enumerate(model.trainable_weights):
        values = np.stack([t[index] for t in trajectory])  # theta_0 .. theta_T
        np.testing.assert_allclose(weight.numpy(), values[-1], rtol=1e-5, atol=1e-7)
        abs_updates = np.abs(np.diff(values, axis=0)).sum(0)
        mean, variance = np.zeros_like(values[0]), np.zeros_like(values[0])
        for t in range(1, steps + 1):
            mean, variance = variation_step(mean, variance, values[t], t, window)
        got = windowed.statistics()[weight.name]
        np.testing.assert_allclose(got.abs_updates, abs_updates, rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(got.mean, mean, rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(got.variance, variance, rtol=1e-3, atol=1e-9)
        assert got.steps == steps and got.window == window
        everything = plain.statistics()[weight.name]  # no window: the plain variance
        np.testing.assert_allclose(everything.variance, values[1:].var(0), rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(everything.mean, values[1:].mean(0), rtol=RTOL, atol=1e-7)


def test_history_reaches_prune_once_and_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = _tiny_classifier()
    model.compile(keras.optimizers.SGD(0.3), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="WeightHistory"):
        tsp.prune_once(model, (x, y), 0.5, "weight_updates", verbose=0)
    history = tsp.WeightHistory(window=3, quantities=["updates"])
    with pytest.raises(ValueError, match="no training step|did not record"):
        tsp.prune_once(model, history, 0.5, "weight_updates", verbose=0)
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[history])
    pruned = tsp.prune_once(model, history, 0.5, "weight_updates", verbose=0)
    kernel = model.get_layer("fc1").kernel
    updates = history.statistics()[kernel.name].abs_updates
    kept = pruned.get_layer("fc1").kernel.numpy() != 0
    assert kept.sum() == kernel.shape.num_elements() // 2
    assert updates[kept].min() >= updates[~kept].max()
    with pytest.raises(ValueError, match="'variation'"):
        tsp.prune_once(model, history, 0.5, "n2ps", verbose=0)

    history.save(tmp_path / "history.npz")
    loaded = tsp.WeightHistory.load(tmp_path / "history.npz")
    assert loaded.steps == history.steps and loaded.window == 3
    for name, record in history.statistics().items():
        np.testing.assert_array_equal(loaded.statistics()[name].abs_updates, record.abs_updates)
    again = tsp.prune_once(tsp.copy_model(model), loaded, 0.5, "weight_updates", verbose=0)
    np.testing.assert_array_equal(again.get_weights()[0], pruned.get_weights()[0])
    with pytest.raises(ValueError, match="did not record"):
        loaded.statistics(["nothing:0"])


def test_history_criterion_prunes_during_fit_with_the_history_as_stats_data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = _tiny_classifier()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = tsp.WeightHistory(window=4)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[history])
    schedule = tsp.IterativeSparsity([0.5, 0.75], every=2)
    wrapped = tsp.prune_statistically(model, history, "n2ps", schedule)
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(
        x,
        y,
        batch_size=10,
        epochs=1,
        verbose=0,
        callbacks=[history, *tsp.callbacks(history, verbose=0)],
    )
    assert history.steps == 8
    final = tsp.strip_pruning(wrapped)
    assert np.mean(final.get_layer("fc1").kernel.numpy() == 0) == 0.75
