"""Cost of one Wald scoring relative to one plain gradient pass, on the same examples.

Usage::

    python -m benchmarks.stats_cost [--examples 10000] [--models lenet_300_100,...]
        [--generic] [--out docs/results/stats_cost.md]

Both sides run in this process on the same MNIST examples and the same chunk
size; each is timed after one warm-up pass (tracing excluded) as the median of
``--repeats`` runs. The ratio is what matters, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune.stats import resolve_loss

BUILDERS: dict[str, Callable[[], tf.Module]] = {
    "lenet_300_100": models.lenet_300_100,
    "lenet5": models.lenet5,
    "fc_challenge": models.fc_challenge,
}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: tracing
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def plain_gradient_pass(model, x: np.ndarray, y: np.ndarray, chunk: int) -> Callable[[], None]:
    """One gradient of the summed loss per chunk, accumulated: the baseline."""
    loss = resolve_loss(model)
    weights = model.trainable_weights

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(yb, model(xb, training=False)))
        return tape.gradient(value, weights)

    def run() -> None:
        totals = [np.zeros(w.shape, np.float64) for w in weights]
        for start in range(0, len(x), chunk):
            grads = step(x[start : start + chunk], y[start : start + chunk])
            for total, g in zip(totals, grads, strict=True):
                total += g.numpy()

    return run


def measure(name: str, n: int, repeats: int, generic: bool) -> dict[str, float]:
    data = datasets.mnist()
    x, y = data.x_train[:n], data.y_train[:n]
    model = models.compile_classifier(BUILDERS[name]())
    chunk = tsp.collect_statistics(model, (x[:1], y[:1]), verbose=0).chunk_size
    row = {"model": name, "examples": n, "chunk": chunk}
    row["plain_s"] = _median_seconds(plain_gradient_pass(model, x, y, chunk), repeats)

    def wald() -> None:
        tsp.scores(model, (x, y), "wald", batch_size=chunk, verbose=0)

    row["wald_s"] = _median_seconds(wald, repeats)
    row["ratio"] = row["wald_s"] / row["plain_s"]
    if generic:
        generic_chunk = tsp.collect_statistics(
            model, (x[:1], y[:1]), closed_form=False, verbose=0
        ).chunk_size

        def wald_generic() -> None:
            tsp.collect_statistics(
                model, (x, y), closed_form=False, batch_size=generic_chunk, verbose=0
            )

        row["generic_s"] = _median_seconds(wald_generic, 1)
        row["generic_ratio"] = row["generic_s"] / row["plain_s"]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--models", default="lenet_300_100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generic", action="store_true", help="also time the generic path")
    parser.add_argument("--out", default=None, help="write a markdown table here")
    args = parser.parse_args(argv)
    rows = [
        measure(name, args.examples, args.repeats, args.generic)
        for name in args.models.split(",")
    ]
    header = "| model | examples | chunk | plain gradient pass (s) | Wald scoring (s) | ratio |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['examples']} | {r['chunk']} | {r['plain_s']:.3f} | "
            f"{r['wald_s']:.3f} | {r['ratio']:.2f}x |"
        )
    if args.generic:
        lines.append("")
        lines.append("| model | generic (vectorized_map) path (s) | ratio |")
        lines.append("|---|---|---|")
        for r in rows:
            lines.append(f"| {r['model']} | {r['generic_s']:.3f} | {r['generic_ratio']:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Cost of Wald scoring vs one plain gradient pass\n\n")
            f.write(f"Command: `python -m benchmarks.stats_cost {' '.join(argv or [])}`\n\n")
            f.write(table + "\n")


if __name__ == "__main__":
    main()
