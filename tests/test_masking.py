"""Tests of tfstatprune.masking: exact counts, monotonicity, tie order, scopes, errors."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfstatprune.masking import (
    SCOPES,
    compute_masks,
    mask_sparsity,
    max_pruned_count,
    round_half_up,
    target_pruned_count,
)

FAST = settings(max_examples=60, deadline=None)
MAX_SIDE = 5
MAX_WEIGHTS = 4
MAX_MIN_KEPT = 3

sparsities = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
min_kepts = st.integers(min_value=1, max_value=MAX_MIN_KEPT)
# A few distinct values (with infinities) so that ties in score are common.
tie_heavy = st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0, np.inf])
spread = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=MAX_SIDE)


def _arrays(shape: tuple[int, ...], elements: st.SearchStrategy) -> st.SearchStrategy:
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def score_dicts(draw, elements=None, with_previous=False, with_tiebreak=False):
    """Draw {name: scores} (plus optional previous masks and tiebreaks, same shapes)."""
    n = draw(st.integers(min_value=1, max_value=MAX_WEIGHTS))
    elements = elements if elements is not None else st.one_of(tie_heavy, spread)
    scores, previous, tiebreak = {}, {}, {}
    for i in range(n):
        name = f"w{i}"
        shape = draw(shapes)
        scores[name] = draw(_arrays(shape, elements))
        if with_previous:
            previous[name] = draw(hnp.arrays(np.int8, shape, elements=st.sampled_from([0, 1])))
        if with_tiebreak:
            tiebreak[name] = draw(_arrays(shape, tie_heavy))
    return scores, (previous if with_previous else None), (tiebreak if with_tiebreak else None)


def _n_pruned(mask: np.ndarray) -> int:
    return int(mask.size - np.count_nonzero(mask))


def _brute_force(scores, sparsity, scope, previous, tiebreak, min_kept):
    """Reference masks by sorting Python tuples: independent of the lexsort implementation."""
    names = list(scores)
    entries = []  # (previously pruned first, score, tiebreak, position, flat index)
    for pos, name in enumerate(names):
        flat = np.asarray(scores[name], dtype=float).reshape(-1)
        prev = None if previous is None else np.asarray(previous[name]).reshape(-1)
        tie = None if tiebreak is None else np.asarray(tiebreak[name], dtype=float).reshape(-1)
        for i in range(flat.size):
            was_pruned = prev is not None and prev[i] == 0
            entries.append(
                (0 if was_pruned else 1, flat[i], 0.0 if tie is None else tie[i], pos, i)
            )
    pruned = set()
    if scope == "layer":
        for pos, name in enumerate(names):
            mine = sorted(e for e in entries if e[3] == pos)
            size = len(mine)
            level = sparsity[name] if isinstance(sparsity, dict) else sparsity
            k = min(math.floor(level * size + 0.5), max(size - min_kept, 0))
            k = max(k, sum(1 for e in mine if e[0] == 0))
            pruned.update((e[3], e[4]) for e in mine[:k])
    else:
        protected = set()
        for pos in range(len(names)):
            mine = sorted(e for e in entries if e[3] == pos)
            best = mine[len(mine) - min(min_kept, len(mine)) :]
            protected.update((e[3], e[4]) for e in best if e[0] == 1)
        candidates = [e for e in sorted(entries) if (e[3], e[4]) not in protected]
        n_prev = sum(1 for e in entries if e[0] == 0)
        k = min(max(math.floor(sparsity * len(entries) + 0.5), n_prev), len(candidates))
        pruned.update((e[3], e[4]) for e in candidates[:k])
    masks = {}
    for pos, name in enumerate(names):
        shape = np.shape(scores[name])
        keep = np.ones(int(np.prod(shape, dtype=int)), dtype=bool)
        for p, i in pruned:
            if p == pos:
                keep[i] = False
        masks[name] = keep.reshape(shape)
    return masks


def _assert_same_masks(got, want):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.bool_
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("x", "expected"), [(0.0, 0), (0.49, 0), (0.5, 1), (1.5, 2), (2.5, 3), (7.0, 7)]
)
def test_round_half_up(x, expected):
    assert round_half_up(x) == expected


@pytest.mark.parametrize("x", [math.nan, math.inf])
def test_round_half_up_rejects_non_finite(x):
    with pytest.raises(ValueError, match="finite"):
        round_half_up(x)


@pytest.mark.parametrize(
    ("size", "sparsity", "min_kept", "expected"),
    [
        (10, 0.25, 1, 3),
        (10, 0.0, 1, 0),
        (4, 0.99, 1, 3),
        (4, 0.99, 3, 1),
        (2, 0.5, 3, 0),
        (0, 0.5, 1, 0),
    ],
)
def test_target_pruned_count(size, sparsity, min_kept, expected):
    assert target_pruned_count(size, sparsity, min_kept=min_kept) == expected


def test_mask_sparsity():
    masks = {"a": np.array([[True, False], [False, False]]), "b": np.ones(3), "c": np.zeros(0)}
    assert mask_sparsity(masks) == {"a": 0.75, "b": 0.0, "c": 0.0}


# ---------------------------------------------------------------- layer scope


@FAST
@given(data=score_dicts(), sparsity=sparsities, min_kept=min_kepts)
def test_layer_exact_counts(data, sparsity, min_kept):
    scores, _, _ = data
    masks = compute_masks(scores, sparsity, min_kept=min_kept)
    assert list(masks) == list(scores)
    for name, mask in masks.items():
        size = scores[name].size
        assert mask.shape == scores[name].shape and mask.dtype == np.bool_
        k = min(math.floor(sparsity * size + 0.5), max(size - min_kept, 0))
        assert _n_pruned(mask) == k
        assert np.count_nonzero(mask) >= min(min_kept, size)
        # Every pruned score is <= every kept score.
        if 0 < k < size:
            assert scores[name][~mask].max() <= scores[name][mask].min()


@FAST
@given(data=score_dicts(), levels=st.lists(sparsities, min_size=MAX_WEIGHTS, max_size=MAX_WEIGHTS))
def test_layer_per_name_sparsity(data, levels):
    scores, _, _ = data
    per_name = dict(zip(scores, levels, strict=False))
    masks = compute_masks(scores, per_name)
    for name, mask in masks.items():
        assert _n_pruned(mask) == target_pruned_count(scores[name].size, per_name[name])


@FAST
@given(
    data=score_dicts(with_previous=True, with_tiebreak=True),
    sparsity=sparsities,
    min_kept=min_kepts,
    use_previous=st.booleans(),
    use_tiebreak=st.booleans(),
)
def test_layer_matches_brute_force(data, sparsity, min_kept, use_previous, use_tiebreak):
    scores, previous, tiebreak = data
    previous = previous if use_previous else None
    tiebreak = tiebreak if use_tiebreak else None
    got = compute_masks(scores, sparsity, previous=previous, tiebreak=tiebreak, min_kept=min_kept)
    _assert_same_masks(got, _brute_force(scores, sparsity, "layer", previous, tiebreak, min_kept))


# ---------------------------------------------------------------- monotonicity


@FAST
@given(data=score_dicts(with_previous=True), sparsity=sparsities, scope=st.sampled_from(SCOPES))
def test_previously_pruned_stay_pruned(data, sparsity, scope):
    scores, previous, _ = data
    masks = compute_masks(scores, sparsity, scope=scope, previous=previous)
    for name, mask in masks.items():
        was_pruned = np.asarray(previous[name]) == 0
        assert not mask[was_pruned].any(), name
    if scope == "layer":
        for name, mask in masks.items():
            n_prev = int(np.count_nonzero(previous[name] == 0))
            k = target_pruned_count(scores[name].size, sparsity)
            assert _n_pruned(mask) == max(k, n_prev)
    else:
        n_prev = sum(int(np.count_nonzero(p == 0)) for p in previous.values())
        assert sum(_n_pruned(m) for m in masks.values()) >= n_prev


@pytest.mark.parametrize("scope", SCOPES)
def test_never_unprunes_when_fewer_are_requested(scope):
    scores = {"w": np.arange(10.0)}
    previous = {"w": np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 1])}  # 4 pruned, highest scores
    masks = compute_masks(scores, 0.2, scope=scope, previous=previous)  # asks for 2
    np.testing.assert_array_equal(masks["w"], previous["w"].astype(bool))


@pytest.mark.parametrize("scope", SCOPES)
def test_monotone_wins_over_min_kept(scope):
    masks = compute_masks(
        {"w": np.ones(3)}, 0.0, scope=scope, previous={"w": np.zeros(3)}, min_kept=2
    )
    assert not masks["w"].any()


def test_previous_counts_toward_k_and_goes_first():
    # k = 3; entry 4 (best score) was pruned before, so only the two lowest others follow.
    scores = {"w": np.array([5.0, 1.0, 3.0, 2.0, 9.0, 4.0])}
    masks = compute_masks(scores, 0.5, previous={"w": np.array([1, 1, 1, 1, 0, 1], bool)})
    assert masks["w"].tolist() == [True, False, True, False, False, True]


def test_iterating_masks_is_monotone():
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=7)}
    masks = None
    for level in (0.2, 0.5, 0.7, 0.9):
        new_scores = {k: rng.normal(size=v.shape) for k, v in scores.items()}
        new = compute_masks(new_scores, level, previous=masks)
        if masks is not None:
            for name in new:
                assert not (new[name] & ~masks[name]).any()
        masks = new


# ---------------------------------------------------------------- ties


@FAST
@given(shape=shapes, sparsity=sparsities, value=tie_heavy, scope=st.sampled_from(SCOPES))
def test_equal_scores_prune_lowest_flat_indices(shape, sparsity, value, scope):
    masks = compute_masks({"w": np.full(shape, value)}, sparsity, scope=scope)
    flat = masks["w"].reshape(-1)
    k = target_pruned_count(flat.size, sparsity)
    assert not flat[:k].any() and flat[k:].all()


@FAST
@given(
    tiebreak=hnp.arrays(
        np.float64,
        st.integers(min_value=1, max_value=20),
        elements=st.floats(-100, 100),
        unique=True,
    ),
    sparsity=sparsities,
)
def test_tiebreak_orders_equal_scores(tiebreak, sparsity):
    masks = compute_masks({"w": np.zeros(tiebreak.shape)}, sparsity, tiebreak={"w": tiebreak})
    k = target_pruned_count(tiebreak.size, sparsity)
    expected = np.ones(tiebreak.size, bool)
    expected[np.argsort(tiebreak)[:k]] = False
    np.testing.assert_array_equal(masks["w"], expected)


def test_score_beats_tiebreak_and_ties_fall_back_to_index():
    scores = {"w": np.array([1.0, 0.0, 0.0, 0.0, 0.0])}
    tiebreak = {"w": np.array([-9.0, 3.0, 1.0, 1.0, 2.0])}
    masks = compute_masks(scores, 0.4, tiebreak=tiebreak)  # k = 2
    assert masks["w"].tolist() == [True, True, False, False, True]


def test_infinite_scores():
    scores = {"w": np.array([np.inf, 0.0, -np.inf, 1.0])}
    assert compute_masks(scores, 0.25)["w"].tolist() == [True, True, False, True]
    assert compute_masks(scores, 0.75)["w"].tolist() == [True, False, False, False]


def test_deterministic_and_does_not_modify_inputs():
    rng = np.random.default_rng(1)
    scores = {"a": rng.integers(0, 3, size=(6, 4)).astype(float), "b": np.zeros(5)}
    copies = {k: v.copy() for k, v in scores.items()}
    first = compute_masks(scores, 0.6, scope="global")
    second = compute_masks(scores, 0.6, scope="global")
    _assert_same_masks(first, second)
    for name in scores:
        np.testing.assert_array_equal(scores[name], copies[name])


def test_accepts_integer_scores_and_lists():
    masks = compute_masks({"w": [3, 1, 2, 0]}, 0.5, previous={"w": [True, True, True, True]})
    assert masks["w"].tolist() == [True, False, True, False]


# ---------------------------------------------------------------- global scope


@FAST
@given(data=score_dicts(), sparsity=sparsities, min_kept=min_kepts)
def test_global_exact_total_and_min_kept(data, sparsity, min_kept):
    scores, _, _ = data
    masks = compute_masks(scores, sparsity, scope="global", min_kept=min_kept)
    sizes = [s.size for s in scores.values()]
    prunable = sum(max(n - min_kept, 0) for n in sizes)
    total = sum(_n_pruned(m) for m in masks.values())
    assert total == min(math.floor(sparsity * sum(sizes) + 0.5), prunable)
    for name, mask in masks.items():
        assert np.count_nonzero(mask) >= min(min_kept, scores[name].size)


@FAST
@given(
    data=score_dicts(with_previous=True, with_tiebreak=True),
    sparsity=sparsities,
    min_kept=min_kepts,
    use_previous=st.booleans(),
    use_tiebreak=st.booleans(),
)
def test_global_matches_brute_force(data, sparsity, min_kept, use_previous, use_tiebreak):
    scores, previous, tiebreak = data
    previous = previous if use_previous else None
    tiebreak = tiebreak if use_tiebreak else None
    got = compute_masks(
        scores,
        sparsity,
        scope="global",
        previous=previous,
        tiebreak=tiebreak,
        min_kept=min_kept,
    )
    _assert_same_masks(got, _brute_force(scores, sparsity, "global", previous, tiebreak, min_kept))


@FAST
@given(data=score_dicts(elements=spread), sparsity=sparsities)
def test_global_prunes_lowest_scores_across_weights(data, sparsity):
    scores, _, _ = data
    masks = compute_masks(scores, sparsity, scope="global")
    all_scores = np.concatenate([s.reshape(-1) for s in scores.values()])
    owner = np.concatenate([np.full(s.size, i) for i, s in enumerate(scores.values())])
    # Sort all entries by score (stable: ties by weight position, then flat index); each
    # weight's last entry in that order is its protected best; prune the k first others.
    order = np.argsort(all_scores, kind="stable")
    protected = {int(order[owner[order] == i][-1]) for i in np.unique(owner)}
    candidates = [int(j) for j in order if int(j) not in protected]
    k = min(round_half_up(sparsity * all_scores.size), len(candidates))
    expected = np.ones(all_scores.size, bool)
    expected[candidates[:k]] = False
    all_keep = np.concatenate([m.reshape(-1) for m in masks.values()])
    np.testing.assert_array_equal(all_keep, expected)


@FAST
@given(
    values=hnp.arrays(
        np.float64, st.integers(min_value=1, max_value=12), elements=spread, unique=True
    ),
    n_weights=st.integers(min_value=2, max_value=MAX_WEIGHTS),
    pruned=st.integers(min_value=0, max_value=11),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_global_equals_layer_for_identical_distributions(values, n_weights, pruned, seed):
    size = values.size
    pruned = min(pruned, size - 1)
    sparsity = pruned / size  # s * N is an integer, so both scopes prune `pruned` per weight
    rng = np.random.default_rng(seed)
    scores = {f"w{i}": rng.permutation(values) for i in range(n_weights)}
    _assert_same_masks(
        compute_masks(scores, sparsity, scope="global"), compute_masks(scores, sparsity)
    )


def test_global_differs_from_layer_when_distributions_differ():
    scores = {"small": np.array([0.1, 0.2, 0.3, 0.4]), "large": np.array([5.0, 6.0, 7.0, 8.0])}
    masks = compute_masks(scores, 0.5, scope="global")
    # k = 4 lowest would empty "small"; its best entry is protected, so 5.0 goes instead.
    assert masks["small"].tolist() == [False, False, False, True]
    assert masks["large"].tolist() == [False, True, True, True]


def test_global_protects_min_kept_per_weight():
    scores = {"a": np.array([0.0, 0.1, 0.2]), "b": np.array([5.0, 6.0, 7.0])}
    masks = compute_masks(scores, 0.8, scope="global", min_kept=2)  # asks 5, only 2 prunable
    assert masks["a"].tolist() == [False, True, True]
    assert masks["b"].tolist() == [False, True, True]


def test_global_ties_across_weights_follow_name_order():
    scores = {"b": np.zeros(2), "a": np.zeros(2)}
    masks = compute_masks(scores, 0.25, scope="global")
    assert list(masks) == ["b", "a"]
    assert masks["b"].tolist() == [False, True] and masks["a"].tolist() == [True, True]


def test_weights_smaller_than_min_kept_keep_everything():
    scores = {"tiny": np.array([-5.0]), "empty": np.zeros((0, 3)), "w": np.arange(4.0)}
    for scope in SCOPES:
        masks = compute_masks(scores, 0.5, scope=scope, min_kept=2)
        assert masks["tiny"].tolist() == [True]
        assert masks["empty"].shape == (0, 3)


# ---------------------------------------------------------------- global scope, layer cap

caps = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


class Impossible(Exception):
    """The reference's verdict: the caps cannot hold the global total."""


