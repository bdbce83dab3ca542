"""TFLite size, batch-1 latency and accuracy of pruned LeNet-300-100 models.

Usage::

    python -m benchmarks.tflite_results [--quick] [--out docs/results/tflite.md]

LeNet-300-100 (:func:`tfstatprune.models.lenet_300_100`, L2 1e-4) is trained
on MNIST, then pruned to 90 % and 95 % of its hidden layers ``fc1`` and
``fc2`` (the 10-unit output layer, 0.4 % of the weights, stays dense) in
three ways, each with retraining inside ``fit``
(:func:`tfstatprune.prune_statistically` with an
:class:`tfstatprune.IterativeSparsity` schedule and
:func:`tfstatprune.callbacks`), by the magnitude and the Wald criteria:

- **weights**: unstructured, weight-level masks (a random-looking pattern);
- **1x4 blocks**: ``granularity=(1, 4)``, the layout TFLite's sparse
  ``FULLY_CONNECTED`` kernel runs natively;
- **units + shrink**: ``granularity="unit"`` (the sparsity counts units of
  fc1 and fc2), then :func:`tfstatprune.shrink` rebuilds the smaller network.

Every model, and the dense one, is exported with
:func:`tflite_export.export` as float32 (sparse storage on) and as full
int8, and all files are timed in one interleaved
:func:`tflite_export.benchmark` run (batch 1, one thread) that also measures
the test accuracy through the LiteRT interpreter on the MNIST test images.

Trained models are cached in ``runs/tflite_results/`` (git-ignored) and
reused when their settings are unchanged. Without ``--out`` the report is
only printed. ``--quick`` is a smoke run of about a minute (one epoch on a
subset, magnitude only, 2,000 test images): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import tfstatprune as tsp
from benchmarks._common import compile_and_fit, say, subset, train_dense
from tflite_export import (
    BenchmarkResult,
    ModelTiming,
    Storage,
    Validation,
    ValidationError,
    benchmark,
    export,
)
from tflite_export.convert import REPRESENTATIVE_EXAMPLES
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.commands import OutputDir
from tfstatprune.granularity import Granularity
from tfstatprune.tables import Table, format_markdown, kib

TOOL = "benchmarks.tflite_results"
CACHE = Path("runs") / "tflite_results"
L2 = 1e-4
SEED = 0
BATCH_SIZE = 128
SPARSITIES = (0.9, 0.95)
# The levels the iterative schedule goes through on its way to the target.
RAMP = (0.5, 0.7, 0.8)
PRUNE_EVERY_EPOCHS = 0.5
HIDDEN_LAYERS = ("fc1", "fc2")
HIDDEN_UNITS = (300, 100)
CRITERIA = ("magnitude", "wald_diag")
INT8 = "int8"
DENSE = "dense"

# The target: a pruned model within this many accuracy points of dense ...
TARGET_ACCURACY_DROP = 0.005
# ... at most this fraction of the dense p50 latency and of its gzipped size.
TARGET_LATENCY_RATIO = 0.35
TARGET_GZIP_RATIO = 0.15


class Variant(NamedTuple):
    """One way of pruning.

    Attributes:
      key: short name used in file names.
      title: what the report calls it.
      granularity: passed to :func:`tfstatprune.prune_statistically`.
      shrink: rebuild the model without its removed units afterwards.
    """

    key: str
    title: str
    granularity: Granularity
    shrink: bool


VARIANTS = (
    Variant("weights", "weights (unstructured)", "weight", False),
    Variant("blocks", "1x4 blocks", (1, 4), False),
    Variant("units", "units + shrink", "unit", True),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run (the defaults are the full run).

    Attributes:
      epochs: dense training epochs.
      train_examples: train on this many examples (all if None).
      stats_examples: examples the statistics are computed on.
      retrain_epochs: epochs of retraining after the last pruning level.
      criteria: the criteria each variant is pruned by.
      test_examples: test images the accuracy is measured on (all if None).
      runs, warmup: timed and untimed benchmark rounds.
      quick: a smoke run.
      out: where the markdown report goes (None: print only).
    """

    epochs: int = 8
    train_examples: int | None = None
    stats_examples: int = 10_000
    retrain_epochs: int = 2
    criteria: tuple[str, ...] = CRITERIA
    test_examples: int | None = None
    runs: int = 2_000
    warmup: int = 200
    quick: bool = False
    out: Path | None = None

    @property
    def cache(self) -> Path:
        return CACHE / ("quick" if self.quick else "full")


