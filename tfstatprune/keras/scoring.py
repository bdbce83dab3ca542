"""Scores for a model's prunable weights: statistics -> criterion, shared by every entry point."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.criteria.registry import Criterion
from tfstatprune.stats import CollectedStatistics, collect_statistics

__all__ = ["ScoringResult", "score_weights", "resolve_criterion"]

SEED_OPTION = "seed"


class ScoringResult(NamedTuple):
    """Scores by weight name, and the statistics they came from (None if none were needed)."""

    scores: dict[str, np.ndarray]
    statistics: CollectedStatistics | None


def resolve_criterion(criterion: Any, options: Mapping[str, Any]) -> Criterion:
    """Look up ``criterion`` and check that it accepts ``options``.

    Raises:
      ValueError: unknown criterion, or an option the criterion does not take.
    """
    crit = get_criterion(criterion)
    signature = inspect.signature(crit.fn)
    params = signature.parameters
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


def _takes_seed(crit: Criterion) -> bool:
    return SEED_OPTION in inspect.signature(crit.fn).parameters


def score_weights(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    stats_data: Any,
    criterion: Any,
    options: Mapping[str, Any] | None = None,
    *,
    loss: Any = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    step: int = 0,
    verbose: int = 1,
) -> ScoringResult:
    """Collect the statistics ``criterion`` needs and score every weight in ``weights``.

    A criterion with a ``seed`` option (``random``) that the user did not set
    gets a distinct seed per weight and pruning step, derived from ``seed``.
    """
    options = dict(options or {})
    crit = resolve_criterion(criterion, options)
    needs = crit.statistics(options)
    statistics = None
    if needs is not None:
        if stats_data is None:
            raise ValueError(
                f"criterion {crit.name!r} needs statistics: pass stats_data=(x, y) or a "
                "tf.data.Dataset of (x, y) batches"
            )
        statistics = collect_statistics(
            model,
            stats_data,
            weights=weights,
            loss=loss,
            hessian=needs,
            max_examples=max_examples,
            batch_size=batch_size,
            seed=seed + step,
            verbose=verbose,
        )
    scores = {}
    derive_seed = _takes_seed(crit) and SEED_OPTION not in options
    for index, variable in enumerate(weights):
        call_options = dict(options)
        if derive_seed:
            call_options[SEED_OPTION] = [seed, step, index]
        stats = statistics.weights[variable.name] if statistics is not None else None
        scores[variable.name] = crit(variable.numpy(), stats, **call_options)
    return ScoringResult(scores, statistics)
