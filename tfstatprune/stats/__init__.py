"""Per-example gradient statistics: the interface between data and criteria."""

from tfstatprune.stats.activations import ActivationStatistics
from tfstatprune.stats.collector import (
    HESSIANS,
    CollectedStatistics,
    GenericPathWarning,
    check_stats_data,
    collect_statistics,
)
from tfstatprune.stats.keys import WeightKeys, weight_keys
from tfstatprune.stats.losses import PerExampleLoss, resolve_loss
from tfstatprune.stats.moments import LayerStatistics, WeightStatistics
from tfstatprune.stats.registry import register_rule, registered_rules, rule_for
from tfstatprune.stats.rules import (
    BatchMoments,
    BatchNormalizationRule,
    ConvolutionRule,
    ConvRule,
    DenseRule,
    DepthwiseConvRule,
    EmbeddingRule,
    GradientRule,
)
from tfstatprune.stats.validation import (
    NonFiniteDataError,
    NoSignalWarning,
    SkippedExamplesWarning,
)

__all__ = [
    "HESSIANS",
    "ActivationStatistics",
    "BatchMoments",
    "BatchNormalizationRule",
    "CollectedStatistics",
    "ConvRule",
    "ConvolutionRule",
    "DenseRule",
    "DepthwiseConvRule",
    "EmbeddingRule",
    "GenericPathWarning",
    "GradientRule",
    "LayerStatistics",
    "NoSignalWarning",
    "NonFiniteDataError",
    "PerExampleLoss",
    "SkippedExamplesWarning",
    "WeightKeys",
    "WeightStatistics",
    "check_stats_data",
    "collect_statistics",
    "register_rule",
    "registered_rules",
    "resolve_loss",
    "rule_for",
    "weight_keys",
]
