"""Closed-form per-example gradient moments, one rule per layer type.

The maths shared by the rules lives in :mod:`~tfstatprune.stats.rules.base`
(and, for convolutions, in :class:`~tfstatprune.stats.rules.conv.ConvolutionRule`);
each layer module is short. Which layer class gets which rule is decided in
one place, :mod:`tfstatprune.stats.registry`.
"""

from tfstatprune.stats.rules.base import (
    BatchMoments,
    GradientRule,
    moments_of,
    outer_moments,
    size_of,
)
from tfstatprune.stats.rules.conv import ConvolutionRule, ConvRule, DepthwiseConvRule
from tfstatprune.stats.rules.dense import DenseRule
from tfstatprune.stats.rules.embedding import EmbeddingRule
from tfstatprune.stats.rules.normalization import BatchNormalizationRule

__all__ = [
    "BatchMoments",
    "BatchNormalizationRule",
    "ConvRule",
    "ConvolutionRule",
    "DenseRule",
    "DepthwiseConvRule",
    "EmbeddingRule",
    "GradientRule",
    "moments_of",
    "outer_moments",
    "size_of",
]
