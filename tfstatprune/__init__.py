"""tfstatprune: statistical (Wald) pruning for tf_keras models, on top of tfmot.

Typical use::

    import tfstatprune as tsp
    schedule = tsp.IterativeSparsity([0.5, 0.8, 0.9], every=500)
    pruned = tsp.prune_statistically(model, stats_data, "wald", schedule)
    pruned.compile(...)
    pruned.fit(x, y, callbacks=tsp.callbacks(stats_data))
    final = tsp.strip_pruning(pruned)

Keras: tfstatprune runs on tf_keras (Keras 2), as tensorflow-model-optimization
does; Keras 3 models are translated in and out (:mod:`tfstatprune._translate`).
Run as the ``tfstatprune`` command (only then), it first silences TensorFlow's
start-up log lines; see :mod:`tfstatprune._startup`.

Where it sits: the library never imports :mod:`tflite_export`, which imports the
library; the main job (:mod:`tfstatprune.demo`) and the command line's dispatch
(:mod:`tfstatprune.cli`) sit on top of both.
"""

from tfstatprune import _startup

if _startup.launched_as_command():  # before anything imports TensorFlow
    _startup.quiet_tensorflow_start()

from tfstatprune import criteria, masking, regularizers, schedules, stats
from tfstatprune._translate import (
    TranslationError,
    register_translation,
    to_keras3,
    to_tf_keras,
)
from tfstatprune.criteria import (
    StatsRequest,
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
    load_model,
    prune_auto,
    prune_by_threshold,
    prune_once,
    prune_scope,
    prune_statistically,
    recalibrate_batchnorm,
    refit_output_layer,
    scores,
    sparsity_report,
    strip_pruning,
)
from tfstatprune.keras.latency import latency_policy
from tfstatprune.masking import compute_masks
from tfstatprune.schedules import IterativeSparsity, OneShotSparsity
from tfstatprune.shrink import shrink
from tfstatprune.stats import collect_statistics
from tfstatprune.stats.keys import weight_keys

__version__ = "0.1.0"

__all__ = [
    "IterativeSparsity",
    "TranslationError",
    "OneShotSparsity",
    "PruneStatistically",
    "SensitivityRegularization",
    "StatisticalPruning",
    "StatsRequest",
    "WeightHistory",
    "available_criteria",
    "callbacks",
    "collect_statistics",
    "compute_masks",
    "copy_model",
    "criteria",
    "get_criterion",
    "latency_policy",
    "load_model",
    "masking",
    "prune_by_threshold",
    "AutoPruneResult",
    "prune_auto",
    "prune_once",
    "prune_scope",
    "prune_statistically",
    "recalibrate_batchnorm",
    "refit_output_layer",
    "register_criterion",
    "register_translation",
    "regularizers",
    "schedules",
    "scores",
    "shrink",
    "sparsity_report",
    "stats",
    "strip_pruning",
    "to_keras3",
    "to_tf_keras",
    "wald_pvalues",
    "weight_keys",
]
