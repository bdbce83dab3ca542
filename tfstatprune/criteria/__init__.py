"""Pruning criteria: pure functions ``(theta, stats, **options) -> scores`` (higher = keep).

The default, ``"wald"``, is the best Wald estimator each layer allows: the block
covariance with the restricted estimator (:func:`wald_block`, also registered as
``"wald_block"``) where the layer has Kronecker factors (Dense, Conv), the seed
paper's diagonal sandwich (:func:`wald_diag`, ``"wald_diag"``) elsewhere. The
Python function :func:`wald` is the diagonal form, as before.
"""

from tfstatprune.criteria import block as _block  # noqa: F401  (registers criteria)
from tfstatprune.criteria import classic as _classic  # noqa: F401  (registers criteria)
from tfstatprune.criteria import history as _history  # noqa: F401  (registers criteria)
from tfstatprune.criteria import oneshot as _oneshot  # noqa: F401  (registers criteria)
from tfstatprune.criteria import sensitivity as _sensitivity  # noqa: F401  (registers criteria)
from tfstatprune.criteria import structured as _structured  # noqa: F401  (registers criteria)
from tfstatprune.criteria import taylor as _taylor  # noqa: F401  (registers criteria)
from tfstatprune.criteria.block import obs, wald_block
from tfstatprune.criteria.classic import magnitude, obd, random
from tfstatprune.criteria.history import n2ps, weight_updates
from tfstatprune.criteria.oneshot import obc, sparsegpt, wanda
from tfstatprune.criteria.registry import (
    Criterion,
    StatsRequest,
    available_criteria,
    get_criterion,
    register_criterion,
)
from tfstatprune.criteria.sensitivity import sensitivity
from tfstatprune.criteria.structured import apoz, bn_scale
from tfstatprune.criteria.taylor import taylor
from tfstatprune.criteria.wald import curvature_diagonal, wald, wald_diag, wald_pvalues

__all__ = [
    "Criterion",
    "StatsRequest",
    "apoz",
    "available_criteria",
    "bn_scale",
    "curvature_diagonal",
    "get_criterion",
    "magnitude",
    "n2ps",
    "obc",
    "obs",
    "obd",
    "random",
    "register_criterion",
    "sensitivity",
    "sparsegpt",
    "taylor",
    "wald",
    "wald_block",
    "wald_diag",
    "wald_pvalues",
    "wanda",
    "weight_updates",
]