QUICK = {
    "epochs": 1,
    "train_examples": 10_000,
    "stats_examples": 1_000,
    "retrain_epochs": 1,
    "criteria": ("magnitude",),
    "test_examples": 2_000,
    "runs": 200,
    "warmup": 20,
    "quick": True,
}


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The :class:`Settings` of a command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tflite_results", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of about a minute: 1 epoch on 10k examples, magnitude only",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    return Settings(**(QUICK if args.quick else {}), out=args.out)


# ------------------------------------------------------------------------ models


class Trained(NamedTuple):
    """A model from :func:`_cached_or_fit`: its training time, and whether it was cached."""

    model: Any
    seconds: float
    cached: bool


class Pruned(NamedTuple):
    """A pruned (stripped, possibly shrunk) Keras model and how it was made."""

    name: str
    variant: Variant
    criterion: str
    sparsity: float
    params: int
    trained: Trained

    @property
    def model(self) -> keras.Model:
        return self.trained.model


def _cached_or_fit(out: OutputDir, name: str, recipe: dict[str, Any], fit) -> Trained:
    """The model saved as ``name`` if it was made by ``recipe``, else ``fit()`` (saved)."""
    details = out.recorded(name)
    if details is not None and details.get("recipe") == recipe:
        model = keras.models.load_model(out.path(name), compile=False)
        return Trained(model, float(details.get("seconds", 0.0)), cached=True)
    started = time.perf_counter()
    model = fit()
    seconds = time.perf_counter() - started
    out.root.mkdir(parents=True, exist_ok=True)
    model.save(out.path(name))
    out.record(name, recipe=recipe, seconds=seconds)
    return Trained(model, seconds, cached=False)


def schedule(sparsity: float, train_examples: int, settings: Settings):
    """``(IterativeSparsity, epochs)``: ramp levels half an epoch apart, then retraining."""
    steps_per_epoch = math.ceil(train_examples / BATCH_SIZE)
    every = max(1, int(steps_per_epoch * PRUNE_EVERY_EPOCHS))
    levels = [s for s in RAMP if s < sparsity] + [sparsity]
    plan = tsp.IterativeSparsity(levels, begin_step=0, every=every)
    last = plan.events()[-1].step
    return plan, math.ceil(last / steps_per_epoch) + settings.retrain_epochs


def prune(dense, variant: Variant, criterion: str, sparsity: float, x, y, stats_data, settings):
    """Prune a copy of ``dense`` (fc1 and fc2) with retraining; stripped, shrunk if asked."""
    plan, epochs = schedule(sparsity, len(x), settings)
    keras.utils.set_random_seed(SEED)
    pruned = tsp.prune_statistically(
        dense,
        stats_data,
        criterion,
        plan,
        granularity=variant.granularity,
        layers=list(HIDDEN_LAYERS),
    )
    compile_and_fit(
        pruned,
        x,
        y,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        callbacks=tsp.callbacks(stats_data),
        verbose=2,
    )
    final = tsp.strip_pruning(pruned)
    return tsp.shrink(final).model if variant.shrink else final


def model_name(variant: Variant, criterion: str, sparsity: float) -> str:
    return f"{variant.key}-{criterion}-{round(100 * sparsity)}"


