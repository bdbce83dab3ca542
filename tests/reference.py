"""Independent references: float64 copies of models and per-example gradient loops."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras


def _to_float64(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            k: ("float64" if k == "dtype" and v == "float32" else _to_float64(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_to_float64(v) for v in config]
    return config


def float64_copy(model: keras.Model) -> keras.Model:
    """The same architecture and weights, computing in float64."""
    config = _to_float64(model.get_config())
    copy = model.__class__.from_config(config)
    copy.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return copy


def per_example_gradients(
    model: keras.Model, x: np.ndarray, y: np.ndarray, loss: Any = None
) -> list[np.ndarray]:
    """``[n, *w.shape]`` per-example gradients of every trainable weight, in float64."""
    m64 = float64_copy(model)
    loss = loss or keras.losses.SparseCategoricalCrossentropy(reduction="none")
    grads = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(y[i : i + 1], m64(x[i : i + 1].astype(np.float64))))
        grads.append([g.numpy() for g in tape.gradient(value, m64.trainable_weights)])
    return [np.stack([g[j] for g in grads]) for j in range(len(m64.trainable_weights))]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 when both are 0)."""
    scale = np.abs(want).max()
    return float(np.abs(got - want).max() / scale) if scale > 0 else float(np.abs(got).max())
