"""The network output whose gradient is the sensitivity of Tartaglione et al. (2018).

"Learning Sparse Neural Networks via Sensitivity-Driven Regularization"
(NeurIPS 2018), as the seed survey (004, sec. 1.1) writes it: the sensitivity
of the output ``y`` to a weight ``w`` is ``S(y, w) = sum_k alpha_k |dy_k / dw|``
(eq. 6), and the *specific* sensitivity takes ``alpha`` as the one-hot
encoding of the desired output ``y*`` (eq. 7): ``S = |dy_(y*) / dw|``, the
gradient of the true class's output.

:func:`true_class_output` is that output, one value per example, in the form of
a per-example loss ``(y_true, y_pred) -> [batch]``, so that the statistics
engine (:func:`tfstatprune.collect_statistics`) and the training-time
regularizer can take its gradient like any loss's.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["true_class_output"]


def true_class_output(y_true: Any, y_pred: tf.Tensor) -> tf.Tensor:
    """``y_pred[i, y*_i]`` for every example i: the model's output for the true class.

    ``y_true`` holds class indices (``[B]`` or ``[B, 1]``) or one-hot rows
    (``[B, C]``, as ``y_pred``). A single output (``[B, 1]``, a sigmoid) is the
    probability of class 1, so the true class's output is ``y`` or ``1 - y``.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.cast(y_true, y_pred.dtype)
    if y_pred.shape[-1] == 1:
        y_true = tf.reshape(y_true, tf.shape(y_pred))
        return tf.reshape(y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred), [-1])
    if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] == y_pred.shape[-1]:
        return tf.reduce_sum(y_true * y_pred, axis=-1)
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    return tf.gather(y_pred, labels, axis=-1, batch_dims=1)
