"""How channels pass through each layer kind: the one registry ``{LayerClass: ChannelRule}``.

A *channel* is an entry of a tensor's last axis (``channels_last``). A unit of
a Dense layer (a column of its ``[in, out]`` kernel) or a filter of a
convolution (``kernel[..., k]``) starts one; every other layer either passes
channels on (keeps them in place, lays them side by side, joins them, repeats
them) or is a *wall* the channels are not followed through. One
:class:`ChannelRule` per layer kind says which, and how a channel that holds
the same value for every example and position (a *constant*: the output of a
pruned unit) comes out. Rules are looked up along the layer class's MRO
(:func:`rule_for`), like the statistics registry: a subclass of ``Dense`` is a
Dense. A layer kind not registered is a wall (:func:`require_rule` raises for
it instead).

Mask consistency, the after-pruning adjustments, network slimming's
BatchNormalization lookup, parameter/FLOP counts and :func:`tfstatprune.shrink`
all read this registry; a new layer kind is one entry here:

    >>> from tfstatprune._keras import keras
    >>> class Swish(keras.layers.Layer):       # an element-wise activation
    ...     def call(self, x):
    ...         return x * keras.activations.sigmoid(x)
    >>> rule_for(Swish()).name
    'wall'
    >>> register_channel_rule(Swish, Channelwise(fold=applied))
    >>> rule_for(Swish()).name
    'channelwise'
    >>> unregister_channel_rule(Swish)   # (tidy up the example)

Registering a class twice is an error (``replace=True`` to replace on purpose).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.structure.walk import LayerCall

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "ELEMENTWISE_OPS",
    "Aligned",
    "BatchNorm",
    "ChannelRule",
    "Channelwise",
    "Concatenate",
    "Cost",
    "Depthwise",
    "ElementwiseOp",
    "Producer",
    "Reshape",
    "Source",
    "Wall",
    "applied",
    "followed_kinds",
    "is_elementwise",
    "register_channel_rule",
    "require_rule",
    "rule_for",
    "unregister_channel_rule",
]


class GraphView(Protocol):
    """What a rule's ``forward`` may ask of the graph being built: the interface
    :class:`tfstatprune.structure.channels.ChannelGraph` implements (rules sit below it)."""

    def fixed(self, tensor: Any) -> np.ndarray | None: ...

    def units(self, call: LayerCall) -> np.ndarray: ...

    def read(self, call: LayerCall, slots: np.ndarray) -> None: ...

    def keep(self, inputs: Sequence[np.ndarray]) -> None: ...

    def merge(self, inputs: Sequence[np.ndarray]) -> np.ndarray: ...


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
        "hard_swish",
        "softplus",
        "softsign",
        "exponential",
    }
)

#: TF ops (``TFOpLambda`` layers' ``function`` names) that act entry by entry when
#: called on one tensor and scalars: hard-swish and hard-sigmoid written as
#: ``x * relu6(x + 3) / 6`` in ``tf_keras.applications.MobileNetV3``.
ELEMENTWISE_OPS = frozenset(
    {
        "__operators__.add",
        "__operators__.sub",
        "__operators__.truediv",
        "__operators__.neg",
        "math.add",
        "math.subtract",
        "math.multiply",
        "math.truediv",
        "math.divide",
        "math.negative",
        "math.sigmoid",
        "math.tanh",
        "math.square",
        "math.exp",
        "nn.relu",
        "nn.relu6",
        "nn.silu",
        "nn.swish",
        "nn.sigmoid",
    }
)

Values = np.ndarray  # float64 (C,): a channel's constant value, NaN where it varies
Slots = np.ndarray  # int64 (C,): the slot (channel identity) of each entry of the last axis


def is_elementwise(activation: Callable[..., Any] | None) -> bool:
    """Whether ``activation`` acts on each entry separately (relu, tanh, ...; not softmax)."""
    return getattr(activation, "__name__", None) in ELEMENTWISE_ACTIVATIONS


def _varying(call: LayerCall) -> list[Values | None]:
    """Nothing known: every channel of every output varies."""
    found = []
    for tensor in call.outputs:
        shape = tuple(tensor.shape)
        found.append(None if len(shape) < 2 or shape[-1] is None else np.full(shape[-1], np.nan))
    return found


def _spatial(shape: Sequence[int | None], data_format: str) -> Sequence[int | None]:
    return shape[1:-1] if data_format == "channels_last" else shape[2:]


def _positions(dims: Sequence[int | None], layer: keras.layers.Layer) -> int:
    if any(dim is None for dim in dims):
        raise ValueError(
            f"count_flops needs static shapes; layer {layer.name!r} has dimensions {tuple(dims)}."
        )
    return math.prod(dims)


def _size(variable: Any) -> int:
    return int(np.prod(variable.shape))


# ----------------------------------------------------------------------------- rules


class ChannelRule:
    """How channels pass through one layer kind.

    Attributes:
      name: a short name of the kind (``"producer"``, ``"channelwise"``, ...).
      passes_connections: the layer neither adds nor removes connections
        between the layers around it (element-wise activations, reshapes):
        the Dropout adjustment looks through it back to a Dropout.
      passes_to_norm: the BatchNormalization reset looks through it (these
        layers, Dropout and local pooling) forward to a BatchNormalization.
    """

    name = "rule"
    passes_connections = False
    passes_to_norm = False

    def unsupported(self, call: LayerCall) -> str | None:
        """Why channels cannot be followed through this call (None when they can)."""
        return None

    def forward(self, call: LayerCall, inputs: list[Slots | None], graph: GraphView):
        """The output slots (one entry per output tensor, None without a channel axis)."""
        raise NotImplementedError

    def fold(self, call: LayerCall, values: list[Values | None]) -> list[Values | None]:
        """Constant channels in, constant channels out (NaN: varies)."""
        return _varying(call)

    #: The layer's multiply-adds (:class:`Cost`; None: not counted).
    cost: Cost | None = None


def _single_input(call: LayerCall) -> str | None:
    if len(call.inputs) != 1:
        return f"is called on {len(call.inputs)} tensors (one expected)"
    return None


def _channels_last(call: LayerCall) -> str | None:
    data_format = getattr(call.inner, "data_format", "channels_last")
    if data_format != "channels_last" and len(call.in_shape()) > 2:
        return f"uses data_format={data_format!r} (channels_last needed)"
    return None


class Wall(ChannelRule):
    """Channels stop here; the outputs are new channels that always stay.

    Args:
      reason: what the error names when dead channels must pass.
      cost: the layer's multiply-adds (transposed/separable convolutions).
    """

    name = "wall"

    def __init__(
        self,
        reason: str = "is a layer type shrink cannot remove channels through",
        cost: Cost | None = None,
        *,
        passes_connections: bool = False,
    ) -> None:
        self.reason = reason
        self.cost = cost
        self.passes_connections = self.passes_to_norm = passes_connections

    def unsupported(self, call):
        return self.reason

    def forward(self, call, inputs, graph):
        return [graph.fixed(tensor) for tensor in call.outputs]


class Source(Wall):
    """Model inputs: channels that stay."""

    name = "source"

    def __init__(self) -> None:
        super().__init__()

    def unsupported(self, call):
        return None


def _dense_positions(layer, in_shape, out_shape) -> int:
    return _positions(in_shape[1:-1], layer)


def _conv_positions(layer, in_shape, out_shape) -> int:
    return _positions(_spatial(out_shape, layer.data_format), layer)


def _transpose_positions(layer, in_shape, out_shape) -> int:
    return _positions(_spatial(in_shape, layer.data_format), layer)


class Cost(NamedTuple):
    """Where a layer's multiply-adds come from: ``positions(layer, in_shape,
    out_shape)`` times the entries of each kernel named in ``kernels``."""

    positions: Callable[[keras.layers.Layer, tuple, tuple], int]
    kernels: tuple[str, ...] = ("kernel",)


_DENSE = Cost(_dense_positions)
_CONV = Cost(_conv_positions)
_TRANSPOSED = Cost(_transpose_positions)
_SEPARABLE = Cost(_conv_positions, ("depthwise_kernel", "pointwise_kernel"))
_DEPTHWISE = Cost(_conv_positions, ("depthwise_kernel",))


class Producer(ChannelRule):
    """Dense and Conv: each unit/filter (``kernel[..., k]``) starts a channel;
    the input channels are read through the rows ``kernel[..., c, :]``.

    Args:
      size_key: the config entry holding the number of units (``"units"``,
        ``"filters"``).
    """

    name = "producer"

    def __init__(self, size_key: str, cost: Cost) -> None:
        self.size_key = size_key
        self.cost = cost

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason is None and getattr(call.inner, "groups", 1) != 1:
            reason = f"is a grouped convolution (groups={call.inner.groups})"
        return reason

    def forward(self, call, inputs, graph):
        layer = call.inner
        if inputs[0] is not None and inputs[0].size == layer.kernel.shape[-2]:
            graph.read(call, inputs[0])
        return [graph.units(call)]


# -- channel-preserving layers


def kept(call: LayerCall, values: Values) -> Values:
    """Constants pass unchanged (Dropout, pooling, cropping, ...)."""
    return values


def zero_only(call: LayerCall, values: Values) -> Values:
    """Zero padding: only a 0 channel stays constant."""
    return np.where(values == 0, values, np.nan)


def applied(call: LayerCall, values: Values) -> Values:
    """An element-wise layer applied to the constants (``call``: no new graph node)."""
    known = ~np.isnan(values)
    out = np.full_like(values, np.nan)
    if known.any():
        result = call.inner.call(tf.constant(values[known][None, :], dtype=tf.float32))
        out[known] = np.asarray(result, dtype=np.float64)[0]
    return out


class Channelwise(ChannelRule):
    """Layers that keep each channel where it is and map a constant to a constant.

    Args:
      fold: the constant of each output channel from the input's
        (:func:`kept`, :func:`applied`, :func:`zero_only`, ...).
      passes_connections: see :class:`ChannelRule` (implies ``passes_to_norm``).
      passes_to_norm: see :class:`ChannelRule`.
    """

    name = "channelwise"

    def __init__(
        self,
        fold: Callable[[LayerCall, Values], Values] = kept,
        *,
        passes_connections: bool = False,
        passes_to_norm: bool = False,
    ) -> None:
        self._fold = fold
        self.passes_connections = passes_connections
        self.passes_to_norm = passes_connections or passes_to_norm

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason is None and call.out_shape()[-1] != call.in_shape()[-1]:
            reason = "changes the number of channels"
        return reason

    def forward(self, call, inputs, graph):
        return [inputs[0]]

    def fold(self, call, values):
        return [None if values[0] is None else self._fold(call, values[0])]


class Activation(Channelwise):
    """``Activation(name)``: channel-wise when the activation is element-wise."""

    def __init__(self) -> None:
        super().__init__(applied, passes_connections=True)

    def unsupported(self, call):
        activation = call.inner.activation
        if not is_elementwise(activation):
            name = getattr(activation, "__name__", repr(activation))
            return f"applies {name!r}, which is not element-wise"
        return super().unsupported(call)


class ElementwiseOp(Channelwise):
    """A TF op layer (``TFOpLambda``) acting entry by entry: of one tensor and
    scalars (``x + 3.0``: channel-wise), or of two tensors of the same channels
    (``x * y``: an aligned merge, as :class:`Aligned`)."""

    def __init__(self) -> None:
        super().__init__(self._apply, passes_connections=True)

    @staticmethod
    def _function(call: LayerCall) -> str | None:
        return call.inner.get_config().get("function")

    @staticmethod
    def _arguments(call: LayerCall) -> list[Any]:
        node = call.node
        return [] if node is None else [*node.call_args, *node.call_kwargs.values()]

    def unsupported(self, call):
        function = self._function(call)
        if function not in ELEMENTWISE_OPS:
            return f"applies the TF op {function!r}, which is not known to be element-wise"
        others = [a for a in self._arguments(call) if not hasattr(a, "_keras_history")]
        if any(not isinstance(a, (int, float, type(None), str)) for a in others):
            return f"applies {function!r} to a tensor that is not a scalar"
        if len(call.inputs) == 2 and function in _BINARY_OPS:
            return _BINARY_OPS[function].unsupported(call)
        return super().unsupported(call)

    def forward(self, call, inputs, graph):
        if len(call.inputs) == 2:
            return _BINARY_OPS[self._function(call)].forward(call, inputs, graph)
        return super().forward(call, inputs, graph)

    def fold(self, call, values):
        if len(call.inputs) == 2:
            return _BINARY_OPS[self._function(call)].fold(call, values)
        return super().fold(call, values)

    @staticmethod
    def _apply(call: LayerCall, values: Values) -> Values:
        known = ~np.isnan(values)
        out = np.full_like(values, np.nan)
        if known.any() and call.node is not None:
            constant = tf.constant(values[known][None, :], dtype=tf.float32)
            args, kwargs = tf.nest.map_structure(
                lambda a: constant if hasattr(a, "_keras_history") else a,
                (list(call.node.call_args), dict(call.node.call_kwargs)),
            )
            kwargs.pop("name", None)
            out[known] = np.asarray(call.inner.function(*args, **kwargs), np.float64)[0]
        return out


class BatchNorm(Channelwise):
    """Inference-time BatchNormalization of the last axis: a per-channel affine map."""

    def __init__(self) -> None:
        super().__init__(self._normalize)

    def unsupported(self, call):
        rank = len(call.in_shape())
        if list(call.inner.axis) != [rank - 1]:
            return f"normalizes axis {call.inner.axis} (the last axis is needed)"
        return super().unsupported(call)

    @staticmethod
    def _normalize(call: LayerCall, values: Values) -> Values:
        layer = call.inner
        mean = layer.moving_mean.numpy().astype(np.float64)
        variance = layer.moving_variance.numpy().astype(np.float64)
        scale = 1.0 / np.sqrt(variance + layer.epsilon)
        if layer.gamma is not None:
            scale = scale * layer.gamma.numpy()
        shift = 0.0 if layer.beta is None else layer.beta.numpy().astype(np.float64)
        return (values - mean) * scale + shift


class PerChannelFree(Channelwise):
    """Rescaling / Normalization: channel-wise when their parameters are scalars."""

    def __init__(self) -> None:
        super().__init__(applied)

    def unsupported(self, call):
        if any(_size(weight) > 1 for weight in call.inner.weights):
            return "has per-channel parameters (only scalar ones are sliced)"
        return super().unsupported(call)


def _pads_with_zeros(layer: keras.layers.Layer) -> bool:
    """Whether a convolution zero-pads its input ("same"/"causal" beyond 1x1)."""
    padding = getattr(layer, "padding", "valid")
    return padding != "valid" and any(size > 1 for size in layer.kernel_size)


class Depthwise(Channelwise):
    """DepthwiseConv1D/2D with ``depth_multiplier=1``: output channel ``c`` filters
    input channel ``c`` alone, so input and output channels are coupled one to one
    (a pruned filter before it removes the depthwise channel and the next layer's row).
    """

    name = "depthwise"
    cost = _DEPTHWISE

    def __init__(self) -> None:
        super().__init__(self._convolve)

    def unsupported(self, call):
        if call.inner.depth_multiplier != 1:
            return f"has depth_multiplier={call.inner.depth_multiplier} (1 is supported)"
        return super().unsupported(call)

    @staticmethod
    def _convolve(call: LayerCall, values: Values) -> Values:
        layer = call.inner
        if _pads_with_zeros(layer):
            # Border pixels see 0 instead of the constant: only 0 stays constant.
            values = np.where(values == 0, values, np.nan)
        kernel = layer.depthwise_kernel.numpy().astype(np.float64)
        taps = kernel.reshape(-1, kernel.shape[-2]).sum(axis=0)
        bias = 0.0 if layer.bias is None else layer.bias.numpy().astype(np.float64)
        pre = values * taps + bias
        known = ~np.isnan(pre)
        out = np.full_like(pre, np.nan)
        if known.any() and is_elementwise(layer.activation):
            result = layer.activation(tf.constant(pre[known], dtype=tf.float32))
            out[known] = np.asarray(result, np.float64)
        return out


class Reshape(ChannelRule):
    """Flatten and Reshape whose last output axis repeats the input channels.

    With ``channels_last`` the flat index of channel ``c`` at position ``p`` is
    ``p * C + c``; a new last axis of ``k * C`` entries holds ``k`` positions,
    entry ``e`` being channel ``e % C``.
    """

    name = "reshape"
    passes_connections = passes_to_norm = True

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason:
            return reason
        in_shape, out_shape = call.in_shape()[1:], call.out_shape()[1:]
        if None in in_shape or None in out_shape:
            return "has an unknown (None) dimension"
        if not in_shape or not out_shape or out_shape[-1] % in_shape[-1]:
            return (
                f"reshapes {in_shape} to {out_shape} (the new last axis must hold whole "
                "positions: a multiple of the channels)"
            )
        return None

    @staticmethod
    def repeat(call: LayerCall) -> int:
        return call.out_shape()[-1] // call.in_shape()[-1]

    def forward(self, call, inputs, graph):
        return [None if inputs[0] is None else np.tile(inputs[0], self.repeat(call))]

    def fold(self, call, values):
        return [None if values[0] is None else np.tile(values[0], self.repeat(call))]


def _stack(values: Sequence[Values]) -> np.ndarray:
    return np.stack(values)


def _product(values: np.ndarray) -> Values:
    """Products, 0 wherever a factor is 0 (even when another varies)."""
    return np.where((values == 0).any(axis=0), 0.0, values.prod(axis=0))


def _all_equal(values: np.ndarray) -> Values:
    return np.where((values == values[0]).all(axis=0), values[0], np.nan)


class Aligned(ChannelRule):
    """Merges whose output channel ``j`` comes from channel ``j`` of every input
    (Add, Subtract, Multiply, Average, Maximum, Minimum; broadcasting over the
    other axes, as squeeze-excite's Multiply does, is fine): channel ``j`` of
    every input is coupled into one group.

    Args:
      combine: the constants of the output from the inputs' (stacked).
    """

    name = "merge"

    def __init__(self, combine: Callable[[np.ndarray], Values]) -> None:
        self.combine = combine

    def unsupported(self, call):
        widths = {tuple(tensor.shape)[-1] for tensor in call.inputs}
        if widths != {call.out_shape()[-1]}:
            return "broadcasts its inputs along the channel axis"
        return None

    def forward(self, call, inputs, graph):
        if any(found is None for found in inputs):
            graph.keep([found for found in inputs if found is not None])
            return [graph.fixed(call.outputs[0])]
        return [graph.merge(inputs)]

    def fold(self, call, values):
        if any(found is None for found in values):
            return _varying(call)
        return [self.combine(_stack(values))]


class Concatenate(Aligned):
    """Concatenate: side by side along the channel axis, aligned along any other."""

    name = "concatenate"

    def __init__(self) -> None:
        super().__init__(_all_equal)

    @staticmethod
    def on_channels(call: LayerCall) -> bool:
        return call.inner.axis in (-1, len(call.out_shape()) - 1)

    def unsupported(self, call):
        return None if self.on_channels(call) else super().unsupported(call)

    def forward(self, call, inputs, graph):
        if not self.on_channels(call) or any(found is None for found in inputs):
            return super().forward(call, inputs, graph)
        return [np.concatenate(inputs)]

    def fold(self, call, values):
        if not self.on_channels(call) or any(found is None for found in values):
            return super().fold(call, values)
        return [np.concatenate(values)]


# ----------------------------------------------------------------------------- registry

_SUM = Aligned(lambda values: values.sum(axis=0))
_DIFFERENCE = Aligned(lambda values: values[0] - values[1])
_PRODUCT = Aligned(_product)
# TF ops of two tensors that merge them channel by channel.
_BINARY_OPS: dict[str, Aligned] = {
    "__operators__.add": _SUM,
    "math.add": _SUM,
    "__operators__.sub": _DIFFERENCE,
    "math.subtract": _DIFFERENCE,
    "math.multiply": _PRODUCT,
}

_KEPT = Channelwise(kept)
_DROPOUT = _POOLED = Channelwise(kept, passes_to_norm=True)
_APPLIED = Channelwise(applied, passes_connections=True)
_ZERO_PADDED = Channelwise(zero_only)

_RULES: dict[type, ChannelRule] = {
    keras.layers.InputLayer: Source(),
    keras.layers.Dense: Producer("units", _DENSE),
    keras.layers.Conv1D: Producer("filters", _CONV),
    keras.layers.Conv2D: Producer("filters", _CONV),
    keras.layers.Conv3D: Producer("filters", _CONV),
    # Conv subclasses whose kernels are laid out differently.
    keras.layers.Conv1DTranspose: Wall(cost=_TRANSPOSED),
    keras.layers.Conv2DTranspose: Wall(cost=_TRANSPOSED),
    keras.layers.Conv3DTranspose: Wall(cost=_TRANSPOSED),
    keras.layers.SeparableConv1D: Wall(cost=_SEPARABLE),
    keras.layers.SeparableConv2D: Wall(cost=_SEPARABLE),
    keras.layers.DepthwiseConv1D: Depthwise(),
    keras.layers.DepthwiseConv2D: Depthwise(),
    keras.layers.BatchNormalization: BatchNorm(),
    keras.layers.Activation: Activation(),
    keras.layers.ReLU: _APPLIED,
    keras.layers.LeakyReLU: _APPLIED,
    keras.layers.ELU: _APPLIED,
    keras.layers.ThresholdedReLU: Channelwise(applied),
    keras.layers.PReLU: Wall(passes_connections=True),
    keras.layers.Rescaling: PerChannelFree(),
    keras.layers.Normalization: PerChannelFree(),
    keras.layers.Dropout: _DROPOUT,
    keras.layers.GaussianNoise: _KEPT,
    keras.layers.GaussianDropout: _KEPT,
    keras.layers.AlphaDropout: _KEPT,
    keras.layers.ActivityRegularization: _KEPT,
    keras.layers.MaxPooling1D: _POOLED,
    keras.layers.MaxPooling2D: _POOLED,
    keras.layers.MaxPooling3D: _POOLED,
    keras.layers.AveragePooling1D: _POOLED,
    keras.layers.AveragePooling2D: _POOLED,
    keras.layers.AveragePooling3D: _POOLED,
    keras.layers.GlobalMaxPooling1D: _KEPT,
    keras.layers.GlobalMaxPooling2D: _KEPT,
    keras.layers.GlobalMaxPooling3D: _KEPT,
    keras.layers.GlobalAveragePooling1D: _KEPT,
    keras.layers.GlobalAveragePooling2D: _KEPT,
    keras.layers.GlobalAveragePooling3D: _KEPT,
    keras.layers.Cropping1D: _KEPT,
    keras.layers.Cropping2D: _KEPT,
    keras.layers.Cropping3D: _KEPT,
    keras.layers.UpSampling1D: _KEPT,
    keras.layers.UpSampling2D: _KEPT,
    keras.layers.UpSampling3D: _KEPT,
    keras.layers.ZeroPadding1D: _ZERO_PADDED,
    keras.layers.ZeroPadding2D: _ZERO_PADDED,
    keras.layers.ZeroPadding3D: _ZERO_PADDED,
    keras.layers.Flatten: Reshape(),
    keras.layers.Reshape: Reshape(),
    keras.layers.Add: _SUM,
    keras.layers.Subtract: _DIFFERENCE,
    keras.layers.Multiply: _PRODUCT,
    keras.layers.Average: Aligned(lambda values: values.mean(axis=0)),
    keras.layers.Maximum: Aligned(lambda values: values.max(axis=0)),
    keras.layers.Minimum: Aligned(lambda values: values.min(axis=0)),
    keras.layers.Concatenate: Concatenate(),
}

_OPS_LAYER = getattr(keras.layers, "TFOpLambda", None)
if _OPS_LAYER is None:  # pragma: no cover - tf_keras always has it
    from tf_keras.src.layers.core.tf_op_layer import TFOpLambda as _OPS_LAYER
_RULES[_OPS_LAYER] = ElementwiseOp()

_UNKNOWN = Wall()
_NESTED = Wall("is a nested model (its layers are not looked into)")


def register_channel_rule(cls: type, rule: ChannelRule, *, replace: bool = False) -> None:
    """Say how channels pass through layers of class ``cls`` (and its subclasses).

    Raises:
      ValueError: ``cls`` already has a rule and ``replace`` is False.
    """
    if cls in _RULES and not replace:
        raise ValueError(
            f"{cls.__name__} already has the channel rule {_RULES[cls].name!r}; pass "
            "replace=True to replace it"
        )
    _RULES[cls] = rule


def unregister_channel_rule(cls: type) -> None:
    """Remove the rule registered for exactly ``cls``."""
    del _RULES[cls]


def _lookup(layer: keras.layers.Layer) -> ChannelRule | None:
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def rule_for(layer: keras.layers.Layer) -> ChannelRule:
    """The rule of the closest class in ``layer``'s MRO; unknown layers and nested
    models get a :class:`Wall`."""
    if isinstance(layer, keras.Model):
        return _NESTED
    found = _lookup(layer)
    return _UNKNOWN if found is None else found


def followed_kinds() -> list[str]:
    """The layer classes channels are followed through (for error messages)."""
    return sorted(cls.__name__ for cls, rule in _RULES.items() if not isinstance(rule, Wall))


def require_rule(layer: keras.layers.Layer) -> ChannelRule:
    """Like :func:`rule_for`, but an unregistered layer kind is an error.

    Raises:
      KeyError: naming the layer and how to register its kind.
    """
    found = None if isinstance(layer, keras.Model) else _lookup(layer)
    if found is None:
        raise KeyError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no channel rule; register "
            "one with tfstatprune.structure.register_channel_rule"
        )
    return found
