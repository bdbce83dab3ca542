"""Pruning schedules: *when* to prune and *to what sparsity*.

The schedules here are tensorflow-model-optimization ``PruningSchedule``
subclasses, so they plug into ``prune_low_magnitude`` and its wrapper, but the
decision itself is plain Python (:meth:`StatisticalSchedule.decision`); the
TensorFlow ``__call__`` computes the same thing with tensor ops and is tested to
agree with it at every step.

Two modes follow section 4.1 of "In search of theoretically grounded pruning"
(ICLR 2019 submission):

* :class:`OneShotSparsity` prunes once, to the final sparsity, then the
  network is retrained with the mask fixed.
* :class:`IterativeSparsity` prunes to increasing levels at regular intervals,
  retraining in between (as in Han et al., 2015).

A step is the training-batch counter of the pruning wrapper: tfmot's wrapper
counts batches 1, 2, 3, ... during ``fit``; pruning before training uses step 0.

Both classes are registered with Keras under the package ``"tfstatprune"``,
i.e. as ``"tfstatprune>OneShotSparsity"`` and ``"tfstatprune>IterativeSparsity"``.
``get_config()`` uses those registered names as ``class_name`` (tfmot's
``{"class_name": ..., "config": ...}`` format), so once this module is imported
``keras.utils.deserialize_keras_object(schedule.get_config())`` and tfmot's
``PruneLowMagnitude.from_config`` rebuild them with no ``custom_objects``.
"""

from __future__ import annotations

import abc
import bisect
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule import (
    PruningSchedule,
)

from tfstatprune._keras import keras

__all__ = [
    "PACKAGE",
    "IterativeSparsity",
    "OneShotSparsity",
    "PruningDecision",
    "PruningEvent",
    "StatisticalSchedule",
    "pruning_steps",
    "schedule_decision",
]

#: The Keras registration package of the schedules in this module.
PACKAGE = "tfstatprune"

_DEFAULT_EVERY = 1000
_WRAPPER_KEYS = frozenset({"class_name", "config", "module", "registered_name"})


class PruningDecision(NamedTuple):
    """What a schedule says about one step.

    Attributes:
      should_prune: whether masks are recomputed at this step.
      sparsity: the target sparsity at this step (the level to prune to when
        ``should_prune``; otherwise the most recent level reached, 0.0 before any).
    """

    should_prune: bool
    sparsity: float


class PruningEvent(NamedTuple):
    """One pruning step of a :class:`StatisticalSchedule` and the level it prunes to."""

    step: int
    sparsity: float


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})."
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def _check_sparsity(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number in [0, 1), got {value!r} ({type(value).__name__})."
        )
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (the fraction of weights to prune), got {value}."
        )
    return float(value)


def _check_step(step: object) -> int:
    """The step given to ``decision``: any integer (steps before 0 never prune)."""
    if isinstance(step, np.ndarray) and step.ndim == 0:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValueError(f"step must be an integer, got {step!r} ({type(step).__name__}).")
    return int(step)


