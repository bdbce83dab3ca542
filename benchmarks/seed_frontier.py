"""Seed paper, Figs. 2-4: accuracy vs fraction pruned, one-shot and iterative, and the
training loss while retraining.

Usage::

    python -m benchmarks.seed_frontier [--models lenet_300_100,lenet5] [--seeds 3]
        [--criteria magnitude,wald_diag,wald] [--retrain-epochs 2]
        [--levels 0.6,0.8,0.9,0.92,0.94,0.96,0.98,0.99] [--out docs/results/seed_frontier.md]
        [--log runs/seed_frontier.jsonl]

With ``--log`` each (model, seed, criterion, mode) is appended to the log when it
finishes, and a run with the same log measures only what is not in it yet at every
level asked (so a long run can be split, interrupted and resumed; the report is made
from all the rows, a level logged twice counted once). The log does not record the
protocol (epochs, statistics examples): resume a log only with the same options.

The paper's protocol (seed 001, section 4.1, after Han et al. 2015): train the dense
network, score, prune the least salient p % of the weights and freeze them, retrain.

- **one-shot**: for each level p, ``prune_statistically`` with ``OneShotSparsity(p)``
  (all p % at step 0, every layer) and ``--retrain-epochs`` epochs of ``fit`` with
  the masks held;
- **iterative**: one ``fit`` through all the levels in turn (``IterativeSparsity``),
  ``--retrain-epochs`` epochs at each level; accuracy at the end of each level.

Figs. 2 (LeNet-300-100) and 3 (LeNet-5): test accuracy minus the dense model's, per
level, mode and criterion, mean over seeds. Fig. 4: the training loss (Keras' running
mean over each epoch, logged every batch) during the retraining at :data:`FIG4_LEVEL`,
one-shot and iterative. The paper reports that Wald ("Stat", its diagonal form, here
``wald_diag``) pushes the frontier out by about 0.8 % of the parameters, and that it starts
retraining at a lower loss and keeps an advantage. ``wald`` (the default criterion) is this
project's layer-wise estimator (named ``wald_block`` in earlier results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

import tfstatprune as tsp
from benchmarks._common import command_line, compile_and_fit, logged_rows, publish, train_dense
from tfstatprune import datasets, models
from tfstatprune._keras import keras

tf.get_logger().setLevel("ERROR")

BUILDERS = {"lenet_300_100": models.lenet_300_100, "lenet5": models.lenet5}
DENSE_EPOCHS = {"lenet_300_100": 8, "lenet5": 4}
PAPER_LEVELS = (0.6, 0.8, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)
CRITERIA = ("magnitude", "wald_diag", "wald")  # the paper's Stat = wald_diag
MODES = ("one-shot", "iterative")
FIG4_LEVEL = 0.9
L2 = 1e-4
BATCH = 128
STATS_EXAMPLES = 10_000


class BatchLoss(keras.callbacks.Callback):
    """The running training loss after every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.losses.append(float((logs or {}).get("loss", float("nan"))))


class LevelEnds(keras.callbacks.Callback):
    """Test accuracy at the start of the batch that prunes to the next level, and at the end."""

    def __init__(self, steps: list[int], test: tuple[np.ndarray, np.ndarray]) -> None:
        super().__init__()
        self.steps, self.test = steps, test
        self.accuracy: list[float] = []
        self._step = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._step += 1
        if self._step in self.steps:
            self.accuracy.append(accuracy(self.model, self.test))

    def on_train_end(self, logs: dict | None = None) -> None:
        self.accuracy.append(accuracy(self.model, self.test))


def accuracy(model: keras.Model, test: tuple[np.ndarray, np.ndarray]) -> float:
    predictions = model.predict(test[0], batch_size=1000, verbose=0)
    return float(np.mean(predictions.argmax(-1) == test[1]))


def dense_model(name: str, seed: int, epochs: int, data: datasets.MNIST) -> keras.Model:
    return train_dense(
        BUILDERS[name],
        data.x_train,
        data.y_train,
        seed=seed,
        l2=L2,
        epochs=epochs,
        batch_size=BATCH,
    )


def retrain(
    dense: keras.Model,
    criterion: str,
    schedule: Any,
    epochs: int,
    stats_data: tuple,
    data: datasets.MNIST,
    seed: int,
    extra: list,
) -> None:
    keras.utils.set_random_seed(seed + 1)  # the same data order for every criterion
    pruned = tsp.prune_statistically(dense, stats_data, criterion, schedule)
    compile_and_fit(
        pruned,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=BATCH,
        callbacks=[*extra, *tsp.callbacks(stats_data, verbose=0)],
    )


def _unit(row: dict) -> tuple:
    return row["model"], row["seed"], row["criterion"], row["mode"]


