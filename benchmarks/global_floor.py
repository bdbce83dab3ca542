"""Global scope with a cap per layer: one-shot LeNet-300-100, accuracy and per-layer levels.

Usage::

    python -m benchmarks.global_floor [--seed 0] [--epochs 8] [--stats-examples 10000]
        [--sparsities 0.9,0.95,0.98] [--caps 0.95,0.98,0.99]
        [--criteria wald_block,magnitude] [--no-curves] [--out docs/results/global_floor.md]

LeNet-300-100 (L2 1e-4) is trained once on MNIST (the model of
``benchmarks.criteria_frontier``, cached under ``runs/``), then pruned one-shot
by :func:`tfstatprune.prune_once` with each criterion at each sparsity: layer
scope, global scope without a cap, global scope with the per-layer levels from
error curves (``allocation="error_curves"``), and global scope with
``max_layer_sparsity=c`` for every cap ``c >= s`` (a lower cap cannot hold the
total). Biases are kept; the output layer keeps one weight per class (the
default). Test accuracy is measured without retraining; the per-layer levels
are the kernels' sparsities, which is what the cap bounds
(:func:`tfstatprune.masking.mask_sparsity` of the pruned kernels). Results are
appended to a JSON-lines log as they come (a rerun skips what is done).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import tfstatprune as tsp
from benchmarks._common import append_row, command_line, logged_rows, publish, say
from benchmarks.criteria_frontier import L2, accuracy, dense_model
from benchmarks.stats_cost import environment
from tfstatprune import datasets
from tfstatprune._keras import keras
from tfstatprune.masking import mask_sparsity

SPARSITIES = (0.9, 0.95, 0.98)
CAPS = (0.95, 0.98, 0.99)
CRITERIA = ("wald_block", "magnitude")
STATS_EXAMPLES = 10_000
NO_CAP = "global"
LAYER = "layer"
#: Global scope with ``allocation="error_curves"`` (the per-layer levels from error curves).
CURVES = "curves"
SCOPE_ORDER = (LAYER, NO_CAP, CURVES)


def settings(
    sparsity: float, caps: list[float], *, curves: bool = True
) -> list[tuple[str, float | None]]:
    """``(scope, cap)`` pairs run at ``sparsity``: layer, global, global with levels from
    error curves (``curves``), and global with each cap >= it.

    Example:
      >>> settings(0.98, [0.95, 0.98, 0.99])
      [('layer', None), ('global', None), ('curves', None), ('global', 0.98), ('global', 0.99)]
    """
    return [
        (LAYER, None),
        (NO_CAP, None),
        *([(CURVES, None)] if curves else []),
        *((NO_CAP, c) for c in caps if c >= sparsity),
    ]


def label(scope: str, cap: float | None) -> str:
    """A row's name: ``layer``, ``global``, ``global, error curves`` or ``global, cap 0.98``."""
    if scope == CURVES:
        return "global, error curves"
    return scope if cap is None else f"{scope}, cap {cap:g}"


def kernel_levels(model: keras.Model) -> dict[str, float]:
    """The sparsity of each Dense kernel of ``model``, by layer name."""
    return mask_sparsity(
        {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}
    )


def run(args: argparse.Namespace) -> tuple[list[dict], float]:
    """Every setting's row (the log's, or a new run's), and the seconds the dense model took."""
    data = datasets.mnist()
    stats = (data.x_train[: args.stats_examples], data.y_train[: args.stats_examples])
    log = Path(args.log)
    done = {
        (row["criterion"], row["scope"], row["cap"], row["sparsity"]): row
        for row in logged_rows(log)
    }
    say(f"dense LeNet-300-100, seed {args.seed}, {args.epochs} epochs")
    started = time.perf_counter()
    dense = dense_model(args.seed, args.epochs, Path(args.cache), data)
    dense_seconds = time.perf_counter() - started
    dense_acc = accuracy(dense, data)
    rows = []
    for criterion in args.criteria.split(","):
        for sparsity in args.sparsities:
            for scope, cap in settings(sparsity, args.caps, curves=args.curves):
                key = (criterion, scope, cap, sparsity)
                if key in done:
                    rows.append(done[key])
                    continue
                started = time.perf_counter()
                pruned = tsp.prune_once(
                    dense,
                    stats,
                    sparsity,
                    criterion,
                    NO_CAP if scope == CURVES else scope,
                    allocation="error_curves" if scope == CURVES else "threshold",
                    max_layer_sparsity=cap,
                    seed=args.seed,
                    verbose=0,
                )
                row = dict(
                    seed=args.seed,
                    criterion=criterion,
                    scope=scope,
                    cap=cap,
                    sparsity=sparsity,
                    dense=dense_acc,
                    one_shot=accuracy(pruned, data),
                    levels=kernel_levels(pruned),
                    seconds=time.perf_counter() - started,
                )
                rows.append(row)
                append_row(log, row)
                levels = ", ".join(f"{k} {v:.1%}" for k, v in row["levels"].items())
                print(
                    f"{criterion:>10} {sparsity:.2f} {label(scope, cap):>17}: "
                    f"{row['one_shot']:.4f} ({levels}; {row['seconds']:.1f} s)",
                    flush=True,
                )
    return rows, dense_seconds


