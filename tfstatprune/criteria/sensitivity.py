"""Output sensitivity (Tartaglione, Lepsøy, Fiandrotti & Francini 2018).

"Learning Sparse Neural Networks via Sensitivity-Driven Regularization"
(NeurIPS 2018), eqs. 5-7 as the seed survey (004, sec. 1.1) gives them: a
small change ``Delta w`` of a weight changes output k by
``Delta y_k ~ Delta w dy_k/dw`` (eq. 5), and the weighted change of all outputs
is ``S(y, w) = sum_k alpha_k |Delta y_k| = |Delta w| sum_k alpha_k |dy_k/dw|``
(eq. 6); the *specific* sensitivity takes ``alpha`` = the one-hot true class
(eq. 7): ``S = |dy_(y*)/dw|``.

The criterion reads gradient statistics of the true class's output
(:func:`tfstatprune.stats.sensitivity.true_class_output`) instead of the loss:
``S_k = |mean_i dy_(i, y*_i)/dw_k|``. As in the training-time regularizer
(:class:`tfstatprune.SensitivityRegularization`, which takes the mean over a
mini-batch), the mean over the examples is inside the absolute value: one
gradient pass per chunk, no per-example absolute values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfstatprune.criteria.registry import StatsRequest, register_criterion
from tfstatprune.stats.moments import WeightStatistics
from tfstatprune.stats.sensitivity import true_class_output

__all__ = ["sensitivity"]


def _output_request(options: Mapping[str, Any]) -> StatsRequest:
    return StatsRequest("fisher", loss=true_class_output)


@register_criterion("sensitivity", statistics=_output_request)
def sensitivity(theta: np.ndarray, stats: WeightStatistics, *, weighted: bool = True) -> np.ndarray:
    """Output sensitivity: ``s_k = |theta_k| * |mean_i dy_(i, y*_i) / dtheta_k|``.

    With ``weighted`` (the default) eq. 6 with ``Delta w = -theta_k``: how much
    the true class's output changes when the weight is pruned. Without, the
    specific sensitivity ``S_k`` of eq. 7 alone, the quantity the
    regularizer's bounded insensitivity ``max(0, 1 - S)`` (eq. 8) is made of.
    ``stats`` must be the statistics of ``true_class_output`` (what the
    criterion requests), not of the loss.

    >>> from tfstatprune.stats import WeightStatistics
    >>> st = WeightStatistics(4, np.array([2.0, -4.0, 1.0]), np.ones(3))
    >>> sensitivity(np.array([1.0, -0.5, 0.0]), st)
    array([0.5, 0.5, 0. ])
    >>> sensitivity(np.array([1.0, -0.5, 0.0]), st, weighted=False)
    array([0.5 , 1.  , 0.25])
    """
    if stats is None:
        raise ValueError("criterion 'sensitivity' needs gradient statistics; none were given")
    s = np.abs(np.asarray(stats.mean, np.float64))
    return np.abs(np.asarray(theta, np.float64)) * s if weighted else s
