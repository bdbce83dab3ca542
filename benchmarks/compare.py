"""``tfstatprune compare``: every criterion, one-shot, on the same trained model.

An experiment of the source tree, not of the library: run it from a clone as
``python -m benchmarks.compare [options]`` or ``tfstatprune compare [options]``
(the command loads this file).

For each seed:

1. train the dense model on MNIST, or reuse the one a previous run trained
   with the same settings (saved in the output directory with its
   :class:`~tfstatprune.WeightHistory`, recorded while it trained);
2. prune it one-shot by every criterion to every sparsity
   (:func:`tfstatprune.prune_once`, the same model and the same statistics
   data for all), and optionally retrain each pruned model for N epochs with
   its zeros kept (:func:`tfstatprune.prune_statistically` with
   ``OneShotSparsity`` at step 0 re-selects exactly the pruned weights);
3. measure test accuracy, the compression ratio (all parameters / non-zero
   parameters) and the theoretical speedup (dense multiply-adds / multiply-adds
   of the non-zero weights), the metrics ShrinkBench reports (Blalock, Gonzalez
   Ortiz, Frankle & Guttag 2020, "What is the State of Neural Network Pruning?").

The history criteria (``weight_updates``, ``n2ps``) read the history of the
dense model's own training: the sum of each weight's updates over all of it,
and its variation over (roughly) the last epoch -- the window is one epoch of
steps -- "after convergence". They need no extra training run, and a cached
model comes with its history.

The table (mean +- standard deviation over the seeds) is printed and written,
with a plot of accuracy against sparsity, to the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import tfstatprune as tsp
from benchmarks._common import compile_and_fit, say, subset, train_dense
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.commands import (
    EXIT_OK,
    Command,
    CommandError,
    OutputDir,
    int_at_least,
    run_command,
)
from tfstatprune.criteria import get_criterion
from tfstatprune.structure.cost import kernel_parameters, nonzero_flops
from tfstatprune.tables import Table, format_markdown, format_text

__all__ = [
    "COMMAND",
    "CompareConfig",
    "CompareResult",
    "MODELS",
    "Measurement",
    "add_arguments",
    "main",
    "nonzero_flops",
    "run",
    "run_from_args",
]

TOOL = "tfstatprune compare"
DEFAULT_OUT = Path("runs") / "compare"
DEFAULT_CRITERIA = (
    "magnitude",
    "random",
    "obd",
    "wald_diag",
    "taylor",
    "sensitivity",
    "weight_updates",
    "n2ps",
)
DEFAULT_SPARSITIES = (0.5, 0.8, 0.9, 0.95)
MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet_300_100": models.lenet_300_100,
    "lenet5": models.lenet5,
    "fc_challenge": models.fc_challenge,
}
L2 = 1e-4
EVAL_BATCH_SIZE = 1000
REPORT_FILE = "compare.md"
RESULTS_FILE = "compare.json"
PLOT_FILE = "compare.png"
DENSE = "dense"
# --quick: like `tfstatprune demo --quick`.
QUICK_EPOCHS = 1
QUICK_TRAIN_EXAMPLES = 10_000
QUICK_STATS_EXAMPLES = 1_000
QUICK_TEST_EXAMPLES = 2_000


def load_mnist() -> tuple[datasets.MNIST, str]:
    """MNIST and the name of its source."""
    source = datasets.resolve_source()
    return datasets.mnist(source), source


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison (the defaults are the full run).

    Attributes:
      model: a key of :data:`MODELS`.
      criteria: the criteria to compare.
      sparsities: the levels each criterion prunes to (one-shot, each from the dense model).
      seeds: the number of seeds (0, 1, ...): dense models, data subsets, random criteria.
      retrain_epochs: epochs of retraining of every pruned model (0: none).
      epochs: epochs of dense training.
      batch_size: training batch size.
      train_examples: train on a random subset of this size (all if None).
      stats_examples: examples the statistics are computed on.
      test_examples: evaluate on a subset of the test set (all if None).
      granularity: what is pruned (see :func:`tfstatprune.prune_once`).
      scope: ``"layer"`` or ``"global"``.
      out: output directory.
      quick: a smoke run (changes only the settings above and the report title).
      force: overwrite files in ``out`` the command did not write.
    """

    model: str = "lenet_300_100"
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    seeds: int = 3
    retrain_epochs: int = 0
    epochs: int = 8
    batch_size: int = 128
    train_examples: int | None = None
    stats_examples: int = 10_000
    test_examples: int | None = None
    granularity: Any = "weight"
    scope: str = "layer"
    out: Path = DEFAULT_OUT
    quick: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {sorted(MODELS)}")
        if self.seeds < 1 or self.epochs < 1 or self.retrain_epochs < 0:
            raise ValueError("seeds and epochs must be >= 1, retrain_epochs >= 0")
        if not self.criteria or not self.sparsities:
            raise ValueError("give at least one criterion and one sparsity")
        for name in self.criteria:
            get_criterion(name)  # raises for an unknown name, listing the known ones
        for level in self.sparsities:
            if not 0.0 <= level < 1.0:
                raise ValueError(f"sparsities must be in [0, 1), got {level}")

    def dense_file(self, seed: int) -> str:
        return f"dense-{self.model}-seed{seed}.keras"

    def history_file(self, seed: int) -> str:
        return f"history-{self.model}-seed{seed}.npz"

    def output_files(self) -> list[str]:
        """The files the run writes in :attr:`out`."""
        cached = [f(s) for s in range(self.seeds) for f in (self.dense_file, self.history_file)]
        return [*cached, REPORT_FILE, RESULTS_FILE, PLOT_FILE]


