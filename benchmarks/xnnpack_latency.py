"""MobileNetV2 dense vs 1x1-sparse on LiteRT's XNNPACK: does its sparse path run here?

Usage::

    python -m benchmarks.xnnpack_latency [--size 224] [--runs 100] [--out docs/results/xnnpack.md]

Stock ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at
``size x size``, then :func:`tfstatprune.latency_policy` (a copy with its
stride-2 layers padded symmetrically, and its 34 1x1 convolutions), pruned
one-shot by magnitude (:func:`tfstatprune.prune_once`, ``layers=`` the policy's)
to 75, 85 and 90 % of those weights. Every model is exported float32 with
:func:`tflite_export.export` (sparse storage on for the pruned ones; its report
says whether XNNPACK would run a subgraph sparse) and all files are timed
in one interleaved :func:`tflite_export.benchmark` run (batch 1, one thread,
XNNPACK). The 90 % model is also exported with its zeros stored dense, and
both files' outputs are compared: a sparse NCHW run would sum in another order
than the dense NHWC one, so identical outputs mean the same dense kernels ran.

Filter pruning plus :func:`tfstatprune.shrink` is not measured: shrink does not
pass through DepthwiseConv2D yet.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np

import tfstatprune as tsp
from tflite_export import benchmark, export
from tflite_export.runtime import load, predict
from tfstatprune._keras import keras

TOOL = "benchmarks.xnnpack_latency"
ALPHA = 0.35
SPARSITIES = (0.75, 0.85, 0.9)
SEED = 0
CLASSES = 1000

#: What it takes for XNNPACK to run sparse, read from its source (XNNPACK
#: ``src/subgraph.c``, ``src/xnnpack/hardware-config.h``; LiteRT's
#: ``tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc``) and checked here.
FINDINGS = """\
## What XNNPACK's sparse path needs, and why it does not run on this machine

1. **The delegate must ask for it.** LiteRT's XNNPACK delegate passes
   `XNN_FLAG_HINT_SPARSE_INFERENCE` only when a node of the delegated graph reads
   a weight stored sparse and expanded by `DENSIFY` (`export(sparse=True)`, from
   30 % zeros). Zeros stored dense never ask. The Python `Interpreter` exposes no
   XNNPACK flags, the wheel ships no separate delegate library to
   `load_delegate` with options (its `ai_edge_litert/` holds none), and we found no
   environment variable for it in the delegate's source: sparse storage is the
   only switch.
2. **The subgraph must be NCHW-compatible** (`xnn_subgraph_rewrite_for_nchw`): it
   enters through a 3x3 stride-2 convolution of 3 channels with padding 1 on every
   side, holds only 1x1 stride-1 convolutions, 3x3/5x5 depthwise convolutions
   (padding `k // 2` on every side), 4-D `ADD`/`MUL` and element-wise ops, leaves
   through `MEAN`, and no tensor inside is read from outside. Stock
   `keras.applications` models fail here: the TFLite converter turns their
   stride-2 paddings into `SAME`, which XNNPACK keeps as "TensorFlow SAME padding"
   for strides > 1 and refuses. `tsp.latency_policy` repads them (explicit
   `ZeroPadding2D` of one pixel per side, `padding="valid"`, same output shapes at
   even sizes); the converter then keeps a `PAD` that XNNPACK fuses.
