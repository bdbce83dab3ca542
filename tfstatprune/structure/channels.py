"""The channel graph: one walk of a model that follows every channel, and the
union-find of channels that must be kept or removed together.

Every entry of a tensor's last axis gets a *slot*. A Dense/Conv unit starts
one; layers that keep channels in place pass the slot on (the same slot in
the next tensor); ``Concatenate`` lays slots side by side; ``Flatten``/
``Reshape`` repeat them; an element-wise merge (``Add``, ``Multiply``, ...)
makes a new slot per channel whose *parents* are channel ``j`` of every input
and couples them (a union): they can only go together. Walls (layers not
followed, model inputs, nested models) give *fixed* slots, which never go.

Two readings of the same graph:

* :meth:`ChannelGraph.alive`: a slot is alive when a live unit or a fixed
  slot feeds it (through the merges' parents) -- mask consistency zeroes the
  input rows that read only dead slots;
* :meth:`ChannelGraph.roots`: the coupled groups (union-find) -- what
  :func:`tfstatprune.shrink` removes or keeps as a whole, and what a group
  score adds up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.structure.rules import ChannelRule, rule_for
from tfstatprune.structure.walk import (
    LayerCall,
    TensorKey,
    layer_calls,
    require_graph,
    tensor_key,
)

__all__ = ["ChannelGraph", "Wall", "channel_graph"]

_UNIT, _FIXED, _MERGED = 0, 1, 2


class Wall(NamedTuple):
    """A call channels are not followed through.

    Attributes:
      call: the layer call.
      reason: why (for error messages).
      slots: the slots of its inputs that reach it.
    """

    call: LayerCall
    reason: str
    slots: np.ndarray


class ChannelGraph:
    """The slots of every tensor of a model and how they are coupled.

    Attributes:
      calls: every layer call, inputs first.
      rules: ``{id(call): rule}`` for the calls channels are followed through.
      channels: ``{tensor key: slots of its last axis}`` (None: no channel axis).
      units: ``{layer name: its units' slots}`` for Dense/Conv layers (a layer
        called twice keeps its units).
      producer_calls: ``(call, slots)`` per call of a Dense/Conv layer.
      reads: ``(call, slots)``: the input channels each Dense/Conv call reads
        through its kernel rows ``[..., c, :]``.
      walls: every :class:`Wall` that channels reach.
      kept: slots that must stay because a merge they enter also reads
        something not followed.
    """

    def __init__(self) -> None:
        self.calls: list[LayerCall] = []
        self.rules: dict[int, ChannelRule] = {}
        self.channels: dict[TensorKey, np.ndarray | None] = {}
        self.units_of: dict[str, np.ndarray] = {}
        self.producer_calls: list[tuple[LayerCall, np.ndarray]] = []
        self.reads: list[tuple[LayerCall, np.ndarray]] = []
        self.walls: list[Wall] = []
        self.kept: list[np.ndarray] = []
        self._kind: list[int] = []
        self._parent: list[int] = []
        self._parents: dict[int, list[int]] = {}

    # -- building (called by the rules)

    @property
    def size(self) -> int:
        """The number of slots."""
        return len(self._kind)

    def _new(self, count: int, kind: int) -> np.ndarray:
        start = self.size
        self._kind.extend([kind] * count)
        self._parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def fixed(self, tensor: Any) -> np.ndarray | None:
        """Fresh fixed slots for ``tensor``'s channels (None without a channel axis)."""
        shape = tuple(tensor.shape)
        if len(shape) < 2 or shape[-1] is None:
            return None
        return self._new(shape[-1], _FIXED)

    def units(self, call: LayerCall) -> np.ndarray:
        """The slots of a Dense/Conv layer's units (the same on every call)."""
        layer = call.inner
        if layer.name not in self.units_of:
            self.units_of[layer.name] = self._new(int(layer.kernel.shape[-1]), _UNIT)
        slots = self.units_of[layer.name]
        self.producer_calls.append((call, slots))
        return slots

    def read(self, call: LayerCall, slots: np.ndarray) -> None:
        """``call`` reads ``slots`` through its kernel rows."""
        self.reads.append((call, slots))

    def keep(self, inputs: Sequence[np.ndarray]) -> None:
        """These slots must stay (a merge also reads something not followed)."""
        self.kept.extend(inputs)

    def merge(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """New slots, channel ``j`` fed by and coupled to channel ``j`` of every input."""
        slots = self._new(len(inputs[0]), _MERGED)
        for j, slot in enumerate(slots.tolist()):
            parents = [int(found[j]) for found in inputs]
            self._parents[slot] = parents
            for parent in parents:
                self._union(slot, parent)
        return slots

    def _find(self, slot: int) -> int:
        parent = self._parent
        while parent[slot] != slot:
            parent[slot] = parent[parent[slot]]
            slot = parent[slot]
        return slot

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra

    # -- reading

    def slots_of(self, tensor: Any) -> np.ndarray | None:
        return self.channels.get(tensor_key(tensor))

    def roots(self) -> np.ndarray:
        """The coupled group (a representative slot) of every slot."""
        return np.array([self._find(slot) for slot in range(self.size)], dtype=np.int64)

    def coupled_units(self) -> list[list[tuple[str, int]]]:
        """The units that element-wise merges couple: one list of ``(layer name,
        unit index)`` per coupled group of two or more units, in slot order."""
        root = self.roots()
        found: dict[int, list[tuple[str, int]]] = {}
        for name, slots in self.units_of.items():
            for index, slot in enumerate(slots.tolist()):
                found.setdefault(int(root[slot]), []).append((name, index))
        return [members for members in found.values() if len(members) > 1]

    def is_fixed(self) -> np.ndarray:
        """Per slot: a fixed slot (model input, output of a wall)."""
        return np.asarray(self._kind, dtype=np.int64) == _FIXED

    def is_unit(self) -> np.ndarray:
        """Per slot: a unit of a Dense/Conv layer."""
        return np.asarray(self._kind, dtype=np.int64) == _UNIT

    def alive(self, dead_units: np.ndarray) -> np.ndarray:
        """Per slot: fed by a live unit or a fixed slot (``dead_units``: per slot, only
        read at unit slots)."""
        alive = self.is_fixed() | (self.is_unit() & ~np.asarray(dead_units, bool))
        for slot, parents in self._parents.items():  # parents are older slots
            alive[slot] = alive[parents].any()
        return alive


Extra = Callable[[LayerCall], str | None]


def channel_graph(model: keras.Model, what: str, *, wall: Extra | None = None) -> ChannelGraph:
    """Walk ``model`` once, following every channel (see the module docstring).

    Args:
      model: a Sequential or functional tf_keras model (pruning wrappers are
        looked through).
      what: the job, for the error on a model whose graph is not known.
      wall: an extra reason to stop at a call (``shrink`` stops at shared
        layers); None to follow the registry alone.

    Raises:
      ValueError, TypeError: see :func:`tfstatprune.structure.walk.require_graph`.
    """
    require_graph(model, what)
    graph = ChannelGraph()
    graph.calls = layer_calls(model)
    for call in graph.calls:
        inputs = [graph.channels.get(tensor_key(t)) for t in call.inputs]
        rule = rule_for(call.inner)
        reason = rule.unsupported(call) or (None if wall is None else wall(call))
        if reason is None:
            graph.rules[id(call)] = rule
            outputs = rule.forward(call, inputs, graph)
        else:
            for found in inputs:
                if found is not None:
                    graph.walls.append(Wall(call, reason, found))
            outputs = [graph.fixed(tensor) for tensor in call.outputs]
        for tensor, found in zip(call.outputs, outputs, strict=True):
            graph.channels[tensor_key(tensor)] = found
    return graph
