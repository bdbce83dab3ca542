"""Physical surgery: rebuild a unit/filter-pruned model without its dead units.

Weight masks leave a model's shape alone. After unit or filter pruning whole
columns of a Dense kernel (``kernel[:, j]``) or whole filters of a convolution
(``kernel[..., k]``) are zero, and :func:`shrink` rebuilds the model with those
units removed: a physically smaller model with the same predictions.

What is removed
---------------
Every channel of every tensor (the last axis, ``channels_last``) belongs to a
*channel group*: the channels that must be kept or dropped together. A unit of
a Dense or Conv layer starts a group; layers that keep channels in place
(activations, pooling, Dropout, BatchNormalization, ...) pass it on; ``Add`` and
the other element-wise merges join the groups of their inputs channel by
channel; ``Concatenate`` lays its inputs' groups side by side; ``Flatten`` and
``Reshape`` repeat them (with ``channels_last``, flattened index
``(h * W + w) * C + c`` belongs to channel ``c``). A group is removed when

* every unit that starts it is **dead** -- its kernel slice is zero
  (``|w| <= atol``) and its activation is element-wise, so its output is the
  constant ``act(bias)`` for every input -- and every Dense/Conv layer that reads
  the group can absorb that constant into its bias: ``bias += c * W[j, :]``
  for Dense, ``bias += c * sum(kernel[..., j, :])`` over the spatial taps for a
  ``padding="valid"`` (or 1x1) convolution. A ``"same"``/``"causal"`` convolution pads
  with zeros, so its border pixels would see ``0`` where the others see ``c``:
  there only ``c == 0`` is removable (relu/linear/tanh units with a zero bias);
  other constant channels are kept. Constants are followed through the layers
  in between (``BatchNormalization`` turns ``c`` into
  ``gamma * (c - mean) / sqrt(var + eps) + beta``, ``Add`` sums, a
  ``ZeroPadding`` layer makes a nonzero constant non-constant); or
* every Dense/Conv layer that reads the group ignores it (its incoming weights
  are all zero): the unit is alive but unused, so it goes as well.

Never removed: channels of the model's inputs and outputs (the output layer
keeps its units), channels that reach a layer shrink does not know, and -- so
that no layer ends up empty -- the first unit of a layer whose units are all
removable. A dead group that would have to pass through an unsupported layer
on its way to another prunable layer is an error naming that layer.

Removing a constant unit may give a layer without a bias one (``use_bias``
becomes True) when the folded constant is nonzero. Weights with
``0 < |w| <= atol`` are treated as zero, so for ``atol > 0`` the shrunk model's
predictions differ from the input's by what those weights contributed.

FLOPs
-----
:func:`count_flops` counts multiply-adds (MACs) of Dense and convolution
layers for one example (bias additions and everything else are not counted):

* Dense: ``in_features * units * P`` with ``P`` the number of positions it is
  applied at (1 for a flat input);
* Conv: ``prod(output spatial dims) * prod(kernel_size) * (in_channels / groups)
  * filters`` (the kernel's size times the output positions; depthwise and
  separable convolutions likewise per kernel, transposed convolutions per input
  position).

Example::

    final = tfstatprune.strip_pruning(pruned)
    result = tfstatprune.shrink(final)
    print(result)                # kept / total per layer, parameters, FLOPs
    small = result.model
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras
from tfstatprune._translate import require_tf_keras_model, returns_users_keras
from tfstatprune.keras.graph import LayerCall as _Call
from tfstatprune.keras.graph import TensorKey
from tfstatprune.keras.graph import is_elementwise as _is_elementwise
from tfstatprune.keras.graph import layer_calls as _calls
from tfstatprune.keras.graph import lookup as _lookup
from tfstatprune.keras.graph import model_nodes as _nodes
from tfstatprune.keras.graph import require_graph as _require_graph
from tfstatprune.keras.graph import tensor_key as _key
from tfstatprune.keras.layers import iter_layers, prunable_weights
from tfstatprune.tables import Table, format_text

__all__ = ["SUPPORTED_LAYERS", "ShrinkResult", "count_flops", "shrink"]

SUPPORTED_LAYERS = (
    "Dense, Conv1D/2D/3D (channels_last, groups=1), BatchNormalization (last axis), "
    "element-wise activations (Activation, ReLU, LeakyReLU, ELU, ThresholdedReLU), "
    "Dropout and noise layers, Max/Average/Global pooling, Cropping, UpSampling, "
    "ZeroPadding, Flatten, Reshape (when the new last axis is a multiple of the "
    "channels), Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate"
)

_STRIP_FIRST = (
    "The model still contains pruning wrappers ({names}); strip it first with "
    "tfstatprune.strip_pruning(model)."
)


# ----------------------------------------------------------------------------- result


class ShrinkResult(NamedTuple):
    """What :func:`shrink` returns.

    Attributes:
      model: the rebuilt, physically smaller model (uncompiled).
      params_before: ``count_params()`` of the input model (all weights,
        including BatchNormalization statistics).
      params_after: the same for ``model``.
      flops_before: :func:`count_flops` of the input model.
      flops_after: :func:`count_flops` of ``model``.
      removed: for every Dense/Conv layer shrink handles, by layer name,
        ``(kept, total)`` units or filters (``kept == total`` when none went).
    """

    model: keras.Model
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    removed: dict[str, tuple[int, int]]

    def __str__(self) -> str:
        rows = [
            [name, f"{kept:,}", f"{total:,}", f"{1.0 - kept / total if total else 0.0:.1%}"]
            for name, (kept, total) in self.removed.items()
        ]
        return "\n".join(
            [
                f"shrink: {self.model.name!r}",
                format_text(Table(["layer", "kept", "total", "removed"], rows, "lrrr")),
                _ratio_line("parameters", self.params_before, self.params_after),
                _ratio_line("FLOPs (MACs)", self.flops_before, self.flops_after),
            ]
        )


def _ratio_line(what: str, before: int, after: int) -> str:
    ratio = f"{before / after:.2f}x smaller" if after else "all removed"
    return f"{what}: {before:,} -> {after:,} ({ratio})"


# ----------------------------------------------------------------------------- FLOPs


def _spatial(shape: Sequence[int | None], data_format: str) -> Sequence[int | None]:
    return shape[1:-1] if data_format == "channels_last" else shape[2:]


def _positions(dims: Sequence[int | None], layer: keras.layers.Layer) -> int:
    if any(dim is None for dim in dims):
        raise ValueError(
            f"count_flops needs static shapes; layer {layer.name!r} has dimensions {tuple(dims)}."
        )
    return math.prod(dims)


def _dense_flops(layer, in_shape, out_shape) -> int:
    return int(np.prod(layer.kernel.shape)) * _positions(in_shape[1:-1], layer)


def _conv_flops(layer, in_shape, out_shape) -> int:
    positions = _positions(_spatial(out_shape, layer.data_format), layer)
    return int(np.prod(layer.kernel.shape)) * positions


def _depthwise_flops(layer, in_shape, out_shape) -> int:
    positions = _positions(_spatial(out_shape, layer.data_format), layer)
    return int(np.prod(layer.depthwise_kernel.shape)) * positions


def _separable_flops(layer, in_shape, out_shape) -> int:
    positions = _positions(_spatial(out_shape, layer.data_format), layer)
    sizes = np.prod(layer.depthwise_kernel.shape) + np.prod(layer.pointwise_kernel.shape)
    return int(sizes) * positions


def _transpose_flops(layer, in_shape, out_shape) -> int:
    positions = _positions(_spatial(in_shape, layer.data_format), layer)
    return int(np.prod(layer.kernel.shape)) * positions


_FlopsRule = Callable[[keras.layers.Layer, tuple, tuple], int]
_FLOPS: dict[type, _FlopsRule] = {
    keras.layers.Dense: _dense_flops,
    keras.layers.Conv1D: _conv_flops,
    keras.layers.Conv2D: _conv_flops,
    keras.layers.Conv3D: _conv_flops,
    keras.layers.DepthwiseConv1D: _depthwise_flops,
    keras.layers.DepthwiseConv2D: _depthwise_flops,
    keras.layers.SeparableConv1D: _separable_flops,
    keras.layers.SeparableConv2D: _separable_flops,
    keras.layers.Conv1DTranspose: _transpose_flops,
    keras.layers.Conv2DTranspose: _transpose_flops,
    keras.layers.Conv3DTranspose: _transpose_flops,
}


def count_flops(model: keras.Model) -> int:
    """Multiply-adds of the Dense and convolution layers of ``model`` for one example.

    ``Dense``: ``in_features * units`` per position it is applied at;
    convolutions: ``prod(kernel.shape)`` per output position (per input
    position for transposed ones; depthwise plus pointwise kernel for separable
    ones). Biases, activations, pooling and normalization are not counted.
    Nested models are counted through; a layer called twice counts twice.

    Example (a 3x3 convolution with 1 input and 4 output channels on a 6x6
    image gives 4x4 positions of 3*3*1*4 MACs, then Dense 64 -> 5)::

        >>> from tfstatprune._keras import keras
        >>> model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3),
        ...                           keras.layers.Flatten(), keras.layers.Dense(5)])
        >>> count_flops(model)
        896

    Raises:
      TypeError: for a subclassed model (its graph is not known).
      ValueError: for a layer with unknown (None) spatial dimensions.
    """
    model = require_tf_keras_model(model)
    _require_graph(model, "count_flops")
    total = 0
    for node in _nodes(model):
        layer = node.layer
        if isinstance(layer, keras.Model):
            total += count_flops(layer)
            continue
        rule = _lookup(_FLOPS, layer)
        if rule is None:
            continue
        in_shape = tuple(tf.nest.flatten(node.keras_inputs)[0].shape)
        out_shape = tuple(tf.nest.flatten(node.outputs)[0].shape)
        total += rule(layer, in_shape, out_shape)
    return total


# ----------------------------------------------------------------------------- analysis


class _Channels(NamedTuple):
    """The last axis of one tensor.

    Attributes:
      slots: int array ``(C,)``: the channel group (slot) of each entry.
      values: float64 array ``(C,)``: the entry's value when it is the same for
        every input and position, NaN when it varies.
    """

    slots: np.ndarray
    values: np.ndarray


class _Analysis:
    """Channel groups (a union-find over slots) and what keeps each of them."""

    def __init__(self, atol: float) -> None:
        self.atol = atol
        self._parent: list[int] = []
        self._fixed: list[bool] = []
        self._dead: list[bool] = []
        self.channels: dict[TensorKey, _Channels | None] = {}
        # (slots, ok): Dense/Conv inputs; ok[i] when entry i can be removed there.
        self.reads: list[tuple[np.ndarray, np.ndarray]] = []
        # (call, reason, slots): entries reaching a layer shrink cannot look through.
        self.blocks: list[tuple[_Call, str, np.ndarray]] = []
        # (call, output slots): the Dense/Conv layers shrink may shrink.
        self.producers: list[tuple[_Call, np.ndarray]] = []

    def new(self, count: int, *, fixed: bool, dead: np.ndarray | None = None) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self._fixed.extend([fixed] * count)
        self._dead.extend([False] * count if dead is None else [bool(d) for d in dead])
        return np.arange(start, start + count)

    def fixed_channels(self, tensor: Any) -> _Channels | None:
        """Fresh slots that are never removed (model inputs, outputs of unknown layers)."""
        shape = tuple(tensor.shape)
        if len(shape) < 2 or shape[-1] is None:
            return None
        return _Channels(self.new(shape[-1], fixed=True), np.full(shape[-1], np.nan))

    def fix(self, slots: np.ndarray) -> None:
        for slot in slots:
            self._fixed[slot] = True

    def _find(self, slot: int) -> int:
        parent = self._parent
        while parent[slot] != slot:
            parent[slot] = parent[parent[slot]]
            slot = parent[slot]
        return slot

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                self._parent[ry] = rx

    def decide(self, reaches_prunable: dict[int, bool]) -> np.ndarray:
        """Whether each slot is kept: the removal rules of the module docstring."""
        count = len(self._parent)
        root = np.array([self._find(slot) for slot in range(count)], dtype=np.int64)
        removable = np.ones(count, dtype=bool)
        removable[root[np.asarray(self._fixed, dtype=bool)]] = False
        for slots, ok in self.reads:
            removable[root[slots[~ok]]] = False
        dead_group = np.ones(count, dtype=bool)
        dead_group[root[~np.asarray(self._dead, dtype=bool)]] = False
        for call, reason, slots in self.blocks:
            groups = root[slots]
            stuck = groups[removable[groups] & dead_group[groups]]
            between = reaches_prunable[id(call)] or _is_prunable(call.layer)
            if stuck.size and between:
                raise ValueError(_blocked_message(call, reason, self, root, stuck))
            removable[groups] = False
        for _, slots in self.producers:
            if slots.size and removable[root[slots]].all():
                removable[root[slots[0]]] = False
        return ~removable[root]

    def owners(self, root: np.ndarray, groups: np.ndarray) -> list[str]:
        wanted = set(groups.tolist())
        return sorted(
            {
                call.layer.name
                for call, slots in self.producers
                if wanted.intersection(root[slots].tolist())
            }
        )


def _blocked_message(
    call: _Call, reason: str, analysis: _Analysis, root: np.ndarray, stuck: np.ndarray
) -> str:
    owners = analysis.owners(root, stuck)
    return (
        f"shrink cannot remove the dead units/filters of {owners}: their outputs reach "
        f"layer {call.layer.name!r} ({type(call.layer).__name__}), which {reason}, on the "
        "way to another prunable layer. Supported between pruned layers: "
        f"{SUPPORTED_LAYERS}."
    )


# ----------------------------------------------------------------------------- rules


class _Rebuilt(NamedTuple):
    """A layer's new config entries and weights (None: keep its weights)."""

    config: dict[str, Any]
    weights: list[np.ndarray] | None


