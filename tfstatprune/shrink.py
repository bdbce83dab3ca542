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

Which layers channels pass through, how they are coupled and how a constant
passes each layer kind is :mod:`tfstatprune.structure`'s registry; this module
decides what goes, folds constants into the next layer's bias and rebuilds.
A depthwise convolution (``depth_multiplier=1``) couples its input and output
channels one to one: a removed filter before it removes its channel and the
row of the layer after it. ``Multiply`` (squeeze-excite) makes a channel 0
when either factor is 0, so a dead channel removes the excitation unit too.

FLOPs
-----
:func:`count_flops` (:mod:`tfstatprune.structure.cost`) counts multiply-adds
(MACs) of Dense and convolution layers for one example.

Example::

    final = tfstatprune.strip_pruning(pruned)
    result = tfstatprune.shrink(final)
    print(result)                # kept / total per layer, parameters, FLOPs
    small = result.model
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfstatprune._keras import keras
from tfstatprune._translate import require_tf_keras_model, returns_users_keras
from tfstatprune.keras.layers import prunable_weights
from tfstatprune.structure.channels import ChannelGraph, channel_graph
from tfstatprune.structure.cost import count_flops
from tfstatprune.structure.rules import (
    BatchNorm,
    ChannelRule,
    Depthwise,
    Producer,
    Reshape,
    followed_kinds,
    is_elementwise,
)
from tfstatprune.structure.walk import (
    LayerCall,
    leaf_layers,
    model_nodes,
    readers_of,
    require_graph,
    tensor_key,
)
from tfstatprune.tables import Table, format_text

__all__ = ["ShrinkResult", "count_flops", "shrink"]

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


# ----------------------------------------------------------------------------- analysis


def _shared(times_called: dict[int, int]) -> Callable[[LayerCall], str | None]:
    def reason(call: LayerCall) -> str | None:
        count = times_called[id(call.layer)]
        return f"is called {count} times (shared layers are not supported)" if count > 1 else None

    return reason


def _pads_with_zeros(layer: keras.layers.Layer) -> bool:
    """Whether a Dense/Conv layer zero-pads its input ("same"/"causal" beyond 1x1)."""
    padding = getattr(layer, "padding", "valid")
    return padding != "valid" and any(size > 1 for size in layer.kernel_size)


def _kernel(layer: keras.layers.Layer) -> np.ndarray:
    """The kernel as ``(taps, in_channels, out_channels)`` (taps = 1 for Dense)."""
    kernel = layer.kernel.numpy()
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])


def _bias(layer: keras.layers.Layer) -> np.ndarray:
    bias = getattr(layer, "bias", None)
    return np.zeros(layer.kernel.shape[-1]) if bias is None else bias.numpy()