3. **More than 2/3 of the cluster's 1x1 weights must be zero.**
4. **The CPU must not have AVX.** `xnn_is_chw_compatible_config` returns false on
   x86 with AVX ("sparse microkernels on x86 currently target only SSE, and on
   processors with AVX ISA dense inference is expected to be faster than
   sparse"). This machine has AVX-512, so XNNPACK runs every variant below dense,
   whatever the file says; the sparse path is for ARM phones and watches (and
   WebAssembly), where Elsen et al. 2020 measured 1.3-2.4x. The exporter's check
   (`report.xnnpack`, `tflite_export.xnnpack.check`) says what XNNPACK does with
   the file on such a device: conditions 1-3.

## What this means, and what is not measured

- Here every variant runs within noise of dense (0.96-1.04x on a shared 2-core
  machine): the 0.7x target is out of reach on x86 with AVX, and the outputs show the
  dense kernels ran. Whether the pruned files run sparse on an ARM device is not
  measured here; the exporter's check applies XNNPACK's rules to the file.
- Filter pruning plus `tsp.shrink` at equal FLOPs is not measured: shrink does not
  pass through DepthwiseConv2D yet.
- `tsp.latency_policy` refuses stock MobileNetV3 (its classifier, 1x1 convolutions
  after a keepdims pooling, is read by a Flatten) and EfficientNet (its
  squeeze-excite goes through a Reshape), naming the layer; the converter might fold
  either away, which is not checked here.
- 2:4, 1x4 and 1x16 blocks do not apply: XNNPACK's sparse 1x1 kernels take any
  pattern of zeros, and only `FULLY_CONNECTED` has block formats (docs/results/tflite.md).
"""


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return (
        ", ".join(f for f in ("sse4_2", "avx", "avx2", "avx512f") if f in flags)
        or "none of SSE4.2/AVX"
    )


def run(size: int, runs: int, out: Path | None) -> str:
    rng = np.random.default_rng(SEED)
    stock = keras.applications.MobileNetV2(alpha=ALPHA, weights=None, input_shape=(size, size, 3))
    stock.compile(loss="sparse_categorical_crossentropy")
    x = rng.random((4, size, size, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, 4)
    policy = tsp.latency_policy(stock)
    policy.model.compile(loss="sparse_categorical_crossentropy")
    work = Path(tempfile.mkdtemp(prefix="xnnpack_latency_"))
    rows = []  # (label, file, report)
    rows.append(("stock, dense", *_export(stock, work / "stock.tflite", False, x)))
    rows.append(("repadded, dense", *_export(policy.model, work / "repadded.tflite", False, x)))
    pruned90 = None
    for sparsity in SPARSITIES:
        pruned = tsp.strip_pruning(
            tsp.prune_once(policy.model, (x, y), sparsity, "magnitude", layers=policy.layers)
        )
        name = f"repadded, 1x1 {sparsity:.0%} zero"
        rows.append((name, *_export(pruned, work / f"sparse{sparsity:.2f}.tflite", True, x)))
        pruned90 = pruned
    dense_stored = _export(pruned90, work / "sparse0.90-dense-stored.tflite", False, x)
    rows.append(("repadded, 1x1 90% zero, stored dense", *dense_stored))
    result = benchmark([path for _, path, _ in rows], runs=runs, warmup=10, verbose=False)
    outputs = [
        predict(load(path.read_bytes(), str(path)).interpreter, x[:1])
        for path in (rows[-2][1], rows[-1][1])
    ]
    same = float(np.abs(outputs[0] - outputs[1]).max())
    dense_ms = result[0].p50_ms
    lines = [
        "# XNNPACK sparse inference: MobileNetV2 dense vs 1x1-sparse",
        "",
        f"Command: `python -m {TOOL} --size {size} --runs {runs}"
        + (f" --out {out}" if out else "")
        + "`",
        "",
        f"MobileNetV2 (alpha {ALPHA}, weights=None, {size}x{size}), LiteRT with XNNPACK, "
        f"batch 1, 1 thread, {runs} interleaved runs per file, CPU {platform.machine()} "
        f"with {_cpu_flags()}. Repadded: `tsp.latency_policy` (stride-2 layers "
        f"{', '.join(policy.repadded)} padded one pixel on every side); pruned: its "
        f"{len(policy.layers)} 1x1 convolutions, one-shot magnitude.",
        "",
        "| model | p50 ms | p90 ms | vs stock dense | exporter's XNNPACK check |",
        "|---|---|---|---|---|",
    ]
    for (label, _, report), timing in zip(rows, result, strict=True):
        check = str(report.xnnpack).replace("XNNPACK sparse inference: ", "").replace("|", "/")
        lines.append(
            f"| {label} | {timing.p50_ms:.2f} | {timing.p90_ms:.2f} | "
            f"{timing.p50_ms / dense_ms:.2f}x | {check} |"
        )
    lines += [
        "",
        f"The 90 % model stored sparse and stored dense give max |diff| {same:.1e} on the same "
        "input: " + ("bit-identical, the same dense kernels ran." if same == 0 else "they differ."),
    ]
    text = "\n".join(lines) + "\n\n" + FINDINGS
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def _export(model: keras.Model, path: Path, sparse: bool, x: np.ndarray):
    report = export(model, path, sparse=sparse, sample_inputs=x, overwrite=True, verbose=False)
    return path, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per file")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    print(run(args.size, args.runs, args.out))


if __name__ == "__main__":
    main()
