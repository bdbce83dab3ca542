"""The literature's compression table: weights left at a given test error, with retraining.

Usage::

    python -m benchmarks.compression_table [--models lenet_300_100,lenet5]
        [--targets 0.9,0.95,0.97,0.98,0.99] [--dense-epochs 20] [--prune-epochs 40]
        [--out docs/results/compression_table.md] [--log runs/compression_table.jsonl]

Each run trains the dense model for ``--dense-epochs`` and then prunes inside ``fit``
for ``--prune-epochs`` (the budget of a run is their sum; the table says it), with the
same tfmot ``PolynomialDecay`` schedule for both pipelines (from 0 to the target over
the first two thirds of the pruning epochs, a mask update every half epoch, then
fine-tuning with the masks held):

- **Wald**: ``tfstatprune.prune_statistically(..., criterion=WALD)`` with
  ``tfstatprune.callbacks``;
- **magnitude**: tfmot's own ``prune_low_magnitude`` with ``UpdatePruningStep``.

For every target sparsity the final test error is measured; the table gives, per
model and error threshold, the smallest fraction of weights left among the targets
whose error stays at or under the threshold, beside the published figures (Han et
al. 2015; DNS, Guo et al. 2016; Sparse VD, Molchanov et al. 2017).

With ``--log`` every finished run is appended to a JSON-lines file and a run already
in it is not repeated, so an interrupted table resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tfstatprune as tsp
from benchmarks._common import command_line, compile_and_fit, logged_rows, publish, train_dense
from tfstatprune import datasets, models
from tfstatprune._keras import keras

tf.get_logger().setLevel("ERROR")

WALD = "wald"
BUILDERS = {"lenet_300_100": models.lenet_300_100, "lenet5": models.lenet5}
THRESHOLDS = {"lenet_300_100": (0.020, 0.016), "lenet5": (0.009, 0.008)}
# (fraction of weights left, test error) as published
PUBLISHED = {
    "lenet_300_100": {
        "Han et al. 2015": (0.083, 0.0159),
        "DNS": (0.018, 0.0199),
        "Sparse VD": (0.015, 0.0192),
    },
    "lenet5": {
        "Han et al. 2015": (0.083, 0.0077),
        "DNS": (0.009, 0.0091),
        "Sparse VD": (0.0036, 0.0075),
    },
}
L2 = 1e-4
BATCH = 128
STATS_EXAMPLES = 10_000


def schedule(
    target: float, steps_per_epoch: int, epochs: int
) -> tfmot.sparsity.keras.PruningSchedule:
    """0 -> ``target`` over about the first two thirds of ``epochs``, every half epoch.

    The end step is a multiple of the frequency: tfmot prunes only at those steps, so
    the target is reached exactly.
    """
    frequency = max(1, steps_per_epoch // 2)
    end = frequency * max(1, round(steps_per_epoch * epochs * 2 / 3 / frequency))
    return tfmot.sparsity.keras.PolynomialDecay(0.0, target, 0, end, frequency=frequency)


def error(model: keras.Model, data: datasets.MNIST) -> float:
    predictions = model.predict(data.x_test, batch_size=1000, verbose=0)
    return float(np.mean(predictions.argmax(-1) != data.y_test))


def kernel_density(model: keras.Model) -> float:
    kernels = [w.numpy() for w in model.weights if "kernel" in w.name]
    return sum(int((k != 0).sum()) for k in kernels) / sum(k.size for k in kernels)


def pruned_run(
    pipeline: str,
    dense: keras.Model,
    target: float,
    epochs: int,
    data: datasets.MNIST,
    stats_data: tuple,
) -> keras.Model:
    steps_per_epoch = math.ceil(len(data.x_train) / BATCH)
    plan = schedule(target, steps_per_epoch, epochs)
    if pipeline == "wald":
        model = tsp.prune_statistically(dense, stats_data, WALD, plan)
        callbacks = tsp.callbacks(stats_data, verbose=0)
    else:
        model = tfmot.sparsity.keras.prune_low_magnitude(tsp.copy_model(dense), plan)
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    compile_and_fit(
        model, data.x_train, data.y_train, epochs=epochs, batch_size=BATCH, callbacks=callbacks
    )
    return tsp.strip_pruning(model)


def run(args: argparse.Namespace) -> list[dict]:
    data = datasets.mnist(datasets.resolve_source())
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(data.x_train), STATS_EXAMPLES, replace=False))
    stats_data = (data.x_train[chosen], data.y_train[chosen])
    budget = (args.dense_epochs, args.prune_epochs)
    rows = [r for r in logged_rows(args.log) if tuple(r.get("budget", ())) == budget]
    done = {(r["model"], r["pipeline"], r["target"]) for r in rows}
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict) -> None:
        rows.append(dict(row, budget=list(budget)))
        print(json.dumps(rows[-1]), flush=True)
        if args.log is not None:
            with args.log.open("a") as log:
                log.write(json.dumps(rows[-1]) + "\n")

    for name in args.models:
        # target by target, both pipelines: an interrupted table has both at every level run
        wanted = [(p, t) for t in args.targets for p in ("wald", "magnitude")]
        if all((name, p, t) in done for p, t in wanted):
            continue
        dense = train_dense(
            BUILDERS[name],
            data.x_train,
            data.y_train,
            seed=0,
            l2=L2,
            epochs=args.dense_epochs,
            batch_size=BATCH,
        )
        if (name, "dense", 0.0) not in done:
            record(
                dict(
                    model=name, pipeline="dense", target=0.0, error=error(dense, data), density=1.0
                )
            )
        for pipeline, target in wanted:
            if (name, pipeline, target) in done:
                continue
            keras.utils.set_random_seed(1)
            final = pruned_run(pipeline, dense, target, args.prune_epochs, data, stats_data)
            record(
                dict(
                    model=name,
                    pipeline=pipeline,
                    target=target,
                    error=error(final, data),
                    density=kernel_density(final),
                )
            )
    return [r for r in rows if r["model"] in args.models]


def best_left(rows: list[dict], name: str, pipeline: str, threshold: float) -> str:
    found = [
        r["density"]
        for r in rows
        if (r["model"], r["pipeline"]) == (name, pipeline) and r["error"] <= threshold
    ]
    return f"{100 * min(found):.1f} %" if found else "none"


def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Compression table: weights left at a test error, with retraining",
        "",
        f"Command: `{command}`",
        "",
        f"Budget per run: {args.dense_epochs} dense + {args.prune_epochs} pruning epochs; "
        f"one seed; Wald = `{WALD}` through `prune_statistically`, magnitude = tfmot's "
        "`prune_low_magnitude`, both with the same `PolynomialDecay` schedule. Targets tried: "
        + ", ".join(f"{100 * t:g} %" for t in args.targets)
        + " of the weights pruned.",
        "",
        "| model | error at most | Wald: weights left | magnitude: weights left | published |",
        "|:--|--:|--:|--:|:--|",
    ]
    for name in args.models:
        published = "; ".join(
            f"{who} {100 * left:.2g} % at {100 * err:.2f} %"
            for who, (left, err) in PUBLISHED[name].items()
        )
        for threshold in THRESHOLDS[name]:
            lines.append(
                f"| {name} | {100 * threshold:.1f} % | {best_left(rows, name, 'wald', threshold)} "
                f"| {best_left(rows, name, 'magnitude', threshold)} | {published} |"
            )
    lines += [
        "",
        "Every run:",
        "",
        "| model | pipeline | target | test error | weights left |",
        "|:--|:--|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['pipeline']} | {100 * r['target']:g} % | "
            f"{100 * r['error']:.2f} % | {100 * r['density']:.2f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet_300_100,lenet5")
    parser.add_argument("--targets", default="0.9,0.95,0.97,0.98,0.99")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--prune-epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=None, help="JSON lines; resumes from it")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.targets = [float(t) for t in args.targets.split(",")]
    if set(args.models) - set(BUILDERS):
        parser.error(f"models from {sorted(BUILDERS)}")
    rows = run(args)
    publish(report(rows, args, command_line("compression_table", argv)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
