"""Tests of ``tfstatprune export`` and ``tfstatprune bench`` on tiny models.

The models take 28x28x1 inputs so that ``--data mnist`` fits them; MNIST itself
is replaced by a few random labelled images (the commands' data path is what
is tested, not the data set).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune import cli, datasets
from tfstatprune._keras import keras

FAKE_TEST_IMAGES = 40
SPARSITY = 0.75


def _tiny_model(seed: int = 0, hidden: int = 8) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=datasets.IMAGE_SHAPE),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(hidden, activation="relu", name="fc1"),
            keras.layers.Dense(datasets.NUM_CLASSES, activation="softmax", name="output"),
        ]
    )


def _fake_mnist() -> datasets.MNIST:
    rng = np.random.default_rng(0)
    x = rng.random((FAKE_TEST_IMAGES, *datasets.IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, datasets.NUM_CLASSES, FAKE_TEST_IMAGES)
    return datasets.MNIST(x, y, x, y)


@pytest.fixture
def fake_mnist(monkeypatch):
    """``datasets.mnist()`` returns a few random labelled images."""
    monkeypatch.setattr(datasets, "mnist", lambda *args, **kwargs: _fake_mnist())


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    _tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def wrapped_file(tmp_path_factory) -> Path:
    """A model saved with its pruning wrappers (masks at 75 %) in .h5."""
    model = _tiny_model(seed=1)
    wrapped = tsp.prune_statistically(
        model, criterion="magnitude", pruning_schedule=tsp.OneShotSparsity(SPARSITY)
    )
    rng = np.random.default_rng(1)
    x = rng.random((8, *datasets.IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, datasets.NUM_CLASSES, 8)
    wrapped.compile("sgd", "sparse_categorical_crossentropy")
    wrapped.fit(x, y, epochs=1, batch_size=8, callbacks=tsp.callbacks((x, y)), verbose=0)
    path = tmp_path_factory.mktemp("models") / "wrapped.h5"
    with warnings.catch_warnings():  # .h5 is "legacy": loading it is what is tested
        warnings.simplefilter("ignore", UserWarning)
        wrapped.save(path)
    return path


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory, keras_file) -> list[Path]:
    folder = tmp_path_factory.mktemp("tflite")
    paths = [folder / "a.tflite", folder / "b.tflite"]
    assert cli.main(["export", str(keras_file), str(paths[0])]) == cli.EXIT_OK
    assert cli.main(["export", str(keras_file), str(paths[1]), "--no-sparse"]) == cli.EXIT_OK
    return paths


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


# ---------------------------------------------------------------------- export


def test_export_writes_and_reports(tmp_path, keras_file, capsys):
    out = tmp_path / "tiny.tflite"
    assert cli.main(["export", str(keras_file), str(out)]) == cli.EXIT_OK
    assert out.read_bytes()[4:8] == b"TFL3"
    captured = capsys.readouterr()
    assert "TFLite export tiny.tflite: float32, sparse storage on" in captured.out
    assert "validation vs Keras: passed" in captured.out
    assert "random uniform" in captured.out
    assert f"loading {keras_file}" in captured.err and f"wrote {out}" in captured.err


def test_export_loads_pruning_wrappers_and_strips_them(tmp_path, wrapped_file, capsys):
    out = tmp_path / "wrapped.tflite"
    assert cli.main(["export", str(wrapped_file), str(out)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "pruning wrappers stripped" in text and "validation vs Keras: passed" in text
    assert "75.0%" in text and "sparse" in text.split("75.0%")[1].splitlines()[0]


def test_no_sparse_stores_dense(tmp_path, wrapped_file, capsys):
    out = tmp_path / "dense.tflite"
    assert cli.main(["export", str(wrapped_file), str(out), "--no-sparse"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "sparse storage off" in text
    rows = [line for line in text.splitlines() if "MatMul" in line]
    assert rows and all(line.rstrip().endswith("dense") for line in rows)


def test_int8_with_mnist_data(tmp_path, keras_file, fake_mnist, capsys):
    out = tmp_path / "int8.tflite"
    argv = ["export", str(keras_file), str(out), "--quantize", "int8", "--data", "mnist"]
    assert cli.main(argv) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "int8, sparse storage on" in text and "(sample_inputs)" not in text
    assert f"{min(FAKE_TEST_IMAGES, 128)} examples (representative_data)" in text


def test_int8_without_data_is_a_usage_error(tmp_path, keras_file, capsys):
    out = tmp_path / "int8.tflite"
    assert cli.main(["export", str(keras_file), str(out), "--quantize", "int8"]) == 2
    assert _error_line(capsys) == (
        "tfstatprune export: error: --quantize int8 calibrates the activations on example "
        "inputs; add --data mnist"
    )
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path, keras_file, capsys):
    out = tmp_path / "taken.tflite"
    out.write_bytes(b"keep me")
    assert cli.main(["export", str(keras_file), str(out)]) == cli.EXIT_USAGE
    assert _error_line(capsys).endswith(f"{out} already exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"keep me"
    assert cli.main(["export", str(keras_file), str(out), "--overwrite"]) == cli.EXIT_OK
    assert out.read_bytes()[4:8] == b"TFL3"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.keras", None, "model file not found"),
        ("notes.txt", b"hello", "is not a Keras model file"),
        ("broken.keras", b"not a zip archive", "cannot load"),
    ],
    ids=["missing", "wrong-suffix", "corrupt"],
)
def test_bad_model_file_is_a_usage_error(tmp_path, capsys, name, content, message):
    model = tmp_path / name
    if content is not None:
        model.write_bytes(content)
    out = tmp_path / "out.tflite"
    assert cli.main(["export", str(model), str(out)]) == cli.EXIT_USAGE
    line = _error_line(capsys)
    assert line.startswith("tfstatprune export: error: ") and message in line and name in line
    assert not out.exists()


def test_mnist_data_for_a_model_of_another_shape(tmp_path, fake_mnist, capsys):
    model = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(2)])
    path = tmp_path / "small.keras"
    model.save(path)
    argv = ["export", str(path), str(tmp_path / "small.tflite"), "--data", "mnist"]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "the model takes inputs of shape (5,)" in _error_line(capsys)


# ----------------------------------------------------------------------- bench


def test_bench_table_accuracy_and_android_commands(tflite_files, fake_mnist, capsys):
    argv = ["bench", *map(str, tflite_files), "--runs", "5", "--warmup", "1", "--data", "mnist"]
    assert cli.main(argv) == cli.EXIT_OK
    captured = capsys.readouterr()
    assert "5 interleaved runs after 1 warm-up runs" in captured.out
    assert "accuracy" in captured.out and "a.tflite" in captured.out
    assert captured.out.count("benchmark_model --graph=/data/local/tmp/") == 2
    assert "timing 2 models" in captured.err
    assert f"accuracy on {FAKE_TEST_IMAGES} test images" in captured.err


def test_bench_threads_and_no_xnnpack(tflite_files, capsys):
    argv = ["bench", str(tflite_files[0]), "--runs", "3", "--threads", "2", "--no-xnnpack"]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "2 thread(s)" in out and "XNNPACK off" in out and "accuracy" not in out
    assert "--num_threads=2 --use_xnnpack=false" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"definitely not a flatbuffer", "not a TFLite model")],
    ids=["missing", "not-tflite"],
)
def test_bench_bad_file_is_a_usage_error(tmp_path, tflite_files, capsys, content, message):
    bad = tmp_path / "bad.tflite"
    if content is not None:
        bad.write_bytes(content)
    assert cli.main(["bench", str(tflite_files[0]), str(bad)]) == cli.EXIT_USAGE
    line = _error_line(capsys)
    assert line.startswith("tfstatprune bench: error: ") and message in line
    assert str(bad) in line


@pytest.mark.parametrize(
    "argv",
    [["bench"], ["bench", "a.tflite", "--runs", "0"], ["bench", "a.tflite", "--warmup", "-1"]],
)
def test_bench_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
