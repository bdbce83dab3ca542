"""The plan of a statistics collection: which weights take which path, and a named layout.

Built once per model, weights, loss, curvature and strategy (and cached by
the collector), the plan says

- for each weight asked for, its layer and closed-form rule (:class:`Target`),
  or why it takes the generic ``vectorized_map`` path;
- which layers the probe records (:mod:`tfstatprune.stats.probe`) and which
  layer quantities (:mod:`tfstatprune.stats.quantities`) each one collects;
- the :class:`Layout` of the float64 accumulators: one named slot per weight
  and part (``("weight", i, "sum")``, ``"sumsq"``, ``"curvature"``), per layer,
  quantity and part (``("layer", j, "kronecker", "inputs")``, ...) and the two
  example counts (``("examples",)``, ``("skipped",)``). The step packs its
  values by these names and the collector unpacks the totals by them, so the
  allocation and the decoding cannot disagree.

Example:
  >>> import numpy as np
  >>> layout = Layout()
  >>> layout.add(("weight", 0, "sum"), (2, 3))
  >>> layout.add(("examples",), ())
  >>> values = {("examples",): 4.0, ("weight", 0, "sum"): np.ones((2, 3))}
  >>> [np.shape(v) for v in layout.pack(values)]
  [(2, 3), ()]
  >>> float(layout.unpack([np.ones((2, 3)), 4.0])[("examples",)])
  4.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.probe import Probe, hooked_layers
from tfstatprune.stats.quantities import CURVATURE, GRADIENTS, LayerQuantity
from tfstatprune.stats.registry import rule_for
from tfstatprune.stats.rules import GradientRule

__all__ = ["LayerTarget", "Layout", "Plan", "Target", "build_plan"]

# A slot name: ("weight", index, part), ("layer", index, quantity, part), ("examples",), ...
SlotName = tuple
WEIGHT_PARTS = ("sum", "sumsq", CURVATURE)
EXAMPLES = ("examples",)
SKIPPED = ("skipped",)


class Target(NamedTuple):
    """A weight asked for, its layer, and its rule and role (None: the generic path)."""

    variable: tf.Variable
    layer: keras.layers.Layer
    rule: GradientRule | None
    role: str | None


class LayerTarget(NamedTuple):
    """A layer quantity to collect: the probed layer (its index), its kernel, the quantity."""

    probed: int
    layer: keras.layers.Layer
    kernel: Target
    quantity: LayerQuantity


class Layout:
    """Named accumulator slots in allocation order (see module docstring)."""

    def __init__(self) -> None:
        self._index: dict[SlotName, int] = {}
        self.shapes: list[tuple[int, ...]] = []

    def add(self, name: SlotName, shape: Sequence[int]) -> None:
        """A new slot ``name`` of ``shape``; a name is given once."""
        if name in self._index:
            raise ValueError(f"accumulator slot {name} is already allocated")
        self._index[name] = len(self.shapes)
        self.shapes.append(tuple(shape))

    def __len__(self) -> int:
        return len(self.shapes)

    @tf.autograph.experimental.do_not_convert
    def pack(self, values: Mapping[SlotName, Any]) -> list[Any]:
        """``values`` in slot order; every slot must be given, nothing else."""
        unknown = set(values) - set(self._index)
        missing = set(self._index) - set(values)
        if unknown or missing:
            raise ValueError(f"accumulator values: unknown {unknown}, missing {missing}")
        return [values[name] for name in self._index]

    def unpack(self, totals: Sequence[Any]) -> dict[SlotName, np.ndarray]:
        """``{name: total}`` from the totals in slot order."""
        if len(totals) != len(self.shapes):
            raise ValueError(f"{len(totals)} totals for {len(self.shapes)} slots")
        return {name: np.asarray(totals[i]) for name, i in self._index.items()}


class Plan(NamedTuple):
    """What one collection computes (see module docstring).

    Attributes:
      targets: the weights asked for, in order.
      reasons: why the layer classes of the generic path have no rule.
      probe: records the probed layers (those with a closed-form target).
      rules: the rule of each probed layer, in probe order.
      generic: the targets of the generic path.
      layer_targets: the layer quantities to collect.
      layout: the named accumulator slots.
      hooked: layers whose statistics hook replaces their call.
      curvature: whether the curvature parts are collected.
      curved: per target, whether its diagonal curvature is collected (all
        of them with ``curvature``, unless ``diagonal_curvature=False`` left
        out the kernels of the layers with Kronecker factors).
    """

    targets: list[Target]
    reasons: dict[type, str]
    probe: Probe
    rules: list[GradientRule]
    generic: list[Target]
    layer_targets: list[LayerTarget]
    layout: Layout
    hooked: list[keras.layers.Layer]
    curvature: bool
    curved: tuple[bool, ...]


def _owners(model: keras.Model) -> dict[Any, keras.layers.Layer]:
    """Map ``variable.ref()`` -> the layer that created it.

    A wrapper (a pruning wrapper, say) may list its inner layer's weights as
    its own; the inner layer, which computes with them, wins.
    """
    owners: dict[Any, keras.layers.Layer] = {}
    for layer in [model, *model.submodules]:
        if not isinstance(layer, keras.layers.Layer):
            continue
        for v in getattr(layer, "_trainable_weights", []) + getattr(
            layer, "_non_trainable_weights", []
        ):
            known = owners.get(v.ref())
            if known is None or isinstance(known, keras.layers.Wrapper):
                owners[v.ref()] = layer
    return owners


def _targets(
    model: keras.Model, weights: Sequence[tf.Variable], closed_form: bool
) -> tuple[list[Target], dict[type, str]]:
    """Each weight with its layer and rule, and why layers without a rule have none."""
    owners = _owners(model)
    targets, reasons = [], {}
    for v in weights:
        layer = owners.get(v.ref())
        if layer is None:
            raise ValueError(f"weight {v.name} does not belong to model {model.name!r}")
        rule = rule_for(layer) if closed_form else None
        role = None
        if rule is not None:
            reason = rule.unsupported(layer)
            covered = {w.ref(): r for r, w in rule.weights(layer).items()} if not reason else {}
            role = covered.get(v.ref())
            if role is None:
                reasons.setdefault(type(layer), reason or f"its rule does not cover {v.name}")
                rule = None
        elif closed_form:
            reasons.setdefault(type(layer), "no rule is registered")
        targets.append(Target(v, layer, rule, role))
    return targets, reasons


def build_plan(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    closed_form: bool,
    curvature: bool,
    quantities: Sequence[LayerQuantity] = (),
    diagonal_curvature: bool = True,
) -> Plan:
    """The plan for ``weights`` of ``model`` (see module docstring).

    ``quantities``: the layer quantities to collect, for every probed layer
    whose kernel (role ``"kernel"``) is among ``weights`` and that the
    quantity applies to. ``diagonal_curvature=False``: no per-weight
    curvature for the kernel of a layer that collects a backward quantity
    (the Kronecker factors, whose output factor holds the curvature).
    """
    targets, reasons = _targets(model, weights, closed_form)
    probed = list({id(t.layer): t.layer for t in targets if t.rule is not None}.values())
    rules = {id(t.layer): t.rule for t in targets if t.rule is not None}
    kernels = {id(t.layer): t for t in targets if t.role == "kernel"}
    layer_targets = []
    for quantity in quantities:
        for j, layer in enumerate(probed):
            rule = rules[id(layer)]
            if id(layer) not in kernels or not quantity.applies(layer, rule):
                continue
            layer_targets.append(LayerTarget(j, layer, kernels[id(layer)], quantity))
    factored = {id(lt.layer) for lt in layer_targets if lt.quantity.backward}
    curved = tuple(
        curvature and (diagonal_curvature or t.role != "kernel" or id(t.layer) not in factored)
        for t in targets
    )
    layout = Layout()
    for i, t in enumerate(targets):
        for part in WEIGHT_PARTS if curved[i] else WEIGHT_PARTS[:2]:
            layout.add(("weight", i, part), t.variable.shape)
    for lt in layer_targets:
        shapes = lt.quantity.parts(lt.layer, rules[id(lt.layer)], lt.kernel.variable)
        if lt.quantity.backward and curvature:
            shapes[CURVATURE] = shapes[GRADIENTS]
        for part, shape in shapes.items():
            layout.add(("layer", lt.probed, lt.quantity.name, part), shape)
    layout.add(EXAMPLES, ())
    layout.add(SKIPPED, ())
    return Plan(
        targets,
        reasons,
        Probe(probed),
        [rules[id(layer)] for layer in probed],
        [t for t in targets if t.rule is None],
        layer_targets,
        layout,
        hooked_layers(model),
        curvature,
        curved,
    )
