"""Collect per-example gradient statistics of a model's weights over a data set.

One pass over the data in chunks. Per chunk, for the weights whose layer has a
closed-form rule (:mod:`tfstatprune.stats.registry`), one forward pass and one
backward pass of the summed per-example loss give each layer's inputs and the
per-example gradients at its pre-activation output, from which the rule forms
the moments. Weights without a rule get per-example gradients from
``tf.vectorized_map`` (the generic path: correct for any layer, 20-100x slower).
Chunk sums are float32; chunks are merged in float64 on the host.

Curvature (``hessian="ggn"``): the same passes with one label per example drawn
from the model's own predictive distribution give ``sum_i s~_i ** 2``, an
unbiased estimate of n times the generalized Gauss-Newton diagonal of
``m_i`` (Martens 2014; Kunstner et al. 2019). ``hessian="fisher"`` needs nothing
beyond the moments (the empirical Fisher ``sumsq / n``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.losses import PerExampleLoss, resolve_loss
from tfstatprune.stats.moments import WeightStatistics
from tfstatprune.stats.registry import rule_for
from tfstatprune.stats.rules import GradientRule, moments_of

__all__ = ["CollectedStatistics", "check_stats_data", "collect_statistics", "HESSIANS"]

HESSIANS = ("fisher", "ggn")
DEFAULT_MEMORY_BUDGET_MB = 256
MAX_CHUNK = 2048
_BYTES_PER_FLOAT = 4
_MB = 2**20
# Hook a layer may define to replace its ``call`` while statistics are collected
# (pruning wrappers use it to skip their mask-update ops).
STATISTICS_CALL_HOOK = "statistics_call"


class CollectedStatistics(NamedTuple):
    """What :func:`collect_statistics` returns.

    Attributes:
      weights: ``{variable name: WeightStatistics}`` in the order asked for.
      count: the number of examples used (n).
      chunk_size: examples per chunk.
      peak_bytes: the per-example quantities held for one chunk, in bytes.
      generic: names of the weights that took the generic vectorized path.
      seconds: wall time of the collection.
    """

    weights: dict[str, WeightStatistics]
    count: int
    chunk_size: int
    peak_bytes: int
    generic: list[str]
    seconds: float


class _Target(NamedTuple):
    variable: tf.Variable
    layer: keras.layers.Layer
    rule: GradientRule | None
    role: str | None


class _Recorder:
    """Holds ``(inputs, z)`` for each probed layer during one traced forward pass."""

    def __init__(self) -> None:
        self.active = False
        self.calls: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}


def _owners(model: keras.Model) -> dict[Any, keras.layers.Layer]:
    """Map ``variable.ref()`` -> the layer that created it."""
    owners: dict[Any, keras.layers.Layer] = {}
    for layer in [model, *model.submodules]:
        if not isinstance(layer, keras.layers.Layer):
            continue
        for v in getattr(layer, "_trainable_weights", []) + getattr(
            layer, "_non_trainable_weights", []
        ):
            owners.setdefault(v.ref(), layer)
    return owners


def _targets(
    model: keras.Model, weights: Sequence[tf.Variable], closed_form: bool
) -> list[_Target]:
    owners = _owners(model)
    targets = []
    for v in weights:
        layer = owners.get(v.ref())
        if layer is None:
            raise ValueError(f"weight {v.name} does not belong to model {model.name!r}")
        rule = rule_for(layer) if closed_form else None
        role = None
        if rule is not None:
            covered = {w.ref(): r for r, w in rule.weights(layer).items()}
            role = covered.get(v.ref())
            if role is None:
                rule = None
        targets.append(_Target(v, layer, rule, role))
    return targets


@contextlib.contextmanager
def _patched_calls(model: keras.Model, probed: Sequence[keras.layers.Layer], rec: _Recorder):
    """Patch ``call`` of probed layers (and of layers with a statistics hook)."""
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
        for layer in model.submodules:
            hook = getattr(layer, STATISTICS_CALL_HOOK, None)
            if hook is not None:
                patch(layer, hook)
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
    expected = getattr(model, "input_shape", None)
    if expected is None or isinstance(expected, list):
        return
    got = tuple(tf.nest.flatten(x)[0].shape)
    expected = tuple(expected)
    if len(got) != len(expected) or any(
        e is not None and g != e for g, e in zip(got[1:], expected[1:], strict=False)
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
        return
    raise ValueError("stats_data is empty: pass at least one (x, y) example")


def _per_example_floats(targets: Sequence[_Target], chunk_probe_floats: int) -> int:
    generic = sum(int(np.prod(t.variable.shape)) for t in targets if t.rule is None)
    return generic + chunk_probe_floats


class _Plan(NamedTuple):
    """A traced statistics step and what it was traced for (reused across calls)."""

    step: Any
    rec: _Recorder
    targets: list[_Target]
    probed: list[keras.layers.Layer]


# Plans live on the model itself (an untracked attribute), so a model and its
# traced steps are garbage together.
_PLANS_ATTRIBUTE = "_tfstatprune_statistics_plans"


def _plan_for(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    loss: Any,
    per_example_loss: PerExampleLoss,
    want_ggn: bool,
    closed_form: bool,
) -> _Plan:
    """The cached plan for this model, weights, loss and curvature, or a new one."""
    key = (tuple(id(v) for v in weights), id(loss), want_ggn, closed_form)
    plans = model.__dict__.get(_PLANS_ATTRIBUTE)
    if plans is None:
        plans = {}
        object.__setattr__(model, _PLANS_ATTRIBUTE, plans)
    if key not in plans:
        plans[key] = _build_plan(model, weights, per_example_loss, want_ggn, closed_form)
    return plans[key]


def _build_plan(
    model: keras.Model,
    weights: Sequence[tf.Variable],
    per_example_loss: PerExampleLoss,
    want_ggn: bool,
    closed_form: bool,
) -> _Plan:
    targets = _targets(model, weights, closed_form)
    probed = list({id(t.layer): t.layer for t in targets if t.rule is not None}.values())
    generic = [t for t in targets if t.rule is None]
    rec = _Recorder()

    def forward(x: Any) -> tf.Tensor:
        return model(x, training=False)

    def closed_form_moments(x: Any, y: Any, seed_pair: tf.Tensor) -> tuple[dict, dict]:
        rec.calls.clear()
        with tf.GradientTape(persistent=want_ggn) as tape:
            rec.active = True
            try:
                y_pred = forward(x)
            finally:
                rec.active = False
            total = tf.reduce_sum(per_example_loss(y, y_pred))
            if want_ggn:
                y_sampled = tf.stop_gradient(per_example_loss.sample_labels(y_pred, seed_pair))
                total_sampled = tf.reduce_sum(per_example_loss(y_sampled, y_pred))
        missing = [layer.name for layer in probed if id(layer) not in rec.calls]
        if missing:
            raise ValueError(f"layers {missing} were not called by the model's forward pass")
        zs = [rec.calls[id(layer)][1] for layer in probed]
        deltas = tape.gradient(total, zs)
        deltas_sampled = tape.gradient(total_sampled, zs) if want_ggn else [None] * len(zs)
        moments, curvature = {}, {}
        for layer, delta, delta_sampled in zip(probed, deltas, deltas_sampled, strict=True):
            inputs = rec.calls[id(layer)][0]
            rule = rule_for(layer)
            for role, m in rule.moments(layer, inputs, delta).items():
                moments[(id(layer), role)] = m
            if want_ggn:
                for role, m in rule.moments(layer, inputs, delta_sampled).items():
                    curvature[(id(layer), role)] = m.sumsq
        return moments, curvature

    def generic_grads(x: Any, y: Any) -> list[tf.Tensor]:
        variables = [t.variable for t in generic]

        def one(args: tuple[Any, Any]) -> list[tf.Tensor]:
            xi, yi = args
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(per_example_loss(_expand(yi), forward(_expand(xi))))
            return tape.gradient(
                value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )

        return tf.vectorized_map(one, (x, y))

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, seed_pair: tf.Tensor) -> tuple[list, list, list, list]:
        sums, sumsqs, curvs = [], [], []
        moments, curvature = closed_form_moments(x, y, seed_pair) if probed else ({}, {})
        per_example_grads = generic_grads(x, y) if generic else []
        per_example_curv = []
        if generic and want_ggn:
            y_sampled = per_example_loss.sample_labels(forward(x), seed_pair)
            per_example_curv = generic_grads(x, y_sampled)
        g_index = 0
        for t in targets:
            if t.rule is not None:
                m = moments[(id(t.layer), t.role)]
                sums.append(m.sum)
                sumsqs.append(m.sumsq)
                curvs.append(curvature[(id(t.layer), t.role)] if want_ggn else tf.zeros([]))
            else:
                m = moments_of(per_example_grads[g_index])
                sums.append(m.sum)
                sumsqs.append(m.sumsq)
                curvs.append(
                    tf.reduce_sum(tf.square(per_example_curv[g_index]), 0)
                    if want_ggn
                    else tf.zeros([])
                )
                g_index += 1
        counts = tf.shape(tf.nest.flatten(x)[0])[0]
        return sums, sumsqs, curvs, counts

    return _Plan(step, rec, targets, probed)


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
    seed: int = 0,
    verbose: int = 1,
) -> CollectedStatistics:
    """Per-example gradient moments of ``weights`` over ``data``.

    Args:
      model: a tf_keras model; it is called with ``training=False``.
      data: a ``tf.data.Dataset`` of ``(x, y)`` batches (or single examples) or
        an ``(x, y)`` tuple of arrays.
      weights: the variables to collect for (default: all trainable weights).
      loss: the per-example loss (default: the compiled loss); see
        :func:`tfstatprune.stats.losses.resolve_loss`.
      hessian: ``"fisher"`` (moments only) or ``"ggn"`` (also the sampled GGN
        diagonal; needs a cross-entropy loss); ``None`` is the same as fisher.
      max_examples: use at most this many examples (default: all of ``data``).
      batch_size: examples per chunk (default: from ``memory_budget_mb``).
      memory_budget_mb: bound on the per-example quantities held for one chunk.
      closed_form: use the closed-form layer rules (False: generic path only).
      seed: seed for the sampled labels of the GGN estimate.
      verbose: 1 shows a progress bar, 0 is silent.

    Returns:
      :class:`CollectedStatistics`.

    Raises:
      ValueError: empty data, data not fitting the model, a loss without
        per-example values, an unknown ``hessian``.
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
    weights = list(model.trainable_weights if weights is None else weights)
    if not weights:
        raise ValueError("there are no weights to collect statistics for")
    want_ggn = hessian == "ggn"
    plan = _plan_for(model, weights, loss, per_example_loss, want_ggn, closed_form)
    step, rec, targets, probed = plan
    generic = [t for t in targets if t.rule is None]
    probe_floats = sum(
        int(np.prod(layer.input_shape[1:])) + int(np.prod(layer.output_shape[1:]))
        if _static_shapes(layer)
        else 0
        for layer in probed
    )
    per_example = max(_per_example_floats(targets, probe_floats), 1)
    if batch_size is None:
        budget = memory_budget_mb * _MB / _BYTES_PER_FLOAT
        batch_size = int(max(1, min(MAX_CHUNK, budget // per_example)))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    input_rank = len(model.input_shape) if isinstance(model.input_shape, tuple) else None
    names = [t.variable.name for t in targets]
    totals = [
        WeightStatistics.zeros(tuple(t.variable.shape), with_curvature=want_ggn) for t in targets
    ]
    progbar = keras.utils.Progbar(None, verbose=verbose, unit_name="example")
    count = 0
    with _patched_calls(model, probed, rec):
        for index, (x, y) in enumerate(_iter_chunks(data, batch_size, max_examples, input_rank)):
            if index == 0:
                _check_input_shape(model, x)
            sums, sumsqs, curvs, n = step(x, y, tf.constant([seed, index], tf.int64))
            n = int(n)
            for i, _ in enumerate(targets):
                chunk = WeightStatistics(
                    n,
                    sums[i].numpy(),
                    sumsqs[i].numpy(),
                    curvs[i].numpy() if want_ggn else None,
                )
                totals[i] = totals[i].merge(chunk)
            count += n
            progbar.add(n)
    if count == 0:
        raise ValueError("stats_data is empty: pass at least one (x, y) example")
    result = {
        name: total._replace(regularizer_curvature=_regularizer_curvature(t))
        for name, total, t in zip(names, totals, targets, strict=True)
    }
    return CollectedStatistics(
        weights=result,
        count=count,
        chunk_size=batch_size,
        peak_bytes=int(batch_size * per_example * _BYTES_PER_FLOAT),
        generic=[t.variable.name for t in generic],
        seconds=time.perf_counter() - started,
    )


def _static_shapes(layer: keras.layers.Layer) -> bool:
    try:
        shapes = (layer.input_shape, layer.output_shape)
    except (AttributeError, RuntimeError):
        return False
    return all(isinstance(s, tuple) and all(d is not None for d in s[1:]) for s in shapes)
