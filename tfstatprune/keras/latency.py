"""Which weights to prune so that XNNPACK runs the model faster: its sparse path.

XNNPACK (LiteRT's default CPU delegate) runs a float32 convolutional subgraph
in sparse NCHW mode (Elsen, Dukhan, Gale & Simonyan 2020, "Fast sparse
ConvNets", CVPR; 1.3-2.4x on ARM) when, in the converted model:

* the subgraph starts with a 3x3 stride-2 convolution of 3 input channels
  padded by exactly one pixel on every side,
* every layer inside is a 1x1 stride-1 convolution, a 3x3 or 5x5 depthwise
  convolution (stride 1 or 2, padded by ``k // 2`` on every side, depth
  multiplier 1), an element-wise activation, BatchNormalization, ``Add`` or
  ``Multiply`` of 4-D tensors, or a global average pooling that keeps its
  dimensions (squeeze-excite),
* it ends with a global average pooling (TFLite ``MEAN``), every tensor inside
  read only by layers inside, and
* at least :data:`XNNPACK_MIN_ZERO_SHARE` (2/3) of all the weights of its 1x1
  convolutions are zero (they alone run sparse; depthwise and the first
  convolution stay dense).

Padding is where stock Keras models fail: a stride-2 layer is compatible only
through ``ZeroPadding2D(((p, p), (p, p)))`` and ``padding="valid"``, and only
when that differs from TensorFlow's ``"same"`` padding for the input size (the
TFLite converter folds an equal pad into the convolution as ``SAME``, which
XNNPACK keeps as "TensorFlow SAME padding" for strides > 1 and refuses).
``keras.applications`` pads stride-2 layers by ``((0, 1), (0, 1))`` at even
sizes (224) and by ``((1, 1), (1, 1))`` at odd ones: both end as ``SAME``.

:func:`latency_policy` repads such layers in a copy, checks these rules on the
Keras graph and returns the model and the names of the 1x1 convolutions to
prune (``layers=`` of :func:`tfstatprune.prune_statistically` /
:func:`tfstatprune.prune_once`); :mod:`tflite_export.xnnpack` checks the
converted file itself.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

from tfstatprune._keras import keras
from tfstatprune.keras.graph import (
    LayerCall,
    is_elementwise,
    layer_calls,
    require_graph,
    tensor_key,
    unwrap,
)

__all__ = ["XNNPACK_MIN_ZERO_SHARE", "LatencyPolicy", "latency_policy"]

#: XNNPACK switches a subgraph to sparse inference when more than this share
#: of its 1x1-convolution weights is zero (``num_zeroes * 3 > num_params * 2``).
XNNPACK_MIN_ZERO_SHARE = 2 / 3

_FIRST_KERNEL, _FIRST_STRIDE, _FIRST_CHANNELS = (3, 3), (2, 2), 3
_DEPTHWISE_KERNELS, _STRIDES = (3, 5), (1, 2)
#: TFOpLambda layers (hard-swish / hard-sigmoid written as TF ops, MobileNetV3)
#: that become element-wise TFLite ops XNNPACK runs in NCHW.
_ELEMENTWISE_OPS = frozenset(
    {
        "__operators__.add",
        "math.add",
        "math.multiply",
        "math.sigmoid",
        "nn.relu",
        "nn.relu6",
        "nn.silu",
        "nn.swish",
        "math.truediv",
    }
)
_IDENTITY_AT_INFERENCE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


class _Role(NamedTuple):
    """What one layer call is to XNNPACK's sparse subgraph."""

    kind: str  # "start", "inside", "end", "pad", or "outside"
    reason: str = ""


_START, _INSIDE, _END, _PAD, _OUTSIDE = "start", "inside", "end", "pad", "outside"


class LatencyPolicy(NamedTuple):
    """What to prune for XNNPACK's sparse inference.

    Attributes:
      model: the model to prune: the input model, or (``repad=True``) a copy
        whose stride-2 layers are padded symmetrically, same weights.
      layers: the names of its 1x1 convolutions inside the sparse subgraph,
        for ``layers=`` of :func:`tfstatprune.prune_statistically`.
      repadded: names of the stride-2 layers whose padding was changed.
    """

    model: keras.Model
    layers: list[str]
    repadded: list[str]