class _Analysis:
    """Constant channels, dead units and what each Dense/Conv input can absorb."""

    def __init__(self, graph: ChannelGraph, atol: float) -> None:
        self.graph = graph
        self.atol = atol
        self.values: dict[Any, np.ndarray | None] = {}
        self.dead = np.zeros(graph.size, bool)
        # (slots, ok): Dense/Conv inputs; ok[i] when entry i can be removed there.
        self.reads: list[tuple[np.ndarray, np.ndarray]] = []
        read_by = {id(call): slots for call, slots in graph.reads}
        for call in graph.calls:
            rule = graph.rules.get(id(call))
            inputs = [self.values.get(tensor_key(t)) for t in call.inputs]
            if isinstance(rule, Producer):
                outputs = [self._producer(call, inputs[0], read_by.get(id(call)))]
            elif rule is not None:
                outputs = rule.fold(call, inputs)
            else:
                outputs = [None] * len(call.outputs)
            for tensor, found in zip(call.outputs, outputs, strict=True):
                slots = graph.slots_of(tensor)
                if slots is not None and found is None:
                    found = np.full(slots.shape, np.nan)
                self.values[tensor_key(tensor)] = None if slots is None else found

    def _producer(self, call: LayerCall, values: np.ndarray | None, read: np.ndarray | None):
        layer = call.inner
        kernel = np.abs(_kernel(layer)) <= self.atol
        if read is not None:
            ignored = kernel.all(axis=(0, 2))
            constant = ~np.isnan(values)
            if _pads_with_zeros(layer):
                # Border pixels see 0 instead of the constant: only 0 folds exactly.
                constant &= values == 0
            self.reads.append((read, ignored | constant))
        dead = kernel.all(axis=(0, 1))
        out = np.full(dead.shape, np.nan)
        if is_elementwise(layer.activation) and dead.any():
            pre = tf.constant(_bias(layer)[dead], dtype=layer.kernel.dtype)
            out[dead] = np.asarray(layer.activation(pre), dtype=np.float64)
            self.dead[self.graph.units_of[layer.name][dead]] = True
        return out

    def decide(self, model: keras.Model) -> np.ndarray:
        """Whether each slot is kept: the removal rules of the module docstring."""
        graph = self.graph
        root = graph.roots()
        removable = np.ones(graph.size, dtype=bool)
        removable[root[graph.is_fixed()]] = False
        for slots in graph.kept:
            removable[root[slots]] = False
        for tensor in model.outputs:
            slots = graph.slots_of(tensor)
            if slots is not None:
                removable[root[slots]] = False
        for slots, ok in self.reads:
            removable[root[slots[~ok]]] = False
        dead_group = np.ones(graph.size, dtype=bool)
        dead_group[root[graph.is_fixed() | (graph.is_unit() & ~self.dead)]] = False
        reaches = _reaches_prunable(graph.calls)
        for wall in graph.walls:
            groups = root[wall.slots]
            stuck = groups[removable[groups] & dead_group[groups]]
            between = reaches[id(wall.call)] or _is_prunable(wall.call.layer)
            if stuck.size and between:
                raise ValueError(_blocked_message(wall.call, wall.reason, graph, root, stuck))
            removable[groups] = False
        for _, slots in graph.producer_calls:
            if slots.size and removable[root[slots]].all():
                removable[root[slots[0]]] = False
        return ~removable[root]


def _blocked_message(
    call: LayerCall, reason: str, graph: ChannelGraph, root: np.ndarray, stuck: np.ndarray
) -> str:
    wanted = set(stuck.tolist())
    owners = sorted(
        {
            name
            for name, slots in graph.units_of.items()
            if wanted.intersection(root[slots].tolist())
        }
    )
    return (
        f"shrink cannot remove the dead units/filters of {owners}: their outputs reach "
        f"layer {call.layer.name!r} ({type(call.layer).__name__}), which {reason}, on the "
        "way to another prunable layer. Supported between pruned layers: "
        f"{', '.join(followed_kinds())}."
    )


def _is_prunable(layer: keras.layers.Layer) -> bool:
    """Whether tfmot prunes ``layer`` (or a layer of it, for a nested model)."""
    if isinstance(layer, keras.Model):
        return any(prunable_weights(inner) for inner in leaf_layers(layer))
    return bool(prunable_weights(layer))


def _reaches_prunable(calls: list[LayerCall]) -> dict[int, bool]:
    """For each call, whether a prunable layer (Dense, Conv, ...) lies downstream of it."""
    readers = readers_of(calls)
    reaches: dict[int, bool] = {}
    for call in reversed(calls):
        after = [r for tensor in call.outputs for r in readers.get(tensor_key(tensor), [])]
        reaches[id(call)] = any(_is_prunable(r.layer) or reaches[id(r)] for r in after)
    return reaches


# ----------------------------------------------------------------------------- rebuild


class _Rebuilt(NamedTuple):
    """A layer's new config entries and weights (None: keep its weights)."""

    config: dict[str, Any]
    weights: list[np.ndarray] | None


Masks = list[np.ndarray | None]


def _rebuild_producer(rule: Producer, call, in_values, in_masks: Masks, out_masks: Masks):
    layer = call.inner
    kernel = layer.kernel.numpy()
    bias = _bias(layer).astype(np.float64)
    in_mask, out_mask = in_masks[0], out_masks[0]
    if in_mask is not None and not in_mask.all():
        values = in_values[0][~in_mask]
        known = ~np.isnan(values)
        absorbed = _kernel(layer).astype(np.float64).sum(axis=0)[~in_mask]
        bias = bias + values[known] @ absorbed[known]
        kernel = kernel[..., in_mask, :]
    use_bias = getattr(layer, "bias", None) is not None or bool(np.any(bias != 0))
    kernel = kernel[..., out_mask]
    weights = [kernel]
    if use_bias:
        weights.append(bias[out_mask].astype(kernel.dtype))
    return _Rebuilt({rule.size_key: int(out_mask.sum()), "use_bias": use_bias}, weights)


