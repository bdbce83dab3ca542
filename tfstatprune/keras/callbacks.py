"""The callback that makes masks follow the schedule inside ``model.fit``."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow_model_optimization.python.core.sparsity.keras import (
    pruning_callbacks,
    pruning_schedule,
    pruning_wrapper,
)

from tfstatprune._keras import keras
from tfstatprune.keras.adjust import adjust_after_pruning, connections
from tfstatprune.keras.config import StatsConfig
from tfstatprune.keras.consistency import (
    UNIT_GRANULARITIES,
    consistent_masks,
    coupled_units,
    structured_layers,
    update_wrapper_masks,
)
from tfstatprune.keras.graph import UnitGraph, trace_units
from tfstatprune.keras.scoring import describe_estimators, mask_units, resolve_criterion
from tfstatprune.keras.step import PruneStepResult, column_floors, prune_step
from tfstatprune.keras.wrapper import PruneStatistically, stats_data_of
from tfstatprune.schedules import IterativeSparsity, schedule_decision
from tfstatprune.stats.keys import weight_keys

__all__ = ["StatisticalPruning", "callbacks", "may_prune"]


class StatisticalPruning(pruning_callbacks.UpdatePruningStep):
    """tfmot's ``UpdatePruningStep`` that also rescores and remasks at pruning steps.

    At every step where a wrapper's schedule prunes (evaluated exactly as the
    wrapper evaluates it in the graph: step 0 before the first batch, then
    1, 2, ... for the training batches), the callback collects statistics on
    ``stats_data`` with ``training=False`` (the step counter does not move),
    scores the prunable weights with each wrapper's criterion, turns the scores
    into masks (:func:`tfstatprune.masking.compute_masks`: exact counts,
    layer or global scope, what is pruned stays pruned, ties broken by
    ``|theta|``), writes them into the wrappers and applies them. Units and
    filters pruned with ``granularity="unit"``/``"filter"`` also zero the input
    rows that read them in wrapped layers downstream; layers that are not
    wrapped are left alone (:mod:`tfstatprune.keras.consistency`).

    Args:
      stats_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
        batches for the statistics (only needed by criteria that use them);
        default: the data given to :func:`tfstatprune.prune_statistically`.
      loss: per-example loss (default: the compiled loss).
      max_examples: use at most this many examples per pruning step.
      batch_size: examples per statistics chunk (default: from a memory budget).
      skip_nonfinite: leave out the examples whose loss or gradients are
        NaN/Inf, with a warning saying how many (default: an error).
      seed: seed for sampled labels and for the ``random`` criterion.
      verbose: 1 prints one line per pruning step (and which layers a
        criterion's fallback scored: the default ``"wald"`` uses the diagonal
        form where a layer has no Kronecker factors), 2 adds the statistics
        progress bar, 0 is silent. Each step's record in ``history`` holds
        ``"estimators"``: ``{layer: estimator}`` (see
        :class:`tfstatprune.keras.scoring.ScoringResult`).
      adjust_dropout: after each mask update, scale the rate of the Dropout
        feeding a pruned layer by ``sqrt(C_after / C_before)``, C its
        connections (Han et al. 2015; :mod:`tfstatprune.keras.adjust`).
        None: only for wrappers with an ``IterativeSparsity`` schedule.
      reset_batchnorm: after each mask update, reset the moving statistics of
        the BatchNormalization layers after a pruned layer, to be re-learned.
        None: only for wrappers with an ``IterativeSparsity`` schedule.

    Example:
      >>> cb = StatisticalPruning(stats_data=None, verbose=0)
      >>> isinstance(cb, keras.callbacks.Callback)
      True
    """

    def __init__(
        self,
        stats_data: Any = None,
        *,
        loss: Any = None,
        max_examples: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        verbose: int = 1,
        skip_nonfinite: bool = False,
        adjust_dropout: bool | None = None,
        reset_batchnorm: bool | None = None,
    ) -> None:
        super().__init__()
        self.adjust_dropout = adjust_dropout
        self.reset_batchnorm = reset_batchnorm
        self.stats_data = stats_data
        self.stats = StatsConfig(
            loss=loss,
            max_examples=max_examples,
            batch_size=batch_size,
            seed=seed,
            verbose=verbose,
            skip_nonfinite=skip_nonfinite,
        )
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        self._wrappers: list[PruneStatistically] = []
        self._started = False
        self._step: int | None = None
        self._counting = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self._started = False
        self._step = None
        # One on_train_batch_begin per step, unless Keras runs several per call.
        per_call = getattr(self.model, "_steps_per_execution", None)
        self._counting = per_call is None or int(per_call.numpy()) == 1
        self._wrappers = [
            layer
            for layer in pruning_wrapper.collect_prunable_layers(self.model)
            if isinstance(layer, PruneStatistically)
        ]
        if not self._wrappers:
            raise ValueError(
                "the model has no tfstatprune pruning wrappers: wrap it with "
                "tfstatprune.prune_statistically(model, ...) before fit"
            )
        self._data = self.stats_data
        if self._data is None:
            self._data = stats_data_of(self._wrappers)
        if self._data is None:
            for wrapper in self._wrappers:
                crit = resolve_criterion(wrapper.criterion, wrapper.criterion_options)
                if crit.needs(wrapper.criterion_options).needs_data:
                    raise ValueError(
                        f"criterion {crit.name!r} of layer {wrapper.layer.name!r} needs "
                        "statistics, and no data was given: pass stats_data to "
                        "tfstatprune.prune_statistically(model, stats_data, ...) or to "
                        "tfstatprune.callbacks(stats_data)"
                    )

    # The step is read from the wrappers once per epoch (and after on_train_begin:
    # callbacks that restore the model, BackupAndRestore, may run after ours), then
    # counted here: a device read per batch would cost what tfmot's callback does not.
    # tfmot's custom-training-loop protocol calls only on_train_begin,
    # on_train_batch_begin and on_epoch_end. The masks of the step training starts from
    # (step 0 of a new model) are set at the first epoch's start (for
    # PruningSummaries), or batch's.
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._step = None
        self._start()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        # The wrapper increments its step counter at the start of the training
        # call and evaluates the schedule at the new value.
        step = self._start() + 1
        self._step = step if self._counting else None
        self._update(step)

    def on_epoch_end(self, batch: int, logs: dict | None = None) -> None:
        # (tfmot's name for the argument, which its custom-loop guide passes by keyword)
        super().on_epoch_end(batch, logs)
        self._step = None

    def _start(self) -> int:
        """The wrappers' step; the first time, also its masks."""
        if self._step is None:
            self._step = int(self._wrappers[0].pruning_step.numpy())
        step = self._step
        if not self._started:
            self._started = True
            self._update(step)
        return step

    def _update(self, step: int) -> None:
        # Runs before every batch: each schedule is asked once (wrappers usually share
        # one; tfmot's own are answered in Python, see may_prune), and a wrapper's
        # mask_step is read from the device only at pruning steps.
        due = []
        decisions: dict[int, Any] = {}
        for wrapper in self._wrappers:
            schedule = wrapper.pruning_schedule
            if id(schedule) not in decisions:
                decisions[id(schedule)] = (
                    schedule_decision(schedule, step) if may_prune(schedule, step) else None
                )
            decision = decisions[id(schedule)]
            if decision is None or not decision.should_prune:
                continue
            if int(wrapper.mask_step.numpy()) == step:
                continue
            if decision.sparsity > 0 and wrapper.pruning_vars:
                due.append((wrapper, decision.sparsity))
            else:  # no mask changes (0 %, or no prunable weights): record the step as done
                wrapper.mask_step.assign(step)
        if due:
            self.update_masks(due, step)

    def update_masks(self, due: Sequence[tuple[PruneStatistically, float]], step: int) -> None:
        """Score and remask ``due`` (wrapper, target sparsity) pairs at ``step``."""
        started = time.perf_counter()
        before = {w: connections(w) for w in self._wrappers}
        for wrapper in self._wrappers:
            wrapper.apply_masks()
        stats = dataclasses.replace(self.stats, verbose=int(self.verbose > 1))
        examples = 0
        estimators: dict[str, str] = {}
        # Structured masks read the model's graph: traced once per step, not per use.
        graph = trace_units(self.model) if structured_layers(self._wrappers) else None
        for members in _group_by_settings(due):
            result = self._prune_group(members, step, stats, graph)
            if result.scoring.statistics is not None:
                examples = result.scoring.statistics.count
            estimators.update(result.scoring.estimators)
            if result.scoring.fallback_layers and self.verbose == 1:  # 2: score_units said it
                first = members[0][0]
                name = resolve_criterion(first.criterion, first.criterion_options).name
                print(f"\n[tfstatprune] {describe_estimators(name, result.scoring.estimators)}")
        update_wrapper_masks(self.model, self._wrappers, graph)  # rows of wrappers not due now
        self._adjust({w: (c, connections(w)) for w, c in before.items()}, due)
        record = {
            "step": step,
            "seconds": time.perf_counter() - started,
            "examples": examples,
            "sparsity": {w.layer.name: _sparsity(w) for w, _ in due},
            "estimators": estimators,
        }
        self.history.append(record)
        if self.verbose:
            levels = ", ".join(f"{k} {v:.1%}" for k, v in record["sparsity"].items())
            print(
                f"\n[tfstatprune] step {step}: masks updated in {record['seconds']:.1f} s "
                f"({examples} examples): {levels}"
            )

    def _prune_group(
        self,
        members: Sequence[tuple[PruneStatistically, float]],
        step: int,
        stats: StatsConfig,
        graph: UnitGraph | None = None,
    ) -> PruneStepResult:
        """One :func:`~tfstatprune.keras.step.prune_step` over wrappers sharing settings
        (``graph``: the model's traced units, needed by structured masks)."""
        wrappers = [w for w, _ in members]
        settings = wrappers[0].settings
        units = mask_units(
            [w.layer for w in wrappers],
            settings.granularity,
            weights={w.layer.name: [v for v, _, _ in w.pruning_vars] for w in wrappers},
        )
        if settings.scope == "global":
            sparsities = {s for _, s in members}
            if len(sparsities) != 1:
                raise ValueError(
                    "globally scoped layers must share one schedule; got sparsities "
                    f"{sorted(sparsities)} at step {step}"
                )
            sparsity: Any = sparsities.pop()
        else:
            level = {id(w.layer): s for w, s in members}
            sparsity = {u.key: level[id(u.layer)] for u in units}
        floor = {id(w.layer): w.keep_per_unit for w in wrappers}
        coupled = []
        if settings.granularity in UNIT_GRANULARITIES:
            graph = trace_units(self.model) if graph is None else graph
            coupled = coupled_units(graph, [w.layer.name for w in wrappers])

        def write_masks(masks: dict[str, np.ndarray]) -> None:
            for wrapper in wrappers:
                wrapper.set_masks(masks, step)

        return prune_step(
            self.model,
            units,
            self._data,
            settings,
            sparsity,
            variables={k: v for w in wrappers for v, k in weight_keys(w.layer).items()},
            write_masks=write_masks,
            stats=stats,
            step=step,
            previous={k: v for w in wrappers for k, v in w.current_masks().items()},
            keep_per_column=column_floors(units, lambda layer: floor[id(layer)]),
            consistent=lambda masks: consistent_masks(self.model, self._wrappers, masks, graph),
            coupled=coupled,
        )

    def _adjust(
        self,
        changes: dict[PruneStatistically, tuple[int, int]],
        due: Sequence[tuple[PruneStatistically, float]],
    ) -> None:
        """Dropout rates and BatchNormalization statistics after pruned layers."""
        iterative = any(isinstance(w.pruning_schedule, IterativeSparsity) for w, _ in due)
        dropout = iterative if self.adjust_dropout is None else self.adjust_dropout
        batchnorm = iterative if self.reset_batchnorm is None else self.reset_batchnorm
        if dropout or batchnorm:
            adjust_after_pruning(self.model, changes, dropout=dropout, batchnorm=batchnorm)