class StatisticalSchedule(PruningSchedule):
    """Base class of tfstatprune's schedules: a fixed list of pruning events.

    A subclass lists its :class:`PruningEvent`\\ s (strictly increasing steps,
    non-decreasing sparsities) in :meth:`events`; :meth:`decision` (pure Python)
    and :meth:`__call__` (TensorFlow, for tfmot's wrapper) both derive from it:
    at an event's step the schedule prunes to its sparsity; elsewhere it does not
    prune and reports the latest sparsity reached (0.0 before the first event).
    """

    @abc.abstractmethod
    def events(self) -> tuple[PruningEvent, ...]:
        """The steps at which this schedule prunes, with their levels, in step order."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """``{"class_name": <registered name>, "config": <constructor kwargs>}``."""

    def decision(self, step: int) -> PruningDecision:
        """Whether to prune at ``step``, and the sparsity.

        Args:
          step: the training step (any integer; negative steps never prune).

        Returns:
          The :class:`PruningDecision` for ``step``.

        Raises:
          ValueError: if ``step`` is not an integer.
        """
        step = _check_step(step)
        events = self.events()
        i = bisect.bisect_right([e.step for e in events], step) - 1
        if i < 0:
            return PruningDecision(should_prune=False, sparsity=0.0)
        return PruningDecision(should_prune=events[i].step == step, sparsity=events[i].sparsity)

    def __call__(self, step: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """TensorFlow version of :meth:`decision`, usable in graph mode.

        Args:
          step: a scalar integer tensor (tfmot passes int64) or Python int.

        Returns:
          ``(should_prune, sparsity)`` as a ``tf.bool`` and a ``tf.float32`` scalar.
        """
        events = self.events()
        step = tf.cast(step, tf.int64)
        steps = tf.constant([e.step for e in events], dtype=tf.int64)
        levels = tf.constant([0.0] + [e.sparsity for e in events], dtype=tf.float32)
        # Number of events at or before `step` = index into [0.0, level_0, level_1, ...].
        reached = tf.reduce_sum(tf.cast(tf.less_equal(steps, step), tf.int32))
        should_prune = tf.reduce_any(tf.equal(steps, step))
        return should_prune, tf.gather(levels, reached)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StatisticalSchedule:
        """Rebuild a schedule from :meth:`get_config`'s output or its inner ``"config"``.

        Args:
          config: either the constructor kwargs or the whole
            ``{"class_name": ..., "config": ...}`` dict.

        Returns:
          A new schedule equal to the one that produced ``config``.

        Raises:
          ValueError: if ``config`` names another class.
        """
        config = dict(config)
        if "config" in config and "class_name" in config and set(config) <= _WRAPPER_KEYS:
            names = {cls.__name__, keras.utils.get_registered_name(cls)}
            if config["class_name"] not in names:
                raise ValueError(
                    f"{cls.__name__}.from_config got a config for {config['class_name']!r}; "
                    f"expected one of {sorted(names)}."
                )
            config = dict(config["config"])
        return cls(**config)

    def _wrap_config(self, inner: dict[str, Any]) -> dict[str, Any]:
        return {"class_name": keras.utils.get_registered_name(type(self)), "config": inner}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.events()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        return f"{type(self).__name__}({args})"


@keras.utils.register_keras_serializable(package=PACKAGE)
class OneShotSparsity(StatisticalSchedule):
    """Prune once, at ``step``, to ``sparsity``; then keep the mask fixed.

    Before ``step`` the reported sparsity is 0.0; from ``step`` on it is
    ``sparsity``, but pruning happens only at ``step`` itself.

    Args:
      sparsity: the fraction of weights to prune, in [0, 1).
      step: the step to prune at (0 = before training, the usual one-shot
        setting for a pretrained network; tfmot's ``fit`` counts batches from 1).

    Raises:
      ValueError: for a sparsity outside [0, 1) or a step that is not an integer >= 0.

    Example:
      >>> s = OneShotSparsity(0.9)
      >>> s.decision(0)
      PruningDecision(should_prune=True, sparsity=0.9)
      >>> s.decision(5)
      PruningDecision(should_prune=False, sparsity=0.9)

    Reference:
      "In search of theoretically grounded pruning", ICLR 2019 submission,
      section 4.1 (one-shot pruning followed by retraining).
    """

    def __init__(self, sparsity: float, step: int = 0) -> None:
        self.sparsity = _check_sparsity(sparsity, "sparsity")
        self.step = _check_int(step, "step", 0)

    def events(self) -> tuple[PruningEvent, ...]:
        return (PruningEvent(self.step, self.sparsity),)

    def get_config(self) -> dict[str, Any]:
        return self._wrap_config({"sparsity": self.sparsity, "step": self.step})


@keras.utils.register_keras_serializable(package=PACKAGE)
class IterativeSparsity(StatisticalSchedule):
    """Prune to increasing levels at regular intervals, retraining in between.

    Prunes to ``sparsities[i]`` at step ``begin_step + i * every``; between
    those steps nothing is pruned, so the network retrains with its current
    mask. The reported sparsity at a non-pruning step is the latest level
    reached (0.0 before the first), and stays at ``sparsities[-1]`` after the last.

    Args:
      sparsities: the levels, each in [0, 1) and non-decreasing: masks are
        monotone (a pruned weight is never restored), so a lower level could
        not be honoured.
      begin_step: the step of the first pruning, an integer >= 0.
      every: steps between two prunings, an integer >= 1.

    Raises:
      ValueError: for an empty or decreasing ``sparsities``, a level outside
        [0, 1), a negative or non-integer ``begin_step``, or ``every`` not an
        integer >= 1.

    Example:
      >>> s = IterativeSparsity([0.5, 0.75, 0.9], begin_step=1, every=100)
      >>> [s.decision(t) for t in (0, 1, 50, 201)]  # doctest: +NORMALIZE_WHITESPACE
      [PruningDecision(should_prune=False, sparsity=0.0),
       PruningDecision(should_prune=True, sparsity=0.5),
       PruningDecision(should_prune=False, sparsity=0.5),
       PruningDecision(should_prune=True, sparsity=0.9)]

    Reference:
      "In search of theoretically grounded pruning", ICLR 2019 submission,
      section 4.1 (iterative pruning); S. Han, J. Pool, J. Tran, W. Dally,
      "Learning both weights and connections for efficient neural networks",
      NeurIPS 2015.
    """

    def __init__(
        self, sparsities: Sequence[float], begin_step: int = 0, every: int = _DEFAULT_EVERY
    ) -> None:
        if isinstance(sparsities, (str, bytes)) or not isinstance(
            sparsities, Sequence | np.ndarray
        ):
            raise ValueError(
                f"sparsities must be a sequence of levels in [0, 1), got {sparsities!r}."
            )
        if len(sparsities) == 0:
            raise ValueError("sparsities is empty; give at least one level in [0, 1).")
        levels = [_check_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
        for i in range(1, len(levels)):
            if levels[i] < levels[i - 1]:
                raise ValueError(
                    f"sparsities must be non-decreasing, got {levels} "
                    f"(sparsities[{i}]={levels[i]} < sparsities[{i - 1}]={levels[i - 1]}). "
                    "Masks are monotone (a pruned weight is never restored), so a lower "
                    "level cannot be honoured."
                )
        self.sparsities = levels
        self.begin_step = _check_int(begin_step, "begin_step", 0)
        self.every = _check_int(every, "every", 1)

    def events(self) -> tuple[PruningEvent, ...]:
        return tuple(
            PruningEvent(self.begin_step + i * self.every, s) for i, s in enumerate(self.sparsities)
        )

    def get_config(self) -> dict[str, Any]:
        return self._wrap_config(
            {
                "sparsities": list(self.sparsities),
                "begin_step": self.begin_step,
                "every": self.every,
            }
        )


def schedule_decision(schedule: PruningSchedule, step: int) -> PruningDecision:
    """The decision of any tfmot pruning schedule at ``step``, in Python values.

    For a :class:`StatisticalSchedule` this is ``schedule.decision(step)``; any
    other schedule (``ConstantSparsity``, ``PolynomialDecay``, user-written ones)
    is called eagerly on an int64 step tensor, as tfmot's wrapper does.

    Args:
      schedule: a pruning schedule, i.e. a callable ``step -> (should_prune, sparsity)``.
      step: the training step.

    Returns:
      The :class:`PruningDecision`. For TensorFlow schedules the sparsity is the
      float32 value the wrapper would use, widened to a Python float.

    Raises:
      ValueError: if ``step`` is not an integer.
      TypeError: if ``schedule`` is not callable or does not return a pair.

    >>> schedule_decision(OneShotSparsity(0.5, step=3), 3)
    PruningDecision(should_prune=True, sparsity=0.5)
    """
    step = _check_step(step)
    if isinstance(schedule, StatisticalSchedule):
        return schedule.decision(step)
    if not callable(schedule):
        raise TypeError(f"schedule must be a pruning schedule, got {type(schedule).__name__}.")
    with tf.init_scope():  # eager even when called while a tf.function is being traced
        result = schedule(tf.constant(step, dtype=tf.int64))
        try:
            should_prune, sparsity = result
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{type(schedule).__name__}(step) must return (should_prune, sparsity), "
                f"got {result!r}."
            ) from err
        return PruningDecision(
            should_prune=bool(np.asarray(should_prune)), sparsity=float(np.asarray(sparsity))
        )


def pruning_steps(schedule: StatisticalSchedule) -> list[int]:
    """The steps at which ``schedule`` prunes, in order (for progress and reports).

    Args:
      schedule: one of tfstatprune's schedules.

    Returns:
      The pruning steps.

    Raises:
      TypeError: for other schedules, whose pruning steps cannot be listed.

    >>> pruning_steps(IterativeSparsity([0.5, 0.8], begin_step=10, every=5))
    [10, 15]
    """
    if not isinstance(schedule, StatisticalSchedule):
        raise TypeError(
            "pruning_steps lists the steps of tfstatprune schedules only, got "
            f"{type(schedule).__name__}; use schedule_decision(schedule, step) step by step."
        )
    return [event.step for event in schedule.events()]
