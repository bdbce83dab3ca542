"""L1 and group lasso: values by hand, gradients vs finite differences, serialization;
pruning by threshold."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.regularizers import L1, GroupLasso, group_squares

FD_STEP = 1e-6
FD_TOL = 1e-6  # central differences in float64


def _finite_difference_gradient(penalty, w: np.ndarray) -> np.ndarray:
    grad = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[index] = FD_STEP
        up = float(penalty(tf.constant(w + step)))
        down = float(penalty(tf.constant(w - step)))
        grad[index] = (up - down) / (2 * FD_STEP)
    return grad


def _gradient(penalty, w: np.ndarray) -> np.ndarray:
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        value = penalty(v)
    return tape.gradient(value, v).numpy()


@pytest.mark.parametrize(
    "penalty, shape",
    [
        (L1(0.3), (4, 3)),
        (GroupLasso("unit", 0.7), (4, 3)),
        (GroupLasso("filter", 0.7), (2, 2, 3, 4)),
        (GroupLasso("channel", 0.5), (2, 2, 3, 4)),
        (GroupLasso((1, 4), 0.5), (6, 3)),
        (GroupLasso("weight", 0.5), (3, 2)),
    ],
    ids=["l1", "unit", "filter", "channel", "block", "weight"],
)
def test_penalty_gradients_match_finite_differences(penalty, shape):
    w = np.random.default_rng(0).normal(size=shape) + 0.1  # no entry or group at 0
    np.testing.assert_allclose(
        _gradient(penalty, w), _finite_difference_gradient(penalty, w), atol=FD_TOL
    )


def test_penalty_values_by_hand():
    w = np.array([[3.0, 0.0, 1.0], [4.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(L1(0.5)(w)) == pytest.approx(0.5 * 11)
    assert float(GroupLasso("unit", 2.0)(w)) == pytest.approx(2 * (5 + 2 + np.sqrt(2)))
    assert float(GroupLasso("channel", 1.0)(w)) == pytest.approx(np.sqrt(10) + np.sqrt(17) + 2)
    # (1, 4) blocks: rows 0-3 of each column (a Dense kernel's 4 consecutive inputs).
    assert float(GroupLasso((1, 4), 1.0)(w)) == pytest.approx(5 + 2 + np.sqrt(2))
    conv = np.zeros((3, 3, 2, 4))
    conv[..., 1] = 1.0
    np.testing.assert_allclose(group_squares(conv, "filter").numpy(), [0, 18, 0, 0])
    with pytest.raises(ValueError, match="rank"):
        GroupLasso("unit")(np.ones(3))
    with pytest.raises(ValueError, match="granularity"):
        GroupLasso("rows")
    with pytest.raises(ValueError, match="strength"):
        L1(-1.0)


def test_group_lasso_at_a_zero_group_has_zero_not_nan_derivatives():
    w = tf.Variable(np.array([[0.0, 1.0], [0.0, 2.0]]))
    penalty = GroupLasso("unit", 1.0)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = penalty(w)
        grad = inner.gradient(value, w)
        total = tf.reduce_sum(grad)
    hess = outer.gradient(total, w)
    np.testing.assert_allclose(grad.numpy()[:, 0], 0.0)
    np.testing.assert_allclose(grad.numpy()[:, 1], np.array([1.0, 2.0]) / np.sqrt(5))
    assert np.all(np.isfinite(hess.numpy()))


@pytest.mark.parametrize(
    "penalty",
    [L1(0.25), GroupLasso("filter", 0.5), GroupLasso((1, 16), 1e-3)],
    ids=["l1", "group-lasso-filter", "group-lasso-1x16"],
)
def test_penalties_round_trip_their_config_and_registration(penalty):
    again = type(penalty).from_config(penalty.get_config())
    assert again.get_config() == penalty.get_config()
    serialized = keras.regularizers.serialize(penalty)
    restored = keras.regularizers.deserialize(serialized)
    assert type(restored) is type(penalty) and restored.get_config() == penalty.get_config()
    w = np.random.default_rng(1).normal(size=(32, 3))
    assert float(restored(w)) == pytest.approx(float(penalty(w)))


def test_group_lasso_trains_units_to_zero_and_threshold_prunes_them():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(128, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                16, activation="relu", name="fc1", kernel_regularizer=GroupLasso("unit", 0.05)
            ),
            keras.layers.Dense(2, activation="softmax", name="output"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.2), "sparse_categorical_crossentropy")
    before = np.linalg.norm(model.get_layer("fc1").kernel.numpy(), axis=0)
    model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    after = np.linalg.norm(model.get_layer("fc1").kernel.numpy(), axis=0)
    threshold = 0.05
    assert np.sum(after < threshold) >= 4 and np.sum(before < threshold) == 0
    pruned = tsp.prune_by_threshold(model, threshold, "unit")
    kernel = pruned.get_layer("fc1").kernel.numpy()
    dead = after < threshold
    assert np.all(kernel[:, dead] == 0) and np.all(pruned.get_layer("fc1").bias.numpy()[dead] == 0)
    np.testing.assert_array_equal(kernel[:, ~dead], model.get_layer("fc1").kernel.numpy()[:, ~dead])
    # the output layer's units are classes: not pruned unless listed
    np.testing.assert_array_equal(pruned.get_weights()[2], model.get_weights()[2])


def test_prune_by_threshold_on_single_weights():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="fc")])
    model.set_weights([np.array([[0.5, 1e-4], [-2.0, -1e-3]]), np.array([1e-5, 1.0])])
    pruned = tsp.prune_by_threshold(model, 1e-3)
    f32 = np.float32
    np.testing.assert_array_equal(pruned.get_weights()[0], f32([[0.5, 0.0], [-2.0, -1e-3]]))
    np.testing.assert_array_equal(pruned.get_weights()[1], f32([1e-5, 1.0]))  # biases stay
    with_bias = tsp.prune_by_threshold(model, 1e-3, prune_bias=True)
    np.testing.assert_array_equal(with_bias.get_weights()[1], f32([0.0, 1.0]))
    assert model.get_weights()[0][0, 1] == pytest.approx(1e-4)  # the original is untouched
    with pytest.raises(ValueError, match="threshold"):
        tsp.prune_by_threshold(model, -1.0)