def run(args: argparse.Namespace) -> list[dict]:
    """The rows of every (model, seed, criterion, mode) asked for; those in ``args.log``
    are read from it, the others measured and appended to it as each finishes."""
    data = datasets.mnist(datasets.resolve_source())
    test = (data.x_test, data.y_test)
    steps_per_epoch = int(np.ceil(len(data.x_train) / BATCH))
    asked = set(itertools.product(args.models, range(args.seeds), args.criteria, args.modes))
    found: dict[tuple, dict] = {}  # (unit, level) -> row: a level logged twice counts once
    for row in logged_rows(args.log):
        if _unit(row) in asked and row["level"] in args.levels:
            found[(*_unit(row), row["level"])] = row
    # A unit is done when every level asked is in the log (else it is measured again whole).
    done = {u for u in asked if all((*u, level) in found for level in args.levels)}
    logged = [row for row in found.values() if _unit(row) in done]
    rows: list[dict] = []
    if args.report_only:  # the (model, seed) pairs with every criterion and mode logged
        whole = {
            (name, seed)
            for name, seed in itertools.product(args.models, range(args.seeds))
            if all((name, seed, c, m) in done for c in args.criteria for m in args.modes)
        }
        return [row for row in logged if (row["model"], row["seed"]) in whole]
    for seed, name in itertools.product(range(args.seeds), args.models):  # every model per seed
        units = {(name, seed, c, m) for c in args.criteria for m in args.modes}
        if units <= done:
            continue
        epochs = args.dense_epochs or DENSE_EPOCHS[name]
        dense = dense_model(name, seed, epochs, data)
        base = accuracy(dense, test)
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(data.x_train), STATS_EXAMPLES, replace=False))
        stats_data = (data.x_train[chosen], data.y_train[chosen])
        for criterion in args.criteria:
            start = len(rows)
            if "one-shot" in args.modes and (name, seed, criterion, "one-shot") not in done:
                for level in args.levels:
                    losses = BatchLoss()
                    ends = LevelEnds([], test)
                    schedule = tsp.OneShotSparsity(level)
                    retrain(
                        dense,
                        criterion,
                        schedule,
                        args.retrain_epochs,
                        stats_data,
                        data,
                        seed,
                        [ends, losses],
                    )
                    rows.append(
                        dict(
                            model=name,
                            seed=seed,
                            criterion=criterion,
                            mode="one-shot",
                            level=level,
                            dense=base,
                            accuracy=ends.accuracy[-1],
                            losses=losses.losses if level == FIG4_LEVEL else None,
                        )
                    )
            if "iterative" in args.modes and (name, seed, criterion, "iterative") not in done:
                every = args.retrain_epochs * steps_per_epoch
                schedule = tsp.IterativeSparsity(list(args.levels), begin_step=0, every=every)
                ends = LevelEnds([e.step for e in schedule.events()[1:]], test)
                losses = BatchLoss()
                retrain(
                    dense,
                    criterion,
                    schedule,
                    args.retrain_epochs * len(args.levels),
                    stats_data,
                    data,
                    seed,
                    [ends, losses],
                )
                for i, (level, value) in enumerate(zip(args.levels, ends.accuracy, strict=True)):
                    segment = losses.losses[i * every : (i + 1) * every]
                    rows.append(
                        dict(
                            model=name,
                            seed=seed,
                            criterion=criterion,
                            mode="iterative",
                            level=level,
                            dense=base,
                            accuracy=value,
                            losses=segment if level == FIG4_LEVEL else None,
                        )
                    )
            if args.log is not None:
                args.log.parent.mkdir(parents=True, exist_ok=True)
                with args.log.open("a") as log:
                    log.writelines(json.dumps(row) + "\n" for row in rows[start:])
            print(f"{name} seed {seed} {criterion}: done", flush=True)
    return logged + rows


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:+.2f}"
    return f"{100 * statistics.mean(values):+.2f} ± {100 * statistics.stdev(values):.2f}"


