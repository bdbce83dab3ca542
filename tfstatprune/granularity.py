"""What a "prunable unit" is: single weights, units, filters, channels or blocks.

A granularity maps every entry of a layer's weight tensors to a group id;
masks are decided per group and expanded back (:func:`expand`). Pure numpy.

- ``"weight"``: every entry is its own group.
- ``"unit"`` / ``"filter"``: the last axis of the kernel -- a Dense output
  neuron (a column of the ``[in, out]`` kernel) or a Conv output channel
  (``kernel[..., k]``) -- together with its bias entry.
- ``"channel"``: the input-channel axis (``kernel[..., c, :]``; for a Dense
  kernel, an input row).
- ``(1, b)`` blocks, ``b`` in {4, 16}: ``b`` consecutive *inputs* of one output,
  the layout of TFLite's sparse ``FULLY_CONNECTED`` (weights stored
  ``[out, in]``, fp32 1x4 and int8 1x16 blocks). In a Keras ``[in, out]`` kernel
  that is ``b`` consecutive rows of one column. Dense kernels only. The
  groups of a kernel whose input dimension is not a multiple of ``b`` end in a
  partial block; penalties (:mod:`tfstatprune.regularizers`) accept it, pruning
  refuses it (:func:`require_whole_blocks`: TFLite drops a partial block).

Example:
    >>> g = group_ids((6, 2), "unit")
    >>> g.ids.tolist(), g.count
    ([[0, 1], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]], 2)
    >>> group_ids((6, 2), (1, 4)).ids[:, 0].tolist()
    [0, 0, 0, 0, 2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Granularity",
    "Grouping",
    "BLOCK_SIZES",
    "STRUCTURED",
    "check_granularity",
    "expand",
    "group_ids",
    "groups_follow_bias",
    "reduce_groups",
    "require_whole_blocks",
]

Granularity = str | tuple[int, int]
NAMED = ("weight", "unit", "filter", "channel")
STRUCTURED = ("unit", "filter", "channel")
BLOCK_SIZES = (4, 16)
_REDUCTIONS = ("sum", "l2")


class Grouping(NamedTuple):
    """Group id of every entry of one tensor (``ids``, int64) and the number of groups."""

    ids: np.ndarray
    count: int


def check_granularity(granularity: object) -> Granularity:
    """Normalise and validate a granularity; raise a ValueError naming the valid ones."""
    if isinstance(granularity, str) and granularity in NAMED:
        return granularity
    if (
        isinstance(granularity, Sequence)
        and not isinstance(granularity, str)
        and len(granularity) == 2
        and tuple(granularity)[0] == 1
        and tuple(granularity)[1] in BLOCK_SIZES
    ):
        return (1, int(tuple(granularity)[1]))
    raise ValueError(
        f"granularity must be one of {list(NAMED)} or a block (1, 4) / (1, 16), got {granularity!r}"
    )


def groups_follow_bias(granularity: Granularity) -> bool:
    """Whether the layer's bias belongs to the groups (units and filters)."""
    return granularity in ("unit", "filter")


def group_ids(shape: Sequence[int], granularity: Granularity, *, bias: bool = False) -> Grouping:
    """Group ids for a tensor of ``shape`` (a kernel, or its bias when ``bias=True``).

    Raises:
      ValueError: a granularity that does not fit the tensor (blocks on a
        non-Dense kernel, units on a rank-1 kernel, channels of a bias, ...).
    """
    granularity = check_granularity(granularity)
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape)) if shape else 1
    if granularity == "weight":
        return Grouping(np.arange(size, dtype=np.int64).reshape(shape), size)
    if bias:
        if not groups_follow_bias(granularity) or len(shape) != 1:
            raise ValueError(f"a bias of shape {shape} has no {granularity!r} groups")
        return Grouping(np.arange(shape[0], dtype=np.int64), shape[0])
    if len(shape) < 2:
        raise ValueError(
            f"granularity {granularity!r} needs a kernel of rank >= 2, got shape {shape}"
        )
    if granularity in ("unit", "filter"):
        out = shape[-1]
        ids = np.broadcast_to(np.arange(out, dtype=np.int64), shape)
        return Grouping(np.ascontiguousarray(ids), out)
    if granularity == "channel":
        cin = shape[-2]
        ids = np.broadcast_to(np.arange(cin, dtype=np.int64)[:, None], shape)
        return Grouping(np.ascontiguousarray(ids), cin)
    block = granularity[1]
    if len(shape) != 2:
        raise ValueError(
            f"block granularity {granularity} applies to Dense kernels [in, out], got shape {shape}"
        )
    rows, cols = shape
    n_blocks = -(-rows // block)
    ids = (np.arange(rows, dtype=np.int64)[:, None] // block) * cols + np.arange(cols)
    return Grouping(ids, n_blocks * cols)


def require_whole_blocks(shape: Sequence[int], granularity: Granularity) -> None:
    """Refuse a ``(1, b)`` block granularity on a kernel with a partial last block.

    The TFLite converter stores a block-sparse ``FULLY_CONNECTED`` weight
    ``[out, in]`` as ``floor(in / b)`` blocks per output and drops the last
    ``in % b`` inputs (measured with TensorFlow 2.21: a 10-input layer in 1x4
    blocks loses inputs 8 and 9), so a pruned layer with a partial block would
    export to a wrong model. Other granularities and kernels pass.

    >>> require_whole_blocks((12, 3), (1, 4))
    >>> require_whole_blocks((10, 3), (1, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: block granularity (1, 4) needs ... got 10 inputs (a partial last block of 2): ...

    Raises:
      ValueError: naming the input dimension and the fixes.
    """
    granularity = check_granularity(granularity)
    if isinstance(granularity, str) or len(shape) != 2:
        return
    rows, block = int(shape[0]), granularity[1]
    if rows % block:
        raise ValueError(
            f"block granularity {granularity} needs an input dimension that is a multiple of "
            f"{block}, got {rows} inputs (a partial last block of {rows % block}): TFLite's "
            "block-sparse format drops a partial block, so the exported model would compute "
            f"wrong outputs. Prune this layer by 'weight' (or by a block size that divides "
            f"{rows}), leave it out with layers=, or give it a multiple of {block} inputs."
        )


def reduce_groups(
    values: Sequence[np.ndarray], groupings: Sequence[Grouping], how: str = "sum"
) -> np.ndarray:
    """Combine per-entry ``values`` of several tensors into one value per group.

    ``how="sum"`` adds the members (a Wald statistic of a group with a diagonal
    covariance, an L1 norm); ``"l2"`` is ``sqrt(sum(value ** 2))`` (a group L2
    norm from per-entry magnitudes).
    """
    if how not in _REDUCTIONS:
        raise ValueError(f"how must be one of {_REDUCTIONS}, got {how!r}")
    count = groupings[0].count
    total = np.zeros(count, np.float64)
    for value, grouping in zip(values, groupings, strict=True):
        if grouping.count != count:
            raise ValueError("all tensors of a group must share one group count")
        v = np.asarray(value, np.float64).reshape(-1)
        total += np.bincount(grouping.ids.reshape(-1), v**2 if how == "l2" else v, count)
    return np.sqrt(total) if how == "l2" else total


def expand(group_mask: np.ndarray, grouping: Grouping) -> np.ndarray:
    """The per-entry mask of a tensor from its groups' mask."""
    return np.asarray(group_mask)[grouping.ids]