class _Rule:
    """How shrink follows channels through one layer type and rebuilds it."""

    def unsupported(self, call: _Call) -> str | None:
        """Why shrink cannot look through this call (None when it can)."""
        return None

    def forward(
        self, call: _Call, inputs: list[_Channels | None], analysis: _Analysis
    ) -> list[_Channels | None]:
        raise NotImplementedError

    def rebuild(
        self,
        call: _Call,
        inputs: list[_Channels | None],
        in_masks: list[np.ndarray | None],
        out_masks: list[np.ndarray | None],
    ) -> _Rebuilt | None:
        return None


def _single_input(call: _Call) -> str | None:
    if len(call.inputs) != 1:
        return f"is called on {len(call.inputs)} tensors (shrink expects one)"
    return None


def _channels_last(call: _Call) -> str | None:
    data_format = getattr(call.layer, "data_format", "channels_last")
    if data_format != "channels_last" and len(call.in_shape()) > 2:
        return f"uses data_format={data_format!r} (shrink needs channels_last)"
    return None


class _Source(_Rule):
    """Model inputs: channels that stay."""

    def forward(self, call, inputs, analysis):
        return [analysis.fixed_channels(tensor) for tensor in call.outputs]


def _pads_with_zeros(layer: keras.layers.Layer) -> bool:
    """Whether a Dense/Conv layer zero-pads its input ("same"/"causal" beyond 1x1)."""
    padding = getattr(layer, "padding", "valid")
    return padding != "valid" and any(size > 1 for size in layer.kernel_size)


