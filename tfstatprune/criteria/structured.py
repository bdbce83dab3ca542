"""Criteria that score whole units and filters: APoZ and network slimming.

Both only make sense for a unit (a Dense output neuron, a column of the
``[in, out]`` kernel, with its bias) or a filter (``kernel[..., k]``):
registered with ``groups_only=True``, they refuse single weights and any
other grouping. Higher = keep, as for every criterion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfstatprune.criteria.registry import StatsRequest, register_criterion
from tfstatprune.granularity import Grouping, group_ids
from tfstatprune.stats.moments import WeightStatistics

__all__ = ["BN_GAMMA_OPTION", "apoz", "bn_scale"]

#: The option that takes the BatchNormalization's gamma (``StatsRequest(bn_scale=...)``).
BN_GAMMA_OPTION = "bn_gamma"


def _output_units(who: str, thetas: Sequence[np.ndarray], groupings: Sequence[Grouping]) -> int:
    """The number of units, after checking the groups are the kernel's output units."""
    kernel, grouping = np.asarray(thetas[0]), groupings[0]
    if kernel.ndim < 2 or not np.array_equal(grouping.ids, group_ids(kernel.shape, "unit").ids):
        raise ValueError(
            f"criterion {who!r} scores output units/filters: use granularity='unit' or "
            "'filter' (not channels or blocks)"
        )
    return grouping.count


def _apoz_of(stats: WeightStatistics | None) -> np.ndarray:
    found = None if stats is None else getattr(stats, "activations", None)
    if found is None:
        raise ValueError(
            "criterion 'apoz' needs activation statistics, which the closed-form "
            "statistics give for Dense and Conv layers (StatsRequest(activations=True)); "
            "this layer has none (no closed-form rule, or statistics collected without them)"
        )
    if found.activation == "linear":
        raise ValueError(
            "criterion 'apoz' counts zero outputs of a layer's activation, but this layer's "
            "activation is linear (its outputs are almost never exactly 0): APoZ needs a "
            "ReLU-like activation on the layer itself"
        )
    return found.apoz


def _apoz_groups(
    thetas: Sequence[np.ndarray],
    stats: Sequence[WeightStatistics | None],
    groupings: Sequence[Grouping],
) -> np.ndarray:
    count = _output_units("apoz", thetas, groupings)
    zeros = _apoz_of(stats[0])
    if zeros.shape != (count,):
        raise ValueError(f"criterion 'apoz': {zeros.size} activation channels for {count} units")
    return 1.0 - zeros


@register_criterion(
    "apoz",
    statistics=StatsRequest(activations=True),
    group=_apoz_groups,
    groups_only=True,
    combine="mean",
)
def apoz(theta: np.ndarray, stats: WeightStatistics) -> np.ndarray:
    """APoZ: a unit scores ``1 - APoZ_c``, one minus the fraction of its activations
    that are exactly zero over the data (Hu et al. 2016, "Network trimming: a
    data-driven neuron pruning approach towards efficient deep architectures").

    ``APoZ_c = sum_i sum_p 1[f(z_i)[p, c] == 0] / (n * P)`` over examples ``i``
    and the ``P`` positions of a filter's feature map (1 for a Dense unit); a
    unit that is almost always off (high APoZ) goes first. Every weight of the
    kernel carries its unit's score here; masks use the group form.

    >>> from tfstatprune.stats import ActivationStatistics
    >>> counts = ActivationStatistics(4, 4.0, np.array([3.0, 0.0]), "relu")
    >>> st = WeightStatistics(4, np.zeros((2, 2)), np.zeros((2, 2)), activations=counts)
    >>> apoz(np.ones((2, 2)), st)
    array([[0.25, 1.  ],
           [0.25, 1.  ]])
    """
    score = 1.0 - _apoz_of(stats)
    return np.broadcast_to(score, np.shape(theta)).astype(np.float64)


def _bn_scale_groups(
    thetas: Sequence[np.ndarray],
    stats: Sequence[WeightStatistics | None],
    groupings: Sequence[Grouping],
    *,
    bn_gamma: np.ndarray | None = None,
) -> np.ndarray:
    count = _output_units("bn_scale", thetas, groupings)
    if bn_gamma is None:
        raise ValueError(
            "criterion 'bn_scale' needs the gamma of the BatchNormalization after the layer "
            "(bn_gamma=...); tfstatprune's pruning functions pass it"
        )
    gamma = np.abs(np.asarray(bn_gamma, np.float64)).reshape(-1)
    if gamma.shape != (count,):
        raise ValueError(f"criterion 'bn_scale': {gamma.size} gamma entries for {count} units")
    return gamma


@register_criterion(
    "bn_scale",
    statistics=StatsRequest(gradients=False, bn_scale=BN_GAMMA_OPTION),
    group=_bn_scale_groups,
    groups_only=True,
)
def bn_scale(
    theta: np.ndarray, stats: WeightStatistics | None = None, *, bn_gamma: np.ndarray | None = None
) -> np.ndarray:
    """Network slimming: a unit/filter scores ``|gamma_c|``, the scale of its channel in
    the BatchNormalization that follows the layer (Liu et al. 2017, "Learning
    efficient convolutional networks through network slimming"; they train
    with an L1 penalty on gamma so that the scales become sparse).

    The Keras glue finds the BatchNormalization after each layer (through
    element-wise layers, see :func:`tfstatprune.keras.graph.batch_norm_after`)
    and passes its current gamma as ``bn_gamma``; a layer with none is an
    error. Every weight of the kernel carries its unit's score here.

    >>> bn_scale(np.ones((3, 2)), bn_gamma=np.array([-0.5, 2.0]))[0]
    array([0.5, 2. ])
    """
    if bn_gamma is None:
        return _bn_scale_groups([theta], [stats], [group_ids(np.shape(theta), "unit")])
    gamma = np.abs(np.asarray(bn_gamma, np.float64)).reshape(-1)
    return np.broadcast_to(gamma, np.shape(theta)).astype(np.float64)
