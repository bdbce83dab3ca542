"""Export of what users deploy: no wrong file left, recurrent and id inputs, TFLite Micro."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import tflite_export as te
import tfstatprune as tsp
from tflite_export.micro import c_identifier, c_source
from tflite_export.runtime import load, predict
from tfstatprune._keras import keras
from tfstatprune.granularity import group_ids

BLOCK = (1, 4)
#: float32 tier: LiteRT vs Keras on tiny float models.
FLOAT_ATOL = 1e-5


def _ten_six_three(seed: int = 0) -> keras.Model:
    """The 10-6-3 model of the bug report: 10 and 6 inputs, not multiples of 4."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _block_pruned(model: keras.Model, keep: float, seed: int = 0) -> keras.Model:
    """Zero whole (1, 4) blocks of every kernel, the partial last block included, by hand."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        grouping = group_ids(kernel.shape, BLOCK)
        alive = rng.random(grouping.count) < keep
        alive[grouping.ids[-1]] = True  # the partial last block holds weights
        layer.set_weights([kernel * alive[grouping.ids], bias])
    return model


def _inputs(n: int = 32, width: int = 10) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, width)).astype(np.float32)


# --- issue: a failed check leaves no wrong file ----------------------------------------


def test_block_storage_that_drops_a_partial_block_is_refused(tmp_path):
    model = _block_pruned(_ten_six_three(), keep=0.3)
    path = tmp_path / "model.tflite"
    path.write_bytes(b"the good model")
    with pytest.raises(te.ExportError, match=r"cover only the first 8 inputs.*sparse=False"):
        te.export(model, path, overwrite=True, sample_inputs=_inputs(), verbose=False)
    assert path.read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    # The fix the message gives: dense storage, which matches Keras.
    report = te.export(
        model, path, overwrite=True, sparse=False, sample_inputs=_inputs(), verbose=False
    )
    assert report.validation.passed
    got = predict(load(path.read_bytes(), "m").interpreter, _inputs())
    np.testing.assert_allclose(got, model(_inputs()).numpy(), atol=FLOAT_ATOL)


def test_a_partial_block_of_zeros_exports_fine(tmp_path):
    # Blocks stored, but the inputs the converter drops are all zero: the file is right.
    model = _ten_six_three()
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        kernel[kernel.shape[0] - kernel.shape[0] % 4 :] = 0
        kernel[4:8] = 0
        layer.set_weights([kernel, bias])
    report = te.export(model, tmp_path / "m.tflite", sample_inputs=_inputs(), verbose=False)
    assert report.validation.passed and report.count(te.Storage.NATIVE) >= 1


def test_failed_validation_leaves_an_existing_file_byte_for_byte(tmp_path):
    model = _ten_six_three()
    x = _inputs()
    path = tmp_path / "model.tflite"
    te.export(model, path, validate=False, verbose=False)
    before = path.read_bytes()
    other = _ten_six_three(seed=5)  # different weights, so the file would change
    with pytest.raises(te.ValidationError, match="left as it was") as caught:
        te.export(other, path, overwrite=True, quantize="int8", representative_data=x, atol=1e-12,
                  verbose=False)  # fmt: skip
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    assert caught.value.content != before and not caught.value.report.written


@pytest.mark.parametrize("prune", ["prune_once", "prune_statistically"])
def test_partial_blocks_are_refused_when_pruning(prune):
    model = _ten_six_three()
    weights = [w.copy() for w in model.get_weights()]
    x, y = _inputs(), np.arange(32) % 3
    with pytest.raises(ValueError, match=r"layer 'hidden'.*multiple of 4, got 10 inputs"):
        if prune == "prune_once":
            tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity=BLOCK, verbose=0)
        else:
            tsp.prune_statistically(
                model, (x, y), "magnitude", tsp.OneShotSparsity(0.5), granularity=BLOCK
            )
    for got, expected in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, expected)
    # Whole blocks still prune: the same model without its ragged layers.
    tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity="weight", verbose=0)


# --- recurrent models and integer inputs ------------------------------------------------


def _magnitude_pruned(model: keras.Model, sparsity: float) -> keras.Model:
    """Every weight matrix with its smallest ``sparsity`` fraction of entries set to 0."""
    values = []
    for w in model.get_weights():
        if w.ndim == 2:
            w = np.where(np.abs(w) >= np.quantile(np.abs(w), sparsity), w, 0.0)
        values.append(w)
    model.set_weights(values)
    return model


@pytest.mark.parametrize(
    "cell",
    [
        "LSTM",
        pytest.param(
            "GRU",
            marks=pytest.mark.skipif(
                not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
                reason="converting a recurrent model takes 20-70 s here; the LSTM case runs "
                "always, set TFSTATPRUNE_SLOW_TESTS=1 for the GRU",
            ),
        ),
    ],
)
def test_recurrent_models_export_with_a_static_batch(tmp_path, cell):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6, 4)), getattr(keras.layers, cell)(8), keras.layers.Dense(3)]
    )
    x = np.random.default_rng(0).random((12, 6, 4), np.float32)
    pruned = _magnitude_pruned(model, 0.5)  # (recurrent statistics are another issue's)
    path = tmp_path / "rnn.tflite"
    report = te.export(pruned, path, sample_inputs=x, verbose=False)
    assert report.validation.passed and report.static_batch == 1
    # The fused LSTM keeps its state in variable tensors; the GRU becomes a WHILE loop.
    assert report.stateful == (cell == "LSTM")
    # Independent of the exporter's own check: examples in reverse order, each from
    # a fresh state, match Keras.
    interpreter = load(path.read_bytes(), str(path)).interpreter
    np.testing.assert_allclose(
        predict(interpreter, x[::-1]), pruned(x[::-1]).numpy(), atol=FLOAT_ATOL
    )


def test_integer_inputs_keep_their_dtype_in_int8_calibration_and_validation(tmp_path):
    keras.utils.set_random_seed(0)
    vocabulary, length = 40, 7
    model = keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocabulary, 8),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    ids = np.random.default_rng(0).integers(0, vocabulary, (64, length))
    report = te.export(
        model, tmp_path / "text.tflite", quantize="int8", representative_data=ids, verbose=False
    )
    assert report.validation.passed
    (detail,) = load((tmp_path / "text.tflite").read_bytes(), "m").interpreter.get_input_details()
    assert np.dtype(detail["dtype"]) == np.int32
    with pytest.raises(ValueError, match="fractional values"):
        te.export(model, tmp_path / "f.tflite", sample_inputs=ids + 0.5, verbose=False)
    with pytest.raises(ValueError, match="pass sample_inputs"):
        te.export(model, tmp_path / "r.tflite", verbose=False)


# --- TensorFlow Lite for Microcontrollers ----------------------------------------------


def _array_bytes(cc: str, variable: str) -> bytes:
    body = re.search(rf"{variable}\[\] = \{{(.*?)\}};", cc, re.S).group(1)
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))


def test_c_source_holds_the_bytes_and_their_length():
    content = bytes(range(256)) * 3 + b"\x07"
    cc, h = c_source(content, "g_kws_model", "kws_data.h", arena_bytes=1234)
    assert _array_bytes(cc, "g_kws_model") == content
    assert f"g_kws_model_len = {len(content)};" in cc and '#include "kws_data.h"' in cc
    assert "alignas(16)" in cc and "g_kws_model_arena_bytes = 1234;" in cc
    assert "extern const unsigned char g_kws_model[];" in h and "#ifndef KWS_DATA_H_" in h
    assert c_identifier("kws-net 2") == "g_kws_net_2_model"


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_c_array_export_runs_on_tflite_micro(tmp_path, quantize):
    pytest.importorskip("tflite_micro", reason="the `export` extra installs tflite-micro")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    x = np.random.default_rng(0).random((16, 8, 8, 1), np.float32)
    source = tmp_path / "model_data.cc"
    report = te.export(
        model,
        tmp_path / "model.tflite",
        sparse=False,
        quantize=quantize,
        representative_data=x,
        c_array=source,
        verbose=False,
    )
    micro = report.micro
    assert micro.passed and micro.examples == len(x)
    # Activations alone: the first conv's output is 6*6*4 float32 / int8 values.
    activation = 6 * 6 * 4 * (4 if quantize is None else 1)
    assert activation < micro.arena_bytes < 64 * 1024
    cc = source.read_text()
    assert _array_bytes(cc, "g_model_data_model") == (tmp_path / "model.tflite").read_bytes()
    assert f"g_model_data_model_arena_bytes = {micro.arena_bytes};" in cc
    assert (tmp_path / "model_data.h").exists()


def test_tflite_micro_arena_is_the_smallest_that_runs(tmp_path):
    micro_runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from tflite_export.micro import ARENA_STEP, check_micro

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    content = te.convert(model, sparse=False)
    x = np.random.default_rng(0).random((4, 6), np.float32)
    arena = check_micro(content, model, x, FLOAT_ATOL).arena_bytes

    def runs(size: int) -> bool:
        try:
            interpreter = micro_runtime.Interpreter.from_bytes(content, arena_size=size)
            interpreter.set_input(x[:1], 0)
            interpreter.invoke()
        except RuntimeError:
            return False
        return True

    assert runs(arena) and not runs(arena - ARENA_STEP)
