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
import weakref
from collections.abc import Iterable, Mapping
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
from tfstatprune.keras.config import MaskSettings
from tfstatprune.masking import SCOPES
from tfstatprune.schedules import IterativeSparsity, OneShotSparsity, schedule_decision
from tfstatprune.stats.keys import weight_keys

__all__ = [
    "CRITERION_VERSION",
    "PruneStatistically",
    "SCOPES",
    "remember_stats_data",
    "schedule_objects",
    "stats_data_of",
    "upgrade_criterion",
]

_NO_MASKS_MESSAGE = (
    "The pruning schedule asks for new masks at this step, but no statistical mask "
    "update ran: pass callbacks=tfstatprune.callbacks(stats_data) to model.fit."
)


# What the criterion names in a saved wrapper mean. Version 2: "wald" is the best Wald
# estimator each layer allows (tfstatprune.criteria.block); a config without a version
# was written when "wald" was the diagonal sandwich, now "wald_diag".
CRITERION_VERSION = 2
_RENAMED_BEFORE_VERSION_2 = {"wald": "wald_diag"}


def upgrade_criterion(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a wrapper's config with its criterion named as this version names it.

    A wrapper saved before ``criterion_version`` existed that said ``"wald"``
    meant the diagonal sandwich: it loads as ``"wald_diag"`` and prunes as it
    did. The version itself is dropped (the wrapper writes the current one).

    >>> upgrade_criterion({"criterion": "wald"})
    {'criterion': 'wald_diag'}
    >>> upgrade_criterion({"criterion": "wald", "criterion_version": 2})
    {'criterion': 'wald'}
    """
    config = dict(config)
    version = config.pop("criterion_version", 1)
    if version < CRITERION_VERSION and isinstance(config.get("criterion"), str):
        config["criterion"] = _RENAMED_BEFORE_VERSION_2.get(
            config["criterion"], config["criterion"]
        )
    return config


def schedule_objects() -> dict[str, type]:
    """The schedule classes a saved wrapper may refer to, by class name."""
    return {
        "ConstantSparsity": pruning_schedule.ConstantSparsity,
        "PolynomialDecay": pruning_schedule.PolynomialDecay,
        "OneShotSparsity": OneShotSparsity,
        "IterativeSparsity": IterativeSparsity,
    }


# The data a wrapper was created with (``prune_statistically(model, stats_data)``),
# held outside the layer so that Keras neither tracks nor saves it.
_STATS_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_stats_data(wrapper: keras.layers.Layer, stats_data: Any) -> None:
    """Keep ``stats_data`` for :func:`stats_data_of` (None: nothing to keep)."""
    if stats_data is not None:
        _STATS_DATA[wrapper] = stats_data


def stats_data_of(wrappers: Iterable[keras.layers.Layer]) -> Any:
    """The ``stats_data`` the first of ``wrappers`` that has one was created with, or None."""
    for wrapper in wrappers:
        found = _STATS_DATA.get(wrapper)
        if found is not None:
            return found
    return None


def _schedule_config(schedule: pruning_schedule.PruningSchedule) -> dict[str, Any]:
    """``{"class_name", "config"}`` of a schedule, as tfmot's wrapper stores it.

    tfmot's schedules and tfstatprune's already return that form from
    ``get_config``; serializing them once more would nest it, and their
    ``from_config`` would then get ``class_name`` as an argument.
    """
    config = schedule.get_config()
    if isinstance(config, dict) and {"class_name", "config"} <= set(config):
        return config
    return keras.utils.serialize_keras_object(schedule)


class _ExternalMasks(pruning_impl.Pruning):
    """tfmot's ``Pruning`` with the in-graph magnitude update replaced by a check.

    At a step where the schedule prunes, the masks must have been written for
    that step (``mask_step == step``); otherwise the training step fails with a
    message naming the missing callback. The graph never sees step 0 (the
    wrapper counts training batches 1, 2, ...), so the first training step
    also checks that the masks of a pruning step 0 were written.
    """

    def __init__(self, mask_step: tf.Variable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mask_step = mask_step
        # Step 0 is a constant: asked once here, not in every training step's graph.
        self._prunes_at_start = schedule_decision(self._pruning_schedule, 0).should_prune

    def conditional_mask_update(self) -> tf.Operation:
        step = self._step_fn()
        should_prune = self._pruning_schedule(step)[0]
        ok = tf.logical_or(tf.logical_not(should_prune), tf.equal(self._mask_step, step))
        if self._prunes_at_start:
            started = tf.logical_or(tf.not_equal(step, 1), self._mask_step >= 0)
            ok = tf.logical_and(ok, started)
        return tf.debugging.Assert(ok, [_NO_MASKS_MESSAGE, step])

    def _weight_assign_objs(self) -> list[Any]:
        """``weights = masked(weights)``; tfmot's ``weights * mask`` keeps a NaN as NaN."""
        context = tf.distribute.get_replica_context()
        if not context:
            return [w.assign(masked(w, m)) for w, m, _ in self._pruning_vars]
        pairs = [(masked(w, m), w) for w, m, _ in self._pruning_vars]
        if not pairs:
            return []

        def update(distribution: tf.distribute.Strategy, pairs: list) -> tf.Operation:
            # tfmot's reduction: the inner layer's weights are not ours to mirror.
            values = distribution.extended.batch_reduce_to(tf.distribute.ReduceOp.MEAN, pairs)
            return tf.group(
                [
                    distribution.extended.update(w, lambda v, x: v.assign(x), args=(value,))
                    for value, (_, w) in zip(values, pairs, strict=True)
                ]
            )

        return [context.merge_call(update, args=(pairs,))]


def masked(weight: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``weight`` with the entries where ``mask`` is 0 set to exactly 0 (even NaN or inf).

    >>> masked(tf.constant([1.0, float("nan")]), tf.constant([1.0, 0.0])).numpy().tolist()
    [1.0, 0.0]
    """
    # One op, as tfmot's ``weight * mask``: the product, or 0 wherever the mask is 0.
    return tf.math.multiply_no_nan(weight, tf.cast(mask, weight.dtype))


@keras.utils.register_keras_serializable(package="tfstatprune")
class PruneStatistically(pruning_wrapper.PruneLowMagnitude):
    """Wraps a prunable layer; its masks are set by scores of ``criterion``.

    Args:
      layer: the layer to prune (Dense, Conv, ... anything tfmot can wrap).
      pruning_schedule: a tfmot ``PruningSchedule`` (tfstatprune's
        ``OneShotSparsity``/``IterativeSparsity`` or tfmot's own).
      criterion: a registered criterion name (see
        ``tfstatprune.available_criteria()``; the default ``"wald"`` is the
        block Wald statistic with the restricted estimator where the layer
        has Kronecker factors, the diagonal ``"wald_diag"`` elsewhere) or a
        callable ``(theta, stats, **options) -> scores``. A wrapper saved
        before ``"wald"`` meant that loads with ``"wald_diag"``
        (:func:`upgrade_criterion`).
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
      max_layer_sparsity: with ``scope="global"``, the highest fraction of
        each of this layer's weights the global threshold may prune (None: no
        cap); the rest of the budget goes to the other globally scoped layers
        (:func:`tfstatprune.masking.compute_masks`). Layers with different
        caps are masked as separate groups.
      **kwargs: passed to tfmot's wrapper (``block_size``, ``sparsity_m_by_n``:
        ``(m, n)``, m zeros in every n consecutive inputs of each output unit,
        the best scores kept, at every pruning step of the schedule, whose
        sparsity it overrides as in tfmot; see
        :func:`tfstatprune.masking.m_by_n_masks`).

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
        max_layer_sparsity: float | None = None,
        **kwargs: Any,
    ) -> None:
        if pruning_schedule is None:
            pruning_schedule = OneShotSparsity(0.5)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        get_criterion(criterion)  # fail early on an unknown name
        super().__init__(layer, pruning_schedule=pruning_schedule, **kwargs)
        granularity = check_granularity(granularity)
        self.settings = MaskSettings(
            criterion=criterion,
            options=criterion_options or {},
            scope=scope,
            granularity=granularity,
            prune_bias=bool(prune_bias) or groups_follow_bias(granularity),
            sparsity_m_by_n=self.sparsity_m_by_n,
            max_layer_sparsity=max_layer_sparsity,
        )
        self.sparsity_m_by_n = self.settings.sparsity_m_by_n
        self.keep_per_unit = int(keep_per_unit)
        if self.sparsity_m_by_n is not None and (self.granularity != "weight" or self.prune_bias):
            raise ValueError(
                "sparsity_m_by_n groups single kernel weights: use granularity='weight' "
                "and prune_bias=False"
            )

    @classmethod
    def from_settings(
        cls,
        layer: keras.layers.Layer,
        pruning_schedule: pruning_schedule.PruningSchedule | None,
        settings: MaskSettings,
        **kwargs: Any,
    ) -> PruneStatistically:
        """The wrapper of ``layer`` masked by ``settings``; ``kwargs`` as for the class."""
        return cls(
            layer,
            pruning_schedule,
            criterion=settings.criterion,
            criterion_options=settings.options,
            scope=settings.scope,
            prune_bias=settings.prune_bias,
            granularity=settings.granularity,
            sparsity_m_by_n=settings.sparsity_m_by_n,
            max_layer_sparsity=settings.max_layer_sparsity,
            **kwargs,
        )

    # The settings, read as the wrapper's own attributes (tfmot's style).
    criterion = property(lambda self: self.settings.criterion)
    criterion_options = property(lambda self: self.settings.options)
    scope = property(lambda self: self.settings.scope)
    granularity = property(lambda self: self.settings.granularity)
    prune_bias = property(lambda self: self.settings.prune_bias)
    max_layer_sparsity = property(lambda self: self.settings.max_layer_sparsity)

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
        """Write masks (by weight key) and apply them; records ``step`` as done."""
        keys = weight_keys(self)
        for weight, mask, _ in self.pruning_vars:
            if keys[weight] in masks:
                mask.assign(np.asarray(masks[keys[weight]], mask.dtype.as_numpy_dtype))
        self.mask_step.assign(step)
        self.apply_masks()

    def apply_masks(self) -> None:
        """``weights = weights * mask`` now, masked entries exactly 0 (see :func:`masked`)."""
        for weight, mask, _ in self.pruning_vars:
            weight.assign(masked(weight, mask))

    def current_masks(self) -> dict[str, np.ndarray]:
        """The masks by weight key (1 keep, 0 pruned).

        Keys are :func:`tfstatprune.stats.keys.weight_keys` (``fc1/kernel:0``), stable
        across saving and loading, unlike ``variable.name``.
        """
        keys = weight_keys(self)
        return {keys[weight]: mask.numpy() for weight, mask, _ in self.pruning_vars}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["pruning_schedule"] = _schedule_config(self.pruning_schedule)
        config.update(
            self.settings.get_config(),
            keep_per_unit=self.keep_per_unit,
            criterion_version=CRITERION_VERSION,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruneStatistically:
        config = upgrade_criterion(config)
        settings = MaskSettings.from_config(config)
        for key in settings.get_config():
            config.pop(key, None)
        schedule = config.pop("pruning_schedule")
        if isinstance(schedule, dict) and "class_name" not in schedule:
            schedule = {"class_name": "ConstantSparsity", "config": schedule}
        # Files written before the schedule's own {class_name, config} was kept as it
        # is hold it wrapped once more: unwrap it.
        while isinstance(schedule.get("config"), dict) and "class_name" in schedule["config"]:
            schedule = schedule["config"]
        schedule = keras.utils.deserialize_keras_object(
            schedule, module_objects=schedule_objects(), custom_objects=schedule_objects()
        )
        layer = keras.layers.deserialize(config.pop("layer"))
        return cls.from_settings(layer, schedule, settings, **config)
