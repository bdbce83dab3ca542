"""Collect per-example gradient statistics of a model's weights over a data set.

One pass over the data in chunks. Per chunk, for the weights whose layer has a
closed-form rule (:mod:`tfstatprune.stats.registry`), one forward pass and one
backward pass of the summed per-example loss give each layer's inputs and the
per-example gradients at its pre-activation output, from which the rule forms
the moments. Weights without a rule get per-example gradients from
``tf.vectorized_map`` (the generic path: correct for any layer, 20-100x slower;
a :class:`GenericPathWarning` names such layer classes once per process).
Chunk sums are float32; they are added into float64 accumulators on the
device, inside the traced step, and read once at the end.

Curvature, stored in ``WeightStatistics.curvature`` as a sum over examples of
a per-example diagonal (divide by n for the diagonal of the mean loss
``(1/n) sum_i m_i``; a training loss that sums over examples has n times it):

- ``hessian="fisher"``: nothing beyond the moments (the empirical Fisher is
  ``sumsq / n``).
- ``hessian="ggn"``: the same passes with one label per example drawn from the
  model's own predictive distribution give ``sum_i s~_i ** 2``, an unbiased
  estimate of n times the generalized Gauss-Newton diagonal of ``m_i``
  (Martens 2014; Kunstner et al. 2019).
- ``hessian="ggn_exact"``: the exact GGN diagonal for a cross-entropy over C
  classes. With logits f and probabilities p, the Hessian of the loss in f is
  ``diag(p) - p p^T = sum_c p_c (e_c - p)(e_c - p)^T``, and ``p - e_c`` is the
  gradient in f of the loss with label c; so
  ``diag GGN_i = diag J_i^T (diag(p) - p p^T) J_i = sum_c p_ic g_i(c) ** 2``,
  g_i(c) the per-example gradient with label c. Each class is one more
  backward pass of ``sum_i sqrt(p_ic) m_i(c)`` (p held constant) through the
  same closed-form rules: C backward passes per chunk, run one after another.

Under a ``tf.distribute`` strategy each replica sums its share of every chunk
and the totals are reduced once at the end (:mod:`tfstatprune.stats.distribute`).

Non-finite examples are found one by one, inside the same traced step: an
example is *non-finite* when its loss, a probed layer's input or output
gradient, or a generic per-example gradient holds NaN/Inf, or when the bound
``(sum |a_i| * sum |delta_i|)^2`` on its squared per-example gradient overflows
float32 (inputs scaled by 1e20). Such an example's inputs and output gradients
are set to 0 and its weight to 0 before anything is summed, so it adds nothing
(one NaN would otherwise make every sum NaN and every Wald score 0); the step
counts it and returns its position. At the end the collection raises
:class:`~tfstatprune.stats.validation.NonFiniteDataError` naming how many and
the first indices, or, with ``skip_nonfinite=True``, warns and reports them in
``CollectedStatistics.skipped``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.activations import ActivationStatistics
from tfstatprune.stats.distribute import (
    Accumulators,
    distribute_chunk,
    local_replicas,
    strategy_for,
)
from tfstatprune.stats.keys import weight_keys
from tfstatprune.stats.kronecker import KroneckerFactors
from tfstatprune.stats.losses import PerExampleLoss, resolve_loss
from tfstatprune.stats.moments import WeightStatistics, chunk_rounding
from tfstatprune.stats.registry import rule_for
from tfstatprune.stats.rules import GradientRule, moments_of, size_of
from tfstatprune.stats.validation import (
    check_input_dtype,
    check_labels,
    nonfinite_error,
    warn_no_signal,
    warn_skipped,
)

__all__ = [
    "CollectedStatistics",
    "GenericPathWarning",
    "check_stats_data",
    "collect_statistics",
    "HESSIANS",
]

HESSIANS = ("fisher", "ggn", "ggn_exact")
DEFAULT_MEMORY_BUDGET_MB = 256
MAX_CHUNK = 2048
_BYTES_PER_FLOAT = 4
_MB = 2**20
# Hook a layer may define to replace its ``call`` while statistics are collected
# (pruning wrappers use it to skip their mask-update ops).
STATISTICS_CALL_HOOK = "statistics_call"
_ZERO = tf.UnconnectedGradients.ZERO


class GenericPathWarning(UserWarning):
    """Some layers' statistics take the slow generic ``vectorized_map`` path."""


# Layer classes already named in a GenericPathWarning (once per class per process).
_WARNED_CLASSES: set[type] = set()


