"""One-shot pruning of a BatchNormalization CNN with and without re-estimated statistics.

Usage::

    python -m benchmarks.batchnorm_recalibration [--quick]
        [--out docs/results/batchnorm_recalibration.md]

A small CNN with a BatchNormalization layer after every hidden layer
(:func:`bn_cnn`: conv 16 -> BN -> ReLU -> pool -> conv 32 -> BN -> ReLU -> pool
-> dense 64 -> BN -> ReLU -> dense 10) is trained once on MNIST (cached under
``runs/batchnorm_recalibration/``), then pruned one-shot, no retraining, by
``tsp.prune_once(model, stats, s, criterion, granularity=g,
recalibrate_batchnorm=...)`` at

- ``granularity="filter"``, 50 % and 70 % of the filters (units) of ``conv1``,
  ``conv2`` and ``fc1`` (the output layer keeps its classes);
- ``granularity="weight"``, 90 % of the weights of every layer;

with ``magnitude`` and ``wald``, each once with ``recalibrate_batchnorm=False``
(the moving statistics stay the dense model's) and once with ``True`` (the
statistics of the BatchNormalization layers after the pruned layers re-estimated
on the same ``STATS_EXAMPLES`` training examples the criterion's statistics
use; :func:`tfstatprune.recalibrate_batchnorm`). The masks are the same both
ways: the script checks that the kernels are. Test accuracy on the 10,000
MNIST test images.

``--quick`` trains one epoch on 5,000 images and prunes at the first level of
each granularity with magnitude only (a smoke run). Every pruning is a library
call a user would make; the script only trains, evaluates and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import tfstatprune as tsp
from benchmarks._common import command_line, publish, say, subset
from tfstatprune import datasets, models
from tfstatprune._keras import keras

CACHE = Path("runs") / "batchnorm_recalibration"
EPOCHS = 2
QUICK_EPOCHS = 1
QUICK_TRAIN = 5000
QUICK_TEST = 2000
BATCH = 128
SEED = 0
STATS_EXAMPLES = 1000
QUICK_STATS_EXAMPLES = 200
EVAL_BATCH = 1000
#: (granularity, sparsity) pairs pruned.
SETTINGS = (("filter", 0.5), ("filter", 0.7), ("weight", 0.9))
CRITERIA = ("magnitude", "wald")
QUICK_CRITERIA = ("magnitude",)


class Row(NamedTuple):
    """One pruned model, with the dense model's BatchNormalization statistics and with
    re-estimated ones."""

    criterion: str
    granularity: str
    sparsity: float
    without: float  # test accuracy, statistics kept
    with_: float  # test accuracy, statistics re-estimated
    seconds: float  # both prune_once calls


def bn_cnn(*, seed: int = 0, name: str = "bn_cnn") -> keras.Model:
    """The benchmark's CNN: a BatchNormalization after each hidden layer (uncompiled)."""
    init = keras.initializers.GlorotUniform
    layers: list[keras.layers.Layer] = [keras.Input(shape=(28, 28, 1))]
    for index, filters in enumerate((16, 32), start=1):
        layers += [
            keras.layers.Conv2D(
                filters, 3, kernel_initializer=init(seed + index), name=f"conv{index}"
            ),
            keras.layers.BatchNormalization(name=f"bn{index}"),
            keras.layers.ReLU(name=f"relu{index}"),
            keras.layers.MaxPooling2D(2, name=f"pool{index}"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, kernel_initializer=init(seed + 3), name="fc1"),
        keras.layers.BatchNormalization(name="bn3"),
        keras.layers.ReLU(name="relu3"),
        keras.layers.Dense(
            10, activation="softmax", kernel_initializer=init(seed + 4), name="output"
        ),
    ]
    return keras.Sequential(layers, name=name)