def latency_policy(model: keras.Model, *, repad: bool = True) -> LatencyPolicy:
    """The model and 1x1 Conv2D layers to prune for XNNPACK's sparse inference.

    Stock ``keras.applications`` models (MobileNetV2/V3, EfficientNet) pad their
    stride-2 layers the way TensorFlow's ``"same"`` does, which XNNPACK's sparse
    path refuses (module docstring). With ``repad`` (default) such a layer in a
    functional model gets ``ZeroPadding2D(((k//2, k//2), (k//2, k//2)))`` and
    ``padding="valid"`` instead, in a copy with the same weights: at even input
    sizes every output shape stays the same, the features shift by one pixel
    (retrain or fine-tune, as pruning needs anyway). The input model is never
    modified.

    Args:
      model: a built Sequential or functional tf_keras model.
      repad: repad stride-2 layers in a copy; False: only check ``model``.

    Returns:
      A :class:`LatencyPolicy`; prune ``policy.layers`` of ``policy.model`` to
      more than :data:`XNNPACK_MIN_ZERO_SHARE` of their weights in total.

    Raises:
      ValueError: when the model has no eligible subgraph; the message names
        the layer that breaks each candidate and the rule it breaks.

    Example:
      >>> inputs = keras.Input((32, 32, 3))
      >>> x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
      >>> x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
      >>> x = keras.layers.Conv2D(16, 1, name="expand")(x)
      >>> x = keras.layers.GlobalAveragePooling2D()(x)
      >>> policy = latency_policy(keras.Model(inputs, keras.layers.Dense(2)(x)))
      >>> policy.layers, policy.repadded
      (['expand'], ['stem'])
    """
    require_graph(model, "latency_policy")
    repadded: list[str] = []
    if repad:
        model, repadded = _repad(model)
    return LatencyPolicy(model, _eligible_pointwise(model), repadded)


def _eligible_pointwise(model: keras.Model) -> list[str]:
    """The 1x1 Conv2D layers whose zeros XNNPACK's sparse inference exploits.

    Prune exactly these (``layers=latency_policy(model).layers``) to more than
    :data:`XNNPACK_MIN_ZERO_SHARE` of their weights in total (0.75-0.9 is
    usual): XNNPACK then runs the subgraph from the first 3x3 stride-2
    convolution to the global average pooling in sparse NCHW mode. Other
    weights (depthwise, the first convolution, the classifier) gain nothing
    from zeros there. The rules are in the module docstring.

    Args:
      model: a built Sequential or functional tf_keras model (pruning wrappers
        are looked through).

    Returns:
      Names of the 1x1 convolutions inside every eligible subgraph, in graph
      order.

    Raises:
      ValueError: when the model has no eligible subgraph; the message names
        the layer that breaks each candidate and the rule it breaks.

    """
    require_graph(model, "latency_policy")
    calls = layer_calls(model)
    producer = {tensor_key(t): i for i, call in enumerate(calls) for t in call.outputs}
    readers: dict[Any, list[int]] = {}
    for i, call in enumerate(calls):
        for t in call.inputs:
            readers.setdefault(tensor_key(t), []).append(i)
    roles = [_role(call, _padding_of(call, calls, producer)) for call in calls]
    starts = [i for i, role in enumerate(roles) if role.kind == _START]
    if not starts:
        rejected = [
            f"{calls[i].layer.name}: {role.reason}"
            for i, role in enumerate(roles)
            if role.reason.startswith("first convolution")
        ]
        raise ValueError(
            f"{model.name!r} has no subgraph XNNPACK can run sparse: its sparse path starts "
            f"with a 3x3 stride-2 Conv2D on 3 input channels padded by one pixel on every "
            f"side (ZeroPadding2D(((1, 1), (1, 1))) then padding='valid', at an even input "
            f"size), and "
            + ("; ".join(rejected) if rejected else "there is no such convolution")
            + ". latency_policy(model, repad=True) repads stride-2 layers of functional "
            "models at even input sizes."
        )
    chosen: list[int] = []
    problems = []
    for start in starts:
        members, problem = _subgraph(start, calls, roles, producer, readers)
        if problem:
            problems.append(f"from {calls[start].layer.name!r}: {problem}")
        else:
            chosen += [i for i in members if _is_pointwise(calls[i])]
    if not chosen:
        raise ValueError(
            f"{model.name!r} has no subgraph XNNPACK can run sparse ("
            + "; ".join(problems or ["it has no 1x1 convolution"])
            + "). See tfstatprune.keras.latency for the rules."
        )
    return [unwrap(calls[i].layer).name for i in sorted(set(chosen))]