class CollectedStatistics(NamedTuple):
    """What :func:`collect_statistics` returns.

    Attributes:
      weights: ``{weight key: WeightStatistics}`` in the order asked for, keyed by
        :func:`tfstatprune.stats.keys.weight_keys` (layer path and role, stable
        across saving and loading; not ``variable.name``).
      count: the number of examples used (n), over all replicas and workers.
      chunk_size: examples per chunk (on this worker, over its local replicas).
      peak_bytes: estimate of the per-example quantities held for one chunk, in
        bytes: the probed layers' inputs, outputs and output gradients, what
        their rules materialise (per-example convolution kernel gradients, ...)
        and the generic path's per-example gradients. The model's own
        activations, kept for backpropagation as in any gradient step, are
        not counted.
      generic: names of the weights that took the generic vectorized path.
      seconds: wall time of the collection.
      skipped: examples left out for a non-finite loss or gradient
        (``skip_nonfinite=True``; not counted in ``count``).
    """

    weights: dict[str, WeightStatistics]
    count: int
    chunk_size: int
    peak_bytes: int
    generic: list[str]
    seconds: float
    skipped: int = 0


class _Target(NamedTuple):
    variable: tf.Variable
    layer: keras.layers.Layer
    rule: GradientRule | None
    role: str | None


class _Recorder:
    """Holds ``(inputs, z)`` for each probed layer during one traced forward pass.

    Per thread: a ``MirroredStrategy`` traces each replica in its own thread.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def active(self) -> bool:
        return getattr(self._local, "active", False)

    @active.setter
    def active(self, value: bool) -> None:
        self._local.active = value

    @property
    def calls(self) -> dict[int, tuple[Any, tf.Tensor]]:
        if not hasattr(self._local, "calls"):
            self._local.calls = {}
        return self._local.calls


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
) -> tuple[list[_Target], dict[type, str]]:
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
        targets.append(_Target(v, layer, rule, role))
    return targets, reasons


def _warn_generic(reasons: dict[type, str]) -> None:
    """Name the layer classes taking the generic path, once per class per process."""
    new = {cls: why for cls, why in reasons.items() if cls not in _WARNED_CLASSES}
    if not new:
        return
    _WARNED_CLASSES.update(new)
    named = "; ".join(f"{cls.__name__} ({why})" for cls, why in new.items())
    warnings.warn(
        f"per-example statistics of {named} take the generic tf.vectorized_map path, "
        "20-100x slower than a gradient pass; a closed-form rule can be added with "
        "tfstatprune.stats.register_rule",
        GenericPathWarning,
        stacklevel=3,
    )


def _hooked_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers that define a statistics hook (see ``STATISTICS_CALL_HOOK``)."""
    return [layer for layer in model.submodules if hasattr(layer, STATISTICS_CALL_HOOK)]


@contextlib.contextmanager
def _patched_calls(
    hooked: Sequence[keras.layers.Layer],
    probed: Sequence[keras.layers.Layer],
    rec: _Recorder,
):
    """Patch ``call`` of probed layers and of layers with a statistics hook."""
    patched: list[tuple[keras.layers.Layer, Any, bool]] = []

    def patch(layer: keras.layers.Layer, fn: Any) -> None:
        had_instance_call = "call" in layer.__dict__
        patched.append((layer, layer.__dict__.get("call"), had_instance_call))
        layer.call = fn

    def probe(layer: keras.layers.Layer) -> Any:
        original = layer.call

        def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if not rec.active:
                return original(inputs, *args, **kwargs)
            activation = getattr(layer, "activation", None)
            if activation is not None:
                layer.activation = keras.activations.linear
            try:
                z = original(inputs, *args, **kwargs)
            finally:
                if activation is not None:
                    layer.activation = activation
            if id(layer) in rec.calls:
                raise ValueError(
                    f"layer {layer.name!r} is called more than once per forward pass; the "
                    "closed-form statistics need one call per layer: pass closed_form=False"
                )
            rec.calls[id(layer)] = (inputs, z)
            return activation(z) if activation is not None else z

        return call

    try:
        for layer in hooked:
            patch(layer, getattr(layer, STATISTICS_CALL_HOOK))
        for layer in probed:
            patch(layer, probe(layer))
        yield
    finally:
        for layer, previous, had in reversed(patched):
            if had:
                layer.call = previous
            else:
                del layer.call


def _regularizer_curvature(target: _Target) -> np.ndarray | float:
    """Diagonal Hessian of the weight's regularizer (exact for separable ones: L1, L2)."""
    name = target.variable.name.split("/")[-1].split(":")[0]
    regularizer = getattr(target.layer, f"{name}_regularizer", None)
    if regularizer is None:
        return 0.0
    v = target.variable
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            penalty = regularizer(v)
        grad = inner.gradient(penalty, v)
        total = tf.reduce_sum(grad) if grad is not None else tf.constant(0.0)
    hess = outer.gradient(total, v)
    return 0.0 if hess is None else hess.numpy().astype(np.float64)


def _grouped_conv(layer: keras.layers.Layer) -> bool:
    """True for a convolution with ``groups > 1``.

    pfor's per-example ``Conv2DBackpropFilter`` (a while_loop inside
    ``vectorized_map``) fails on grouped kernels on some CPUs ("filter_size does not
    have enough elements"), so the generic path loops over examples with ``map_fn``.
    """
    return isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D) and (
        getattr(layer, "groups", 1) > 1
    )


