"""Record what training does to each prunable weight, for the history criteria.

:class:`WeightHistory` is a Keras callback: after every optimizer step of
``fit`` it folds the new weight values into the running quantities of
:mod:`tfstatprune.stats.history` (the sum of absolute updates; the windowed
mean and variance). The criteria ``weight_updates`` and ``n2ps`` read them:
the history object is passed where gradient criteria take their data, and the
records are matched to the weights by name (a copy of the model, the model
wrapped for pruning and the stripped model name their weights alike)::

    history = tsp.WeightHistory(window=500)
    model.fit(x, y, epochs=8, callbacks=[history])
    pruned = tsp.prune_once(model, history, 0.9, "n2ps")
    # or, pruning during training (the history keeps recording):
    wrapped = tsp.prune_statistically(model, history, "weight_updates", schedule)
    wrapped.fit(x, y, callbacks=[history, *tsp.callbacks(history)])

Memory: per watched weight, float32 variables -- the value at the previous
step and the running sum of absolute updates (``"updates"``), the running mean
and variance (``"variation"``): four copies of the weights with both
quantities, two with one. Nothing grows with the number of steps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.keras.layers import iter_layers, prunable_weights
from tfstatprune.stats import CollectedStatistics
from tfstatprune.stats.history import UpdateStatistics
from tfstatprune.stats.keys import weight_keys

__all__ = ["QUANTITIES", "WeightHistory", "history_statistics"]

QUANTITIES = ("updates", "variation")
_KINDS = ("previous", "abs_updates", "mean", "variance")


class _Slots(NamedTuple):
    """The accumulators of one watched weight (None: quantity not recorded)."""

    weight: tf.Variable | None  # None for a history read from a file
    shape: tuple[int, ...]
    previous: tf.Variable | None
    abs_updates: tf.Variable | None
    mean: tf.Variable | None
    variance: tf.Variable | None


def watched_weights(model: keras.Model) -> list[tf.Variable]:
    """The prunable weights of ``model`` and their biases, looking through pruning wrappers."""
    found: dict[Any, tf.Variable] = {}
    for layer in iter_layers(model):
        inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
        for weight in prunable_weights(inner, prune_bias=True):
            found.setdefault(weight.ref(), weight)
    return list(found.values())


class WeightHistory(keras.callbacks.Callback):
    """Records the sum of weight updates and the recent variation of every prunable weight.

    After each training batch (one optimizer step; with ``steps_per_execution``
    > 1, Keras reports, and so records, every that many steps) ``theta_t`` is
    folded into the quantities of :mod:`tfstatprune.stats.history`. Recording continues
    across ``fit`` calls (the first step of a new ``fit`` is measured from the
    weights as that ``fit`` found them); :meth:`reset` starts over.

    Args:
      window: the variation (``n2ps``) is taken over roughly the last
        ``window`` steps (exactly the last ones while fewer have been
        recorded, then with geometric forgetting); None: over all steps.
      quantities: what to record, from ``("updates", "variation")``.

    Example:
      >>> history = WeightHistory(window=100)
      >>> history.steps
      0

    Reference:
      Augasta & Kathirvalavakumar 2011 (sum of weight updates, seed 000);
      Tong & Tanaka 2015 (weight variation after convergence).
    """

    def __init__(self, window: int | None = None, quantities: Sequence[str] = QUANTITIES) -> None:
        super().__init__()
        if window is not None and int(window) < 1:
            raise ValueError(f"window must be a number of steps >= 1 or None, got {window}")
        unknown = sorted(set(quantities) - set(QUANTITIES))
        if unknown or not quantities:
            raise ValueError(f"quantities must be taken from {QUANTITIES}, got {quantities!r}")
        self.window = None if window is None else int(window)
        self.quantities = tuple(q for q in QUANTITIES if q in quantities)
        self._slots: dict[str, _Slots] = {}
        self._steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._record_fn: Any = None

    # ------------------------------------------------------------------ state

    @property
    def steps(self) -> int:
        """Optimizer steps recorded so far."""
        return int(self._steps.numpy())

    def reset(self) -> None:
        """Forget everything recorded."""
        self._slots = {}
        self._steps.assign(0)
        self._record_fn = None

    def _new_slots(self, weight: tf.Variable) -> _Slots:
        def zeros(kind: str) -> tf.Variable:
            return tf.Variable(tf.zeros(weight.shape, tf.float32), trainable=False, name=kind)

        updates = "updates" in self.quantities
        variation = "variation" in self.quantities
        return _Slots(
            weight,
            tuple(weight.shape),
            zeros("previous") if updates else None,
            zeros("abs_updates") if updates else None,
            zeros("mean") if variation else None,
            zeros("variance") if variation else None,
        )

    def _watch(self, model: keras.Model) -> None:
        """Bind the accumulators to ``model``'s weights (by key), keeping what matches."""
        slots = {}
        keys = weight_keys(model)
        for weight in watched_weights(model):
            key = keys[weight]
            old = self._slots.get(key)
            if old is not None and old.shape == tuple(weight.shape):
                slots[key] = old._replace(weight=weight)
            else:
                if old is not None:
                    raise ValueError(
                        f"WeightHistory recorded {key} with shape {old.shape}, "
                        f"this model's has {weight.shape}: use a new WeightHistory or reset()"
                    )
                if self._slots and self.steps > 0:
                    raise ValueError(
                        f"WeightHistory has recorded {self.steps} steps of another model "
                        f"(no weight {key}): use a new WeightHistory or reset()"
                    )
                slots[key] = self._new_slots(weight)
        if not slots:
            raise ValueError(
                f"model {model.name!r} has no prunable weights for WeightHistory to record"
            )
        self._slots = slots
        for s in slots.values():
            if s.previous is not None:
                s.previous.assign(tf.cast(s.weight, tf.float32))
        self._record_fn = tf.function(self._record_step)

    # -------------------------------------------------------------- callbacks

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._watch(self.model)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._record_fn()

    def _record_step(self) -> None:
        step = self._steps + 1
        t = tf.cast(step, tf.float32)
        alpha = 1.0 / t
        if self.window is not None:
            alpha = tf.maximum(alpha, 1.0 / float(self.window))
        for s in self._slots.values():
            value = tf.cast(s.weight, tf.float32)
            if s.abs_updates is not None:
                s.abs_updates.assign_add(tf.abs(value - s.previous))
                s.previous.assign(value)
            if s.mean is not None:
                d = value - s.mean
                s.mean.assign_add(alpha * d)
                s.variance.assign((1.0 - alpha) * (s.variance + alpha * d * d))
        self._steps.assign(step)

    # ---------------------------------------------------------------- reading

    def statistics(self, names: Sequence[str] | None = None) -> dict[str, UpdateStatistics]:
        """The records by weight key (all watched weights, or ``names``), e.g. ``fc1/kernel:0``.

        A quantity that is not recorded reads as NaN.

        Raises:
          ValueError: a name the history did not watch.
        """
        chosen = list(self._slots) if names is None else list(names)
        missing = [n for n in chosen if n not in self._slots]
        if missing:
            watched = ", ".join(self._slots) or "none yet (it watches from the first fit)"
            raise ValueError(
                f"WeightHistory did not record {missing}; it watches the prunable weights of "
                f"the model it was trained with: {watched}"
            )
        steps = self.steps
        found = {}
        for name in chosen:
            s = self._slots[name]

            def read(variable: tf.Variable | None, shape: Any = s.shape) -> np.ndarray:
                if variable is None:
                    return np.full(shape, np.nan)
                return variable.numpy().astype(np.float64)

            found[name] = UpdateStatistics(
                steps, read(s.abs_updates), read(s.mean), read(s.variance), self.window
            )
        return found

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write what was recorded to ``path`` (numpy ``.npz``); :meth:`load` reads it back."""
        arrays: dict[str, np.ndarray] = {}
        names = list(self._slots)
        for index, name in enumerate(names):
            s = self._slots[name]
            for kind in _KINDS:
                variable = getattr(s, kind)
                if variable is not None:
                    arrays[f"{index}_{kind}"] = variable.numpy()
        np.savez(
            path,
            names=np.array(names, dtype=str),
            shapes=np.array([json.dumps(list(self._slots[n].shape)) for n in names], dtype=str),
            steps=np.int64(self.steps),
            window=np.int64(-1 if self.window is None else self.window),
            quantities=np.array(self.quantities, dtype=str),
            **arrays,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WeightHistory:
        """A history saved by :meth:`save` (it can be read, or continue with the same model)."""
        with np.load(path) as data:
            window = int(data["window"])
            history = cls(None if window < 0 else window, [str(q) for q in data["quantities"]])
            for index, name in enumerate(data["names"]):
                shape = tuple(json.loads(str(data["shapes"][index])))
                values = {
                    kind: tf.Variable(data[f"{index}_{kind}"], trainable=False, name=kind)
                    if f"{index}_{kind}" in data
                    else None
                    for kind in _KINDS
                }
                history._slots[str(name)] = _Slots(None, shape, **values)
            history._steps.assign(int(data["steps"]))
        return history


def history_statistics(criterion: str, history: Any, names: Sequence[str]) -> CollectedStatistics:
    """The records of the weights keyed ``names`` from ``history``, shaped like statistics.

    ``count`` is the number of recorded steps.

    Raises:
      ValueError: ``history`` is not a :class:`WeightHistory` (the criterion
        reads the training history, not data).
    """
    if not isinstance(history, WeightHistory):
        got = "nothing" if history is None else type(history).__name__
        raise ValueError(
            f"criterion {criterion!r} reads the weight history recorded during training, "
            f"got {got}: train with callbacks=[history] where history = "
            "tfstatprune.WeightHistory(), and pass the history as stats_data"
        )
    records = history.statistics(list(names))
    return CollectedStatistics(
        weights=records,
        count=history.steps,
        chunk_size=0,
        peak_bytes=0,
        generic=[],
        seconds=0.0,
        layers={},
    )