class _Producer(_Rule):
    """Dense and Conv: units/filters start channel groups; their inputs absorb constants."""

    def __init__(self, size_key: str) -> None:
        self.size_key = size_key

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason is None and getattr(call.layer, "groups", 1) != 1:
            reason = f"is a grouped convolution (groups={call.layer.groups})"
        return reason

    @staticmethod
    def _kernel(layer: keras.layers.Layer) -> np.ndarray:
        """The kernel as ``(taps, in_channels, out_channels)`` (taps = 1 for Dense)."""
        kernel = layer.kernel.numpy()
        return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])

    @staticmethod
    def _bias(layer: keras.layers.Layer) -> np.ndarray:
        bias = getattr(layer, "bias", None)
        return np.zeros(layer.kernel.shape[-1]) if bias is None else bias.numpy()

    def forward(self, call, inputs, analysis):
        layer = call.layer
        kernel = np.abs(self._kernel(layer)) <= analysis.atol
        channels = inputs[0]
        if channels is not None:
            ignored = kernel.all(axis=(0, 2))
            constant = ~np.isnan(channels.values)
            if _pads_with_zeros(layer):
                # Border pixels see 0 instead of the constant: only 0 folds exactly.
                constant &= channels.values == 0
            analysis.reads.append((channels.slots, ignored | constant))
        dead = kernel.all(axis=(0, 1))
        values = np.full(dead.shape, np.nan)
        if _is_elementwise(layer.activation) and dead.any():
            pre = tf.constant(self._bias(layer)[dead], dtype=layer.kernel.dtype)
            values[dead] = np.asarray(layer.activation(pre), dtype=np.float64)
        else:
            dead = np.zeros_like(dead)
        slots = analysis.new(dead.size, fixed=False, dead=dead)
        analysis.producers.append((call, slots))
        return [_Channels(slots, values)]

    def rebuild(self, call, inputs, in_masks, out_masks):
        layer = call.layer
        kernel = layer.kernel.numpy()
        bias = self._bias(layer).astype(np.float64)
        in_mask, out_mask = in_masks[0], out_masks[0]
        if in_mask is not None and not in_mask.all():
            values = inputs[0].values[~in_mask]
            known = ~np.isnan(values)
            absorbed = self._kernel(layer).astype(np.float64).sum(axis=0)[~in_mask]
            bias = bias + values[known] @ absorbed[known]
            kernel = kernel[..., in_mask, :]
        use_bias = getattr(layer, "bias", None) is not None or bool(np.any(bias != 0))
        kernel = kernel[..., out_mask]
        weights = [kernel]
        if use_bias:
            weights.append(bias[out_mask].astype(kernel.dtype))
        return _Rebuilt({self.size_key: int(out_mask.sum()), "use_bias": use_bias}, weights)


