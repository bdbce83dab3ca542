"""Structured pruning kept consistent across layers.

With ``granularity="unit"`` or ``"filter"`` a pruned unit is gone: its kernel
column (or filter) and bias are zero, and so are the input rows that read it
in the next Dense/Conv layers -- ``kernel[..., c, :]`` of a convolution reading
channel ``c``, rows ``p * C + c`` of a Dense layer after ``Flatten`` -- however
many channel-preserving layers lie in between (activations, pooling, Dropout,
BatchNormalization, Add/Concatenate where they reconcile; see
:mod:`tfstatprune.keras.graph`). Those rows carry no information once the unit
is removed, so zeroing them makes the masks say what the network computes, the
sparsity counts honest (:func:`tfstatprune.sparsity_report`) and the model
ready for :func:`tfstatprune.shrink`.

A pruned unit whose activation of 0 is not 0 (sigmoid), or that a
BatchNormalization shifts, outputs a constant; zeroing the rows that read it
removes that constant too, as physically removing the unit would.

Where the rows are zeroed:

* :func:`tfstatprune.prune_once`: in the masks of the consuming layers that are
  pruned too, and directly in the weights of consuming layers that are not
  (the output layer, say);
* inside ``fit`` (:class:`tfstatprune.StatisticalPruning`): at every pruning
  step, in the masks of consuming layers that are wrapped for pruning;
  consuming layers that are not wrapped are left alone (their rows only read
  the pruned units' constant outputs, 0 for relu/linear/tanh units without
  BatchNormalization).

Output layers: removing a unit of a classifier's output layer removes a class,
so with ``"unit"``/``"filter"`` granularity the model's output layers
(:func:`tfstatprune.keras.graph.output_layers`) are pruned only when listed in
``layers=``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune.granularity import Granularity, check_granularity
from tfstatprune.keras.graph import UnitGraph, output_layers, trace_units
from tfstatprune.keras.layers import select_layers
from tfstatprune.stats.keys import key_of
from tfstatprune.structure.rules import Depthwise, rule_for

__all__ = [
    "UNIT_GRANULARITIES",
    "Propagation",
    "choose_layers",
    "coupled_units",
    "structured_layers",
    "dead_units_of",
    "follow_dead_units",
    "update_wrapper_masks",
    "zero_rows",
]

UNIT_GRANULARITIES = ("unit", "filter")


def choose_layers(
    model: keras.Model, layers: Sequence[str] | None, granularity: Granularity
) -> list[keras.layers.Layer]:
    """The layers to prune: ``layers``, or every prunable one but, for units and
    filters, the model's output layers and the depthwise convolutions (whose
    channels are their input's: they go with the filter before them).

    Raises:
      ValueError: as :func:`tfstatprune.keras.layers.select_layers`, or when
        only output layers are prunable and ``layers`` does not name them.
    """
    chosen = select_layers(model, layers)
    if layers is not None or check_granularity(granularity) not in UNIT_GRANULARITIES:
        return chosen
    outputs = set(output_layers(model))
    kept = [
        layer
        for layer in chosen
        if layer.name not in outputs and not isinstance(rule_for(layer), Depthwise)
    ]
    if not kept:
        raise ValueError(
            f"with granularity {granularity!r} the model's output layers {sorted(outputs)} "
            "are pruned only when listed in layers= (a unit of an output layer is an output "
            "of the model, a class); no other prunable layer is left"
        )
    return kept


def coupled_units(graph: UnitGraph, names: Collection[str]) -> list[list[tuple[str, int]]]:
    """The units of layers ``names`` coupled by element-wise merges (``Add``, the
    ``Multiply`` of a squeeze-excite block): ``[(layer name, unit index), ...]``
    per group (:meth:`tfstatprune.structure.ChannelGraph.coupled_units`).

    Such units can only be removed together (:func:`tfstatprune.shrink`
    removes a coupled channel when all of them are pruned), so they are
    scored and pruned as one group. Members outside ``names`` (layers not
    pruned) are left out; a group left with one member is no group.
    """
    found = []
    for members in graph.channels.coupled_units():
        inside = [member for member in members if member[0] in names]
        if len(inside) > 1:
            found.append(inside)
    return found


def zero_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values`` (a kernel ``[..., in, out]`` or its mask) with input ``rows`` set to 0.

    >>> zero_rows(np.ones((3, 2)), np.array([False, True, False])).tolist()
    [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    """
    values = np.asarray(values)
    keep = (~np.asarray(rows, bool)).astype(values.dtype)
    return values * keep.reshape(-1, 1)


