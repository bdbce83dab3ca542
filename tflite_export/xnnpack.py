"""Which part of a .tflite model XNNPACK runs in its sparse (NCHW) mode.

XNNPACK, LiteRT's default CPU delegate, rewrites a float subgraph to NCHW
layout with sparse 1x1-convolution kernels (Elsen et al. 2020, "Fast sparse
ConvNets") when all of this holds; :func:`check` tests it on the file with
XNNPACK's own rules (``xnn_subgraph_rewrite_for_nchw``):

1. the delegate asks for it: LiteRT's XNNPACK delegate sets
   ``XNN_FLAG_HINT_SPARSE_INFERENCE`` only when some weight of the delegated
   graph is stored sparse and expanded by ``DENSIFY`` (``export(sparse=True)``
   does that from 30 % zeros); a file with zeros stored dense never runs sparse;
2. a cluster of NCHW-compatible operators: it enters through a 3x3 stride-2
   ``CONV_2D`` of 3 input channels padded by 1 on every side (a ``PAD`` op
   XNNPACK fuses into a ``VALID`` convolution; TFLite ``SAME`` padding with
   stride 2 is refused), holds only 1x1 stride-1 ``CONV_2D``, 3x3/5x5
   ``DEPTHWISE_CONV_2D`` (stride 1 with ``SAME`` padding, or a fused
   symmetric ``PAD``), ``ADD``/``MUL`` of 4-D tensors (constants scalar or
   per-channel), element-wise activations, and leaves through ``MEAN`` (global
   average pooling); every tensor inside is read only by operators inside;
3. more than 2/3 of the weights of the cluster's 1x1 convolutions are zero
   (``num_zeroes * 3 > num_params * 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tflite_export.flatbuffer import _NUMPY_TYPES, _buffer, _code_name, _indices, _shape, _unpack

__all__ = ["SparseSubgraph", "XnnpackCheck", "check"]

#: XNNPACK goes sparse when its 1x1 weights are more than this share zero.
MIN_ZERO_SHARE = 2 / 3
_SAME = 0  # schema.Padding.SAME
_FLOAT32 = 0  # schema.TensorType.FLOAT32
_NCHW, _ENTER, _LEAVE, _BROKEN = 1, 2, 4, 8  # XNNPACK's XNN_LAYOUT_FLAG_* values
_UNARY = frozenset(
    {
        "ABS",
        "CEIL",
        "ELU",
        "FLOOR",
        "HARD_SWISH",
        "LEAKY_RELU",
        "LOGISTIC",
        "NEG",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "ROUND",
        "SQUARE",
        "SQRT",
        "TANH",
    }
)
_BINARY = frozenset({"ADD", "MUL"})
#: Operators that only turn a constant into another constant at load.
_CONSTANT_OPS = frozenset({"DENSIFY", "DEQUANTIZE"})


@dataclass(frozen=True)
class SparseSubgraph:
    """One cluster of NCHW-compatible operators and what XNNPACK does with it.

    Attributes:
      first_op, last_op: graph positions of its entry convolution and its MEAN.
      operators: number of operators in it.
      pointwise: number of its 1x1 convolutions.
      zero_share: fraction of zeros in their weights.
      problem: why XNNPACK runs it dense ("" when it runs sparse).
    """

    first_op: int
    last_op: int
    operators: int
    pointwise: int
    zero_share: float
    problem: str

    @property
    def sparse(self) -> bool:
        """Whether XNNPACK runs this subgraph in sparse mode."""
        return not self.problem


@dataclass(frozen=True)
class XnnpackCheck:
    """The verdict of :func:`check`: the candidate subgraphs, or why there is none."""

    subgraphs: tuple[SparseSubgraph, ...]
    reason: str = ""

    @property
    def sparse(self) -> bool:
        """Whether some subgraph runs sparse."""
        return any(s.sparse for s in self.subgraphs)

    def __str__(self) -> str:
        if not self.subgraphs:
            return f"XNNPACK sparse inference: none ({self.reason})"
        lines = []
        for s in self.subgraphs:
            verdict = (
                "runs sparse (on ARM; XNNPACK runs dense on x86 CPUs with AVX)"
                if s.sparse
                else f"runs dense: {s.problem}"
            )
            lines.append(
                f"XNNPACK sparse inference: ops #{s.first_op}..#{s.last_op} ({s.operators} ops, "
                f"{s.pointwise} 1x1 convolutions, {s.zero_share:.1%} of their weights zero, "
                f"more than {MIN_ZERO_SHARE:.1%} needed): {verdict}"
            )
        return "\n".join(lines)


class _Graph:
    """The operators of the main subgraph, with producers, readers and constants."""

    def __init__(self, content: bytes):
        flat = _unpack(content, "model")
        graph = flat.subgraphs[0]
        codes = [_code_name(code) for code in flat.operatorCodes or []]
        self.ops = [(codes[op.opcodeIndex], op) for op in graph.operators or []]
        self.tensors = graph.tensors
        self.outputs = set(_indices(graph.outputs))
        self.producer: dict[int, int] = {}
        self.readers: dict[int, list[int]] = {}
        for n, (_, op) in enumerate(self.ops):
            for t in _indices(op.outputs):
                self.producer[t] = n
            for t in _indices(op.inputs):
                if t >= 0:
                    self.readers.setdefault(t, []).append(n)
        self.data = {
            t: _buffer(flat, tensor, content)
            for t, tensor in enumerate(self.tensors)
            if _buffer(flat, tensor, content) is not None
        }
        self.densified = False
        for name, op in self.ops:
            if name in _CONSTANT_OPS and self.is_constant(_indices(op.inputs)[0]):
                self.densified |= name == "DENSIFY"

    def source(self, t: int) -> int:
        """The stored tensor behind ``t`` (through DENSIFY / DEQUANTIZE)."""
        n = self.producer.get(t)
        while n is not None and self.ops[n][0] in _CONSTANT_OPS:
            t = _indices(self.ops[n][1].inputs)[0]
            n = self.producer.get(t)
        return t

    def is_constant(self, t: int) -> bool:
        return self.source(t) in self.data

    def shape(self, t: int) -> tuple[int, ...]:
        return _shape(self.tensors[t])

    def dynamic_inputs(self, n: int) -> list[int]:
        return [t for t in _indices(self.ops[n][1].inputs) if t >= 0 and not self.is_constant(t)]

    def zeros(self, t: int) -> tuple[int, int]:
        """``(zeros, size)`` of a constant tensor, stored dense or sparse."""
        s = self.source(t)
        dtype = _NUMPY_TYPES.get(self.tensors[s].type)
        size = int(np.prod(self.shape(t)))
        if dtype is None:
            return 0, size
        return size - int(np.count_nonzero(self.data[s].view(dtype))), size

    def pad_of(self, n: int) -> tuple[int, list[list[int]]] | None:
        """The PAD op feeding op ``n`` that XNNPACK fuses into it, and its paddings."""
        t = _indices(self.ops[n][1].inputs)[0]
        p = self.producer.get(t)
        if p is None or self.ops[p][0] not in ("PAD", "PADV2") or len(self.readers[t]) != 1:
            return None
        inputs = _indices(self.ops[p][1].inputs)
        if not self.is_constant(inputs[1]):
            return None
        raw = self.data[self.source(inputs[1])]
        dtype = _NUMPY_TYPES.get(self.tensors[self.source(inputs[1])].type, np.int32)
        pads = raw.view(dtype).reshape(-1, 2).tolist()
        if len(pads) != 4 or any(pads[0]) or any(pads[3]):
            return None
        return p, pads


def check(content: bytes) -> XnnpackCheck:
    """What XNNPACK's sparse inference does with a .tflite model (see the module doc).

    Args:
      content: the .tflite bytes.

    Returns:
      An :class:`XnnpackCheck` listing each candidate subgraph with its 1x1
      weights' zero share and, when it runs dense, the reason.
    """
    g = _Graph(content)
    fused: set[int] = set()
    flags = []
    for n in range(len(g.ops)):
        flag, pad = _layout(g, n)
        flags.append(flag)
        if pad is not None:
            fused.add(pad)
    for p in fused:
        flags[p] = -1  # fused into its convolution: not an XNNPACK node
    leader = list(range(len(g.ops)))
    broken: dict[int, str] = {}

    def find(n: int) -> int:
        while leader[n] != n:
            leader[n] = leader[leader[n]]
            n = leader[n]
        return n

    for n, flag in enumerate(flags):
        if flag <= 0 or not flag & (_NCHW | _LEAVE):
            continue
        for t in g.dynamic_inputs(n):
            p = g.producer.get(t)
            if p is not None and p in fused:
                t = g.dynamic_inputs(p)[0]
                p = g.producer.get(t)
            if p is None:
                broken.setdefault(n, f"{_name(g, n)} reads the model input")
            elif flags[p] > 0 and flags[p] & (_ENTER | _NCHW):
                leader[find(p)] = find(n)
            else:
                broken.setdefault(n, f"{_name(g, n)} reads {_name(g, p)}, {_why(g, p)}")
    clusters: dict[int, list[int]] = {}
    for n, flag in enumerate(flags):
        if flag > 0:
            clusters.setdefault(find(n), []).append(n)
    subgraphs = [_verdict(g, flags, sorted(ns), broken, fused) for ns in clusters.values()]
    subgraphs = [s for s in subgraphs if s is not None]
    if not subgraphs:
        return XnnpackCheck((), _no_entry(g))
    return XnnpackCheck(tuple(sorted(subgraphs, key=lambda s: s.first_op)))


def _verdict(
    g: _Graph, flags: list[int], members: list[int], broken: dict[int, str], fused: set[int]
) -> SparseSubgraph | None:
    entries = [n for n in members if flags[n] & _ENTER]
    leaves = [n for n in members if g.ops[n][0] == "MEAN"]
    if not entries or not leaves:
        return None
    zeros = size = pointwise = 0
    for n in members:
        if g.ops[n][0] == "CONV_2D" and g.shape(_indices(g.ops[n][1].inputs)[1])[1:3] == (1, 1):
            z, s = g.zeros(_indices(g.ops[n][1].inputs)[1])
            zeros, size, pointwise = zeros + z, size + s, pointwise + 1
    problem = next((broken[n] for n in members if n in broken), "")
    inside = set(members) | fused
    if not problem:
        for n in members:
            if n in leaves:
                continue
            for t in _indices(g.ops[n][1].outputs):
                outside = [r for r in g.readers.get(t, []) if r not in inside]
                if outside or t in g.outputs:
                    reader = _name(g, outside[0]) if outside else "the model output"
                    problem = f"{_name(g, n)}'s output is also read by {reader}"
                    break
            if problem:
                break
    if not problem and not g.densified:
        problem = (
            "no weight is stored sparse, and LiteRT asks XNNPACK for sparse inference only "
            "when one is (export with sparse=True)"
        )
    if not problem and not (size and zeros * 3 > size * 2):
        problem = f"1x1 weights {zeros / max(size, 1):.1%} zero, not more than 2/3"
    return SparseSubgraph(
        first_op=min(entries),
        last_op=max(leaves),
        operators=len(members),
        pointwise=pointwise,
        zero_share=zeros / max(size, 1),
        problem=problem,
    )


def _name(g: _Graph, n: int) -> str:
    return f"{g.ops[n][0]} #{n}"


def _why(g: _Graph, n: int) -> str:
    flag, _ = _layout(g, n, explain=True)
    return flag if isinstance(flag, str) else "which XNNPACK runs in NHWC only"


def _no_entry(g: _Graph) -> str:
    for n, (name, op) in enumerate(g.ops):
        if name != "CONV_2D":
            continue
        filt = g.shape(_indices(op.inputs)[1])
        o = op.builtinOptions
        if filt[1:] == (3, 3, 3) and (o.strideH, o.strideW) == (2, 2):
            return f"{_name(g, n)}, the 3x3 stride-2 convolution on 3 channels, {_why(g, n)}"
    return "no 3x3 stride-2 CONV_2D on 3 input channels starts a subgraph"


def _layout(g: _Graph, n: int, explain: bool = False) -> tuple[Any, int | None]:
    """XNNPACK's layout flags of op ``n`` (or, with ``explain``, why it has none)."""
    name, op = g.ops[n]
    inputs = _indices(op.inputs)
    rank4 = all(len(g.shape(t)) == 4 for t in g.dynamic_inputs(n))
    if not inputs or g.tensors[inputs[0]].type != _FLOAT32:
        return ("a non-float operator" if explain else 0), None
    if name == "CONV_2D":
        return _conv_layout(g, n, explain)
    if name == "DEPTHWISE_CONV_2D":
        return _depthwise_layout(g, n, explain)
    if name == "MEAN" and rank4:
        return _NCHW | _LEAVE, None
    if name in _BINARY and rank4 and len(g.dynamic_inputs(n)) >= 1:
        for t in inputs:
            if g.is_constant(t) and sum(d != 1 for d in g.shape(t)) > 1:
                return ("a constant operand that is not a scalar or vector" if explain else 0), None
        return _NCHW, None
    if name in _UNARY and rank4:
        return _NCHW, None
    return (f"an operator ({name}) XNNPACK runs in NHWC only" if explain else 0), None