_Transform = Callable[[keras.layers.Layer, np.ndarray], np.ndarray]


def _same(layer: keras.layers.Layer, values: np.ndarray) -> np.ndarray:
    return values


def _zero_padded(layer: keras.layers.Layer, values: np.ndarray) -> np.ndarray:
    return np.where(values == 0, values, np.nan)


def _called(layer: keras.layers.Layer, values: np.ndarray) -> np.ndarray:
    """An element-wise layer applied to the constants (``call``: no new graph node)."""
    known = ~np.isnan(values)
    out = np.full_like(values, np.nan)
    if known.any():
        result = layer.call(tf.constant(values[known][None, :], dtype=tf.float32))
        out[known] = np.asarray(result, dtype=np.float64)[0]
    return out


class _Channelwise(_Rule):
    """Layers that keep each channel where it is and map a constant to a constant."""

    def __init__(self, transform: _Transform = _same) -> None:
        self.transform = transform

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason is None and call.out_shape()[-1] != call.in_shape()[-1]:
            reason = "changes the number of channels"
        return reason

    def forward(self, call, inputs, analysis):
        channels = inputs[0]
        if channels is None:
            return [None]
        return [_Channels(channels.slots, self.transform(call.layer, channels.values))]


class _Activation(_Channelwise):
    def __init__(self) -> None:
        super().__init__(_called)

    def unsupported(self, call):
        activation = call.layer.activation
        if not _is_elementwise(activation):
            name = getattr(activation, "__name__", repr(activation))
            return f"applies {name!r}, which is not element-wise"
        return super().unsupported(call)


