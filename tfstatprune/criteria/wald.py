"""The diagonal Wald criterion (seed paper, "In search of theoretically grounded pruning", sec. 3).

Trained weights are an M-estimate: asymptotically
``theta_hat ~ N(theta_0, Avar / n)`` with the sandwich ``Avar = H^-1 Sigma H^-1``
(H the expected Hessian of the per-example loss, Sigma the covariance of the
per-example score). The Wald statistic for ``H0: theta_k = 0`` is
``W_k = n * theta_k^2 / Avar_kk``, chi-square with one degree of freedom under H0.

Registered as ``"wald_diag"``: the paper's diagonal sandwich. The default
criterion ``"wald"`` is the block form of :mod:`tfstatprune.criteria.block`
where a layer has Kronecker factors (Dense, Conv) and this one elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from tfstatprune.criteria.registry import hessian_from_options, register_criterion
from tfstatprune.stats.moments import WeightStatistics, require_examples

__all__ = ["wald", "wald_diag", "wald_pvalues", "curvature_diagonal"]

HESSIANS = ("fisher", "ggn", "ggn_exact")


def curvature_diagonal(
    stats: WeightStatistics, hessian: str, regularizer: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(H_kk, data part of H_kk)`` for ``hessian`` in ``("fisher", "ggn", "ggn_exact")``.

    The data part is the empirical Fisher ``sumsq / n`` or the GGN diagonal
    ``curvature / n``; with ``regularizer=True`` ``H_kk`` adds the
    regularizer's curvature (``2 * l2`` for an L2 penalty).
    """
    if stats is None:
        raise ValueError("this criterion needs gradient statistics; none were given")
    if hessian == "fisher":
        data = stats.second_moment
    elif hessian in ("ggn", "ggn_exact"):
        data = stats.ggn
    else:
        raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
    if regularizer:
        return data + stats.regularizer_curvature, data
    return data, data


@register_criterion("wald_diag", statistics=hessian_from_options)
def wald_diag(
    theta: np.ndarray,
    stats: WeightStatistics,
    *,
    hessian: str = "fisher",
    regularizer: bool = False,
) -> np.ndarray:
    """Diagonal Wald statistic ``W_k = n * theta_k^2 * H_kk^2 / Sigma_kk``.

    The diagonal sandwich ``Avar_kk = Sigma_kk / H_kk^2`` of the seed paper
    (sec. 3.3): ``Sigma_kk`` the per-example gradient variance
    ``sumsq / n - (sum / n)^2``; ``H_kk`` the empirical Fisher
    ``mean_i s_ik^2`` (``hessian="fisher"``, the paper's ``H = J^T J``) or the
    GGN diagonal from labels sampled from the model (``hessian="ggn"``), plus
    optionally (``regularizer=True``) the regularizer's curvature. ``n`` is the
    number of examples used.

    Why the penalty stays out of ``H`` by default: a weight the data barely
    move (a border pixel) has a tiny score variance while an L2 penalty gives
    it curvature ``2 * l2``, so ``H^2 / Sigma`` explodes and such weights are
    kept first. Measured on LeNet-300-100 (L2 1e-4), one-shot layer-wise, no
    retraining: 24 % / 10 % test accuracy at 80 % / 90 % sparsity with the
    penalty's curvature, 84 % / 43 % without it.

    A weight the data never moves (data curvature 0) or whose per-example
    gradients do not vary (``Sigma_kk = 0``, float32 round-off included: see
    :attr:`~tfstatprune.stats.WeightStatistics.variance`) scores 0, never NaN
    or inf. The variance needs at least ``MIN_EXAMPLES = 2`` examples; fewer
    raise a ``ValueError``.

    >>> from tfstatprune.stats import WeightStatistics
    >>> st = WeightStatistics(4, np.array([0.0, 2.0, 0.0]), np.array([4.0, 4.0, 0.0]))
    >>> wald_diag(np.array([1.0, 1.0, 3.0]), st)
    array([4.        , 5.33333333, 0.        ])

    (First weight: H = 4/4 = 1, Sigma = 1 - 0 = 1, W = 4 * 1 * 1 / 1. Second:
    H = 1, Sigma = 1 - 0.25 = 0.75, W = 4 / 0.75.)
    """
    if stats is not None:
        require_examples(stats.count, "the Wald criterion")
    h, data = curvature_diagonal(stats, hessian, regularizer)
    sigma = stats.variance
    informative = (data > 0) & (sigma > 0)
    theta = np.asarray(theta, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = stats.count * np.square(theta) * np.square(h) / sigma
    return np.where(informative, w, 0.0)


# The function's name before the registered name "wald" became the per-layer best
# estimator: importing it still gives the diagonal form.
wald = wald_diag


def wald_pvalues(
    statistics: np.ndarray | Mapping[str, Any], df: int = 1
) -> np.ndarray | dict[str, np.ndarray]:
    """p-values ``P(chi2_df > W)`` of Wald statistics (an array or a dict of arrays).

    Under ``H0: theta_k = 0`` the Wald statistic is asymptotically chi-square
    with ``df`` degrees of freedom (1 for a single weight, |g| for a group).
    A diagnostic: with millions of weights, nearly all single weights of a
    trained network are "insignificant" at any usual level.

    >>> wald_pvalues(np.array([0.0, 3.841458820694124])).round(6)
    array([1.  , 0.05])
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if isinstance(statistics, Mapping):
        return {
            k: scipy_stats.chi2.sf(np.asarray(v, np.float64), df) for k, v in statistics.items()
        }
    return scipy_stats.chi2.sf(np.asarray(statistics, np.float64), df)