def _conv_layout(g: _Graph, n: int, explain: bool) -> tuple[Any, int | None]:
    op = g.ops[n][1]
    o = op.builtinOptions
    filt = g.shape(_indices(op.inputs)[1])  # [out, kh, kw, in]
    if (o.dilationHFactor, o.dilationWFactor) != (1, 1):
        return ("a dilated convolution" if explain else 0), None
    strides = (o.strideH, o.strideW)
    if filt[1:3] == (1, 1):
        if strides != (1, 1):
            return ("a strided 1x1 convolution" if explain else 0), None
        return _NCHW, None
    if filt[1:] != (3, 3, 3) or strides != (2, 2):
        return ("a convolution other than 1x1 or the 3x3 stride-2 stem" if explain else 0), None
    return _padded(g, n, o.padding, 1, 2, _ENTER, explain)


def _depthwise_layout(g: _Graph, n: int, explain: bool) -> tuple[Any, int | None]:
    op = g.ops[n][1]
    o = op.builtinOptions
    filt = g.shape(_indices(op.inputs)[1])  # [1, kh, kw, out]
    if (o.dilationHFactor, o.dilationWFactor) != (1, 1):
        return ("a dilated depthwise convolution" if explain else 0), None
    if filt[1] != filt[2] or filt[1] not in (3, 5) or o.strideH != o.strideW:
        return ("a depthwise kernel other than 3x3/5x5 or unequal strides" if explain else 0), None
    if o.strideH not in (1, 2) or g.shape(_indices(op.inputs)[0])[-1] != filt[-1]:
        return ("a depthwise stride > 2 or depth multiplier > 1" if explain else 0), None
    return _padded(g, n, o.padding, filt[1] // 2, o.strideH, _NCHW, explain)


def _padded(
    g: _Graph, n: int, padding: int, want: int, stride: int, flag: int, explain: bool
) -> tuple[Any, int | None]:
    """``flag`` when op ``n`` is padded by ``want`` on every side after PAD fusion."""
    if padding == _SAME:
        if stride == 1:
            return flag, None
        return (
            f"padded SAME with stride {stride} (XNNPACK's sparse path needs explicit "
            f"padding of {want} on every side)"
            if explain
            else 0
        ), None
    pad = g.pad_of(n)
    if pad is None or pad[1][1:3] != [[want, want], [want, want]]:
        found = "no PAD" if pad is None else f"PAD {pad[1][1:3]}"
        return (f"padded VALID after {found}, not {want} on every side" if explain else 0), None
    return flag, pad[0]
