"""``BatchNormalization`` in inference mode: ``z = gamma * x_hat + beta``."""

from __future__ import annotations

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.rules.base import BatchMoments, GradientRule, moments_of, size_of

__all__ = ["BatchNormalizationRule"]


class BatchNormalizationRule(GradientRule):
    """``BatchNormalization`` with its moving statistics (the collector calls ``training=False``).

    ``x_hat = (x - moving_mean) / sqrt(moving_variance + epsilon)`` and
    ``z = gamma * x_hat + beta`` (the layer has no activation: z is its
    output). Shapes: ``inputs`` and ``delta`` ``[B, ...]``, gamma and beta the
    shape of the normalised axes. Per example, summed over the other
    non-batch axes: ``g_i(gamma) = sum delta_i * x_hat_i``,
    ``g_i(beta) = sum delta_i``. In training mode the batch statistics couple
    the examples and there is no per-example gradient to speak of.
    """

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        found = {}
        if layer.scale:
            found["gamma"] = layer.gamma
        if layer.center:
            found["beta"] = layer.beta
        return found

    def unsupported(self, layer: keras.layers.Layer) -> str | None:
        if getattr(layer, "virtual_batch_size", None) is not None:
            return "virtual_batch_size is set"
        return None

    def per_example_floats(
        self,
        layer: keras.layers.Layer,
        input_shape: tf.TensorShape,
        output_shape: tf.TensorShape,
    ) -> int:
        return size_of(input_shape)  # x_hat * delta

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        rank = delta.shape.rank
        axes = [a % rank for a in layer.axis]
        summed = [a for a in range(1, rank) if a not in axes]
        broadcast = [delta.shape[a] if a in axes else 1 for a in range(rank)]
        out: dict[str, BatchMoments] = {}
        if layer.scale:
            mean = tf.reshape(tf.cast(layer.moving_mean, delta.dtype), broadcast)
            variance = tf.reshape(tf.cast(layer.moving_variance, delta.dtype), broadcast)
            x_hat = (tf.cast(inputs, delta.dtype) - mean) * tf.math.rsqrt(variance + layer.epsilon)
            out["gamma"] = moments_of(self._per_parameter(delta * x_hat, summed, layer.gamma))
        if layer.center:
            out["beta"] = moments_of(self._per_parameter(delta, summed, layer.beta))
        return out

    @staticmethod
    def _per_parameter(values: tf.Tensor, summed: list[int], weight: tf.Variable) -> tf.Tensor:
        """Sum ``values [B, ...]`` over ``summed`` axes into ``[B, *weight.shape]``."""
        reduced = tf.reduce_sum(values, summed) if summed else values
        return tf.reshape(reduced, [tf.shape(values)[0], *weight.shape])