def _capped_count_by_search(size, cap):
    """The most entries ``k`` of ``size`` with ``k / size <= cap``, by trying every k."""
    return max((k for k in range(size + 1) if size == 0 or k / size <= cap), default=0)


def _water_filling(scores, sparsity, previous, tiebreak, min_kept, cap):
    """Reference masks for global scope with a cap per weight, by water-filling.

    Rank all candidates (previously pruned first, then score, tiebreak, weight
    position, flat index; a weight's min_kept best unpruned entries are no
    candidates) and take the first ones the budget asks for; a weight that takes more
    than its cap is fixed at its cap and leaves the pool, the budget left is shared
    among the rest by the same ranking; repeat until no weight is over its cap.
    """
    names = list(scores)
    own = []  # per weight, its entries from first to last to prune
    for pos, name in enumerate(names):
        flat = np.asarray(scores[name], dtype=float).reshape(-1)
        prev = None if previous is None else np.asarray(previous[name]).reshape(-1)
        tie = None if tiebreak is None else np.asarray(tiebreak[name], dtype=float).reshape(-1)
        own.append(
            sorted(
                (
                    0 if prev is not None and prev[i] == 0 else 1,
                    flat[i],
                    0.0 if tie is None else tie[i],
                    pos,
                    i,
                )
                for i in range(flat.size)
            )
        )
    candidates, limits = [], []
    for entries in own:
        already = sum(1 for e in entries if e[0] == 0)
        best = entries[len(entries) - min(min_kept, len(entries)) :]
        protected = {e for e in best if e[0] == 1}
        candidates.append([e for e in entries if e not in protected])
        limits.append(max(_capped_count_by_search(len(entries), cap), already))
    n_total = sum(len(e) for e in own)
    n_prev = sum(1 for entries in own for e in entries if e[0] == 0)
    budget = min(max(math.floor(sparsity * n_total + 0.5), n_prev), sum(len(c) for c in candidates))
    fixed = {}  # weight position -> entries pruned, at its cap
    while True:
        pool = sorted(e for pos, c in enumerate(candidates) if pos not in fixed for e in c)
        left = budget - sum(fixed.values())
        if left > len(pool):
            raise Impossible
        taken = pool[:left]
        over = {
            pos
            for pos in range(len(names))
            if pos not in fixed and sum(1 for e in taken if e[3] == pos) > limits[pos]
        }
        if not over:
            break
        fixed.update({pos: min(limits[pos], len(candidates[pos])) for pos in over})
    pruned = {(e[3], e[4]) for e in taken}
    for pos, count in fixed.items():
        pruned.update((e[3], e[4]) for e in candidates[pos][:count])
    masks = {}
    for pos, name in enumerate(names):
        shape = np.shape(scores[name])
        keep = np.ones(int(np.prod(shape, dtype=int)), dtype=bool)
        keep[[i for p, i in pruned if p == pos]] = False
        masks[name] = keep.reshape(shape)
    return masks