def _times(values: tf.Tensor, weights: tf.Tensor | None) -> tf.Tensor:
    """``values * weights``, or ``values`` when there are no weights."""
    return values if weights is None else values * tf.cast(weights, values.dtype)


def _zero_counts(
    layer: keras.layers.Layer, z: tf.Tensor, weights: tf.Tensor | None
) -> list[tf.Tensor]:
    """Per output channel, the (example, position) pairs where ``activation(z) == 0``,
    and the number of pairs (see :mod:`tfstatprune.stats.activations`)."""
    activation = getattr(layer, "activation", None) or keras.activations.linear
    zero = tf.cast(tf.equal(activation(z), 0), tf.float32)
    positions = tf.cast(tf.reduce_prod(tf.shape(zero)[1:-1]), tf.float32)
    if weights is None:
        examples = tf.cast(tf.shape(zero)[0], tf.float32)
    else:  # 0/1 weights of padded examples
        w = tf.cast(weights, tf.float32)
        zero = zero * tf.reshape(w, [-1] + [1] * (zero.shape.rank - 1))
        examples = tf.reduce_sum(w)
    return [tf.reduce_sum(zero, axis=list(range(zero.shape.rank - 1))), examples * positions]


def _batch_axes(t: tf.Tensor) -> list[int]:
    return list(range(1, t.shape.rank))


def _row_size(t: tf.Tensor) -> tf.Tensor:
    """``[B]``: ``sum |t_i|`` per example (NaN/Inf when a row holds NaN/Inf)."""
    return tf.reduce_sum(tf.abs(tf.cast(t, tf.float32)), _batch_axes(t))


def _nonfinite_rows(t: tf.Tensor) -> tf.Tensor:
    """``[B]`` bool: the examples (rows) of ``t`` holding NaN/Inf, or too large to square."""
    return ~tf.math.is_finite(tf.square(_row_size(t)))


def _unbounded_rows(inputs: Any, delta: tf.Tensor) -> tf.Tensor:
    """``[B]`` bool: a layer's examples with NaN/Inf inputs or output gradients, or
    whose per-example weight gradients may overflow float32 when squared.

    One reduction per tensor: every entry of a Dense/Conv/normalization
    per-example gradient, and of the squares the rules form, is bounded by
    ``(sum |a_i| * sum |delta_i|)^2`` (integer inputs, embedding ids, count 1),
    and a NaN or Inf anywhere in a row makes that bound NaN or Inf.
    """
    sizes = [_row_size(t) for t in tf.nest.flatten(inputs) if t.dtype.is_floating]
    size = _row_size(delta)
    scale = tf.add_n(sizes) if sizes else tf.ones_like(size)
    return ~tf.math.is_finite(tf.square(scale) * tf.square(size))


def _zero_rows(structure: Any, bad: tf.Tensor) -> Any:
    """``structure`` with the float tensors' rows of the ``bad`` examples set to 0.

    Nothing is copied when no example is bad (the common case).
    """

    def zero(t: tf.Tensor) -> tf.Tensor:
        if not t.dtype.is_floating:
            return t
        rows = tf.reshape(bad, [-1] + [1] * (t.shape.rank - 1))
        return tf.where(rows, tf.zeros_like(t), t)

    return tf.cond(
        tf.reduce_any(bad),
        lambda: tf.nest.map_structure(zero, structure),
        lambda: tf.nest.map_structure(tf.identity, structure),
    )


def _finite_rows(y_pred: tf.Tensor) -> tf.Tensor:
    """``y_pred`` with non-finite examples set to 0, to sample labels from (in range)."""
    return _zero_rows(y_pred, _nonfinite_rows(y_pred))


def _expand(structure: Any) -> Any:
    return tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), structure)


def _as_arrays(data: Any) -> tuple[Any, Any] | None:
    if isinstance(data, tuple) and len(data) in (2, 3) and not isinstance(data, tf.data.Dataset):
        return data[0], data[1]
    return None


def _first_dim(structure: Any) -> int:
    return int(tf.nest.flatten(structure)[0].shape[0])


def _slice(structure: Any, start: int, stop: int) -> Any:
    return tf.nest.map_structure(lambda t: t[start:stop], structure)


def _dataset_spec(data: Any) -> Any:
    """The element spec of a ``tf.data.Dataset`` of ``(x, y[, w])``; a clear error otherwise."""
    if not isinstance(data, tf.data.Dataset):
        raise TypeError(
            "stats_data must be a tf.data.Dataset of (x, y) batches or an (x, y) tuple of "
            f"arrays, got {type(data).__name__}"
        )
    spec = data.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        raise ValueError(
            "stats_data must yield (x, y) or (x, y, sample_weight) tuples, got elements "
            f"of structure {spec}"
        )
    return spec


