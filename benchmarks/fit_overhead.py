"""What the pruning wrapper costs inside ``fit``: tfstatprune vs tfmot vs no wrapper.

Usage::

    python -m benchmarks.fit_overhead [--examples 20000] [--rounds 3]
        [--out docs/results/fit_overhead.md]

LeNet-300-100 on MNIST, three copies of the same trained weights:

- ``plain``: the model unwrapped;
- ``tfmot``: ``tfmot.sparsity.keras.prune_low_magnitude`` with
  ``UpdatePruningStep``;
- ``tfstatprune``: ``tfstatprune.prune_statistically(..., "magnitude")`` with
  ``tfstatprune.callbacks()``;

both pruned with the same tfmot schedule, ``ConstantSparsity(0.9, begin_step=0,
end_step=0)``: one pruning step at the start, then only the steady state the
issue is about (the per-step schedule check, the mask multiplication, the
callbacks). After one warm-up epoch each (tracing, the pruning step), every round
trains one epoch of each model, in a rotated order. The target is read from the
steady steps: the time from one batch's start to the next one's (the traced step
and every callback's per-batch work), median over every step of every round,
which a busy machine disturbs less than whole epochs; epochs (median of the
per-round ratios) and CPU time are reported beside it. What differs is also
counted, not timed: the operation types of each traced training step and the
Python time of the callbacks' per-batch hooks.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_model_optimization as tfmot

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune._keras import keras

SPARSITY = 0.9
BATCH_SIZE = 128
TARGET = 1.02  # tfstatprune / tfmot, steady-state epochs


def schedule() -> Any:
    """One pruning step at step 0, nothing after."""
    return tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0, end_step=0)


def contestants(dense: keras.Model) -> dict[str, tuple[keras.Model, list]]:
    """The three models, compiled, with the callbacks their ``fit`` needs."""
    plain = tsp.copy_model(dense)
    ours = tsp.prune_statistically(dense, None, "magnitude", schedule())
    theirs = tfmot.sparsity.keras.prune_low_magnitude(tsp.copy_model(dense), schedule())
    found = {
        "plain": (plain, []),
        "tfmot": (theirs, [tfmot.sparsity.keras.UpdatePruningStep()]),
        "tfstatprune": (ours, tsp.callbacks(None, verbose=0)),
    }
    for model, _ in found.values():
        models.compile_classifier(model)
    return found


class StepClock(keras.callbacks.Callback):
    """Wall-clock and CPU seconds from one training batch's start to the next one's.

    A step so measured holds everything a batch costs: the traced training step and
    every callback's per-batch work (this one's too, the same for every model). The
    first batch of each ``fit`` is left out (it carries the once-per-fit work).
    """

    def __init__(self) -> None:
        super().__init__()
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._last = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now


def epoch_seconds(
    model: keras.Model, callbacks: list, x: np.ndarray, y: np.ndarray, clock: StepClock
) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one epoch (its steps go to ``clock``)."""
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, callbacks=[*callbacks, clock], verbose=0)
    return time.perf_counter() - started, time.process_time() - cpu


class Measured(NamedTuple):
    """Per model: epoch seconds per round (wall, CPU), every steady step's clock, the
    operations of its traced training step and its callbacks' per-batch microseconds."""

    seconds: dict[str, list[float]]
    cpu: dict[str, list[float]]
    steps: dict[str, StepClock]
    ops: dict[str, collections.Counter]
    callback_us: dict[str, float]


def step_operations(model: keras.Model) -> collections.Counter:
    """Operation types of the traced training step, the functions it calls included."""
    graphs = [f.graph for f in model.train_function._list_all_concrete_functions()]
    found = collections.Counter(op.type for graph in graphs for op in graph.get_operations())
    for graph in graphs:
        for function in graph.as_graph_def().library.function:
            found.update(node.op for node in function.node_def)
    return found


def callback_microseconds(model: keras.Model, callbacks: list, batches: int = 2000) -> float:
    """Python time of the callbacks' per-batch hooks, microseconds per batch."""
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
    started = time.perf_counter()
    for batch in range(batches):
        for callback in callbacks:
            callback.on_train_batch_begin(batch)
            callback.on_train_batch_end(batch)
    return 1e6 * (time.perf_counter() - started) / batches


