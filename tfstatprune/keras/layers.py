"""Which weights of which layers are prunable (tfmot's rules, read without side effects)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import (
    prunable_layer,
    prune_registry,
)

from tfstatprune._keras import keras

__all__ = ["prunable_weights", "iter_layers", "select_layers"]


def iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """All layers of ``model``, descending into nested models (not into wrappers)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        else:
            yield layer


def prunable_weights(layer: keras.layers.Layer, *, prune_bias: bool = False) -> list[tf.Variable]:
    """The weights tfmot would prune in ``layer`` (plus its bias when ``prune_bias``).

    A ``PrunableLayer`` or a layer with ``get_prunable_weights()`` says itself;
    built-in layers follow tfmot's registry (Dense and Conv kernels,
    Embedding tables, ...).
    """
    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        found = list(layer.get_prunable_weights())
    elif prune_registry.PruneRegistry.supports(layer):
        found = [getattr(layer, name) for name in prune_registry.PruneRegistry._weight_names(layer)]
    else:
        found = []
    bias = getattr(layer, "bias", None)
    if prune_bias and found and bias is not None and all(bias is not w for w in found):
        found.append(bias)
    return found


def select_layers(
    model: keras.Model, layers: Sequence[str] | None = None
) -> list[keras.layers.Layer]:
    """Prunable layers of ``model``, optionally restricted to the names in ``layers``.

    Raises:
      ValueError: no prunable layer, or a name in ``layers`` that is not a
        prunable layer of the model.
    """
    all_layers = list(iter_layers(model))
    prunable = [layer for layer in all_layers if prunable_weights(layer)]
    if layers is not None:
        names = {layer.name for layer in prunable}
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not prunable layers of {model.name!r}; prunable: "
                f"{sorted(names)}"
            )
        prunable = [layer for layer in prunable if layer.name in set(layers)]
    if not prunable:
        raise ValueError(
            f"model {model.name!r} has no prunable layers (Dense, Conv, Embedding, ... or a "
            "layer implementing tfmot's PrunableLayer.get_prunable_weights)"
        )
    return prunable
