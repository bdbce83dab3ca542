"""Sensitivity-driven regularization (Tartaglione et al. 2018) as a Keras callback.

"Learning Sparse Neural Networks via Sensitivity-Driven Regularization"
(NeurIPS 2018), as the seed survey (004, sec. 1.1) gives it. With the
specific sensitivity ``S = |dy_(y*)/dw|`` (eq. 7; see
:mod:`tfstatprune.stats.sensitivity`) and the bounded insensitivity
``Sb = max(0, 1 - S)`` (eq. 8), the update rule (eq. 9) is

    w <- w - eta dL/dw - lambda w Sb(w):

the optimizer's step, then a pull towards zero of the weights the output is
insensitive to. Near a minimum the first term is small and the insensitive
weights decay geometrically; "eventually set to zero by simple thresholding".

:class:`SensitivityRegularization` applies the second term after every
optimizer step of ``fit``. Callbacks do not see the training batch, so ``S``
is computed on a batch of the callback's own ``data`` (drawn in turn), the
mean over that batch inside the absolute value:
``S = |d/dw mean_i y_(i, y*_i)|``. With ``threshold``, at the end of every
epoch the weights with ``|w| < threshold`` are set to zero and kept there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.keras.layers import prunable_weights
from tfstatprune.stats.data import split_pair
from tfstatprune.stats.sensitivity import true_class_output
from tfstatprune.structure.walk import leaf_layers

__all__ = ["DEFAULT_BATCH_SIZE", "SensitivityRegularization", "output_sensitivity"]

DEFAULT_BATCH_SIZE = 128


def output_sensitivity(
    model: keras.Model, x: Any, y: Any, weights: Sequence[tf.Variable]
) -> list[tf.Tensor]:
    """``S = |d mean_i y_(i, y*_i) / dw|`` for each of ``weights``, on the batch ``(x, y)``.

    The model runs with ``training=False``. A weight the output does not depend
    on gets zeros.
    """
    with tf.GradientTape() as tape:
        outputs = model(x, training=False)
        target = tf.reduce_mean(true_class_output(y, outputs))
    grads = tape.gradient(target, list(weights))
    return [
        tf.zeros_like(w) if g is None else tf.abs(tf.convert_to_tensor(g))
        for w, g in zip(weights, grads, strict=True)
    ]


class SensitivityRegularization(keras.callbacks.Callback):
    """After each optimizer step, ``w <- w - strength * w * max(0, 1 - S(w))`` (eq. 9).

    Args:
      data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches;
        every step takes the next batch (arrays: ``batch_size`` examples in a
        seeded random order, cycling).
      strength: ``lambda`` of eq. 9.
      threshold: at the end of every epoch, weights with ``|w| < threshold``
        become 0 and stay 0 (None: no pruning; prune afterwards with
        :func:`tfstatprune.prune_by_threshold`).
      layers: names of the layers to regularize (default: every prunable
        layer; their kernels -- what tfmot prunes -- are regularized).
      batch_size: examples per step when ``data`` are arrays.
      every: apply the rule every ``every`` steps.
      seed: the order in which array examples are drawn.

    Attributes:
      sparsity: after each epoch with a threshold, the fraction of zeros among
        the regularized weights (also in the epoch logs as
        ``"sensitivity_sparsity"``).

    Example:
      >>> import numpy as np
      >>> cb = SensitivityRegularization((np.zeros((4, 3)), np.zeros(4)), strength=1e-4)
      >>> cb.strength
      0.0001

    Reference:
      Tartaglione, Lepsøy, Fiandrotti & Francini 2018, eqs. 5-9.
    """

    def __init__(
        self,
        data: Any,
        strength: float = 1e-4,
        *,
        threshold: float | None = None,
        layers: Sequence[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        every: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if threshold is not None and not threshold >= 0:
            raise ValueError(f"threshold must be >= 0 or None, got {threshold}")
        if int(every) < 1 or int(batch_size) < 1:
            raise ValueError(f"every and batch_size must be >= 1, got {every}, {batch_size}")
        self.data = data
        self.strength = float(strength)
        self.threshold = None if threshold is None else float(threshold)
        self.layers = None if layers is None else list(layers)
        self.batch_size = int(batch_size)
        self.every = int(every)
        self.seed = int(seed)
        self.sparsity: list[float] = []
        self._weights: list[tf.Variable] = []
        self._masks: list[tf.Variable] = []
        self._batches: Iterator[tuple[Any, Any]] | None = None
        self._step_fn: Any = None
        self._count = 0

    def _regularized(self, model: keras.Model) -> list[tf.Variable]:
        found, names = [], set()
        for inner in leaf_layers(model):
            if self.layers is not None and inner.name not in self.layers:
                continue
            weights = prunable_weights(inner)
            if weights:
                names.add(inner.name)
                found.extend(weights)
        unknown = sorted(set(self.layers or ()) - names)
        if unknown or not found:
            raise ValueError(
                f"SensitivityRegularization: no prunable layer(s) {unknown or ''} in "
                f"model {model.name!r}"
            )
        return found

    def _iterate(self) -> Iterator[tuple[Any, Any]]:
        data = self.data
        if isinstance(data, tf.data.Dataset):
            for element in data.repeat():
                yield split_pair(element)
            return
        x, y = split_pair(data)
        n = len(x)
        rng = np.random.default_rng(self.seed)
        while True:
            order = rng.permutation(n)
            for start in range(0, n, self.batch_size):
                chosen = np.sort(order[start : start + self.batch_size])
                yield x[chosen], y[chosen]

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._weights = self._regularized(self.model)
        if self.threshold is not None and len(self._masks) != len(self._weights):
            self._masks = [
                tf.Variable(tf.ones(w.shape, w.dtype), trainable=False) for w in self._weights
            ]
        self._batches = self._iterate()
        self._step_fn = tf.function(self._apply, reduce_retracing=True)

    def _apply(self, x: Any, y: Any) -> None:
        sensitivities = output_sensitivity(self.model, x, y, self._weights)
        for index, (w, s) in enumerate(zip(self._weights, sensitivities, strict=True)):
            insensitivity = tf.nn.relu(1.0 - tf.cast(s, w.dtype))
            value = w - self.strength * w * insensitivity
            if self._masks:
                value = value * self._masks[index]
            w.assign(value)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._count += 1
        if self._count % self.every:
            return
        x, y = next(self._batches)
        self._step_fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.threshold is None:
            return
        zeros = total = 0
        for w, mask in zip(self._weights, self._masks, strict=True):
            mask.assign(mask * tf.cast(tf.abs(w) >= self.threshold, mask.dtype))
            w.assign(w * mask)
            zeros += int(tf.size(mask)) - int(tf.math.count_nonzero(mask))
            total += int(tf.size(mask))
        self.sparsity.append(zeros / total)
        if logs is not None:
            logs["sensitivity_sparsity"] = self.sparsity[-1]
