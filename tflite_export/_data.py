"""Turn user data (arrays, ``(x, y)`` pairs, ``tf.data``) into example arrays.

The data forms and how single examples are told from batches are the
statistics' (:mod:`tfstatprune.stats.data`); here ``x`` alone is allowed too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune.stats.data import is_single_example, split_pair

__all__ = ["examples", "labelled_examples"]


def _batches(data: Any, example_rank: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Batches of ``(x, y)`` numpy arrays, whether ``data`` is batched or not."""
    if isinstance(data, tf.data.Dataset):
        elements = data.as_numpy_iterator()
    else:
        elements = iter([data])
    for element in elements:
        x, y = split_pair(element)
        if isinstance(x, dict):
            raise TypeError("inputs given as a dict are not supported; pass arrays")
        x = np.asarray(x)
        y = None if y is None else np.asarray(y)
        if is_single_example(x.ndim, example_rank):
            x = x[None]
            y = None if y is None else y[None]
        elif x.ndim != example_rank + 1:
            raise ValueError(
                f"expected inputs of rank {example_rank} (one example) or "
                f"{example_rank + 1} (a batch), got shape {x.shape}"
            )
        yield x, y


def labelled_examples(
    data: Any,
    example_shape: Sequence[int | None],
    limit: int | None = None,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``limit`` examples ``x`` (and labels ``y`` when given) as arrays.

    Args:
      data: an array ``x``; a pair ``(x, y)``; or a ``tf.data.Dataset`` of ``x``
        or ``(x, y)``, batched or not.
      example_shape: the shape of one example (the model input without batch).
      limit: the maximum number of examples (all when None).
      dtype: the dtype of ``x``: the model input's (float32; int32 token ids
        for an ``Embedding``). Integer inputs must hold whole numbers.

    Returns:
      ``(x, y)``: ``x`` of ``dtype``, ``(n, *example_shape)``; ``y`` labels or None.

    Raises:
      ValueError: no examples, a wrong rank, or fractional values for an
        integer input.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    count = 0
    for x, y in _batches(data, len(example_shape)):
        if limit is not None:
            x, y = x[: limit - count], None if y is None else y[: limit - count]
        xs.append(x)
        if y is not None:
            ys.append(y)
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not xs or count == 0:
        raise ValueError("the data holds no examples")
    x = np.concatenate(xs)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and not np.array_equal(x, np.round(x)):
        raise ValueError(
            f"the model takes {dtype} inputs (ids, e.g. for an Embedding) but the data holds "
            "fractional values; pass the integer inputs the model is trained on"
        )
    y = np.concatenate(ys) if len(ys) == len(xs) else None
    return x.astype(dtype, copy=False), y


def examples(
    data: Any,
    example_shape: Sequence[int | None],
    limit: int | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Like :func:`labelled_examples`, the inputs only."""
    return labelled_examples(data, example_shape, limit, dtype)[0]


def class_labels(y: np.ndarray) -> np.ndarray:
    """Integer class labels from integer labels or one-hot / probability rows."""
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] > 1:
        return y.argmax(-1)
    return y.reshape(len(y)).astype(np.int64)