@settings(max_examples=200, deadline=None)
@given(
    data=score_dicts(with_previous=True, with_tiebreak=True),
    sparsity=sparsities,
    min_kept=min_kepts,
    cap=caps,
    use_previous=st.booleans(),
    use_tiebreak=st.booleans(),
)
def test_global_cap_matches_water_filling(
    data, sparsity, min_kept, cap, use_previous, use_tiebreak
):
    scores, previous, tiebreak = data
    previous = previous if use_previous else None
    tiebreak = tiebreak if use_tiebreak else None
    arguments = dict(
        scope="global",
        previous=previous,
        tiebreak=tiebreak,
        min_kept=min_kept,
        max_layer_sparsity=cap,
    )
    try:
        want = _water_filling(scores, sparsity, previous, tiebreak, min_kept, cap)
    except Impossible:
        with pytest.raises(ValueError, match="max_layer_sparsity"):
            compute_masks(scores, sparsity, **arguments)
        return
    _assert_same_masks(compute_masks(scores, sparsity, **arguments), want)


@FAST
@given(data=score_dicts(with_previous=True), sparsity=sparsities, cap=caps)
def test_global_cap_bounds_every_weight_and_keeps_the_total(data, sparsity, cap):
    scores, previous, _ = data
    try:
        masks = compute_masks(
            scores, sparsity, scope="global", previous=previous, max_layer_sparsity=cap
        )
    except ValueError as error:
        assert "max_layer_sparsity" in str(error)
        return
    uncapped = compute_masks(scores, sparsity, scope="global", previous=previous)
    assert sum(map(_n_pruned, masks.values())) == sum(map(_n_pruned, uncapped.values()))
    for name, level in mask_sparsity(masks).items():
        already = int(np.count_nonzero(previous[name] == 0))
        assert level <= cap or _n_pruned(masks[name]) == already, name
        assert not masks[name][previous[name] == 0].any(), name


