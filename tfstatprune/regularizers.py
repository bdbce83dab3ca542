"""Sparsity-inducing penalties: L1 and group lasso (structured sparsity, Wen et al. 2016).

Penalty-based pruning (seed 002): a penalty in the loss pushes weights -- or
whole groups of weights, a Dense unit's column, a convolution's filter -- to
zero during training; afterwards what is (nearly) zero is pruned, by a
threshold (:func:`tfstatprune.prune_by_threshold`) or to a target sparsity
(``tfstatprune.prune_once(model, None, s, "magnitude", granularity=...)``).

- :class:`L1`: ``strength * sum_k |w_k|`` (the lasso).
- :class:`GroupLasso`: ``strength * sum_g ||w_g||_2`` over the groups of
  :mod:`tfstatprune.granularity` (Yuan & Lin 2006; Wen, Wu, Wang, Chen & Li
  2016, "Learning Structured Sparsity in Deep Neural Networks", eqs. 1-2,
  filter-wise and channel-wise: ``sum_n ||W[..., n]||_2`` and
  ``sum_c ||W[..., c, :]||_2``).

Both are Keras regularizers for a layer's ``kernel_regularizer``, registered
under the package ``"tfstatprune"`` and serializable (``get_config`` /
``from_config``), so a model using them saves and loads.

At ``w_g = 0`` the group norm has no gradient; the one used is 0 (a
subgradient), never NaN, and so is the second derivative the statistics
engine takes of a regularizer.

Example:
    >>> import numpy as np
    >>> penalty = GroupLasso("unit", strength=0.5)
    >>> float(penalty(np.array([[3.0, 0.0], [4.0, 1.0]])))
    3.0
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.granularity import Granularity, check_granularity

__all__ = ["L1", "GroupLasso", "group_squares"]

PACKAGE = "tfstatprune"
DEFAULT_STRENGTH = 1e-4


def _check_strength(strength: float) -> float:
    strength = float(strength)
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    return strength


def group_squares(weights: tf.Tensor, granularity: Granularity) -> tf.Tensor:
    """``sum_(k in g) w_k^2`` for every group g of a kernel (flat, one entry per group).

    Groups as in :func:`tfstatprune.granularity.group_ids`: ``"weight"`` each
    entry, ``"unit"``/``"filter"`` the last axis, ``"channel"`` the one before,
    ``(1, b)`` ``b`` consecutive rows of one column of a Dense kernel.

    Raises:
      ValueError: a granularity that does not fit the kernel's shape.
    """
    granularity = check_granularity(granularity)
    squares = tf.square(tf.convert_to_tensor(weights))
    rank = squares.shape.rank
    if granularity == "weight":
        return tf.reshape(squares, [-1])
    if rank is None or rank < 2:
        raise ValueError(f"granularity {granularity!r} needs a kernel of rank >= 2, got {rank}")
    if granularity in ("unit", "filter"):
        return tf.reduce_sum(squares, axis=list(range(rank - 1)))
    if granularity == "channel":
        return tf.reduce_sum(squares, axis=[a for a in range(rank) if a != rank - 2])
    block = granularity[1]
    if rank != 2:
        raise ValueError(f"block granularity {granularity} applies to Dense kernels [in, out]")
    rows, cols = squares.shape
    padded = tf.pad(squares, [[0, -rows % block], [0, 0]])
    return tf.reshape(tf.reduce_sum(tf.reshape(padded, [-1, block, cols]), axis=1), [-1])


def _safe_sqrt(squares: tf.Tensor) -> tf.Tensor:
    """``sqrt`` with gradient 0 (not inf or NaN) where the argument is 0."""
    positive = squares > 0
    safe = tf.where(positive, squares, tf.ones_like(squares))
    return tf.where(positive, tf.sqrt(safe), tf.zeros_like(squares))


@keras.utils.register_keras_serializable(package=PACKAGE)
class L1(keras.regularizers.Regularizer):
    """The lasso: ``strength * sum_k |w_k|``; pushes single weights to zero.

    Args:
      strength: the penalty's factor.

    Example:
      >>> round(float(L1(0.1)(tf.constant([1.0, -2.0]))), 6)
      0.3
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH) -> None:
        self.strength = _check_strength(strength)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        return tf.cast(self.strength, x.dtype) * tf.reduce_sum(tf.abs(x))

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


@keras.utils.register_keras_serializable(package=PACKAGE)
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso: ``strength * sum_g ||w_g||_2``; pushes whole groups to zero together.

    Args:
      granularity: the groups: ``"unit"`` (a Dense kernel's column),
        ``"filter"`` (a convolution's output filter), ``"channel"`` (an input
        channel / input row), a block ``(1, 4)`` / ``(1, 16)``, or
        ``"weight"`` (every entry alone: the lasso).
      strength: the penalty's factor.

    Example:
      >>> layer = keras.layers.Dense(8, kernel_regularizer=GroupLasso("unit", 1e-3))

    Reference:
      Wen, Wu, Wang, Chen & Li 2016, "Learning Structured Sparsity in Deep
      Neural Networks" (the structured sparsity learning penalty).
    """

    def __init__(
        self, granularity: Granularity = "unit", strength: float = DEFAULT_STRENGTH
    ) -> None:
        self.granularity = check_granularity(granularity)
        self.strength = _check_strength(strength)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        norms = _safe_sqrt(group_squares(x, self.granularity))
        return tf.cast(self.strength, x.dtype) * tf.reduce_sum(norms)

    def get_config(self) -> dict[str, Any]:
        granularity = self.granularity
        return {
            "granularity": list(granularity) if isinstance(granularity, tuple) else granularity,
            "strength": self.strength,
        }
