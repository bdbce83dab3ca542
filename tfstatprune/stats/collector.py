"""Collect per-example gradient statistics of a model's weights over a data set.

The collection is split by concern: :mod:`~tfstatprune.stats.data` chunks and
checks the data, :mod:`~tfstatprune.stats.plan` decides each weight's path and
the named accumulator layout, :mod:`~tfstatprune.stats.probe` records the
probed layers' inputs and outputs, :mod:`~tfstatprune.stats.step` traces the
per-chunk step, :mod:`~tfstatprune.stats.quantities` holds the per-layer
statistics (Kronecker factors, activations); this module runs them and
assembles the records.

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

import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.data import (
    check_input_shape,
    check_stats_data,
    example_spec,
    first_dim,
    input_rank,
    iter_chunks,
)
from tfstatprune.stats.distribute import distribute_chunk, local_replicas, strategy_for
from tfstatprune.stats.keys import weight_keys
from tfstatprune.stats.losses import PerExampleLoss, resolve_loss
from tfstatprune.stats.moments import LayerStatistics, WeightStatistics, chunk_rounding
from tfstatprune.stats.plan import EXAMPLES, SKIPPED, Plan, Target, build_plan
from tfstatprune.stats.quantities import CURVATURE, LAYER_QUANTITIES
from tfstatprune.stats.step import Step
from tfstatprune.stats.validation import (
    check_input_dtype,
    check_labels,
    check_probability_outputs,
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
      layers: ``{layer path: LayerStatistics}`` for the layers whose per-layer
        statistics were asked for (``kronecker=``, ``activations=``); the
        path is the layer's part of its kernel's key (``"fc1"`` for
        ``"fc1/kernel:0"``). The kernel's ``WeightStatistics.layer`` is the
        same record.
    """

    weights: dict[str, WeightStatistics]
    count: int
    chunk_size: int
    peak_bytes: int
    generic: list[str]
    seconds: float
    skipped: int = 0
    layers: dict[str, LayerStatistics] | None = None


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


def _regularizer_curvature(target: Target) -> np.ndarray | float:
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
    quantities: tuple[str, ...],
    diagonal_curvature: bool = True,
) -> tuple[Plan, Step]:
    """The cached plan and step for this model, weights, loss, curvature, strategy, quantities."""
    # The loss actually used: the compiled one may change with a new compile().
    used_loss = loss if loss is not None else getattr(model, "loss", None)
    key = (tuple(id(v) for v in weights), id(used_loss), hessian, closed_form, id(strategy))
    key += (*quantities, diagonal_curvature)
    plans = model.__dict__.get(_PLANS_ATTRIBUTE)
    if plans is None:
        plans = {}
        object.__setattr__(model, _PLANS_ATTRIBUTE, plans)
    if key not in plans:
        plan = build_plan(
            model,
            weights,
            closed_form,
            hessian != "fisher",
            [LAYER_QUANTITIES[name] for name in quantities],
            diagonal_curvature,
        )
        plans[key] = plan, Step(model, plan, per_example_loss, hessian, strategy)
    return plans[key]


