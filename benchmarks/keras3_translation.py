"""Keras 3 -> tf_keras -> Keras 3 translation of keras.applications models: time and agreement.

Run: ``python -m benchmarks.keras3_translation`` (writes docs/results/keras3.md).
Each model is built with ``weights=None`` at a small input; the times are wall
clock for :func:`tfstatprune.to_tf_keras` (which includes its own prediction
check) and for :func:`tfstatprune.to_keras3` back, and the max |diff| is of the
round-tripped model's logits (``classifier_activation=None``: softmax outputs of
an untrained model are near 1/1000 and would hide differences) against the
original's on 4 random inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras as keras3  # noqa: E402

import tfstatprune as tsp  # noqa: E402
from tfstatprune import _translate  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "keras3.md"
MODELS = {
    "MobileNetV2": (keras3.applications.MobileNetV2, 32),
    "MobileNetV3Small": (keras3.applications.MobileNetV3Small, 32),
    "EfficientNetB0": (keras3.applications.EfficientNetB0, 32),
    "ResNet50": (keras3.applications.ResNet50, 32),
}
EXAMPLES = 4


def measure(name: str) -> dict:
    build, size = MODELS[name]
    model = build(input_shape=(size, size, 3), weights=None, classifier_activation=None)
    x = _translate.sample_inputs(model, count=EXAMPLES)
    start = time.perf_counter()
    translated = tsp.to_tf_keras(model)
    to_tf = time.perf_counter() - start
    start = time.perf_counter()
    back = tsp.to_keras3(translated)
    to_k3 = time.perf_counter() - start
    found = _translate.agreement(model, back, x)
    return {
        "model": name,
        "input": f"{size}x{size}",
        "layers": len(model.layers),
        "params": model.count_params(),
        "to_tf_keras_s": to_tf,
        "to_keras3_s": to_k3,
        "max_abs_diff": found.max_abs_diff,
        "max_abs_output": found.max_abs_output,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        row = measure(name)
        print(row, flush=True)
        rows.append(row)
    lines = [
        "# Keras 3 models through tfstatprune's translation",
        "",
        "`python -m benchmarks.keras3_translation` (keras.applications, `weights=None`,",
        f"Keras {keras3.__version__}, {platform.machine()}, 2 CPU cores shared with other jobs).",
        "`to_tf_keras` includes its prediction check; max |diff| is the Keras 3 -> tf_keras ->",
        f"Keras 3 round trip against the original, on the logits, for {EXAMPLES} random inputs.",
        "",
        "| model | input | layers | parameters | to_tf_keras (s) | to_keras3 (s) "
        "| max abs diff | max abs output |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['layers']} | {r['params']:,} "
            f"| {r['to_tf_keras_s']:.1f} | {r['to_keras3_s']:.1f} "
            f"| {r['max_abs_diff']:.1e} | {r['max_abs_output']:.1e} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    keras3.utils.set_random_seed(0)
    main()