def _iter_chunks(
    data: Any, chunk_size: int, max_examples: int | None, input_rank: int | None
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` chunks of at most ``chunk_size`` examples."""
    limit = np.inf if max_examples is None else max_examples
    seen = 0
    arrays = _as_arrays(data)
    if arrays is not None:
        x, y = arrays
        n = _first_dim(x)
        if _first_dim(y) != n:
            raise ValueError(f"stats_data x has {n} examples but y has {_first_dim(y)}")
        for start in range(0, n, chunk_size):
            stop = int(min(start + chunk_size, n, limit))
            if stop <= start:
                return
            yield _slice(x, start, stop), _slice(y, start, stop)
        return
    spec = _dataset_spec(data)
    x_spec = tf.nest.flatten(spec[0])[0]
    if input_rank is not None and x_spec.shape.rank == input_rank - 1:
        data = data.batch(chunk_size)  # a data set of single examples
    else:
        data = data.unbatch().batch(chunk_size)
    for element in data:
        x, y = element[0], element[1]
        n = _first_dim(x)
        take = int(min(n, limit - seen))
        if take <= 0:
            return
        if take < n:
            x, y = _slice(x, 0, take), _slice(y, 0, take)
        seen += take
        yield x, y


def _check_input_shape(model: keras.Model, x: Any) -> None:
    """``x``: inputs or their ``TensorSpec`` (unknown sizes pass)."""
    expected = getattr(model, "input_shape", None)
    if expected is None or isinstance(expected, list):
        return
    got = tuple(tf.nest.flatten(x)[0].shape)
    expected = tuple(expected)
    if len(got) != len(expected) or any(
        None not in (e, g) and g != e for g, e in zip(got[1:], expected[1:], strict=False)
    ):
        raise ValueError(
            f"stats_data inputs have shape {got} but the model expects {expected} "
            "(None = any size): reshape the data or pass data for this model"
        )


def check_stats_data(model: keras.Model, data: Any) -> None:
    """Raise a clear error now if ``data`` is empty or does not fit ``model``'s input."""
    input_rank = len(model.input_shape) if isinstance(model.input_shape, tuple) else None
    for x, _ in _iter_chunks(data, 1, 1, input_rank):
        _check_input_shape(model, x)
        check_input_dtype(model, x)
        return
    raise ValueError("stats_data is empty: pass at least one (x, y) example")


def _example_spec(data: Any, input_rank: int | None) -> Any:
    """``TensorSpec``s of the model inputs in ``data``, batch axis ``None``."""
    arrays = _as_arrays(data)
    if arrays is not None:
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *np.shape(t)[1:]], tf.as_dtype(t.dtype)), arrays[0]
        )
    spec = _dataset_spec(data)
    single = input_rank is not None and tf.nest.flatten(spec[0])[0].shape.rank == input_rank - 1
    return tf.nest.map_structure(
        lambda s: tf.TensorSpec([None, *(s.shape if single else s.shape[1:])], s.dtype), spec[0]
    )


class _Plan(NamedTuple):
    """A traced statistics step, its accumulators and what it was built for.

    Attributes:
      step: ``step(x, y, weights, seed_pair)`` adds one chunk (distributed values
        under a strategy) to ``accumulators`` and returns, per replica, which
        of its examples were non-finite (left out).
      accumulators: per target its sum, sum of squares (and curvature), the
        layer-level values, then the count of examples used and of
        non-finite examples left out.
      per_example_floats: ``per_example_floats(x_spec)``, the floats per example
        held for one chunk (see ``CollectedStatistics.peak_bytes``).
    """

    step: Callable[..., None]
    accumulators: Accumulators
    per_example_floats: Callable[[Any], int]
    rec: _Recorder
    targets: list[_Target]
    probed: list[keras.layers.Layer]
    reasons: dict[type, str]
    kron_layers: list[keras.layers.Layer]
    hooked: list[keras.layers.Layer]
    act_layers: list[keras.layers.Layer]


# Plans live on the model itself (an untracked attribute), so a model and its
# traced steps are garbage together.
_PLANS_ATTRIBUTE = "_tfstatprune_statistics_plans"


def _plan_for(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    loss: Any,
    per_example_loss: PerExampleLoss,
    hessian: str,
    closed_form: bool,
    strategy: tf.distribute.Strategy,
    kronecker: bool = False,
    activations: bool = False,
) -> _Plan:
    """The cached plan for this model, weights, loss, curvature and strategy, or a new one."""
    # The loss actually used: the compiled one may change with a new compile().
    used_loss = loss if loss is not None else getattr(model, "loss", None)
    key = (tuple(id(v) for v in weights), id(used_loss), hessian, closed_form, id(strategy))
    key += (kronecker, activations)
    plans = model.__dict__.get(_PLANS_ATTRIBUTE)
    if plans is None:
        plans = {}
        object.__setattr__(model, _PLANS_ATTRIBUTE, plans)
    if key not in plans:
        plans[key] = _build_plan(
            model, weights, per_example_loss, hessian, closed_form, strategy, kronecker, activations
        )
    return plans[key]


def _build_plan(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    per_example_loss: PerExampleLoss,
    hessian: str,
    closed_form: bool,
    strategy: tf.distribute.Strategy,
    kronecker: bool = False,
    activations: bool = False,
) -> _Plan:
    targets, reasons = _targets(model, weights, closed_form)
    rules = {id(t.layer): t.rule for t in targets if t.rule is not None}
    probed = list({id(t.layer): t.layer for t in targets if t.rule is not None}.values())
    generic = [t for t in targets if t.rule is None]
    # pfor cannot vectorize the TensorList loops of recurrent layers (LSTM, GRU):
    # their per-example gradients are mapped one example after another.
    recurrent = any(isinstance(layer, keras.layers.RNN) for layer in model.submodules)
    want_curvature = hessian != "fisher"
    rec = _Recorder()
    shapes = []
    for t in targets:
        shapes += [t.variable.shape] * (3 if want_curvature else 2)
    kron_layers = [
        layer
        for layer in probed
        if kronecker
        and rules[id(layer)].kronecker_shapes(layer) is not None
        and any(t.layer is layer and t.role == "kernel" for t in targets)
    ]
    for layer in kron_layers:
        n_in, n_out = rules[id(layer)].kronecker_shapes(layer)
        shapes += [(n_in, n_in), (n_out, n_out)] + ([(n_out, n_out)] if want_curvature else [])
    kernels = {id(t.layer): t.variable for t in targets if t.role == "kernel"}
    act_layers = [layer for layer in probed if activations and id(layer) in kernels]
    for layer in act_layers:  # zero counts per output channel, (example, position) pairs
        shapes += [kernels[id(layer)].shape[-1:], []]
    accumulators = Accumulators(strategy, [*shapes, [], []])  # then: count, non-finite

    def forward(x: Any) -> tf.Tensor:
        return model(x, training=False)

    def curvature_objectives(
        y_pred: tf.Tensor, seed_pair: tf.Tensor, weights: tf.Tensor | None
    ) -> list[tf.Tensor]:
        """Scalars whose gradients' squares add up to the curvature (see module docstring)."""
        if hessian == "ggn":
            y_sampled = tf.stop_gradient(
                per_example_loss.sample_labels(_finite_rows(y_pred), seed_pair)
            )
            return [tf.reduce_sum(_times(per_example_loss(y_sampled, y_pred), weights))]
        if hessian == "ggn_exact":
            return [
                tf.reduce_sum(
                    _times(
                        per_example_loss(labels, y_pred),
                        _times(tf.stop_gradient(tf.sqrt(p)), weights),
                    )
                )
                for labels, p in per_example_loss.label_distribution(y_pred)
            ]
        return []

    def chained_squares(objectives: list, squares_of: Callable[[Any], dict]) -> dict | None:
        """Sum over ``objectives`` of their squared per-example gradients, one after another."""
        total = None
        for objective in objectives:
            with tf.control_dependencies(tf.nest.flatten(total) if total else []):
                squares = squares_of(objective)
            total = squares if total is None else {k: total[k] + v for k, v in squares.items()}
        return total

    def closed_form_values(
        x: Any, y: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor, bad: tf.Tensor
    ) -> tuple[dict, dict | None, list, tf.Tensor]:
        """Moments, curvature, layer-level values and the non-finite examples.

        ``bad`` marks examples already found non-finite (by the generic
        path); the examples found here are added to it.
        """
        calls = rec.calls
        calls.clear()
        with tf.GradientTape(persistent=want_curvature) as tape:
            rec.active = True
            try:
                y_pred = forward(x)
            finally:
                rec.active = False
            losses = per_example_loss(y, y_pred)
            total = tf.reduce_sum(_times(losses, weights))
            objectives = curvature_objectives(y_pred, seed_pair, weights)
        missing = [layer.name for layer in probed if id(layer) not in calls]
        if missing:
            raise ValueError(f"layers {missing} were not called by the model's forward pass")
        inputs = [calls[id(layer)][0] for layer in probed]
        zs = [calls[id(layer)][1] for layer in probed]
        deltas = tape.gradient(total, zs, unconnected_gradients=_ZERO)
        bad = bad | _nonfinite_rows(losses)
        for a, delta in zip(inputs, deltas, strict=True):
            bad |= _unbounded_rows(a, delta)
        taped = zs  # the outputs the tape differentiates by (the zeroed copies are not)
        inputs, zs, deltas = _zero_rows((inputs, zs, deltas), bad)
        kept = _times(1.0 - tf.cast(bad, tf.float32), weights)

        def moments_from(output_gradients: list) -> tuple[dict, dict]:
            found, factors = {}, {}
            for layer, a, delta in zip(probed, inputs, output_gradients, strict=True):
                rule = rules[id(layer)]
                for role, m in rule.moments(layer, a, delta).items():
                    found[(id(layer), role)] = m
                if layer in kron_layers:
                    factors[(id(layer), "kronecker")] = rule.kronecker_outputs(layer, delta)
            return found, factors

        def squares_at(objective: tf.Tensor) -> dict:
            output_gradients = tape.gradient(objective, taped, unconnected_gradients=_ZERO)
            found, factors = moments_from(_zero_rows(output_gradients, bad))
            return {**{k: m.sumsq for k, m in found.items()}, **factors}

        moments, factors = moments_from(deltas)
        curvature = chained_squares(objectives, squares_at)
        kron_values = []
        for layer, a in zip(probed, inputs, strict=True):
            if layer not in kron_layers:
                continue
            a = tf.cast(tf.nest.flatten(a)[0], tf.float32)
            kron_values.append(  # kept: 0 for padded and non-finite examples
                rules[id(layer)].kronecker_inputs(layer, a, zs[probed.index(layer)], kept)
            )
            kron_values.append(factors[(id(layer), "kronecker")])
            if want_curvature:
                kron_values.append(curvature[(id(layer), "kronecker")])
        for layer in act_layers:  # layer-level values: Kronecker factors, then zero counts
            kron_values += _zero_counts(layer, zs[probed.index(layer)], kept)
        return moments, curvature, kron_values, bad

    generic_variables = [t.variable for t in generic]
    vectorizable = not any(_grouped_conv(t.layer) for t in generic)

    def per_example_gradients(
        x: Any, labels: Any, scale: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, list]:
        """Per-example losses ``[B]`` and gradients ``[B, *shape]`` of the generic weights."""

        def one(args: tuple) -> tuple[tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(per_example_loss(_expand(args[1]), forward(_expand(args[0]))))
                if scale is not None:
                    value = value * args[2]
            return value, tape.gradient(value, generic_variables, unconnected_gradients=_ZERO)

        elems = (x, labels) if scale is None else (x, labels, scale)
        if recurrent or not vectorizable:
            signature = (
                tf.TensorSpec([], tf.float32),
                [tf.TensorSpec(v.shape, v.dtype) for v in generic_variables],
            )

            def one_of_map(args: tuple) -> tuple[tf.Tensor, list[tf.Tensor]]:
                value, grads = one(args)
                return tf.cast(value, tf.float32), [tf.convert_to_tensor(g) for g in grads]

            return tf.map_fn(one_of_map, elems, fn_output_signature=signature)
        return tf.vectorized_map(one, elems)

    def generic_gradients(x: Any, y: Any, weights: tf.Tensor | None) -> tuple[list, tf.Tensor]:
        """The generic weights' per-example gradients and the non-finite examples."""
        values, grads = per_example_gradients(x, y, weights)
        bad = _nonfinite_rows(values)
        for g in grads:
            bad |= _nonfinite_rows(g)
        return grads, bad

    def generic_values(
        grads: list, bad: tf.Tensor, x: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor
    ) -> tuple[list, list | None]:
        def per_example(labels: Any, scale: tf.Tensor | None = None) -> list:
            return _zero_rows(per_example_gradients(x, labels, scale)[1], bad)

        def squares(grads: list) -> dict:
            return {i: tf.reduce_sum(tf.square(g), 0) for i, g in enumerate(grads)}

        moments = [moments_of(g) for g in _zero_rows(grads, bad)]
        curvature = None
        if hessian == "ggn":
            y_sampled = per_example_loss.sample_labels(_finite_rows(forward(x)), seed_pair)
            curvature = squares(per_example(y_sampled, weights))
        elif hessian == "ggn_exact":
            pairs = per_example_loss.label_distribution(forward(x))
            curvature = chained_squares(
                pairs,
                lambda pair: squares(per_example(pair[0], _times(tf.sqrt(pair[1]), weights))),
            )
        return moments, curvature

    def replica_step(x: Any, y: Any, weights: tf.Tensor | None, seed_pair: tf.Tensor) -> tf.Tensor:
        """Add one chunk; return ``[examples]`` bool, the non-finite ones (padding dropped)."""
        if strategy.num_replicas_in_sync > 1:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed_pair = tf.random.experimental.stateless_fold_in(seed_pair, replica)
        bad = tf.zeros(tf.shape(tf.nest.flatten(x)[0])[:1], tf.bool)
        grads = None
        if generic:
            grads, bad = generic_gradients(x, y, weights)
        moments, curvature, kron_values = {}, None, []
        if probed:
            moments, curvature, kron_values, bad = closed_form_values(x, y, weights, seed_pair, bad)
        generic_moments, generic_curvature = (
            generic_values(grads, bad, x, weights, seed_pair) if generic else ([], None)
        )
        values, g_index = [], 0
        for t in targets:
            if t.rule is not None:
                key = (id(t.layer), t.role)
                m, c = moments[key], curvature[key] if want_curvature else None
            else:
                m = generic_moments[g_index]
                c = generic_curvature[g_index] if want_curvature else None
                g_index += 1
            values += [m.sum, m.sumsq] + ([c] if want_curvature else [])
        values += kron_values
        real = _times(tf.ones_like(bad, tf.float32), weights)  # 0: padding of a replica
        dropped = real * tf.cast(bad, tf.float32)
        values += [tf.reduce_sum(real - dropped), tf.reduce_sum(dropped)]
        accumulators.add(values)
        return tf.boolean_mask(bad, real > 0)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, weights: Any, seed_pair: tf.Tensor) -> Any:
        return strategy.run(replica_step, args=(x, y, weights, seed_pair))

    floats_by_spec: dict[Any, int] = {}

    def per_example_floats(x_spec: Any) -> int:
        key = tuple(tf.nest.flatten(x_spec))
        if key not in floats_by_spec:
            floats_by_spec[key] = _count_per_example_floats(x_spec)
        return floats_by_spec[key]

    def _count_per_example_floats(x_spec: Any) -> int:
        passes = 2 if want_curvature else 1  # the moments' and the curvature's backward pass
        total = passes * sum(size_of(t.variable.shape) for t in generic)
        if not probed:
            return total
        calls = rec.calls
        calls.clear()
        rec.active = True
        try:
            tf.function(forward).get_concrete_function(x_spec)
        finally:
            rec.active = False
        for layer in probed:
            a, z = calls[id(layer)]
            in_shape, out_shape = tf.nest.flatten(a)[0].shape[1:], z.shape[1:]
            held = size_of(out_shape) + rules[id(layer)].per_example_floats(
                layer, in_shape, out_shape
            )
            total += size_of(in_shape) + size_of(out_shape) + passes * held
        calls.clear()
        return total

    return _Plan(
        step,
        accumulators,
        per_example_floats,
        rec,
        targets,
        probed,
        reasons,
        kron_layers,
        _hooked_layers(model),
        act_layers,
    )


def collect_statistics(
    model: keras.Model,
    data: Any,
    *,
    weights: Sequence[tf.Variable] | None = None,
    loss: Any = None,
    hessian: str | None = "fisher",
    max_examples: int | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    closed_form: bool = True,
    kronecker: bool = False,
    activations: bool = False,
    seed: int = 0,
    verbose: int = 1,
    skip_nonfinite: bool = False,
) -> CollectedStatistics:
    """Per-example gradient moments of ``weights`` over ``data``.

    Args:
      model: a tf_keras model; it is called with ``training=False``.
      data: a ``tf.data.Dataset`` of ``(x, y)`` batches (or single examples) or
        an ``(x, y)`` tuple of arrays. Under ``MultiWorkerMirroredStrategy``
        each worker passes its own shard.
      weights: the variables to collect for (default: all trainable weights).
      loss: the per-example loss (default: the compiled loss); see
        :func:`tfstatprune.stats.losses.resolve_loss`.
      hessian: ``"fisher"`` (moments only), ``"ggn"`` (also the sampled GGN
        diagonal; needs a cross-entropy loss) or ``"ggn_exact"`` (the exact GGN
        diagonal of a cross-entropy over the classes of outputs
        ``[batch, classes]``: one more backward pass per class); ``None`` is
        the same as fisher. See the module docstring for the maths and scaling.
      max_examples: use at most this many examples (default: all of ``data``).
      batch_size: examples per chunk (default: from ``memory_budget_mb``).
      memory_budget_mb: bound on the per-example quantities held for one chunk
        (see ``CollectedStatistics.peak_bytes``).
      closed_form: use the closed-form layer rules (False: generic path only).
      kronecker: also collect the Kronecker factors of the layers whose rule
        gives them (Dense), attached to their kernels' statistics
        (``WeightStatistics.kronecker``, see :mod:`tfstatprune.stats.kronecker`).
      activations: also count, per output channel of each Dense/Conv layer with
        a closed-form rule, how often its activation is exactly 0, attached to
        its kernel's statistics (``WeightStatistics.activations``, see
        :mod:`tfstatprune.stats.activations`).
      seed: seed for the sampled labels of the GGN estimate.
      verbose: 1 shows a progress bar, 0 is silent.
      skip_nonfinite: leave out the examples whose loss or per-example
        gradients are NaN/Inf (or overflow float32), with a
        ``SkippedExamplesWarning`` saying how many; by default they are an
        error (see the module docstring).

    Returns:
      :class:`CollectedStatistics`; under a ``tf.distribute`` strategy (the one
      in scope, else the model's), the statistics of all replicas' and workers'
      examples, the same on every worker.

    Raises:
      ValueError: empty data, data not fitting the model, labels not fitting
        the model's output and the loss (class indices out of range, one-hot
        labels with a sparse cross-entropy or the reverse), a loss without
        per-example values, an unknown ``hessian``.
      NonFiniteDataError: (a ``ValueError``) examples with a non-finite loss
        or gradient, unless ``skip_nonfinite=True``.
      TypeError: inputs of a dtype the model cannot take (strings).

    Warns:
      NoSignalWarning: some layers' per-example gradients were all 0.
    """
    if hessian is None:
        hessian = "fisher"
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
    started = time.perf_counter()
    per_example_loss: PerExampleLoss = resolve_loss(model, loss)
    if hessian == "ggn" and per_example_loss.sample_labels is None:
        raise ValueError(
            f"hessian='ggn' samples labels from the model's predictions, which needs a "
            f"cross-entropy loss; the loss is {per_example_loss.name!r}: use hessian='fisher'"
        )
    if hessian == "ggn_exact" and per_example_loss.label_distribution is None:
        raise ValueError(
            f"hessian='ggn_exact' enumerates the labels of the model's predictions, which "
            f"needs a cross-entropy loss; the loss is {per_example_loss.name!r}: "
            "use hessian='fisher'"
        )
    weights = list(model.trainable_weights if weights is None else weights)
    if not weights:
        raise ValueError("there are no weights to collect statistics for")
    want_curvature = hessian != "fisher"
    strategy = strategy_for(model)
    plan = _plan_for(
        model,
        weights,
        loss,
        per_example_loss,
        hessian,
        closed_form,
        strategy,
        kronecker,
        activations,
    )
    _warn_generic(plan.reasons)
    input_rank = len(model.input_shape) if isinstance(model.input_shape, tuple) else None
    x_spec = _example_spec(data, input_rank)
    _check_input_shape(model, x_spec)
    check_input_dtype(model, x_spec)
    targets = plan.targets
    progbar = keras.utils.Progbar(None, verbose=verbose, unit_name="example")
    with strategy.scope(), _patched_calls(plan.hooked, plan.probed, plan.rec):
        per_example = max(plan.per_example_floats(x_spec), 1)
        if batch_size is None:
            budget = memory_budget_mb * _MB / _BYTES_PER_FLOAT
            batch_size = int(max(local_replicas(strategy), min(MAX_CHUNK, budget // per_example)))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan.accumulators.reset()
        seen, flags = 0, []
        for index, (x, y) in enumerate(_iter_chunks(data, batch_size, max_examples, input_rank)):
            if index == 0:
                _check_input_shape(model, x)
            check_labels(per_example_loss.kind, model, y, seen, first=index == 0)
            n = _first_dim(x)
            bad = plan.step(
                *distribute_chunk(strategy, x, y, n), tf.constant([seed, index], tf.int64)
            )
            flags.append((seen, strategy.experimental_local_results(bad)))
            seen += n
            progbar.add(n)
        totals = plan.accumulators.totals()
    count, skipped = (int(round(float(t))) for t in totals[-2:])
    if skipped:
        indices = [
            offset + i
            for offset, parts in flags
            for i in np.flatnonzero(np.concatenate([np.asarray(p) for p in parts]))
        ]
        if not skip_nonfinite or count == 0:
            raise nonfinite_error(skipped, count + skipped, indices)
        warn_skipped(skipped, count + skipped, indices)
    if count == 0:
        raise ValueError("stats_data is empty: pass at least one (x, y) example")
    per_target = 3 if want_curvature else 2
    key = weight_keys(model)
    result = {}
    for i, t in enumerate(targets):
        sums = totals[i * per_target : (i + 1) * per_target]
        result[key[t.variable]] = WeightStatistics(
            count,
            sums[0],
            sums[1],
            sums[2] if want_curvature else None,
            _regularizer_curvature(t),
            rounding=chunk_rounding(batch_size),
        )
    _check_finite_totals(result)
    warn_no_signal(
        {name: st.sumsq for name, st in result.items()},
        {t.variable.name: t.layer.name for t in targets},
    )
    offset = len(targets) * per_target
    per_layer = 3 if want_curvature else 2
    for k, layer in enumerate(plan.kron_layers):
        sums = totals[offset + k * per_layer : offset + (k + 1) * per_layer]
        factors = KroneckerFactors(
            count,
            sums[0],
            sums[1],
            sums[2] if want_curvature else None,
            bool(getattr(layer, "use_bias", False)),
        )
        kernel = next(t for t in targets if t.layer is layer and t.role == "kernel")
        name = key[kernel.variable]
        result[name] = result[name]._replace(kronecker=factors)
    offset += len(plan.kron_layers) * per_layer
    for k, layer in enumerate(plan.act_layers):
        zeros, observations = totals[offset + 2 * k], totals[offset + 2 * k + 1]
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        name = next(key[t.variable] for t in targets if t.layer is layer and t.role == "kernel")
        result[name] = result[name]._replace(
            activations=ActivationStatistics(
                count, float(observations), np.asarray(zeros, np.float64), activation
            )
        )
    return CollectedStatistics(
        weights=result,
        count=count,
        chunk_size=batch_size,
        peak_bytes=int(batch_size * per_example * _BYTES_PER_FLOAT),
        generic=[key[t.variable] for t in targets if t.rule is None],
        seconds=time.perf_counter() - started,
        skipped=skipped,
    )


def _check_finite_totals(result: dict[str, WeightStatistics]) -> None:
    """Sums that overflowed float32 although every example was finite: a clear error."""
    for name, st in result.items():
        parts = [st.sum, st.sumsq] + ([st.curvature] if st.curvature is not None else [])
        if not all(np.isfinite(p).all() for p in parts):
            raise ValueError(
                f"the gradient statistics of {name} overflowed float32 although every "
                "example's loss and gradients are finite: the per-example gradients are too "
                "large to square and sum. Scale the inputs to a moderate range (or pass a "
                "smaller batch_size=)"
            )
