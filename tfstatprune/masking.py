"""Turn importance scores into binary pruning masks.

This module is the only place where scores become masks, and it knows nothing
about what a score means: a score is just a number per weight entry, and a
*higher score means keep*. Magnitudes, Wald statistics, saliencies and random
numbers are all handled the same way. Everything here is plain numpy, so the
rules can be tested (and reused) without TensorFlow.

The contract of :func:`compute_masks`:

* **Exact counts.** In layer scope a weight with ``N`` entries and sparsity
  ``s`` gets exactly ``k = round_half_up(s * N)`` entries pruned, except that at
  least ``min_kept`` entries are always kept. In global scope the total over all
  weights is ``round_half_up(s * N_total)``, and every weight still keeps at
  least ``min_kept`` entries.
* **Monotone.** Entries pruned in ``previous`` stay pruned. They count toward
  the number to prune, and if more are already pruned than requested, exactly
  those stay pruned: a mask never un-prunes. This rule wins over ``min_kept``.
* **Layer cap (global scope).** With ``max_layer_sparsity=c`` no weight of
  ``N_i`` entries has more than :func:`max_pruned_count` ``(N_i, c)`` (the
  largest ``k`` with ``k / N_i <= c``) pruned; the total stays
  ``round_half_up(s * N_total)``, met from the weights below their cap
  (water-filling: one threshold, the weights at their cap drop out). If the caps
  cannot hold that total it is a ValueError naming the numbers. Previously
  pruned entries stay pruned and count toward the cap (a weight already beyond
  it prunes nothing more).
* **Column floors.** ``keep_per_column`` names 2-D scores (kernels ``[in, out]``)
  whose every column (output unit) keeps its ``count`` best-scoring entries; in
  layer scope the floor wins over the exact count (the weight's sparsity is
  capped at ``1 - count / in``); in global scope the protected entries are
  never candidates, and a total the other entries cannot give is a
  ValueError. The protected entries are each column's best live ones in the
  order below. :func:`column_floor` says how many.
* **Deterministic order.** Entries are pruned in this order: previously
  pruned first, then entries no column floor protects, then lowest score, then
  lowest ``tiebreak`` value (when given), then (global scope only) the weight's
  position in ``scores``, then lowest flat index in C order. ``+inf`` and
  ``-inf`` scores are fine; NaN is rejected.

Masks are boolean arrays with ``True`` meaning *keep*, in the same shapes and
the same key order as ``scores``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SCOPES",
    "allocate_by_curves",
    "check_m_by_n",
    "check_max_layer_sparsity",
    "check_sparsity",
    "column_floor",
    "compute_masks",
    "coupled_masks",
    "m_by_n_masks",
    "m_by_n_pattern",
    "mask_sparsity",
    "max_pruned_count",
    "round_half_up",
    "target_pruned_count",
]

#: The valid values of ``compute_masks(..., scope=...)``.
SCOPES: tuple[str, ...] = ("layer", "global")

_HALF = 0.5


def round_half_up(x: float) -> int:
    """Round a non-negative real number to the nearest integer, halves going up.

    Python's :func:`round` rounds halves to even (``round(2.5) == 2``), which
    would make pruned counts jump unevenly as a sparsity grows; this rounds
    ``floor(x + 0.5)`` instead.

    Args:
      x: a finite real number.

    Returns:
      ``floor(x + 0.5)`` as a Python ``int``.

    Raises:
      ValueError: if ``x`` is NaN or infinite.

    >>> round_half_up(2.5), round_half_up(2.49), round_half_up(0.5)
    (3, 2, 1)
    """
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"round_half_up needs a finite number, got {x}.")
    return math.floor(x + _HALF)


def _check_sparsity(value: object, what: str) -> float:
    """Return ``value`` as a float in [0, 1), or raise a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{what} must be a real number in [0, 1), got {value!r} ({type(value).__name__})."
        )
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{what} must be in [0, 1) (the fraction of entries to prune; 1 would "
            f"prune everything), got {value}."
        )
    return value


def check_sparsity(value: object, what: str = "sparsity") -> float:
    """``value`` as a float in [0, 1); a ValueError naming ``what`` otherwise.

    >>> check_sparsity(0.9)
    0.9
    """
    return _check_sparsity(value, what)


def _check_min_kept(min_kept: object) -> int:
    if isinstance(min_kept, bool) or not isinstance(min_kept, numbers.Integral):
        raise ValueError(f"min_kept must be an integer >= 1, got {min_kept!r}.")
    if min_kept < 1:
        raise ValueError(
            f"min_kept must be >= 1 (every weight keeps at least one entry), got {min_kept}."
        )
    return int(min_kept)


