"""Kronecker-factored second moments of a Dense (or Conv) layer's per-example gradients.

For ``z = a W + b`` the per-example gradient of the kernel is the outer product
``s_i = a_i^T delta_i``, so its second moment ``E[vec(s) vec(s)^T]`` is
approximated by ``E[a a^T] (x) E[delta delta^T]`` (K-FAC, Martens & Grosse 2015).
With the input augmented by a constant 1 (``a~ = [a, 1]``) the bias row joins
the kernel: the factors describe the ``[I + 1, O]`` matrix ``[W; b]``. A
convolution is a Dense layer on every patch; its factors (KFC, Grosse & Martens
2016) are built by :class:`tfstatprune.stats.rules.conv.ConvRule`.

Sums over examples, float64 on the host (divide by ``count`` for means):

- ``inputs``: ``sum_i a~_i a~_i^T``, ``[I(+1), I(+1)]`` -- also ``X^T X`` of
  layer-wise OBS (Dong et al. 2017);
- ``gradients``: ``sum_i delta_i delta_i^T``, ``[O, O]`` -- the output factor of
  the score covariance (true labels);
- ``curvature``: ``sum_i`` of the same with labels from the model
  (sampled, or exact over the classes) -- the output factor of the GGN.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["KroneckerFactors", "input_factor", "output_factor"]


class KroneckerFactors(NamedTuple):
    """Sums of the Kronecker factors of one Dense layer (see module docstring)."""

    count: int
    inputs: np.ndarray
    gradients: np.ndarray
    curvature: np.ndarray | None
    has_bias: bool

    def merge(self, other: KroneckerFactors) -> KroneckerFactors:
        """Combine two disjoint sets of examples (sums add, in float64)."""
        curvature = None
        if self.curvature is not None and other.curvature is not None:
            curvature = self.curvature + other.curvature
        return KroneckerFactors(
            self.count + other.count,
            self.inputs + other.inputs,
            self.gradients + other.gradients,
            curvature,
            self.has_bias,
        )


def input_factor(inputs: tf.Tensor, has_bias: bool, weights: tf.Tensor | None = None) -> tf.Tensor:
    """Batch sum ``a~^T a~`` for inputs ``[B, (T...,) I]`` (positions count as samples).

    ``weights`` (``[B]``, or None for all ones) weigh each example's rows, the
    constant 1 of the bias included: a padded example of weight 0 adds nothing.
    """
    a = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
    if has_bias:
        a = tf.concat([a, tf.ones_like(a[:, :1])], axis=1)
    if weights is None:
        return tf.matmul(a, a, transpose_a=True)
    w = tf.reshape(tf.cast(weights, a.dtype), [-1] + [1] * (inputs.shape.rank - 2))
    rows = tf.reshape(tf.broadcast_to(w, tf.shape(inputs)[:-1]), [-1, 1])
    return tf.matmul(a * rows, a, transpose_a=True)


def output_factor(delta: tf.Tensor) -> tf.Tensor:
    """Batch sum ``delta^T delta`` for deltas ``[B, (T...,) O]``."""
    d = tf.reshape(delta, [-1, tf.shape(delta)[-1]])
    return tf.matmul(d, d, transpose_a=True)