def _subgraph(
    start: int,
    calls: list[LayerCall],
    roles: list[_Role],
    producer: dict[Any, int],
    readers: dict[Any, list[int]],
) -> tuple[set[int], str]:
    """The calls reachable from ``start`` up to the poolings, or why it is not eligible."""
    members, ends, todo = {start}, set(), [start]
    while todo:
        i = todo.pop()
        for t in calls[i].outputs:
            for j in readers.get(tensor_key(t), []):
                role = roles[j]
                if role.kind == _OUTSIDE:
                    return members, (
                        f"{_describe(calls[j])} reads {calls[i].layer.name!r}'s output: "
                        f"{role.reason}"
                    )
                if role.kind == _START:
                    return members, f"{_describe(calls[j])} is a second stem inside it"
                if j in members:
                    continue
                members.add(j)
                if role.kind == _END:
                    ends.add(j)
                else:
                    todo.append(j)
    if not ends:
        return members, "no GlobalAveragePooling2D ends it"
    for j in members - {start}:
        for t in calls[j].inputs:
            source = producer.get(tensor_key(t))
            if source is not None and source not in members:
                return members, (
                    f"{_describe(calls[j])} also reads {calls[source].layer.name!r}, "
                    "which is computed outside it"
                )
    return members, ""


def _describe(call: LayerCall) -> str:
    layer = unwrap(call.layer)
    return f"{type(layer).__name__} {layer.name!r}"


def _is_pointwise(call: LayerCall) -> bool:
    layer = unwrap(call.layer)
    return _is_conv(layer) and tuple(layer.kernel_size) == (1, 1)


def _is_conv(layer: keras.layers.Layer) -> bool:
    not_plain = (
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.Conv2DTranspose,
    )
    return isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, not_plain)


class _Padding(NamedTuple):
    """The explicit padding in front of a convolution and the size it pads."""

    pad: tuple[tuple[int, int], tuple[int, int]]
    size: tuple[int | None, int | None]


def _padding_of(
    call: LayerCall, calls: list[LayerCall], producer: dict[Any, int]
) -> _Padding | None:
    """The ZeroPadding2D that feeds ``call`` (None when it is fed otherwise)."""
    if len(call.inputs) != 1:
        return None
    source = producer.get(tensor_key(call.inputs[0]))
    if source is None or not isinstance(unwrap(calls[source].layer), keras.layers.ZeroPadding2D):
        return None
    pad = unwrap(calls[source].layer).padding
    shape = calls[source].in_shape()
    return _Padding((tuple(pad[0]), tuple(pad[1])), (shape[1], shape[2]))


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding (before, after) of one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _padding_reason(
    layer: keras.layers.Layer, padding: _Padding | None, want: int, stride: int
) -> str:
    """Why the layer's effective padding is not ``want`` on every side (``""`` if it is)."""
    kernel = layer.kernel_size[0]
    if stride == 1 and layer.padding == "same":
        return ""
    if layer.padding == "same":
        return (
            f"padding='same' with stride {stride} stays TensorFlow SAME padding, which XNNPACK's "
            f"sparse path refuses; use ZeroPadding2D((({want}, {want}), ({want}, {want}))) and "
            "padding='valid'"
        )
    symmetric = ((want, want), (want, want))
    if padding is None or padding.pad != symmetric:
        found = "no padding" if padding is None else f"padding {padding.pad}"
        return f"{found} in front (XNNPACK's sparse path needs {want} pixel(s) on every side)"
    if stride == 1:
        return ""
    folds = all(
        n is not None and _same_padding(n, kernel, stride) == (want, want) for n in padding.size
    )
    if folds:
        return (
            f"its {padding.pad} padding equals SAME padding at input size {padding.size}, so the "
            "TFLite converter folds it into SAME padding, which XNNPACK's sparse path refuses "
            "for stride 2; use an even input size"
        )
    return ""


def _role(call: LayerCall, padding: _Padding | None) -> _Role:
    """The layer's role in XNNPACK's sparse subgraph (XNNPACK's compatibility rules)."""
    layer = unwrap(call.layer)
    rank4 = all(len(tuple(t.shape)) == 4 for t in call.inputs + call.outputs)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return _Role(_PAD)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _depthwise_role(layer, padding)
    if _is_conv(layer):
        return _conv_role(layer, call, padding)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return _Role(_INSIDE if getattr(layer, "keepdims", False) else _END)
    if isinstance(layer, keras.layers.Add | keras.layers.Multiply):
        return _Role(_INSIDE) if rank4 else _Role(_OUTSIDE, "inputs are not 4-D")
    if isinstance(layer, _IDENTITY_AT_INFERENCE):
        return _Role(_INSIDE)
    if isinstance(layer, keras.layers.BatchNormalization | keras.layers.ReLU):
        return _Role(_INSIDE) if rank4 else _Role(_OUTSIDE, "not 4-D")
    if isinstance(layer, keras.layers.Activation):
        if is_elementwise(layer.activation) and rank4:
            return _Role(_INSIDE)
        return _Role(_OUTSIDE, "not an element-wise activation of a 4-D tensor")
    symbol = getattr(layer, "symbol", None)
    if symbol in _ELEMENTWISE_OPS and rank4:
        return _Role(_INSIDE)
    return _Role(_OUTSIDE, "XNNPACK has no NCHW (sparse-mode) kernel for this layer")