def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Seed paper, Figs. 2-4: accuracy vs fraction pruned, one-shot and iterative",
        "",
        f"Command: `{command}`",
        "",
        f"L2 {L2:g}, Adam, batch {BATCH}; statistics on {STATS_EXAMPLES:,} training images; "
        f"{args.retrain_epochs} epoch(s) of retraining per level with the masks held (one-shot: "
        "after pruning at step 0; iterative: between levels). Cells: test accuracy after "
        "retraining minus the dense model's, points, mean ± std over the seeds.",
    ]
    for name in args.models:
        dense = {r["seed"]: r["dense"] for r in rows if r["model"] == name}
        dense_text = f"{100 * statistics.mean(dense.values()):.2f} %" if dense else "-"
        lines += [
            "",
            f"## {name} (dense {dense_text}, {len(dense)} seed(s))",
            "",
            "| mode | criterion | " + " | ".join(f"{100 * p:g} %" for p in args.levels) + " |",
            "|:--|:--|" + "--:|" * len(args.levels),
        ]
        for mode, criterion in itertools.product(args.modes, args.criteria):
            cells = []
            for level in args.levels:
                found = [
                    r["accuracy"] - r["dense"]
                    for r in rows
                    if (r["model"], r["mode"], r["criterion"], r["level"])
                    == (name, mode, criterion, level)
                ]
                cells.append(_cell(found) if found else "-")
            lines.append(f"| {mode} | {criterion} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *loss_table(rows, args)]) + "\n"


def loss_table(rows: list[dict], args: argparse.Namespace, level: float = FIG4_LEVEL) -> list[str]:
    """Fig. 4 in numbers: per model and mode, each criterion's running mean of the training
    loss at the first and at the last batch of the retraining at ``level`` (mean over seeds).

    >>> rows = [dict(model="m", mode="one-shot", criterion="c", level=0.9, losses=[2.0, 0.5]),
    ...         dict(model="m", mode="one-shot", criterion="c", level=0.9, losses=[1.0, 0.1])]
    >>> args = argparse.Namespace(models=["m"], modes=["one-shot"], criteria=["c"])
    >>> loss_table(rows, args)[-1]
    '| m | one-shot | 1.500 → 0.300 |'
    """
    lines = [
        f"Fig. 4 in numbers: the running mean of the training loss at the first batch of the "
        f"retraining at {100 * level:g} % and at its last, mean over the seeds.",
        "",
        "| model | mode | " + " | ".join(args.criteria) + " |",
        "|:--|:--|" + ":--|" * len(args.criteria),
    ]
    for name, mode in itertools.product(args.models, args.modes):
        cells = []
        for criterion in args.criteria:
            curves = [
                r["losses"]
                for r in rows
                if (r["model"], r["mode"], r["criterion"], r["level"])
                == (name, mode, criterion, level)
                and r.get("losses")
            ]
            if not curves:
                cells.append("-")
                continue
            first, last = (statistics.mean(c[i] for c in curves) for i in (0, -1))
            cells.append(f"{first:.3f} → {last:.3f}")
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(2, len(args.models), figsize=(6 * len(args.models), 8))
    axes = np.asarray(axes).reshape(2, len(args.models))
    for column, name in enumerate(args.models):
        top, bottom = axes[0, column], axes[1, column]
        for mode, criterion in itertools.product(args.modes, args.criteria):
            found = [
                r
                for r in rows
                if (r["model"], r["mode"], r["criterion"]) == (name, mode, criterion)
            ]
            if not found:
                continue
            style = "-" if mode == "iterative" else "--"
            means = [
                100 * statistics.mean(r["accuracy"] - r["dense"] for r in found if r["level"] == p)
                for p in args.levels
            ]
            top.plot(
                range(len(args.levels)), means, style, marker="o", label=f"{criterion} ({mode})"
            )
            curves = [r["losses"] for r in found if r["losses"]]
            if curves:
                length = min(len(c) for c in curves)
                mean = np.mean([c[:length] for c in curves], axis=0)
                bottom.plot(mean, style, label=f"{criterion} ({mode})")
        top.set_xticks(range(len(args.levels)), [f"{100 * p:g}" for p in args.levels])
        top.set_xlabel("% of weights pruned")
        top.set_ylabel("accuracy change (points)")
        top.set_title(f"{name}: accuracy vs fraction pruned")
        top.legend(fontsize="x-small")
        bottom.set_xlabel(f"batch of retraining at {100 * FIG4_LEVEL:g} %")
        bottom.set_ylabel("training loss (running mean)")
        bottom.set_title(f"{name}: retraining loss at {100 * FIG4_LEVEL:g} %")
        bottom.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet_300_100,lenet5")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--levels", default=",".join(f"{p:g}" for p in PAPER_LEVELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dense-epochs", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="markdown; .png and .jsonl beside")
    parser.add_argument(
        "--log", type=Path, default=None, help="JSON lines; resumes from it, appended as it goes"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from --log, measure nothing (seeds with every criterion and mode)",
    )
    args = parser.parse_args(argv)
    if args.report_only and args.log is None:
        parser.error("--report-only reads the rows from --log; pass --log")
    args.models = args.models.split(",")
    args.criteria = args.criteria.split(",")
    args.modes = args.modes.split(",")
    args.levels = [float(p) for p in args.levels.split(",")]
    unknown = set(args.models) - set(BUILDERS)
    if unknown or set(args.modes) - set(MODES):
        parser.error(f"models from {sorted(BUILDERS)}, modes from {MODES}")
    rows = run(args)
    text = report(rows, args, command_line("seed_frontier", argv))
    figure = f"\n![frontier and retraining loss]({args.out.stem}.png)\n" if args.out else None
    publish(text, args.out, figure=figure)
    if args.out is not None:
        plot(rows, args, args.out.with_suffix(".png"))
        with args.out.with_suffix(".jsonl").open("w") as log:
            for row in rows:
                log.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
