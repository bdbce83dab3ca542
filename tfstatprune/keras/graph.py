"""The layer graph of a model: which prunable units feed which input rows.

Structured pruning needs to know what a unit of one layer becomes downstream.
A unit of a Dense layer (a column of its ``[in, out]`` kernel) or a filter of a
convolution (``kernel[..., k]``) is a *channel* -- an entry of the last axis of
the layer's output (``channels_last``). This module follows channels through
the model, call by call, to the layers that read them: the **consumers**
(Dense and convolution layers, which read channel ``c`` through the input rows
``kernel[..., c, :]``).

How channels travel (the same rules as :func:`tfstatprune.shrink`):

* layers that keep each channel in place -- element-wise activations
  (``Activation``, ``ReLU``, ``LeakyReLU``, ...), ``Dropout`` and the noise
  layers, ``BatchNormalization`` (last axis), max/average/global pooling,
  cropping, up-sampling, zero padding -- pass them on;
* ``Flatten`` and ``Reshape`` (when the new last axis holds whole positions)
  repeat them: with ``channels_last`` the flat index ``p * C + c`` is channel
  ``c``;
* ``Concatenate`` on the channel axis lays its inputs' channels side by side;
* ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum`` and ``Minimum``
  join channel ``j`` of every input into one group: it is dead only when it is
  dead in every input.

Every other layer (softmax or other non-element-wise activations,
``LayerNormalization``, nested models, recurrent layers, ...) is a wall: the
channels reaching it are not followed, and its outputs count as live. A group
fed by a model input or by such a layer is never dead.

The module also owns the small graph walk :mod:`tfstatprune.shrink` builds on
(:func:`layer_calls`, :func:`tensor_key`, :func:`lookup`, ...). Pruning wrappers
are looked through: a wrapped layer is known by its inner layer's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras
from tfstatprune.keras.layers import prunable_weights

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "LayerCall",
    "UnitGraph",
    "batch_norm_after",
    "following_gamma",
    "is_elementwise",
    "layer_calls",
    "lookup",
    "model_nodes",
    "output_layers",
    "require_graph",
    "tensor_key",
    "trace_units",
    "unwrap",
]

# Activations f with f(x)[i] = f(x[i]): channel i of the output depends on channel i only.
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "swish",
        "silu",
        "mish",
        "tanh",
        "sigmoid",
        "hard_sigmoid",
        "softplus",
        "softsign",
        "exponential",
    }
)

TensorKey = tuple[str, int, int]


# ----------------------------------------------------------------------------- graph walk


def require_graph(model: keras.Model, what: str) -> None:
    """Raise a clear error unless ``model`` is a built Sequential or functional model."""
    if getattr(model, "_is_graph_network", False):
        return
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"{what} needs a built Sequential model with a known input shape; model "
            f"{model.name!r} has none. Start it with keras.Input(shape=...) (or give its "
            "first layer input_shape=...)."
        )
    raise TypeError(
        f"{what} works on Sequential and functional models, but {model.name!r} is a "
        f"subclassed model ({type(model).__name__}) whose layer graph is not known. "
        "Rebuild it as a functional model (keras.Model(inputs, outputs)) and copy the "
        "weights over."
    )


def model_nodes(model: keras.Model) -> list[Any]:
    """The model's layer calls (Keras nodes), inputs first (topological order)."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def tensor_key(tensor: Any) -> TensorKey:
    """A hashable name of a symbolic tensor: (layer, node index, tensor index)."""
    history = tensor._keras_history
    return (history.layer.name, history.node_index, history.tensor_index)


class LayerCall(NamedTuple):
    """One call of a layer inside the model."""

    layer: keras.layers.Layer
    inputs: list[Any]
    outputs: list[Any]

    def in_shape(self, index: int = 0) -> tuple[int | None, ...]:
        return tuple(self.inputs[index].shape)

    def out_shape(self, index: int = 0) -> tuple[int | None, ...]:
        return tuple(self.outputs[index].shape)


def layer_calls(model: keras.Model) -> list[LayerCall]:
    """Every layer call of ``model`` in topological order."""
    return [
        LayerCall(
            node.layer, list(tf.nest.flatten(node.keras_inputs)), tf.nest.flatten(node.outputs)
        )
        for node in model_nodes(model)
    ]


