"""The classical criteria the Wald statistic is compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfstatprune.criteria.registry import StatsRequest, hessian_from_options, register_criterion
from tfstatprune.criteria.wald import curvature_diagonal
from tfstatprune.stats.moments import WeightStatistics

__all__ = ["magnitude", "l1_norm", "random", "obd"]


@register_criterion("magnitude", statistics=None, group="l2")
def magnitude(theta: np.ndarray, stats: WeightStatistics | None = None) -> np.ndarray:
    """Magnitude: ``s_k = |theta_k|`` (Han et al. 2015, "Learning both weights and
    connections for efficient neural networks"). A group scores its L2 norm
    ``||theta_g||_2`` (the unit-pruning criterion of the weight-vs-unit challenge).

    >>> magnitude(np.array([0.5, -2.0, 0.0]))
    array([0.5, 2. , 0. ])
    """
    return np.abs(np.asarray(theta, np.float64))


@register_criterion("l1_norm", statistics=None, group="sum")
def l1_norm(theta: np.ndarray, stats: WeightStatistics | None = None) -> np.ndarray:
    """L1 norm: ``s_k = |theta_k|``; a group (filter) scores ``sum_k |theta_k|``
    (Li et al. 2017, "Pruning filters for efficient ConvNets").

    >>> l1_norm(np.array([0.5, -2.0]))
    array([0.5, 2. ])
    """
    return np.abs(np.asarray(theta, np.float64))


@register_criterion("random", statistics=StatsRequest(gradients=False, seed="seed"))
def random(
    theta: np.ndarray, stats: WeightStatistics | None = None, *, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Random: ``s_k ~ U(0, 1)`` i.i.d., seeded -- the baseline every criterion must beat
    (Molchanov et al. 2017 observe magnitude often ranks close to it).

    >>> random(np.zeros(3), seed=1).round(3)
    array([0.512, 0.95 , 0.144])
    """
    return np.random.default_rng(seed).random(np.shape(theta))


@register_criterion("obd", statistics=hessian_from_options)
def obd(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    hessian: str = "fisher",
    regularizer: bool = True,
) -> np.ndarray:
    """Optimal Brain Damage: ``s_k = theta_k^2 * H_kk / 2`` (LeCun, Denker & Solla 1990).

    ``H_kk`` is the diagonal curvature of the loss: the empirical Fisher
    ``mean_i s_ik^2`` (``hessian="fisher"``) or the sampled GGN diagonal
    (``hessian="ggn"``, ``"ggn_exact"``), plus the regularizer's curvature
    (the Hessian of the whole objective, as in the paper; ``regularizer=False``
    leaves it out).

    >>> from tfstatprune.stats import WeightStatistics
    >>> st = WeightStatistics(2, np.zeros(2), np.array([2.0, 8.0]))
    >>> obd(np.array([1.0, 0.5]), st)
    array([0.5, 0.5])
    """
    h, _ = curvature_diagonal(stats, hessian, regularizer)
    return 0.5 * np.square(np.asarray(theta, np.float64)) * h
