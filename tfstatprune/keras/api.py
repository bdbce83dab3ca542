"""The user's entry points: wrap, score, prune once, strip."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras
from tfstatprune._translate import require_tf_keras_model, returns_users_keras
from tfstatprune.granularity import Granularity, expand
from tfstatprune.keras.allocation import error_curve_levels
from tfstatprune.keras.config import (
    DEFAULT_MIN_WEIGHTS_PER_CLASS,
    ONE_SHOT_ARGUMENTS,
    MaskSettings,
    PruneSettings,
    StatsConfig,
    settings_from_arguments,
)
from tfstatprune.keras.consistency import (
    UNIT_GRANULARITIES,
    choose_layers,
    coupled_units,
    follow_dead_units,
    zero_rows,
)
from tfstatprune.keras.graph import trace_units
from tfstatprune.keras.layers import is_prunable, iter_layers, unsupported_layers
from tfstatprune.keras.recalibration import (
    batchnorms_downstream,
    has_examples,
    recalibrate_batchnorm,
)
from tfstatprune.keras.refit import output_dense, refit_output_layer, require_examples
from tfstatprune.keras.scoring import MaskUnit, mask_units, resolve_criterion, score_units
from tfstatprune.keras.step import column_floors, multiply_masks, prune_step
from tfstatprune.keras.wrapper import (
    PruneStatistically,
    remember_stats_data,
    schedule_objects,
)
from tfstatprune.masking import check_sparsity, compute_masks
from tfstatprune.schedules import OneShotSparsity
from tfstatprune.stats import check_stats_data
from tfstatprune.stats.data import first_dim, labelled_arrays
from tfstatprune.stats.keys import weight_keys
from tfstatprune.stopping import DEFAULT_ALPHA, SparsityChoice, choose_sparsity

DEFAULT_SUBSTEPS = 4
#: Keyword arguments of a Keras layer: given with a single layer to prune, they go to
#: its wrapper, as tfmot's ``prune_low_magnitude(layer, ..., input_shape=...)`` does.
WRAPPER_LAYER_ARGUMENTS = frozenset(
    {"input_shape", "batch_input_shape", "input_dim", "dtype", "trainable"}
)
DEFAULT_AUTO_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)

__all__ = [
    "AutoPruneResult",
    "NotAModelError",
    "copy_model",
    "prune_auto",
    "prune_once",
    "prune_scope",
    "prune_statistically",
    "scores",
    "strip_pruning",
]


class NotAModelError(TypeError, ValueError):
    """The object to prune is no tf_keras model (a ``ValueError``, as in tfmot, and a
    ``TypeError``)."""


def _refuse_one_shot_arguments(function: str, options: dict[str, Any], why: str) -> None:
    """Raise a clear ``TypeError`` for arguments that apply to :func:`prune_once` only."""
    given = [name for name in ONE_SHOT_ARGUMENTS if name in options]
    if given:
        verb = "they apply" if len(given) > 1 else "it applies"
        raise TypeError(
            f"{function}() takes no {', '.join(given)}: {verb} to prune_once only (one-shot "
            f"pruning without training); {why}"
        )


def _require_graph_model(model: Any) -> keras.Model:
    try:
        model = require_tf_keras_model(model)
    except TypeError as error:
        raise NotAModelError(str(error)) from None
    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        raise ValueError(
            f"{type(model).__name__} is a subclassed model; tfstatprune (like tfmot) prunes "
            "Sequential and functional models: rebuild it with the functional API"
        )
    return model


def copy_model(model: keras.Model) -> keras.Model:
    """A deep copy (new layers, same weights); the original is never touched."""
    clone = keras.models.clone_model(model)
    if model.built:  # (a model built later has no weights yet)
        clone.set_weights(model.get_weights())
    return clone


@returns_users_keras("wrapped")
def prune_statistically(
    model: keras.Model | keras.layers.Layer | Sequence[keras.layers.Layer],
    stats_data: Any = None,
    criterion: Any = "wald",
    pruning_schedule: Any = None,
    *,
    scope: str = "layer",
    prune_bias: bool = False,
    granularity: Granularity = "weight",
    layers: Sequence[str] | None = None,
    min_weights_per_class: int = DEFAULT_MIN_WEIGHTS_PER_CLASS,
    min_weights_per_unit: int = 0,
    sparsity_m_by_n: tuple[int, int] | None = None,
    max_layer_sparsity: float | None = None,
    **options: Any,
) -> keras.Model:
    """Wrap every prunable layer of a copy of ``model`` for statistical pruning.

    The returned model is compiled and fitted as usual, with
    ``callbacks=tfstatprune.callbacks()``; at each pruning step of the
    schedule its masks are set from the criterion's scores.

    Args:
      model: a tf_keras Sequential or functional model (it is copied; the
        original and its weights are left as they are) -- built, or built
        later as tfmot allows (``Sequential([Dense(10), ...])``) -- or, as
        tfmot's ``prune_low_magnitude`` takes them, a layer (returns its
        wrapper) or a list of layers (returns their wrappers; build the model
        from them).
      stats_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
        batches; checked here against the model's input, and used by
        :func:`tfstatprune.callbacks` when it is given none (passing it there
        again, or other data, is allowed).
      criterion: a name from ``tfstatprune.available_criteria()`` or a callable
        ``(theta, stats, **options) -> scores``.
      pruning_schedule: a tfmot ``PruningSchedule``; default
        ``OneShotSparsity(0.5)``.
      scope: ``"layer"`` or ``"global"``.
      prune_bias: also prune biases.
      max_layer_sparsity: with ``scope="global"``, no layer's weight is
        pruned beyond this fraction at any pruning step (None, the default: no
        cap), the rest of the schedule's total taken from the other layers; as
        in :func:`prune_once`.
      granularity: what is pruned: ``"weight"``, ``"unit"`` (a Dense output
        neuron with its bias), ``"filter"``, ``"channel"``, or a block
        ``(1, 4)`` / ``(1, 16)`` of a Dense kernel's inputs; with a structured
        granularity the sparsity counts groups. With ``"unit"``/``"filter"``
        a pruned unit also zeroes, at every pruning step, the input rows
        that read it in the next wrapped Dense/Conv layers
        (:mod:`tfstatprune.keras.consistency`).
      layers: names of the layers to prune (default: every prunable layer;
        for ``"unit"``/``"filter"``, every one but the model's output layers,
        whose units are its outputs: list them to prune them).
      min_weights_per_class: with ``granularity="weight"``, the output layer
        keeps at least this many weights per output unit (0: off).
      min_weights_per_unit: the same floor for every other pruned layer.
      sparsity_m_by_n: ``(m, n)``: N:M masks, m zeros in every n consecutive
        inputs of each output unit (tfmot's layout and meaning; it overrides
        the schedule's sparsity, at the schedule's pruning steps).
      **options: criterion options, e.g. ``hessian="ggn"``; with a single
        layer (or a list), also the wrapper's layer arguments
        (``input_shape=``, ``dtype=``, ...: :data:`WRAPPER_LAYER_ARGUMENTS`), as
        tfmot takes them.

    Returns:
      The wrapped copy, uncompiled (or the wrapper(s) of the layer(s)).

    Raises:
      ValueError: not a model or layer(s); a subclassed model; a layer with
        weights that tfmot cannot prune (named, as tfmot does); and the
        errors of the arguments.

    Example:
      >>> import numpy as np, tfstatprune as tsp
      >>> from tfstatprune._keras import keras
      >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
      >>> p = tsp.prune_statistically(m, criterion="magnitude",
      ...                             pruning_schedule=tsp.OneShotSparsity(0.5))
      >>> [type(layer).__name__ for layer in p.layers]
      ['PruneStatistically']
    """
    _refuse_one_shot_arguments(
        "prune_statistically",
        options,
        "while the model trains the schedule sets the pruning steps, "
        "tfstatprune.callbacks(..., reset_batchnorm=True) resets the BatchNormalization "
        "statistics after each of them to be re-learned, and "
        "tfstatprune.recalibrate_batchnorm(model, data) re-estimates them on data",
    )
    layer_arguments = {k: options.pop(k) for k in list(options) if k in WRAPPER_LAYER_ARGUMENTS}
    prune, _ = settings_from_arguments(
        criterion=criterion,
        scope=scope,
        prune_bias=prune_bias,
        granularity=granularity,
        layers=layers,
        min_weights_per_class=min_weights_per_class,
        min_weights_per_unit=min_weights_per_unit,
        sparsity_m_by_n=sparsity_m_by_n,
        max_layer_sparsity=max_layer_sparsity,
        **options,
    )
    crit = resolve_criterion(criterion, options)
    if pruning_schedule is None:
        pruning_schedule = OneShotSparsity(0.5)

    def wrapper(layer: keras.layers.Layer, guarded: bool = False) -> PruneStatistically:
        wrapped = PruneStatistically.from_settings(
            layer,
            pruning_schedule,
            prune.masks,
            keep_per_unit=prune.column_floor(output=guarded),
            **layer_arguments,
        )
        remember_stats_data(wrapped, stats_data)
        return wrapped

    if isinstance(model, (list, tuple)) and all(
        isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.Model)
        for layer in model
    ):
        return [wrapper(layer) for layer in model]
    if isinstance(model, keras.layers.Layer) and not isinstance(model, keras.Model):
        return wrapper(model)
    if layer_arguments:
        raise ValueError(
            f"{sorted(layer_arguments)} are arguments of a layer: they apply when "
            "prune_statistically wraps a single layer (as tfmot's prune_low_magnitude "
            "passes them to the wrapper), not a model"
        )
    model = _require_graph_model(model)
    unsupported = [] if layers is not None else unsupported_layers(model)
    if unsupported:
        named = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in unsupported)
        raise ValueError(
            f"tfmot cannot prune the layer(s) {named}: they are neither built-in layers of "
            "tfmot's prune registry nor a tfmot PrunableLayer (or a layer with "
            "get_prunable_weights()). Implement PrunableLayer for them, or pass layers=[...] "
            "naming the layers to prune"
        )
    if model.built:
        needs = crit.needs(options)
        if needs.gradients and not needs.history and stats_data is not None:
            check_stats_data(model, stats_data)  # (a history criterion's: WeightHistory)
        chosen = choose_layers(model, layers, granularity)
        mask_units(chosen, granularity, prune_bias=prune_bias)  # fails early on a misfit
        chosen_names = {layer.name for layer in chosen}
        guarded = set(model.output_names)
    else:  # tfmot wraps models built later by type alone: the wrappers build them
        chosen_names = _unbuilt_choice(model, layers, granularity)
        guarded = {model.layers[-1].name} if model.layers else set()
    private = copy_model(model)

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=wrap)
        if layer.name in chosen_names:
            return wrapper(layer, layer.name in guarded)
        return layer

    return keras.models.clone_model(private, clone_function=wrap)


def _unbuilt_choice(
    model: keras.Model, layers: Sequence[str] | None, granularity: Granularity
) -> set[str]:
    """The names of the layers to prune in a Sequential model that is not built yet."""
    prunable = [layer.name for layer in iter_layers(model) if is_prunable(layer)]
    if layers is not None:
        unknown = sorted(set(layers) - set(prunable))
        if unknown:
            raise ValueError(
                f"layers {unknown} are not prunable layers of {model.name!r}; prunable: "
                f"{sorted(prunable)}"
            )
        return set(layers)
    if granularity in UNIT_GRANULARITIES and prunable and prunable[-1] == model.layers[-1].name:
        prunable = prunable[:-1]  # the output layer's units are its outputs (see choose_layers)
    if not prunable:
        raise ValueError(f"model {model.name!r} has no prunable layers")
    return set(prunable)


@returns_users_keras("names")
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
    skip_nonfinite: bool = False,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Scores of every prunable weight: ``{weight key: array of the weight's shape}``.

    Higher = more important. With a structured granularity every entry carries
    its group's score. Keys are the layer path and the weight's role
    (``"fc1/kernel:0"``, :func:`tfstatprune.stats.keys.weight_keys`): a freshly
    built model's ``variable.name``, and the same after saving and loading.
    Arguments as in :func:`prune_once` (``skip_nonfinite`` included). An N:M
    pattern (``sparsity_m_by_n``) is a rule for masks, not for scores: pass it
    to :func:`prune_once` or :func:`prune_statistically`.
    """
    if "sparsity_m_by_n" in options:
        raise TypeError(
            "scores() takes no sparsity_m_by_n: the scores of every weight are the same "
            "whatever the N:M pattern; it decides only which weights a mask keeps, so pass "
            "it to prune_once(...) or prune_statistically(...)"
        )
    _refuse_one_shot_arguments(
        "scores", options, "the scores are those of the model as it is, nothing is pruned"
    )
    prune, stats = settings_from_arguments(
        criterion=criterion,
        granularity=granularity,
        prune_bias=prune_bias,
        layers=layers,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
        skip_nonfinite=skip_nonfinite,
        **options,
    )
    model = _require_graph_model(model)
    chosen = choose_layers(model, layers, granularity)
    units = mask_units(chosen, granularity, prune_bias=prune_bias)
    result = score_units(model, units, stats_data, criterion, prune.masks.options, stats)
    found = {}
    for unit in units:
        if unit.groupings is None:
            found[unit.names[0]] = result.scores[unit.key]
        else:
            for name, grouping in zip(unit.names, unit.groupings, strict=True):
                found[name] = expand(result.scores[unit.key], grouping)
    return found


