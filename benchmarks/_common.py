"""What the scripts under ``benchmarks/`` share: data subsets, dense training, output.

Each script is ``python -m benchmarks.<name> [options]`` from the repository
root; these helpers are the parts they would otherwise each write again:

* :func:`say`: a progress line;
* :func:`subset`: a random subset of examples, in their original order;
* :func:`train_dense`: seed, build, compile and fit the dense model the
  pruning starts from;
* :func:`compile_and_fit`: compile and fit a (pruned or wrapped) model;
* :func:`logged_rows`: the rows an interrupted run wrote to its ``--log``;
* :func:`command_line` and :func:`publish`: the tail of a script's ``main``
  (the command that reproduces a report, printing it and writing it).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tfstatprune import models
from tfstatprune._keras import keras

#: The line of a results file below which a reading written by hand is kept when
#: the file's report is regenerated (:func:`publish`).
KEPT = "<!-- Written by hand below this line; kept when the report is regenerated. -->"

__all__ = [
    "command_line",
    "compile_and_fit",
    "logged_rows",
    "publish",
    "say",
    "subset",
    "train_dense",
]


def logged_rows(log: Path | None) -> list[dict]:
    """The rows (one JSON object per line) an earlier, interrupted run wrote to ``log``
    (none without a log)."""
    if log is None or not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def append_row(log: Path, row: dict) -> None:
    """Append ``row`` to ``log`` as one JSON line (what :func:`logged_rows` reads back)."""
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")


def say(message: str) -> None:
    """Print a progress line (``== message``) after a blank line, flushed."""
    print(f"\n== {message}", flush=True)


def subset(
    x: np.ndarray, y: np.ndarray, size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` examples of ``(x, y)`` drawn without replacement, kept in order; all if None.

    Example:
      >>> x, y = subset(np.arange(10), np.arange(10) % 2, 3, np.random.default_rng(0))
      >>> x.tolist(), y.tolist()
      ([5, 6, 9], [1, 0, 1])
    """
    if size is None or size >= len(x):
        return np.asarray(x), np.asarray(y)
    chosen = np.sort(rng.choice(len(x), size=size, replace=False))
    return x[chosen], y[chosen]


def train_dense(
    build: Callable[..., keras.Model],
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    l2: float,
    epochs: int,
    batch_size: int,
    learning_rate: float = models.DEFAULT_LEARNING_RATE,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
) -> keras.Model:
    """A dense classifier trained from ``seed``: the model every pruning run starts from.

    Sets the global seed, builds ``build(l2=l2, seed=seed)``, compiles it with
    :func:`tfstatprune.models.compile_classifier` and fits it on ``(x, y)``.

    Returns:
      The trained (compiled) model.
    """
    keras.utils.set_random_seed(seed)
    model = models.compile_classifier(build(l2=l2, seed=seed), learning_rate)
    model.fit(
        x, y, batch_size=batch_size, epochs=epochs, callbacks=list(callbacks), verbose=verbose
    )
    return model


def compile_and_fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    learning_rate: float = models.DEFAULT_LEARNING_RATE,
    seed: int | None = None,
    verbose: int = 0,
) -> keras.Model:
    """Compile ``model`` (a fresh optimizer) and fit it on ``(x, y)``; returns it.

    ``model`` is a pruned model (the caller holds its zeros, with the pruning
    wrappers and :func:`tfstatprune.callbacks` or a callback of its own) or a
    wrapped one pruned while it trains. ``seed``, when given, is set after
    compiling, right before the fit (the data order).
    """
    models.compile_classifier(model, learning_rate)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model.fit(
        x, y, batch_size=batch_size, epochs=epochs, callbacks=list(callbacks), verbose=verbose
    )
    return model


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reruns ``benchmarks/<script>.py`` with ``argv`` (default: ``sys.argv``).

    Example:
      >>> command_line("seed_frontier", ["--seeds", "1"])
      'python -m benchmarks.seed_frontier --seeds 1'
      >>> command_line("criteria_frontier", ["--variant", "wb 8=wald_block,substeps=8"])
      "python -m benchmarks.criteria_frontier --variant 'wb 8=wald_block,substeps=8'"
    """
    given = sys.argv[1:] if argv is None else argv
    return f"python -m benchmarks.{script} {shlex.join(given)}".rstrip()


def kept_text(out: Path) -> str:
    """What ``out`` holds from the line :data:`KEPT` on (a hand-written reading), or ""."""
    if not out.exists():
        return ""
    old = out.read_text()
    return "" if KEPT not in old else "\n" + old[old.index(KEPT) :]


def publish(text: str, out: Path | None, *, figure: str | None = None) -> None:
    """Print a report and, when ``out`` is given, write it there.

    What ``out`` held from the line :data:`KEPT` on (a reading written by hand) is
    kept after the new report.

    Args:
      text: the report (markdown).
      out: the file to write, or None.
      figure: the markdown the file gets after the report (a link to the plot
        written beside it); not printed.
    """
    print(text)
    if out is not None:
        out.write_text(text + (figure or "") + kept_text(out))