class _BatchNorm(_Channelwise):
    """Inference-time BatchNormalization: a per-channel affine map, sliced with its channels."""

    def __init__(self) -> None:
        super().__init__(self._normalize)

    def unsupported(self, call):
        rank = len(call.in_shape())
        if list(call.layer.axis) != [rank - 1]:
            return f"normalizes axis {call.layer.axis} (shrink needs the last axis)"
        return super().unsupported(call)

    @staticmethod
    def _normalize(layer: keras.layers.Layer, values: np.ndarray) -> np.ndarray:
        mean = layer.moving_mean.numpy().astype(np.float64)
        variance = layer.moving_variance.numpy().astype(np.float64)
        scale = 1.0 / np.sqrt(variance + layer.epsilon)
        if layer.gamma is not None:
            scale = scale * layer.gamma.numpy()
        shift = 0.0 if layer.beta is None else layer.beta.numpy().astype(np.float64)
        return (values - mean) * scale + shift

    def rebuild(self, call, inputs, in_masks, out_masks):
        mask = in_masks[0]
        if mask is None or mask.all():
            return None
        return _Rebuilt({}, [weight[mask] for weight in call.layer.get_weights()])


def _stack(inputs: Sequence[_Channels]) -> np.ndarray:
    return np.stack([channels.values for channels in inputs])