@returns_users_keras()
def prune_once(
    model: keras.Model,
    stats_data: Any,
    sparsity: float | str,
    criterion: Any = "wald",
    scope: str = "layer",
    *,
    granularity: Granularity = "weight",
    prune_bias: bool = False,
    layers: Sequence[str] | None = None,
    min_weights_per_class: int = DEFAULT_MIN_WEIGHTS_PER_CLASS,
    min_weights_per_unit: int = 0,
    sparsity_m_by_n: tuple[int, int] | None = None,
    max_layer_sparsity: float | None = None,
    substeps: int | None = None,
    recalibrate_batchnorm: bool | None = None,
    allocation: str = "threshold",
    refit_output: bool = False,
    holdout: Any = None,
    alpha: float = DEFAULT_ALPHA,
    loss: Any = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    verbose: int = 1,
    skip_nonfinite: bool = False,
    **options: Any,
) -> keras.Model:
    """One-shot pruning without training: a pruned copy of ``model`` (plain Keras).

    Args:
      model: a tf_keras model (left untouched).
      stats_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
        batches (may be None for criteria needing no statistics).
      sparsity: fraction of each layer's (``scope="layer"``) or of all
        (``"global"``) prunable weights -- or groups, with a structured
        granularity -- to set to zero, in [0, 1); or ``"auto"``: the highest
        level not significantly worse than the dense model on ``holdout``
        (see :func:`prune_auto`, whose report is printed).
      criterion: a criterion name or callable; the default ``"wald"`` is the
        best Wald estimator each layer allows (:mod:`tfstatprune.criteria`).
      scope: ``"layer"`` (every layer at ``sparsity``) or ``"global"`` (one
        threshold over all layers' scores: each layer's sparsity follows from
        them; with ``verbose`` the levels chosen are printed, those of the
        pruned tensors; :func:`tfstatprune.sparsity_report` of the result
        gives each layer's zeros, its kept bias counted in the layer's size).
      max_layer_sparsity: with ``scope="global"``, a cap: no layer's weight
        (kernel, or bias with ``prune_bias``; its groups with a structured
        granularity) is pruned beyond this fraction, the rest of the global
        total taken from the other layers by the same ranking
        (:func:`tfstatprune.masking.compute_masks`). None (the default) is no
        cap, as before. A cap below what ``sparsity`` needs is a ValueError
        before any statistics are collected.
      allocation: with ``scope="global"`` and ``granularity="weight"``, how
        the layers' levels are chosen: ``"threshold"`` (default: one threshold
        over all scores) or ``"error_curves"``: each layer is pruned alone to
        a grid of levels with the criterion's update and its error measured
        (the joint Wald statistic of its restriction for ``wald``), and the
        levels minimising the summed error at the total are used, as OBC and
        SPDY allocate (:mod:`tfstatprune.keras.allocation`; about 25 updates
        per layer on the dense statistics, before the sub-steps).
      granularity: ``"weight"``, ``"unit"``, ``"filter"``, ``"channel"``,
        ``(1, 4)`` or ``(1, 16)``. With ``"unit"``/``"filter"`` a pruned
        unit also zeroes the input rows that read it in the next Dense/Conv
        layers, pruned or not (:mod:`tfstatprune.keras.consistency`).
      prune_bias: also prune biases (implied by units and filters).
      layers: names of the layers to prune (default: all prunable; for
        ``"unit"``/``"filter"``, all but the model's output layers, whose
        units are its outputs -- a class: list them to prune them).
      min_weights_per_class: with ``granularity="weight"``, the output layer
        keeps at least this many weights per output unit (class), so no class
        loses all its connections; 0 turns it off.
      min_weights_per_unit: with ``granularity="weight"``, every pruned Dense
        kernel keeps at least this many weights per output unit (default 0:
        off): a unit emptied by the criterion cannot be revived by
        retraining with the masks held.
      sparsity_m_by_n: ``(m, n)``: N:M masks instead, m zeros in every n
        consecutive inputs of each output unit, the best scores kept (tfmot's
        layout, :func:`tfstatprune.masking.m_by_n_masks`); ``sparsity`` must
        then be ``m / n``.
      substeps: prune in this many steps of geometrically shrinking density,
        the statistics recomputed between them (default: 4 for criteria that
        update the surviving weights -- ``wald``, ``obs`` -- else 1).
      recalibrate_batchnorm: after pruning, set the moving mean and variance of
        the BatchNormalization layers downstream of a pruned layer to the exact
        statistics of their new inputs over ``stats_data`` (its first
        ``max_examples`` examples, in chunks of ``batch_size``;
        :func:`tfstatprune.recalibrate_batchnorm`, Li et al. 2020's adaptive
        batch normalization). None (default): when the model has such layers
        (a CNN) and ``stats_data`` holds examples; True: always (an error
        without examples); False: never (the statistics stay the dense model's).
      refit_output: after pruning (and ``recalibrate_batchnorm``), set the
        surviving weights of the model's output Dense layer to the restricted
        minimiser of the loss on ``stats_data`` (its first ``max_examples``),
        its inputs held and its zeros kept: convex for a cross-entropy on a
        softmax/sigmoid, solved by L-BFGS (:func:`tfstatprune.refit_output_layer`,
        where the block criteria's update takes one quadratic step). A fit of
        that layer's weights on the examples, no other layer moves; default
        False. Measured in docs/results/refit_output.md.
      holdout: ``(x, y)`` held-out data for ``sparsity="auto"``.
      alpha: the test level for ``sparsity="auto"``.
      loss: per-example loss (default: the compiled loss).
      max_examples: use at most this many examples for the statistics.
      batch_size: examples per statistics chunk.
      seed: seed for sampled labels and the ``random`` criterion.
      verbose: 1 shows the statistics progress bar.
      skip_nonfinite: leave out the examples of ``stats_data`` whose loss or
        gradients are NaN/Inf, with a warning saying how many (default: they
        are an error naming them).
      **options: criterion options (``hessian="ggn"``, ``damping=...``, ...).

    Returns:
      A copy of ``model`` with exactly ``round(sparsity * N)`` weights (or
      groups) zeroed per layer (at least one kept), or in all layers together
      in global scope; criteria with an update (``wald``, ``obs``) also move
      the surviving weights to the restricted estimator; BatchNormalization
      statistics re-estimated as ``recalibrate_batchnorm`` says.

    Raises:
      ValueError: ``recalibrate_batchnorm=True`` without examples in
        ``stats_data``; and the errors of the other arguments.
    """
    settings = settings_from_arguments(
        criterion=criterion,
        scope=scope,
        granularity=granularity,
        prune_bias=prune_bias,
        layers=layers,
        min_weights_per_class=min_weights_per_class,
        min_weights_per_unit=min_weights_per_unit,
        sparsity_m_by_n=sparsity_m_by_n,
        max_layer_sparsity=max_layer_sparsity,
        substeps=substeps,
        recalibrate_batchnorm=recalibrate_batchnorm,
        allocation=allocation,
        refit_output=refit_output,
        loss=loss,
        max_examples=max_examples,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
        skip_nonfinite=skip_nonfinite,
        **options,
    )
    if isinstance(sparsity, str):
        if sparsity != "auto":
            raise ValueError(f"sparsity must be a number in [0, 1) or 'auto', got {sparsity!r}")
        result = _prune_auto(model, stats_data, holdout, DEFAULT_AUTO_LEVELS, alpha, *settings)
        print(result)
        return result.model
    return _prune_copy(model, stats_data, sparsity, *settings)