def tables(rows: list[dict], sparsities: list[float], caps: list[float]) -> list[str]:
    """Markdown: per criterion, accuracy and the per-layer kernel levels of each setting."""
    by_key = {(r["criterion"], r["scope"], r["cap"], r["sparsity"]): r for r in rows}
    seen = sorted(
        {(r["scope"], r["cap"]) for r in rows}, key=lambda k: (k[1] or 0, SCOPE_ORDER.index(k[0]))
    )
    lines = []
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        names = next(iter(r["levels"] for r in rows if r["criterion"] == criterion))
        lines += [
            f"## {criterion}",
            "",
            "| setting | "
            + " | ".join(f"{s:.0%}: accuracy, {' / '.join(names)}" for s in sparsities)
            + " |",
            "|---" * (len(sparsities) + 1) + "|",
        ]
        for scope, cap in seen:
            cells = []
            for s in sparsities:
                row = by_key.get((criterion, scope, cap, s))
                if row is None:
                    cells.append("")
                    continue
                levels = " / ".join(f"{v:.1%}" for v in row["levels"].values())
                cells.append(f"**{row['one_shot']:.2%}**, {levels}")
            lines.append(f"| {label(scope, cap)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    floats = lambda text: [float(v) for v in text.split(",") if v.strip()]  # noqa: E731
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the dense model")
    parser.add_argument("--stats-examples", type=int, default=STATS_EXAMPLES)
    parser.add_argument("--sparsities", type=floats, default=list(SPARSITIES))
    parser.add_argument("--caps", type=floats, default=list(CAPS))
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument(
        "--no-curves",
        dest="curves",
        action="store_false",
        help="leave out the rows with allocation='error_curves'",
    )
    parser.add_argument("--cache", default="runs/criteria_frontier")
    parser.add_argument("--log", default="runs/global_floor/results.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows, dense_seconds = run(args)
    minutes = (time.perf_counter() - started) / 60
    text = [
        "# Global scope's per-layer levels: one threshold, error curves, a cap (LeNet-300-100, "
        "one-shot)",
        "",
        f"Command: `{command_line('global_floor', given)}`",
        "",
        f"Machine: {environment()}; load average {load_before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after; {minutes:.1f} minutes in all, "
        f"{dense_seconds / 60:.1f} of them training (or loading the cached) dense model.",
        "",
        f"LeNet-300-100, L2 {L2}, trained {args.epochs} epochs (Adam, batch 128), **one seed** "
        f"({args.seed}); statistics on {args.stats_examples} training examples; biases kept, "
        "the output layer keeps one weight per class; **test accuracy without retraining** on "
        "the 10k MNIST test images, then each layer's kernel sparsity "
        "(fc1 784x300, fc2 300x100, output 100x10). `global, cap c` is "
        '`tsp.prune_once(..., scope="global", max_layer_sparsity=c)`; `global, error curves` '
        'is `tsp.prune_once(..., scope="global", allocation="error_curves")`.',
        "",
        *tables(rows, args.sparsities, args.caps),
    ]
    if rows:
        text.append(f"Dense test accuracy: {rows[0]['dense']:.2%}.")
    publish("\n".join(text) + "\n", args.out)


if __name__ == "__main__":
    main()
