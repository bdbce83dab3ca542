"""Shared fixtures: small deterministic models and data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tfstatprune._keras import keras

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def benchmark_script(request):
    """The script ``benchmarks/<BENCHMARK>.py`` of the test module, loaded by path."""
    name = request.module.BENCHMARK
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


# Tolerance tiers (relative error, against float64 per-example references).
RTOL_FLOAT32 = 1e-5


@pytest.fixture
def tiny_mlp_data():
    """A 2-hidden-layer MLP (L2 on the first layer) with 60 examples, trained a few steps."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(4, 4, 1), name="flatten"),
            keras.layers.Dense(
                12,
                activation="tanh",
                kernel_regularizer=keras.regularizers.l2(1e-3),
                name="fc1",
            ),
            keras.layers.Dense(8, activation="relu", name="fc2"),
            keras.layers.Dense(3, activation="softmax", name="output"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((60, 4, 4, 1), dtype=np.float32)
    y = (x.reshape(60, -1)[:, :3].argmax(1)).astype(np.int64)
    model.fit(x, y, epochs=2, batch_size=20, verbose=0)
    return model, x, y
