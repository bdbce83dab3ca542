"""tflite_export: conversion modes, storage detection, validation, benchmark."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tflite_export as te
import tfstatprune as tsp
from tflite_export import _data
from tflite_export.flatbuffer import Storage
from tflite_export.runtime import RUNTIME_BUILTIN, load, predict
from tfstatprune._keras import keras

# TFLite's 1x4 block for FULLY_CONNECTED weights [out, in] spans 4 consecutive
# inputs, i.e. 4 consecutive rows of the Keras Dense kernel [in, out].
BLOCK = 4
SPARSITY = 0.9
IMAGE = (8, 8, 1)
CLASSES = 4


def _data_set(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1) whose class is the brightest image quadrant: learnable fast."""
    x = np.random.default_rng(seed).random((n, *IMAGE), dtype=np.float32)
    quadrants = x.reshape(n, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(n, CLASSES)
    return x, quadrants.argmax(-1)


def _trained(model: keras.Model, x: np.ndarray, y: np.ndarray) -> keras.Model:
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _data_set()


@pytest.fixture(scope="module")
def mlp(data) -> keras.Model:
    """64 -> 32 -> 16 -> 4: every Dense input width divisible by the block size."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(16, activation="relu", name="fc2"),
            keras.layers.Dense(CLASSES, activation="softmax", name="output"),
        ]
    )
    return _trained(model, *data)


@pytest.fixture(scope="module")
def conv(data) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES, activation="softmax", name="output"),
        ]
    )
    return _trained(model, *data)


def _copy(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _zero_blocks(kernel: np.ndarray, along: str, sparsity: float = SPARSITY) -> np.ndarray:
    """Zero the smallest-L1 blocks of 4 consecutive weights of a Keras kernel [in, out].

    ``along="input"``: blocks ``k[4j:4j+4, o]``, TFLite's 1x4 blocks of the
    transposed [out, in] weight. ``along="output"``: blocks ``k[i, 4j:4j+4]``,
    which TFLite sees as 4x1 blocks, i.e. unstructured.
    """
    k = kernel if along == "input" else kernel.T
    rows, cols = k.shape
    norms = np.abs(k).reshape(rows // BLOCK, BLOCK, cols).sum(1)
    keep = np.repeat(norms > np.quantile(norms, sparsity), BLOCK, axis=0)
    pruned = k * keep
    return pruned if along == "input" else pruned.T


def _zero_random(kernel: np.ndarray, sparsity: float = SPARSITY) -> np.ndarray:
    return kernel * (np.abs(kernel) > np.quantile(np.abs(kernel), sparsity))


def _pruned(model: keras.Model, prune) -> keras.Model:
    pruned = _copy(model)
    for layer in pruned.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(prune(layer.kernel.numpy()))
    return pruned


# --- export modes ---------------------------------------------------------------


@pytest.mark.parametrize("quantize", te.QUANTIZE_MODES)
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_every_mode_round_trips_within_tolerance(request, tmp_path, data, which, quantize):
    model = request.getfixturevalue(which)
    x, _ = data
    path = tmp_path / f"{which}.tflite"
    report = te.export(
        model, path, quantize=quantize, representative_data=x[:100], sample_inputs=x[100:200]
    )

    content = path.read_bytes()
    assert report.size_bytes == len(content)
    assert report.gzip_bytes == len(gzip.compress(content, compresslevel=9))
    check = report.validation
    assert check.passed and check.examples == 100
    assert check.max_abs_diff <= te.TOLERANCES[quantize or "float32"].max_abs
    assert check.decisive > 0 and check.decisive_agreement >= 0.95
    # Independently: the written file, fresh inputs, this test's own loop.
    fresh = _data_set(32, seed=7)[0]
    got = predict(load(content, str(path)).interpreter, fresh)
    expected = model(fresh).numpy()
    np.testing.assert_allclose(got, expected, atol=te.TOLERANCES[quantize or "float32"].max_abs)
    assert {w.dtype for w in report.weights} <= {"float32", "float16", "int8"}
    assert "validation vs Keras: passed" in str(report)


def test_int8_model_has_integer_io_and_quantized_inputs_give_keras_accuracy(tmp_path, mlp, data):
    x, y = data
    path = tmp_path / "int8.tflite"
    te.export(mlp, path, quantize="int8", representative_data=(x, y), verbose=False)
    interpreter = load(path.read_bytes(), str(path)).interpreter
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    keras_accuracy = np.mean(mlp(x).numpy().argmax(-1) == y)
    result = te.benchmark(path, runs=2, warmup=0, data=(x, y), verbose=False)
    assert abs(result[0].accuracy - keras_accuracy) <= 0.03


def test_mode_and_data_errors(tmp_path, mlp):
    with pytest.raises(ValueError, match="quantize must be one of"):
        te.export(mlp, tmp_path / "a.tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative_data"):
        te.export(mlp, tmp_path / "b.tflite", quantize="int8")
    assert not list(tmp_path.iterdir())


def test_validation_failure_writes_nothing_and_says_why(tmp_path, mlp, data):
    path = tmp_path / "strict.tflite"
    with pytest.raises(te.ValidationError, match="not written: the converted model") as caught:
        te.export(mlp, path, quantize="int8", representative_data=data[0], atol=1e-9, verbose=False)
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary file left
    error = caught.value
    assert not error.report.validation.passed and not error.report.written
    assert error.content[4:8] == b"TFL3"  # the rejected bytes, to inspect
    assert "quantization error" in str(error) and "validate=False" not in str(error)


# --- sparse storage: DENSIFY vs native 1x4 kernel --------------------------------


@pytest.mark.parametrize(
    ("which", "prune", "storage", "block"),
    [
        ("mlp", _zero_random, Storage.DENSIFIED, None),
        ("mlp", lambda k: _zero_blocks(k, "input"), Storage.NATIVE, (1, BLOCK)),
        # Same blocks of 4 along the *output* dimension: unstructured for TFLite.
        ("mlp", lambda k: _zero_blocks(k, "output"), Storage.DENSIFIED, None),
        # Convolutions have no sparse kernel whatever the pattern.
        ("conv", _zero_random, Storage.DENSIFIED, None),
    ],
    ids=["random", "1x4-input-blocks", "4-output-blocks", "conv-random"],
)
def test_sparse_storage_detection(request, tmp_path, which, prune, storage, block):
    model = _pruned(request.getfixturevalue(which), prune)
    path = tmp_path / "sparse.tflite"
    report = te.export(model, path, verbose=False)

    assert report.validation.passed
    kernels = [w for w in report.weights if w.size > CLASSES * 4]  # not a tiny output layer
    assert kernels
    for weight in kernels:
        assert weight.storage is storage, weight
        assert weight.block == (block or (1,) * len(weight.shape))  # None: random (CSR)
        # Small layers hold few blocks: the kept fraction is coarse.
        assert weight.sparsity == pytest.approx(SPARSITY, abs=0.03)
        assert weight.stored_values < weight.size
    first_ops = {chain.split(">")[0] for w in kernels for chain in w.consumers}
    assert ("DENSIFY" in first_ops) == (storage is Storage.DENSIFIED)
    assert te.inspect_weights(path) == report.weights


def test_dense_export_stores_weights_dense(tmp_path, mlp):
    report = te.export(mlp, tmp_path / "dense.tflite", sparse=False, verbose=False)
    assert {w.storage for w in report.weights} == {Storage.DENSE}
    assert [w.shape for w in report.weights] == [(32, 64), (16, 32), (CLASSES, 16)]


def test_float16_block_sparse_is_refused_before_writing(tmp_path, mlp):
    model = _pruned(mlp, lambda k: _zero_blocks(k, "input"))
    path = tmp_path / "f16.tflite"
    with pytest.raises(te.ExportError, match="DEQUANTIZE"):
        te.export(model, path, quantize="float16", verbose=False)
    assert not path.exists()
    report = te.export(model, path, quantize="float16", sparse=False, verbose=False)
    assert report.validation.passed


# --- files ---------------------------------------------------------------------------


def test_existing_file_is_not_overwritten(tmp_path, mlp):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        te.export(mlp, path, verbose=False)
    assert path.read_bytes() == b"keep me"
    te.export(mlp, path, overwrite=True, validate=False, verbose=False)
    assert path.read_bytes()[4:8] == b"TFL3"


@pytest.mark.parametrize("wrapper", ["tfmot", "tfstatprune"])
def test_pruning_wrappers_are_stripped(tmp_path, mlp, data, wrapper):
    if wrapper == "tfmot":
        wrapped = tfmot.sparsity.keras.prune_low_magnitude(_copy(mlp))
    else:
        wrapped = tsp.prune_statistically(
            _copy(mlp), data, "magnitude", tsp.OneShotSparsity(SPARSITY)
        )
    report = te.export(wrapped, tmp_path / "wrapped.tflite", verbose=False)
    assert report.stripped and report.validation.passed
    plain = te.export(mlp, tmp_path / "plain.tflite", verbose=False)
    assert not plain.stripped


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"definitely not a flatbuffer", "not a TFLite model"),
        (b"TF", "not a TFLite model"),
        (b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4, "cannot load"),
    ],
    ids=["text", "too-short", "corrupt-with-identifier"],
)
def test_benchmark_names_a_bad_file(tmp_path, content, message):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(te.TFLiteFileError, match=message) as caught:
        te.benchmark([path], runs=1, warmup=0, verbose=False)
    assert str(path) in str(caught.value)


def test_benchmark_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        te.benchmark(tmp_path / "missing.tflite", verbose=False)


def test_truncated_model_is_rejected(tmp_path, mlp):
    path = tmp_path / "model.tflite"
    te.export(mlp, path, validate=False, verbose=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(te.TFLiteFileError, match="model.tflite"):
        te.benchmark(path, runs=1, warmup=0, verbose=False)


# --- benchmark -------------------------------------------------------------------


@pytest.mark.parametrize("xnnpack", [True, False])
def test_benchmark_two_models(tmp_path, mlp, conv, data, xnnpack):
    paths = [tmp_path / "mlp.tflite", tmp_path / "conv.tflite"]
    for model, path in zip([mlp, conv], paths, strict=True):
        te.export(model, path, validate=False, verbose=False)
    x, y = data
    result = te.benchmark(paths, runs=20, warmup=2, xnnpack=xnnpack, data=(x[:50], y[:50]))

    assert len(result) == 2 and result.runs == 20 and result.xnnpack == xnnpack
    for timing, path in zip(result.timings, paths, strict=True):
        assert timing.path == path
        assert 0 < timing.p50_ms <= timing.p90_ms and timing.mean_ms > 0
        assert 0 < timing.gzip_bytes and timing.size_bytes == path.stat().st_size
        assert 0.0 <= timing.accuracy <= 1.0
        assert timing.weight_storage[Storage.DENSE] >= 1
        assert (timing.runtime == RUNTIME_BUILTIN) == (not xnnpack)
    commands = result.android_commands
    assert all("adb push" in c and "benchmark_model" in c for c in commands)
    assert all(f"--use_xnnpack={str(xnnpack).lower()}" in c for c in commands)
    assert "--graph=/data/local/tmp/mlp.tflite" in commands[0]
    text = str(result)
    assert "mlp.tflite" in text and "conv.tflite" in text and "p50 ms" in text


def test_android_command():
    command = te.android_command("out/m.tflite", threads=4, xnnpack=False, runs=50, warmup=5)
    assert command == (
        "adb push out/m.tflite /data/local/tmp/ && adb shell /data/local/tmp/benchmark_model "
        "--graph=/data/local/tmp/m.tflite --num_threads=4 --use_xnnpack=false "
        "--num_runs=50 --warmup_runs=5"
    )


def test_benchmark_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="runs >= 1"):
        te.benchmark(tmp_path / "x.tflite", runs=0)


# --- data forms ------------------------------------------------------------------


def test_data_forms_give_the_same_examples():
    x, y = _data_set(10)
    expected_x, expected_y = _data.labelled_examples((x, y), IMAGE)
    np.testing.assert_array_equal(expected_x, x)
    for form in [
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
    ]:
        got_x, got_y = _data.labelled_examples(form, IMAGE)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    np.testing.assert_array_equal(_data.examples(x, IMAGE, limit=4), x[:4])
    np.testing.assert_array_equal(_data.examples(x[0], IMAGE), x[:1])
    np.testing.assert_array_equal(_data.examples(tf.data.Dataset.from_tensor_slices(x), IMAGE), x)
    with pytest.raises(ValueError, match="rank"):
        _data.examples(x[0, 0], IMAGE)
    np.testing.assert_array_equal(_data.class_labels(np.eye(3)[[2, 0]]), [2, 0])


def test_no_warning_for_float_export(tmp_path, mlp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        te.export(mlp, tmp_path / "m.tflite", verbose=False)
