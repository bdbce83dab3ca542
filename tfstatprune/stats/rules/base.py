"""Closed-form per-example gradient moments, one rule per layer type.

A rule turns what one forward/backward pass of the *summed* per-example loss
gives -- the layer's inputs ``a`` and the per-example gradients ``delta`` at its
pre-activation output ``z`` (``delta_i = d m_i / d z_i``, exact because example
i's loss depends on z only through z_i) -- into, for each of the layer's
weights, the batch sum and sum of squares of the per-example gradients. No
per-example gradient of the full weight shape is ever materialised for rank-2
inputs (BackPACK's trick, Dangel et al. 2020).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["BatchMoments", "GradientRule", "DenseRule"]


class BatchMoments(NamedTuple):
    """Batch sum and sum of squares of per-example gradients of one weight (float32)."""

    sum: tf.Tensor
    sumsq: tf.Tensor


def moments_of(per_example: tf.Tensor) -> BatchMoments:
    """Moments from materialised per-example gradients of shape ``[B, *weight.shape]``."""
    return BatchMoments(tf.reduce_sum(per_example, 0), tf.reduce_sum(tf.square(per_example), 0))


class GradientRule:
    """Base class: per-example gradient moments of a layer from ``(inputs, delta)``.

    Subclasses say which weights they cover (:meth:`weights`) and compute their
    moments (:meth:`moments`). The collector captures ``inputs`` (the first
    positional argument of the layer's ``call``) and ``z``, the output before
    the layer's ``activation`` when it has one, else the output itself.
    """

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        """The weights this rule covers, by role (``"kernel"``, ``"bias"``, ...)."""
        raise NotImplementedError

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        """Moments per role, from inputs ``[B, ...]`` and ``delta`` of z's shape."""
        raise NotImplementedError


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

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        a = tf.cast(inputs, delta.dtype)
        out: dict[str, BatchMoments] = {}
        if a.shape.rank == 2:
            out["kernel"] = BatchMoments(
                tf.matmul(a, delta, transpose_a=True),
                tf.matmul(tf.square(a), tf.square(delta), transpose_a=True),
            )
            bias_per_example = delta
        else:
            a3 = tf.reshape(a, [tf.shape(a)[0], -1, tf.shape(a)[-1]])
            d3 = tf.reshape(delta, [tf.shape(delta)[0], -1, tf.shape(delta)[-1]])
            out["kernel"] = moments_of(tf.einsum("bti,bto->bio", a3, d3))
            bias_per_example = tf.reduce_sum(d3, 1)
        if layer.use_bias:
            out["bias"] = moments_of(bias_per_example)
        return out
