"""The user's entry points: wrap, score, prune once, strip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras, require_tf_keras_model
from tfstatprune.keras.layers import prunable_weights, select_layers
from tfstatprune.keras.scoring import resolve_criterion, score_weights
from tfstatprune.keras.wrapper import SCOPES, PruneStatistically, schedule_objects
from tfstatprune.masking import compute_masks
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
    chosen_names = {layer.name for layer in select_layers(model, layers)}
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
            )
        return layer

    return keras.models.clone_model(private, clone_function=wrap)


def _plain_weights(model: keras.Model, layers: Sequence[str] | None, prune_bias: bool) -> list[Any]:
    return [
        w
        for layer in select_layers(model, layers)
        for w in prunable_weights(layer, prune_bias=prune_bias)
    ]


def scores(
    model: keras.Model,
    stats_data: Any = None,
    criterion: Any = "wald",
    *,
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

    Higher = more important. Arguments as in :func:`prune_once`.
    """
    model = _require_graph_model(model)
    weights = _plain_weights(model, layers, prune_bias)
    result = score_weights(
        model,
        weights,
        stats_data,
        criterion,
        options,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    return result.scores


def prune_once(
    model: keras.Model,
    stats_data: Any,
    sparsity: float,
    criterion: Any = "wald",
    scope: str = "layer",
    *,
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
        (``"global"``) prunable weights to set to zero, in [0, 1).
      criterion: a criterion name or callable.
      scope: ``"layer"`` or ``"global"``.
      prune_bias: also prune biases.
      layers: names of the layers to prune (default: all prunable).
      loss: per-example loss (default: the compiled loss).
      max_examples: use at most this many examples for the statistics.
      batch_size: examples per statistics chunk.
      seed: seed for sampled labels and the ``random`` criterion.
      verbose: 1 shows the statistics progress bar.
      **options: criterion options (``hessian="ggn"``, ...).

    Returns:
      A copy of ``model`` with exactly ``round(sparsity * N)`` zeros per layer
      (at least one weight kept), weights otherwise unchanged.
    """
    model = _require_graph_model(model)
    _check_scope(scope)
    weights = _plain_weights(model, layers, prune_bias)
    result = score_weights(
        model,
        weights,
        stats_data,
        criterion,
        options,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    masks = compute_masks(
        result.scores,
        sparsity,
        scope=scope,
        tiebreak={w.name: np.abs(w.numpy()) for w in weights},
    )
    pruned = copy_model(model)
    by_name = {w.name: w for w in _plain_weights(pruned, layers, prune_bias)}
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