class Measurement(NamedTuple):
    """One pruned (or the dense) model of one seed.

    Attributes:
      criterion: the criterion, or ``"dense"``.
      sparsity: the target sparsity (0 for the dense model).
      seed: the seed.
      accuracy: test accuracy right after pruning.
      retrained: test accuracy after retraining (None without retraining).
      compression: all parameters / non-zero parameters.
      speedup: dense multiply-adds / multiply-adds of the non-zero weights.
      seconds: wall time of pruning (and retraining).
    """

    criterion: str
    sparsity: float
    seed: int
    accuracy: float
    retrained: float | None
    compression: float
    speedup: float
    seconds: float


class CompareResult(NamedTuple):
    """What a comparison measured: every model of every seed, and notes."""

    config: CompareConfig
    source: str
    measurements: list[Measurement]
    notes: list[str]
    seconds: float


# ----------------------------------------------------------------------- metrics


def nonzero_parameters(model: keras.Model) -> int:
    """Non-zero kernel and bias entries (the parameters :func:`models.count_params` counts)."""
    return kernel_parameters(model, nonzero=True)


# ------------------------------------------------------------------------ the run


def _recipe(config: CompareConfig, seed: int, source: str, steps_per_epoch: int) -> dict:
    return {
        "model": config.model,
        "l2": L2,
        "seed": seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "train_examples": config.train_examples,
        "history_window": steps_per_epoch,
        "mnist_source": source,
        "tfstatprune": tsp.__version__,
    }


