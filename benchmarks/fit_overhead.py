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
trains one epoch of each model, in a rotated order; the table gives the median
epoch time and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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


def epoch_seconds(
    model: keras.Model, callbacks: list, x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one epoch."""
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, callbacks=callbacks, verbose=0)
    return time.perf_counter() - started, time.process_time() - cpu


def measure(examples: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU epoch seconds per model and round (after a warm-up epoch each)."""
    data = datasets.mnist(datasets.resolve_source())
    x, y = data.x_train[:examples], data.y_train[:examples]
    dense = models.compile_classifier(models.lenet_300_100(l2=1e-4, seed=0))
    dense.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    found = contestants(dense)
    for model, callbacks in found.values():
        epoch_seconds(model, callbacks, x, y)
    names = list(found)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, used = epoch_seconds(*found[name], x, y)
            seconds[name].append(wall)
            cpu[name].append(used)
    return seconds, cpu


def ratios(seconds: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Per-round ratios of ``a``'s epoch time to ``b``'s (same round, same load)."""
    return [p / q for p, q in zip(seconds[a], seconds[b], strict=True)]


def report(
    seconds: dict[str, list[float]], cpu: dict[str, list[float]], examples: int, command: str
) -> str:
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
    verdict = "met" if ours <= TARGET else "not met"
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
            "| model | epoch s | vs plain | vs tfmot | vs tfmot, spread |",
            "|:--|--:|--:|--:|--:|",
            *rows,
            "",
            f"Target tfstatprune / tfmot <= {TARGET}: {verdict} ({ours:.3f}).",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here")
    args = parser.parse_args(argv)
    seconds, cpu = measure(args.examples, args.rounds)
    command = "python -m benchmarks.fit_overhead " + " ".join(argv or sys.argv[1:])
    text = report(seconds, cpu, args.examples, command.strip())
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
