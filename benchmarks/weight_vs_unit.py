"""Seed 003 reproduced: weight pruning vs unit pruning of the challenge MLP.

Usage::

    python -m benchmarks.weight_vs_unit [--quick] [--out docs/results/weight_vs_unit.md]

The 784-1000-1000-500-200-10 ReLU network without biases
(:func:`tfstatprune.models.fc_challenge`) is trained once on MNIST (cached
under ``runs/weight_vs_unit/``), then pruned one-shot, layer by layer, with no
retraining, at k = 0, 25, 50, 60, 70, 80, 90, 95, 97, 99 % of each hidden
layer (``fc1``..``fc4``; the output layer is not pruned):

- **weight**: the k % lowest-scoring weights of each layer,
  ``tsp.prune_once(model, data, k, criterion, granularity="weight")``;
- **unit**: the k % lowest-scoring units (columns) of each layer,
  ``granularity="unit"``; the input rows that read a pruned unit in the next
  layer are zeroed too (they carry nothing), which the "weights zero" column
  counts;

each with ``magnitude`` (``|w|``; a unit's L2 norm) and ``wald_diag`` (the
diagonal Wald statistic, empirical Fisher; a unit's sum over its column) on
2,000 training examples. Test accuracy and cross-entropy on the 10,000
MNIST test images; magnitude pruning at k = 90 % is repeated after
``--seeds`` training runs. Theorem 1 of the seed (unit pruning removes weights
regardless of their magnitude) is checked at k = 90 % with histograms of
``|w|`` of the removed and kept weights.

``--quick`` trains one epoch on 5,000 images and prunes at four levels (a
smoke run, a couple of minutes). Every pruning is a library call a user would
make; the script only trains, evaluates and writes.
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
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune._keras import keras

CACHE = Path("runs") / "weight_vs_unit"
EPOCHS = 5
QUICK_EPOCHS = 1
QUICK_TRAIN = 5000
BATCH = 128
SEED = 0
SEEDS = 3
SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
QUICK_SPARSITIES = (0.0, 0.5, 0.9, 0.99)
STATS_EXAMPLES = 2000
QUICK_STATS_EXAMPLES = 200
QUICK_TEST = 2000
HIDDEN_LAYERS = ("fc1", "fc2", "fc3", "fc4")
CRITERIA = ("magnitude", "wald_diag")
GRANULARITIES = ("weight", "unit")
THEOREM_LEVEL = 0.9
EVAL_BATCH = 1000
# Public reproductions of the challenge (magnitude, one-shot, no retraining) at k = 90 %.
PUBLIC = {"dense": 0.977, "weight": 0.955, "unit": 0.173}
HIST_BINS = 60
UNSTABLE = 0.1  # a spread of accuracies over training runs called unstable


class Row(NamedTuple):
    """One pruned model: what was pruned and how it does on the test set."""

    criterion: str
    granularity: str
    sparsity: float
    accuracy: float
    loss: float
    zero_share: float  # zero weights of the hidden layers, own and upstream
    seconds: float


def trained_model(
    *, quick: bool, seed: int = SEED, cache: Path = CACHE
) -> tuple[keras.Model, dict]:
    """The challenge MLP trained once (cached under ``cache``), with its training record."""
    name = "fc_challenge_quick" if quick else "fc_challenge"
    if seed != SEED:
        name += f"_seed{seed}"
    path, record_path = cache / f"{name}.keras", cache / f"{name}.json"
    if path.exists() and record_path.exists():
        return keras.models.load_model(path), json.loads(record_path.read_text())
    data = datasets.mnist()
    x, y = data.x_train, data.y_train
    epochs = EPOCHS
    if quick:
        x, y, epochs = x[:QUICK_TRAIN], y[:QUICK_TRAIN], QUICK_EPOCHS
    keras.utils.set_random_seed(seed)
    model = models.compile_classifier(models.fc_challenge(seed=seed))
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=2, shuffle=True)
    seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=EVAL_BATCH, verbose=0)
    record = {
        "epochs": epochs,
        "train_examples": int(len(x)),
        "batch_size": BATCH,
        "optimizer": f"Adam(lr={models.DEFAULT_LEARNING_RATE})",
        "seconds": round(seconds, 1),
        "train_loss": [round(float(v), 4) for v in history.history["loss"]],
        "test_accuracy": float(accuracy),
        "seed": seed,
    }
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    record_path.write_text(json.dumps(record, indent=1))
    return model, record


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a softmax classifier."""
    p = np.asarray(model.predict(x, batch_size=EVAL_BATCH, verbose=0), np.float64)
    accuracy = float(np.mean(p.argmax(axis=1) == y))
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
    return accuracy, loss


