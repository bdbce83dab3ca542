"""Per-example (row) checks inside the traced statistics step.

An example is *non-finite* when its loss, a probed layer's input or output
gradient, or a generic per-example gradient holds NaN/Inf, or when the bound
``(sum |a_i| * sum |delta_i|)^2`` on its squared per-example gradient overflows
float32. The step zeroes such rows before anything is summed (see
:mod:`tfstatprune.stats.collector`).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["finite_rows", "nonfinite_rows", "times", "unbounded_rows", "zero_rows"]


def times(values: tf.Tensor, weights: tf.Tensor | None) -> tf.Tensor:
    """``values * weights``, or ``values`` when there are no weights."""
    return values if weights is None else values * tf.cast(weights, values.dtype)


def _row_size(t: tf.Tensor) -> tf.Tensor:
    """``[B]``: ``sum |t_i|`` per example (NaN/Inf when a row holds NaN/Inf)."""
    return tf.reduce_sum(tf.abs(tf.cast(t, tf.float32)), list(range(1, t.shape.rank)))


def nonfinite_rows(t: tf.Tensor) -> tf.Tensor:
    """``[B]`` bool: the examples (rows) of ``t`` holding NaN/Inf, or too large to square."""
    return ~tf.math.is_finite(tf.square(_row_size(t)))


def unbounded_rows(inputs: Any, delta: tf.Tensor) -> tf.Tensor:
    """``[B]`` bool: a layer's examples with NaN/Inf inputs or output gradients, or
    whose per-example weight gradients may overflow float32 when squared.

    One reduction per tensor: every entry of a Dense/Conv/normalization
    per-example gradient, and of the squares the rules form, is bounded by
    ``(sum |a_i| * sum |delta_i|)^2`` (integer inputs, embedding ids, count 1),
    and a NaN or Inf anywhere in a row makes that bound NaN or Inf.
    """
    sizes = [_row_size(t) for t in tf.nest.flatten(inputs) if t.dtype.is_floating]
    size = _row_size(delta)
    scale = tf.add_n(sizes) if sizes else tf.ones_like(size)
    return ~tf.math.is_finite(tf.square(scale) * tf.square(size))


def zero_rows(structure: Any, bad: tf.Tensor) -> Any:
    """``structure`` with the float tensors' rows of the ``bad`` examples set to 0.

    Nothing is copied when no example is bad (the common case).
    """

    def zero(t: tf.Tensor) -> tf.Tensor:
        if not t.dtype.is_floating:
            return t
        rows = tf.reshape(bad, [-1] + [1] * (t.shape.rank - 1))
        return tf.where(rows, tf.zeros_like(t), t)

    return tf.cond(
        tf.reduce_any(bad),
        lambda: tf.nest.map_structure(zero, structure),
        lambda: tf.nest.map_structure(tf.identity, structure),
    )


def finite_rows(y_pred: tf.Tensor) -> tf.Tensor:
    """``y_pred`` with non-finite examples set to 0, to sample labels from (in range)."""
    return zero_rows(y_pred, nonfinite_rows(y_pred))
