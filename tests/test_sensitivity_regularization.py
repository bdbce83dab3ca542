"""Sensitivity-driven regularization: the update rule vs a hand computation, thresholding."""

from __future__ import annotations

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras


def _softmax_regression(rng, n=50, d=4, k=3, sensitive=False):
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k, activation="softmax")])
    if sensitive:  # a large constant input, one class, near-uniform outputs: S > 1 on row 0
        x[:, 0], y[:] = 10.0, 0
        model.set_weights([0.05 * rng.normal(size=(d, k)), np.zeros(k)])
    return model, x, y


def _hand_sensitivity(model, x, y):
    """``|mean_i d p_(i, y_i) / dW|`` for a softmax regression, in float64."""
    w, b = (v.astype(np.float64) for v in model.get_weights())
    z = x.astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dp_dz = p[np.arange(len(y)), y][:, None] * (np.eye(p.shape[1])[y] - p)
    return np.abs((x[:, :, None] * dp_dz[:, None, :]).mean(0)), w, b


@pytest.mark.parametrize("sensitive", [False, True], ids=["insensitive", "some-sensitive"])
def test_one_step_applies_eq9_to_the_kernel(sensitive):
    rng = np.random.default_rng(0)
    model, x, y = _softmax_regression(rng, sensitive=sensitive)
    strength = 0.1
    s, w, b = _hand_sensitivity(model, x, y)
    if sensitive:
        assert (s > 1).any() and (s < 1).any()  # both sides of the bound are exercised
    callback = tsp.SensitivityRegularization((x, y), strength, batch_size=len(x))
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_batch_end(0)
    want = w - strength * w * np.maximum(0.0, 1.0 - s)  # eqs. 8-9 after the optimizer's step
    np.testing.assert_allclose(model.get_weights()[0], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.get_weights()[1], b.astype(np.float32))  # bias untouched


def test_threshold_prunes_at_epoch_end_and_keeps_zeros():
    rng = np.random.default_rng(1)
    model, x, y = _softmax_regression(rng, n=64)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    kernel = model.layers[0].kernel
    threshold = float(np.quantile(np.abs(kernel.numpy()), 0.4))
    callback = tsp.SensitivityRegularization((x, y), 0.05, threshold=threshold, batch_size=16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    zeros = kernel.numpy() == 0
    assert callback.sparsity == [pytest.approx(zeros.mean())] and zeros.mean() >= 0.4
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert np.all(kernel.numpy()[zeros] == 0)  # pruned weights stay pruned
    assert len(callback.sparsity) == 2 and callback.sparsity[1] >= callback.sparsity[0]


def test_arguments_are_checked():
    data = (np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="strength"):
        tsp.SensitivityRegularization(data, -1.0)
    with pytest.raises(ValueError, match="threshold"):
        tsp.SensitivityRegularization(data, threshold=-1.0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callback = tsp.SensitivityRegularization(data, layers=["nothing"])
    callback.set_model(model)
    with pytest.raises(ValueError, match="nothing"):
        callback.on_train_begin()