def target_pruned_count(size: int, sparsity: float, *, min_kept: int = 1) -> int:
    """Number of entries layer scope prunes from a weight with no previous mask.

    Args:
      size: number of entries of the weight (``N``), ``>= 0``.
      sparsity: fraction to prune, in [0, 1).
      min_kept: entries that are always kept (all of them when ``size < min_kept``).

    Returns:
      ``min(round_half_up(sparsity * size), max(size - min_kept, 0))``.

    Raises:
      ValueError: for a negative ``size``, a sparsity outside [0, 1) or ``min_kept < 1``.

    >>> target_pruned_count(10, 0.25), target_pruned_count(3, 0.9), target_pruned_count(1, 0.9)
    (3, 2, 0)
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}.")
    sparsity = _check_sparsity(sparsity, "sparsity")
    min_kept = _check_min_kept(min_kept)
    return min(round_half_up(sparsity * size), max(int(size) - min_kept, 0))


def check_max_layer_sparsity(value: object, scope: str = "global") -> float | None:
    """``value`` as a float in [0, 1) (None: no cap); a ValueError naming the fix otherwise.

    The cap is a rule of global scope: ``scope="layer"`` already gives every
    weight the sparsity asked, so a cap there is an error rather than ignored.

    >>> check_max_layer_sparsity(0.98), check_max_layer_sparsity(None, "layer")
    (0.98, None)
    """
    if value is None:
        return None
    if scope != "global":
        raise ValueError(
            f"max_layer_sparsity={value!r} caps each layer's share of one global threshold; "
            f"with scope={scope!r} every layer is pruned to the sparsity itself: pass "
            "scope='global', or leave max_layer_sparsity=None"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"max_layer_sparsity must be a real number in [0, 1) or None, got {value!r} "
            f"({type(value).__name__})."
        )
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"max_layer_sparsity must be in [0, 1) (the highest fraction of one weight's "
            f"entries global scope may prune), or None for no cap; got {value}."
        )
    return value


def max_pruned_count(size: int, max_sparsity: float) -> int:
    """The most entries of a weight of ``size`` entries that ``max_sparsity`` allows pruned.

    The largest ``k`` with ``k / size <= max_sparsity`` in floating point (as
    ``zeros / weights`` is computed when the sparsity is reported), so a weight
    is never reported above its cap: ``floor(max_sparsity * size)`` except
    where the product's rounding lands just below an integer (``0.29 * 100``).

    >>> max_pruned_count(100, 0.29), max_pruned_count(3, 0.5), max_pruned_count(0, 0.9)
    (29, 1, 0)
    """
    size = int(size)
    if size <= 0:
        return 0
    k = min(math.floor(max_sparsity * size), size)
    if k < size and (k + 1) / size <= max_sparsity:
        k += 1
    if k > 0 and k / size > max_sparsity:
        k -= 1
    return k


def _as_float_array(name: str, value: object, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(
            f"{what}[{name!r}] must be an array of real numbers, got dtype {arr.dtype}."
        )
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(
            f"{what}[{name!r}] contains NaN; NaN cannot be ranked. Replace or drop "
            "the NaN entries (for example with np.nan_to_num) before computing masks."
        )
    return arr


def _check_names(names: list[str], other: Mapping[str, object], what: str) -> None:
    missing = [n for n in names if n not in other]
    if missing:
        raise ValueError(
            f"{what} has no entry for {missing}; it must have one for every name in scores."
        )
    known = set(names)
    extra = [n for n in other if n not in known]
    if extra:
        raise ValueError(
            f"{what} has names that are not in scores: {extra}; remove them or add their scores."
        )


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if arr.shape != shape:
        raise ValueError(
            f"{what}[{name!r}] has shape {arr.shape} but scores[{name!r}] has shape "
            f"{shape}; they must match entry for entry."
        )


def _previous_pruned(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """Flat bool array, True where the previous mask pruned the entry."""
    arr = np.asarray(value)
    _check_shape(name, arr, shape, "previous")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(
                f"previous[{name!r}] must be a 0/1 or boolean mask, got dtype {arr.dtype}."
            )
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(
                f"previous[{name!r}] must contain only 0 (pruned) and 1 (kept); pass "
                "the mask, not the masked weights."
            )
    return (arr == 0).reshape(-1)


def compute_masks(
    scores: Mapping[str, np.ndarray],
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    previous: Mapping[str, np.ndarray] | None = None,
    tiebreak: Mapping[str, np.ndarray] | None = None,
    min_kept: int = 1,
    keep_per_column: Mapping[str, int] | None = None,
    max_layer_sparsity: float | None = None,
) -> dict[str, np.ndarray]:
    """Prune the lowest-scoring entries of each weight (layer) or of all weights (global).

    Global scope prunes the ``n = round_half_up(s * N)`` lowest-scoring entries
    of all weights together (one threshold), so each weight's sparsity follows
    from the scores rather than being set. With ``max_layer_sparsity=c``,
    weight ``i`` (``N_i`` entries, ``P_i`` of them already pruned) may lose at
    most ``C_i = max(min(K(N_i, c), N_i - min_kept), P_i)`` entries, ``K`` of
    :func:`max_pruned_count` (``floor(c N_i)``): the global prune order is
    walked, each weight losing its entries as they come until it has lost
    ``C_i``, and the walk stops when ``n`` are pruned -- water-filling, one
    threshold for the weights below their cap, ``n_i = min(#{i's entries
    below the threshold}, C_i)`` with ``sum_i n_i = n``. The cap is a floor
    on each weight's density (``>= 1 - c``) while the global ranking decides
    the rest; SPDY (Frantar & Alistarh 2022) and OBC's non-uniform
    compression (Frantar et al. 2022) choose the per-layer levels from
    per-layer error curves instead.

    Args:
      scores: name -> array of importance scores; higher means keep. Any real
        dtype; ``+inf``/``-inf`` allowed, NaN rejected.
      sparsity: fraction of entries to prune, in [0, 1). In layer scope either
        one float for every weight or a mapping with exactly the names of
        ``scores``; in global scope one float for all weights together.
      scope: ``"layer"`` (each weight reaches its own sparsity) or ``"global"``
        (one threshold across all weights).
      previous: optional name -> previous mask (1 or True keep, 0 or False
        pruned), same names and shapes as ``scores``. Pruned entries stay pruned.
      tiebreak: optional name -> secondary key, higher means keep (for example
        ``|theta|``), same names and shapes as ``scores``; orders entries with
        equal scores.
      min_kept: entries every weight keeps (all of them if it has fewer).
        Previously pruned entries stay pruned even if that leaves fewer.
      keep_per_column: optional name -> count: each column of that 2-D
        weight keeps its ``count`` best-scoring entries (names of other
        shapes, or not in ``scores``, are ignored); see the module docstring.
      max_layer_sparsity: global scope only: no weight has more than this
        fraction of its entries pruned (:func:`max_pruned_count`); None (the
        default) is no cap. Previously pruned entries count toward it.

    Returns:
      name -> boolean mask (True = keep), in the shapes and key order of ``scores``.

    Raises:
      ValueError: for an empty ``scores``, a sparsity outside [0, 1), an unknown
        scope, a sparsity mapping in global scope or one with missing or extra
        names, ``previous``/``tiebreak`` with missing or extra names or a
        different shape, a non-0/1 previous mask, NaN in scores or tiebreak,
        ``min_kept < 1``, a ``max_layer_sparsity`` outside [0, 1) or with
        ``scope="layer"``, or caps or column floors that cannot hold the
        global total.

    >>> masks = compute_masks({"w": np.array([0.3, -2.0, 5.0, 0.1])}, 0.5)
    >>> masks["w"].tolist()
    [True, False, True, False]
    >>> masks = compute_masks({"w": np.array([0.3, -2.0, 5.0, 0.1])}, 0.25,
    ...                       previous={"w": np.array([1, 1, 0, 1])})
    >>> masks["w"].tolist()  # the pruned 5.0 stays pruned and fills the quota
    [True, True, False, True]
    >>> compute_masks({"k": np.array([[1.0, 5.0], [2.0, 6.0]])}, 0.5,
    ...               keep_per_column={"k": 1})["k"].tolist()  # each column keeps its best
    [[False, False], [True, True]]
    >>> two = {"a": np.array([0.1, 0.2, 0.3, 0.4]), "b": np.array([1.0, 2.0, 3.0, 4.0])}
    >>> [m.tolist() for m in compute_masks(two, 0.5, scope="global").values()]
    [[False, False, False, True], [False, True, True, True]]
    >>> capped = compute_masks(two, 0.5, scope="global", max_layer_sparsity=0.5)
    >>> [m.tolist() for m in capped.values()]  # "a" stops at 2 of 4; "b" gives the rest
    [[False, False, True, True], [False, False, True, True]]
    """
    if not isinstance(scores, Mapping):
        raise ValueError(f"scores must be a mapping name -> array, got {type(scores).__name__}.")
    if len(scores) == 0:
        raise ValueError("scores is empty; pass at least one weight's scores.")
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; valid scopes are {list(SCOPES)}.")
    min_kept = _check_min_kept(min_kept)
    cap = check_max_layer_sparsity(max_layer_sparsity, scope)
    names = list(scores)

    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise ValueError(
                "Global scope takes one float sparsity for all weights together, got a "
                "mapping; pass a float, or use scope='layer' for per-weight sparsities."
            )
        _check_names(names, sparsity, "sparsity")
        levels = {n: _check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in names}
    else:
        level = _check_sparsity(sparsity, "sparsity")
        levels = dict.fromkeys(names, level)

    if previous is not None:
        _check_names(names, previous, "previous")
    if tiebreak is not None:
        _check_names(names, tiebreak, "tiebreak")
    floors = {
        name: _check_count(count, f"keep_per_column[{name!r}]")
        for name, count in (keep_per_column or {}).items()
        if name in scores and np.ndim(scores[name]) == 2
    }

    flat_scores: list[np.ndarray] = []
    flat_pruned: list[np.ndarray] = []
    flat_ties: list[np.ndarray] = []
    flat_protected: list[np.ndarray] = []
    shapes: list[tuple[int, ...]] = []
    for name in names:
        arr = _as_float_array(name, scores[name], "scores")
        if previous is None:
            pruned = np.zeros(arr.shape, dtype=bool)
        else:
            pruned = _previous_pruned(name, previous[name], arr.shape).reshape(arr.shape)
        if tiebreak is None:
            tie = np.zeros(arr.shape)
        else:
            tie = _as_float_array(name, tiebreak[name], "tiebreak")
            _check_shape(name, tie, arr.shape, "tiebreak")
        protected = np.zeros(arr.shape, dtype=bool)
        if floors.get(name, 0) > 0:
            protected = _protected_entries(arr, pruned, tie, floors[name])
            if scope == "layer":
                levels[name] = min(levels[name], _floor_cap(arr.shape, floors[name]))
        shapes.append(arr.shape)
        flat_scores.append(arr.reshape(-1))
        flat_pruned.append(pruned.reshape(-1))
        flat_protected.append(protected.reshape(-1))
        flat_ties.append(tie.reshape(-1))

    if scope == "layer":
        flat_keep = [
            _layer_keep(s, p, t, f, levels[n], min_kept)
            for n, s, p, t, f in zip(
                names, flat_scores, flat_pruned, flat_ties, flat_protected, strict=True
            )
        ]
    else:
        flat_keep = _global_keep(
            flat_scores, flat_pruned, flat_ties, flat_protected, levels[names[0]], min_kept, cap
        )
    return {
        name: keep.reshape(shape)
        for name, keep, shape in zip(names, flat_keep, shapes, strict=True)
    }


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}.")
    return int(value)


def _protected_entries(
    scores: np.ndarray, pruned: np.ndarray, ties: np.ndarray, count: int
) -> np.ndarray:
    """True at the ``count`` best entries of each column not pruned before.

    Best by score, then by ``ties`` (higher first), then lowest row, the order
    in which :func:`compute_masks` keeps entries. A column with fewer live
    entries protects those.
    """
    rows = scores.shape[0]
    # Previously pruned entries sort last in their column, and are never protected.
    order = np.lexsort((-ties, -scores, pruned), axis=0)  # stable: equal keys keep row order
    protected = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(protected, order[: min(count, rows)], True, axis=0)
    return protected & ~pruned


def _floor_cap(shape: tuple[int, ...], count: int) -> float:
    """The highest sparsity of a ``[rows, cols]`` weight whose columns keep ``count`` each."""
    rows, cols = shape
    return 1.0 - min(count, rows) * cols / (rows * cols)


def column_floor(*, per_class: int, per_unit: int, output: bool) -> int:
    """Entries each output unit (column) of a kernel keeps whatever its scores.

    Every kernel keeps ``per_unit`` per column; an output layer's kernel, whose
    columns are the classes, also at least ``per_class`` (so no class loses all
    its connections). 0 means no floor.

    >>> column_floor(per_class=1, per_unit=0, output=True), column_floor(
    ...     per_class=1, per_unit=0, output=False)
    (1, 0)
    """
    return max(int(per_unit), int(per_class) if output else 0)


def _prune_order(
    scores: np.ndarray, pruned: np.ndarray, ties: np.ndarray, protected: np.ndarray
) -> np.ndarray:
    """Indices from first-to-prune to last-to-prune.

    Keys, most significant first: previously pruned, not protected by a column
    floor, score, tiebreak, index. For concatenated weights the index orders by
    (position of the weight, flat index), as the global scope wants.
    """
    index = np.arange(scores.size)
    # np.lexsort sorts by its last key first; ~pruned puts pruned (False) first, and
    # protected entries (True) come after every unprotected one whatever their scores.
    return np.lexsort((index, ties, scores, protected, ~pruned))


def _layer_keep(
    scores: np.ndarray,
    pruned: np.ndarray,
    ties: np.ndarray,
    protected: np.ndarray,
    sparsity: float,
    min_kept: int,
) -> np.ndarray:
    size = scores.size
    n_prune = max(
        target_pruned_count(size, sparsity, min_kept=min_kept), int(np.count_nonzero(pruned))
    )
    keep = np.ones(size, dtype=bool)
    keep[_prune_order(scores, pruned, ties, protected)[:n_prune]] = False
    return keep


def _global_keep(
    scores: list[np.ndarray],
    pruned: list[np.ndarray],
    ties: list[np.ndarray],
    protected: list[np.ndarray],
    sparsity: float,
    min_kept: int,
    cap: float | None,
) -> list[np.ndarray]:
    sizes = [s.size for s in scores]
    # A weight may lose the first `allowed` entries of its own prune order (which is the
    # global order restricted to it): all but its min_kept best, fewer under a cap, and
    # never fewer than it has already lost (monotonicity wins over min_kept and the cap).
    # Entries a column floor protects (never previously pruned ones) are never candidates.
    eligible, allowed, uncapped, unfloored = [], [], [], []
    for s, p, t, f in zip(scores, pruned, ties, protected, strict=True):
        rank = np.empty(s.size, dtype=np.int64)
        rank[_prune_order(s, p, t, f)] = np.arange(s.size)
        already = int(np.count_nonzero(p))
        open_ = ~f
        limit = max(s.size - min_kept, 0)
        unfloored.append(max(limit, already))
        uncapped.append(int(np.count_nonzero(open_ & (rank < max(limit, already)))))
        if cap is not None:
            limit = min(limit, max_pruned_count(s.size, cap))
        eligible.append(open_ & (rank < max(limit, already)))
        allowed.append(int(np.count_nonzero(eligible[-1])))

    all_pruned = np.concatenate(pruned)
    n_total = all_pruned.size
    asked = max(round_half_up(sparsity * n_total), int(np.count_nonzero(all_pruned)))
    if sum(uncapped) < min(asked, sum(unfloored)):  # the floors, not min_kept, stop it
        raise ValueError(
            f"global sparsity {sparsity} prunes {asked} of the {n_total} entries, but the "
            f"column floors (keep_per_column) leave at most {sum(uncapped)} to prune: lower "
            "the sparsity, or the floors (min_weights_per_class, min_weights_per_unit)."
        )
    wanted = min(asked, sum(uncapped))
    if sum(allowed) < wanted:
        raise ValueError(
            f"global sparsity {sparsity} prunes {wanted} of the {n_total} entries, but with "
            f"max_layer_sparsity={cap} the weights can lose at most {sum(allowed)} "
            f"({sum(allowed) / n_total:.2%}, already pruned entries included): raise "
            "max_layer_sparsity or lower the sparsity."
        )
    order = _prune_order(
        np.concatenate(scores), all_pruned, np.concatenate(ties), np.concatenate(protected)
    )
    candidates = order[np.concatenate(eligible)[order]]
    keep = np.ones(n_total, dtype=bool)
    keep[candidates[:wanted]] = False
    return np.split(keep, np.cumsum(sizes)[:-1])


def check_m_by_n(value: object) -> tuple[int, int]:
    """``(m, n)``, m zeros in every n consecutive weights (tfmot's ``sparsity_m_by_n``).

    Raises:
      ValueError: not two integers with ``0 < m < n``.
    """
    try:
        m, n = (int(v) for v in value)  # type: ignore[union-attr]
        valid = tuple(value) == (m, n) and 0 < m < n  # type: ignore[arg-type]
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"sparsity_m_by_n must be two integers (m, n) with 0 < m < n, m zeros in every n "
            f"consecutive weights, e.g. (2, 4); got {value!r}"
        )
    return m, n


def m_by_n_masks(
    scores: Mapping[str, np.ndarray],
    m_by_n: tuple[int, int],
    *,
    previous: Mapping[str, np.ndarray] | None = None,
    tiebreak: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """N:M masks: in every group of ``n`` consecutive entries keep the ``n - m`` best.

    The layout is tfmot's (``pruning_utils.weights_rearrange``): a kernel
    ``[..., C_in, C_out]`` is read as rows ``[C_out * prod(...), C_in]``, one
    row per output unit and kernel position, cut into groups of ``n``
    consecutive input channels; a row's last group, when shorter (``C_in`` not
    a multiple of ``n``), keeps at most ``n - m``. Within a group the order is
    that of :func:`compute_masks`: previously pruned entries first (they stay
    pruned), then lowest score, then lowest ``tiebreak``, then lowest index.

    Args:
      scores: name -> scores of a tensor of rank >= 2 (higher = keep).
      m_by_n: ``(m, n)``, see :func:`check_m_by_n`.
      previous: optional name -> previous 0/1 mask.
      tiebreak: optional name -> secondary key.

    Returns:
      name -> boolean mask (True = keep).

    Raises:
      ValueError: a bad ``m_by_n``, a tensor of rank < 2, NaN, mismatching
        names or shapes.

    >>> m_by_n_masks({"w": np.array([[4.0, 1.0], [3.0, 2.0], [1.0, 5.0], [2.0, 0.0]])},
    ...              (2, 4))["w"].astype(int).tolist()  # per column: the 2 best of 4
    [[1, 0], [1, 1], [0, 1], [0, 0]]
    """
    m, n = check_m_by_n(m_by_n)
    names = list(scores)
    for other, what in ((previous, "previous"), (tiebreak, "tiebreak")):
        if other is not None:
            _check_names(names, other, what)
    masks = {}
    for name in names:
        arr = _as_float_array(name, scores[name], "scores")
        if arr.ndim < 2:
            raise ValueError(
                f"sparsity_m_by_n groups a kernel's inputs; scores[{name!r}] has shape "
                f"{arr.shape} (a bias?): prune only kernels (prune_bias=False)"
            )
        pruned = np.zeros(arr.size, bool)
        if previous is not None:
            pruned = _previous_pruned(name, previous[name], arr.shape)
        ties = np.zeros(arr.shape)
        if tiebreak is not None:
            ties = _as_float_array(name, tiebreak[name], "tiebreak")
            _check_shape(name, ties, arr.shape, "tiebreak")
        # first to prune first: padding, previously pruned, score, tiebreak, index
        alive = _m_by_n_groups(~pruned, arr.shape, n, -1.0)
        order = np.lexsort(
            (_m_by_n_groups(ties, arr.shape, n), _m_by_n_groups(arr, arr.shape, n), alive),
            axis=-1,
        )
        keep = np.zeros(alive.shape, bool)
        np.put_along_axis(keep, order[..., m:], True, axis=-1)
        keep &= alive > 0
        grid = keep.reshape(keep.shape[0], -1)[:, : arr.shape[-2]]
        moved = grid.reshape(arr.shape[-1], *arr.shape[:-1])
        masks[name] = np.moveaxis(moved, 0, -1)
    return masks


#: The group sizes :func:`m_by_n_pattern` looks for (tfmot's and the hardware's N:M).
PATTERN_GROUPS: tuple[int, ...] = (4, 8)


def m_by_n_pattern(
    kernel: np.ndarray, groups: tuple[int, ...] = PATTERN_GROUPS
) -> tuple[int, int] | None:
    """The N:M pattern of a kernel, ``(m, n)``: at least m zeros in every group of n.

    Groups are those of :func:`m_by_n_masks` (tfmot's layout: n consecutive input
    channels of one output unit and kernel position; a row's short last group counts
    its padding as zeros, as tfmot's ``is_pruned_m_by_n`` does; a group size larger
    than the input channels is not tried, so padding alone is no pattern). Of the group sizes in
    ``groups`` the one with the largest share ``m / n`` wins (the smaller n on a
    tie); None when no group size has ``m >= 1`` in every group, or the kernel has
    rank < 2.

    >>> m_by_n_pattern(np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [4.0, 0.0]]))
    (2, 4)
    >>> m_by_n_pattern(np.ones((4, 2))) is None
    True
    """
    arr = np.asarray(kernel)
    if arr.ndim < 2 or arr.size == 0:
        return None
    best = None
    for n in groups:
        if arr.shape[-2] < n:  # every group padded: padding alone is no pattern
            continue
        zeros = (_m_by_n_groups(arr != 0, arr.shape, n) == 0).sum(axis=-1)
        m = int(zeros.min())  # no more than a full group's real zeros
        if 0 < m < n and (best is None or m / n > best[0] / best[1]):
            best = (m, n)
    return best


def _m_by_n_groups(
    values: np.ndarray, shape: tuple[int, ...], n: int, fill: float = 0.0
) -> np.ndarray:
    """``values`` of a ``[..., C_in, C_out]`` tensor as ``[C_out * prod(...), groups, n]``
    (tfmot's layout: rows of input channels), each row's short last group padded with
    ``fill``."""
    grid = np.moveaxis(np.reshape(values, shape), -1, 0).reshape(-1, shape[-2])
    pad = -grid.shape[1] % n
    grid = np.pad(grid.astype(np.float64), ((0, 0), (0, pad)), constant_values=fill)
    return grid.reshape(grid.shape[0], -1, n)


def mask_sparsity(masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Fraction of pruned (zero / False) entries of each mask.

    Args:
      masks: name -> mask (bool or 0/1 numbers; zero means pruned).

    Returns:
      name -> fraction of entries equal to zero, in the key order of ``masks``
      (0.0 for an empty mask).

    >>> mask_sparsity({"a": np.array([True, False, False, True]), "b": np.ones(3)})
    {'a': 0.5, 'b': 0.0}
    """
    result = {}
    for name, mask in masks.items():
        arr = np.asarray(mask)
        result[name] = float(np.count_nonzero(arr == 0) / arr.size) if arr.size else 0.0
    return result


#: How a coupled group's score follows from its members' scores (see :func:`coupled_masks`).
COMBINE = ("sum", "l2", "mean")

Entry = tuple[str, int]


def coupled_masks(
    scores: Mapping[str, np.ndarray],
    sparsity: float | Mapping[str, float],
    coupled: Sequence[Sequence[Entry]],
    *,
    combine: str = "sum",
    previous: Mapping[str, np.ndarray] | None = None,
    tiebreak: Mapping[str, np.ndarray] | None = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """:func:`compute_masks` with coupled entries kept or pruned together.

    ``coupled`` lists groups of entries ``(name, index)`` of 1-D ``scores``
    (one score per unit or filter) that can only go together: the channels an
    element-wise ``Add`` or ``Multiply`` merges. Each group is ranked as one
    entry whose score is its members' scores combined (``combine``: ``"sum"``,
    the group Wald statistic ``W_G = sum_g W_g`` of blocks with independent
    estimates; ``"l2"``, ``sqrt(sum_g s_g^2)``, a group L2 norm;
    ``"mean"``); its tiebreak is the members' L2 norm, and it counts as
    previously pruned when any member was (no pruned entry comes back). The
    weights a group links are ranked together as one weight (their sparsity
    mapping entries averaged, weighted by size): in layer scope that weight
    reaches the sparsity, counted in entries, a coupled group counting once. ``options`` go to
    :func:`compute_masks`. Every weight keeps at least one entry: a weight whose
    entries are all pruned through its groups gets its best group back.

    Raises:
      ValueError: as :func:`compute_masks`; an entry of ``coupled`` that is not
        an entry of a 1-D score array, or in two groups; an unknown ``combine``.

    Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph: Towards any
    structural pruning") scores coupled channels as one group in the same way.

    >>> s = {"a": np.array([1.0, 5.0, 2.0]), "b": np.array([4.0, 0.5, 3.0])}
    >>> masks = coupled_masks(s, 1 / 3, [[("a", 0), ("b", 0)], [("a", 1), ("b", 1)],
    ...                                  [("a", 2), ("b", 2)]])
    >>> masks["a"].tolist(), masks["b"].tolist()  # sums 5, 5.5, 5: of the tie the first goes
    ([False, True, True], [False, True, True])
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    joint = _Joint(scores, coupled)
    if not joint.clusters:
        return compute_masks(scores, sparsity, previous=previous, tiebreak=tiebreak, **options)
    joint_scores = joint.join(scores, combine)
    joint_previous = None if previous is None else joint.join(previous, "min")
    keep = compute_masks(
        joint_scores,
        joint.levels(sparsity),
        previous=joint_previous,
        tiebreak=None if tiebreak is None else joint.join(tiebreak, "l2"),
        **options,
    )
    return joint.split(keep, joint_scores, joint_previous)


class _Joint:
    """The masking problem with the weights that coupled groups link merged into one.

    A cluster (weights linked by groups) becomes one 1-D weight whose entries are
    its groups, then its members' other entries, member by member.
    """

    def __init__(self, scores: Mapping[str, np.ndarray], coupled: Sequence[Sequence[Entry]]):
        self.names = list(scores)
        self.sizes = {n: int(np.size(scores[n])) for n in self.names}
        owner = {n: n for n in self.names}

        def find(name: str) -> str:
            while owner[name] != name:
                name = owner[name]
            return name

        seen: set[Entry] = set()
        groups = []
        for group in coupled:
            members = [(str(n), int(i)) for n, i in group]
            for entry in members:
                name, index = entry
                if (
                    name not in scores
                    or np.ndim(scores[name]) != 1
                    or not (0 <= index < self.sizes[name])
                ):
                    raise ValueError(f"coupled entry {entry} is no entry of a 1-D score array")
                if entry in seen:
                    raise ValueError(f"coupled entry {entry} is in two groups")
                seen.add(entry)
            if len(members) > 1:
                groups.append(members)
                for name, _ in members[1:]:
                    owner[find(name)] = find(members[0][0])
        linked = {find(n) for g in groups for n, _ in g}
        by_root: dict[str, list[str]] = {}
        for name in self.names:
            if find(name) in linked:
                by_root.setdefault(find(name), []).append(name)
        #: joint name -> the weights it merges
        self.clusters = {" + ".join(m): m for m in by_root.values()}
        self.cluster_of = {n: key for key, members in self.clusters.items() for n in members}
        #: joint name -> its entries, each a list of (name, index)
        self.entries: dict[str, list[list[Entry]]] = {key: [] for key in self.clusters}
        for group in groups:
            self.entries[self.cluster_of[group[0][0]]].append(group)
        for key, members in self.clusters.items():
            for name in members:
                self.entries[key].extend(
                    [(name, i)] for i in range(self.sizes[name]) if (name, i) not in seen
                )

    def join(self, values: Mapping[str, Any], how: str) -> dict[str, Any]:
        """``values`` by joint name: each cluster entry's members combined by ``how``."""
        reduce = {"sum": np.sum, "mean": np.mean, "min": np.min, "l2": np.linalg.norm}[how]
        found: dict[str, Any] = {}
        for name in self.names:
            key = self.cluster_of.get(name)
            if key is None:
                found[name] = values[name]
            elif key not in found:
                flat = {n: np.asarray(values[n], np.float64) for n in self.clusters[key]}
                found[key] = np.array(
                    [
                        reduce([flat[n][i] for n, i in entry]) if len(entry) > 1 else flat[n][i]
                        for entry in self.entries[key]
                        for n, i in entry[:1]
                    ]
                )
        return found

    def levels(self, sparsity: float | Mapping[str, float]) -> float | dict[str, float]:
        """A sparsity mapping by joint name: a cluster's levels averaged by size."""
        if not isinstance(sparsity, Mapping):
            return sparsity
        found: dict[str, float] = {}
        for name in self.names:
            key = self.cluster_of.get(name, name)
            members = self.clusters.get(key, [name])
            found[key] = float(
                np.average([sparsity[n] for n in members], weights=[self.sizes[n] for n in members])
            )
        return found

    def split(
        self,
        keep: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        previous: Mapping[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray]:
        """Joint masks back by name; a member left without an entry gets back its
        best group that was not pruned before."""
        found = {n: np.asarray(keep[n]) for n in self.names if n not in self.cluster_of}
        for key, members in self.clusters.items():
            joint = np.asarray(keep[key], bool).copy()
            allowed = (
                np.ones(joint.size, bool)
                if previous is None
                else np.asarray(previous[key], np.float64) > 0
            )
            for name in members:
                mine = np.array([any(n == name for n, _ in e) for e in self.entries[key]])
                if not joint[mine].any() and (mine & allowed).any():
                    best = np.where(mine & allowed, scores[key], -np.inf)
                    joint[int(np.argmax(best))] = True
                found[name] = np.zeros(self.sizes[name], bool)
            for kept, entry in zip(joint, self.entries[key], strict=True):
                for name, index in entry:
                    found[name][index] = kept
        return {name: found[name] for name in self.names}


def allocate_by_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], total: int
) -> dict[str, int]:
    """Pruned counts per weight, summing to ``total``, from each weight's error curve.

    ``curves[name] = (counts, errors)``: the error of pruning ``counts[k]``
    entries of that weight (increasing counts, the first the least it may
    prune). The allocation minimises ``sum_i e_i(n_i)`` subject to
    ``sum_i n_i = total`` over the lower convex hull of each curve, linear
    between its points: the hull's segments of all weights are taken in order
    of error per pruned entry (slope; equal slopes: the weight's position in
    ``curves``, then its own order), the last one in part. This is the
    Lagrangian solution of the non-uniform allocation that OBC (Frantar et al.
    2022) and SPDY (Frantar & Alistarh 2022) solve by dynamic programming or
    search; with convex curves it is exact at every total of the interpolated
    curves, not only at the grid.

    The allocation is optimal for the curves as given, linear between their
    points; how close that is to the errors between the points depends on the
    grid.

    Raises:
      ValueError: an empty ``curves``, a curve whose counts do not increase
        or whose lengths differ, an error that is not finite, or a ``total``
        that is no integer or outside ``[sum of first counts, sum of last counts]``.

    >>> allocate_by_curves({"a": ([0, 2, 4], [0.0, 1.0, 10.0]), "b": ([0, 4], [0.0, 4.0])}, 5)
    {'a': 2, 'b': 3}
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one weight's (counts, errors).")
    segments = []
    first, last = {}, {}
    for position, (name, (counts, errors)) in enumerate(curves.items()):
        counts = np.asarray(counts, np.int64)
        errors = np.asarray(errors, np.float64)
        if counts.ndim != 1 or counts.shape != errors.shape or counts.size == 0:
            raise ValueError(f"curve {name!r}: counts and errors must be 1-D of one length.")
        if np.any(np.diff(counts) <= 0) or not np.isfinite(errors).all():
            raise ValueError(f"curve {name!r}: counts must increase and errors be finite.")
        first[name], last[name] = int(counts[0]), int(counts[-1])
        hull = _lower_hull(counts, errors)
        for k, (start, end) in enumerate(itertools.pairwise(hull)):
            length = int(counts[end] - counts[start])
            slope = (errors[end] - errors[start]) / length
            segments.append((slope, position, k, name, length))
    total = _check_count(total, "total")
    low, high = sum(first.values()), sum(last.values())
    if not low <= total <= high:
        raise ValueError(
            f"total {total} outside what the curves allow, [{low}, {high}] entries pruned."
        )
    allocation = dict(first)
    remaining = total - low
    for _, _, _, name, length in sorted(segments, key=lambda s: s[:3]):
        if remaining == 0:
            break
        take = min(length, remaining)
        allocation[name] += take
        remaining -= take
    return allocation


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points ``(x, y)``, ``x`` increasing."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord from a to i: not on the lower hull.
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull
