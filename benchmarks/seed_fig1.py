"""Seed paper, Fig. 1: salience maps of LeNet-300-100's first layer, and the empty border.

Usage::

    python -m benchmarks.seed_fig1 [--seeds 3] [--epochs 8] [--l2 1e-4,0.5]
        [--optimizers adam,sgd] [--out docs/results/seed_fig1.md]

For each optimizer, L2 factor and seed, LeNet-300-100 (L2 on every kernel) is
trained on MNIST (Adam, the project's default, or SGD with momentum), and the
first layer's weights (784 x 300) are scored by ``random``, ``magnitude``, the
paper's diagonal Wald statistic (:data:`PAPER_WALD`) and the layer-wise
``wald`` (the default: block), on 10,000 training examples. A pixel's salience is the
sum of its 300 weights' scores (the paper's map, 28 x 28). The paper's claim
(section 4.2): magnitude looks random unless heavily regularised (L2 0.5), while
Wald marks the empty border as unimportant at any L2; the best L2 (1e-4) reached
94.3 % accuracy, L2 0.5 67.9 %.

Measured, per criterion: the share of the map's total salience that falls on

- the *empty* pixels (zero in every training image: the weights the data never
  move), and
- the *frame*, the outer :data:`FRAME` pixels on each side (mostly background);

against the share of pixels they are (what a random map gives). The figure
(``.png`` beside ``--out``) shows seed 0's maps, each scaled to its maximum.

The optimizer matters for magnitude: Adam normalises each weight's step, so the L2
gradient alone (the only one an empty pixel's weights get) shrinks them to about 0
within an epoch, whatever the L2 factor; with SGD they keep their random initial
values unless L2 is large.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

import tfstatprune as tsp
from benchmarks._common import command_line, publish
from tfstatprune import datasets, models
from tfstatprune._keras import keras

tf.get_logger().setLevel("ERROR")  # retracing notes: every seed scores a new model

PAPER_WALD = "wald_diag"  # the diagonal sandwich with the empirical Fisher (the paper's)
CRITERIA = ("random", "magnitude", PAPER_WALD, "wald")
LABELS = {"random": "random", "magnitude": "magnitude", PAPER_WALD: "Wald (paper, diagonal)"}
LABELS["wald"] = "Wald (block)"
PAPER_ACCURACY = {1e-4: 0.943, 0.5: 0.679}
FRAME = 4
SIDE = 28
STATS_EXAMPLES = 10_000
BATCH = 128
SGD = {"learning_rate": 0.05, "momentum": 0.9}


def frame_mask(width: int = FRAME) -> np.ndarray:
    """``[784]`` True on the outer ``width`` pixels of each side of a 28 x 28 image."""
    mask = np.ones((SIDE, SIDE), bool)
    mask[width:-width, width:-width] = False
    return mask.reshape(-1)


def salience_map(model: keras.Model, stats_data: tuple, criterion: str, seed: int) -> np.ndarray:
    """``[784]`` the sum over fc1's 300 units of each input weight's score."""
    found = tsp.scores(model, stats_data, criterion, layers=["fc1"], seed=seed, verbose=0)
    (kernel,) = (v for k, v in found.items() if "kernel" in k)
    return np.asarray(kernel, np.float64).sum(axis=1)


def share(values: np.ndarray, where: np.ndarray) -> float:
    """The part of ``sum(values)`` that lies on ``where``."""
    total = values.sum()
    return float(values[where].sum() / total) if total > 0 else float("nan")


def trained(optimizer: str, l2: float, seed: int, epochs: int, data: datasets.MNIST) -> keras.Model:
    """LeNet-300-100 with L2 ``l2``, trained by ``optimizer`` ("adam" or "sgd")."""
    keras.utils.set_random_seed(seed)
    model = models.compile_classifier(models.lenet_300_100(l2=l2, seed=seed))
    if optimizer == "sgd":
        model.compile(
            keras.optimizers.SGD(**SGD), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    elif optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    model.fit(data.x_train, data.y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def run(
    seeds: int, epochs: int, l2s: list[float], optimizers: list[str]
) -> tuple[list[dict], dict]:
    data = datasets.mnist(datasets.resolve_source())
    empty = data.x_train.reshape(len(data.x_train), -1).max(axis=0) == 0
    rows, maps = [], {}
    for optimizer, l2, seed in itertools.product(optimizers, l2s, range(seeds)):
        model = trained(optimizer, l2, seed, epochs, data)
        predictions = model.predict(data.x_test, batch_size=1000, verbose=0)
        accuracy = float(np.mean(predictions.argmax(-1) == data.y_test))
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(data.x_train), STATS_EXAMPLES, replace=False))
        stats_data = (data.x_train[chosen], data.y_train[chosen])
        for criterion in CRITERIA:
            values = salience_map(model, stats_data, criterion, seed)
            if seed == 0:
                maps[(optimizer, l2, criterion)] = values
            rows.append(
                {
                    "optimizer": optimizer,
                    "l2": l2,
                    "seed": seed,
                    "criterion": criterion,
                    "accuracy": accuracy,
                    "empty": share(values, empty),
                    "frame": share(values, frame_mask()),
                }
            )
        print(f"{optimizer}, L2 {l2:g}, seed {seed}: test accuracy {accuracy:.4f}", flush=True)
    pixels = {"empty": float(empty.mean()), "frame": float(frame_mask().mean())}
    return rows, {"maps": maps, "pixels": pixels}


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * statistics.mean(values):.1f} ± {scale * statistics.stdev(values):.1f}"


def report(rows: list[dict], extra: dict, command: str, epochs: int, seeds: int) -> str:
    pixels = extra["pixels"]
    lines = [
        "# Seed paper, Fig. 1: salience of LeNet-300-100's first layer",
        "",
        f"Command: `{command}`",
        "",
        f"LeNet-300-100, L2 on every kernel, Adam, {epochs} epochs on the 60,000 MNIST "
        f"training images, {seeds} seed(s); scores on {STATS_EXAMPLES:,} training images. "
        "Share of each criterion's total first-layer salience (%, mean ± std over seeds) "
        f"on the {pixels['empty']:.1%} of pixels that are zero in every training image "
        f"(*empty*) and on the outer {FRAME}-pixel frame ({pixels['frame']:.1%} of the "
        "pixels): a random map puts that share of pixels there, a map that finds the "
        "background unimportant puts much less.",
        "",
        "| optimizer | L2 | criterion | on empty pixels | on the frame | test accuracy "
        "| paper's accuracy |",
        "|:--|:--|:--|--:|--:|--:|--:|",
    ]
    settings = list(dict.fromkeys((r["optimizer"], r["l2"]) for r in rows))
    for (optimizer, l2), criterion in itertools.product(settings, CRITERIA):
        chosen = [
            r
            for r in rows
            if (r["optimizer"], r["l2"], r["criterion"]) == (optimizer, l2, criterion)
        ]
        paper = PAPER_ACCURACY.get(l2)
        lines.append(
            f"| {optimizer} | {l2:g} | {LABELS[criterion]} | "
            f"{_mean_std([r['empty'] for r in chosen])} | "
            f"{_mean_std([r['frame'] for r in chosen])} | "
            f"{_mean_std([r['accuracy'] for r in chosen], 100)} % | "
            f"{'' if paper is None else f'{100 * paper:.1f} %'} |"
        )
    return "\n".join(lines) + "\n"


def plot(extra: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    settings = list(dict.fromkeys(key[:2] for key in extra["maps"]))
    figure, axes = plt.subplots(
        len(settings), len(CRITERIA), figsize=(2.4 * len(CRITERIA), 2.6 * len(settings))
    )
    axes = np.atleast_2d(axes)
    for (i, (optimizer, l2)), (j, criterion) in itertools.product(
        enumerate(settings), enumerate(CRITERIA)
    ):
        values = extra["maps"][(optimizer, l2, criterion)]
        top = values.max()
        axes[i, j].imshow((values / top if top > 0 else values).reshape(SIDE, SIDE), cmap="magma")
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
        axes[i, j].set_title(f"{LABELS[criterion]}\n{optimizer}, L2 {l2:g}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--l2", default="1e-4,0.5", help="comma-separated L2 factors")
    parser.add_argument("--optimizers", default="adam,sgd", help="adam and/or sgd")
    parser.add_argument("--out", type=Path, default=None, help="markdown; the figure beside it")
    args = parser.parse_args(argv)
    l2s = [float(v) for v in args.l2.split(",")]
    rows, extra = run(args.seeds, args.epochs, l2s, args.optimizers.split(","))
    text = report(rows, extra, command_line("seed_fig1", argv), args.epochs, args.seeds)
    figure = args.out.with_suffix(".png") if args.out is not None else None
    publish(text, args.out, figure=f"\n![salience maps]({figure.name})\n" if figure else None)
    if figure is not None:
        plot(extra, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
