"""Checks of what the user hands the statistics: data, labels, loss and weights.

Every check here turns an input that would give silently wrong statistics into
an error that names the problem and the fix, or a warning when the input is
legal but the statistics will say nothing. The collector calls them; nothing
here changes the model or the data.

- :func:`check_input_dtype`: inputs of a dtype the model cannot take (strings
  for a float model) fail before TensorFlow's ``UnimplementedError``.
- :func:`check_labels`: labels against the model's output and the loss, once
  on the first chunk (one-hot labels with a sparse cross-entropy and the
  reverse), and the class range of every chunk (``12`` or ``-1`` with 10
  classes) before it is used.
- :func:`check_probability_outputs`: a cross-entropy that reads probabilities
  (``from_logits=False``) on outputs that are none (a logits head: negative
  values, which Keras clips to ``log(1e-7)`` in silence), once on the first chunk.
- :func:`nonfinite_error`: examples whose loss or per-example gradients are
  NaN/Inf (or overflow float32) are found per example while collecting
  (:mod:`tfstatprune.stats.collector`); this is the error, and the warning
  when ``skip_nonfinite=True`` left them out.
- :func:`warn_no_signal`: layers whose per-example gradients were all 0.
- :func:`check_finite_weights`: NaN/Inf in the model's own weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.losses import CE, LOSS_CLASSES, SPARSE_CE

__all__ = [
    "FIRST_INDICES",
    "NoSignalWarning",
    "NonFiniteDataError",
    "SkippedExamplesWarning",
    "check_finite_weights",
    "check_input_dtype",
    "check_labels",
    "check_probability_outputs",
    "nonfinite_error",
    "warn_no_signal",
    "warn_skipped",
]

# How many offending example indices a message lists.
FIRST_INDICES = 5


class NonFiniteDataError(ValueError):
    """Examples of ``stats_data`` give a NaN/Inf loss or per-example gradient."""


class SkippedExamplesWarning(UserWarning):
    """``skip_nonfinite=True`` left examples out of the statistics."""


class NoSignalWarning(UserWarning):
    """``stats_data`` moved none of some layers' weights: their statistics are all 0."""


def _indices(indices: Sequence[int]) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:FIRST_INDICES])
    more = ", ..." if len(indices) > FIRST_INDICES else ""
    return f"[{shown}{more}]"


def nonfinite_error(count: int, seen: int, indices: Sequence[int]) -> NonFiniteDataError:
    """The error for ``count`` of ``seen`` examples that are not finite, first ``indices``.

    >>> print(nonfinite_error(3, 512, [7, 40, 41]))  # doctest: +NORMALIZE_WHITESPACE
    3 of 512 examples of stats_data give a loss or per-example gradient that is not
    finite (NaN or Inf, or too large for float32): example indices [7, 40, 41]
    (counted from 0 in the order the data are read). They would make the Wald
    statistics meaningless (every score 0). Clean the data (drop or fix those
    examples, e.g. keep the rows where np.isfinite(x) holds, and scale inputs to
    a moderate range), or pass skip_nonfinite=True to leave such examples out.
    """
    return NonFiniteDataError(
        f"{count} of {seen} examples of stats_data give a loss or per-example gradient that "
        f"is not finite (NaN or Inf, or too large for float32): example indices "
        f"{_indices(indices)} (counted from 0 in the order the data are read). They would "
        "make the Wald statistics meaningless (every score 0). Clean the data (drop or fix "
        "those examples, e.g. keep the rows where np.isfinite(x) holds, and scale inputs to "
        "a moderate range), or pass skip_nonfinite=True to leave such examples out."
    )


def warn_skipped(count: int, seen: int, indices: Sequence[int]) -> None:
    """Say how many examples ``skip_nonfinite=True`` left out, and which."""
    warnings.warn(
        f"skip_nonfinite=True: left out {count} of {seen} examples of stats_data whose loss "
        f"or per-example gradient is not finite (indices {_indices(indices)}); the "
        f"statistics use the other {seen - count}",
        SkippedExamplesWarning,
        stacklevel=4,
    )


