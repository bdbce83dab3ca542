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
  initial values, 0 and 1) and re-learned during retraining. (A model pruned
  one-shot, without retraining, gets them re-estimated on data instead:
  :mod:`tfstatprune.keras.recalibration`.)

The Dropout feeding a layer is found by walking the model's layer calls
backwards from the layer's inputs through layers that only reshape or apply an
element-wise activation; the BatchNormalization layers after it by walking
forwards through the same kind of layers (and Dropout and pooling). Which
layers those are is their channel rule's ``passes_connections`` /
``passes_to_norm`` (:mod:`tfstatprune.structure.rules`). Changing a Dropout rate re-traces the
model's training function, so that a ``fit`` in progress uses the new rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.stats.keys import key_of
from tfstatprune.structure.rules import rule_for
from tfstatprune.structure.walk import LayerCall, layer_calls, readers_of, tensor_key

__all__ = [
    "Adjustments",
    "adjust_after_pruning",
    "batchnorms_after",
    "connections",
    "dropouts_before",
    "reset_batchnorm",
]


class Adjustments(NamedTuple):
    """What :func:`adjust_after_pruning` changed.

    Attributes:
      dropout: ``{dropout layer name: (old rate, new rate)}``.
      batchnorm: names of the BatchNormalization layers whose statistics were reset.
    """

    dropout: dict[str, tuple[float, float]]
    batchnorm: list[str]


def _walk(
    model: keras.Model, layer: keras.layers.Layer, *, forward: bool
) -> list[keras.layers.Layer]:
    """Layers reached from ``layer``'s calls, backwards to Dropout or forwards to
    BatchNormalization, through the layers whose rule passes them on."""
    calls = layer_calls(model)
    wanted = keras.layers.BatchNormalization if forward else keras.layers.Dropout
    readers = readers_of(calls)
    made_by = {tensor_key(t): call for call in calls for t in call.outputs}

    def step(call: LayerCall) -> list[LayerCall]:
        if forward:
            return [r for t in call.outputs for r in readers.get(tensor_key(t), [])]
        return [made_by[tensor_key(t)] for t in call.inputs if tensor_key(t) in made_by]

    found: list[keras.layers.Layer] = []
    frontier_calls = [n for c in calls if layer in (c.layer, c.inner) for n in step(c)]
    seen: set[int] = set()
    while frontier_calls:
        call = frontier_calls.pop()
        if id(call) in seen:
            continue
        seen.add(id(call))
        rule = rule_for(call.inner)
        if isinstance(call.inner, wanted):
            if call.inner not in found:
                found.append(call.inner)
        elif rule.passes_to_norm if forward else rule.passes_connections:
            frontier_calls.extend(step(call))
    return found


def dropouts_before(model: keras.Model, layer: keras.layers.Layer) -> list[keras.layers.Dropout]:
    """The Dropout layers whose output reaches ``layer``'s input unchanged but for shape."""
    return _walk(model, layer, forward=False)


def batchnorms_after(model: keras.Model, layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The BatchNormalization layers that normalize ``layer``'s output."""
    return _walk(model, layer, forward=True)


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
            for drop in dropouts_before(model, layer):
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
            for norm in batchnorms_after(model, layer):
                if norm.name not in reset:
                    reset_batchnorm(norm)
                    reset.append(norm.name)
    if adjusted and getattr(model, "train_function", None) is not None:
        model.train_function = model.make_train_function(force=True)
    return Adjustments(adjusted, reset)