def hidden_zero_share(model: keras.Model) -> float:
    """The share of zero weights over the hidden layers (``tsp.sparsity_report``)."""
    rows = [row for row in tsp.sparsity_report(model).layers if row.layer in HIDDEN_LAYERS]
    return sum(row.zeros for row in rows) / sum(row.weights for row in rows)


def prune(model, stats, sparsity, criterion, granularity) -> keras.Model:
    return tsp.prune_once(
        model,
        stats,
        sparsity,
        criterion,
        granularity=granularity,
        layers=list(HIDDEN_LAYERS),
        verbose=0,
    )


def sweep(model, stats, x_test, y_test, sparsities) -> list[Row]:
    rows = []
    for criterion in CRITERIA:
        for granularity in GRANULARITIES:
            for sparsity in sparsities:
                started = time.perf_counter()
                pruned = prune(model, stats, sparsity, criterion, granularity)
                seconds = time.perf_counter() - started
                accuracy, loss = evaluate(pruned, x_test, y_test)
                row = Row(
                    criterion,
                    granularity,
                    sparsity,
                    accuracy,
                    loss,
                    hidden_zero_share(pruned),
                    seconds,
                )
                rows.append(row)
                print(
                    f"{criterion:>9} {granularity:>6} k={sparsity:.0%}: accuracy "
                    f"{accuracy:.4f} loss {loss:.3f} ({seconds:.1f} s)",
                    file=sys.stderr,
                )
    return rows


class SeedRow(NamedTuple):
    """Magnitude pruning at k = 90 % of one training run."""

    seed: int
    dense: float
    weight: float
    unit: float


def seed_spread(seeds: int, quick: bool, x_test, y_test) -> list[SeedRow]:
    """Train ``seeds`` networks (cached) and prune each at k = 90 % by weight and by unit."""
    found = []
    for seed in range(SEED, SEED + seeds):
        model, _ = trained_model(quick=quick, seed=seed)
        accuracy = {
            g: evaluate(prune(model, None, THEOREM_LEVEL, "magnitude", g), x_test, y_test)[0]
            for g in GRANULARITIES
        }
        dense = evaluate(model, x_test, y_test)[0]
        found.append(SeedRow(seed, dense, accuracy["weight"], accuracy["unit"]))
        print(f"seed {seed}: {found[-1]}", file=sys.stderr)
    return found


def _seed_table(rows: list[SeedRow]) -> str:
    lines = [
        "| training seed | dense | weight pruning, k = 90 % | unit pruning, k = 90 % |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.seed} | {100 * r.dense:.2f} % | {100 * r.weight:.2f} % | {100 * r.unit:.2f} % |"
        )
    lines.append(
        f"| public | {100 * PUBLIC['dense']:.1f} % | {100 * PUBLIC['weight']:.1f} % | "
        f"{100 * PUBLIC['unit']:.1f} % |"
    )
    return "\n".join(lines)


class Removed(NamedTuple):
    """Magnitudes of the removed and kept weights of the hidden layers (own masks only)."""

    removed: np.ndarray
    kept: np.ndarray
    smallest_share: float  # removed weights among the k % smallest of their layer


def removed_and_kept(model: keras.Model, pruned: keras.Model, granularity: str) -> Removed:
    removed, kept, smallest = [], [], 0
    for name in HIDDEN_LAYERS:
        dense = np.abs(model.get_layer(name).kernel.numpy())
        after = pruned.get_layer(name).kernel.numpy()
        if granularity == "unit":  # the layer's own dead columns, not the upstream rows
            gone = np.broadcast_to(~after.any(axis=0), dense.shape)
        else:
            gone = after == 0
        threshold = np.sort(dense, axis=None)[int(gone.sum()) - 1] if gone.any() else -np.inf
        smallest += int(np.count_nonzero(dense[gone] <= threshold))
        removed.append(dense[gone])
        kept.append(dense[~gone])
    removed_all = np.concatenate(removed)
    return Removed(removed_all, np.concatenate(kept), smallest / max(removed_all.size, 1))


