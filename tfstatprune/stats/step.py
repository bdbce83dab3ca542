"""The traced statistics step: one chunk in, its sums added to the accumulators.

Built from a :class:`~tfstatprune.stats.plan.Plan`. Per chunk, for the
probed layers (closed-form rules) one forward pass records each layer's
inputs and ``z`` (:mod:`tfstatprune.stats.probe`) and one backward pass of the
summed per-example loss gives ``delta``, from which each rule forms its
weights' moments and each layer quantity its parts
(:mod:`tfstatprune.stats.quantities`); the curvature passes
(``hessian="ggn"``: one, ``"ggn_exact"``: one per class) repeat the backward
part. Weights without a rule get per-example gradients from
``tf.vectorized_map`` (``tf.map_fn`` for recurrent layers and grouped
convolutions). Non-finite examples are zeroed before anything is summed
(:mod:`tfstatprune.stats.rows`). The values are packed by the plan's named
layout into float64 accumulators (:mod:`tfstatprune.stats.distribute`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.distribute import Accumulators
from tfstatprune.stats.losses import PerExampleLoss
from tfstatprune.stats.plan import EXAMPLES, SKIPPED, Plan
from tfstatprune.stats.quantities import CURVATURE, GRADIENTS
from tfstatprune.stats.rows import (
    finite_rows,
    nonfinite_rows,
    times,
    unbounded_rows,
    zero_rows,
)
from tfstatprune.stats.rules import moments_of, size_of

__all__ = ["Step"]

_ZERO = tf.UnconnectedGradients.ZERO


def _grouped_conv(layer: keras.layers.Layer) -> bool:
    """True for a convolution with ``groups > 1``.

    pfor's per-example ``Conv2DBackpropFilter`` (a while_loop inside
    ``vectorized_map``) fails on grouped kernels on some CPUs ("filter_size does not
    have enough elements"), so the generic path loops over examples with ``map_fn``.
    """
    return isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D) and (
        getattr(layer, "groups", 1) > 1
    )


def _expand(structure: Any) -> Any:
    return tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), structure)


def _chained_sums(objectives: list, sums_of: Callable[[Any], dict]) -> dict | None:
    """Sum over ``objectives`` of ``sums_of(objective)``, one objective after another."""
    total = None
    for objective in objectives:
        with tf.control_dependencies(tf.nest.flatten(total) if total else []):
            sums = sums_of(objective)
        total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
    return total


def _summed(count: int, sums_at: Callable[[tf.Tensor], dict]) -> dict:
    """``sum_k sums_at(k)`` for ``k < count``: the first term, then a loop over the rest.

    One ``tf.while_loop`` (one iteration at a time) instead of ``count`` copies
    of the backward graph: the ``C`` passes of ``hessian="ggn_exact"`` trace
    as two.
    """
    total = sums_at(tf.constant(0))
    if count == 1:
        return total

    def body(k: tf.Tensor, total: dict) -> tuple[tf.Tensor, dict]:
        return k + 1, {name: total[name] + value for name, value in sums_at(k).items()}

    _, total = tf.while_loop(
        lambda k, _: k < count, body, (tf.constant(1), total), parallel_iterations=1
    )
    return total


class Step:
    """The traced statistics step of a plan and its accumulators (see module docstring).

    Attributes:
      run: ``run(x, y, weights, seed_pair)`` adds one chunk (distributed values
        under a strategy) to ``accumulators`` and returns, per replica, which
        of its examples were non-finite (left out).
      accumulators: one per slot of the plan's layout, in its order.
    """

    def __init__(
        self,
        model: keras.Model,
        plan: Plan,
        per_example_loss: PerExampleLoss,
        hessian: str,
        strategy: tf.distribute.Strategy,
    ) -> None:
        self.model, self.plan, self.loss = model, plan, per_example_loss
        self.hessian, self.strategy = hessian, strategy
        self.index_of = {id(layer): j for j, layer in enumerate(plan.probe.layers)}
        self.backward_targets = [lt for lt in plan.layer_targets if lt.quantity.backward]
        self.accumulators = Accumulators(strategy, plan.layout.shapes)
        self.generic_variables = [t.variable for t in plan.generic]
        # Per probed layer, the roles whose diagonal curvature is collected.
        curved_roles: dict[int, set[str]] = {}
        for t, curved in zip(plan.targets, plan.curved, strict=True):
            if curved and t.rule is not None:
                curved_roles.setdefault(self.index_of[id(t.layer)], set()).add(t.role)
        self.curved_roles = {j: frozenset(r) for j, r in curved_roles.items()}
        # pfor cannot vectorize the TensorList loops of recurrent layers (LSTM, GRU)
        # nor, on some CPUs, grouped convolutions: their per-example gradients are
        # mapped one example after another.
        recurrent = any(isinstance(layer, keras.layers.RNN) for layer in model.submodules)
        self.vectorized = not recurrent and not any(_grouped_conv(t.layer) for t in plan.generic)
        self.run = tf.function(self._run, reduce_retracing=True)
        self._floats: dict[Any, int] = {}

    def _forward(self, x: Any) -> tf.Tensor:
        return self.model(x, training=False)

    def _curvature_objectives(
        self, y_pred: tf.Tensor, seed_pair: tf.Tensor, weights: tf.Tensor | None
    ) -> list[tf.Tensor]:
        """Scalars whose gradients' squares add up to the curvature (see the collector)."""
        loss = self.loss
        if self.hessian == "ggn":
            y_sampled = tf.stop_gradient(loss.sample_labels(finite_rows(y_pred), seed_pair))
            return [tf.reduce_sum(times(loss(y_sampled, y_pred), weights))]
        if self.hessian == "ggn_exact":
            return [
                tf.reduce_sum(
                    times(loss(labels, y_pred), times(tf.stop_gradient(tf.sqrt(p)), weights))
                )
                for labels, p in loss.label_distribution(y_pred)
            ]
        return []

    def _from_backward(
        self, inputs: list, output_gradients: list, roles: dict | None = None
    ) -> tuple[dict, dict]:
        """One backward pass: moments per (probed layer, role), backward parts per target.

        ``roles``: per probed layer (index), the roles whose moments are wanted
        (None: every role of every probed layer).
        """
        plan = self.plan
        moments = {}
        for j, (layer, rule, a, delta) in enumerate(
            zip(plan.probe.layers, plan.rules, inputs, output_gradients, strict=True)
        ):
            if roles is None:
                found = rule.moments(layer, a, delta)
            elif roles.get(j):
                found = rule.role_moments(layer, a, delta, roles[j])
            else:
                continue
            for role, m in found.items():
                moments[(j, role)] = m
        parts = {
            k: lt.quantity.from_backward(
                lt.layer, plan.rules[lt.probed], output_gradients[lt.probed]
            )
            for k, lt in enumerate(self.backward_targets)
        }
        return moments, parts

    def _closed_form_values(
        self, x: Any, y: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor, bad: tf.Tensor
    ) -> tuple[dict, dict | None, dict, tf.Tensor]:
        """Moments, curvature, the layer quantities' parts and the non-finite examples.

        Moments and curvature are keyed by ``(probed layer index, role)``, the
        parts by their layout names. ``bad`` marks examples already found
        non-finite (by the generic path); the examples found here are added.
        """
        plan, probe, curvature = self.plan, self.plan.probe, self.plan.curvature
        with tf.GradientTape(persistent=curvature) as tape:
            y_pred, inputs, zs = probe.record(self._forward, x)
            losses = self.loss(y, y_pred)
            total = tf.reduce_sum(times(losses, weights))
            objectives = self._curvature_objectives(y_pred, seed_pair, weights)
            if objectives:
                objectives = tf.stack(objectives)
        deltas = probe.output_gradients(tape, total, zs)
        bad = bad | nonfinite_rows(losses)
        for a, delta in zip(inputs, deltas, strict=True):
            bad |= unbounded_rows(a, delta)
        taped = zs  # the outputs the tape differentiates by (the zeroed copies are not)
        inputs, zs, deltas = zero_rows((inputs, zs, deltas), bad)
        kept = times(1.0 - tf.cast(bad, tf.float32), weights)

        def squares_at(k: tf.Tensor) -> dict:
            """The squares of the per-example gradients of curvature objective ``k``."""
            output_gradients = probe.output_gradients(
                tape, objectives, taped, tf.one_hot(k, objectives.shape[0])
            )
            moments, parts = self._from_backward(
                inputs, zero_rows(output_gradients, bad), self.curved_roles
            )
            return {
                **{("moment", *key): m.sumsq for key, m in moments.items()},
                **{("part", key): v for key, v in parts.items()},
            }

        moments, parts = self._from_backward(inputs, deltas)
        squares = _summed(objectives.shape[0], squares_at) if curvature else None
        values = {}
        for lt in plan.layer_targets:
            name = ("layer", lt.probed, lt.quantity.name)
            rule, a, z = plan.rules[lt.probed], inputs[lt.probed], zs[lt.probed]
            for part, value in lt.quantity.from_forward(lt.layer, rule, a, z, kept).items():
                values[(*name, part)] = value  # kept: 0 for padded and non-finite examples
        for k, lt in enumerate(self.backward_targets):
            name = ("layer", lt.probed, lt.quantity.name)
            values[(*name, GRADIENTS)] = parts[k]
            if curvature:
                values[(*name, CURVATURE)] = squares[("part", k)]
        if curvature:
            squares = {k[1:]: v for k, v in squares.items() if k[0] == "moment"}
        return moments, squares, values, bad

    def _per_example_gradients(
        self, x: Any, labels: Any, scale: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, list]:
        """Per-example losses ``[B]`` and gradients ``[B, *shape]`` of the generic weights."""
        variables = self.generic_variables

        def one(args: tuple) -> tuple[tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(self.loss(_expand(args[1]), self._forward(_expand(args[0]))))
                if scale is not None:
                    value = value * args[2]
            return value, tape.gradient(value, variables, unconnected_gradients=_ZERO)

        elems = (x, labels) if scale is None else (x, labels, scale)
        if self.vectorized:
            return tf.vectorized_map(one, elems)
        signature = (
            tf.TensorSpec([], tf.float32),
            [tf.TensorSpec(v.shape, v.dtype) for v in variables],
        )

        def one_of_map(args: tuple) -> tuple[tf.Tensor, list[tf.Tensor]]:
            value, grads = one(args)
            return tf.cast(value, tf.float32), [tf.convert_to_tensor(g) for g in grads]

        return tf.map_fn(one_of_map, elems, fn_output_signature=signature)

    def _generic_gradients(
        self, x: Any, y: Any, weights: tf.Tensor | None
    ) -> tuple[list, tf.Tensor]:
        """The generic weights' per-example gradients and the non-finite examples."""
        values, grads = self._per_example_gradients(x, y, weights)
        bad = nonfinite_rows(values)
        for g in grads:
            bad |= nonfinite_rows(g)
        return grads, bad

    def _generic_values(
        self, grads: list, bad: tf.Tensor, x: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor
    ) -> tuple[list, dict | None]:
        """The generic weights' moments and curvature (per-example squares, summed)."""

        def per_example(labels: Any, scale: tf.Tensor | None = None) -> list:
            return zero_rows(self._per_example_gradients(x, labels, scale)[1], bad)

        def squares(grads: list) -> dict:
            return {i: tf.reduce_sum(tf.square(g), 0) for i, g in enumerate(grads)}

        moments = [moments_of(g) for g in zero_rows(grads, bad)]
        curvature = None
        if self.hessian == "ggn":
            y_sampled = self.loss.sample_labels(finite_rows(self._forward(x)), seed_pair)
            curvature = squares(per_example(y_sampled, weights))
        elif self.hessian == "ggn_exact":
            pairs = self.loss.label_distribution(self._forward(x))
            curvature = _chained_sums(
                pairs,
                lambda pair: squares(per_example(pair[0], times(tf.sqrt(pair[1]), weights))),
            )
        return moments, curvature

    def _replica_step(
        self, x: Any, y: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor
    ) -> tf.Tensor:
        """Add one chunk; return ``[examples]`` bool, the non-finite ones (padding dropped)."""
        plan = self.plan
        if self.strategy.num_replicas_in_sync > 1:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed_pair = tf.random.experimental.stateless_fold_in(seed_pair, replica)
        bad = tf.zeros(tf.shape(tf.nest.flatten(x)[0])[:1], tf.bool)
        grads = None
        if plan.generic:
            grads, bad = self._generic_gradients(x, y, weights)
        moments, curvature, values = {}, None, {}
        if plan.probe.layers:
            moments, curvature, values, bad = self._closed_form_values(
                x, y, weights, seed_pair, bad
            )
        generic_moments, generic_curvature = (
            self._generic_values(grads, bad, x, weights, seed_pair) if plan.generic else ([], None)
        )
        g_index = 0
        for i, t in enumerate(plan.targets):
            if t.rule is not None:
                key = (self.index_of[id(t.layer)], t.role)
                m, c = moments[key], curvature[key] if plan.curved[i] else None
            else:
                m = generic_moments[g_index]
                c = generic_curvature[g_index] if plan.curved[i] else None
                g_index += 1
            values["weight", i, "sum"], values["weight", i, "sumsq"] = m.sum, m.sumsq
            if plan.curved[i]:
                values["weight", i, CURVATURE] = c
        real = times(tf.ones_like(bad, tf.float32), weights)  # 0: padding of a replica
        dropped = real * tf.cast(bad, tf.float32)
        values[EXAMPLES] = tf.reduce_sum(real - dropped)
        values[SKIPPED] = tf.reduce_sum(dropped)
        self.accumulators.add(plan.layout.pack(values))
        return tf.boolean_mask(bad, real > 0)

    def _run(self, x: Any, y: Any, weights: Any, seed_pair: tf.Tensor) -> Any:
        return self.strategy.run(self._replica_step, args=(x, y, weights, seed_pair))

    def per_example_floats(self, x_spec: Any) -> int:
        """The floats per example held for one chunk (see ``CollectedStatistics.peak_bytes``)."""
        key = tuple(tf.nest.flatten(x_spec))
        if key not in self._floats:
            self._floats[key] = self._count_per_example_floats(x_spec)
        return self._floats[key]

    def _count_per_example_floats(self, x_spec: Any) -> int:
        plan = self.plan
        passes = 2 if plan.curvature else 1  # the moments' and the curvature's backward pass
        total = passes * sum(size_of(t.variable.shape) for t in plan.generic)
        if not plan.probe.layers:
            return total
        shapes = plan.probe.shapes(self._forward, x_spec)
        for layer, rule, (in_shape, out_shape) in zip(
            plan.probe.layers, plan.rules, shapes, strict=True
        ):
            held = size_of(out_shape) + rule.per_example_floats(layer, in_shape, out_shape)
            total += size_of(in_shape) + size_of(out_shape) + passes * held
        return total