def _substep_levels(sparsity: float, steps: int) -> list[float]:
    """Sparsities ``1 - (1 - s)^(t / T)``, t = 1..T: equal ratios of surviving weights."""
    if steps < 1:
        raise ValueError(f"substeps must be >= 1, got {steps}")
    density = 1.0 - float(sparsity)
    return [1.0 - density ** (t / steps) for t in range(1, steps)] + [float(sparsity)]


def _prune_copy(
    model: keras.Model,
    stats_data: Any,
    sparsity: float,
    settings: PruneSettings,
    stats: StatsConfig,
) -> keras.Model:
    """A pruned copy of ``model``: :func:`prune_step` at each sub-step's level."""
    model = _require_graph_model(model)
    if settings.recalibrate_batchnorm and not has_examples(stats_data):
        raise ValueError(
            "recalibrate_batchnorm=True re-estimates the BatchNormalization statistics on the "
            f"examples of stats_data, but stats_data is {type(stats_data).__name__}: pass "
            "stats_data=(x, y) (or a tf.data.Dataset of (x, y) batches), or leave "
            "recalibrate_batchnorm=None"
        )
    if settings.refit_output and not has_examples(stats_data):
        raise ValueError(
            "refit_output=True fits the output layer on the examples of stats_data, but "
            f"stats_data is {type(stats_data).__name__}: pass stats_data=(x, y) (or a "
            "tf.data.Dataset of (x, y) batches), or leave refit_output=False"
        )
    masking = settings.masks
    crit = resolve_criterion(masking.criterion, masking.options)
    substeps = settings.substeps
    if masking.sparsity_m_by_n is not None:
        m, n = masking.sparsity_m_by_n
        if not math.isclose(float(sparsity), m / n):
            raise ValueError(
                f"sparsity_m_by_n={masking.sparsity_m_by_n} prunes {m} of every {n} weights; "
                f"pass sparsity={m / n:g} with it (got {sparsity})"
            )
        substeps = 1  # the pattern is reached at once: each group keeps its n - m best
    if substeps is None:
        substeps = DEFAULT_SUBSTEPS if crit.update is not None else 1
    levels = _substep_levels(check_sparsity(sparsity), substeps)
    pruned = copy_model(model)
    if stats.loss is None:  # the copy is not compiled
        stats = dataclasses.replace(stats, loss=getattr(model, "loss", None))
    chosen = choose_layers(pruned, settings.layers, masking.granularity)
    if settings.refit_output:  # a model it cannot refit fails before the statistics
        _check_refit(pruned, chosen, stats_data, masking, levels[-1], stats.max_examples)
    units = mask_units(chosen, masking.granularity, prune_bias=masking.prune_bias)
    outputs = set(pruned.output_names)
    protect = column_floors(
        units, lambda layer: settings.column_floor(output=layer.name in outputs)
    )
    if (
        masking.scope == "global"
        and masking.sparsity_m_by_n is None
        and (masking.max_layer_sparsity is not None or protect)
    ):
        _check_capacity(units, levels[-1], masking.max_layer_sparsity, protect)
    by_name = {k: w for w, k in weight_keys(pruned).items()}
    dense = {k: w.numpy() for k, w in by_name.items()}
    consistent, coupled = None, []
    if masking.granularity in UNIT_GRANULARITIES:
        graph, names = trace_units(pruned), [u.layer.name for u in units]
        consistent, coupled = _dead_unit_rows(graph, names), coupled_units(graph, names)
    step_masking, step_levels = masking, list(levels)
    if settings.allocation == "error_curves":
        curves = error_curve_levels(
            pruned, units, stats_data, masking, levels[-1], stats, keep_per_column=protect
        )
        if stats.verbose:
            print(_curve_levels_line(units, curves.levels))
        # Each layer to its own level, in the same sub-steps of shrinking density.
        step_masking = dataclasses.replace(masking, scope="layer", max_layer_sparsity=None)
        by_unit = {k: _substep_levels(v, len(levels)) for k, v in curves.levels.items()}
        step_levels = [{k: v[step] for k, v in by_unit.items()} for step in range(len(levels))]
    masks = None
    for step, level in enumerate(step_levels):
        masks = prune_step(
            pruned,
            units,
            stats_data,
            step_masking,
            level,
            variables=by_name,
            write_masks=multiply_masks(by_name),
            stats=stats,
            step=step,
            previous=masks,
            keep_per_column=protect,
            consistent=consistent,
            reference=dense,
            coupled=coupled,
        ).masks
    if masking.scope == "global" and stats.verbose and masks is not None:
        print(_global_levels_line(units, masks, masking.max_layer_sparsity))
    _recalibrate_after_pruning(pruned, [u.layer for u in units], stats_data, settings, stats)
    if settings.refit_output:
        done = refit_output_layer(
            pruned,
            stats_data,
            loss=stats.loss,
            max_examples=stats.max_examples,
            batch_size=stats.batch_size,
        )
        if stats.verbose:
            print(f"[tfstatprune] {done}")
    return pruned