def _subtract(values: np.ndarray) -> np.ndarray:
    return values[0] - values[1]


def _all_equal(values: np.ndarray) -> np.ndarray:
    return np.where((values == values[0]).all(axis=0), values[0], np.nan)


class _Aligned(_Rule):
    """Merges whose output channel ``j`` comes from channel ``j`` of every input."""

    def __init__(self, combine: Callable[[np.ndarray], np.ndarray]) -> None:
        self.combine = combine

    def unsupported(self, call):
        widths = {tuple(tensor.shape)[-1] for tensor in call.inputs}
        if widths != {call.out_shape()[-1]}:
            return "broadcasts its inputs along the channel axis"
        return None

    def forward(self, call, inputs, analysis):
        if any(channels is None for channels in inputs):
            for channels in inputs:
                if channels is not None:
                    analysis.fix(channels.slots)
            return [None]
        first = inputs[0].slots
        for channels in inputs[1:]:
            analysis.union(first, channels.slots)
        return [_Channels(first, self.combine(_stack(inputs)))]


class _Concatenate(_Aligned):
    """Concatenate: side by side along the channel axis, aligned along any other."""

    def __init__(self) -> None:
        super().__init__(_all_equal)

    def _on_channels(self, call: _Call) -> bool:
        return call.layer.axis in (-1, len(call.out_shape()) - 1)

    def unsupported(self, call):
        return None if self._on_channels(call) else super().unsupported(call)

    def forward(self, call, inputs, analysis):
        if not self._on_channels(call):
            return super().forward(call, inputs, analysis)
        if any(channels is None for channels in inputs):
            for channels in inputs:
                if channels is not None:
                    analysis.fix(channels.slots)
            return [analysis.fixed_channels(call.outputs[0])]
        return [
            _Channels(
                np.concatenate([channels.slots for channels in inputs]),
                np.concatenate([channels.values for channels in inputs]),
            )
        ]


class _Reshape(_Rule):
    """Flatten and Reshape whose last output axis repeats the input channels.

    With ``channels_last`` the flat index of channel ``c`` at position ``p`` is
    ``p * C + c``; a new last axis of ``k * C`` entries holds ``k`` positions,
    entry ``e`` being channel ``e % C``.
    """

    def unsupported(self, call):
        reason = _single_input(call) or _channels_last(call)
        if reason:
            return reason
        in_shape, out_shape = call.in_shape()[1:], call.out_shape()[1:]
        if None in in_shape or None in out_shape:
            return "has an unknown (None) dimension"
        if not in_shape or not out_shape or out_shape[-1] % in_shape[-1]:
            return (
                f"reshapes {in_shape} to {out_shape} (shrink needs the new last axis to "
                "hold whole positions: a multiple of the channels)"
            )
        return None

    def forward(self, call, inputs, analysis):
        channels = inputs[0]
        if channels is None:
            return [None]
        repeat = call.out_shape()[-1] // call.in_shape()[-1]
        return [_Channels(np.tile(channels.slots, repeat), np.tile(channels.values, repeat))]

    def rebuild(self, call, inputs, in_masks, out_masks):
        mask = in_masks[0]
        if not isinstance(call.layer, keras.layers.Reshape) or mask is None or mask.all():
            return None
        out_shape = call.out_shape()[1:]
        repeat = out_shape[-1] // call.in_shape()[-1]
        return _Rebuilt({"target_shape": (*out_shape[:-1], repeat * int(mask.sum()))}, None)


