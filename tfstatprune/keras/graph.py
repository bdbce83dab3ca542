"""Which prunable units feed which input rows: the channel graph read for masks.

Structured pruning needs to know what a unit of one layer becomes downstream.
A unit of a Dense layer (a column of its ``[in, out]`` kernel) or a filter of a
convolution (``kernel[..., k]``) is a *channel*; :mod:`tfstatprune.structure`
follows channels through the model (its registry says how each layer kind
passes them) to the layers that read them: the **consumers** (Dense and
convolution layers, which read channel ``c`` through the input rows
``kernel[..., c, :]``). A channel an element-wise merge (``Add``, ...) makes
from several inputs is dead only when it is dead in every input; a channel fed
by a model input or by a layer the channels are not followed through is never
dead.

This module reads that graph for mask consistency (:class:`UnitGraph`), finds
the model's output layers and the BatchNormalization after a layer (network
slimming). Pruning wrappers are looked through: a wrapped layer is known by
its inner layer's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.keras.layers import prunable_weights
from tfstatprune.structure.channels import ChannelGraph, channel_graph
from tfstatprune.structure.rules import ELEMENTWISE_ACTIVATIONS, is_elementwise
from tfstatprune.structure.walk import (
    LayerCall,
    TensorKey,
    layer_calls,
    model_nodes,
    readers_of,
    require_graph,
    tensor_key,
    unwrap,
)

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "LayerCall",
    "UnitGraph",
    "batch_norm_after",
    "following_gamma",
    "is_elementwise",
    "layer_calls",
    "model_nodes",
    "output_layers",
    "require_graph",
    "tensor_key",
    "trace_units",
    "unwrap",
]


class UnitGraph(NamedTuple):
    """Which units of which producer layers feed each input row of each consumer.

    Attributes:
      layers: the producer and consumer layers (inner layers) by name.
      producers: ``{layer name: the slots of its units}`` (last kernel axis).
      consumers: ``{layer name: [slots of each input row, per call]}`` (the
        kernel's axis -2).
      outputs: the prunable layers whose outputs reach a model output without
        passing another prunable layer (see :func:`output_layers`).
      channels: the model's :class:`~tfstatprune.structure.ChannelGraph`.
    """

    layers: dict[str, keras.layers.Layer]
    producers: dict[str, np.ndarray]
    consumers: dict[str, list[np.ndarray]]
    outputs: tuple[str, ...]
    channels: ChannelGraph

    def dead_rows(self, dead_units: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Input rows of each consumer that read only dead units.

        Args:
          dead_units: ``{producer layer name: bool array over its units}``;
            producers not named are alive.

        Returns:
          ``{consumer layer name: bool array over its input rows}``, True where
          every unit feeding the row is dead (in every call of the consumer).
        """
        dead = np.zeros(self.channels.size, bool)
        for name, slots in self.producers.items():
            found = dead_units.get(name)
            if found is not None:
                dead[slots[np.asarray(found, bool)]] = True
        alive = self.channels.alive(dead)
        found = {}
        for name, calls in self.consumers.items():
            rows = np.ones(calls[0].shape, bool)
            for slots in calls:
                rows &= ~alive[slots]
            found[name] = rows
        return found


def trace_units(model: keras.Model) -> UnitGraph:
    """Follow every producer's units through ``model`` to the layers that read them.

    Args:
      model: a Sequential or functional tf_keras model, possibly wrapped for
        pruning.

    Raises:
      ValueError, TypeError: a model whose layer graph is not known (see
        :func:`require_graph`).
    """
    graph = channel_graph(model, "structured pruning")
    layers = {call.inner.name: call.inner for call, _ in graph.producer_calls}
    consumers: dict[str, list[np.ndarray]] = {}
    for call, slots in graph.reads:
        consumers.setdefault(call.inner.name, []).append(slots)
    return UnitGraph(layers, dict(graph.units_of), consumers, tuple(output_layers(model)), graph)


def output_layers(model: keras.Model) -> list[str]:
    """Names of the prunable layers whose outputs reach a model output directly.

    Walks back from each model output through layers without prunable weights
    (activations, reshapes, merges, ...) and stops at the first prunable ones:
    a unit of such a layer is an output of the model (a class, for a
    classifier).
    """
    require_graph(model, "structured pruning")
    made_by: dict[TensorKey, LayerCall] = {}
    for call in layer_calls(model):
        for tensor in call.outputs:
            made_by[tensor_key(tensor)] = call
    found: list[str] = []
    pending = list(model.outputs)
    seen: set[TensorKey] = set()
    while pending:
        key = tensor_key(pending.pop())
        if key in seen or key not in made_by:
            continue
        seen.add(key)
        call = made_by[key]
        layer = call.inner
        if prunable_weights(layer):
            if layer.name not in found:
                found.append(layer.name)
        elif not isinstance(layer, keras.Model):
            pending.extend(call.inputs)
    return found


def batch_norm_after(model: keras.Model, name: str) -> keras.layers.BatchNormalization | None:
    """The BatchNormalization that scales the outputs of layer ``name`` (None if none).

    Follows the layer's output while it has a single reader that keeps
    channels in place without weights of its own (an element-wise activation,
    Dropout, pooling, ...) up to a BatchNormalization of the last axis -- the
    layer whose ``gamma`` network slimming reads. A branching output, another
    Dense/Conv layer or any other layer first means there is none.
    """
    graph = channel_graph(model, "structured pruning")
    readers = readers_of(graph.calls)
    start: list[Any] = []
    for call in graph.calls:
        if call.inner.name == name:
            start.extend(call.outputs)
    if len(start) != 1:
        return None
    ends = {tensor_key(t) for t in model.outputs}
    tensor = start[0]
    while True:
        after = readers.get(tensor_key(tensor), [])
        if len(after) != 1 or tensor_key(tensor) in ends:
            return None
        call = after[0]
        rule = graph.rules.get(id(call))
        if rule is None or rule.name != "channelwise":
            return None
        if isinstance(call.inner, keras.layers.BatchNormalization):
            return call.inner
        tensor = call.outputs[0]


def following_gamma(model: keras.Model, layer: keras.layers.Layer, who: str) -> np.ndarray:
    """The ``gamma`` of the BatchNormalization after ``layer`` (see :func:`batch_norm_after`).

    Raises:
      ValueError: no BatchNormalization follows ``layer``, it has no ``gamma``
        (``scale=False``), or its channels are not ``layer``'s units; the
        message names ``who`` (the criterion asking).
    """
    norm = batch_norm_after(model, layer.name)
    if norm is None:
        raise ValueError(
            f"criterion {who!r} scores the units/filters of a layer by the |gamma| of the "
            f"BatchNormalization that follows it, but no BatchNormalization follows layer "
            f"{layer.name!r}: prune only layers followed by one (layers=[...])"
        )
    if norm.gamma is None:
        raise ValueError(
            f"criterion {who!r}: the BatchNormalization {norm.name!r} after layer "
            f"{layer.name!r} has no gamma (scale=False)"
        )
    gamma = norm.gamma.numpy()
    units = int(layer.kernel.shape[-1]) if getattr(layer, "kernel", None) is not None else None
    if units != gamma.shape[0]:
        raise ValueError(
            f"criterion {who!r}: the BatchNormalization {norm.name!r} after layer "
            f"{layer.name!r} has {gamma.shape[0]} channels, the layer {units} units"
        )
    return gamma