def lookup(registry: Mapping[type, Any], layer: keras.layers.Layer) -> Any:
    """The registry entry of the closest class in ``layer``'s MRO (None if none)."""
    for cls in type(layer).__mro__:
        if cls in registry:
            return registry[cls]
    return None


def is_elementwise(activation: Callable[..., Any] | None) -> bool:
    """Whether ``activation`` acts on each entry separately (relu, tanh, ...; not softmax)."""
    return getattr(activation, "__name__", None) in ELEMENTWISE_ACTIVATIONS


def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer inside a pruning wrapper (tfstatprune's or tfmot's), else ``layer``."""
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        return layer.layer
    return layer


# ----------------------------------------------------------------------------- channel rules

_PRODUCER, _CHANNELWISE, _RESHAPE, _MERGE, _CONCATENATE = (
    "producer",
    "channelwise",
    "reshape",
    "merge",
    "concatenate",
)

_KINDS: dict[type, str | None] = {
    keras.layers.Dense: _PRODUCER,
    keras.layers.Conv1D: _PRODUCER,
    keras.layers.Conv2D: _PRODUCER,
    keras.layers.Conv3D: _PRODUCER,
    # Conv subclasses whose kernels are laid out differently.
    keras.layers.Conv1DTranspose: None,
    keras.layers.Conv2DTranspose: None,
    keras.layers.Conv3DTranspose: None,
    keras.layers.DepthwiseConv1D: None,
    keras.layers.DepthwiseConv2D: None,
    keras.layers.SeparableConv1D: None,
    keras.layers.SeparableConv2D: None,
    keras.layers.BatchNormalization: _CHANNELWISE,
    keras.layers.Activation: _CHANNELWISE,
    keras.layers.ReLU: _CHANNELWISE,
    keras.layers.LeakyReLU: _CHANNELWISE,
    keras.layers.ELU: _CHANNELWISE,
    keras.layers.ThresholdedReLU: _CHANNELWISE,
    keras.layers.Dropout: _CHANNELWISE,
    keras.layers.GaussianNoise: _CHANNELWISE,
    keras.layers.GaussianDropout: _CHANNELWISE,
    keras.layers.AlphaDropout: _CHANNELWISE,
    keras.layers.ActivityRegularization: _CHANNELWISE,
    keras.layers.MaxPooling1D: _CHANNELWISE,
    keras.layers.MaxPooling2D: _CHANNELWISE,
    keras.layers.MaxPooling3D: _CHANNELWISE,
    keras.layers.AveragePooling1D: _CHANNELWISE,
    keras.layers.AveragePooling2D: _CHANNELWISE,
    keras.layers.AveragePooling3D: _CHANNELWISE,
    keras.layers.GlobalMaxPooling1D: _CHANNELWISE,
    keras.layers.GlobalMaxPooling2D: _CHANNELWISE,
    keras.layers.GlobalMaxPooling3D: _CHANNELWISE,
    keras.layers.GlobalAveragePooling1D: _CHANNELWISE,
    keras.layers.GlobalAveragePooling2D: _CHANNELWISE,
    keras.layers.GlobalAveragePooling3D: _CHANNELWISE,
    keras.layers.Cropping1D: _CHANNELWISE,
    keras.layers.Cropping2D: _CHANNELWISE,
    keras.layers.Cropping3D: _CHANNELWISE,
    keras.layers.UpSampling1D: _CHANNELWISE,
    keras.layers.UpSampling2D: _CHANNELWISE,
    keras.layers.UpSampling3D: _CHANNELWISE,
    keras.layers.ZeroPadding1D: _CHANNELWISE,
    keras.layers.ZeroPadding2D: _CHANNELWISE,
    keras.layers.ZeroPadding3D: _CHANNELWISE,
    keras.layers.Flatten: _RESHAPE,
    keras.layers.Reshape: _RESHAPE,
    keras.layers.Add: _MERGE,
    keras.layers.Subtract: _MERGE,
    keras.layers.Multiply: _MERGE,
    keras.layers.Average: _MERGE,
    keras.layers.Maximum: _MERGE,
    keras.layers.Minimum: _MERGE,
    keras.layers.Concatenate: _CONCATENATE,
}


def _channels_last(call: LayerCall) -> bool:
    data_format = getattr(unwrap(call.layer), "data_format", "channels_last")
    return data_format == "channels_last" or len(call.in_shape()) <= 2


def _kind(call: LayerCall) -> str | None:
    """How channels pass through ``call`` (None: they do not)."""
    layer = unwrap(call.layer)
    if isinstance(layer, keras.Model):
        return None
    kind = lookup(_KINDS, layer)
    if kind in (_PRODUCER, _CHANNELWISE, _RESHAPE) and (
        len(call.inputs) != 1 or not _channels_last(call)
    ):
        return None
    if kind == _PRODUCER and getattr(layer, "groups", 1) != 1:
        return None
    if kind == _CHANNELWISE:
        if isinstance(layer, keras.layers.Activation) and not is_elementwise(layer.activation):
            return None
        if isinstance(layer, keras.layers.BatchNormalization) and list(layer.axis) != [
            len(call.in_shape()) - 1
        ]:
            return None
        if call.out_shape()[-1] != call.in_shape()[-1]:
            return None
    if kind == _RESHAPE:
        in_shape, out_shape = call.in_shape()[1:], call.out_shape()[1:]
        if None in in_shape or None in out_shape or not in_shape or not out_shape:
            return None
        if out_shape[-1] % in_shape[-1]:
            return None
    if kind == _CONCATENATE and unwrap(call.layer).axis not in (-1, len(call.out_shape()) - 1):
        kind = _MERGE
    if kind == _MERGE and {tuple(t.shape)[-1] for t in call.inputs} != {call.out_shape()[-1]}:
        return None
    return kind


# ----------------------------------------------------------------------------- unit graph


class UnitGraph(NamedTuple):
    """Which units of which producer layers feed each input row of each consumer.

    Units are numbered across the model; a *source group* is the set of units
    one channel of a tensor adds up (a single unit, or the units an ``Add``
    joins), possibly *fixed*: fed by something else as well (a model input, a
    layer the channels are not followed through), so never dead.

    Attributes:
      layers: the producer and consumer layers (inner layers) by name.
      producers: ``{layer name: the numbers of its units}`` (last kernel axis).
      consumers: ``{layer name: [source group of each input row, per call]}``
        (the kernel's axis -2).
      group_of: with ``unit_of``, the (group, unit) membership pairs.
      unit_of: see ``group_of``.
      fixed: per source group, whether it is fixed.
      outputs: the prunable layers whose outputs reach a model output without
        passing another prunable layer (see :func:`output_layers`).
    """

    layers: dict[str, keras.layers.Layer]
    producers: dict[str, np.ndarray]
    consumers: dict[str, list[np.ndarray]]
    group_of: np.ndarray
    unit_of: np.ndarray
    fixed: np.ndarray
    outputs: tuple[str, ...]

    def dead_rows(self, dead_units: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Input rows of each consumer that read only dead units.

        Args:
          dead_units: ``{producer layer name: bool array over its units}``;
            producers not named are alive.

        Returns:
          ``{consumer layer name: bool array over its input rows}``, True where
          every unit feeding the row is dead (in every call of the consumer).
        """
        count = sum(ids.size for ids in self.producers.values())
        alive_unit = np.ones(count, bool)
        for name, ids in self.producers.items():
            dead = dead_units.get(name)
            if dead is not None:
                alive_unit[ids[np.asarray(dead, bool)]] = False
        live_members = np.bincount(
            self.group_of, alive_unit[self.unit_of].astype(np.float64), self.fixed.size
        )
        alive = self.fixed | (live_members > 0)
        found = {}
        for name, calls in self.consumers.items():
            rows = np.ones(calls[0].shape, bool)
            for groups in calls:
                rows &= ~alive[groups]
            found[name] = rows
        return found


class _Groups:
    """Source groups of channels: the units each one adds up, and whether it is fixed."""

    def __init__(self) -> None:
        self.members: list[np.ndarray] = []
        self.fixed: list[bool] = []
        self.units = 0

    def fixed_channels(self, tensor: Any) -> np.ndarray | None:
        """Fresh fixed groups for the channels of ``tensor`` (None without a channel axis)."""
        shape = tuple(tensor.shape)
        if len(shape) < 2 or shape[-1] is None:
            return None
        return self._new([np.zeros(0, np.int64)] * shape[-1], [True] * shape[-1])

    def units_of(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` new units and one singleton group per unit."""
        ids = np.arange(self.units, self.units + count)
        self.units += count
        return ids, self._new([ids[i : i + 1] for i in range(count)], [False] * count)

    def merge(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Channel ``j`` of the result adds up channel ``j`` of every input."""
        members, fixed = [], []
        for groups in zip(*inputs, strict=True):
            members.append(np.unique(np.concatenate([self.members[g] for g in groups])))
            fixed.append(any(self.fixed[g] for g in groups))
        return self._new(members, fixed)

    def _new(self, members: list[np.ndarray], fixed: list[bool]) -> np.ndarray:
        start = len(self.members)
        self.members.extend(members)
        self.fixed.extend(fixed)
        return np.arange(start, start + len(members))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        sizes = [m.size for m in self.members]
        group_of = np.repeat(np.arange(len(self.members)), sizes)
        unit_of = np.concatenate([*self.members, np.zeros(0, np.int64)]).astype(np.int64)
        return group_of, unit_of


def trace_units(model: keras.Model) -> UnitGraph:
    """Follow every producer's units through ``model`` to the layers that read them.

    Args:
      model: a Sequential or functional tf_keras model, possibly wrapped for
        pruning.

    Raises:
      ValueError, TypeError: a model whose layer graph is not known (see
        :func:`require_graph`).
    """
    require_graph(model, "structured pruning")
    groups = _Groups()
    channels: dict[TensorKey, np.ndarray | None] = {}
    layers: dict[str, keras.layers.Layer] = {}
    producers: dict[str, np.ndarray] = {}
    outputs_of: dict[str, np.ndarray] = {}
    consumers: dict[str, list[np.ndarray]] = {}
    for call in layer_calls(model):
        inputs = [channels.get(tensor_key(t)) for t in call.inputs]
        kind = _kind(call)
        layer = unwrap(call.layer)
        if kind == _PRODUCER:
            layers[layer.name] = layer
            if inputs[0] is not None and inputs[0].size == layer.kernel.shape[-2]:
                consumers.setdefault(layer.name, []).append(inputs[0])
            if layer.name not in producers:
                producers[layer.name], outputs_of[layer.name] = groups.units_of(
                    int(layer.kernel.shape[-1])
                )
            outputs = [outputs_of[layer.name]]
        elif kind == _CHANNELWISE:
            outputs = [inputs[0]]
        elif kind == _RESHAPE:
            repeat = call.out_shape()[-1] // call.in_shape()[-1]
            outputs = [None if inputs[0] is None else np.tile(inputs[0], repeat)]
        elif kind in (_CONCATENATE, _MERGE) and any(found is None for found in inputs):
            outputs = [groups.fixed_channels(call.outputs[0])]
        elif kind == _CONCATENATE:
            outputs = [np.concatenate(inputs)]
        elif kind == _MERGE:
            outputs = [groups.merge(inputs)]
        else:
            outputs = [groups.fixed_channels(tensor) for tensor in call.outputs]
        for tensor, found in zip(call.outputs, outputs, strict=True):
            channels[tensor_key(tensor)] = found
    group_of, unit_of = groups.pairs()
    return UnitGraph(
        layers,
        producers,
        consumers,
        group_of,
        unit_of,
        np.asarray(groups.fixed, bool),
        tuple(output_layers(model)),
    )


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
        layer = unwrap(call.layer)
        if prunable_weights(layer):
            if layer.name not in found:
                found.append(layer.name)
        elif not isinstance(layer, keras.Model):
            pending.extend(call.inputs)
    return found


def batch_norm_after(model: keras.Model, name: str) -> keras.layers.BatchNormalization | None:
    """The BatchNormalization that scales the outputs of layer ``name`` (None if none).

    Follows the layer's output while it has a single reader that keeps
    channels in place (an element-wise activation, Dropout, pooling, ...) up to
    a BatchNormalization of the last axis -- the layer whose ``gamma`` network
    slimming reads. A branching output, another Dense/Conv layer or any other
    layer first means there is none.
    """
    require_graph(model, "structured pruning")
    readers: dict[TensorKey, list[LayerCall]] = {}
    start: list[Any] = []
    for call in layer_calls(model):
        for tensor in call.inputs:
            readers.setdefault(tensor_key(tensor), []).append(call)
        if unwrap(call.layer).name == name:
            start.extend(call.outputs)
    if len(start) != 1:
        return None
    tensor = start[0]
    while True:
        after = readers.get(tensor_key(tensor), [])
        if len(after) != 1 or tensor_key(tensor) in {tensor_key(t) for t in model.outputs}:
            return None
        call = after[0]
        layer = unwrap(call.layer)
        if _kind(call) != _CHANNELWISE:
            return None
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
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
