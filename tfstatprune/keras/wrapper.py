"""The pruning wrapper: tfmot's ``PruneLowMagnitude`` whose masks follow scores.

It keeps everything tfmot's wrapper has -- the ``mask``/``threshold``/
``pruning_step`` variables, the ``weights = weights * mask`` op, the step
counter -- so ``tfmot.sparsity.keras.strip_pruning``, ``UpdatePruningStep``,
``PruningSummaries`` and ``prune_scope`` keep working. What changes is who
writes the masks: not a magnitude threshold inside the graph, but
:class:`tfstatprune.keras.callbacks.StatisticalPruning`, which scores the
weights with the wrapper's criterion at each pruning step of the schedule.
Inside ``fit`` the wrapper only checks that this happened.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import (
    pruning_impl,
    pruning_schedule,
    pruning_wrapper,
)

from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.granularity import check_granularity, groups_follow_bias
from tfstatprune.schedules import IterativeSparsity, OneShotSparsity

__all__ = ["PruneStatistically", "SCOPES", "schedule_objects"]

SCOPES = ("layer", "global")
_NO_MASKS_MESSAGE = (
    "The pruning schedule asks for new masks at this step, but no statistical mask "
    "update ran: pass callbacks=tfstatprune.callbacks(stats_data) to model.fit."
)


def schedule_objects() -> dict[str, type]:
    """The schedule classes a saved wrapper may refer to, by class name."""
    return {
        "ConstantSparsity": pruning_schedule.ConstantSparsity,
        "PolynomialDecay": pruning_schedule.PolynomialDecay,
        "OneShotSparsity": OneShotSparsity,
        "IterativeSparsity": IterativeSparsity,
    }


class _ExternalMasks(pruning_impl.Pruning):
    """tfmot's ``Pruning`` with the in-graph magnitude update replaced by a check.

    At a step where the schedule prunes, the masks must have been written for
    that step (``mask_step == step``); otherwise the training step fails with a
    message naming the missing callback.
    """

    def __init__(self, mask_step: tf.Variable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mask_step = mask_step

    def conditional_mask_update(self) -> tf.Operation:
        step = self._step_fn()
        should_prune = self._pruning_schedule(step)[0]
        ok = tf.logical_or(tf.logical_not(should_prune), tf.equal(self._mask_step, step))
        return tf.debugging.Assert(ok, [_NO_MASKS_MESSAGE, step])


@keras.utils.register_keras_serializable(package="tfstatprune")
class PruneStatistically(pruning_wrapper.PruneLowMagnitude):
    """Wraps a prunable layer; its masks are set by scores of ``criterion``.

    Args:
      layer: the layer to prune (Dense, Conv, ... anything tfmot can wrap).
      pruning_schedule: a tfmot ``PruningSchedule`` (tfstatprune's
        ``OneShotSparsity``/``IterativeSparsity`` or tfmot's own).
      criterion: a registered criterion name (see
        ``tfstatprune.available_criteria()``) or a callable
        ``(theta, stats, **options) -> scores``.
      criterion_options: options passed to the criterion, e.g.
        ``{"hessian": "ggn"}``.
      scope: ``"layer"`` (each layer reaches the schedule's sparsity) or
        ``"global"`` (one threshold across all globally scoped layers).
      prune_bias: also mask the layer's bias (implied by units and filters).
      granularity: ``"weight"``, ``"unit"``, ``"filter"``, ``"channel"`` or a
        block ``(1, 4)`` / ``(1, 16)``; see :mod:`tfstatprune.granularity`.
      keep_per_unit: with elementwise masks, the number of kernel entries per
        output unit that are never pruned (the output layer's guard against a
        class losing all its connections).
      **kwargs: passed to tfmot's wrapper (``block_size``, ...).

    Example:
      >>> from tfstatprune._keras import keras
      >>> from tfstatprune.schedules import OneShotSparsity
      >>> w = PruneStatistically(keras.layers.Dense(4), OneShotSparsity(0.5))
      >>> w.name.startswith("prune_statistically_dense")
      True

    Reference:
      Zhu & Gupta 2017 (tfmot's wrapper); the seed paper for the Wald criterion.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: pruning_schedule.PruningSchedule | None = None,
        criterion: Any = "wald",
        criterion_options: Mapping[str, Any] | None = None,
        scope: str = "layer",
        prune_bias: bool = False,
        granularity: Any = "weight",
        keep_per_unit: int = 0,
        **kwargs: Any,
    ) -> None:
        if pruning_schedule is None:
            pruning_schedule = OneShotSparsity(0.5)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        get_criterion(criterion)  # fail early on an unknown name
        super().__init__(layer, pruning_schedule=pruning_schedule, **kwargs)
        self.criterion = criterion
        self.criterion_options = dict(criterion_options or {})
        self.scope = scope
        self.granularity = check_granularity(granularity)
        self.prune_bias = bool(prune_bias) or groups_follow_bias(self.granularity)
        self.keep_per_unit = int(keep_per_unit)

    def build(self, input_shape: Any) -> None:
        if self.prune_bias:
            inner = self.layer
            base = inner.get_prunable_weights

            def with_bias() -> list[tf.Variable]:
                found = list(base())
                bias = getattr(inner, "bias", None)
                if bias is not None and all(bias is not w for w in found):
                    found.append(bias)
                return found

            inner.get_prunable_weights = with_bias
        super().build(input_shape)
        self.mask_step = self.add_weight(
            "mask_step",
            shape=[],
            initializer=keras.initializers.Constant(-1),
            dtype=tf.int64,
            trainable=False,
        )
        self.pruning_obj = _ExternalMasks(
            self.mask_step,
            training_step_fn=lambda: self.pruning_step,
            pruning_vars=self.pruning_vars,
            pruning_schedule=self.pruning_schedule,
            block_size=self.block_size,
            block_pooling_type=self.block_pooling_type,
            sparsity_m_by_n=self.sparsity_m_by_n,
        )

    # Statistics are collected through the plain layer: no step counting, no
    # mask ops (the collector calls this instead of ``call``).
    def statistics_call(self, inputs: Any, training: Any = None, **kwargs: Any) -> Any:
        if "training" in inspect.getfullargspec(self.layer.call).args:
            kwargs["training"] = training
        return self.layer.call(inputs, **kwargs)

    def set_masks(self, masks: Mapping[str, np.ndarray], step: int) -> None:
        """Write masks (by weight name) and apply them; records ``step`` as done."""
        for weight, mask, _ in self.pruning_vars:
            if weight.name in masks:
                mask.assign(np.asarray(masks[weight.name], mask.dtype.as_numpy_dtype))
        self.mask_step.assign(step)
        self.apply_masks()

    def apply_masks(self) -> None:
        """``weights = weights * mask`` now (tfmot's weight mask op)."""
        for weight, mask, _ in self.pruning_vars:
            weight.assign(weight * tf.cast(mask, weight.dtype))

    def current_masks(self) -> dict[str, np.ndarray]:
        """The masks by weight name (1 keep, 0 pruned)."""
        return {weight.name: mask.numpy() for weight, mask, _ in self.pruning_vars}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["pruning_schedule"] = keras.utils.serialize_keras_object(self.pruning_schedule)
        if not isinstance(self.criterion, str):
            raise ValueError(
                "a wrapper with a callable criterion cannot be saved; register it with "
                "tfstatprune.register_criterion(name) and pass the name"
            )
        config.update(
            criterion=self.criterion,
            criterion_options=dict(self.criterion_options),
            scope=self.scope,
            prune_bias=self.prune_bias,
            keep_per_unit=self.keep_per_unit,
            granularity=list(self.granularity)
            if isinstance(self.granularity, tuple)
            else self.granularity,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruneStatistically:
        config = dict(config)
        schedule = config.pop("pruning_schedule")
        if isinstance(schedule, dict) and "class_name" not in schedule:
            schedule = {"class_name": "ConstantSparsity", "config": schedule}
        config["pruning_schedule"] = keras.utils.deserialize_keras_object(
            schedule, module_objects=schedule_objects(), custom_objects=schedule_objects()
        )
        config["layer"] = keras.layers.deserialize(config.pop("layer"))
        return cls(**config)
