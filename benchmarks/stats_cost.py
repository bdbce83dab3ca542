"""Cost of one Wald scoring relative to one plain gradient pass, on the same examples.

Usage::

    python -m benchmarks.stats_cost [--examples 10000] [--generic-examples 1000]
        [--models lenet_300_100,lenet5,fc_challenge] [--repeats 5]
        [--out docs/results/stats_cost.md]

For each model, on the same MNIST training examples and the same chunk size:

- plain gradient pass: per chunk, the gradient of the summed loss with respect
  to every trainable weight, accumulated in float32 variables on the device
  (the cheapest honest gradient pass over the data);
- Wald scoring: ``tfstatprune.scores(model, (x, y), "wald_diag")``, what a user
  calls: per-example gradient statistics of the prunable kernels through the
  closed-form rules, then the criterion;
- the generic path: the same statistics with ``closed_form=False``
  (``tf.vectorized_map`` per-example gradients) and the same criterion, on
  ``--generic-examples`` examples (it is slow), against a plain pass over those
  examples with the generic path's chunk size.

After one warm-up run of each (tracing excluded), the two sides of a ratio run
back to back ``--repeats`` times; the table shows the median seconds and the
median of the per-round ratios (the generic path: a third of the rounds). The
ratios are what matter, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.stats import collect_statistics, resolve_loss

BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "lenet_300_100": models.lenet_300_100,
    "lenet5": models.lenet5,
    "fc_challenge": models.fc_challenge,
}
DEFAULT_MODELS = ",".join(BUILDERS)
# Targets of the "fast statistics" issue on this kind of CPU: Wald / plain.
TARGETS = {"lenet_300_100": 1.5, "fc_challenge": 1.5, "lenet5": 3.0}


NOTES = """\
Ratios are Wald scoring time / plain gradient pass time over the same examples
with the same chunk size: the median over rounds that run the two back to back,
and in brackets the lowest and highest round (the spread is the machine's
load). The matmul bound is the ratio of matmul work for the Dense-only models:
the closed form does everything a plain pass does plus one kernel-sized matmul
per layer, `(a ** 2)^T (delta ** 2)`, so about 1.5x is the floor when the first
layer dominates. The generic (`tf.vectorized_map`) path is measured on fewer
examples, each side with its own chunk size (the generic path's is small: it
holds a whole per-example gradient per example)."""


class Paired(NamedTuple):
    """Median seconds of both sides, and the median, min and max of the per-round ratios."""

    baseline_s: float
    candidate_s: float
    ratio: float
    low: float
    high: float


def paired_seconds(
    baseline: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> Paired:
    """Seconds of ``baseline`` and ``candidate`` and their ratio, round by round.

    One warm-up call each (tracing), then ``repeats`` rounds that run the two
    back to back, so that a change in the machine's load hits both sides of a
    ratio alike.
    """
    baseline()
    candidate()
    base, cand = [], []
    for _ in range(repeats):
        for fn, times in ((baseline, base), (candidate, cand)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    ratios = [c / b for b, c in zip(base, cand, strict=True)]
    return Paired(
        statistics.median(base),
        statistics.median(cand),
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )


def plain_gradient_pass(
    model: keras.Model, x: np.ndarray, y: np.ndarray, chunk: int
) -> Callable[[], list[np.ndarray]]:
    """One gradient of the summed loss per chunk, summed on the device: the baseline."""
    loss = resolve_loss(model)
    weights = model.trainable_weights
    totals = [tf.Variable(tf.zeros_like(w), trainable=False) for w in weights]

    @tf.function(reduce_retracing=True)
    def step(xb: tf.Tensor, yb: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(yb, model(xb, training=False)))
        for total, g in zip(totals, tape.gradient(value, weights), strict=True):
            total.assign_add(g)

    def run() -> list[np.ndarray]:
        for total in totals:
            total.assign(tf.zeros_like(total))
        for start in range(0, len(x), chunk):
            step(x[start : start + chunk], y[start : start + chunk])
        return [t.numpy() for t in totals]

    return run


def prunable_kernels(model: keras.Model) -> list[tf.Variable]:
    """The weights ``tsp.scores`` scores by default: every layer's kernel."""
    return [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]