_IDENTITY = _Channelwise()
_RULES: dict[type, _Rule | None] = {
    keras.layers.InputLayer: _Source(),
    keras.layers.Dense: _Producer("units"),
    keras.layers.Conv1D: _Producer("filters"),
    keras.layers.Conv2D: _Producer("filters"),
    keras.layers.Conv3D: _Producer("filters"),
    # Conv subclasses whose kernels are laid out differently: not (yet) shrunk.
    keras.layers.Conv1DTranspose: None,
    keras.layers.Conv2DTranspose: None,
    keras.layers.Conv3DTranspose: None,
    keras.layers.DepthwiseConv1D: None,
    keras.layers.DepthwiseConv2D: None,
    keras.layers.SeparableConv1D: None,
    keras.layers.SeparableConv2D: None,
    keras.layers.BatchNormalization: _BatchNorm(),
    keras.layers.Activation: _Activation(),
    keras.layers.ReLU: _Channelwise(_called),
    keras.layers.LeakyReLU: _Channelwise(_called),
    keras.layers.ELU: _Channelwise(_called),
    keras.layers.ThresholdedReLU: _Channelwise(_called),
    keras.layers.Dropout: _IDENTITY,
    keras.layers.GaussianNoise: _IDENTITY,
    keras.layers.GaussianDropout: _IDENTITY,
    keras.layers.AlphaDropout: _IDENTITY,
    keras.layers.ActivityRegularization: _IDENTITY,
    keras.layers.MaxPooling1D: _IDENTITY,
    keras.layers.MaxPooling2D: _IDENTITY,
    keras.layers.MaxPooling3D: _IDENTITY,
    keras.layers.AveragePooling1D: _IDENTITY,
    keras.layers.AveragePooling2D: _IDENTITY,
    keras.layers.AveragePooling3D: _IDENTITY,
    keras.layers.GlobalMaxPooling1D: _IDENTITY,
    keras.layers.GlobalMaxPooling2D: _IDENTITY,
    keras.layers.GlobalMaxPooling3D: _IDENTITY,
    keras.layers.GlobalAveragePooling1D: _IDENTITY,
    keras.layers.GlobalAveragePooling2D: _IDENTITY,
    keras.layers.GlobalAveragePooling3D: _IDENTITY,
    keras.layers.Cropping1D: _IDENTITY,
    keras.layers.Cropping2D: _IDENTITY,
    keras.layers.Cropping3D: _IDENTITY,
    keras.layers.UpSampling1D: _IDENTITY,
    keras.layers.UpSampling2D: _IDENTITY,
    keras.layers.UpSampling3D: _IDENTITY,
    keras.layers.ZeroPadding1D: _Channelwise(_zero_padded),
    keras.layers.ZeroPadding2D: _Channelwise(_zero_padded),
    keras.layers.ZeroPadding3D: _Channelwise(_zero_padded),
    keras.layers.Flatten: _Reshape(),
    keras.layers.Reshape: _Reshape(),
    keras.layers.Add: _Aligned(lambda values: values.sum(axis=0)),
    keras.layers.Subtract: _Aligned(_subtract),
    keras.layers.Multiply: _Aligned(lambda values: values.prod(axis=0)),
    keras.layers.Average: _Aligned(lambda values: values.mean(axis=0)),
    keras.layers.Maximum: _Aligned(lambda values: values.max(axis=0)),
    keras.layers.Minimum: _Aligned(lambda values: values.min(axis=0)),
    keras.layers.Concatenate: _Concatenate(),
}


def _unsupported_reason(call: _Call, rule: _Rule | None, times_called: int) -> str | None:
    if isinstance(call.layer, keras.Model):
        return "is a nested model (shrink does not look inside nested models)"
    if rule is None:
        return "is a layer type shrink cannot remove channels through"
    if times_called > 1:
        return f"is called {times_called} times (shared layers are not supported)"
    return rule.unsupported(call)


def _is_prunable(layer: keras.layers.Layer) -> bool:
    """Whether tfmot prunes ``layer`` (or a layer of it, for a nested model)."""
    if isinstance(layer, keras.Model):
        return any(prunable_weights(inner) for inner in iter_layers(layer))
    return bool(prunable_weights(layer))


def _reaches_prunable(calls: list[_Call]) -> dict[int, bool]:
    """For each call, whether a prunable layer (Dense, Conv, ...) lies downstream of it."""
    readers: dict[TensorKey, list[_Call]] = {}
    for call in calls:
        for tensor in call.inputs:
            readers.setdefault(_key(tensor), []).append(call)
    reaches: dict[int, bool] = {}
    for call in reversed(calls):
        after = [reader for tensor in call.outputs for reader in readers.get(_key(tensor), [])]
        reaches[id(call)] = any(
            _is_prunable(reader.layer) or reaches[id(reader)] for reader in after
        )
    return reaches


# ----------------------------------------------------------------------------- shrink


def _check_input(model: keras.Model, atol: float) -> keras.Model:
    model = require_tf_keras_model(model)
    if not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol}.")
    wrapped = [
        layer.name
        for layer in iter_layers(model)
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude)
    ]
    if wrapped:
        raise ValueError(_STRIP_FIRST.format(names=", ".join(map(repr, wrapped))))
    _require_graph(model, "shrink")
    return model


