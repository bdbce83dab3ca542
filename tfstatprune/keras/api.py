"""The user's entry points: wrap, score, prune once, strip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras, require_tf_keras_model
from tfstatprune.granularity import Granularity, expand
from tfstatprune.keras.layers import select_layers
from tfstatprune.keras.scoring import decide_masks, mask_units, resolve_criterion, score_units
from tfstatprune.keras.wrapper import SCOPES, PruneStatistically, schedule_objects
from tfstatprune.schedules import OneShotSparsity
from tfstatprune.stats import check_stats_data

__all__ = [
    "copy_model",
    "prune_once",
    "prune_scope",
    "prune_statistically",
    "scores",
    "strip_pruning",
]


def _require_graph_model(model: Any) -> keras.Model:
    model = require_tf_keras_model(model)
    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        raise ValueError(
            f"{type(model).__name__} is a subclassed model; tfstatprune (like tfmot) prunes "
            "Sequential and functional models: rebuild it with the functional API"
        )
    return model


def copy_model(model: keras.Model) -> keras.Model:
    """A deep copy (new layers, same weights); the original is never touched."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def prune_statistically(
    model: keras.Model,
    stats_data: Any = None,
    criterion: Any = "wald",
    pruning_schedule: Any = None,
    *,
    scope: str = "layer",
    prune_bias: bool = False,
    granularity: Granularity = "weight",
    layers: Sequence[str] | None = None,
    **options: Any,
) -> keras.Model:
    """Wrap every prunable layer of a copy of ``model`` for statistical pruning.

    The returned model is compiled and fitted as usual, with
    ``callbacks=tfstatprune.callbacks(stats_data)``; at each pruning step of the
    schedule its masks are set from the criterion's scores.

    Args:
      model: a tf_keras Sequential or functional model (it is copied; the
        original and its weights are left as they are).
      stats_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
        batches; checked here against the model's input (pass the same data to
        :func:`tfstatprune.callbacks`).
      criterion: a name from ``tfstatprune.available_criteria()`` or a callable
        ``(theta, stats, **options) -> scores``.
      pruning_schedule: a tfmot ``PruningSchedule``; default
        ``OneShotSparsity(0.5)``.
      scope: ``"layer"`` or ``"global"``.
      prune_bias: also prune biases.
      granularity: what is pruned: ``"weight"``, ``"unit"`` (a Dense output
        neuron with its bias), ``"filter"``, ``"channel"``, or a block
        ``(1, 4)`` / ``(1, 16)`` of a Dense kernel's inputs; with a structured
        granularity the sparsity counts groups.
      layers: names of the layers to prune (default: every prunable layer).
      **options: criterion options, e.g. ``hessian="ggn"``.

    Returns:
      The wrapped copy, uncompiled.

    Example:
      >>> import numpy as np, tfstatprune as tsp
      >>> from tfstatprune._keras import keras
      >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
      >>> p = tsp.prune_statistically(m, criterion="magnitude",
      ...                             pruning_schedule=tsp.OneShotSparsity(0.5))
      >>> [type(layer).__name__ for layer in p.layers]
      ['PruneStatistically']
    """
    model = _require_graph_model(model)
    _check_scope(scope)
    crit = resolve_criterion(criterion, options)
    if pruning_schedule is None:
        pruning_schedule = OneShotSparsity(0.5)
    if crit.statistics(options) is not None and stats_data is not None:
        check_stats_data(model, stats_data)
    chosen = select_layers(model, layers)
    mask_units(chosen, granularity, prune_bias=prune_bias)  # fails early on a misfit
    chosen_names = {layer.name for layer in chosen}
    private = copy_model(model)

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=wrap)
        if layer.name in chosen_names:
            return PruneStatistically(
                layer,
                pruning_schedule=pruning_schedule,
                criterion=criterion,
                criterion_options=options,
                scope=scope,
                prune_bias=prune_bias,
                granularity=granularity,
            )
        return layer

    return keras.models.clone_model(private, clone_function=wrap)


