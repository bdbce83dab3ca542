"""Which weights of which layers are prunable (tfmot's rules, read without side effects)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import (
    prunable_layer,
    prune_registry,
    pruning_wrapper,
)

from tfstatprune._keras import keras
from tfstatprune.structure.walk import leaf_layers

__all__ = [
    "is_prunable",
    "iter_layers",
    "prunable_weights",
    "select_layers",
    "unsupported_layers",
]

_REGISTRY = prune_registry.PruneRegistry


def _registry_names(layer: keras.layers.Layer) -> list[tuple[keras.layers.Layer, str]]:
    """(owner, attribute path) of each weight tfmot's registry prunes in ``layer``.

    The registry names weights by attribute (``kernel``), by a dotted path
    (MultiHeadAttention's ``_query_dense.kernel``), or, for LSTM/GRU/SimpleRNN,
    by the attributes of their cells.
    """
    if _REGISTRY._is_rnn_layer(layer):
        found = []
        for cell in _REGISTRY._get_rnn_cells(layer):
            names = _REGISTRY._RNN_CELLS_WEIGHTS_MAP.get(type(cell))
            if names is None:  # a PrunableLayer cell (supports() checked it)
                found.extend((w, "") for w in cell.get_prunable_weights())
            else:
                found.extend((cell, name) for name in names)
        return found
    return [(layer, name) for name in _REGISTRY._weight_names(layer)]


def _attribute(owner: object, path: str) -> object:
    """``owner.a.b`` for ``path`` ``"a.b"`` (``owner`` itself for ``""``)."""
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part)
    return owner


def is_prunable(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` has weights to prune, by its type alone (works before it is built)."""
    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return True
    return _REGISTRY.supports(layer) and bool(_registry_names(layer))


def unsupported_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with weights that tfmot cannot prune (its ``prune_low_magnitude`` raises).

    Neither in tfmot's registry (by exact type, as tfmot checks: a subclass of
    Dense is not) nor a ``PrunableLayer`` nor with ``get_prunable_weights``.
    Built layers without weights (Flatten, Lambda, ...) are not listed; a layer
    not built yet (a Sequential built later) is judged by its type alone, as
    tfmot judges it.
    """
    return [
        layer
        for layer in iter_layers(model)
        if (layer.weights or not layer.built)
        and not isinstance(layer, (keras.layers.InputLayer, pruning_wrapper.PruneLowMagnitude))
        and not (
            isinstance(layer, prunable_layer.PrunableLayer)
            or hasattr(layer, "get_prunable_weights")
            or _REGISTRY.supports(layer)
        )
    ]


def iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """All layers of ``model``, descending into nested models (not into wrappers)."""
    return leaf_layers(model, through_wrappers=False)


def prunable_weights(layer: keras.layers.Layer, *, prune_bias: bool = False) -> list[tf.Variable]:
    """The weights tfmot would prune in ``layer`` (plus its bias when ``prune_bias``).

    A ``PrunableLayer`` or a layer with ``get_prunable_weights()`` says itself;
    built-in layers follow tfmot's registry (Dense and Conv kernels,
    Embedding tables, ...).
    """
    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        found = list(layer.get_prunable_weights())
    elif _REGISTRY.supports(layer):
        found = [_attribute(owner, name) for owner, name in _registry_names(layer)]
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