def dense_model(
    config: CompareConfig, out: OutputDir, seed: int, source: str, x: np.ndarray, y: np.ndarray
) -> tuple[keras.Model, tsp.WeightHistory, bool]:
    """The trained dense model of ``seed`` and the history of its training; cached in ``out``.

    Returns:
      The (compiled) model, its history and whether they were loaded.
    """
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    recipe = _recipe(config, seed, source, steps_per_epoch)
    model_file, history_file = config.dense_file(seed), config.history_file(seed)
    if out.recorded(model_file) == {"recipe": recipe} and out.recorded(history_file) == {
        "recipe": recipe
    }:
        model = keras.models.load_model(out.path(model_file), compile=False)
        history = tsp.WeightHistory.load(out.path(history_file))
        return models.compile_classifier(model), history, True
    history = tsp.WeightHistory(window=steps_per_epoch)
    model = train_dense(
        MODELS[config.model],
        x,
        y,
        seed=seed,
        l2=L2,
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=[history],
    )
    out.root.mkdir(parents=True, exist_ok=True)
    model.save(out.path(model_file))
    out.record(model_file, recipe=recipe)
    history.save(out.path(history_file))
    out.record(history_file, recipe=recipe)
    return model, history, False


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    models.compile_classifier(model)
    _, accuracy = model.evaluate(x, y, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return float(accuracy)


def retrain(
    pruned: keras.Model,
    sparsity: float,
    config: CompareConfig,
    x: np.ndarray,
    y: np.ndarray,
) -> keras.Model:
    """Retrain ``pruned`` for ``config.retrain_epochs`` epochs with its zeros kept.

    The pruning wrappers re-select the pruned weights by magnitude at step 0
    (they are the zeros: the lowest magnitudes, the same count) and keep them
    masked while training.
    """
    wrapped = tsp.prune_statistically(
        pruned,
        None,
        "magnitude",
        tsp.OneShotSparsity(sparsity),
        scope=config.scope,
        granularity=config.granularity,
    )
    compile_and_fit(
        wrapped,
        x,
        y,
        epochs=config.retrain_epochs,
        batch_size=config.batch_size,
        callbacks=tsp.callbacks(None, verbose=0),
    )
    return tsp.strip_pruning(wrapped)


def run(config: CompareConfig) -> CompareResult:
    """Run the comparison, print the table, write report, numbers and plot to ``config.out``.

    Raises:
      tfstatprune.commands.OutputConflict: before any work, if ``config.out`` holds
        a file the command would overwrite but did not write (unless ``force``).
    """
    started = time.perf_counter()
    out = OutputDir(config.out, tool=TOOL)
    out.check(config.output_files(), force=config.force)
    data, source = load_mnist()
    measurements: list[Measurement] = []
    notes: list[str] = []
    failed: set[str] = set()
    for seed in range(config.seeds):
        rng = np.random.default_rng(seed)
        x, y = subset(data.x_train, data.y_train, config.train_examples, rng)
        stats_data = subset(x, y, config.stats_examples, rng)
        x_test, y_test = subset(data.x_test, data.y_test, config.test_examples, rng)
        say(f"seed {seed}: dense {config.model}, {config.epochs} epoch(s) on {len(x)} examples")
        dense, history, cached = dense_model(config, out, seed, source, x, y)
        if cached:
            print("   (reused the model a previous run trained with these settings)")
        total = models.count_params(dense)
        flops = nonzero_flops(dense)
        dense_accuracy = _accuracy(dense, x_test, y_test)
        ratio = total / max(nonzero_parameters(dense), 1)
        measurements.append(Measurement(DENSE, 0.0, seed, dense_accuracy, None, ratio, 1.0, 0.0))
        for criterion in config.criteria:
            if criterion in failed:
                continue
            uses_history = bool(getattr(get_criterion(criterion).request({}), "history", False))
            for level in config.sparsities:
                begun = time.perf_counter()
                try:
                    pruned = tsp.prune_once(
                        dense,
                        history if uses_history else stats_data,
                        level,
                        criterion,
                        config.scope,
                        granularity=config.granularity,
                        seed=seed,
                        verbose=0,
                    )
                except ValueError as error:
                    failed.add(criterion)
                    notes.append(f"{criterion}: skipped, {error}")
                    print(f"   {criterion}: skipped ({error})")
                    break
                accuracy = _accuracy(pruned, x_test, y_test)
                retrained = None
                final = pruned
                if config.retrain_epochs > 0:
                    keras.utils.set_random_seed(seed)
                    final = retrain(pruned, level, config, x, y)
                    retrained = _accuracy(final, x_test, y_test)
                measurements.append(
                    Measurement(
                        criterion,
                        level,
                        seed,
                        accuracy,
                        retrained,
                        total / max(nonzero_parameters(final), 1),
                        flops / max(nonzero_flops(final), 1),
                        time.perf_counter() - begun,
                    )
                )
            print(f"   {criterion}: done")
    result = CompareResult(config, source, measurements, notes, time.perf_counter() - started)
    print("\n" + _title(result) + "\n\n" + format_text(summary_table(result)), flush=True)
    for note in notes:
        print(f"note: {note}")
    out.write_text(REPORT_FILE, report_markdown(result))
    out.write_text(RESULTS_FILE, json.dumps(results_json(result), indent=2) + "\n")
    if write_plot(result, out.path(PLOT_FILE)):
        out.record(PLOT_FILE)
    print(f"\nSaved in {out.root}: {REPORT_FILE}, {RESULTS_FILE}, {PLOT_FILE}")
    return result


# ------------------------------------------------------------------------ report


class Summary(NamedTuple):
    """Mean and standard deviation over the seeds of one (criterion, sparsity)."""

    criterion: str
    sparsity: float
    accuracy: tuple[float, float]
    retrained: tuple[float, float] | None
    compression: float
    speedup: float
    seeds: int


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), spread