def _check_refit(
    model: keras.Model,
    chosen: Sequence[keras.layers.Layer],
    stats_data: Any,
    masking: MaskSettings,
    sparsity: float,
    max_examples: int | None,
) -> None:
    """Before the statistics: the output layer :func:`refit_output_layer` would fit,
    and, for ``(x, y)`` arrays, enough examples for the fewest free weights pruning
    can leave it (its nonzero kernel entries: all of them when it is not pruned,
    less the pruned share when it is pruned weight by weight at layer scope; none
    counted otherwise)."""
    dense, _ = output_dense(model)
    arrays = labelled_arrays(stats_data)
    if arrays is None:
        return  # a dataset: counted when the layer is fitted
    examples = first_dim(arrays[0])
    if max_examples is not None:
        examples = min(examples, max_examples)
    kernel = dense.kernel.numpy()
    free = int(np.count_nonzero(kernel))
    if any(layer is dense for layer in chosen):
        # weight by weight at layer scope the layer loses ceil(sparsity * size) at most;
        # groups (units, blocks) round up by whole groups, so no bound is taken
        by_weight = masking.scope == "layer" and masking.granularity == "weight"
        free = max(0, free - math.ceil(sparsity * kernel.size)) if by_weight else 0
    require_examples(dense.name, free, examples, at_least=True)