def _layer_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each layer's entry of a Sequential or functional config, by layer name."""
    return {entry["config"]["name"]: entry for entry in config["layers"]}


@returns_users_keras()
def shrink(model: keras.Model, *, atol: float = 0.0) -> ShrinkResult:
    """Rebuild ``model`` without its dead units and filters: smaller, same predictions.

    See the module docstring for what counts as dead, how constants are folded
    into the next layer's bias and which layers shrink can look through.

    Args:
      model: a plain (stripped) tf_keras Sequential or functional model with
        whole units/filters zeroed, e.g. ``tfstatprune.strip_pruning(pruned)``.
        It is not modified.
      atol: weights with ``|w| <= atol`` count as zero.

    Returns:
      A :class:`ShrinkResult` with the new (uncompiled) model, parameter and
      FLOP counts before and after, and ``(kept, total)`` per Dense/Conv layer.

    Raises:
      ValueError: pruning wrappers still in the model ("strip it first with
        tfstatprune.strip_pruning"); a Sequential model without an input shape;
        dead units whose outputs pass through an unsupported layer before
        another prunable layer (the message names the layer); a bad ``atol``.
      TypeError: a subclassed model, or not a tf_keras model.
    """
    model = _check_input(model, atol)
    calls = _calls(model)
    times_called: dict[int, int] = {}
    for call in calls:
        times_called[id(call.layer)] = times_called.get(id(call.layer), 0) + 1

    analysis = _Analysis(atol)
    rules: dict[int, _Rule] = {}
    for call in calls:
        inputs = [analysis.channels.get(_key(tensor)) for tensor in call.inputs]
        rule = _lookup(_RULES, call.layer)
        reason = _unsupported_reason(call, rule, times_called[id(call.layer)])
        if reason is None:
            rules[id(call)] = rule
            outputs = rule.forward(call, inputs, analysis)
        else:
            for channels in inputs:
                if channels is not None:
                    analysis.blocks.append((call, reason, channels.slots))
            outputs = [analysis.fixed_channels(tensor) for tensor in call.outputs]
        for tensor, channels in zip(call.outputs, outputs, strict=True):
            analysis.channels[_key(tensor)] = channels
    for tensor in model.outputs:
        channels = analysis.channels.get(_key(tensor))
        if channels is not None:
            analysis.fix(channels.slots)
    keep = analysis.decide(_reaches_prunable(calls))

    def mask(tensor: Any) -> np.ndarray | None:
        channels = analysis.channels.get(_key(tensor))
        return None if channels is None else keep[channels.slots]

    config = copy.deepcopy(model.get_config())
    entries = _layer_configs(config)
    new_weights: dict[str, list[np.ndarray]] = {}
    for call in calls:
        rule = rules.get(id(call))
        if rule is None:
            continue
        inputs = [analysis.channels.get(_key(tensor)) for tensor in call.inputs]
        rebuilt = rule.rebuild(
            call, inputs, [mask(t) for t in call.inputs], [mask(t) for t in call.outputs]
        )
        if rebuilt is None:
            continue
        entries[call.layer.name]["config"].update(rebuilt.config)
        if rebuilt.weights is not None:
            new_weights[call.layer.name] = rebuilt.weights
    for entry in entries.values():
        entry.pop("build_config", None)  # input shapes change: build on call instead

    custom_objects = {type(layer).__name__: type(layer) for layer in iter_layers(model)}
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    small = cls.from_config(config, custom_objects=custom_objects)
    for layer in small.layers:
        weights = new_weights.get(layer.name)
        layer.set_weights(model.get_layer(layer.name).get_weights() if weights is None else weights)

    order = {layer.name: index for index, layer in enumerate(model.layers)}
    removed = {
        call.layer.name: (int(keep[slots].sum()), int(slots.size))
        for call, slots in sorted(analysis.producers, key=lambda item: order[item[0].layer.name])
    }
    return ShrinkResult(
        model=small,
        params_before=model.count_params(),
        params_after=small.count_params(),
        flops_before=count_flops(model),
        flops_after=count_flops(small),
        removed=removed,
    )