@FAST
@given(size=st.integers(min_value=0, max_value=5000), cap=caps)
def test_max_pruned_count_is_the_largest_count_within_the_cap(size, cap):
    assert max_pruned_count(size, cap) == _capped_count_by_search(size, cap)


def test_global_cap_moves_the_rest_of_the_budget_to_the_other_weights():
    scores = {"low": np.array([0.1, 0.2, 0.3, 0.4, 0.5]), "high": np.arange(1.0, 11.0)}
    masks = compute_masks(scores, 0.4, scope="global", max_layer_sparsity=0.6)  # 6 of 15
    assert masks["low"].tolist() == [False, False, False, True, True]  # 3 of 5: its cap
    assert masks["high"].tolist() == [False] * 3 + [True] * 7  # the other 3
    uncapped = compute_masks(scores, 0.4, scope="global")
    assert mask_sparsity(uncapped)["low"] == 0.8  # all but min_kept=1


def test_global_cap_at_a_higher_level_than_the_threshold_needs_changes_nothing():
    rng = np.random.default_rng(3)
    scores = {"a": rng.normal(size=(6, 5)), "b": rng.normal(size=20) + 1.0}
    uncapped = compute_masks(scores, 0.5, scope="global")
    highest = max(mask_sparsity(uncapped).values())
    _assert_same_masks(
        compute_masks(scores, 0.5, scope="global", max_layer_sparsity=highest), uncapped
    )
    below = compute_masks(scores, 0.5, scope="global", max_layer_sparsity=highest - 0.05)
    assert max(mask_sparsity(below).values()) <= highest - 0.05
    assert sum(map(_n_pruned, below.values())) == sum(map(_n_pruned, uncapped.values()))