def _curve_levels_line(units: Sequence[MaskUnit], levels: Mapping[str, float]) -> str:
    """One line: the level error curves chose for each layer (each weight, where a layer
    has several units)."""
    layers = [u.layer.name for u in units]
    chosen = ", ".join(
        f"{u.layer.name if layers.count(u.layer.name) == 1 else u.key} {levels[u.key]:.1%}"
        for u in units
        if u.key in levels
    )
    return f"[tfstatprune] levels from error curves: {chosen}"


def _unit_size(unit: MaskUnit) -> int:
    """The entries a unit's scores have: its weight's, or its number of groups."""
    if unit.groupings is None:
        return int(unit.weights[0].shape.num_elements())
    return int(unit.groupings[0].count)


def _check_capacity(
    units: Sequence[MaskUnit], sparsity: float, cap: float | None, floors: Mapping[str, int]
) -> None:
    """Fail before the statistics when the caps or column floors cannot hold the global
    total.

    What they allow does not depend on the scores, so masks for equal scores (in
    the scores' shapes, which the floors read) raise exactly when the real ones
    would (the error names the numbers).
    """
    shapes = {
        u.key: tuple(u.weights[0].shape) if u.groupings is None else (_unit_size(u),) for u in units
    }
    compute_masks(
        {key: np.zeros(shape) for key, shape in shapes.items()},
        sparsity,
        scope="global",
        max_layer_sparsity=cap,
        keep_per_column=floors,
    )