def check_input_dtype(model: keras.Model, x_spec: Any) -> None:
    """Refuse inputs whose dtype the model cannot take (strings for numbers, or the reverse)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    for given, expected in zip(tf.nest.flatten(x_spec), inputs, strict=False):
        got, want = tf.as_dtype(given.dtype), tf.as_dtype(expected.dtype)
        if (got == tf.string) != (want == tf.string):
            raise TypeError(
                f"stats_data inputs have dtype {got.name}, but the model's input "
                f"{expected.name!r} expects {want.name}: convert the data (e.g. "
                f"np.asarray(x, '{want.name}')) or pass the preprocessed inputs the model takes"
            )


def _output_shape(model: keras.Model) -> tuple | None:
    shape = getattr(model, "output_shape", None)
    return tuple(shape) if isinstance(shape, tuple) else None


def _fits(shape: tuple, pattern: tuple) -> bool:
    """``shape`` matches ``pattern`` (``None`` in the pattern: any size)."""
    return len(shape) == len(pattern) and all(
        p is None or s == p for s, p in zip(shape, pattern, strict=True)
    )


def check_labels(kind: str | None, model: keras.Model, y: Any, offset: int, first: bool) -> None:
    """Check a chunk of labels ``y`` against the model's output for a cross-entropy ``kind``.

    On the ``first`` chunk the labels' shape must fit the loss: class indices
    (``[B]`` or ``[B, 1]``) for a sparse cross-entropy, one vector per example
    of the output's shape for a categorical one. Every chunk's class indices
    must be whole numbers in ``[0, classes)``; ``offset`` is the index of the
    chunk's first example (for the message). Losses other than these two pass.

    Raises:
      ValueError: labels that do not fit, with the fix.
    """
    if kind not in (SPARSE_CE, CE):
        return
    out = _output_shape(model)
    if out is None or out[-1] is None:
        return
    classes = int(out[-1])
    labels = tf.nest.flatten(y)[0]
    shape = tuple(labels.shape)
    indices_shape = _fits(shape, out[:-1]) or _fits(shape, (*out[:-1], 1))
    vectors_shape = _fits(shape, out)
    if first and kind == SPARSE_CE and not indices_shape and vectors_shape and classes > 1:
        raise ValueError(
            f"stats_data labels have shape {shape}, one vector per example like the model's "
            f"output {out} (one-hot?), but the loss is {SPARSE_CE}, which takes class "
            "indices: pass y.argmax(-1) as labels, or use loss='categorical_crossentropy'"
        )
    if first and kind == CE and indices_shape and not vectors_shape:
        raise ValueError(
            f"stats_data labels have shape {shape}, class indices, but the model's output is "
            f"{out} and the loss is {CE}, which takes one-hot vectors: pass "
            f"keras.utils.to_categorical(y, {classes}), or use "
            f"loss='sparse_categorical_crossentropy'"
        )
    if kind != SPARSE_CE:
        return
    values = np.asarray(labels).reshape(shape[0] if shape else 1, -1)
    wrong = (values < 0) | (values >= classes) | (values != np.floor(values))
    if wrong.any():
        rows = np.flatnonzero(wrong.any(axis=1))
        found = sorted({v.item() for v in values[wrong]})[:FIRST_INDICES]
        raise ValueError(
            f"stats_data labels must be class indices in [0, {classes}) for the model's "
            f"{classes} outputs and {SPARSE_CE}; found {found} at example indices "
            f"{_indices((rows + offset).tolist())} (counted from 0 in the order the data "
            "are read): fix the labels, or the model's number of outputs"
        )


def warn_no_signal(sumsq: Mapping[str, np.ndarray], layer_of: Mapping[str, str]) -> None:
    """Warn, naming the layers, when every per-example gradient of a weight was 0."""
    silent = sorted(
        {layer_of[name] for name, squares in sumsq.items() if not np.any(squares)},
    )
    if not silent:
        return
    warnings.warn(
        f"stats_data gave no signal to layer(s) {silent}: every per-example gradient of "
        "their weights is 0 (all-zero inputs? a dead layer?), so their statistical scores "
        "are all 0 and their masks follow |theta| alone: check the data you pass as "
        "stats_data",
        NoSignalWarning,
        stacklevel=4,
    )


def check_finite_weights(named: Mapping[str, tuple[tf.Variable, str]]) -> None:
    """Refuse to score weights holding NaN or Inf, naming the weight and its layer.

    Args:
      named: ``{weight key: (variable, layer name)}``.
    """
    for key, (w, layer) in named.items():
        value = np.asarray(w.numpy())
        bad = ~np.isfinite(value)
        if bad.any():
            raise ValueError(
                f"the model's weights are not finite: {key} of layer "
                f"{layer!r} holds {int(bad.sum())} NaN/Inf value(s) of "
                f"{value.size}. Training probably diverged: load a good checkpoint (or lower "
                "the learning rate and retrain) before pruning"
            )


#: Outputs this far below 0 (or above 1, but for a categorical cross-entropy) are no
#: probabilities.
PROBABILITY_SLACK = 1e-5
#: Examples of the first chunk the output check runs the model on.
PROBABILITY_PROBE = 32


def check_probability_outputs(
    kind: str | None, from_logits: bool, name: str, model: keras.Model, x: Any
) -> None:
    """A cross-entropy ``kind`` that reads probabilities must get them from ``model``.

    With ``from_logits=False`` Keras clips the outputs into ``[1e-7, 1 - 1e-7]``
    and takes their log: a model that outputs logits (no softmax/sigmoid at the
    end) trains badly and its statistics are wrong (curvatures of clipped
    values; the exact GGN enumerates "probabilities" that are negative). The
    model is run on the first ``PROBABILITY_PROBE`` examples of ``x``; every
    output is checked.

    Raises:
      ValueError: an output below 0, or above 1 for a sparse or binary
        cross-entropy (the categorical one normalises by the sum), with the fixes.
    """
    if kind is None or from_logits:
        return
    head = tf.nest.map_structure(lambda t: t[:PROBABILITY_PROBE], x)
    outputs = tf.nest.flatten(model(head, training=False))
    low = min(float(tf.reduce_min(out)) for out in outputs)
    high = max(float(tf.reduce_max(out)) for out in outputs)
    too_high = kind != CE and high > 1.0 + PROBABILITY_SLACK
    if low < -PROBABILITY_SLACK or too_high:
        raise ValueError(
            f"the loss {name!r} reads the model's outputs as probabilities "
            f"(from_logits=False), but on the first examples they range over "
            f"[{low:.3g}, {high:.3g}]: the model outputs logits. Compile it with "
            f"keras.losses.{LOSS_CLASSES[kind]}(from_logits=True) (or pass that as loss=), "
            "or end the model with a softmax (sigmoid) activation"
        )
