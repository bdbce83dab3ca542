"""From layers to masks: statistics -> criterion -> masking, shared by every entry point.

The masking problem is posed over *mask units*: with ``granularity="weight"``
each prunable tensor is one unit whose entries are ranked one by one; with a
structured granularity each layer is one unit whose groups (units, filters,
channels, blocks) are ranked, and whose member tensors (kernel, bias) share the
groups' masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.criteria.registry import HESSIAN_OPTION, Criterion, StatsRequest
from tfstatprune.granularity import (
    Granularity,
    Grouping,
    check_granularity,
    expand,
    group_ids,
    groups_follow_bias,
    reduce_groups,
    require_whole_blocks,
)
from tfstatprune.keras.config import DEFAULT_STATS, StatsConfig
from tfstatprune.keras.graph import following_gamma
from tfstatprune.keras.history import history_statistics
from tfstatprune.keras.layers import prunable_weights
from tfstatprune.masking import coupled_masks, m_by_n_masks
from tfstatprune.stats import CollectedStatistics, collect_statistics
from tfstatprune.stats.keys import weight_keys
from tfstatprune.stats.losses import resolve_loss
from tfstatprune.stats.validation import check_finite_weights

__all__ = [
    "MaskUnit",
    "ScoringResult",
    "Updates",
    "decide_masks",
    "describe_estimators",
    "estimator_name",
    "mask_units",
    "restricted_updates",
    "resolve_criterion",
    "score_units",
]


class MaskUnit(NamedTuple):
    """One entry of the masking problem.

    Attributes:
      key: the weight's key (elementwise) or the layer's name (grouped).
      weights: the member tensors.
      groupings: their group ids, or None when entries are ranked one by one.
      layer: the layer they belong to.
      names: the member tensors' keys (:func:`tfstatprune.stats.keys.weight_keys`:
        layer path and role, stable across saving and loading), the keys of
        statistics, scores and masks.
    """

    key: str
    weights: list[tf.Variable]
    groupings: list[Grouping] | None
    layer: keras.layers.Layer
    names: list[str]


class ScoringResult(NamedTuple):
    """Scores by mask-unit key (per entry, or per group), their statistics, and
    which estimator scored each layer.

    Attributes:
      scores: by mask-unit key.
      statistics: what was collected for them (None for criteria needing none).
      fallback_layers: layers scored by the criterion's fallback (no Kronecker
        factors: Embedding, custom layers), sorted.
      estimators: ``{layer name: estimator}``, the estimator the name of the
        criterion function that scored the layer (``"wald_block"`` or
        ``"wald_diag"`` for the default ``"wald"``; see :func:`estimator_name`).
    """

    scores: dict[str, np.ndarray]
    statistics: CollectedStatistics | None
    fallback_layers: tuple[str, ...] = ()
    estimators: Mapping[str, str] = MappingProxyType({})


def resolve_criterion(criterion: Any, options: Mapping[str, Any]) -> Criterion:
    """Look up ``criterion`` and check that it accepts ``options``.

    Raises:
      ValueError: unknown criterion, or an option the criterion does not take.
    """
    crit = get_criterion(criterion)
    params = inspect.signature(crit.fn).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"criterion {crit.name!r} does not take the option(s) {unknown}; "
                f"it takes {accepted or 'none'}"
            )
    return crit


def mask_units(
    layers: Sequence[keras.layers.Layer],
    granularity: Granularity = "weight",
    *,
    prune_bias: bool = False,
    weights: Mapping[str, Sequence[tf.Variable]] | None = None,
) -> list[MaskUnit]:
    """The mask units of ``layers`` at ``granularity``.

    Args:
      layers: the (inner, unwrapped) layers to prune.
      granularity: see :mod:`tfstatprune.granularity`.
      prune_bias: include biases (implied for units and filters).
      weights: the tensors to use per layer name (default: the layer's
        prunable weights).

    Raises:
      ValueError: a granularity that does not fit a layer's kernel (also
        blocks that leave a partial last block: see
        :func:`tfstatprune.granularity.require_whole_blocks`).
    """
    granularity = check_granularity(granularity)
    with_bias = prune_bias or groups_follow_bias(granularity)
    units = []
    for layer in layers:
        keys = weight_keys(layer)
        members = list(
            weights[layer.name]
            if weights is not None
            else prunable_weights(layer, prune_bias=with_bias)
        )
        names = [keys[w] for w in members]
        if granularity == "weight":
            units.extend(
                MaskUnit(k, [w], None, layer, [k]) for k, w in zip(names, members, strict=True)
            )
            continue
        bias = getattr(layer, "bias", None)
        groupings = []
        try:
            for w in members:
                is_bias = bias is not None and w is bias
                if not is_bias:
                    require_whole_blocks(w.shape, granularity)
                groupings.append(group_ids(w.shape, granularity, bias=is_bias))
        except ValueError as error:
            raise ValueError(f"layer {layer.name!r}: {error}") from None
        units.append(MaskUnit(layer.name, members, groupings, layer, names))
    return units


def score_units(
    model: keras.Model,
    units: Sequence[MaskUnit],
    stats_data: Any,
    criterion: Any,
    options: Mapping[str, Any] | None = None,
    stats: StatsConfig = DEFAULT_STATS,
    *,
    step: int = 0,
) -> ScoringResult:
    """Collect the statistics ``criterion`` needs and score every mask unit.

    What the criterion needs is its :class:`~tfstatprune.criteria.registry.StatsRequest`:
    one that names a ``seed`` option (``random``) gets, unless the user set it,
    a distinct seed per mask unit and pruning step, derived from
    ``stats.seed``; one that names a ``bn_scale`` option (``bn_scale``) gets,
    per grouped unit, the current ``gamma`` of the BatchNormalization after
    its layer. ``stats.skip_nonfinite`` leaves out examples with a NaN/Inf
    loss or gradient (:func:`~tfstatprune.stats.collect_statistics`); weights
    holding NaN/Inf are refused, naming the layer.
    """
    options = dict(options or {})
    crit = resolve_criterion(criterion, options)
    needs = _curvature_for_loss(crit.needs(options), options, model, stats.loss)
    weights = [w for unit in units for w in unit.weights]
    check_finite_weights(
        {k: (w, u.layer.name) for u in units for k, w in zip(u.names, u.weights, strict=True)}
    )
    statistics = None
    if needs.history:  # training history, not gradients
        statistics = history_statistics(crit.name, stats_data, [k for u in units for k in u.names])
    elif needs.gradients:
        if stats_data is None:
            raise ValueError(
                f"criterion {crit.name!r} needs statistics: pass stats_data=(x, y) or a "
                "tf.data.Dataset of (x, y) batches"
            )
        arguments = stats.collect_arguments(step=step)
        if needs.loss is not None:
            arguments["loss"] = needs.loss
        statistics = collect_statistics(
            model,
            stats_data,
            weights=weights,
            hessian=needs.hessian,
            kronecker=needs.kronecker,
            activations=needs.activations,
            diagonal_curvature=needs.diagonal_curvature,
            **arguments,
        )
    derive_seed = needs.seed if needs.seed not in options else None
    derive_gamma = needs.bn_scale if needs.bn_scale not in options else None
    scores = {}
    fell_back = []
    estimators = {}
    for index, unit in enumerate(units):
        unit_crit, unit_options = crit, dict(options)
        if _without_factors(crit, needs, unit, statistics):
            unit_crit, unit_options = _fallback(crit, {"hessian": needs.hessian, **options})
            fell_back.append(unit.layer.name)
        estimators[unit.layer.name] = estimator_name(unit_crit)
        if derive_seed is not None:
            unit_options[derive_seed] = [stats.seed, step, index]
        if derive_gamma is not None and unit.groupings is not None:
            unit_options[derive_gamma] = following_gamma(model, unit.layer, crit.name)
        thetas = [w.numpy() for w in unit.weights]
        stats_of = [statistics.weights[k] if statistics is not None else None for k in unit.names]
        if unit.groupings is None:
            scores[unit.key] = unit_crit(thetas[0], stats_of[0], **unit_options)
        else:
            scores[unit.key] = unit_crit.group_scores(
                thetas, stats_of, unit.groupings, **unit_options
            )
    if fell_back and stats.verbose:
        print(
            f"[tfstatprune] {describe_estimators(crit.name, estimators)} (no Kronecker factors "
            f"for {', '.join(dict.fromkeys(fell_back))}: scored by {crit.fallback!r}, "
            "without an update)"
        )
    return ScoringResult(scores, statistics, tuple(sorted(set(fell_back))), estimators)


def estimator_name(crit: Criterion) -> str:
    """The name of the estimator ``crit`` computes: its function's registered name.

    Several names may register one function (``"wald"`` and ``"wald_block"``:
    the block form); this is the function's own name when it is registered for
    that function, else the criterion's name.

    >>> estimator_name(get_criterion("wald")), estimator_name(get_criterion("wald_diag"))
    ('wald_block', 'wald_diag')
    """
    name = getattr(crit.fn, "__name__", crit.name)
    try:
        return name if get_criterion(name).fn is crit.fn else crit.name
    except ValueError:  # not a registered name
        return crit.name


def describe_estimators(criterion: str, estimators: Mapping[str, str]) -> str:
    """One line saying which layers each estimator scored (the per-layer choice).

    >>> describe_estimators("wald", {"fc1": "wald_block", "emb": "wald_diag", "out": "wald_block"})
    "criterion 'wald' per layer: wald_block for fc1, out; wald_diag for emb"
    """
    by_estimator: dict[str, list[str]] = {}
    for layer, name in estimators.items():
        by_estimator.setdefault(name, []).append(layer)
    parts = [
        f"{name} for {', '.join(dict.fromkeys(layers))}" for name, layers in by_estimator.items()
    ]
    return f"criterion {criterion!r} per layer: " + "; ".join(parts)


def _curvature_for_loss(
    needs: StatsRequest | None, options: Mapping[str, Any], model: keras.Model, loss: Any
) -> StatsRequest | None:
    """``needs`` with the empirical Fisher for a block criterion's default exact GGN
    when the loss is not a cross-entropy (the GGN needs the model's label distribution).

    So the default ``"wald"`` prunes a regression model as the diagonal ``"wald"``
    did before it (``hessian="fisher"``); an explicit ``hessian=`` is left alone.
    """
    if needs is None or not needs.kronecker or needs.hessian != "ggn_exact":
        return needs
    if HESSIAN_OPTION in options or needs.loss is not None:
        return needs
    if resolve_loss(model, loss).label_distribution is not None:
        return needs
    return needs._replace(hessian="fisher")


def _without_factors(
    crit: Criterion, needs: StatsRequest, unit: MaskUnit, statistics: CollectedStatistics | None
) -> bool:
    """True for a unit whose kernel lacks the Kronecker factors ``crit`` needs."""
    if not needs.kronecker or statistics is None:
        return False
    first = statistics.weights.get(unit.names[0])
    return first is None or first.kronecker is None


def _fallback(crit: Criterion, options: Mapping[str, Any]) -> tuple[Criterion, dict[str, Any]]:
    """The criterion's diagonal fallback and the options it takes.

    Raises:
      ValueError: the criterion has no fallback.
    """
    if crit.fallback is None:
        raise ValueError(
            f"criterion {crit.name!r} needs Kronecker factors, which this layer lacks, and "
            "has no fallback: prune only Dense/Conv layers with it (layers=[...])"
        )
    fallback = get_criterion(crit.fallback)
    accepted = inspect.signature(fallback.fn).parameters
    return fallback, {k: v for k, v in options.items() if k in accepted}


def decide_masks(
    units: Sequence[MaskUnit],
    scores: Mapping[str, np.ndarray],
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    previous: Mapping[str, np.ndarray] | None = None,
    keep_per_column: Mapping[str, int] | None = None,
    m_by_n: tuple[int, int] | None = None,
    coupled: Sequence[Sequence[tuple[str, int]]] = (),
    combine: str = "sum",
    max_layer_sparsity: float | None = None,
) -> dict[str, np.ndarray]:
    """Masks (by weight key, 1 keep / 0 pruned, float32) from the units' scores.

    ``coupled`` lists groups ``(unit key, group index)`` of grouped units that
    are kept or pruned together, ranked as one by their scores combined by
    ``combine`` (:func:`tfstatprune.masking.coupled_masks`).

    With ``m_by_n`` the masks are N:M (:func:`tfstatprune.masking.m_by_n_masks`,
    elementwise units only): ``sparsity``, ``scope``, ``keep_per_column`` and
    ``max_layer_sparsity`` do not apply, as tfmot's ``sparsity_m_by_n``
    overrides its schedule's sparsity.

    Ties are broken by ``|theta|`` (a group's L2 norm); ``previous`` masks by
    weight key stay pruned (a group counts as pruned when all its entries are).
    ``sparsity`` may map unit keys to levels (layer scope). ``keep_per_column``
    maps elementwise kernel keys to a number of entries per output unit
    (column) that are never pruned: the best-scoring ones (the floor of
    :func:`tfstatprune.masking.compute_masks`). ``max_layer_sparsity`` caps
    each unit's share of a global threshold (global scope; a structured unit's
    cap counts its groups).
    """
    if m_by_n is not None:
        return _m_by_n_unit_masks(units, scores, m_by_n, previous)
    tiebreak, prev = {}, {}
    for unit in units:
        thetas = [np.abs(w.numpy()) for w in unit.weights]
        if unit.groupings is None:
            tiebreak[unit.key] = thetas[0]
            if previous is not None:
                prev[unit.key] = previous[unit.names[0]]
        else:
            tiebreak[unit.key] = reduce_groups(thetas, unit.groupings, "l2")
            if previous is not None:
                kept = reduce_groups([previous[k] for k in unit.names], unit.groupings, "sum")
                prev[unit.key] = (kept > 0).astype(np.float32)
    keep = coupled_masks(
        scores,
        sparsity,
        coupled,
        combine=combine,
        scope=scope,
        previous=prev or None,
        tiebreak=tiebreak,
        keep_per_column=keep_per_column,
        max_layer_sparsity=max_layer_sparsity,
    )
    masks = {}
    for unit in units:
        if unit.groupings is None:
            masks[unit.names[0]] = keep[unit.key].astype(np.float32)
        else:
            for k, grouping in zip(unit.names, unit.groupings, strict=True):
                masks[k] = expand(keep[unit.key], grouping).astype(np.float32)
    return masks


def _m_by_n_unit_masks(
    units: Sequence[MaskUnit],
    scores: Mapping[str, np.ndarray],
    m_by_n: tuple[int, int],
    previous: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    grouped = [unit.layer.name for unit in units if unit.groupings is not None]
    if grouped:
        raise ValueError(
            f"sparsity_m_by_n prunes single weights; layers {grouped} have a structured "
            "granularity: use granularity='weight'"
        )
    keys = [unit.key for unit in units]
    keep = m_by_n_masks(
        {k: scores[k] for k in keys},
        m_by_n,
        previous=None if previous is None else {k: previous[k] for k in keys},
        tiebreak={unit.key: np.abs(unit.weights[0].numpy()) for unit in units},
    )
    return {k: v.astype(np.float32) for k, v in keep.items()}


class Updates(NamedTuple):
    """What :func:`restricted_updates` returns: new values, the masks they go with, and
    each updated kernel's joint error (:attr:`tfstatprune.criteria.registry.Update.error`,
    by kernel key, where the update says it)."""

    values: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    errors: dict[str, float]


def restricted_updates(
    units: Sequence[MaskUnit],
    criterion: Criterion,
    statistics: CollectedStatistics | None,
    masks: Mapping[str, np.ndarray],
    options: Mapping[str, Any] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    *,
    previous: Mapping[str, np.ndarray] | None = None,
    keep_per_column: Mapping[str, int] | None = None,
    adaptive: bool = True,
) -> Updates:
    """New values (by weight key) of kernels and biases from the criterion's update.

    For criteria with an ``update`` (the solver of ``wald_block``, ``obs``,
    ``sparsegpt``, ``obc``) and layers with Kronecker statistics: the
    survivors of each output unit are re-fitted under the new masks, starting
    from the unrestricted estimate ``reference`` (by weight key; default: the
    current values) -- in sub-steps, the dense weights, so that every step
    solves the restricted problem for all weights pruned so far. With
    ``granularity="weight"`` the update may move a kernel's pruned entries
    within the counts of ``masks`` (adaptive mask selection), never reviving
    one pruned in ``previous`` and keeping ``keep_per_column`` entries per
    output unit; the returned masks say where they ended. ``adaptive=False``
    keeps the masks as given (an N:M pattern, say). Empty otherwise.
    """
    reference = reference or {}
    values: dict[str, np.ndarray] = {}
    errors: dict[str, float] = {}
    new_masks = dict(masks)
    if criterion.update is None or statistics is None:
        return Updates(values, new_masks, errors)
    for unit in units:
        layer = unit.layer
        kernel = getattr(layer, "kernel", None)
        key = weight_keys(layer)
        kernel_key = key[kernel] if kernel is not None else None
        stats = statistics.weights.get(kernel_key) if kernel is not None else None
        if stats is None or stats.kronecker is None or kernel_key in values:
            continue
        bias = getattr(layer, "bias", None) if stats.kronecker.has_bias else None
        bias_key = None if bias is None else key[bias]
        kernel_keep = np.asarray(masks.get(kernel_key, np.ones(kernel.shape)), bool)
        keep = kernel_keep.reshape(-1, kernel_keep.shape[-1])  # a Conv kernel as [K * C_in, C_out]
        choosable = np.zeros(keep.shape, bool)
        if adaptive and unit.groupings is None and unit.weights[0] is kernel:  # elementwise
            before = (previous or {}).get(kernel_key)
            choosable = (
                np.ones(keep.shape, bool)
                if before is None
                else np.asarray(before, bool).reshape(keep.shape)
            )
        if bias is not None:
            bias_keep = np.asarray(masks.get(bias_key, np.ones(bias.shape)), bool)
            keep = np.vstack([keep, bias_keep[None, :]])
            choosable = np.vstack([choosable, np.zeros((1, keep.shape[1]), bool)])
        count = (keep_per_column or {}).get(kernel_key, 0)
        kernel_value = reference.get(kernel_key, kernel.numpy())
        bias_value = None if bias is None else reference.get(bias_key, bias.numpy())
        update = criterion.update(
            kernel_value,
            bias_value,
            stats,
            keep,
            choosable=choosable,
            min_keep=np.full(keep.shape[1], count) if count > 0 else None,
            layer=layer.name,
            **(options or {}),
        )
        values[kernel_key] = update.kernel
        if update.error is not None:
            errors[kernel_key] = update.error
        if kernel_key in masks:
            rows = int(np.prod(kernel.shape[:-1]))
            new_masks[kernel_key] = update.keep[:rows].reshape(kernel.shape).astype(np.float32)
        if bias is not None:
            values[bias_key] = update.bias
    return Updates(values, new_masks, errors)