def summarize(result: CompareResult) -> list[Summary]:
    """One :class:`Summary` per (criterion, sparsity), dense first, in the run's order."""
    groups: dict[tuple[str, float], list[Measurement]] = {}
    for m in result.measurements:
        groups.setdefault((m.criterion, m.sparsity), []).append(m)
    found = []
    for (criterion, sparsity), members in groups.items():
        retrained = [m.retrained for m in members if m.retrained is not None]
        found.append(
            Summary(
                criterion,
                sparsity,
                _mean_std([m.accuracy for m in members]),
                _mean_std(retrained) if retrained else None,
                float(np.mean([m.compression for m in members])),
                float(np.mean([m.speedup for m in members])),
                len(members),
            )
        )
    return found


def _pm(pair: tuple[float, float] | None, seeds: int) -> str:
    if pair is None:
        return ""
    mean, spread = pair
    return f"{100 * mean:.2f} %" + (f" ± {100 * spread:.2f}" if seeds > 1 else "")


def summary_table(result: CompareResult) -> Table:
    """criterion, sparsity, test accuracy (mean ± std), [retrained], compression, speedup."""
    retrain = result.config.retrain_epochs > 0
    rows = []
    for s in summarize(result):
        row = [s.criterion, f"{100 * s.sparsity:g} %", _pm(s.accuracy, s.seeds)]
        if retrain:
            row.append(_pm(s.retrained, s.seeds))
        row += [f"{s.compression:.2f}x", f"{s.speedup:.2f}x"]
        rows.append(row)
    headers = ["criterion", "sparsity", "test accuracy"]
    if retrain:
        headers.append(f"after {result.config.retrain_epochs} epoch(s) retraining")
    headers += ["compression", "speedup"]
    return Table(headers, rows, "l" + "r" * (len(headers) - 1))


def _title(result: CompareResult) -> str:
    c = result.config
    mode = " (quick run: accuracies are not representative)" if c.quick else ""
    seeds = f"{c.seeds} seed" + ("s" if c.seeds > 1 else "")
    return (
        f"{c.model} on MNIST ({result.source}), one-shot pruning, {c.granularity} granularity, "
        f"{c.scope} scope; {seeds}{mode}"
    )


def report_markdown(result: CompareResult) -> str:
    """The report written to ``compare.md``."""
    c = result.config
    retraining = (
        f" Each pruned model is then retrained for {c.retrain_epochs} epoch(s) with its zeros kept."
        if c.retrain_epochs
        else ""
    )
    notes = "".join(f"- {note}\n" for note in result.notes)
    return (
        f"# tfstatprune compare\n\n{_title(result)}.\n\n"
        f"Dense model: {c.epochs} epoch(s), batch {c.batch_size}, L2 {L2:g}, trained once per "
        f"seed (or reused); every criterion prunes that same model one-shot to each sparsity "
        f"({c.scope} scope), statistics on {c.stats_examples} training examples.{retraining} "
        "`weight_updates` and `n2ps` read the history of the dense model's training (the sum "
        "of updates over all of it; the variation over about the last epoch).\n\n"
        "Accuracy: mean ± standard deviation over the seeds. Compression: all parameters / "
        "non-zero parameters. Speedup: dense multiply-adds / multiply-adds of the non-zero "
        "weights (theoretical; Blalock et al. 2020).\n\n"
        f"{format_markdown(summary_table(result))}\n" + (f"\n## Notes\n\n{notes}" if notes else "")
    )


def results_json(result: CompareResult) -> dict[str, Any]:
    """The numbers of the run, for scripts."""
    config = dataclasses.asdict(result.config)
    config["out"] = str(config["out"])
    return {
        "config": config,
        "mnist_source": result.source,
        "measurements": [m._asdict() for m in result.measurements],
        "notes": result.notes,
        "seconds": result.seconds,
    }