def scores(
    model: keras.Model,
    stats_data: Any = None,
    criterion: Any = "wald",
    *,
    granularity: Granularity = "weight",
    prune_bias: bool = False,
    layers: Sequence[str] | None = None,
    loss: Any = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    verbose: int = 1,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Scores of every prunable weight: ``{weight name: array of the weight's shape}``.

    Higher = more important. With a structured granularity every entry carries
    its group's score. Arguments as in :func:`prune_once`.
    """
    model = _require_graph_model(model)
    units = mask_units(select_layers(model, layers), granularity, prune_bias=prune_bias)
    result = score_units(
        model,
        units,
        stats_data,
        criterion,
        options,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    found = {}
    for unit in units:
        if unit.groupings is None:
            found[unit.weights[0].name] = result.scores[unit.key]
        else:
            for w, grouping in zip(unit.weights, unit.groupings, strict=True):
                found[w.name] = expand(result.scores[unit.key], grouping)
    return found


def prune_once(
    model: keras.Model,
    stats_data: Any,
    sparsity: float,
    criterion: Any = "wald",
    scope: str = "layer",
    *,
    granularity: Granularity = "weight",
    prune_bias: bool = False,
    layers: Sequence[str] | None = None,
    loss: Any = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    verbose: int = 1,
    **options: Any,
) -> keras.Model:
    """One-shot pruning without training: a pruned copy of ``model`` (plain Keras).

    Args:
      model: a tf_keras model (left untouched).
      stats_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
        batches (may be None for criteria needing no statistics).
      sparsity: fraction of each layer's (``scope="layer"``) or of all
        (``"global"``) prunable weights -- or groups, with a structured
        granularity -- to set to zero, in [0, 1).
      criterion: a criterion name or callable.
      scope: ``"layer"`` or ``"global"``.
      granularity: ``"weight"``, ``"unit"``, ``"filter"``, ``"channel"``,
        ``(1, 4)`` or ``(1, 16)``.
      prune_bias: also prune biases (implied by units and filters).
      layers: names of the layers to prune (default: all prunable).
      loss: per-example loss (default: the compiled loss).
      max_examples: use at most this many examples for the statistics.
      batch_size: examples per statistics chunk.
      seed: seed for sampled labels and the ``random`` criterion.
      verbose: 1 shows the statistics progress bar.
      **options: criterion options (``hessian="ggn"``, ...).

    Returns:
      A copy of ``model`` with exactly ``round(sparsity * N)`` weights (or
      groups) zeroed per layer (at least one kept), weights otherwise unchanged.
    """
    model = _require_graph_model(model)
    _check_scope(scope)
    units = mask_units(select_layers(model, layers), granularity, prune_bias=prune_bias)
    result = score_units(
        model,
        units,
        stats_data,
        criterion,
        options,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    masks = decide_masks(units, result.scores, sparsity, scope=scope)
    pruned = copy_model(model)
    by_name = {w.name: w for w in pruned.weights}
    for name, mask in masks.items():
        target = by_name[name]
        target.assign(target.numpy() * mask.astype(target.dtype.as_numpy_dtype))
    return pruned


def strip_pruning(model: keras.Model) -> keras.Model:
    """A plain tf_keras model without pruning wrappers, zeros in place.

    Masks are applied first (after the last optimizer step the pruned weights
    may not be zero yet), then tfmot's ``strip_pruning`` removes the wrappers,
    and the result is copied so it shares no layer with ``model``.
    """
    model = require_tf_keras_model(model)
    for layer in pruning_wrapper.collect_prunable_layers(model):
        if isinstance(layer, PruneStatistically):
            layer.apply_masks()
        else:
            layer.pruning_obj.weight_mask_op()
    return copy_model(tfmot.sparsity.keras.strip_pruning(model))


def prune_scope() -> keras.utils.CustomObjectScope:
    """A scope in which saved pruned models (tfstatprune's and tfmot's) load.

    Example::

        with tfstatprune.prune_scope():
            model = keras.models.load_model("pruned.h5")
    """
    objects = {
        "PruneStatistically": PruneStatistically,
        "PruneLowMagnitude": pruning_wrapper.PruneLowMagnitude,
        **schedule_objects(),
    }
    return keras.utils.custom_object_scope(objects)
