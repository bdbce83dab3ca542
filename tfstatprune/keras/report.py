"""How sparse a model is, layer by layer, and why.

A zero in a layer's weights is there for one of two reasons: the layer's own
mask pruned it, or it sits in an input row that reads only dead units of an
earlier layer (:mod:`tfstatprune.keras.consistency`). :func:`sparsity_report`
counts both.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tfstatprune._keras import keras
from tfstatprune._translate import require_tf_keras_model
from tfstatprune.keras.consistency import dead_units_of
from tfstatprune.keras.graph import trace_units, unwrap
from tfstatprune.keras.layers import iter_layers, prunable_weights
from tfstatprune.stats.keys import weight_keys
from tfstatprune.tables import Table, format_text

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report"]


class LayerSparsity(NamedTuple):
    """The zeros of one layer's prunable weights (kernel and bias).

    Attributes:
      layer: the layer's name.
      weights: entries of its kernel and bias.
      zeros: entries that are 0 (or masked out, for a wrapped layer).
      own: zeros of the layer's own pruning: ``zeros - upstream``.
      upstream: zeros in kernel input rows that read only dead units of
        earlier layers (outside the layer's own dead units).
      units: the layer's units/filters (last kernel axis).
      dead_units: units whose kernel slice and bias are all 0.
    """

    layer: str
    weights: int
    zeros: int
    own: int
    upstream: int
    units: int
    dead_units: int

    @property
    def sparsity(self) -> float:
        """``zeros / weights``."""
        return self.zeros / self.weights if self.weights else 0.0


class SparsityReport(NamedTuple):
    """:func:`sparsity_report`'s table: one :class:`LayerSparsity` per prunable layer."""

    layers: list[LayerSparsity]

    @property
    def total(self) -> LayerSparsity:
        """The sums over all layers."""
        fields = LayerSparsity._fields[1:]
        return LayerSparsity("total", *(sum(getattr(r, f) for r in self.layers) for f in fields))

    def __str__(self) -> str:
        header = ("layer", "weights", "zeros", "own", "upstream", "sparsity", "dead units")
        rows = [
            (
                row.layer,
                f"{row.weights:,}",
                f"{row.zeros:,}",
                f"{row.own:,}",
                f"{row.upstream:,}",
                f"{row.sparsity:.1%}",
                f"{row.dead_units}/{row.units}",
            )
            for row in [*self.layers, self.total]
        ]
        return format_text(Table(header, rows, "l" + "r" * (len(header) - 1)))


def _values(layer: keras.layers.Layer) -> tuple[keras.layers.Layer, dict[str, np.ndarray]]:
    """The inner layer and its prunable weights, masked when it is wrapped."""
    inner = unwrap(layer)
    keys = weight_keys(inner)
    masks = {w.ref(): m.numpy() for w, m, _ in getattr(layer, "pruning_vars", [])}
    found = {}
    for weight in prunable_weights(inner, prune_bias=True):
        value = weight.numpy()
        if weight.ref() in masks:
            value = value * masks[weight.ref()]
        found[keys[weight]] = value
    return inner, found


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Per prunable layer: weights, zeros, and how many zeros are its own or an upstream unit's.

    Works on plain models (zeros are zero weights) and on models wrapped for
    pruning (zeros are masked entries). A unit is dead when its kernel slice
    and its bias are all 0; an input row of a Dense/Conv kernel is dead when
    every unit feeding it is dead (followed through the layers
    :mod:`tfstatprune.keras.graph` knows).

    Example::

        pruned = tsp.prune_once(model, data, 0.5, "wald", granularity="unit")
        print(tsp.sparsity_report(pruned))

    Raises:
      TypeError, ValueError: a model that is not a Sequential/functional tf_keras model.
    """
    model = require_tf_keras_model(model)
    graph = trace_units(model)
    layers = []
    values: dict[str, np.ndarray] = {}
    for layer in iter_layers(model):
        inner, found = _values(layer)
        if found:
            layers.append(inner)
            values.update(found)
    dead = dead_units_of(graph, [layer.name for layer in layers], values)
    dead_rows = graph.dead_rows(dead)
    rows = []
    for layer in layers:
        kernel = getattr(layer, "kernel", None)
        keys = weight_keys(layer)
        found = [values[keys[w]] for w in prunable_weights(layer, prune_bias=True)]
        zeros = sum(int(np.count_nonzero(v == 0)) for v in found)
        upstream, units, dead_units = 0, 0, 0
        if kernel is not None and np.ndim(values[keys[kernel]]) >= 2:
            k = values[keys[kernel]]
            units = int(k.shape[-1])
            own_dead = dead.get(layer.name, np.zeros(units, bool))
            dead_units = int(own_dead.sum())
            rows_dead = dead_rows.get(layer.name)
            if rows_dead is not None:
                upstream = int(np.count_nonzero((k == 0) & rows_dead[:, None] & ~own_dead))
        rows.append(
            LayerSparsity(
                layer.name,
                sum(int(v.size) for v in found),
                zeros,
                zeros - upstream,
                upstream,
                units,
                dead_units,
            )
        )
    return SparsityReport(rows)