def write_plot(result: CompareResult, path: Path) -> bool:
    """Accuracy against sparsity, one line per criterion (Agg backend); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot (pip install matplotlib)")
        return False
    summaries = summarize(result)
    retrain = result.config.retrain_epochs > 0
    panels = 2 if retrain else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    dense = [s for s in summaries if s.criterion == DENSE]
    for index, attribute in enumerate(["accuracy", "retrained"][:panels]):
        ax = axes[0][index]
        for criterion in dict.fromkeys(s.criterion for s in summaries if s.criterion != DENSE):
            rows = [s for s in summaries if s.criterion == criterion]
            values = [getattr(s, attribute) for s in rows]
            ax.errorbar(
                [100 * s.sparsity for s in rows],
                [100 * v[0] for v in values],
                yerr=[100 * v[1] for v in values],
                marker="o",
                capsize=3,
                label=criterion,
            )
        if dense:
            ax.axhline(100 * dense[0].accuracy[0], color="gray", linestyle="--", label="dense")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("one-shot" if attribute == "accuracy" else "after retraining")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(result.config.model)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ---------------------------------------------------------------- command line


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = tsp.available_criteria()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown criteria {unknown}; available: {', '.join(known)}"
        )
    return names


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        levels = ()
    if not levels or any(not 0.0 <= v < 1.0 for v in levels):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sparsities in [0, 1), got {text!r}"
        )
    return levels


def _granularity(text: str) -> Any:
    if text.startswith("1x"):
        return (1, int(text[2:]))
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tfstatprune compare``."""
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet_300_100")
    parser.add_argument(
        "--criteria",
        type=_names,
        default=DEFAULT_CRITERIA,
        help=f"comma-separated criteria (default: {','.join(DEFAULT_CRITERIA)})",
    )
    parser.add_argument(
        "--sparsity",
        type=_levels,
        default=DEFAULT_SPARSITIES,
        help=f"comma-separated sparsities (default: {','.join(map(str, DEFAULT_SPARSITIES))})",
    )
    parser.add_argument(
        "--retrain-epochs",
        type=int_at_least(0),
        default=0,
        help="retrain every pruned model this many epochs, zeros kept (default: 0)",
    )
    parser.add_argument(
        "--seeds", type=int_at_least(1), default=3, help="number of seeds (default: 3)"
    )
    parser.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=None,
        help="epochs of dense training (default: 8, or 1 with --quick)",
    )
    parser.add_argument(
        "--granularity",
        default="weight",
        choices=["weight", "unit", "filter", "channel", "1x4", "1x16"],
        help="what is pruned (default: weight)",
    )
    parser.add_argument("--scope", choices=["layer", "global"], default="layer")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory: cached dense models, compare.md/.json/.png (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 epoch on a subset, fewer statistics and test examples",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite files in --out it did not write"
    )


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The :class:`CompareConfig` the parsed options ask for."""
    settings: dict[str, Any] = {
        "model": args.model,
        "criteria": tuple(args.criteria),
        "sparsities": tuple(args.sparsity),
        "seeds": args.seeds,
        "retrain_epochs": args.retrain_epochs,
        "granularity": _granularity(args.granularity),
        "scope": args.scope,
        "out": args.out,
        "force": args.force,
    }
    if args.quick:
        settings.update(
            quick=True,
            epochs=QUICK_EPOCHS,
            train_examples=QUICK_TRAIN_EXAMPLES,
            stats_examples=QUICK_STATS_EXAMPLES,
            test_examples=QUICK_TEST_EXAMPLES,
        )
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    try:
        return CompareConfig(**settings)
    except ValueError as error:
        raise CommandError(str(error)) from None


def run_from_args(args: argparse.Namespace) -> int:
    """``tfstatprune compare`` on parsed options."""
    run(config_from_args(args))
    return EXIT_OK


COMMAND = Command(
    name="compare",
    help="prune one trained model one-shot by every criterion; accuracy, compression, speedup",
    description=(
        "Train a model on MNIST once per seed (or reuse the one a previous run trained "
        "with the same settings), prune it one-shot by every criterion to every sparsity, "
        "optionally retrain each pruned model with its zeros kept, and print test "
        "accuracy (mean and standard deviation over the seeds), compression ratio and "
        "theoretical speedup. The table (markdown), the numbers (JSON) and a plot go "
        "to --out; files there the command did not write are never overwritten "
        "without --force."
    ),
    add_arguments=add_arguments,
    run=run_from_args,
)


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks.compare") -> int:
    """``python -m benchmarks.compare [options]``, the same as ``tfstatprune compare [options]``."""
    return run_command(COMMAND, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