def _rebuild_sliced(rule: ChannelRule, call, in_values, in_masks: Masks, out_masks: Masks):
    """BatchNormalization and depthwise convolutions: every weight sliced on its
    channel axis (the last one but for a depthwise kernel's ``[..., C, 1]``)."""
    mask = in_masks[0]
    if mask is None or mask.all():
        return None
    weights = []
    for weight in call.inner.get_weights():
        weights.append(weight[..., mask, :] if weight.ndim > 1 else weight[mask])
    return _Rebuilt({}, weights)


def _rebuild_reshape(rule: Reshape, call, in_values, in_masks: Masks, out_masks: Masks):
    mask = in_masks[0]
    if not isinstance(call.inner, keras.layers.Reshape) or mask is None or mask.all():
        return None
    out_shape = call.out_shape()[1:]
    repeat = out_shape[-1] // call.in_shape()[-1]
    return _Rebuilt({"target_shape": (*out_shape[:-1], repeat * int(mask.sum()))}, None)


# How each rule kind's layers are rebuilt (rules not listed keep their layer as it is).
_REBUILD: dict[type, Callable[..., _Rebuilt | None]] = {
    Producer: _rebuild_producer,
    BatchNorm: _rebuild_sliced,
    Depthwise: _rebuild_sliced,
    Reshape: _rebuild_reshape,
}


def _rebuild(rule: ChannelRule, *args: Any) -> _Rebuilt | None:
    for cls in type(rule).__mro__:
        if cls in _REBUILD:
            return _REBUILD[cls](rule, *args)
    return None


# ----------------------------------------------------------------------------- shrink


def _check_input(model: keras.Model, atol: float) -> keras.Model:
    model = require_tf_keras_model(model)
    if not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol}.")
    wrapped = [
        layer.name
        for layer in leaf_layers(model, through_wrappers=False)
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude)
    ]
    if wrapped:
        raise ValueError(_STRIP_FIRST.format(names=", ".join(map(repr, wrapped))))
    require_graph(model, "shrink")
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
    times_called: dict[int, int] = {}
    for node in model_nodes(model):
        times_called[id(node.layer)] = times_called.get(id(node.layer), 0) + 1
    graph = channel_graph(model, "shrink", wall=_shared(times_called))
    analysis = _Analysis(graph, atol)
    keep = analysis.decide(model)

    def mask(tensor: Any) -> np.ndarray | None:
        slots = graph.slots_of(tensor)
        return None if slots is None else keep[slots]

    config = copy.deepcopy(model.get_config())
    entries = _layer_configs(config)
    new_weights: dict[str, list[np.ndarray]] = {}
    for call in graph.calls:
        rule = graph.rules.get(id(call))
        if rule is None:
            continue
        in_values = [analysis.values.get(tensor_key(t)) for t in call.inputs]
        rebuilt = _rebuild(
            rule, call, in_values, [mask(t) for t in call.inputs], [mask(t) for t in call.outputs]
        )
        if rebuilt is None:
            continue
        entries[call.layer.name]["config"].update(rebuilt.config)
        if rebuilt.weights is not None:
            new_weights[call.layer.name] = rebuilt.weights
    for entry in entries.values():
        entry.pop("build_config", None)  # input shapes change: build on call instead

    custom_objects = {type(layer).__name__: type(layer) for layer in leaf_layers(model)}
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    small = cls.from_config(config, custom_objects=custom_objects)
    for layer in small.layers:
        weights = new_weights.get(layer.name)
        layer.set_weights(model.get_layer(layer.name).get_weights() if weights is None else weights)

    order = {layer.name: index for index, layer in enumerate(model.layers)}
    removed = {
        call.layer.name: (int(keep[slots].sum()), int(slots.size))
        for call, slots in sorted(graph.producer_calls, key=lambda item: order[item[0].layer.name])
    }
    return ShrinkResult(
        model=small,
        params_before=model.count_params(),
        params_after=small.count_params(),
        flops_before=count_flops(model),
        flops_after=count_flops(small),
        removed=removed,
    )