def _global_levels_line(
    units: Sequence[MaskUnit], masks: Mapping[str, np.ndarray], cap: float | None = None
) -> str:
    """One line: the sparsity global scope chose for each layer, and the total.

    Args:
      units: the mask units pruned together.
      masks: their masks by weight key (0 pruned).
      cap: the ``max_layer_sparsity`` they were pruned with (None: no cap).

    Example:
      >>> from tfstatprune.keras.scoring import mask_units
      >>> layer = keras.layers.Dense(2, name="fc")
      >>> layer.build((None, 2))
      >>> units = mask_units([layer])
      >>> print(_global_levels_line(units, {units[0].key: np.array([[0, 1], [0, 0]])}))
      [tfstatprune] global scope pruned 75.0% of 4 weights: fc 75.0%
    """
    sizes: dict[str, int] = {}
    zeros: dict[str, int] = {}
    for unit in units:
        name = unit.layer.name
        for key in unit.names:
            mask = np.asarray(masks[key])
            sizes[name] = sizes.get(name, 0) + int(mask.size)
            zeros[name] = zeros.get(name, 0) + int(np.count_nonzero(mask == 0))
    total, pruned = sum(sizes.values()), sum(zeros.values())
    levels = ", ".join(f"{name} {zeros[name] / max(n, 1):.1%}" for name, n in sizes.items())
    line = (
        f"[tfstatprune] global scope pruned {pruned / max(total, 1):.1%} of {total:,} "
        f"weights: {levels}"
    )
    if cap is not None:
        line += f" (max_layer_sparsity {cap:g})"
    return line