def train_all(settings: Settings, data: datasets.MNIST, source: str):
    """The dense model and every pruned one (trained, or loaded from the cache)."""
    out = OutputDir(settings.cache, tool=TOOL)
    rng = np.random.default_rng(SEED)
    x, y = subset(data.x_train, data.y_train, settings.train_examples, rng)
    stats_data = subset(x, y, settings.stats_examples, rng)
    recipe = {
        "model": "lenet_300_100",
        "l2": L2,
        "seed": SEED,
        "epochs": settings.epochs,
        "batch_size": BATCH_SIZE,
        "train_examples": len(x),
        "mnist_source": source,
    }

    def fit_dense():
        return train_dense(
            models.lenet_300_100,
            x,
            y,
            seed=SEED,
            l2=L2,
            epochs=settings.epochs,
            batch_size=BATCH_SIZE,
            verbose=2,
        )

    say(f"dense LeNet-300-100: {settings.epochs} epoch(s) on {len(x)} examples, or cached")
    dense = _cached_or_fit(out, f"{DENSE}.keras", recipe, fit_dense)
    pruned = []
    for sparsity in SPARSITIES:
        for variant in VARIANTS:
            for criterion in settings.criteria:
                name = model_name(variant, criterion, sparsity)
                _, epochs = schedule(sparsity, len(x), settings)
                say(f"{name}: {variant.title} by {criterion} to {sparsity:.0%}, {epochs} epochs")
                model_recipe = {
                    **recipe,
                    "variant": variant.key,
                    "criterion": criterion,
                    "sparsity": sparsity,
                    "ramp": list(RAMP),
                    "retrain_epochs": settings.retrain_epochs,
                    "stats_examples": len(stats_data[0]),
                    "tfstatprune": tsp.__version__,
                }
                trained = _cached_or_fit(
                    out,
                    f"{name}.keras",
                    model_recipe,
                    lambda v=variant, c=criterion, s=sparsity: prune(
                        dense.model, v, c, s, x, y, stats_data, settings
                    ),
                )
                params = models.count_params(trained.model)
                pruned.append(Pruned(name, variant, criterion, sparsity, params, trained))
    return dense, pruned, out, x


# ------------------------------------------------------------------------ export


class Row(NamedTuple):
    """One .tflite file of the report."""

    name: str
    kind: str
    criterion: str
    sparsity: float | None
    precision: str
    nonzero: int
    params: int
    path: Path
    validation: Validation | None


def nonzero_weights(model: keras.Model) -> int:
    """Nonzero kernel and bias entries."""
    return sum(int(np.count_nonzero(w)) for layer in model.layers for w in layer.get_weights())


def export_all(dense, pruned: list[Pruned], out: OutputDir, x_train, x_test) -> list[Row]:
    """Every model as float32 (sparse storage) and as int8, validated on test images."""
    entries = [(DENSE, "dense", "-", None, dense, models.count_params(dense))]
    entries += [
        (p.name, p.variant.title, p.criterion, p.sparsity, p.model, p.params) for p in pruned
    ]
    calibration = x_train[:REPRESENTATIVE_EXAMPLES]
    rows = []
    for name, kind, criterion, sparsity, model, params in entries:
        for precision in ("float32", INT8):
            file = f"{name}.tflite" if precision == "float32" else f"{name}-{INT8}.tflite"
            out.check([file])
            say(f"export {file}")
            try:
                exported = export(
                    model,
                    out.path(file),
                    sparse=True,
                    quantize=INT8 if precision == INT8 else None,
                    representative_data=calibration,
                    sample_inputs=x_test,
                    overwrite=True,
                )
            except ValidationError as error:  # timed and reported as failed: keep its bytes
                out.path(file).write_bytes(error.content)
                exported = error.report
            out.record(file)
            rows.append(
                Row(
                    name,
                    kind,
                    criterion,
                    sparsity,
                    precision,
                    nonzero_weights(model),
                    params,
                    out.path(file),
                    exported.validation,
                )
            )
    return rows


# ------------------------------------------------------------------------ report


