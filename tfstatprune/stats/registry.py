"""The registry of closed-form gradient rules, keyed by layer class.

Lookup walks the layer's MRO, so a subclass of ``Dense`` gets Dense's rule
unless it registers its own. A class mapped to ``None`` has no rule *and*
stops the walk: the transposed convolutions subclass ``Conv1D``/``Conv2D`` but
compute something else, so they must not inherit their rule. Registration
refuses to overwrite a rule silently; a layer without a rule is handled by the
generic ``vectorized_map`` path.

Example:
    >>> from tfstatprune._keras import keras
    >>> from tfstatprune.stats import rule_for
    >>> type(rule_for(keras.layers.Dense(3))).__name__
    'DenseRule'
    >>> type(rule_for(keras.layers.Conv2D(3, 3))).__name__
    'ConvRule'
    >>> rule_for(keras.layers.Conv2DTranspose(3, 3)) is None
    True
    >>> rule_for(keras.layers.LSTM(3)) is None
    True
"""

from __future__ import annotations

from tfstatprune._keras import keras
from tfstatprune.stats.rules import (
    BatchNormalizationRule,
    ConvRule,
    DenseRule,
    DepthwiseConvRule,
    EmbeddingRule,
    GradientRule,
)

__all__ = ["register_rule", "rule_for", "registered_rules"]

_CONV = ConvRule()
_DEPTHWISE = DepthwiseConvRule()

_RULES: dict[type, GradientRule | None] = {
    keras.layers.Dense: DenseRule(),
    keras.layers.Conv1D: _CONV,
    keras.layers.Conv2D: _CONV,
    keras.layers.Conv1DTranspose: None,
    keras.layers.Conv2DTranspose: None,
    keras.layers.DepthwiseConv1D: _DEPTHWISE,
    keras.layers.DepthwiseConv2D: _DEPTHWISE,
    keras.layers.Embedding: EmbeddingRule(),
    keras.layers.BatchNormalization: BatchNormalizationRule(),
}


def register_rule(layer_class: type, rule: GradientRule, *, overwrite: bool = False) -> None:
    """Register ``rule`` for ``layer_class`` (and, through the MRO, its subclasses).

    Raises:
      TypeError: if ``layer_class`` is not a Keras layer class or ``rule`` is not
        a :class:`GradientRule`.
      ValueError: if the class already has a rule and ``overwrite`` is False.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"layer_class must be a tf_keras Layer class, got {layer_class!r}")
    if not isinstance(rule, GradientRule):
        raise TypeError(f"rule must be a GradientRule instance, got {rule!r}")
    if _RULES.get(layer_class) is not None and not overwrite:
        raise ValueError(
            f"{layer_class.__name__} already has the rule {type(_RULES[layer_class]).__name__}; "
            "pass overwrite=True to replace it"
        )
    _RULES[layer_class] = rule


def rule_for(layer: keras.layers.Layer) -> GradientRule | None:
    """The rule for ``layer``'s class or its nearest registered base class, or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def registered_rules() -> dict[type, GradientRule]:
    """A copy of the registry (classes with a rule only)."""
    return {cls: rule for cls, rule in _RULES.items() if rule is not None}