def dead_units_of(
    graph: UnitGraph, names: Sequence[str], masks: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The pruned units of the producers ``names``: kernel slice and bias both 0.

    ``masks`` maps weight keys to masks (or to the weights themselves: 0
    counts as pruned); a producer whose kernel is not in ``masks`` is alive. A
    bias not in ``masks`` is read from the layer.
    """
    found = {}
    for name in names:
        layer = graph.layers.get(name)
        if name not in graph.producers or key_of(layer, layer.kernel) not in masks:
            continue
        kernel = np.asarray(masks[key_of(layer, layer.kernel)])
        dead = ~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            dead &= np.asarray(masks.get(key_of(layer, bias), bias.numpy())).reshape(-1) == 0
        found[name] = dead
    return found


class Propagation(NamedTuple):
    """What follows from pruned units downstream.

    Attributes:
      masks: the input masks (by weight key) with the dead input rows of the
        consuming layers whose kernels have masks set to 0.
      rows: ``{layer name: bool array of dead input rows}`` for consuming
        layers whose kernels have no mask (only layers with a dead row).
    """

    masks: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]


def follow_dead_units(
    graph: UnitGraph, producers: Sequence[str], masks: Mapping[str, np.ndarray]
) -> Propagation:
    """Zero the input rows that read the dead units of ``producers``.

    Args:
      graph: the model's :func:`~tfstatprune.keras.graph.trace_units`.
      producers: names of the layers pruned by units/filters.
      masks: masks by weight key (1 keep, 0 pruned), of the producers and of
        any consuming layer that is pruned too.
    """
    dead_rows = graph.dead_rows(dead_units_of(graph, producers, masks))
    new_masks, rows = dict(masks), {}
    for name, dead in dead_rows.items():
        if not dead.any():
            continue
        kernel = key_of(graph.layers[name], graph.layers[name].kernel)
        if kernel in new_masks:
            new_masks[kernel] = zero_rows(new_masks[kernel], dead)
        else:
            rows[name] = dead
    return Propagation(new_masks, rows)


def structured_layers(wrappers: Sequence[Any]) -> list[str]:
    """The layers of ``wrappers`` with unit/filter granularity (whose masks read the graph)."""
    return [w.layer.name for w in wrappers if w.granularity in UNIT_GRANULARITIES]


def consistent_masks(
    model: keras.Model,
    wrappers: Sequence[Any],
    masks: Mapping[str, np.ndarray],
    graph: UnitGraph | None = None,
) -> dict[str, np.ndarray]:
    """Inside ``fit``: new ``masks`` with the rows that read dead units zeroed.

    ``wrappers`` are the model's :class:`~tfstatprune.PruneStatistically`
    layers; the dead units are those of wrappers with unit/filter granularity,
    from ``masks`` where given and from the wrappers' current masks otherwise.
    ``graph``: the model's :func:`~tfstatprune.keras.graph.trace_units`, when
    the caller has it (traced here otherwise). Returns the masks named in ``masks``.
    """
    structured = structured_layers(wrappers)
    if not structured:
        return dict(masks)
    every = {k: v for w in wrappers for k, v in w.current_masks().items()}
    every.update(masks)
    result = follow_dead_units(trace_units(model) if graph is None else graph, structured, every)
    return {name: result.masks[name] for name in masks}


def update_wrapper_masks(
    model: keras.Model, wrappers: Sequence[Any], graph: UnitGraph | None = None
) -> None:
    """Inside ``fit``: zero, in the wrappers' masks, the rows that read dead units.

    Only masks that change are written, each wrapper keeping its recorded
    mask step (see :func:`consistent_masks`, also for ``graph``).
    """
    structured = structured_layers(wrappers)
    if not structured:
        return
    current = {w.layer.name: w.current_masks() for w in wrappers}
    masks = {k: v for found in current.values() for k, v in found.items()}
    result = follow_dead_units(trace_units(model) if graph is None else graph, structured, masks)
    for wrapper in wrappers:
        changed = {
            name: result.masks[name]
            for name, mask in current[wrapper.layer.name].items()
            if not np.array_equal(result.masks[name], mask)
        }
        if changed:
            wrapper.set_masks(changed, int(wrapper.mask_step.numpy()))
