"""Cost of one-shot ``wald_block`` pruning vs one plain gradient pass, with peak memory.

Usage::

    python -m benchmarks.oneshot_cost [--models lenet_300_100,mobilenetv2]
        [--examples 512] [--sparsity 0.5] [--rounds 2] [--log rows.jsonl]
        [--out docs/results/oneshot_cost.md]

Per model, each in a fresh subprocess (so its peak resident memory is its own),
on the same ``--examples`` examples (MNIST for LeNet-300-100; random images and
labels for the random-init ``keras.applications`` models, ``weights=None``):

- plain gradient pass: one gradient of the summed loss per chunk over the
  examples (:func:`benchmarks.stats_cost.plain_gradient_pass`), after a warm-up;
- statistics: ``tsp.scores(model, data, "wald_block", hessian=...)`` for the
  exact GGN (the default), the sampled GGN and the empirical Fisher, each
  traced once before and timed against a plain pass run just before it;
- solver: ``tsp.prune_once(model, data, sparsity, "wald_block", substeps=1,
  recalibrate_batchnorm=False)`` minus the statistics' time, i.e. tracing the
  copy, the scores, masks and the update: by default (the per-unit estimator
  where it costs at most ``exact_flops``, else the blocked solver), with
  ``exact_flops=0`` (the blocked solver on every layer) and with
  ``block_size=None`` (the per-unit restricted estimator everywhere, on models
  where that finishes).

``--log`` appends each model's row as it is measured, and a rerun with the
same log measures only the models it lacks.

Peak memory is the process's maximum resident set (``ru_maxrss``).

``--layer RxO`` (e.g. ``4608x512``, a 3x3x512 convolution) times the solver
alone on one synthetic layer at ``--sparsity``: the blocked solver on the whole
layer, and the per-unit restricted estimator on ``PER_UNIT_SAMPLE`` output
units, extrapolated to all ``O`` (it is linear in them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import append_row, command_line, logged_rows, publish

MODELS = ("lenet_300_100", "mobilenetv2", "resnet50", "densenet121")
HESSIANS = ("ggn_exact", "ggn", "fisher")  # wald_block's default curvature first

NOTES = """\
Per model, in its own process: `plain pass` is one gradient of the summed loss
per chunk of 64 over the examples (the baseline); `statistics` is
`tsp.scores(model, data, "wald_block")`, what a user calls (the per-example
statistics of the prunable kernels with their Kronecker factors, then the
scores), with the default exact GGN (one more backward pass per class) and,
as ratios, the sampled GGN and the empirical Fisher. Each ratio is the median
over rounds of a scoring run against the plain pass run just before it, after
one traced run of each. `solver` is `tsp.prune_once(..., "wald_block",
substeps=1, recalibrate_batchnorm=False)` minus the exact-GGN statistics'
time: copying and tracing the model, the scores, the masks and the update.
Peak RSS is the process's maximum resident set."""
PER_UNIT_MODELS = ("lenet_300_100",)  # the per-unit estimator finishes in minutes here
CHUNK = 64
PER_UNIT_SAMPLE = 4


def _build(name: str) -> tuple[Any, np.ndarray, np.ndarray]:
    from tfstatprune import datasets, models
    from tfstatprune._keras import keras

    keras.utils.set_random_seed(0)
    if name == "lenet_300_100":
        model = models.compile_classifier(models.lenet_300_100(), 1e-3)
        data = datasets.mnist()
        return model, data.x_train, data.y_train
    shape = (96, 96, 3)
    if name == "mobilenetv2":
        model = keras.applications.MobileNetV2(
            input_shape=shape, alpha=0.35, weights=None, classes=10
        )
    else:
        shape = (64, 64, 3)
        builders = {
            "resnet50": keras.applications.ResNet50,
            "densenet121": keras.applications.DenseNet121,
        }
        model = builders[name](input_shape=shape, weights=None, classes=10)
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((2048, *shape), dtype=np.float32)
    return model, x, rng.integers(0, 10, 2048)


