"""Per-layer statistics beyond the per-weight moments: one class per quantity.

The per-weight moments (sum, sum of squares, curvature) come from every rule;
a *layer quantity* is collected once per layer, on request, for the layers
whose kernel is among the weights asked for: the Kronecker factors
(:mod:`tfstatprune.stats.kronecker`) and the activations' zero counts
(:mod:`tfstatprune.stats.activations`). The grid is BackPACK's, quantity x
layer type: a quantity says which parts it accumulates and how the step forms
them, in terms of what the probe records (a layer's inputs and ``z``, and the
output gradients ``delta`` of each backward pass); the layer-type maths lives
in the layer's rule (``GradientRule.kronecker_inputs``, ...). The plan
(:mod:`tfstatprune.stats.plan`) allocates each part as a named accumulator and
decodes it by that name, so adding a quantity is one class here, one field of
:class:`~tfstatprune.stats.moments.LayerStatistics` and one flag of
:func:`~tfstatprune.stats.collector.collect_statistics`.

Parts formed from the backward passes are summed over the passes of one kind:
``"gradients"`` from the true labels' pass, ``"curvature"`` from the curvature
passes (``hessian="ggn"``/``"ggn_exact"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.activations import ActivationStatistics
from tfstatprune.stats.kronecker import KroneckerFactors
from tfstatprune.stats.rules import GradientRule

__all__ = ["ACTIVATIONS", "KRONECKER", "LAYER_QUANTITIES", "LayerQuantity"]

GRADIENTS = "gradients"
CURVATURE = "curvature"


class LayerQuantity:
    """One per-layer statistic: its parts, how the step forms them, its record.

    Attributes:
      name: the field of :class:`~tfstatprune.stats.moments.LayerStatistics`
        that holds the record.
      backward: True when the quantity has a part per kind of backward pass
        (:meth:`from_backward`): ``"gradients"`` and, with curvature,
        ``"curvature"``.
    """

    name: str = ""
    backward: bool = False

    def applies(self, layer: keras.layers.Layer, rule: GradientRule) -> bool:
        """Whether the quantity is defined for ``layer`` (with its rule)."""
        return True

    def parts(
        self, layer: keras.layers.Layer, rule: GradientRule, kernel: tf.Variable
    ) -> dict[str, tuple[int, ...]]:
        """``{part: shape}`` of the forward parts (and ``"gradients"``'s when ``backward``)."""
        raise NotImplementedError

    def from_forward(
        self,
        layer: keras.layers.Layer,
        rule: GradientRule,
        inputs: Any,
        z: tf.Tensor,
        weights: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """Batch sums of the forward parts; ``weights`` ``[B]`` are 0 for left-out examples."""
        return {}

    def from_backward(
        self, layer: keras.layers.Layer, rule: GradientRule, delta: tf.Tensor
    ) -> tf.Tensor:
        """Batch sum of the backward part from one pass's output gradients ``delta``."""
        raise NotImplementedError

    def record(
        self, layer: keras.layers.Layer, count: int, parts: Mapping[str, np.ndarray | None]
    ) -> Any:
        """The quantity's record from the totals of its parts (``"curvature"``: None if not)."""
        raise NotImplementedError


class KroneckerQuantity(LayerQuantity):
    """K-FAC/KFC factors of a Dense or Conv layer (groups=1), see :mod:`~.kronecker`."""

    name = "kronecker"
    backward = True

    def applies(self, layer: keras.layers.Layer, rule: GradientRule) -> bool:
        return rule.kronecker_shapes(layer) is not None

    def parts(
        self, layer: keras.layers.Layer, rule: GradientRule, kernel: tf.Variable
    ) -> dict[str, tuple[int, ...]]:
        n_in, n_out = rule.kronecker_shapes(layer)
        return {"inputs": (n_in, n_in), GRADIENTS: (n_out, n_out)}

    def from_forward(
        self,
        layer: keras.layers.Layer,
        rule: GradientRule,
        inputs: Any,
        z: tf.Tensor,
        weights: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        a = tf.cast(tf.nest.flatten(inputs)[0], tf.float32)
        return {"inputs": rule.kronecker_inputs(layer, a, z, weights)}

    def from_backward(
        self, layer: keras.layers.Layer, rule: GradientRule, delta: tf.Tensor
    ) -> tf.Tensor:
        return rule.kronecker_outputs(layer, delta)

    def record(
        self, layer: keras.layers.Layer, count: int, parts: Mapping[str, np.ndarray | None]
    ) -> KroneckerFactors:
        return KroneckerFactors(
            count,
            parts["inputs"],
            parts[GRADIENTS],
            parts.get(CURVATURE),
            bool(getattr(layer, "use_bias", False)),
        )


class ActivationQuantity(LayerQuantity):
    """Per output channel, the (example, position) pairs where ``activation(z) == 0``."""

    name = "activations"

    def parts(
        self, layer: keras.layers.Layer, rule: GradientRule, kernel: tf.Variable
    ) -> dict[str, tuple[int, ...]]:
        return {"zeros": tuple(kernel.shape[-1:]), "observations": ()}

    def from_forward(
        self,
        layer: keras.layers.Layer,
        rule: GradientRule,
        inputs: Any,
        z: tf.Tensor,
        weights: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        activation = getattr(layer, "activation", None) or keras.activations.linear
        zero = tf.cast(tf.equal(activation(z), 0), tf.float32)
        positions = tf.cast(tf.reduce_prod(tf.shape(zero)[1:-1]), tf.float32)
        w = tf.cast(weights, tf.float32)  # 0/1 weights of padded and non-finite examples
        zero = zero * tf.reshape(w, [-1] + [1] * (zero.shape.rank - 1))
        return {
            "zeros": tf.reduce_sum(zero, axis=list(range(zero.shape.rank - 1))),
            "observations": tf.reduce_sum(w) * positions,
        }

    def record(
        self, layer: keras.layers.Layer, count: int, parts: Mapping[str, np.ndarray | None]
    ) -> ActivationStatistics:
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        return ActivationStatistics(
            count,
            float(parts["observations"]),
            np.asarray(parts["zeros"], np.float64),
            activation,
        )


KRONECKER = KroneckerQuantity()
ACTIVATIONS = ActivationQuantity()
# Every layer quantity by name, in collection order.
LAYER_QUANTITIES: dict[str, LayerQuantity] = {q.name: q for q in (KRONECKER, ACTIVATIONS)}