def test_previously_pruned_beyond_the_cap_stay_pruned_and_count_toward_it():
    scores = {"a": np.array([9.0, 8.0, 7.0, 0.0]), "b": np.arange(4.0)}
    previous = {"a": np.array([0, 0, 0, 1]), "b": np.ones(4)}  # a: 75 % already
    masks = compute_masks(scores, 0.5, scope="global", previous=previous, max_layer_sparsity=0.5)
    assert masks["a"].tolist() == [False, False, False, True]  # nothing more from "a"
    assert masks["b"].tolist() == [False, True, True, True]  # 4 of 8 in all


def test_caps_that_cannot_hold_the_total_name_the_numbers():
    scores = {"a": np.arange(4.0), "b": np.arange(4.0)}
    with pytest.raises(
        ValueError, match=r"0\.9 prunes 6 of the 8 .*max_layer_sparsity=0\.5.* at most 4"
    ):
        compute_masks(scores, 0.9, scope="global", max_layer_sparsity=0.5)


def test_min_kept_not_the_cap_limiting_is_no_error():
    # 3 of 3 asked; min_kept leaves 2 prunable with or without the cap
    masks = compute_masks({"a": np.arange(3.0)}, 0.9, scope="global", max_layer_sparsity=0.95)
    assert masks["a"].tolist() == [False, False, True]


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, math.nan, True, "0.9"])
def test_max_layer_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"max_layer_sparsity.*(\[0, 1\)|None)"):
        compute_masks({"w": np.ones(3)}, 0.5, scope="global", max_layer_sparsity=bad)