def _seconds(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(name: str, examples: int, sparsity: float, rounds: int) -> dict[str, Any]:
    """One model's figures (run in its own process by :func:`main`)."""
    import tfstatprune as tsp
    from benchmarks.stats_cost import plain_gradient_pass

    model, x, y = _build(name)
    x, y = x[:examples], y[:examples]
    weights = sum(int(np.prod(w.shape)) for w in model.weights if "kernel" in w.name)
    plain = plain_gradient_pass(model, x, y, CHUNK)

    def scoring(hessian: str) -> Callable[[], Any]:
        return lambda: tsp.scores(
            model, (x, y), "wald_block", hessian=hessian, batch_size=CHUNK, verbose=0
        )

    plain()
    for hessian in HESSIANS:  # traced once before the timed rounds
        scoring(hessian)()
    seconds: dict[str, list[float]] = {key: [] for key in ("plain", *HESSIANS)}
    ratios: dict[str, list[float]] = {hessian: [] for hessian in HESSIANS}
    for _ in range(rounds):
        for hessian in HESSIANS:  # each against a plain pass right before it
            seconds["plain"].append(_seconds(plain))
            seconds[hessian].append(_seconds(scoring(hessian)))
            ratios[hessian].append(seconds[hessian][-1] / seconds["plain"][-1])
    row: dict[str, Any] = dict(model=name, examples=examples, weights=weights)
    row["plain_s"] = float(np.median(seconds["plain"]))
    for hessian in HESSIANS:
        row[f"{hessian}_s"] = float(np.median(seconds[hessian]))
        row[f"{hessian}_ratio"] = float(np.median(ratios[hessian]))
    variants = {"default": {}, "blocked": {"exact_flops": 0}}
    if name in PER_UNIT_MODELS:
        variants["per_unit"] = {"block_size": None}
    for label, options in variants.items():
        total = _seconds(
            lambda options=options: tsp.prune_once(
                model,
                (x, y),
                sparsity,
                "wald_block",
                substeps=1,
                batch_size=CHUNK,
                recalibrate_batchnorm=False,
                verbose=0,
                **options,
            )
        )
        row[f"{label}_total_s"] = total
        row[f"{label}_solver_s"] = max(total - row["ggn_exact_s"], 0.0)
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def solver_layer(shape: str, sparsity: float) -> dict[str, Any]:
    """Seconds of the blocked solver and of the per-unit estimator on one ``RxO`` layer."""
    from tfstatprune.criteria.block import restricted_update
    from tfstatprune.criteria.solver import solve_layer
    from tfstatprune.stats.kronecker import KroneckerFactors

    rows, columns = (int(v) for v in shape.split("x"))
    rng = np.random.default_rng(0)
    b = rng.normal(size=(rows, rows // 4))
    a = b @ b.T / rows + 0.1 * np.eye(rows)
    theta = rng.normal(size=(rows, columns))
    keep = np.abs(theta) >= np.quantile(np.abs(theta), sparsity)
    blocked = _seconds(lambda: solve_layer(theta, a, keep, layer=shape))
    factors = KroneckerFactors(1, a, np.eye(columns), None, has_bias=False)
    sample = keep[:, :PER_UNIT_SAMPLE]
    per_unit = _seconds(
        lambda: restricted_update(theta[:, :PER_UNIT_SAMPLE], None, factors, sample, damping=0)
    )
    return dict(
        layer=shape,
        sparsity=sparsity,
        blocked_s=blocked,
        per_unit_s=per_unit * columns / PER_UNIT_SAMPLE,
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def table(rows: list[dict[str, Any]], sparsity: float) -> str:
    lines = [
        "| model | kernel weights | plain pass (s) | statistics, ggn_exact (s) | "
        "ggn_exact / plain | ggn / plain | fisher / plain | "
        f"solver, prune_once {sparsity:.0%} default (s) | blocked everywhere (s) | "
        "blocked s per M weights | per-unit everywhere (s) | peak RSS (MB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        per_unit = f"{r['per_unit_solver_s']:.1f}" if "per_unit_solver_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['weights']:,} | {r['plain_s']:.2f} | {r['ggn_exact_s']:.1f} | "
            f"{r['ggn_exact_ratio']:.1f}x | {r['ggn_ratio']:.1f}x | {r['fisher_ratio']:.1f}x | "
            f"{r['default_solver_s']:.1f} | {r['blocked_solver_s']:.1f} | "
            f"{r['blocked_solver_s'] / (r['weights'] / 1e6):.1f} | {per_unit} | "
            f"{r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lenet_300_100,mobilenetv2")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--log", default=None, help="append each model's row; resume from it")
    parser.add_argument("--layer", default=None, help="time the solver on one RxO layer")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.layer:
        print(json.dumps(solver_layer(args.layer, args.sparsity)))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.examples, args.sparsity, args.rounds)))
        return
    log = Path(args.log) if args.log else None
    rows = {r["model"]: r for r in logged_rows(log) if r.get("examples") == args.examples}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        if name in rows:
            continue  # measured by an earlier run of this log
        command = [sys.executable, "-m", "benchmarks.oneshot_cost", "--one", name]
        command += ["--examples", str(args.examples), "--sparsity", str(args.sparsity)]
        command += ["--rounds", str(args.rounds)]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        if done.returncode:
            raise SystemExit(f"{name}: {done.stderr[-2000:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        if log is not None:
            append_row(log, rows[name])
        print(rows[name], flush=True)
    measured = [rows[name] for name in args.models.split(",")]
    text = (
        "# One-shot wald_block: cost vs a plain gradient pass\n\n"
        f"Command: `{command_line('oneshot_cost', argv)}`\n\n"
        f"{table(measured, args.sparsity)}\n\n{NOTES}"
    )
    publish(text, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
