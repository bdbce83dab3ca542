"""``Dense``: ``z = a @ W + b``."""

from __future__ import annotations

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.kronecker import input_factor, output_factor
from tfstatprune.stats.rules.base import (
    BatchMoments,
    GradientRule,
    moments_of,
    outer_moments,
    size_of,
)

__all__ = ["DenseRule"]


class DenseRule(GradientRule):
    """``Dense``: ``z = a @ W + b``.

    Shapes: ``a`` is ``[B, I]`` (or ``[B, T..., I]``), ``delta`` is ``[B, O]``
    (or ``[B, T..., O]``). Per example ``g_i(W) = a_i^T delta_i`` and
    ``g_i(b) = sum_t delta_it``. For rank-2 inputs
    ``sum_i g_i(W) ** 2 = (a ** 2)^T (delta ** 2)`` at the cost of one matmul;
    for higher ranks the per-example outer products are summed over T first
    (``[B, I, O]`` floats per chunk).
    """

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        found = {"kernel": layer.kernel}
        if layer.use_bias:
            found["bias"] = layer.bias
        return found

    def per_example_floats(
        self,
        layer: keras.layers.Layer,
        input_shape: tf.TensorShape,
        output_shape: tf.TensorShape,
    ) -> int:
        if tf.TensorShape(input_shape).rank == 1:
            return 0
        return size_of(layer.kernel.shape)

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        a = tf.cast(inputs, delta.dtype)
        out: dict[str, BatchMoments] = {}
        if a.shape.rank == 2:
            out["kernel"] = outer_moments(a, delta)
        else:
            a3 = tf.reshape(a, [tf.shape(a)[0], -1, tf.shape(a)[-1]])
            d3 = tf.reshape(delta, [tf.shape(delta)[0], -1, tf.shape(delta)[-1]])
            out["kernel"] = moments_of(tf.einsum("bti,bto->bio", a3, d3))
        if layer.use_bias:
            out["bias"] = _bias_moments(delta)
        return out

    def role_moments(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        delta: tf.Tensor,
        roles: frozenset[str],
    ) -> dict[str, BatchMoments]:
        if "kernel" in roles or not layer.use_bias or "bias" not in roles:
            return super().role_moments(layer, inputs, delta, roles)
        return {"bias": _bias_moments(delta)}

    def kronecker_shapes(self, layer: keras.layers.Layer) -> tuple[int, int]:
        inputs, units = layer.kernel.shape
        return int(inputs) + int(layer.use_bias), int(units)

    def kronecker_inputs(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        outputs: tf.Tensor,
        weights: tf.Tensor | None = None,
    ) -> tf.Tensor:
        return input_factor(inputs, layer.use_bias, weights)

    def kronecker_outputs(self, layer: keras.layers.Layer, delta: tf.Tensor) -> tf.Tensor:
        return output_factor(delta)


def _bias_moments(delta: tf.Tensor) -> BatchMoments:
    """Moments of ``g_i(b) = sum_t delta_it`` from ``delta`` ``[B, O]`` or ``[B, T..., O]``."""
    if delta.shape.rank == 2:
        return moments_of(delta)
    return moments_of(
        tf.reduce_sum(tf.reshape(delta, [tf.shape(delta)[0], -1, delta.shape[-1]]), 1)
    )