def test_max_layer_sparsity_in_layer_scope_names_the_fix():
    with pytest.raises(ValueError, match="scope='global', or leave max_layer_sparsity=None"):
        compute_masks({"w": np.ones(3)}, 0.5, max_layer_sparsity=0.9)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)") as info:
        compute_masks({"w": np.ones(3)}, bad)
    assert str(bad) in str(info.value)


def test_sparsity_out_of_range_in_mapping_names_the_weight():
    with pytest.raises(ValueError, match=r"sparsity\['w'\].*\[0, 1\).*1\.2"):
        compute_masks({"w": np.ones(3)}, {"w": 1.2})


def test_sparsity_not_a_number():
    with pytest.raises(ValueError, match="real number"):
        compute_masks({"w": np.ones(3)}, "0.5")


def test_unknown_scope_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'model'.*'layer', 'global'"):
        compute_masks({"w": np.ones(3)}, 0.5, scope="model")


def test_mapping_with_global_scope():
    with pytest.raises(ValueError, match="one float"):
        compute_masks({"w": np.ones(3)}, {"w": 0.5}, scope="global")


def test_missing_and_extra_names_in_sparsity_mapping():
    with pytest.raises(ValueError, match=r"no entry for \['b'\]"):
        compute_masks({"a": np.ones(3), "b": np.ones(2)}, {"a": 0.5})
    with pytest.raises(ValueError, match=r"not in scores: \['c'\]"):
        compute_masks({"a": np.ones(3)}, {"a": 0.5, "c": 0.1})


