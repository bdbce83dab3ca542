"""Per-layer sparsities from per-layer error curves (non-uniform one-shot allocation).

Global scope ranks every weight by its own score against one threshold, which
ignores what the restricted update gives back: pruning many correlated inputs
of one layer costs far less than the sum of their single-weight statistics.
OBC (Frantar, Singh & Alistarh 2022, non-uniform compression) and SPDY (Frantar
& Alistarh 2022) measure instead, per layer, the error of pruning it to each of
a grid of levels with the solver, and choose the levels that minimise the sum of
the errors at the total sparsity asked for.

Here the error of layer ``i`` at ``n`` pruned weights is the joint statistic of
its restriction after the criterion's update,

    e_i(n) = sum_j w_j d_j^T A_i d_j,   d_j = theta~_j - theta^_j,

``w_j`` the criterion's column weight (``n / M_jj``: the Wald statistic of the
joint hypothesis that the pruned weights of unit j are zero, for
``wald_block``; :func:`tfstatprune.criteria.block.joint_error`). Layers without
an update count the sum of the scores they prune. For ``wald`` that is the
diagonal Wald statistic of its fallback (``wald_diag``), the same statistic with
a diagonal covariance; for a criterion without a solver (``magnitude``) every
layer counts its scores. A solver criterion whose fallback scores are on another
scale (``obs``, ``sparsegpt``, ``obc``: their ``obd`` fallback reads the loss's
curvature, their errors the input factor) cannot mix the two, and says so. The
allocation is :func:`tfstatprune.masking.allocate_by_curves`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.criteria.block import WALD_NAMES
from tfstatprune.keras.config import ALLOCATIONS, MaskSettings, StatsConfig
from tfstatprune.keras.scoring import (
    MaskUnit,
    decide_masks,
    resolve_criterion,
    restricted_updates,
    score_units,
)
from tfstatprune.masking import allocate_by_curves, max_pruned_count, round_half_up

__all__ = ["ALLOCATIONS", "Curves", "curve_grid", "error_curve_levels"]

#: The grid's densities fall by this ratio from one level to the next.
DENSITY_RATIO = 0.8
#: ... down to this density (and the least a layer may keep).
MIN_DENSITY = 0.005


class Curves(NamedTuple):
    """What :func:`error_curve_levels` measured and chose.

    Attributes:
      levels: the sparsity of each unit (by unit key) for the total asked.
      counts: the pruned counts of each unit's curve.
      errors: the errors at those counts.
    """

    levels: dict[str, float]
    counts: dict[str, list[int]]
    errors: dict[str, list[float]]


def curve_grid(size: int, most: int) -> list[int]:
    """Pruned counts where a unit of ``size`` entries is measured: 0, then densities
    ``DENSITY_RATIO^k`` down to ``MIN_DENSITY``, and ``most`` (the most it may prune).

    >>> curve_grid(100, 99)
    [0, 20, 36, 49, 59, 67, 74, 79, 83, 87, 89, 91, 93, 95, 96, 97, 98, 99]
    """
    counts, density = {0}, DENSITY_RATIO
    while density > MIN_DENSITY:
        counts.add(min(round_half_up((1.0 - density) * size), most))
        density *= DENSITY_RATIO
    counts.add(most)
    return sorted(c for c in counts if c <= most)


def error_curve_levels(
    model: keras.Model,
    units: Sequence[MaskUnit],
    stats_data: Any,
    settings: MaskSettings,
    sparsity: float,
    stats: StatsConfig,
    *,
    keep_per_column: Mapping[str, int] | None = None,
    min_kept: int = 1,
) -> Curves:
    """Each unit's sparsity for a total of ``sparsity`` from its error curve.

    The statistics are collected once on ``model`` (unpruned); each unit is
    then masked alone at every count of :func:`curve_grid` by the criterion's
    scores (its column floors kept) and updated, its error the update's joint
    statistic (or the sum of the pruned scores without an update), and the
    counts chosen by :func:`~tfstatprune.masking.allocate_by_curves`, so the
    total is exactly ``round_half_up(sparsity * N)``. ``settings.max_layer_sparsity``
    bounds each curve.

    Raises:
      ValueError: a total above what the floors and caps allow; layers measured
        by a solver's error beside layers measured by fallback scores, for a
        criterion other than ``wald`` (their scales differ).
    """
    scoring = score_units(model, units, stats_data, settings.criterion, settings.options, stats)
    criterion = resolve_criterion(settings.criterion, settings.options)
    counts: dict[str, list[int]] = {}
    errors: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    solved: set[str] = set()  # layers whose error is the solver's
    summed: set[str] = set()  # layers whose error is the sum of their pruned scores
    for unit in units:
        scores = scoring.scores[unit.key]
        size = int(np.size(scores))
        most = max(size - min_kept, 0)
        if settings.max_layer_sparsity is not None:
            most = min(most, max_pruned_count(size, settings.max_layer_sparsity))
        sizes[unit.key], counts[unit.key], errors[unit.key] = size, [0], [0.0]
        for count in curve_grid(size, most)[1:]:
            masks = decide_masks(
                [unit],
                {unit.key: scores},
                {unit.key: count / size},
                keep_per_column=keep_per_column,
            )
            pruned = int(np.count_nonzero(masks[unit.key] == 0))
            if pruned <= counts[unit.key][-1]:  # a column floor holds: the curve ends here
                break
            updates = restricted_updates(
                [unit],
                criterion,
                scoring.statistics,
                masks,
                settings.options,
                keep_per_column=keep_per_column,
            )
            # One unit updated: its layer's error (a bias unit's too: the kernel is kept).
            error = next(iter(updates.errors.values()), None)
            (solved if error is not None else summed).add(unit.layer.name)
            if error is None:
                error = float(np.sum(np.where(masks[unit.key] == 0, scores, 0.0)))
            counts[unit.key].append(pruned)
            errors[unit.key].append(error)
    if solved and summed and criterion.name not in WALD_NAMES:
        raise ValueError(
            f"allocation='error_curves' compares the layers' errors, but with criterion "
            f"{criterion.name!r} layers {sorted(solved)} have the solver's error (the input "
            f"factor's quadratic form) and {sorted(summed)} only their fallback's scores (the "
            "loss's curvature), not one scale: prune those layers apart (layers=[...]) or "
            "use criterion='wald'"
        )
    total = round_half_up(sparsity * sum(sizes.values()))
    most = sum(c[-1] for c in counts.values())
    if total > most:
        raise ValueError(
            f"sparsity {sparsity} prunes {total} of the {sum(sizes.values())} weights, but the "
            f"layers' floors and caps let them lose at most {most}: lower the sparsity, or "
            "the floors (min_weights_per_class, min_weights_per_unit) and max_layer_sparsity."
        )
    chosen = allocate_by_curves({key: (counts[key], errors[key]) for key in counts}, total)
    levels = {key: chosen[key] / sizes[key] for key in chosen}
    return Curves(levels, counts, errors)
