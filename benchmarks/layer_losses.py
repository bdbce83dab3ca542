"""Where one-shot accuracy is lost: LeNet-300-100 with one layer pruned at a time.

Usage::

    python -m benchmarks.layer_losses [--seeds 3] [--sparsities 0.9,0.95]
        [--criteria magnitude,sparsegpt,obs,wald_block]
        [--variant LABEL=CRITERION[,key=value...]] [--out docs/results/layer_losses.md]

The dense LeNet-300-100 of ``benchmarks.criteria_frontier`` (L2 1e-4, 8 epochs,
cached under ``runs/``) is pruned one-shot by :func:`tfstatprune.prune_once` in
layer scope with each criterion at each sparsity, once for each Dense layer alone
(``layers=[name]``, the others left dense) and once for all of them together;
test accuracy without retraining. Each layer's drop is its cost when the rest of
the network is exact; their sum beside the joint drop says whether the layers'
errors add up, and the smallest drop any criterion reaches for a layer bounds
what a layer-wise solver of that family can do. ``--variant`` adds a criterion
with options under a label, as in ``benchmarks.criteria_frontier`` (e.g.
``"wald_block 16=wald_block,substeps=16"``); ``obc`` is exact but slow on fc1
(784 inputs), so it is not a default. Results are appended to a JSON-lines log
as they come (a rerun skips what is done).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tfstatprune as tsp
from benchmarks._common import append_row, command_line, logged_rows, publish, say
from benchmarks.criteria_frontier import (
    CRITERIA,
    L2,
    STATS_EXAMPLES,
    VARIANT_SYNTAX,
    accuracy,
    dense_model,
    parse_variant,
)
from tfstatprune import datasets

DEFAULT_CRITERIA = ("magnitude", "sparsegpt", "obs", "wald_block")
SPARSITIES = (0.9, 0.95)
ALL = "all layers"


def prunable_layers(model) -> list[str]:
    """The names of the Dense layers of ``model``, input to output."""
    return [layer.name for layer in model.layers if hasattr(layer, "kernel")]


def run(args: argparse.Namespace) -> list[dict]:
    """Every (seed, criterion, sparsity, layer) row: the log's, or a new prune's."""
    data = datasets.mnist()
    stats = (data.x_train[:STATS_EXAMPLES], data.y_train[:STATS_EXAMPLES])
    log = Path(args.log)
    done = {(r["seed"], r["criterion"], r["sparsity"], r["layer"]): r for r in logged_rows(log)}
    criteria = {k: CRITERIA[k] for k in args.criteria.split(",")}
    criteria.update(args.variant)
    rows = []
    for seed in range(args.seeds):
        say(f"dense LeNet-300-100, seed {seed}, {args.epochs} epochs")
        dense = dense_model(seed, args.epochs, Path(args.cache), data)
        dense_acc = accuracy(dense, data)
        for label, (criterion, options) in criteria.items():
            for sparsity in args.sparsities:
                for layer in [*prunable_layers(dense), ALL]:
                    key = (seed, label, sparsity, layer)
                    if key in done:
                        rows.append(done[key])
                        continue
                    started = time.perf_counter()
                    pruned = tsp.prune_once(
                        dense,
                        stats,
                        sparsity,
                        criterion,
                        "layer",
                        layers=None if layer == ALL else [layer],
                        seed=seed,
                        verbose=0,
                        **options,
                    )
                    row = dict(
                        seed=seed,
                        criterion=label,
                        sparsity=sparsity,
                        layer=layer,
                        dense=dense_acc,
                        one_shot=accuracy(pruned, data),
                        seconds=time.perf_counter() - started,
                    )
                    rows.append(row)
                    append_row(log, row)
                    print(
                        f"seed {seed} {label:>14} {sparsity:.2f} {layer:>10}: "
                        f"{row['one_shot']:.4f} ({row['seconds']:.1f} s)",
                        flush=True,
                    )
    return rows


def drops(rows: list[dict], criterion: str, sparsity: float, layer: str) -> np.ndarray:
    """Per seed, dense minus pruned test accuracy in points (seeds in order)."""
    picked = sorted(
        (
            r
            for r in rows
            if (r["criterion"], r["sparsity"], r["layer"]) == (criterion, sparsity, layer)
        ),
        key=lambda r: r["seed"],
    )
    return np.array([(r["dense"] - r["one_shot"]) * 100 for r in picked])


def table(rows: list[dict], sparsity: float, criteria: list[str], layers: list[str]) -> list[str]:
    """Markdown lines: per criterion, each layer's drop alone, their sum, the joint drop.

    Example:
      >>> rows = [dict(seed=0, criterion="c", sparsity=0.9, layer=k, dense=0.98, one_shot=v)
      ...         for k, v in (("fc1", 0.97), ("out", 0.96), ("all layers", 0.94))]
      >>> table(rows, 0.9, ["c"], ["fc1", "out"])[-1]
      '| c | 1.00 ± 0.00 | 2.00 ± 0.00 | 3.00 ± 0.00 | 4.00 ± 0.00 |'
    """
    head = [*layers, "sum of the layers alone", ALL]
    lines = ["| criterion | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for criterion in criteria:
        alone = [drops(rows, criterion, sparsity, k) for k in layers]
        joint = drops(rows, criterion, sparsity, ALL)
        seeds = {len(d) for d in [*alone, joint]}
        if seeds == {0}:
            continue
        total = np.sum(alone, axis=0) if len(seeds) == 1 else np.array([])  # seeds missing
        cells = [
            f"{d.mean():.2f} ± {d.std():.2f}" if d.size else "" for d in [*alone, total, joint]
        ]
        lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
    return lines


def best_per_layer(
    rows: list[dict], sparsity: float, criteria: list[str], layers: list[str]
) -> list[str]:
    """Markdown lines: per layer, the criterion with the smallest mean drop alone, and
    the sum of those smallest drops (what one-shot of the best per layer would lose if the
    layers' errors added up)."""
    best = []
    for layer in layers:
        means = {c: drops(rows, c, sparsity, layer) for c in criteria}
        means = {c: d.mean() for c, d in means.items() if d.size}
        if means:
            winner = min(means, key=means.get)
            best.append((layer, winner, means[winner]))
    if not best:
        return []
    text = ", ".join(f"{layer} {drop:.2f} ({c})" for layer, c, drop in best)
    return [
        f"Smallest drop per layer alone: {text}; sum {sum(d for *_, d in best):.2f} points.",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the dense model")
    parser.add_argument(
        "--sparsities", type=lambda t: [float(v) for v in t.split(",")], default=list(SPARSITIES)
    )
    parser.add_argument("--criteria", default=",".join(DEFAULT_CRITERIA))
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar=VARIANT_SYNTAX,
        help="add a criterion with options under its own label (repeatable)",
    )
    parser.add_argument("--cache", default="runs/criteria_frontier")
    parser.add_argument("--log", default="runs/layer_losses/results.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    unknown = sorted(set(args.criteria.split(",")) - set(CRITERIA))
    if unknown:
        parser.error(f"--criteria takes names of {', '.join(CRITERIA)}, got {unknown}")
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    criteria = [*args.criteria.split(","), *dict(args.variant)]
    layers = list(dict.fromkeys(r["layer"] for r in rows if r["layer"] != ALL))
    text = [
        "# Where one-shot accuracy is lost: one layer of LeNet-300-100 pruned at a time",
        "",
        f"Command: `{command_line('layer_losses', given)}`",
        "",
        f"LeNet-300-100, L2 {L2}, trained {args.epochs} epochs per seed (the dense models of "
        f"criteria_frontier.md); {args.seeds} seed(s); statistics on {STATS_EXAMPLES} training "
        "examples; layer scope, biases kept, **no retraining**. Each cell is the test accuracy "
        "lost (dense minus pruned, in points, mean ± std over seeds) with that layer alone "
        "pruned to the level and the others dense; then the sum of the three, and the loss "
        "with all layers pruned together (`prune_once` as users call it).",
        "",
    ]
    for sparsity in args.sparsities:
        text += [
            f"## {sparsity:.0%}",
            "",
            *table(rows, sparsity, criteria, layers),
            "",
            *best_per_layer(rows, sparsity, criteria, layers),
        ]
    dense = {r["seed"]: r["dense"] for r in rows}
    if dense:
        text.append(
            f"Dense test accuracy: {np.mean(list(dense.values())) * 100:.2f} % (mean over seeds)."
        )
    publish("\n".join(text) + "\n", args.out)


if __name__ == "__main__":
    main()
