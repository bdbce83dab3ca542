"""tfstatprune: statistical (Wald) pruning for tf_keras models, on top of tfmot.

Typical use::

    import tfstatprune as tsp
    schedule = tsp.IterativeSparsity([0.5, 0.8, 0.9], every=500)
    pruned = tsp.prune_statistically(model, stats_data, "wald", schedule)
    pruned.compile(...)
    pruned.fit(x, y, callbacks=tsp.callbacks(stats_data))
    final = tsp.strip_pruning(pruned)

Keras: tfstatprune uses tf_keras (Keras 2), as tensorflow-model-optimization
does; see :mod:`tfstatprune._keras`.
"""

from tfstatprune import criteria, masking, regularizers, schedules, stats
from tfstatprune.criteria import (
    available_criteria,
    get_criterion,
    register_criterion,
    wald_pvalues,
)
from tfstatprune.keras import (
    AutoPruneResult,
    PruneStatistically,
    SensitivityRegularization,
    StatisticalPruning,
    WeightHistory,
    callbacks,
    copy_model,
    prune_auto,
    prune_by_threshold,
    prune_once,
    prune_scope,
    prune_statistically,
    scores,
    sparsity_report,
    strip_pruning,
)
from tfstatprune.keras.latency import latency_policy
from tfstatprune.masking import compute_masks
from tfstatprune.schedules import IterativeSparsity, OneShotSparsity
from tfstatprune.shrink import shrink
from tfstatprune.stats import collect_statistics

__version__ = "0.1.0"

__all__ = [
    "IterativeSparsity",
    "OneShotSparsity",
    "PruneStatistically",
    "SensitivityRegularization",
    "StatisticalPruning",
    "WeightHistory",
    "available_criteria",
    "callbacks",
    "collect_statistics",
    "compute_masks",
    "copy_model",
    "criteria",
    "get_criterion",
    "latency_policy",
    "masking",
    "prune_by_threshold",
    "AutoPruneResult",
    "prune_auto",
    "prune_once",
    "prune_scope",
    "prune_statistically",
    "register_criterion",
    "regularizers",
    "schedules",
    "scores",
    "shrink",
    "sparsity_report",
    "stats",
    "strip_pruning",
    "wald_pvalues",
]