def _conv_role(layer: keras.layers.Layer, call: LayerCall, padding: _Padding | None) -> _Role:
    kernel, strides = tuple(layer.kernel_size), tuple(layer.strides)
    if getattr(layer, "groups", 1) != 1 or tuple(layer.dilation_rate) != (1, 1):
        return _Role(_OUTSIDE, "grouped or dilated convolution")
    if layer.data_format != "channels_last":
        return _Role(_OUTSIDE, "channels_first convolution")
    if kernel == (1, 1):
        if strides != (1, 1):
            return _Role(_OUTSIDE, f"1x1 convolution with strides {strides}")
        return _Role(_INSIDE)
    channels = call.in_shape()[-1]
    if kernel == _FIRST_KERNEL and strides == _FIRST_STRIDE and channels == _FIRST_CHANNELS:
        reason = _padding_reason(layer, padding, 1, 2)
        if reason:
            return _Role(_OUTSIDE, f"first convolution: {reason}")
        return _Role(_START)
    return _Role(
        _OUTSIDE,
        f"a {kernel[0]}x{kernel[1]} stride-{strides[0]} convolution on {channels} channels "
        "(XNNPACK's sparse path takes 1x1 convolutions, and a 3x3 stride-2 one on 3 "
        "channels at the start)",
    )


def _depthwise_role(layer: keras.layers.Layer, padding: _Padding | None) -> _Role:
    kernel, strides = tuple(layer.kernel_size), tuple(layer.strides)
    if layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
        return _Role(_OUTSIDE, "depth multiplier or dilation other than 1")
    if kernel[0] != kernel[1] or kernel[0] not in _DEPTHWISE_KERNELS:
        return _Role(_OUTSIDE, f"kernel {kernel} (XNNPACK's sparse path takes 3x3 and 5x5)")
    if strides[0] != strides[1] or strides[0] not in _STRIDES:
        return _Role(_OUTSIDE, f"strides {strides}")
    reason = _padding_reason(layer, padding, kernel[0] // 2, strides[0])
    return _Role(_OUTSIDE, reason) if reason else _Role(_INSIDE)


def _repad(model: keras.Model) -> tuple[keras.Model, list[str]]:
    """A copy of ``model`` whose stride-2 convolutions XNNPACK can run sparse, and their names.

    Only layers refused for their padding alone are changed, and only where the
    output shape stays (an even input size); the copy gets every weight by
    layer name.
    """
    calls = layer_calls(model)
    producer = {tensor_key(t): i for i, call in enumerate(calls) for t in call.outputs}
    todo = {}
    for call in calls:
        layer = unwrap(call.layer)
        if not (isinstance(layer, keras.layers.DepthwiseConv2D) or _is_conv(layer)):
            continue
        kernel, strides = tuple(layer.kernel_size), tuple(layer.strides)
        padding = _padding_of(call, calls, producer)
        size = call.in_shape()[1:3] if padding is None else padding.size
        want = kernel[0] // 2
        if strides != (2, 2) or kernel[0] != kernel[1] or None in size or any(n % 2 for n in size):
            continue
        if _padding_reason(layer, padding, want, 2):
            pad_layer = None
            if padding is not None:
                pad_layer = unwrap(calls[producer[tensor_key(call.inputs[0])]].layer).name
            elif layer.padding == "valid":
                continue  # no padding at all: repadding would change the output shape
            todo[layer.name] = (want, pad_layer)
    if not todo:
        return model, []
    if isinstance(model, keras.Sequential) or not hasattr(model, "get_config"):
        raise ValueError(
            f"latency_policy can repad only functional models; {model.name!r} is Sequential: "
            "rebuild it with keras.Model(inputs, outputs), or pass repad=False"
        )
    config = copy.deepcopy(model.get_config())
    names = {entry["config"]["name"]: entry for entry in config["layers"]}
    layers = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name in todo:
            want, pad_layer = todo[name]
            symmetric = ((want, want), (want, want))
            if pad_layer is not None:
                names[pad_layer]["config"]["padding"] = symmetric
            else:
                pad_name = f"{name}_xnnpack_pad"
                layers.append(
                    {
                        "class_name": "ZeroPadding2D",
                        "name": pad_name,
                        "config": {"name": pad_name, "padding": symmetric},
                        "inbound_nodes": entry["inbound_nodes"],
                    }
                )
                entry["inbound_nodes"] = [[[pad_name, 0, 0, {}]]]
            entry["config"]["padding"] = "valid"
        layers.append(entry)
    config["layers"] = layers
    repadded = keras.Model.from_config(config)
    for layer in repadded.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return repadded, sorted(todo)
