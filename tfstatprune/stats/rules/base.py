"""The rule interface and the maths the layer rules share.

A rule turns what one forward/backward pass of the *summed* per-example loss
gives -- the layer's inputs ``a`` and the per-example gradients ``delta`` at its
pre-activation output ``z`` (``delta_i = d m_i / d z_i``, exact because example
i's loss depends on z only through z_i) -- into, for each of the layer's
weights, the batch sum and sum of squares of the per-example gradients
(BackPACK's first- and second-moment extensions, Dangel et al. 2020).

Scaling: ``delta`` is the gradient of the *sum* of the per-example losses, so
the moments are sums over examples of ``s_i = d m_i / d theta``; a training
loss that is a mean over a batch of size B has per-example gradients ``s_i / B``
(divide sums by B and sums of squares by B**2 to compare).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["BatchMoments", "GradientRule", "moments_of", "outer_moments", "size_of"]


class BatchMoments(NamedTuple):
    """Batch sum and sum of squares of per-example gradients of one weight (float32)."""

    sum: tf.Tensor
    sumsq: tf.Tensor


def moments_of(per_example: tf.Tensor) -> BatchMoments:
    """Moments from materialised per-example gradients of shape ``[B, *weight.shape]``."""
    return BatchMoments(tf.reduce_sum(per_example, 0), tf.reduce_sum(tf.square(per_example), 0))


def outer_moments(a: tf.Tensor, delta: tf.Tensor) -> BatchMoments:
    """Moments of the per-example outer products ``g_i = a_i^T delta_i``, never materialised.

    Shapes: ``a`` ``[B, I]``, ``delta`` ``[B, O]``, results ``[I, O]``:
    ``sum_i g_i = a^T delta`` and ``sum_i g_i ** 2 = (a ** 2)^T (delta ** 2)``,
    one matmul each.
    """
    return BatchMoments(
        tf.matmul(a, delta, transpose_a=True),
        tf.matmul(tf.square(a), tf.square(delta), transpose_a=True),
    )


def size_of(shape: tf.TensorShape | tuple | list) -> int:
    """Number of elements of a static per-example shape (unknown sizes count as 1)."""
    dims = tf.TensorShape(shape).as_list()
    return int(np.prod([1 if d is None else d for d in dims], dtype=np.int64))


class GradientRule:
    """Base class: per-example gradient moments of a layer from ``(inputs, delta)``.

    Subclasses say which weights they cover (:meth:`weights`), may decline a
    layer configuration (:meth:`unsupported`; the collector then uses the
    generic path for that layer), say how many floats per example they
    materialise (:meth:`per_example_floats`, for the memory bound), and
    compute the moments (:meth:`moments`). The collector captures ``inputs``
    (the first positional argument of the layer's ``call``) and ``z``, the
    output before the layer's ``activation`` when it has one, else the output
    itself.
    """

    def weights(self, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        """The weights this rule covers, by role (``"kernel"``, ``"bias"``, ...)."""
        raise NotImplementedError

    def unsupported(self, layer: keras.layers.Layer) -> str | None:
        """Why this rule cannot handle ``layer``'s configuration, or None if it can."""
        return None

    def per_example_floats(
        self,
        layer: keras.layers.Layer,
        input_shape: tf.TensorShape,
        output_shape: tf.TensorShape,
    ) -> int:
        """Floats per example the rule holds beyond the captured ``inputs``, ``z``, ``delta``.

        ``input_shape`` and ``output_shape`` are per-example shapes (no batch
        axis). A rule that materialises per-example gradients counts them here.
        """
        return 0

    def moments(
        self, layer: keras.layers.Layer, inputs: tf.Tensor, delta: tf.Tensor
    ) -> dict[str, BatchMoments]:
        """Moments per role, from inputs ``[B, ...]`` and ``delta`` of z's shape."""
        raise NotImplementedError

    def role_moments(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        delta: tf.Tensor,
        roles: frozenset[str],
    ) -> dict[str, BatchMoments]:
        """The moments of ``roles`` only (the curvature passes that need no kernel).

        The default computes :meth:`moments` and keeps ``roles``; a rule whose
        kernel moments cost most overrides it.
        """
        return {r: m for r, m in self.moments(layer, inputs, delta).items() if r in roles}

    def kronecker_shapes(self, layer: keras.layers.Layer) -> tuple[int, int] | None:
        """``(input factor size, output factor size)`` if the rule gives Kronecker factors.

        See :mod:`tfstatprune.stats.kronecker`; None (the default) when it does not.
        """
        return None

    def kronecker_inputs(
        self,
        layer: keras.layers.Layer,
        inputs: tf.Tensor,
        outputs: tf.Tensor,
        weights: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Batch sum of the input factor ``a~^T a~``, examples weighted by ``weights`` ``[B]``.

        ``outputs`` is the layer's z (for its shape).
        """
        raise NotImplementedError

    def kronecker_outputs(self, layer: keras.layers.Layer, delta: tf.Tensor) -> tf.Tensor:
        """Batch sum of the output factor ``delta^T delta``."""
        raise NotImplementedError