def measure(examples: int, rounds: int) -> Measured:
    """Epoch and step times per model and round (after a warm-up epoch each)."""
    data = datasets.mnist(datasets.resolve_source())
    x, y = data.x_train[:examples], data.y_train[:examples]
    dense = models.compile_classifier(models.lenet_300_100(l2=1e-4, seed=0))
    dense.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    found = contestants(dense)
    for model, callbacks in found.values():
        epoch_seconds(model, callbacks, x, y, StepClock())
    names = list(found)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    steps = {name: StepClock() for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, used = epoch_seconds(*found[name], x, y, steps[name])
            seconds[name].append(wall)
            cpu[name].append(used)
    ops = {name: step_operations(model) for name, (model, _) in found.items()}
    callback_us = {name: callback_microseconds(*found[name]) for name in names}
    return Measured(seconds, cpu, steps, ops, callback_us)


def ratios(seconds: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Per-round ratios of ``a``'s epoch time to ``b``'s (same round, same load)."""
    return [p / q for p, q in zip(seconds[a], seconds[b], strict=True)]


def report(measured: Measured, examples: int, command: str) -> str:
    seconds, cpu, steps, ops, callback_us = measured

    def ratio(a: str, b: str) -> float:
        return statistics.median(ratios(seconds, a, b))

    def spread(a: str, b: str) -> str:
        values = sorted(ratios(seconds, a, b))
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        return f"{quartiles[0]:.3f}-{quartiles[2]:.3f} ({values[0]:.3f}-{values[-1]:.3f})"

    ours = ratio("tfstatprune", "tfmot")
    ours_cpu = statistics.median(ratios(cpu, "tfstatprune", "tfmot"))
    cpu_rows = [
        f"| {name} | {statistics.median(values):.2f} | "
        f"{statistics.median(ratios(cpu, name, 'tfmot')):.3f} |"
        for name, values in cpu.items()
    ]
    rows = [
        f"| {name} | {statistics.median(values):.2f} | "
        f"{ratio(name, 'plain'):.3f} | {ratio(name, 'tfmot'):.3f} | {spread(name, 'tfmot')} |"
        for name, values in seconds.items()
    ]
    step_ms = {
        name: (1e3 * statistics.median(c.wall), 1e3 * statistics.median(c.cpu))
        for name, c in steps.items()
    }
    step_rows = [
        f"| {name} | {len(steps[name].wall)} | {wall:.3f} | {wall / step_ms['tfmot'][0]:.3f} "
        f"| {used:.3f} | {used / step_ms['tfmot'][1]:.3f} |"
        for name, (wall, used) in step_ms.items()
    ]
    ours_step = step_ms["tfstatprune"][0] / step_ms["tfmot"][0]
    verdict = "met" if ours_step <= TARGET else "not met"
    return "\n".join(
        [
            "# Wrapper cost inside fit",
            "",
            f"Command: `{command}`",
            "",
            f"LeNet-300-100, {examples} MNIST examples per epoch, batch {BATCH_SIZE}, pruned "
            f"to {SPARSITY:.0%} at step 0 by tfmot's ConstantSparsity (end_step=0); "
            f"{len(seconds['plain'])} interleaved rounds of one epoch each after a warm-up "
            f"epoch; median epoch seconds and median per-round ratios; the spread of the "
            f"per-round ratios vs tfmot as quartiles (and min-max). Machine: "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f} at the end.",
            "",
            "Steady-state steps: the time from one training batch's start to the next "
            "one's (the traced step plus every callback's per-batch work), every step of "
            "every round but the first of each fit; medians:",
            "",
            "| model | steps | step ms | vs tfmot | step CPU ms | vs tfmot |",
            "|:--|--:|--:|--:|--:|--:|",
            *step_rows,
            "",
            f"Target tfstatprune / tfmot <= {TARGET} (median steady step, wall-clock): "
            f"{verdict} ({ours_step:.3f}).",
            "",
            "Where a step's work differs, counted rather than timed: the operations of "
            "the traced training step (the functions it calls included; most sit in "
            "branches a step does not take) and the Python time of the callbacks' "
            "per-batch hooks.",
            "",
            "| model | step operations | vs tfmot: added | vs tfmot: absent | "
            "callbacks µs per batch |",
            "|:--|--:|:--|:--|--:|",
            *[
                f"| {name} | {sum(ops[name].values())} | {_counts(ops[name] - ops['tfmot'])} "
                f"| {_counts(ops['tfmot'] - ops[name])} | {callback_us[name]:.1f} |"
                for name in ops
            ],
            "",
            "Whole epochs (one `fit` call each, so the once-per-fit work of the callbacks "
            "is in them): median epoch seconds and median per-round ratios.",
            "",
            "| model | epoch s | vs plain | vs tfmot | vs tfmot, spread |",
            "|:--|--:|--:|--:|--:|",
            *rows,
            "",
            f"Epochs tfstatprune / tfmot: {ours:.3f}.",
            "",
            "Process CPU seconds of the same epochs (all threads; less sensitive to other "
            "processes on the machine than wall-clock time):",
            "",
            "| model | epoch CPU s | vs tfmot |",
            "|:--|--:|--:|",
            *cpu_rows,
            "",
            f"CPU time tfstatprune / tfmot: {ours_cpu:.3f}.",
            "",
        ]
    )


def _counts(counter: collections.Counter, shown: int = 8) -> str:
    """``Type n, ...`` for the most frequent ``shown`` types (and how many more)."""
    common = counter.most_common()
    text = ", ".join(f"{kind} {n}" for kind, n in common[:shown]) or "none"
    return text + (f", {len(common) - shown} more types" if len(common) > shown else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here")
    args = parser.parse_args(argv)
    measured = measure(args.examples, args.rounds)
    command = "python -m benchmarks.fit_overhead " + " ".join(argv or sys.argv[1:])
    text = report(measured, args.examples, command.strip())
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
