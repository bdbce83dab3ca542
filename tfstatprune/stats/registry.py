"""The registry of closed-form gradient rules, keyed by layer class.

Lookup walks the layer's MRO, so a subclass of ``Dense`` gets Dense's rule
unless it registers its own. Registration refuses to overwrite silently; a layer
without a rule is handled by the generic ``vectorized_map`` path.

Example:
    >>> from tfstatprune._keras import keras
    >>> from tfstatprune.stats import rule_for
    >>> type(rule_for(keras.layers.Dense(3))).__name__
    'DenseRule'
    >>> rule_for(keras.layers.LSTM(3)) is None
    True
"""

from __future__ import annotations

from tfstatprune._keras import keras
from tfstatprune.stats.rules import DenseRule, GradientRule

__all__ = ["register_rule", "rule_for", "registered_rules"]

_RULES: dict[type, GradientRule] = {
    keras.layers.Dense: DenseRule(),
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
    if layer_class in _RULES and not overwrite:
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
    """A copy of the registry."""
    return dict(_RULES)