@pytest.mark.parametrize("what", ["previous", "tiebreak"])
def test_shape_mismatch(what):
    with pytest.raises(ValueError, match=rf"{what}\['w'\] has shape \(2, 2\).*\(4,\)"):
        compute_masks({"w": np.ones(4)}, 0.5, **{what: {"w": np.ones((2, 2))}})


@pytest.mark.parametrize("what", ["previous", "tiebreak"])
def test_missing_names_in_previous_or_tiebreak(what):
    with pytest.raises(ValueError, match=rf"{what} has no entry for \['b'\]"):
        compute_masks({"a": np.ones(2), "b": np.ones(2)}, 0.5, **{what: {"a": np.ones(2)}})


def test_previous_must_be_a_mask():
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        compute_masks({"w": np.ones(3)}, 0.5, previous={"w": np.array([0.3, 1.0, 0.0])})


@pytest.mark.parametrize("what", ["scores", "tiebreak"])
def test_nan_names_the_weight(what):
    scores = {"ok": np.ones(2), "bad": np.ones(3)}
    kwargs = {}
    if what == "scores":
        scores["bad"] = np.array([1.0, np.nan, 2.0])
    else:
        kwargs["tiebreak"] = {"ok": np.ones(2), "bad": np.array([np.nan, 0.0, 0.0])}
    with pytest.raises(ValueError, match=rf"{what}\['bad'\] contains NaN"):
        compute_masks(scores, 0.5, **kwargs)


def test_non_numeric_scores():
    with pytest.raises(ValueError, match="real numbers"):
        compute_masks({"w": np.array(["a", "b"])}, 0.5)


def test_empty_scores():
    with pytest.raises(ValueError, match="scores is empty"):
        compute_masks({}, 0.5)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_min_kept_must_be_positive_integer(bad):
    with pytest.raises(ValueError, match="min_kept"):
        compute_masks({"w": np.ones(3)}, 0.5, min_kept=bad)