_TFMOT_SCHEDULES = (pruning_schedule.ConstantSparsity, pruning_schedule.PolynomialDecay)


def may_prune(schedule: Any, step: int) -> bool:
    """False when ``schedule`` is one of tfmot's own and does not prune at ``step``.

    tfmot's ``ConstantSparsity`` and ``PolynomialDecay`` prune at the steps
    ``begin_step <= step <= end_step`` (``end_step < 0``: no end) with
    ``(step - begin_step) % frequency == 0``
    (``PruningSchedule._should_prune_in_step``); asking them means a few eager
    TensorFlow ops, which the callback would otherwise pay before every batch.
    Any other schedule (subclasses included) may prune: it is asked.

    >>> may_prune(pruning_schedule.ConstantSparsity(0.5, 0, end_step=0), 1)
    False
    """
    if type(schedule) not in _TFMOT_SCHEDULES:
        return True
    begin, end = schedule.begin_step, schedule.end_step
    return begin <= step and (step <= end or end < 0) and (step - begin) % schedule.frequency == 0


def _sparsity(wrapper: PruneStatistically) -> float:
    masks = list(wrapper.current_masks().values())
    return 1.0 - sum(float(m.sum()) for m in masks) / max(sum(m.size for m in masks), 1)


def _group_by_settings(
    due: Sequence[tuple[PruneStatistically, float]],
) -> list[list[tuple[PruneStatistically, float]]]:
    """Wrappers with equal mask settings are scored together."""
    groups: dict[tuple, list[tuple[PruneStatistically, float]]] = {}
    for wrapper, sparsity in due:
        groups.setdefault(wrapper.settings.group_key(), []).append((wrapper, sparsity))
    return list(groups.values())


def callbacks(
    stats_data: Any = None,
    *,
    log_dir: str | None = None,
    **kwargs: Any,
) -> list[keras.callbacks.Callback]:
    """The callbacks a pruned model needs in ``fit``.

    Args:
      stats_data: the data statistics are collected on at each pruning step
        (default: the ``stats_data`` given to
        :func:`tfstatprune.prune_statistically`; a criterion that needs data
        when neither has it is an error at the start of ``fit``).
      log_dir: also log sparsity to TensorBoard (tfmot's ``PruningSummaries``).
      **kwargs: passed to :class:`StatisticalPruning`.

    Returns:
      ``[StatisticalPruning(...)]`` (a subclass of tfmot's ``UpdatePruningStep``,
      so tfmot's step callback is included), plus ``PruningSummaries``.
    """
    found: list[keras.callbacks.Callback] = [StatisticalPruning(stats_data, **kwargs)]
    if log_dir is not None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "log_dir= writes TensorBoard summaries, which needs the tensorboard "
                "package: pip install tensorboard (or tfstatprune[tensorboard])"
            )
        found.append(pruning_callbacks.PruningSummaries(log_dir=log_dir))
    return found
