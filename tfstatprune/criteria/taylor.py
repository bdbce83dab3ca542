"""First-order Taylor criterion (Molchanov, Tyree, Karras, Aila & Kautz 2017).

"Pruning Convolutional Neural Networks for Resource Efficient Inference"
(ICLR 2017), sec. 2.2: the importance of a feature map ``h`` is the change of
the cost over the data when it is removed, to first order,

    |Delta C(h)| = |C(D, h = 0) - C(D, h)| ~ |dC/dh * h|,

and for a feature map ``z`` of M positions (eq. 8)
``Theta_TE(z) = |1/M sum_m dC/dz_m z_m|``, then divided by the L2 norm of the
layer's criteria so that layers compare (the paper's layer-wise
normalization).

In terms of weights. A unit's (a filter's) pre-activation output is linear in
its own kernel column and bias, ``z_m = sum_k theta_k x_mk + b``, hence
``sum_m dC/dz_m z_m = sum_(k in g) theta_k dC/dtheta_k`` over the group g of
its kernel entries and bias; the same holds after a ReLU (positively
homogeneous: ``dC/da a = dC/dz z``). So the paper's feature-map criterion is
the group form here, ``|sum_(k in g) theta_k gbar_k|`` with ``gbar`` the mean
per-example gradient ``stats.sum / stats.count`` (the constant 1/M drops out
of the normalization). A single weight scores ``|theta_k gbar_k|``.

Difference to the paper: for a mini-batch it evaluates eq. 8 per example and
averages the absolute values; tfstatprune's statistics keep per-weight sums
over the examples, not per-example group sums, so the mean over the data is
taken inside the absolute value -- ``|Delta C|`` of the cost over the whole
data set, as in the paper's derivation (and as common implementations do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfstatprune.criteria.registry import register_criterion
from tfstatprune.granularity import Grouping
from tfstatprune.stats.moments import WeightStatistics

__all__ = ["taylor", "taylor_groups"]


def _mean_gradient(stats: WeightStatistics | None) -> np.ndarray:
    if stats is None:
        raise ValueError("criterion 'taylor' needs gradient statistics; none were given")
    return np.asarray(stats.mean, np.float64)


def _normalized(scores: np.ndarray, normalize: bool) -> np.ndarray:
    """``scores / ||scores||_2`` (all-zero scores stay zero)."""
    if not normalize:
        return scores
    norm = float(np.sqrt(np.sum(np.square(scores))))
    return scores / norm if norm > 0 else scores


def taylor_groups(
    thetas: Sequence[np.ndarray],
    stats: Sequence[WeightStatistics | None],
    groupings: Sequence[Grouping],
    *,
    normalize: bool = True,
) -> np.ndarray:
    """``|sum_(k in g) theta_k gbar_k|`` per group g over the member tensors (kernel, bias).

    For units and filters this is Molchanov et al.'s feature-map criterion
    (module docstring); ``normalize`` divides by the L2 norm over the layer's groups.
    """
    count = groupings[0].count
    total = np.zeros(count, np.float64)
    for theta, st, grouping in zip(thetas, stats, groupings, strict=True):
        products = np.asarray(theta, np.float64) * _mean_gradient(st)
        total += np.bincount(grouping.ids.reshape(-1), products.reshape(-1), count)
    return _normalized(np.abs(total), normalize)


@register_criterion("taylor", statistics="fisher", group=taylor_groups)
def taylor(theta: np.ndarray, stats: WeightStatistics, *, normalize: bool = True) -> np.ndarray:
    """First-order Taylor: ``s_k = |theta_k * gbar_k|``, ``gbar = stats.sum / stats.count``.

    The first-order change of the loss over the data when ``theta_k`` is set to
    zero (Molchanov et al. 2017, sec. 2.2; the module docstring has the group
    form for units and filters, the paper's feature-map criterion). With
    ``normalize`` (the paper's layer-wise L2 normalization) the scores of a
    tensor are divided by their L2 norm: the ranking inside a layer does not
    change, only how layers compare under ``scope="global"``.

    >>> from tfstatprune.stats import WeightStatistics
    >>> st = WeightStatistics(2, np.array([0.4, -2.0, 6.0]), np.ones(3))
    >>> taylor(np.array([1.0, 0.5, 0.0]), st, normalize=False)
    array([0.2, 0.5, 0. ])
    """
    products = np.abs(np.asarray(theta, np.float64) * _mean_gradient(stats))
    return _normalized(products, normalize)
