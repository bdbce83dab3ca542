"""Batch-1 latency (and accuracy) of .tflite models side by side, with LiteRT."""

from __future__ import annotations

import gzip
import os
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tflite_export import _data
from tflite_export.flatbuffer import Storage, inspect_weights, read_tflite
from tflite_export.runtime import (
    RUNTIME_NAME,
    Loaded,
    feed_dtype,
    load,
    predict,
    quantize_input,
)
from tfstatprune.tables import Table, format_text, kib

__all__ = ["ANDROID_DIR", "BenchmarkResult", "ModelTiming", "android_command", "benchmark"]

#: Where the Android commands put the model and the ``benchmark_model`` binary.
ANDROID_DIR = "/data/local/tmp"
_NS_PER_MS = 1e6
_P50, _P90 = 50, 90
_GZIP_LEVEL = 9
_RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelTiming:
    """Latency of one model at batch 1.

    Attributes:
      path: the .tflite file.
      size_bytes, gzip_bytes: file size raw and gzipped.
      p50_ms, p90_ms, mean_ms: latency of one ``invoke()`` in milliseconds.
      runtime: ``"XNNPACK"``, ``"builtin kernels"``, or
        ``"builtin kernels (XNNPACK failed)"``.
      weight_storage: number of weight tensors per :class:`Storage` value.
      accuracy: top-1 accuracy on the ``data`` given to :func:`benchmark`.
    """

    path: Path
    size_bytes: int
    gzip_bytes: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    runtime: str
    weight_storage: dict[Storage, int]
    accuracy: float | None = None

    def storage_summary(self) -> str:
        """E.g. ``"3 dense"``, ``"3 densified"``, ``"3 native"``."""
        short = {
            Storage.DENSE: "dense",
            Storage.DENSIFIED: "densified",
            Storage.NATIVE: "native sparse",
            Storage.UNSUPPORTED: "unsupported sparse",
        }
        parts = [f"{n} {short[s]}" for s, n in self.weight_storage.items() if n]
        return ", ".join(parts) or "-"


@dataclass(frozen=True)
class BenchmarkResult:
    """The timings of :func:`benchmark`, one row per model, and how they were taken."""

    timings: tuple[ModelTiming, ...]
    threads: int
    runs: int
    warmup: int
    xnnpack: bool
    runtime: str = RUNTIME_NAME

    def __getitem__(self, index: int) -> ModelTiming:
        return self.timings[index]

    def __len__(self) -> int:
        return len(self.timings)

    @property
    def android_commands(self) -> list[str]:
        """``adb`` command lines running the same files with ``benchmark_model``."""
        return [
            android_command(
                t.path,
                threads=self.threads,
                runs=self.runs,
                warmup=self.warmup,
                xnnpack=self.xnnpack,
            )
            for t in self.timings
        ]

    def __str__(self) -> str:
        with_accuracy = any(t.accuracy is not None for t in self.timings)
        headers = ["model", "KiB", "KiB gz", "p50 ms", "p90 ms", "mean ms", "runtime", "weights"]
        if with_accuracy:
            headers.append("accuracy")
        rows = []
        for t in self.timings:
            row = [
                t.path.name,
                kib(t.size_bytes),
                kib(t.gzip_bytes),
                f"{t.p50_ms:.4f}",
                f"{t.p90_ms:.4f}",
                f"{t.mean_ms:.4f}",
                t.runtime,
                t.storage_summary(),
            ]
            if with_accuracy:
                row.append("-" if t.accuracy is None else f"{t.accuracy:.2%}")
            rows.append(row)
        header = (
            f"LiteRT ({self.runtime}) batch-1 latency: {self.threads} thread(s), "
            f"{self.runs} interleaved runs after {self.warmup} warm-up runs, "
            f"XNNPACK {'on' if self.xnnpack else 'off'}"
        )
        commands = "\n".join(f"  {c}" for c in self.android_commands)
        table = format_text(Table(headers, rows), indent="  ")
        return f"{header}\n{table}\nOn an Android phone (adb):\n{commands}"


def android_command(
    path: str | os.PathLike[str],
    *,
    threads: int = 1,
    runs: int = 200,
    warmup: int = 20,
    xnnpack: bool = True,
) -> str:
    """The adb command line benchmarking ``path`` with TFLite's ``benchmark_model``.

    Assumes the ``benchmark_model`` binary for the phone's ABI (prebuilt nightly
    ``android_aarch64_benchmark_model``) is already in :data:`ANDROID_DIR`.
    ``--use_xnnpack=false`` also stops LiteRT applying XNNPACK implicitly.
    """
    local = Path(path)
    remote = f"{ANDROID_DIR}/{local.name}"
    flags = [
        f"--graph={remote}",
        f"--num_threads={threads}",
        f"--use_xnnpack={'true' if xnnpack else 'false'}",
        f"--num_runs={runs}",
        f"--warmup_runs={warmup}",
    ]
    push = f"adb push {shlex.quote(str(local))} {ANDROID_DIR}/"
    return f"{push} && adb shell {ANDROID_DIR}/benchmark_model {' '.join(flags)}"


