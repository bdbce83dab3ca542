"""The examples the statistics see: what data may be, how it is chunked and checked.

One implementation of the data forms the project accepts, shared by the
statistics collector, the sensitivity regularizer
(:mod:`tfstatprune.keras.sensitivity`) and the TFLite exporter's data adapter
(``tflite_export._data``):

- ``(x, y)`` or ``(x, y, sample_weight)`` tuples of arrays (the weights are
  ignored), or
- a ``tf.data.Dataset`` whose elements are such tuples, batched or single
  examples (an element whose inputs have the model input's rank minus one is
  one example);
- for jobs that read the inputs only (re-estimating BatchNormalization
  statistics), bare inputs too, given placeholder labels by
  :func:`with_placeholder_labels`.

Chunks are ``(x, y)`` pairs of at most a given number of examples; the checks
raise the errors the user sees (``tests/test_bad_inputs.py``) before anything
is traced.

Example:
  >>> import numpy as np
  >>> x, y = np.zeros((5, 3)), np.arange(5)
  >>> [first_dim(c[0]) for c in iter_chunks((x, y), 2, None, input_rank=2)]
  [2, 2, 1]
  >>> split_pair((x, y, np.ones(5)))[1].tolist()
  [0, 1, 2, 3, 4]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats.validation import check_input_dtype

__all__ = [
    "check_input_shape",
    "check_stats_data",
    "example_spec",
    "first_dim",
    "input_rank",
    "is_single_example",
    "iter_chunks",
    "labelled_arrays",
    "split_pair",
    "with_placeholder_labels",
]


def split_pair(element: Any) -> tuple[Any, Any]:
    """``(x, y)`` from an ``(x, y)`` / ``(x, y, w)`` tuple or list, ``(x, None)`` from ``x``."""
    if isinstance(element, tuple | list):
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def with_placeholder_labels(data: Any) -> Any:
    """``data`` in a form :func:`iter_chunks` takes, for jobs that read the inputs only.

    ``(x, y[, w])`` tuples and data sets of such tuples are returned as they are;
    bare inputs -- an array (or a list or dict of arrays, one per model input), or a
    ``tf.data.Dataset`` of inputs -- are paired with zeros, one per example, as labels.

    >>> x, y = with_placeholder_labels(np.ones((3, 2)))
    >>> y.tolist()
    [0.0, 0.0, 0.0]
    """
    if labelled_arrays(data) is not None:
        return data
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple) and len(spec) in (2, 3):
            return data
        return data.map(lambda x: (x, tf.zeros(tf.shape(tf.nest.flatten(x)[0])[:1])))
    return data, np.zeros(first_dim(data))


def labelled_arrays(data: Any) -> tuple[Any, Any] | None:
    """``(x, y)`` when ``data`` is an ``(x, y[, w])`` tuple of arrays, else None."""
    if isinstance(data, tuple) and len(data) in (2, 3) and not isinstance(data, tf.data.Dataset):
        return split_pair(data)
    return None


def is_single_example(rank: int | None, example_rank: int | None) -> bool:
    """True when inputs of ``rank`` are one example of inputs of ``example_rank`` (no batch)."""
    return rank is not None and example_rank is not None and rank == example_rank


def input_rank(model: keras.Model) -> int | None:
    """The rank of the model's (single) input, batch axis included; None for several."""
    return len(model.input_shape) if isinstance(model.input_shape, tuple) else None


def first_dim(structure: Any) -> int:
    """The number of examples of a (nested) batch."""
    return int(tf.nest.flatten(structure)[0].shape[0])


def _slice(structure: Any, start: int, stop: int) -> Any:
    return tf.nest.map_structure(lambda t: t[start:stop], structure)


def _dataset_spec(data: Any) -> Any:
    """The element spec of a ``tf.data.Dataset`` of ``(x, y[, w])``; a clear error otherwise."""
    if not isinstance(data, tf.data.Dataset):
        raise TypeError(
            "stats_data must be a tf.data.Dataset of (x, y) batches or an (x, y) tuple of "
            f"arrays, got {type(data).__name__}"
        )
    spec = data.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        raise ValueError(
            "stats_data must yield (x, y) or (x, y, sample_weight) tuples, got elements "
            f"of structure {spec}"
        )
    return spec


def _single(spec: Any, rank: int | None) -> bool:
    """Whether a data set with element spec ``spec`` yields single examples."""
    return is_single_example(
        tf.nest.flatten(spec[0])[0].shape.rank, None if rank is None else rank - 1
    )


def iter_chunks(
    data: Any, chunk_size: int, max_examples: int | None, input_rank: int | None
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` chunks of at most ``chunk_size`` examples, ``max_examples`` in all.

    ``input_rank``: the model input's rank with the batch axis (see
    :func:`input_rank`), to tell single examples from batches.
    """
    limit = np.inf if max_examples is None else max_examples
    seen = 0
    arrays = labelled_arrays(data)
    if arrays is not None:
        x, y = arrays
        n = first_dim(x)
        if first_dim(y) != n:
            raise ValueError(f"stats_data x has {n} examples but y has {first_dim(y)}")
        for start in range(0, n, chunk_size):
            stop = int(min(start + chunk_size, n, limit))
            if stop <= start:
                return
            yield _slice(x, start, stop), _slice(y, start, stop)
        return
    spec = _dataset_spec(data)
    if _single(spec, input_rank):
        data = data.batch(chunk_size)
    else:
        data = data.unbatch().batch(chunk_size)
    for element in data:
        x, y = split_pair(element)
        n = first_dim(x)
        take = int(min(n, limit - seen))
        if take <= 0:
            return
        if take < n:
            x, y = _slice(x, 0, take), _slice(y, 0, take)
        seen += take
        yield x, y


def check_input_shape(model: keras.Model, x: Any) -> None:
    """Raise a clear error when inputs ``x`` (or their ``TensorSpec``) do not fit ``model``.

    Unknown sizes (None) fit anything.
    """
    expected = getattr(model, "input_shape", None)
    if expected is None or isinstance(expected, list):
        return
    got = tuple(tf.nest.flatten(x)[0].shape)
    expected = tuple(expected)
    if len(got) != len(expected) or any(
        None not in (e, g) and g != e for g, e in zip(got[1:], expected[1:], strict=False)
    ):
        raise ValueError(
            f"stats_data inputs have shape {got} but the model expects {expected} "
            "(None = any size): reshape the data or pass data for this model"
        )


def check_stats_data(model: keras.Model, data: Any) -> None:
    """Raise a clear error now if ``data`` is empty or does not fit ``model``'s input."""
    for x, _ in iter_chunks(data, 1, 1, input_rank(model)):
        check_input_shape(model, x)
        check_input_dtype(model, x)
        return
    raise ValueError("stats_data is empty: pass at least one (x, y) example")


def example_spec(data: Any, input_rank: int | None) -> Any:
    """``TensorSpec``s of the model inputs in ``data``, batch axis ``None``."""
    arrays = labelled_arrays(data)
    if arrays is not None:
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *np.shape(t)[1:]], tf.as_dtype(t.dtype)), arrays[0]
        )
    spec = _dataset_spec(data)
    single = _single(spec, input_rank)
    return tf.nest.map_structure(
        lambda s: tf.TensorSpec([None, *(s.shape if single else s.shape[1:])], s.dtype), spec[0]
    )