class Verdict(NamedTuple):
    """How one row compares with the target."""

    accuracy_drop: float
    latency_ratio: float
    gzip_ratio: float

    @property
    def met(self) -> bool:
        return (
            self.accuracy_drop <= TARGET_ACCURACY_DROP
            and self.latency_ratio <= TARGET_LATENCY_RATIO
            and self.gzip_ratio <= TARGET_GZIP_RATIO
        )

    def misses(self) -> list[str]:
        found = []
        if self.accuracy_drop > TARGET_ACCURACY_DROP:
            found.append(
                f"accuracy {100 * self.accuracy_drop:.2f} pt below dense "
                f"({100 * (self.accuracy_drop - TARGET_ACCURACY_DROP):.2f} pt too many)"
            )
        if self.latency_ratio > TARGET_LATENCY_RATIO:
            found.append(
                f"latency {self.latency_ratio:.2f}x dense (target {TARGET_LATENCY_RATIO}x)"
            )
        if self.gzip_ratio > TARGET_GZIP_RATIO:
            found.append(f"gzipped size {self.gzip_ratio:.3f}x (target {TARGET_GZIP_RATIO}x)")
        return found

    def shortfall(self) -> float:
        """How far from the target, summed over the three relative criteria (0 when met)."""
        return (
            max(0.0, self.accuracy_drop - TARGET_ACCURACY_DROP) / TARGET_ACCURACY_DROP
            + max(0.0, self.latency_ratio / TARGET_LATENCY_RATIO - 1)
            + max(0.0, self.gzip_ratio / TARGET_GZIP_RATIO - 1)
        )


class Measured(NamedTuple):
    """One file: how it was made, its timing, and how it compares with the target."""

    row: Row
    timing: ModelTiming
    check: Verdict

    @property
    def label(self) -> str:
        return f"{self.row.kind} {self.row.sparsity:.0%} {self.row.criterion} {self.row.precision}"

    @property
    def change(self) -> str:
        """Accuracy change against dense in points."""
        return f"{-100 * self.check.accuracy_drop:+.2f} pt"


def measure(rows: list[Row], result: BenchmarkResult) -> list[Measured]:
    """Rows with their timings, compared with the first row (dense float32)."""
    base = result.timings[0]
    return [
        Measured(
            row,
            timing,
            Verdict(
                accuracy_drop=base.accuracy - timing.accuracy,
                latency_ratio=timing.p50_ms / base.p50_ms,
                gzip_ratio=timing.gzip_bytes / base.gzip_bytes,
            ),
        )
        for row, timing in zip(rows, result.timings, strict=True)
    ]


def results_table(measured: list[Measured]) -> Table:
    body = []
    for row, timing, check in measured:
        body.append(
            [
                row.kind,
                "-" if row.sparsity is None else f"{row.sparsity:.0%}",
                row.criterion,
                row.precision,
                f"{row.params:,}",
                f"{row.nonzero:,}",
                kib(timing.size_bytes),
                kib(timing.gzip_bytes),
                f"{check.gzip_ratio:.3f}",
                f"{timing.p50_ms * 1000:.1f}",
                f"{timing.p90_ms * 1000:.1f}",
                f"{check.latency_ratio:.2f}",
                f"{timing.accuracy:.2%}",
                f"{-100 * check.accuracy_drop:+.2f}",
                timing.storage_summary(),
                timing.runtime,
                "**met**" if check.met else "-",
            ]
        )
    headers = [
        "model",
        "sparsity",
        "criterion",
        "precision",
        "params",
        "nonzero",
        "KiB",
        "KiB gz",
        "gz / dense",
        "p50 µs",
        "p90 µs",
        "p50 / dense",
        "accuracy",
        "vs dense (pt)",
        "weights stored",
        "runs on",
        "target",
    ]
    return Table(headers, body, "llll" + "r" * 10 + "lll")


def _machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} cores, load average {load}"


def target_text(measured: list[Measured]) -> str:
    dense = measured[0].timing
    head = (
        f"**Target**: a pruned model within {100 * TARGET_ACCURACY_DROP:.1f} points of the dense "
        f"model's test accuracy ({dense.accuracy:.2%} through LiteRT, float32; a drop of 0.5 % "
        f"of it would be {0.5 * dense.accuracy:.2f} points, the same within the noise), at most "
        f"{TARGET_LATENCY_RATIO}x its p50 latency ({dense.p50_ms * 1000:.1f} µs) and at most "
        f"{TARGET_GZIP_RATIO}x its gzipped size ({kib(dense.gzip_bytes)} KiB)."
    )
    met = [m for m in measured if m.check.met]
    if met:
        listed = "\n".join(
            f"- {m.label}: {m.timing.accuracy:.2%} ({m.change}), p50 "
            f"{m.check.latency_ratio:.2f}x, gzipped {m.check.gzip_ratio:.3f}x"
            for m in met
        )
        return f"{head}\n\n**Met** by {_count(len(met), 'model')}:\n\n{listed}"
    closest = sorted(measured[1:], key=lambda m: m.check.shortfall())[:3]
    listed = "\n".join(f"- {m.label}: {'; '.join(m.check.misses())}" for m in closest)
    return f"{head}\n\n**Not met.** The closest models:\n\n{listed}"