def benchmark(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    threads: int = 1,
    runs: int = 200,
    warmup: int = 20,
    xnnpack: bool = True,
    data: Any = None,
    verbose: bool = True,
) -> BenchmarkResult:
    """Batch-1 latency of one or more .tflite files, measured side by side.

    Every model gets its own interpreter; then ``warmup`` and ``runs`` rounds
    each invoke every model once, in an order rotated by one each round, so
    that all models see the same machine state (frequency, cache, load).
    Only ``invoke()`` is timed. Inputs are the first example of ``data`` or
    uniform random in [0, 1), quantized for int8-input models.

    Args:
      paths: a .tflite file or several.
      threads: interpreter threads (``num_threads``).
      runs: timed runs per model.
      warmup: untimed runs per model first.
      xnnpack: apply the XNNPACK delegate (LiteRT's default); False runs the
        builtin kernels only. A model XNNPACK cannot prepare runs on the
        builtin kernels and says so in the ``runtime`` column.
      data: optional ``(x, y)`` arrays (or a ``tf.data.Dataset`` of ``(x, y)``):
        the top-1 accuracy of each model on it, one example at a time.
      verbose: print the table and the Android commands.

    Returns:
      A :class:`BenchmarkResult`.

    Raises:
      FileNotFoundError: for a missing file.
      TFLiteFileError: for a file that is not a TFLite model or cannot be loaded
        (the message names the file).
      ValueError: for ``runs < 1``, ``warmup < 0`` or ``threads < 1``.
    """
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, threads >= 1; got {runs}, {warmup}, {threads}"
        )
    paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no model to benchmark")
    contents = [read_tflite(p) for p in paths]
    models = [
        load(c, str(p), threads=threads, xnnpack=xnnpack)
        for c, p in zip(contents, paths, strict=True)
    ]
    first = None
    labelled = None
    if data is not None:
        labelled = _labelled(data, models[0])
        first = labelled[0][:1]
    for model in models:
        _set_inputs(model.interpreter, first)
    times = _interleaved(models, runs, warmup)
    timings = []
    for path, content, model, ns in zip(paths, contents, models, times, strict=True):
        ms = np.asarray(ns, np.float64) / _NS_PER_MS
        storage = {s: 0 for s in Storage}
        for weight in inspect_weights(content):
            storage[weight.storage] += 1
        timings.append(
            ModelTiming(
                path=path,
                size_bytes=len(content),
                gzip_bytes=len(gzip.compress(content, compresslevel=_GZIP_LEVEL)),
                p50_ms=float(np.percentile(ms, _P50)),
                p90_ms=float(np.percentile(ms, _P90)),
                mean_ms=float(statistics.fmean(ms)),
                runtime=model.label,
                weight_storage=storage,
                accuracy=None if labelled is None else _accuracy(model, *labelled),
            )
        )
    result = BenchmarkResult(
        tuple(timings), threads=threads, runs=runs, warmup=warmup, xnnpack=xnnpack
    )
    if verbose:
        print(result)
    return result


def _labelled(data: Any, model: Loaded) -> tuple[np.ndarray, np.ndarray]:
    (detail,) = model.interpreter.get_input_details()
    x, y = _data.labelled_examples(data, tuple(detail["shape"][1:]), dtype=feed_dtype(detail))
    if y is None:
        raise ValueError("benchmark data must be (x, y) to measure accuracy")
    return x, _data.class_labels(y)


def _set_inputs(interpreter: Any, x: np.ndarray | None) -> None:
    rng = np.random.default_rng(_RANDOM_SEED)
    for detail in interpreter.get_input_details():
        value = x if x is not None else rng.random(detail["shape"], dtype=np.float32)
        interpreter.set_tensor(detail["index"], quantize_input(detail, value))


def _interleaved(models: list[Loaded], runs: int, warmup: int) -> list[list[int]]:
    """Nanoseconds per ``invoke()``, per model; rounds rotate the model order."""
    times: list[list[int]] = [[] for _ in models]
    order = list(range(len(models)))
    for round_index in range(warmup + runs):
        shift = round_index % len(models)
        for index in order[shift:] + order[:shift]:
            invoke = models[index].interpreter.invoke
            started = time.perf_counter_ns()
            invoke()
            elapsed = time.perf_counter_ns() - started
            if round_index >= warmup:
                times[index].append(elapsed)
    return times


def _accuracy(model: Loaded, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predict(model.interpreter, x).argmax(-1) == labels))
