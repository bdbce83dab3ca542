"""The named registry of pruning criteria.

A criterion is a pure function ``fn(theta, stats, **options) -> scores``:
``theta`` a weight tensor (numpy), ``stats`` its
:class:`~tfstatprune.stats.WeightStatistics` (``None`` for criteria that need
none), ``scores`` an array of ``theta``'s shape, higher = keep. A criterion
never knows how many weights will be pruned; :mod:`tfstatprune.masking` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from tfstatprune.granularity import Grouping, reduce_groups
from tfstatprune.masking import COMBINE
from tfstatprune.stats.moments import WeightStatistics

__all__ = [
    "Criterion",
    "CriterionFn",
    "available_criteria",
    "get_criterion",
    "register_criterion",
    "HESSIAN_OPTION",
    "NO_STATISTICS",
    "StatsRequest",
    "Update",
]

CriterionFn = Callable[..., np.ndarray]
GroupFn = Callable[..., np.ndarray]
UpdateFn = Callable[..., "Update"]
HESSIAN_OPTION = "hessian"


class StatsRequest(NamedTuple):
    """What a criterion needs besides the weights: statistics, and inputs from the glue.

    ``hessian``, ``kronecker``: the curvature of the gradient statistics, and
    Kronecker factors or not. ``loss``: the per-example function whose
    gradient statistics are wanted instead of the training loss
    (``sensitivity``: the true-class output). ``history``: the criterion reads
    the weight history recorded during training
    (:class:`tfstatprune.stats.history.UpdateStatistics`, from a
    :class:`tfstatprune.WeightHistory` passed as ``stats_data``), no gradients.
    ``activations``: zero counts of Dense/Conv activations
    (:class:`~tfstatprune.stats.ActivationStatistics`). ``gradients``: False
    for a criterion that reads no data at all (only the options below).
    ``diagonal_curvature``: False for a criterion that reads the curvature of
    the layers with Kronecker factors from the factors only (the block
    criteria), so their kernels' per-weight curvature is not collected.

    The glue also passes, per mask unit, the options named here (unless the
    user set them): ``seed``, the option that takes a seed derived from the
    user's seed, the pruning step and the unit's position (``random``);
    ``bn_scale``, the option that takes the ``gamma`` of the
    BatchNormalization after the unit's layer (``bn_scale``).

    >>> StatsRequest(gradients=False, seed="seed").needs_data
    False
    """

    hessian: str = "fisher"
    kronecker: bool = False
    loss: Any = None
    history: bool = False
    activations: bool = False
    gradients: bool = True
    seed: str | None = None
    bn_scale: str | None = None
    diagonal_curvature: bool = True

    @property
    def needs_data(self) -> bool:
        """True when the criterion reads ``stats_data`` (gradients or a history)."""
        return self.gradients or self.history


#: The request of a criterion that reads nothing but the weights.
NO_STATISTICS = StatsRequest(gradients=False)


class Update(NamedTuple):
    """What a criterion's update returns for one layer.

    Attributes:
      kernel, bias: the new values (bias None when the layer has none).
      keep: the ``[I(+1), O]`` mask the update settled on (True = kept): the
        solver may choose, within the counts it was given, other entries than
        the masking step did (adaptive mask selection).
      error: the joint statistic of the layer's restriction, in the units of
        the criterion's scores: ``sum_j w_j d_j^T A d_j`` with ``d_j`` the
        move of output unit j's ``[I(+1)]`` weights (pruned ones to 0),
        ``A`` the layer's damped input factor and ``w_j`` the column weight
        of the score (``n / M_jj`` for ``wald_block``). With the exact
        restricted estimator it is the least any move with the pruned weights
        at 0 costs (for one pruned weight: that weight's score); the blocked
        solver's move, rows before each block frozen, costs more. None: the
        update does not say.
    """

    kernel: np.ndarray
    bias: np.ndarray | None
    keep: np.ndarray
    error: float | None = None


def _needs_nothing(options: Mapping[str, Any]) -> StatsRequest:
    return NO_STATISTICS


def hessian_from_options(options: Mapping[str, Any]) -> str | None:
    """The statistics a curvature-based criterion needs: its ``hessian`` option."""
    return options.get(HESSIAN_OPTION, "fisher")


class Criterion(NamedTuple):
    """A registered criterion.

    Attributes:
      name: registry name.
      fn: ``fn(theta, stats, **options) -> scores``.
      statistics: ``statistics(options)`` says what the criterion needs for
        these options: None (nothing but the weights), a ``hessian`` name
        (``"fisher"``, ``"ggn"``, ``"ggn_exact"``) or a :class:`StatsRequest`.
      group: how the score of a group (unit, filter, block) follows from its
        members: ``"sum"`` of the per-entry scores (a Wald statistic with a
        diagonal covariance: chi-square with |g| degrees of freedom), ``"l2"``
        (``sqrt`` of the sum of squared per-entry scores: a group L2 norm), or
        a function ``(thetas, stats, groupings, **options) -> [groups]``.
      update: optional weight update after pruning (the restricted estimator):
        ``update(kernel, bias, stats, keep, *, choosable, min_keep, layer,
        **options) -> Update``, ``keep`` the decided ``[I(+1), O]`` mask (bias
        row last when there is one), ``choosable`` the entries whose fate the
        update may change within the mask's counts, ``min_keep`` entries each
        column keeps, ``layer`` the layer's name (for errors).
      groups_only: the criterion scores whole units/filters only (``apoz``,
        ``bn_scale``): calling it on single weights is an error.
      fallback: the registered criterion a layer without the statistics this
        one needs (no Kronecker factors: Embedding, custom layers) is scored by
        instead (``"wald"`` for ``"wald_block"``); None: such a layer is an error.
      combine: how the score of channels that an element-wise merge couples
        (units of several layers that go together) follows from the units'
        scores: ``"sum"``, ``"l2"`` or ``"mean"``
        (:func:`tfstatprune.masking.coupled_masks`); None: ``"l2"`` for an
        ``"l2"`` group, ``"sum"`` otherwise (the Wald statistic of a group of
        independent blocks is the sum of theirs).
    """

    name: str
    fn: CriterionFn
    statistics: Callable[[Mapping[str, Any]], str | StatsRequest | None]
    group: str | GroupFn = "sum"
    update: UpdateFn | None = None
    groups_only: bool = False
    fallback: str | None = None
    combine: str | None = None

    @property
    def coupled(self) -> str:
        """How coupled units' scores combine (see ``combine``)."""
        if self.combine is not None:
            return self.combine
        return "l2" if self.group == "l2" else "sum"

    def needs(self, options: Mapping[str, Any]) -> StatsRequest:
        """Everything the criterion needs for ``options``: a :class:`StatsRequest`."""
        needs = self.statistics(options)
        if needs is None:
            return NO_STATISTICS
        if isinstance(needs, StatsRequest):
            return needs
        return StatsRequest(hessian=needs)

    def request(self, options: Mapping[str, Any]) -> StatsRequest | None:
        """The statistics to collect for ``options``: :meth:`needs`, or None when the
        criterion reads no data."""
        needs = self.needs(options)
        return needs if needs.needs_data else None

    def __call__(
        self, theta: np.ndarray, stats: WeightStatistics | None = None, **options: Any
    ) -> np.ndarray:
        if self.groups_only:
            raise ValueError(
                f"criterion {self.name!r} scores whole units or filters, not single weights: "
                "use granularity='unit' or 'filter'"
            )
        scores = np.asarray(self.fn(theta, stats, **options), dtype=np.float64)
        if scores.shape != np.shape(theta):
            raise ValueError(
                f"criterion {self.name!r} returned scores of shape {scores.shape} for a "
                f"weight of shape {np.shape(theta)}"
            )
        return scores

    def group_scores(
        self,
        thetas: Sequence[np.ndarray],
        stats: Sequence[WeightStatistics | None],
        groupings: Sequence[Grouping],
        **options: Any,
    ) -> np.ndarray:
        """One score per group over the member tensors of one layer (kernel, bias)."""
        if callable(self.group):
            return np.asarray(self.group(thetas, stats, groupings, **options), np.float64)
        per_entry = [self(t, s, **options) for t, s in zip(thetas, stats, strict=True)]
        return reduce_groups(per_entry, groupings, self.group)


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str,
    *,
    statistics: Callable[[Mapping[str, Any]], str | StatsRequest | None]
    | str
    | StatsRequest
    | None = "fisher",
    group: str | GroupFn = "sum",
    update: UpdateFn | None = None,
    groups_only: bool = False,
    fallback: str | None = None,
    combine: str | None = None,
    overwrite: bool = False,
) -> Callable[[CriterionFn], CriterionFn]:
    """Decorator registering ``fn`` under ``name``.

    Args:
      name: the name users pass as ``criterion=``.
      statistics: None (needs no statistics), ``"fisher"``/``"ggn"`` (always
        needs those), a :class:`StatsRequest` (also what the glue passes,
        e.g. ``StatsRequest(gradients=False, seed="seed")``), or a function of
        the options returning one of those.
      group: the group form (see :class:`Criterion`).
      update: the weight update after pruning (see :class:`Criterion`).
      groups_only: ``fn`` is never called on single weights; ``group`` (a
        function) scores units/filters (see :class:`Criterion`).
      fallback: the criterion for layers without this one's statistics
        (see :class:`Criterion`).
      combine: how coupled units' scores combine (see :class:`Criterion`).
      overwrite: replace an existing entry instead of raising.
    """
    if statistics is None:
        needs = _needs_nothing
    elif isinstance(statistics, (str, StatsRequest)):

        def needs(options: Mapping[str, Any], _fixed: Any = statistics) -> Any:
            return _fixed

    else:
        needs = statistics

    if combine is not None and combine not in COMBINE:
        raise ValueError(f"combine must be None or one of {COMBINE}, got {combine!r}")

    def decorate(fn: CriterionFn) -> CriterionFn:
        if name in _CRITERIA and not overwrite:
            raise ValueError(f"criterion {name!r} is already registered; pass overwrite=True")
        _CRITERIA[name] = Criterion(name, fn, needs, group, update, groups_only, fallback, combine)
        return fn

    return decorate


def available_criteria() -> list[str]:
    """Names of the registered criteria, sorted."""
    return sorted(_CRITERIA)


def get_criterion(criterion: str | Criterion | CriterionFn) -> Criterion:
    """Look up a criterion by name; wrap a user callable (it gets Fisher statistics).

    A user callable that needs no statistics can say so with an attribute
    ``fn.statistics = None`` (or a :class:`StatsRequest`).

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        try:
            return _CRITERIA[criterion]
        except KeyError:
            raise ValueError(
                f"unknown criterion {criterion!r}; available: {', '.join(available_criteria())}"
                ", or pass a function (theta, stats, **options) -> scores"
            ) from None
    if callable(criterion):
        statistics = getattr(criterion, "statistics", "fisher")
        needs = _needs_nothing if statistics is None else (lambda options: statistics)
        return Criterion(getattr(criterion, "__name__", "custom"), criterion, needs)
    raise TypeError(f"criterion must be a name or a callable, got {criterion!r}")
