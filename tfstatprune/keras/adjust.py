"""After-pruning adjustments of Dropout and BatchNormalization (seed 001, sec. 4.1).

"Some networks contain Dropout and Batch Normalization layers which have to
be adapted for pruned networks":

- **Dropout** (Han, Pool, Tran & Dally 2015, sec. 3.3): a sparser layer
  needs less dropout. With ``C_i`` the number of connections of layer i, the
  rate of the Dropout feeding it becomes ``D_r = D_o sqrt(C_ir / C_io)``
  (original ``o``, after pruning ``r``). Applied at every mask update as
  ``D <- D sqrt(C_after / C_before)``, which telescopes to Han's formula and
  needs no memory of the original rate. A Dropout feeding several pruned
  layers uses their connections summed.
- **BatchNormalization**: the moving mean and variance after a pruned layer
  describe activations that no longer exist; they are reset (to their
  initial values, 0 and 1) and re-learned during retraining.

The Dropout feeding a layer is found by walking the model graph backwards
from the layer's inputs (Sequential or functional: the inbound nodes) through
layers that only reshape or apply an element-wise activation; the
BatchNormalization layers after it by walking forwards through the same kind
of layers (and Dropout and pooling). Changing a Dropout rate re-traces the
model's training function, so that a ``fit`` in progress uses the new rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.stats.keys import key_of

__all__ = [
    "Adjustments",
    "adjust_after_pruning",
    "batchnorms_after",
    "connections",
    "dropouts_before",
    "reset_batchnorm",
]

# Layers between a Dropout (or a BatchNormalization) and a pruned layer that
# do not change which connections exist.
_PASS_THROUGH = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)
_POOLING = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)


class Adjustments(NamedTuple):
    """What :func:`adjust_after_pruning` changed.

    Attributes:
      dropout: ``{dropout layer name: (old rate, new rate)}``.
      batchnorm: names of the BatchNormalization layers whose statistics were reset.
    """

    dropout: dict[str, tuple[float, float]]
    batchnorm: list[str]


def _as_list(layers: object) -> list[keras.layers.Layer]:
    if layers is None:
        return []
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]


def _inbound(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [source for node in layer._inbound_nodes for source in _as_list(node.inbound_layers)]


def _outbound(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [node.layer for node in layer._outbound_nodes]


def _walk(
    start: Iterable[keras.layers.Layer], step, wanted: type, through: tuple[type, ...]
) -> list[keras.layers.Layer]:
    found, seen, frontier = [], set(), list(start)
    while frontier:
        layer = frontier.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, wanted):
            found.append(layer)
        elif isinstance(layer, through):
            frontier.extend(step(layer))
    return found


def dropouts_before(layer: keras.layers.Layer) -> list[keras.layers.Dropout]:
    """The Dropout layers whose output reaches ``layer``'s input unchanged but for shape."""
    return _walk(_inbound(layer), _inbound, keras.layers.Dropout, _PASS_THROUGH)


def batchnorms_after(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The BatchNormalization layers that normalize ``layer``'s output."""
    through = (*_PASS_THROUGH, keras.layers.Dropout, *_POOLING)
    return _walk(_outbound(layer), _outbound, keras.layers.BatchNormalization, through)


def connections(layer: keras.layers.Layer) -> int:
    """Non-zero kernel entries of ``layer`` (a pruning wrapper: unmasked ones)."""
    masks = getattr(layer, "current_masks", None)
    inner = getattr(layer, "layer", layer)
    kernel = getattr(inner, "kernel", None)
    if kernel is None:
        return 0
    if masks is not None:
        mask = masks().get(key_of(inner, kernel))
        if mask is not None:
            return int(np.count_nonzero(mask))
    return int(np.count_nonzero(kernel.numpy()))


def reset_batchnorm(layer: keras.layers.Layer) -> None:
    """Moving mean and variance back to their initial values (0 and 1 by default)."""
    for variable, initializer in (
        (layer.moving_mean, layer.moving_mean_initializer),
        (layer.moving_variance, layer.moving_variance_initializer),
    ):
        variable.assign(initializer(variable.shape, variable.dtype))


def adjust_after_pruning(
    model: keras.Model,
    changes: Mapping[keras.layers.Layer, tuple[int, int]],
    *,
    dropout: bool = True,
    batchnorm: bool = True,
) -> Adjustments:
    """Adjust the Dropout feeding, and reset the BatchNormalization after, pruned layers.

    Args:
      model: the model the layers belong to (its training function is
        re-traced when a Dropout rate changes).
      changes: ``{layer: (connections before, connections after)}`` for the
        layers just pruned (layers of ``model``'s graph: the pruning wrappers
        of a wrapped model).
      dropout: scale the rate of each Dropout feeding them by
        ``sqrt(after / before)``.
      batchnorm: reset the statistics of the BatchNormalization layers after
        the layers that lost connections.

    Returns:
      What changed.
    """
    adjusted: dict[str, tuple[float, float]] = {}
    reset: list[str] = []
    if dropout:
        feeding: dict[int, tuple[keras.layers.Dropout, list[tuple[int, int]]]] = {}
        for layer, counts in changes.items():
            for drop in dropouts_before(layer):
                feeding.setdefault(id(drop), (drop, []))[1].append(counts)
        for drop, counts in feeding.values():
            before = sum(c[0] for c in counts)
            after = sum(c[1] for c in counts)
            if before <= 0 or after == before:
                continue
            old = float(drop.rate)
            drop.rate = old * math.sqrt(after / before)
            adjusted[drop.name] = (old, drop.rate)
    if batchnorm:
        for layer, (before, after) in changes.items():
            if after == before:
                continue
            for norm in batchnorms_after(layer):
                if norm.name not in reset:
                    reset_batchnorm(norm)
                    reset.append(norm.name)
    if adjusted and getattr(model, "train_function", None) is not None:
        model.train_function = model.make_train_function(force=True)
    return Adjustments(adjusted, reset)