def trained_model(*, quick: bool, cache: Path | None = None) -> tuple[keras.Model, dict]:
    """:func:`bn_cnn` trained once on MNIST (cached under ``cache``, default
    :data:`CACHE`), with its training record."""
    cache = CACHE if cache is None else cache
    name = "bn_cnn_quick" if quick else "bn_cnn"
    path, record_path = cache / f"{name}.keras", cache / f"{name}.json"
    if path.exists() and record_path.exists():
        return keras.models.load_model(path), json.loads(record_path.read_text())
    data = datasets.mnist()
    x, y, epochs = data.x_train, data.y_train, EPOCHS
    if quick:
        x, y, epochs = x[:QUICK_TRAIN], y[:QUICK_TRAIN], QUICK_EPOCHS
    keras.utils.set_random_seed(SEED)
    model = models.compile_classifier(bn_cnn(seed=SEED))
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=2, shuffle=True)
    record = {
        "epochs": epochs,
        "train_examples": int(len(x)),
        "batch_size": BATCH,
        "optimizer": f"Adam(lr={models.DEFAULT_LEARNING_RATE})",
        "seconds": round(time.perf_counter() - started, 1),
        "train_loss": [round(float(v), 4) for v in history.history["loss"]],
        "seed": SEED,
    }
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    record_path.write_text(json.dumps(record, indent=1))
    return model, record


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of a softmax classifier."""
    p = np.asarray(model.predict(x, batch_size=EVAL_BATCH, verbose=0))
    return float(np.mean(p.argmax(axis=1) == y))


def same_kernels(a: keras.Model, b: keras.Model) -> bool:
    """Whether two pruned copies have the same kernels and biases (statistics aside)."""
    return all(
        np.array_equal(va.numpy(), vb.numpy())
        for va, vb in zip(a.trainable_weights, b.trainable_weights, strict=True)
    )


def sweep(model, stats, x_test, y_test, criteria, settings) -> list[Row]:
    """Every (criterion, granularity, sparsity), pruned with the option off and on."""
    rows = []
    for criterion in criteria:
        for granularity, sparsity in settings:
            started = time.perf_counter()
            pruned = {
                flag: tsp.prune_once(
                    model,
                    stats,
                    sparsity,
                    criterion,
                    granularity=granularity,
                    recalibrate_batchnorm=flag,
                    verbose=0,
                )
                for flag in (False, True)
            }
            seconds = time.perf_counter() - started
            if not same_kernels(pruned[False], pruned[True]):
                raise SystemExit(f"{criterion} {granularity} {sparsity}: different kernels")
            row = Row(
                criterion,
                granularity,
                sparsity,
                accuracy(pruned[False], x_test, y_test),
                accuracy(pruned[True], x_test, y_test),
                seconds,
            )
            rows.append(row)
            print(
                f"{criterion:>9} {granularity:>6} {sparsity:.0%}: {row.without:.4f} -> "
                f"{row.with_:.4f} ({seconds:.1f} s)",
                file=sys.stderr,
            )
    return rows


def table(rows: list[Row]) -> str:
    """The markdown table of the rows.

    Example:
      >>> print(table([Row("wald", "filter", 0.5, 0.25, 0.9731, 3.0)]))
      | criterion | granularity | sparsity | statistics kept | re-estimated | change |
      |---|---|---:|---:|---:|---:|
      | wald | filter | 50 % | 25.00 % | 97.31 % | +72.31 |
    """
    lines = [
        "| criterion | granularity | sparsity | statistics kept | re-estimated | change |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.criterion} | {r.granularity} | {100 * r.sparsity:.0f} % | "
            f"{100 * r.without:.2f} % | {100 * r.with_:.2f} % | "
            f"{100 * (r.with_ - r.without):+.2f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """The machine line of the report."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load} (at the end of "
        f"the run), Python {platform.python_version()}"
    )


def report(
    rows, record, dense, dense_recalibrated, *, command, stats_examples, test_examples, seconds
) -> str:
    """The results file."""
    return "\n".join(
        [
            "# BatchNormalization statistics re-estimated after one-shot pruning",
            "",
            f"Command: `{command}`. Training took {record['seconds']:.0f} s (once: the model "
            f"is cached under `{CACHE}/`), the pruning and evaluation {seconds / 60:.1f} "
            "minutes on this machine.",
            "",
            f"Model: `bn_cnn` (conv 16 -> BN -> ReLU -> pool -> conv 32 -> BN -> ReLU -> pool "
            "-> dense 64 -> BN -> ReLU -> dense 10), trained "
            f"{record['epochs']} epoch(s) on {record['train_examples']} MNIST images (batch "
            f"{record['batch_size']}, {record['optimizer']}, seed {record['seed']}); dense "
            f"test accuracy {100 * dense:.2f} % on {test_examples} test images "
            f"({100 * dense_recalibrated:.2f} % with its statistics re-estimated on the "
            "pruning's examples).",
            "",
            "Pruning: `tsp.prune_once(model, stats, sparsity, criterion, granularity=..., "
            "recalibrate_batchnorm=False / True)`, one shot, no retraining; `stats` is "
            f"{stats_examples} training images, used by the criterion and, with the option "
            "on, to re-estimate the moving mean and variance of the BatchNormalization layers "
            "after the pruned layers. Filter granularity prunes the filters/units of conv1, "
            "conv2 and fc1 (the output layer keeps its classes); weight granularity every "
            "layer. The masks (and `wald`'s updated weights) are the same with and without: "
            "only the statistics differ. One training run and one draw of the examples.",
            "",
            "Test accuracy of the pruned model with the dense model's BatchNormalization "
            "statistics kept and with them re-estimated; the change in percentage points.",
            "",
            table(rows),
            "",
            f"Machine: {machine()}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the report there")
    args = parser.parse_args(argv)
    say("dense model")
    model, record = trained_model(quick=args.quick)
    started = time.perf_counter()
    data = datasets.mnist()
    x_test, y_test = data.x_test, data.y_test
    stats_examples = QUICK_STATS_EXAMPLES if args.quick else STATS_EXAMPLES
    if args.quick:
        x_test, y_test = x_test[:QUICK_TEST], y_test[:QUICK_TEST]
    stats = subset(data.x_train, data.y_train, stats_examples, np.random.default_rng(SEED))
    dense = accuracy(model, x_test, y_test)
    recalibrated = tsp.copy_model(model)
    tsp.recalibrate_batchnorm(recalibrated, stats)
    dense_recalibrated = accuracy(recalibrated, x_test, y_test)
    say(f"dense test accuracy {dense:.4f}; pruning")
    criteria = QUICK_CRITERIA if args.quick else CRITERIA
    settings = SETTINGS[::2] if args.quick else SETTINGS
    rows = sweep(model, stats, x_test, y_test, criteria, settings)
    text = report(
        rows,
        record,
        dense,
        dense_recalibrated,
        command=command_line("batchnorm_recalibration", argv),
        stats_examples=stats_examples,
        test_examples=len(y_test),
        seconds=time.perf_counter() - started,
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
