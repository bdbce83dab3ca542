"""The Keras glue: wrapper, callbacks and entry points."""

from tfstatprune.keras.api import (
    AutoPruneResult,
    copy_model,
    prune_auto,
    prune_once,
    prune_scope,
    prune_statistically,
    scores,
    strip_pruning,
)
from tfstatprune.keras.callbacks import StatisticalPruning, callbacks
from tfstatprune.keras.history import WeightHistory
from tfstatprune.keras.loading import load_model
from tfstatprune.keras.recalibration import Recalibration, recalibrate_batchnorm
from tfstatprune.keras.refit import Refit, refit_output_layer
from tfstatprune.keras.report import SparsityReport, sparsity_report
from tfstatprune.keras.sensitivity import SensitivityRegularization
from tfstatprune.keras.threshold import prune_by_threshold
from tfstatprune.keras.wrapper import PruneStatistically

__all__ = [
    "PruneStatistically",
    "SensitivityRegularization",
    "SparsityReport",
    "StatisticalPruning",
    "WeightHistory",
    "callbacks",
    "copy_model",
    "load_model",
    "prune_by_threshold",
    "AutoPruneResult",
    "prune_auto",
    "prune_once",
    "prune_scope",
    "prune_statistically",
    "recalibrate_batchnorm",
    "Recalibration",
    "refit_output_layer",
    "Refit",
    "scores",
    "sparsity_report",
    "strip_pruning",
]