def _recalibrate_after_pruning(
    pruned: keras.Model,
    layers: Sequence[keras.layers.Layer],
    stats_data: Any,
    settings: PruneSettings,
    stats: StatsConfig,
) -> None:
    """Re-estimate the BatchNormalization layers downstream of the pruned ``layers`` on
    ``stats_data``, as ``settings.recalibrate_batchnorm`` says (None: when there are
    such layers and examples)."""
    wanted = settings.recalibrate_batchnorm
    if wanted is False or (wanted is None and not has_examples(stats_data)):
        return
    norms = batchnorms_downstream(pruned, layers)
    if not norms:
        if wanted and stats.verbose:
            print("[tfstatprune] no BatchNormalization layer after a pruned layer to re-estimate")
        return
    done = recalibrate_batchnorm(
        pruned,
        stats_data,
        layers=[norm.name for norm in norms],
        batch_size=stats.batch_size,
        max_examples=stats.max_examples,
    )
    if stats.verbose:
        print(f"[tfstatprune] {done}")


def _dead_unit_rows(
    graph: Any, names: Sequence[str]
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Masks -> masks whose pruned units also kill the input rows that read them (the
    rows of layers that are not pruned are zeroed at once)."""

    def consistent(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        masks, rows = follow_dead_units(graph, names, masks)
        for name, dead in rows.items():
            kernel = graph.layers[name].kernel
            kernel.assign(zero_rows(kernel.numpy(), dead))
        return masks

    return consistent


class AutoPruneResult(NamedTuple):
    """What :func:`prune_auto` returns: the chosen model, its sparsity and the tests."""

    model: keras.Model
    sparsity: float
    choice: SparsityChoice

    def __str__(self) -> str:
        return (
            f"sparsity='auto': chose {self.sparsity:.1%} (one-sided McNemar test vs the dense "
            f"model, level {self.choice.alpha})\n{self.choice}"
        )


def _correct(model: keras.Model, data: Any) -> np.ndarray:
    x, y = data[0], np.asarray(data[1])
    predictions = np.asarray(model.predict(x, verbose=0, batch_size=1024))
    if predictions.ndim == 2 and predictions.shape[1] > 1:
        labels = y.argmax(-1) if y.ndim == 2 else y.reshape(-1)
        return predictions.argmax(-1) == labels
    return (predictions.reshape(-1) > 0.5) == (y.reshape(-1) > 0.5)


@returns_users_keras()
def prune_auto(
    model: keras.Model,
    stats_data: Any,
    holdout: Any,
    *,
    levels: Sequence[float] = DEFAULT_AUTO_LEVELS,
    alpha: float = DEFAULT_ALPHA,
    **settings: Any,
) -> AutoPruneResult:
    """Prune at increasing levels; stop before the first significantly worse one.

    Each level is a one-shot :func:`prune_once` of ``model``; its predictions on
    ``holdout`` are paired with the dense model's and compared by a one-sided
    McNemar test (:mod:`tfstatprune.stopping`). The result is the highest level
    before the first rejection at ``alpha`` (the dense copy when the first level
    is already worse).

    Args:
      model, stats_data: as in :func:`prune_once`.
      holdout: ``(x, y)`` arrays the statistics did not see (classification).
      levels: the sparsities to try, in increasing order.
      alpha: the test's level.
      **settings: the other arguments of :func:`prune_once`.
    """
    return _prune_auto(
        model, stats_data, holdout, levels, alpha, *settings_from_arguments(**settings)
    )


def _prune_auto(
    model: keras.Model,
    stats_data: Any,
    holdout: Any,
    levels: Sequence[float],
    alpha: float,
    settings: PruneSettings,
    stats: StatsConfig,
) -> AutoPruneResult:
    if holdout is None:
        raise ValueError(
            "sparsity='auto' compares predictions on held-out data: pass holdout=(x, y)"
        )
    dense_correct = _correct(model, holdout)
    correct_at, models = {}, {}
    chosen = SparsityChoice(0.0, {}, alpha)
    for level in sorted(levels):
        models[level] = _prune_copy(model, stats_data, level, settings, stats)
        correct_at[level] = _correct(models[level], holdout)
        chosen = choose_sparsity(dense_correct, correct_at, alpha)
        if chosen.sparsity != level:
            break
    best = models.get(chosen.sparsity) or copy_model(model)
    return AutoPruneResult(best, chosen.sparsity, chosen)


@returns_users_keras()
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