def _select(measured: list[Measured], title: str, precision: str) -> list[Measured]:
    return [m for m in measured if m.row.kind == title and m.row.precision == precision]


def _best(measured: list[Measured], title: str, sparsity: float, precision: str) -> Measured:
    """The most accurate criterion for one variant, sparsity and precision."""
    found = [m for m in _select(measured, title, precision) if m.row.sparsity == sparsity]
    return max(found, key=lambda m: m.timing.accuracy)


def _span(values: list[float], form: str) -> str:
    low, high = min(values), max(values)
    return (
        format(low, form)
        if format(low, form) == format(high, form)
        else (f"{format(low, form)}-{format(high, form)}")
    )


def findings(measured: list[Measured]) -> list[str]:
    """What the table shows, in words (every number read from it)."""
    weights, blocks, units = (v.title for v in VARIANTS)
    dense_int8 = measured[1]
    found = []
    b = [_best(measured, blocks, s, "float32") for s in SPARSITIES]
    found.append(
        "**1x4 blocks** run on LiteRT's native sparse `FULLY_CONNECTED` kernel: float32 p50 "
        + ", ".join(
            f"{m.check.latency_ratio:.2f}x dense at {m.row.sparsity:.0%} ({m.change}, "
            f"{m.row.criterion})"
            for m in b
        )
        + "."
    )
    u = [_best(measured, units, s, "float32") for s in SPARSITIES]
    found.append(
        "**Units + shrink** gives the smallest and fastest float models, ordinary dense layers "
        "that XNNPACK runs: "
        + "; ".join(
            f"{m.row.params:,} parameters at {m.row.sparsity:.0%}, p50 "
            f"{m.check.latency_ratio:.2f}x, gzipped {m.check.gzip_ratio:.3f}x, {m.change}"
            for m in u
        )
        + "."
    )
    if u[0].check.accuracy_drop > TARGET_ACCURACY_DROP:
        found[-1] += (
            f" The accuracy misses the target even at {u[0].row.sparsity:.0%} "
            f"({_widths_of(u[0])} units left): what would close it is keeping more units (a "
            "lower unit sparsity: 80 % leaves 60 and 20) or retraining longer; speed and size "
            "have room to spare."
        )
    w = _select(measured, weights, "float32")
    stored = {"densified": 0, "native": 0}
    for m in w:
        stored["densified"] += m.timing.weight_storage.get(Storage.DENSIFIED, 0)
        stored["native"] += m.timing.weight_storage.get(Storage.NATIVE, 0)
    kept = (
        f" and kept the other {stored['native']} in its random-sparse format, which "
        "`FULLY_CONNECTED` runs natively"
        if stored["native"]
        else ""
    )
    found.append(
        "**Unstructured (weight-level) masks** make small files (gzipped "
        f"{_span([m.check.gzip_ratio for m in w], '.3f')}x dense) but little speed: the "
        f"converter stored {stored['densified']} of the {sum(stored.values())} sparse "
        f"hidden-layer tensors for a `DENSIFY` at load (dense speed){kept}; float32 p50 "
        f"{_span([m.check.latency_ratio for m in w], '.2f')}x dense."
    )
    slow = [m for m in measured if m.row.precision == INT8 and "XNNPACK failed" in m.timing.runtime]
    int8_text = (
        f"**Full int8**: the dense int8 model alone runs at {dense_int8.check.latency_ratio:.2f}x "
        f"the dense float32 latency, with {dense_int8.check.gzip_ratio:.3f}x its gzipped size "
        f"({dense_int8.change}): fast, not small enough."
    )
    if slow:
        int8_text += (
            f" XNNPACK could not prepare {_count(len(slow), 'int8 file')} with weights "
            "densified at load (`DENSIFY` of int8); they ran on the builtin kernels at "
            f"{_span([m.check.latency_ratio for m in slow], '.2f')}x the dense float32 latency "
            f"(dense int8: {dense_int8.check.latency_ratio:.2f}x). For int8 speed, export such "
            "models with `sparse=False`, which keeps XNNPACK (not timed here)."
        )
    i8 = [_best(measured, blocks, s, INT8) for s in SPARSITIES]
    int8_text += (
        " Int8 1x4-block models (the converter stores int8 weights in 1x16 blocks where they "
        "fit) run at "
        + ", ".join(
            f"{m.check.latency_ratio:.2f}x with {m.check.gzip_ratio:.3f}x the size at "
            f"{m.row.sparsity:.0%}"
            for m in i8
        )
        + " (against "
        + ", ".join(f"{m.check.latency_ratio:.2f}x and {m.check.gzip_ratio:.3f}x" for m in b)
        + " in float32)."
    )
    found.append(int8_text)
    criteria = sorted({m.row.criterion for m in measured[2:]})
    if len(criteria) == 2:
        diffs = []
        for variant in VARIANTS:
            for sparsity in SPARSITIES:
                pair = {
                    m.row.criterion: m.timing.accuracy
                    for m in _select(measured, variant.title, "float32")
                    if m.row.sparsity == sparsity
                }
                diffs.append(100 * (pair[CRITERIA[1]] - pair[CRITERIA[0]]))
        ahead = sum(d > 0 for d in diffs)
        found.append(
            f"**{CRITERIA[1].capitalize()} vs {CRITERIA[0]}** (same granularity, sparsity and "
            f"retraining, float32): {CRITERIA[1]} minus {CRITERIA[0]} test accuracy is "
            + ", ".join(f"{d:+.2f}" for d in diffs)
            + f" points ({variant_order()}); {CRITERIA[1]} is ahead in {ahead} of {len(diffs)}."
        )
        if max(abs(d) for d in diffs) < 1:
            found[-1] += (
                " With retraining inside `fit` the criterion moves the accuracy by less than a "
                "point; the granularity decides speed, size and most of the accuracy."
            )
    return found