def generic_wald_scoring(
    model: keras.Model, x: np.ndarray, y: np.ndarray, chunk: int
) -> Callable[[], dict[str, np.ndarray]]:
    """The statistics on the generic vectorized_map path, then the Wald criterion."""
    wald = get_criterion("wald_diag")
    kernels = prunable_kernels(model)

    def run() -> dict[str, np.ndarray]:
        found = collect_statistics(
            model, (x, y), weights=kernels, batch_size=chunk, closed_form=False, verbose=0
        )
        return {k.name: wald(k.numpy(), found.weights[k.name]) for k in kernels}

    return run


def measure(name: str, n: int, n_generic: int, repeats: int) -> dict[str, Any]:
    """Seconds and ratios for one model (see the module docstring)."""
    data = datasets.mnist()
    x, y = data.x_train[:n], data.y_train[:n]
    model = models.compile_classifier(BUILDERS[name]())
    kernels = prunable_kernels(model)
    chunk = collect_statistics(model, (x[:1], y[:1]), weights=kernels, verbose=0).chunk_size
    row: dict[str, Any] = {"model": name, "examples": n, "chunk": chunk}
    row["bound"] = matmul_bound(model)

    def wald() -> None:
        tsp.scores(model, (x, y), "wald_diag", batch_size=chunk, verbose=0)

    row["closed"] = paired_seconds(plain_gradient_pass(model, x, y, chunk), wald, repeats)
    if n_generic > 0:
        xg, yg = x[:n_generic], y[:n_generic]
        generic_chunk = collect_statistics(
            model, (xg[:1], yg[:1]), weights=kernels, closed_form=False, verbose=0
        ).chunk_size
        row["generic_examples"] = n_generic
        row["generic_chunk"] = generic_chunk
        row["generic"] = paired_seconds(
            plain_gradient_pass(model, xg, yg, generic_chunk),
            generic_wald_scoring(model, xg, yg, generic_chunk),
            max(1, repeats // 3),
        )
    return row


def matmul_bound(model: keras.Model) -> float | None:
    """Wald / plain in matmul work for a Dense-only model (None otherwise).

    A plain pass does the forward matmuls F, the input gradients of every
    layer but the first, and the kernel gradients W = F; the closed form adds
    one more kernel-sized matmul per layer, ``(a ** 2)^T (delta ** 2)``.
    """
    weighted = [layer for layer in model.layers if layer.weights]
    if not all(isinstance(layer, keras.layers.Dense) for layer in weighted):
        return None
    sizes = [int(np.prod(layer.kernel.shape)) for layer in weighted]
    plain = 3 * sum(sizes) - sizes[0]
    return (plain + sum(sizes)) / plain


def _ratio(p: Paired, digits: int) -> str:
    return f"{p.ratio:.{digits}f}x ({p.low:.{digits}f}-{p.high:.{digits}f})"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`measure` rows."""
    lines = [
        "| model | examples | chunk | plain pass (s) | Wald scoring (s) | ratio (range) "
        "| target | matmul bound "
        "| generic: examples | chunk | plain pass (s) | Wald scoring (s) | ratio (range) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["closed"]
        bound = "-" if r["bound"] is None else f"{r['bound']:.2f}x"
        line = (
            f"| {r['model']} | {r['examples']} | {r['chunk']} | {c.baseline_s:.3f} | "
            f"{c.candidate_s:.3f} | **{_ratio(c, 2)}** | <= {TARGETS[r['model']]:.1f}x "
            f"| {bound} |"
        )
        if "generic" in r:
            g = r["generic"]
            line += (
                f" {r['generic_examples']} | {r['generic_chunk']} | {g.baseline_s:.3f} | "
                f"{g.candidate_s:.3f} | {_ratio(g, 1)} |"
            )
        else:
            line += " - | - | - | - | - |"
        lines.append(line)
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> str:
    """One line: CPU, cores, TensorFlow version."""
    return (
        f"{_cpu_name()}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, tf_keras {keras.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument(
        "--generic-examples",
        type=int,
        default=1_000,
        help="examples for the generic path (0: skip it)",
    )
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write a markdown report here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = [
        measure(name, args.examples, args.generic_examples, args.repeats)
        for name in args.models.split(",")
    ]
    text = table(rows)
    print(text)
    if args.out:
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m benchmarks.stats_cost", *given])
        with open(args.out, "w") as f:
            f.write("# Cost of Wald scoring vs one plain gradient pass\n\n")
            load = f"load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after"
            f.write(f"Command: `{command}`\n\nMachine: {environment()}; {load}.\n\n")
            f.write(text + "\n\n" + NOTES + "\n")


if __name__ == "__main__":
    main()
