"""Criteria from the training history: the sum of weight updates, and weight variation.

Both read an :class:`~tfstatprune.stats.history.UpdateStatistics` record per
weight tensor, recorded during ``fit`` by the :class:`tfstatprune.WeightHistory`
callback. The record reaches the criterion in the statistics slot of the
criterion contract ``(theta, stats, **options) -> scores``: the criteria are
registered with ``StatsRequest(history=True)``, and the scoring code looks the
records up, by weight name, in the ``WeightHistory`` the user passes where
gradient criteria take their data::

    history = tsp.WeightHistory(window=500)
    model.fit(x, y, epochs=8, callbacks=[history])
    pruned = tsp.prune_once(model, history, 0.9, "weight_updates")

Without a record (no ``WeightHistory``, or a weight it did not watch, or no
training step yet) the criteria raise a ValueError saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfstatprune.criteria.registry import StatsRequest, register_criterion
from tfstatprune.stats.history import UpdateStatistics

__all__ = ["n2ps", "weight_updates"]

_NO_HISTORY = (
    "criterion {name!r} reads the weight history recorded during training: train with "
    "callbacks=[history] where history = tfstatprune.WeightHistory(), then pass the history "
    "as stats_data (prune_once(model, history, ...), tfstatprune.callbacks(history))"
)


def _history_request(options: Mapping[str, Any]) -> StatsRequest:
    return StatsRequest(history=True)


def _record(theta: np.ndarray, stats: Any, name: str, quantity: str) -> np.ndarray:
    if not isinstance(stats, UpdateStatistics):
        raise ValueError(_NO_HISTORY.format(name=name))
    if stats.steps < 1:
        raise ValueError(
            f"criterion {name!r}: the weight history holds no training step yet (the "
            "WeightHistory callback records after each optimizer step of fit)"
        )
    if np.shape(stats.abs_updates) != np.shape(theta):
        raise ValueError(
            f"criterion {name!r}: the recorded history has shape "
            f"{np.shape(stats.abs_updates)}, the weight {np.shape(theta)}"
        )
    values = np.asarray(getattr(stats, quantity), np.float64)
    if np.isnan(values).any():
        recorded = "updates" if quantity == "abs_updates" else "variation"
        raise ValueError(
            f"criterion {name!r}: the WeightHistory did not record {recorded!r} (see its "
            "quantities argument)"
        )
    return values


@register_criterion("weight_updates", statistics=_history_request)
def weight_updates(theta: np.ndarray, stats: UpdateStatistics) -> np.ndarray:
    """Sum of weight updates: ``s_k = sum_t |theta_k,t - theta_k,t-1|`` over training.

    A weight's importance is the accumulated size of its updates (seed 000 on
    Augasta & Kathirvalavakumar 2011, "A novel pruning algorithm for optimizing
    feedforward neural network of classification problems": the frequency and
    scale of a weight's updates reflect its potential to improve the loss). A
    weight training never moved scores 0. A group scores the sum over its members.

    >>> from tfstatprune.stats.history import UpdateStatistics
    >>> rec = UpdateStatistics(3, np.array([0.3, 0.0]), np.zeros(2), np.zeros(2))
    >>> weight_updates(np.array([1.0, 2.0]), rec)
    array([0.3, 0. ])
    """
    return _record(theta, stats, "weight_updates", "abs_updates")


@register_criterion("n2ps", statistics=_history_request)
def n2ps(theta: np.ndarray, stats: UpdateStatistics) -> np.ndarray:
    """Weight variation: ``s_k`` = the variance of ``theta_k`` over the last training steps.

    Tong & Tanaka 2015, "A pruning method based on weight variation information
    for feedforward neural networks" (IFAC-PapersOnLine 48(18)), cited by the
    seed paper as pruning on gradient-derived information "only after
    convergence, when values are stable". The paper's exact formula was not
    available here; this is the natural reading: the variance of each weight
    over the last ``window`` steps of training (the ``WeightHistory`` window;
    the module :mod:`tfstatprune.stats.history` gives the recurrence). A weight
    that still moves after convergence is being used by the data, one that
    does not is not: higher variance = keep, and a weight that does not move
    at all scores 0 (as a weight without curvature does for ``wald``). A group
    scores the sum of its members' variances.

    >>> from tfstatprune.stats.history import UpdateStatistics
    >>> rec = UpdateStatistics(10, np.ones(2), np.zeros(2), np.array([4e-6, 0.0]), 5)
    >>> n2ps(np.array([1.0, 2.0]), rec)
    array([4.e-06, 0.e+00])
    """
    return _record(theta, stats, "n2ps", "variance")