def variant_order() -> str:
    return "; ".join(f"{v.title} at {', '.join(f'{s:.0%}' for s in SPARSITIES)}" for v in VARIANTS)


def report(
    settings: Settings,
    source: str,
    rows: list[Row],
    result: BenchmarkResult,
    pruned: list[Pruned],
    train_examples: int,
    seconds: float,
    trained: list[Trained],
) -> str:
    measured = measure(rows, result)
    command = "python -m benchmarks.tflite_results" + (" --quick" if settings.quick else "")
    if settings.out is not None:
        command += f" --out {settings.out.as_posix()}"
    _, epochs = schedule(SPARSITIES[0], train_examples, settings)
    shrunk = ", ".join(
        f"{p.sparsity:.0%} {p.criterion}: {p.params:,} parameters ({_widths(p.model)})"
        for p in pruned
        if p.variant.shrink
    )
    quick = (
        "\n\n**Quick run** (one epoch on a subset, fewer test images): the numbers mean nothing."
        if settings.quick
        else ""
    )
    reused = sum(t.seconds for t in trained if t.cached)
    timing = (
        f"about {_minutes(seconds + reused)} from scratch on this machine, "
        f"{_minutes(sum(t.seconds for t in trained))} of it training"
    )
    test = settings.test_examples or datasets.NUM_TEST
    ramp = ", ".join(f"{s:.0%}" for s in RAMP)
    bullets = "\n".join(f"- {text}" for text in findings(measured))
    return f"""# TFLite export of pruned LeNet-300-100: size, latency, accuracy

Command: `{command}` ({timing}; trained models are cached in `runs/tflite_results/`,
git-ignored, and reused).{quick}

{target_text(measured)}

## Findings

{bullets}

## Setup

- LeNet-300-100 (784-300-100-10, 266,610 parameters), L2 {L2:g}, Adam 1e-3, batch
  {BATCH_SIZE}, {_count(settings.epochs, "epoch")} on {train_examples:,} MNIST ({source})
  training images.
- Pruning: fc1 and fc2 to the sparsity, per layer (the output layer, 1,010 parameters,
  stays dense), through {ramp} to the target, a level every half epoch from the first step,
  then {_count(settings.retrain_epochs, "epoch")} of retraining ({_count(epochs, "epoch")} of
  `fit` in all; `tsp.prune_statistically` with `tsp.IterativeSparsity` and
  `tsp.callbacks`); statistics on {settings.stats_examples:,} training images at each level.
  Criteria: {", ".join(settings.criteria)}. For units the sparsity counts units of fc1/fc2,
  and `tsp.shrink` then removes them: {shrunk}.
- Export: `tflite_export.export(..., sparse=True)`, float32 and full int8
  (`quantize="int8"`: int8 weights, activations, input and output, calibrated on
  {REPRESENTATIVE_EXAMPLES} training images); each file validated against Keras.
- Timing: one interleaved `tflite_export.benchmark` run over all {len(rows)} files, LiteRT
  ({result.runtime}), batch 1, {result.threads} thread, {result.runs} timed rounds after
  {result.warmup} warm-up rounds, XNNPACK on (models it cannot prepare run on the builtin
  kernels). Accuracy through the interpreter on {test:,} MNIST test images, one at a time.
  Machine: {_machine()} (at the end of the run), Python {platform.python_version()}.

## Results

"params": parameters of the model (after shrink for units); "nonzero": the nonzero ones.
"weights stored": how the converter stored the three weight tensors (dense; sparse and
densified at load; sparse and run by the native sparse kernel). Latency in microseconds per
`invoke()`; "vs dense": test accuracy change in points against dense float32.

{format_markdown(results_table(measured))}

## Notes

- The machine is shared with other jobs, so absolute latencies move with its load; the files
  were timed round by round in a rotating order, so each round sees every model under the
  same load and the ratios to dense are fair even when the absolute numbers are not.
- Timing `invoke()` from Python adds about a microsecond of overhead per call, a floor under
  the smallest models' latencies. `tfstatprune bench` prints the `benchmark_model` command
  lines that time the same files on an Android phone, without Python.
{validation_notes(rows)}"""