def plot_accuracy(rows: list[Row], path: Path, dense: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        ("magnitude", "weight"): "C0-o",
        ("magnitude", "unit"): "C1-s",
        ("wald_diag", "weight"): "C0--^",
        ("wald_diag", "unit"): "C1--D",
    }
    for (criterion, granularity), style in styles.items():
        chosen = [r for r in rows if (r.criterion, r.granularity) == (criterion, granularity)]
        k = [100 * r.sparsity for r in chosen]
        label = f"{granularity} pruning, {criterion}"
        axes[0].plot(k, [100 * r.accuracy for r in chosen], style, label=label)
        axes[1].plot(k, [r.loss for r in chosen], style, label=label)
    axes[0].axhline(100 * dense, color="k", lw=0.8, ls=":", label="dense")
    axes[0].plot(
        [90, 90], [100 * PUBLIC["weight"], 100 * PUBLIC["unit"]], "kx", label="public, k = 90 %"
    )
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("test cross-entropy")
    axes[1].set_yscale("log")
    for axis in axes:
        axis.set_xlabel("k: share of each hidden layer's weights / units pruned (%)")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        "784-1000-1000-500-200-10 ReLU MLP, one-shot layer-wise pruning, no retraining",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_theorem(found: dict[str, Removed], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(
        float(np.quantile(np.concatenate([r.kept, r.removed]), 0.999)) for r in found.values()
    )
    bins = np.linspace(0.0, top, HIST_BINS)
    figure, axes = plt.subplots(1, len(found), figsize=(11, 4.0), sharey=True)
    for axis, (granularity, result) in zip(axes, found.items(), strict=True):
        axis.hist(result.removed, bins, density=True, alpha=0.6, color="C3", label="removed")
        axis.hist(result.kept, bins, density=True, alpha=0.6, color="C2", label="kept")
        axis.set_title(
            f"{granularity} pruning (magnitude), k = {THEOREM_LEVEL:.0%}: "
            f"{result.smallest_share:.0%} of the removed are\namong the layer's "
            f"{THEOREM_LEVEL:.0%} smallest |w|",
            fontsize=9,
        )
        axis.set_xlabel("|w| (hidden layers, trained network)")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("density")
    figure.suptitle("Theorem 1: magnitudes of the removed and kept weights", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _table(rows: list[Row], sparsities) -> str:
    variants = [(c, g) for c in CRITERIA for g in GRANULARITIES]
    header = "| k | " + " | ".join(f"{g}, {c}" for c, g in variants) + " |"
    lines = [header, "|---:|" + "---:|" * len(variants)]
    by_key = {(r.criterion, r.granularity, r.sparsity): r for r in rows}
    for k in sparsities:
        cells = []
        for c, g in variants:
            r = by_key[(c, g, k)]
            cells.append(f"{100 * r.accuracy:.2f} % ({r.loss:.3f}; {r.zero_share:.1%} zero)")
        lines.append(f"| {k:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _findings(
    rows: list[Row], dense: float, theorem: dict[str, Removed], seeds: list[SeedRow]
) -> str:
    by_key = {(r.criterion, r.granularity, r.sparsity): r for r in rows}
    lines = []
    weight = by_key.get(("magnitude", "weight", THEOREM_LEVEL))
    unit = by_key.get(("magnitude", "unit", THEOREM_LEVEL))
    if weight and unit:
        lines.append(
            f"- At k = 90 % with magnitude: weight pruning keeps {100 * weight.accuracy:.1f} % "
            f"accuracy, unit pruning {100 * unit.accuracy:.1f} % (dense {100 * dense:.1f} %). "
            f"Public reproductions of the challenge report {100 * PUBLIC['weight']:.1f} % and "
            f"{100 * PUBLIC['unit']:.1f} % (dense {100 * PUBLIC['dense']:.1f} %): "
            + _versus(weight.accuracy, unit.accuracy)
        )
    if len(seeds) > 1:
        units = np.array([r.unit for r in seeds])
        weights = np.array([r.weight for r in seeds])
        text = (
            f"- Over {len(seeds)} training seeds, magnitude at k = 90 % gives "
            f"{100 * weights.min():.1f}-{100 * weights.max():.1f} % by weight and "
            f"{100 * units.min():.1f}-{100 * units.max():.1f} % by unit (table below)."
        )
        if units.max() - units.min() > UNSTABLE:
            text += (
                " One-shot unit pruning at 90 % sits on the edge of collapse: the training "
                "run alone moves it by more than ten points."
            )
        lines.append(text)
        lines.append(
            f"- Unit pruning at k = 90 % leaves {unit.zero_share:.1%} of the hidden weights "
            f"zero, not 90 %: a pruned unit also kills the next layer's input row, so the "
            f"middle layers keep only about (1 - k)^2 = 1 % of their weights "
            f"(`tsp.sparsity_report`: own vs upstream zeros)."
        )
    for granularity in GRANULARITIES:
        mag = [r for r in rows if (r.criterion, r.granularity) == ("magnitude", granularity)]
        wald = [r for r in rows if (r.criterion, r.granularity) == ("wald_diag", granularity)]
        better = [m.sparsity for m, w in zip(mag, wald, strict=True) if w.accuracy > m.accuracy]
        worse = [m.sparsity for m, w in zip(mag, wald, strict=True) if w.accuracy < m.accuracy]
        lines.append(
            f"- Wald vs magnitude, {granularity} pruning: Wald more accurate at k = "
            f"{_levels(better)}, less accurate at k = {_levels(worse)}."
        )
    if theorem:
        w, u = theorem.get("weight"), theorem.get("unit")
        lines.append(
            f"- Theorem 1, at k = {THEOREM_LEVEL:.0%} with magnitude: weight pruning removes "
            f"the smallest weights (mean |w| removed {w.removed.mean():.4f}, kept "
            f"{w.kept.mean():.4f}); the weights unit pruning removes (its own columns) have "
            f"mean |w| {u.removed.mean():.4f}, the kept ones {u.kept.mean():.4f}, and "
            f"{u.smallest_share:.1%} of them are among the {THEOREM_LEVEL:.0%} smallest of "
            f"their layer -- a random choice of columns would give {THEOREM_LEVEL:.0%}."
        )
    return "\n".join(lines)


def _versus(weight: float, unit: float) -> str:
    dw = 100 * (weight - PUBLIC["weight"])
    du = 100 * (unit - PUBLIC["unit"])
    return (
        f"ours is {abs(dw):.1f} points {'above' if dw >= 0 else 'below'} theirs for weight "
        f"pruning and {abs(du):.1f} points {'above' if du >= 0 else 'below'} for unit pruning."
    )


def _levels(levels: list[float]) -> str:
    return ", ".join(f"{k:.0%}" for k in levels) if levels else "none"


def document(args, record, rows, sparsities, images, theorem, seeds, seconds) -> str:
    command = "python -m benchmarks.weight_vs_unit" + (" --quick" if args.quick else "")
    command += f" --out {args.out}"
    dense = next((r.accuracy for r in rows if r.sparsity == 0), record["test_accuracy"])
    return (
        "# Weight pruning vs unit pruning (seed 003), reproduced\n\n"
        f"Command: `{command}` ({seconds / 60:.1f} min; training cached under "
        f"`{CACHE.as_posix()}/`).\n\n"
        f"Network: `tfstatprune.models.fc_challenge()` (784-1000-1000-500-200-10, ReLU, no "
        f"biases), trained {record['epochs']} epochs on {record['train_examples']:,} MNIST "
        f"images ({record['optimizer']}, batch {record['batch_size']}): test accuracy "
        f"{100 * record['test_accuracy']:.2f} %. Pruning: `tsp.prune_once(model, stats, k, "
        f"criterion, granularity=..., layers=['fc1', 'fc2', 'fc3', 'fc4'])` -- one-shot, "
        f"per layer, no retraining; the output layer is not pruned. Wald statistics on "
        f"{args.stats:,} training images. Test set: {args.test:,} images. TensorFlow "
        f"{tf.__version__}, {platform.machine()} CPU, {os.cpu_count()} cores.\n\n"
        f"{_findings(rows, dense, theorem, seeds)}\n\n"
        f"![accuracy]({images[0]})\n\n![theorem 1]({images[1]})\n\n"
        "Test accuracy (cross-entropy; share of the hidden layers' weights that are zero, "
        "own and upstream):\n\n"
        f"{_table(rows, sparsities)}\n\n"
        f"Magnitude pruning at k = 90 % after other training runs (same recipe, seeds of the "
        f"initialisation and the data order):\n\n{_seed_table(seeds)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--out", default=None, help="write markdown here (and .png next to it)")
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"training runs for k = 90 % (default {SEEDS})"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, record = trained_model(quick=args.quick)
    data = datasets.mnist()
    args.stats = QUICK_STATS_EXAMPLES if args.quick else STATS_EXAMPLES
    args.test = QUICK_TEST if args.quick else len(data.y_test)
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    rng = np.random.default_rng(SEED)
    pick = rng.choice(len(data.y_train), args.stats, replace=False)
    stats = (data.x_train[pick], data.y_train[pick])
    x_test, y_test = data.x_test[: args.test], data.y_test[: args.test]
    rows = sweep(model, stats, x_test, y_test, sparsities)
    theorem = {
        g: removed_and_kept(model, prune(model, None, THEOREM_LEVEL, "magnitude", g), g)
        for g in GRANULARITIES
    }
    seeds = seed_spread(args.seeds or (1 if args.quick else SEEDS), args.quick, x_test, y_test)
    seconds = time.perf_counter() - started
    print(_table(rows, sparsities))
    print(_seed_table(seeds))
    print(_findings(rows, rows[0].accuracy, theorem, seeds))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        images = (out.with_suffix(".png"), out.with_name(out.stem + "_theorem1.png"))
        plot_accuracy(rows, images[0], rows[0].accuracy)
        plot_theorem(theorem, images[1])
        names = tuple(image.name for image in images)
        out.write_text(document(args, record, rows, sparsities, names, theorem, seeds, seconds))


if __name__ == "__main__":
    main()
