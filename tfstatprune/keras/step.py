"""One pruning step, shared by :func:`tfstatprune.prune_once` and the callback in ``fit``.

statistics -> scores (:func:`~tfstatprune.keras.scoring.score_units`) -> masks
(:func:`~tfstatprune.keras.scoring.decide_masks`, every floor and cap inside
:mod:`tfstatprune.masking`) -> consistency (the caller's: pruned units also
kill the input rows that read them) -> restricted update
(:func:`~tfstatprune.keras.scoring.restricted_updates`) -> assign (new values
into the variables, then the masks, by the caller's writer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.keras.config import DEFAULT_STATS, MaskSettings, StatsConfig
from tfstatprune.keras.scoring import (
    MaskUnit,
    ScoringResult,
    decide_masks,
    resolve_criterion,
    restricted_updates,
    score_units,
)

__all__ = ["PruneStepResult", "column_floors", "prune_step"]

Masks = dict[str, np.ndarray]


class PruneStepResult(NamedTuple):
    """What :func:`prune_step` did.

    Attributes:
      masks: the masks written, by weight key (1 keep, 0 pruned).
      values: the restricted update's new values, by weight key (empty for
        criteria without an update).
      scoring: the scores, the statistics they came from and the layers
        scored by the criterion's fallback.
    """

    masks: Masks
    values: dict[str, np.ndarray]
    scoring: ScoringResult


def column_floors(units: Sequence[MaskUnit], floor: Callable[[keras.layers.Layer], int]) -> dict:
    """``{kernel key: count}``: entries each output unit of an elementwise kernel keeps.

    ``floor(layer)`` says the count for a layer (see
    :meth:`tfstatprune.keras.config.PruneSettings.column_floor`); units that
    are not a layer's kernel alone, and counts of 0, are left out.
    """
    found = {}
    for unit in units:
        kernel = getattr(unit.layer, "kernel", None)
        if kernel is None or unit.groupings is not None or unit.weights[0] is not kernel:
            continue
        count = floor(unit.layer)
        if count > 0:
            found[unit.key] = count
    return found


def multiply_masks(variables: Mapping[str, tf.Variable]) -> Callable[[Masks], None]:
    """A mask writer for plain (unwrapped) layers: ``weight *= mask``."""

    def write(masks: Masks) -> None:
        for name, mask in masks.items():
            target = variables[name]
            target.assign(target.numpy() * mask.astype(target.dtype.as_numpy_dtype))

    return write


def prune_step(
    model: keras.Model,
    units: Sequence[MaskUnit],
    stats_data: Any,
    settings: MaskSettings,
    sparsity: float | Mapping[str, float],
    *,
    variables: Mapping[str, tf.Variable],
    write_masks: Callable[[Masks], None],
    stats: StatsConfig = DEFAULT_STATS,
    step: int = 0,
    previous: Mapping[str, np.ndarray] | None = None,
    keep_per_column: Mapping[str, int] | None = None,
    consistent: Callable[[Masks], Masks] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    coupled: Sequence[Sequence[tuple[str, int]]] = (),
) -> PruneStepResult:
    """Score ``units``, decide their masks at ``sparsity``, update and assign.

    Args:
      model: the model the statistics are collected on.
      units: the mask units (:func:`~tfstatprune.keras.scoring.mask_units`).
      stats_data: the statistics' data (None for criteria reading none).
      settings: criterion, options, scope (and its cap), N:M of these units.
      sparsity: one level, or levels by unit key (layer scope).
      variables: every unit's variables by weight key (the update's values
        are assigned to them).
      write_masks: writes the final masks (into wrappers, or into the weights).
      stats: how the statistics are collected.
      step: the pruning step (seeds derive from it).
      previous: the masks before this step, by weight key (what is pruned
        stays pruned).
      keep_per_column: kernel key -> entries per output unit kept
        (:func:`column_floors`).
      consistent: masks -> masks with the input rows of pruned units also
        pruned (structured granularities), applied before the update.
      reference: unrestricted values the update starts from (default: current).
      coupled: groups ``(unit key, unit index)`` of units kept or pruned
        together (:func:`tfstatprune.keras.consistency.coupled_units`), scored
        as one by the criterion's ``coupled`` rule.

    Returns:
      A :class:`PruneStepResult`.
    """
    scoring = score_units(
        model, units, stats_data, settings.criterion, settings.options, stats, step=step
    )
    criterion = resolve_criterion(settings.criterion, settings.options)
    masks = decide_masks(
        units,
        scoring.scores,
        sparsity,
        scope=settings.scope,
        previous=previous,
        keep_per_column=keep_per_column,
        m_by_n=settings.sparsity_m_by_n,
        coupled=coupled,
        combine=criterion.coupled,
        max_layer_sparsity=settings.max_layer_sparsity,
    )
    if consistent is not None:
        masks = consistent(masks)
    updates = restricted_updates(
        units,
        criterion,
        scoring.statistics,
        masks,
        settings.options,
        reference=reference,
        previous=previous,
        keep_per_column=keep_per_column,
        adaptive=settings.sparsity_m_by_n is None,
    )
    for name, value in updates.values.items():
        variables[name].assign(np.asarray(value, variables[name].dtype.as_numpy_dtype))
    write_masks(updates.masks)
    return PruneStepResult(updates.masks, updates.values, scoring)