def validation_notes(rows: list[Row]) -> str:
    """A note per file whose outputs differ from Keras beyond the export tolerance."""
    notes = []
    for row in rows:
        check = row.validation
        if check is not None and not check.passed:
            notes.append(
                f"- `{row.path.name}` fails the exporter's validation against Keras: "
                f"max |diff| {check.max_abs_diff:.3f} on probabilities (bound "
                f"{check.bound:.2f}), argmax agreement {check.argmax_agreement:.1%}; its "
                "test accuracy is in the table (the file is kept, timed and measured).\n"
            )
    return "".join(notes)


def _minutes(seconds: float) -> str:
    """A duration in seconds under two minutes, else in minutes."""
    if seconds < 2 * 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} minutes"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _widths_of(measured: Measured) -> str:
    """``"30 and 10"``: the units fc1 and fc2 keep at the row's unit sparsity."""
    return " and ".join(str(round(units * (1 - measured.row.sparsity))) for units in HIDDEN_UNITS)


def _widths(model: keras.Model) -> str:
    return "-".join(
        str(layer.kernel.shape[-1]) for layer in model.layers if hasattr(layer, "kernel")
    )


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    settings = parse_args(argv)
    say("load MNIST")
    source = datasets.resolve_source()
    data = datasets.mnist(source)
    dense, pruned, out, x_train = train_all(settings, data, source)
    trained = [dense, *(p.trained for p in pruned)]
    test = settings.test_examples or len(data.x_test)
    x_test, y_test = data.x_test[:test], data.y_test[:test]
    rows = export_all(dense.model, pruned, out, x_train, x_test)
    say(f"benchmark {len(rows)} files, accuracy on {test} test images")
    result = benchmark(
        [row.path for row in rows],
        threads=1,
        runs=settings.runs,
        warmup=settings.warmup,
        data=(x_test, y_test),
        verbose=False,
    )
    text = report(
        settings,
        source,
        rows,
        result,
        pruned,
        len(x_train),
        time.perf_counter() - started,
        trained,
    )
    print(text)
    if settings.out is not None:
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        settings.out.write_text(text, encoding="utf-8")
        print(f"written to {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