def _results(
    model: keras.Model, plan: Plan, sums: dict, count: int, rounding: float
) -> tuple[dict[str, WeightStatistics], dict[str, LayerStatistics]]:
    """The weights' and the layers' records from the unpacked totals ``sums``."""
    key = weight_keys(model)
    weights = {}
    for i, t in enumerate(plan.targets):
        weights[key[t.variable]] = WeightStatistics(
            count,
            sums["weight", i, "sum"],
            sums["weight", i, "sumsq"],
            sums["weight", i, CURVATURE] if plan.curved[i] else None,
            _regularizer_curvature(t),
            rounding=rounding,
        )
    _check_finite_totals(weights)
    records: dict[str, dict[str, Any]] = {}
    for lt in plan.layer_targets:
        prefix = ("layer", lt.probed, lt.quantity.name)
        parts = {name[-1]: value for name, value in sums.items() if name[:-1] == prefix}
        kernel = key[lt.kernel.variable]
        records.setdefault(kernel, {})[lt.quantity.name] = lt.quantity.record(
            lt.layer, count, parts
        )
    layers = {}
    for kernel, fields in records.items():
        layer = LayerStatistics(**fields)
        weights[kernel] = weights[kernel]._replace(layer=layer)
        layers[kernel.rsplit("/", 1)[0]] = layer
    return weights, layers


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
    diagonal_curvature: bool = True,
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
        gives them (Dense, Conv with groups=1; see
        :mod:`tfstatprune.stats.kronecker`), in ``CollectedStatistics.layers``
        and on their kernels' records (``WeightStatistics.kronecker``).
      activations: also count, per output channel of each Dense/Conv layer with
        a closed-form rule, how often its activation is exactly 0 (see
        :mod:`tfstatprune.stats.activations`), in ``CollectedStatistics.layers``
        and on their kernels' records (``WeightStatistics.activations``).
      diagonal_curvature: False, with ``kronecker=True``: the kernels of the
        layers with Kronecker factors get no diagonal curvature (their
        ``WeightStatistics.curvature`` is None; the factors' output side holds
        the curvature the block criteria read). The curvature passes then skip
        those kernels' per-example squares, most of a ``ggn_exact`` pass on a
        CNN. Other weights (biases, layers without factors) keep theirs.
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
            f"Keras cross-entropy (a loss object or name, not a function of your own: it may "
            f"take logits or probabilities); the loss is {per_example_loss.name!r}: use "
            "hessian='fisher', or pass e.g. loss=SparseCategoricalCrossentropy(from_logits=...)"
        )
    if hessian == "ggn_exact" and per_example_loss.label_distribution is None:
        raise ValueError(
            f"hessian='ggn_exact' enumerates the labels of the model's predictions, which "
            f"needs a Keras cross-entropy (a loss object or name, not a function of your own: "
            f"it may take logits or probabilities); the loss is {per_example_loss.name!r}: use "
            "hessian='fisher', or pass e.g. loss=SparseCategoricalCrossentropy(from_logits=...)"
        )
    weights = list(model.trainable_weights if weights is None else weights)
    if not weights:
        raise ValueError("there are no weights to collect statistics for")
    strategy = strategy_for(model)
    quantities = (("kronecker",) if kronecker else ()) + (("activations",) if activations else ())
    plan, step = _plan_for(
        model,
        weights,
        loss,
        per_example_loss,
        hessian,
        closed_form,
        strategy,
        quantities,
        diagonal_curvature,
    )
    _warn_generic(plan.reasons)
    rank = input_rank(model)
    x_spec = example_spec(data, rank)
    check_input_shape(model, x_spec)
    check_input_dtype(model, x_spec)
    progbar = keras.utils.Progbar(None, verbose=verbose, unit_name="example")
    with strategy.scope(), plan.probe.patched(plan.hooked):
        per_example = max(step.per_example_floats(x_spec), 1)
        if batch_size is None:
            budget = memory_budget_mb * _MB / _BYTES_PER_FLOAT
            batch_size = int(max(local_replicas(strategy), min(MAX_CHUNK, budget // per_example)))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        step.accumulators.reset()
        seen, flags = 0, []
        for index, (x, y) in enumerate(iter_chunks(data, batch_size, max_examples, rank)):
            if index == 0:
                check_input_shape(model, x)
                check_probability_outputs(
                    per_example_loss.kind,
                    per_example_loss.from_logits,
                    per_example_loss.name,
                    model,
                    x,
                )
            check_labels(per_example_loss.kind, model, y, seen, first=index == 0)
            n = first_dim(x)
            bad = step.run(
                *distribute_chunk(strategy, x, y, n), tf.constant([seed, index], tf.int64)
            )
            flags.append((seen, strategy.experimental_local_results(bad)))
            seen += n
            progbar.add(n)
        sums = plan.layout.unpack(step.accumulators.totals())
    count, skipped = (int(round(float(sums[name]))) for name in (EXAMPLES, SKIPPED))
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
    result, layers = _results(model, plan, sums, count, chunk_rounding(batch_size))
    warn_no_signal(
        {name: st.sumsq for name, st in result.items()},
        {t.variable.name: t.layer.name for t in plan.targets},
    )
    key = weight_keys(model)
    return CollectedStatistics(
        weights=result,
        count=count,
        chunk_size=batch_size,
        peak_bytes=int(batch_size * per_example * _BYTES_PER_FLOAT),
        generic=[key[t.variable] for t in plan.generic],
        seconds=time.perf_counter() - started,
        skipped=skipped,
        layers=layers,
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
