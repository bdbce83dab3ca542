"""Per-example losses and the labels of the model's own predictive distribution.

The statistics need ``m_i``, one loss value per example. A Keras ``Loss``
object is re-created with ``reduction="none"``; a loss function is used as it
is; values with extra trailing axes are averaged over them, as Keras does.

For a cross-entropy, the generalized Gauss-Newton matrix is the expected
outer product of the per-example gradient under labels drawn from the model:
``GGN_i = E_{y ~ p_i}[g_i(y) g_i(y)^T]``. ``sample_labels`` draws one such label
per example (an unbiased estimate); ``label_distribution`` enumerates every
label with its probability (the exact expectation, for class outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

from tfstatprune._keras import keras

__all__ = ["BCE", "CE", "LOSS_CLASSES", "SPARSE_CE", "PerExampleLoss", "resolve_loss"]

LossFn = Callable[[Any, tf.Tensor], tf.Tensor]
LabelSampler = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
LabelDistribution = Callable[[tf.Tensor], list[tuple[tf.Tensor, tf.Tensor]]]

#: The cross-entropies the statistics know (a ``PerExampleLoss``'s ``kind``).
SPARSE_CE = "sparse_categorical_crossentropy"
CE = "categorical_crossentropy"
BCE = "binary_crossentropy"
#: Each kind's Keras loss class.
LOSS_CLASSES = {
    SPARSE_CE: "SparseCategoricalCrossentropy",
    CE: "CategoricalCrossentropy",
    BCE: "BinaryCrossentropy",
}
_CE_KINDS = {**{cls: kind for kind, cls in LOSS_CLASSES.items()}, **{k: k for k in LOSS_CLASSES}}
_PROB_EPS = 1e-7


class PerExampleLoss(NamedTuple):
    """A loss giving one value per example, and the labels of the model's distribution.

    ``sample_labels(y_pred, seed)`` returns labels drawn from the model's own
    predictive distribution; ``label_distribution(y_pred)`` returns every label
    ``y`` as ``(labels [B, ...], probabilities [B])`` pairs, ``p_i(y)`` summing
    to one over the list. Both are ``None`` when the loss is not a
    cross-entropy.
    """

    fn: Callable[[Any, tf.Tensor], tf.Tensor]
    sample_labels: LabelSampler | None
    name: str
    label_distribution: LabelDistribution | None = None
    kind: str | None = None  # the cross-entropy's canonical name, or None
    from_logits: bool = False  # a cross-entropy reading logits, not probabilities

    def __call__(self, y_true: Any, y_pred: tf.Tensor) -> tf.Tensor:
        values = self.fn(y_true, y_pred)
        rank = values.shape.rank
        if rank == 0:
            raise ValueError(
                f"the loss {self.name!r} returned a scalar, but the statistics need one "
                "value per example: pass a Keras Loss (it is re-created with "
                "reduction='none') or a function (y_true, y_pred) -> [batch] values"
            )
        if rank is not None and rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, rank)))
        return values


def _name_of(loss: Any) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return type(loss).__name__
    return getattr(loss, "__name__", type(loss).__name__)


def _sampler(kind: str, from_logits: bool) -> LabelSampler:
    """Draw one label per example from the model's predicted distribution."""

    def logits_of(y_pred: tf.Tensor) -> tf.Tensor:
        if from_logits:
            return y_pred
        return tf.math.log(tf.clip_by_value(y_pred, _PROB_EPS, 1.0))

    def sample(y_pred: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        y_pred = tf.cast(y_pred, tf.float32)
        if kind == BCE:
            p = tf.sigmoid(y_pred) if from_logits else y_pred
            u = tf.random.stateless_uniform(tf.shape(p), seed=seed)
            return tf.cast(u < p, p.dtype)
        flat = tf.reshape(logits_of(y_pred), [-1, tf.shape(y_pred)[-1]])
        draws = tf.random.stateless_categorical(flat, 1, seed=seed)[:, 0]
        draws = tf.reshape(draws, tf.shape(y_pred)[:-1])
        if kind == SPARSE_CE:
            return draws
        return tf.one_hot(draws, tf.shape(y_pred)[-1], dtype=y_pred.dtype)

    return sample


def _distribution(kind: str, from_logits: bool) -> LabelDistribution:
    """Every label with its predicted probability, for outputs ``[B, classes]``."""

    def enumerate_labels(y_pred: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor]]:
        y_pred = tf.cast(y_pred, tf.float32)
        classes = y_pred.shape[-1]
        if y_pred.shape.rank != 2 or classes is None:
            raise ValueError(
                "the exact GGN enumerates the classes of outputs of shape [batch, classes], "
                f"got {y_pred.shape}: use hessian='ggn' (sampled labels)"
            )
        batch = tf.shape(y_pred)[:1]
        if kind == BCE:
            if classes != 1:
                raise ValueError(
                    "the exact GGN of a binary cross-entropy needs one output per example, "
                    f"got {classes}: use hessian='ggn' (sampled labels)"
                )
            p = tf.sigmoid(y_pred) if from_logits else tf.clip_by_value(y_pred, 0.0, 1.0)
            return [(tf.zeros_like(p), 1.0 - p[:, 0]), (tf.ones_like(p), p[:, 0])]
        if from_logits:
            p = tf.nn.softmax(y_pred)
        else:
            p = y_pred / tf.reduce_sum(y_pred, -1, keepdims=True)
        pairs = []
        for c in range(classes):
            labels = tf.fill(batch, tf.constant(c, tf.int64))
            if kind != SPARSE_CE:
                labels = tf.one_hot(labels, classes, dtype=y_pred.dtype)
            pairs.append((labels, p[:, c]))
        return pairs

    return enumerate_labels


def resolve_loss(model: keras.Model, loss: Any = None) -> PerExampleLoss:
    """The per-example loss for ``model``: ``loss`` if given, else the compiled one.

    Raises:
      ValueError: when there is no loss (model not compiled, compiled with
        ``loss=None``, none passed), or the model has several outputs with
        several losses.
    """
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None or (isinstance(loss, (dict, list, tuple)) and not loss):
        raise ValueError(
            "the statistics need a per-example loss, and the model has none (not "
            "compiled, or compiled with loss=None): compile the model with "
            "model.compile(loss=...) or pass loss=... here"
        )
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "models with several losses are not supported: pass one loss=... "
            "whose (y_true, y_pred) covers the model's output"
        )
    name = _name_of(loss)
    from_logits = False
    if isinstance(loss, str):
        fn = keras.losses.get(loss)
        name = getattr(fn, "__name__", name)
    elif isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        from_logits = bool(config.get("from_logits", False))
        config["reduction"] = keras.losses.Reduction.NONE
        fn = type(loss).from_config(config)
    elif callable(loss):
        fn = loss
        # A function of the user's own may take logits or probabilities, whatever its
        # name: it is no cross-entropy the statistics can sample or enumerate labels of.
        if getattr(keras.losses, getattr(loss, "__name__", ""), None) is not loss:
            return PerExampleLoss(fn, None, name)
    else:
        raise ValueError(f"loss must be a Keras loss, a loss name or a callable, got {loss!r}")
    kind = _CE_KINDS.get(name) or _CE_KINDS.get(getattr(fn, "__name__", ""))
    if kind is None:
        return PerExampleLoss(fn, None, name)
    return PerExampleLoss(
        fn, _sampler(kind, from_logits), name, _distribution(kind, from_logits), kind, from_logits
    )
