"""Coupled channels scored and pruned as one group.

Units of several layers that an element-wise merge adds or multiplies together
(the projections of a residual stage and its stem, an expand conv and the
squeeze-excite unit that scales it) can only be removed together. The
references are written out here: a plain ranking of the combined groups
(sorted tuples, no masking code), the criterion's own per-layer scores summed
by hand, and the zero-masked model that ``shrink`` must reproduce.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from test_mobile_structure import inverted_residual

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion, register_criterion
from tfstatprune.criteria.registry import _CRITERIA
from tfstatprune.keras.graph import trace_units
from tfstatprune.masking import compute_masks, coupled_masks, round_half_up
from tfstatprune.schedules import OneShotSparsity

ATOL_EXACT = 1e-5
COMBINE = {
    "sum": sum,
    "l2": lambda v: math.sqrt(sum(x * x for x in v)),
    "mean": lambda v: sum(v) / len(v),
}


def _random_problem(rng: np.random.Generator, sizes=(6, 6, 5)):
    """Scores of three 1-D weights, the first two coupled entry by entry in part."""
    names = [f"w{k}" for k in range(len(sizes))]
    scores = {n: rng.normal(size=s) for n, s in zip(names, sizes, strict=True)}
    pairs = rng.permutation(min(sizes[:2]))[:4]
    partners = rng.permutation(pairs)
    groups = [[("w0", int(i)), ("w1", int(j))] for i, j in zip(pairs, partners, strict=True)]
    return scores, groups


def _reference_keep(scores, groups, sparsity, combine, scope="layer"):
    """Rank the groups (and the other entries) of each cluster as written: one joint
    weight per cluster of linked weights; layer scope prunes the lowest
    round(s * entries) of each, global scope of all."""
    linked = {n for g in groups for n, _ in g}
    grouped = {e for g in groups for e in g}
    problems = {"joint": [list(g) for g in groups]}
    for n in (n for n in scores if n in linked):
        problems["joint"] += [[(n, i)] for i in range(scores[n].size) if (n, i) not in grouped]
    for n in scores:
        if n not in linked:
            problems[n] = [[(n, i)] for i in range(scores[n].size)]

    def value(entry):
        values = [float(scores[n][i]) for n, i in entry]
        return COMBINE[combine](values) if len(values) > 1 else values[0]

    keep = {n: np.ones(scores[n].size, bool) for n in scores}
    left = {key: len(entries) for key, entries in problems.items()}
    if scope == "layer":
        pools = [[(key, e) for e in entries] for key, entries in problems.items()]
    else:
        pools = [[(key, e) for key, entries in problems.items() for e in entries]]
    for pool in pools:
        count = round_half_up(sparsity * len(pool))
        for key, entry in sorted(pool, key=lambda item: value(item[1])):
            if count == 0:
                break
            if left[key] == 1:  # every weight keeps an entry
                continue
            left[key] -= 1
            count -= 1
            for n, i in entry:
                keep[n][i] = False
    return keep


@pytest.mark.parametrize("combine", ["sum", "l2", "mean"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_coupled_masks_rank_the_combined_groups(combine, scope):
    for seed in range(8):
        scores, groups = _random_problem(np.random.default_rng(seed))
        for sparsity in (0.2, 0.5):
            got = coupled_masks(scores, sparsity, groups, combine=combine, scope=scope)
            want = _reference_keep(scores, groups, sparsity, combine, scope)
            for name in scores:
                assert got[name].tolist() == want[name].tolist(), (seed, sparsity, name)


def test_a_group_counts_once_and_its_members_go_together():
    scores = {"a": np.array([3.0, 1.0, 2.0, 4.0]), "b": np.array([0.1, 9.0, 0.2, 0.3])}
    groups = [[("a", i), ("b", i)] for i in range(4)]
    keep = coupled_masks(scores, 0.5, groups)  # sums 3.1, 10, 2.2, 4.3
    assert keep["a"].tolist() == keep["b"].tolist() == [False, True, False, True]


def test_previously_pruned_members_keep_their_group_pruned():
    scores = {"a": np.array([5.0, 1.0, 2.0]), "b": np.array([5.0, 1.0, 2.0])}
    groups = [[("a", i), ("b", i)] for i in range(3)]
    previous = {"a": np.array([0, 1, 1]), "b": np.array([1, 1, 1])}  # a[0] pruned before
    keep = coupled_masks(scores, 1 / 3, groups, previous=previous)
    assert keep["a"].tolist() == keep["b"].tolist() == [False, True, True]


def test_a_weight_left_without_entries_gets_its_best_group_back():
    # b's only entries are in the two weakest groups; a has many strong ones.
    scores = {"a": np.array([0.1, 0.2, 9.0, 9.0, 9.0, 9.0]), "b": np.array([0.3, 0.1])}
    groups = [[("a", 0), ("b", 0)], [("a", 1), ("b", 1)]]
    keep = coupled_masks(scores, 0.4, groups)
    assert keep["b"].tolist() == [True, False]  # group 0 (0.4) beats group 1 (0.3)
    assert keep["a"].tolist() == [True, False, True, True, True, True]


def test_coupled_entries_are_checked():
    scores = {"a": np.zeros(3), "k": np.zeros((2, 2))}
    with pytest.raises(ValueError, match=r"\('a', 5\) is no entry"):
        coupled_masks(scores, 0.5, [[("a", 0), ("a", 5)]])
    with pytest.raises(ValueError, match=r"\('k', 0\) is no entry of a 1-D"):
        coupled_masks(scores, 0.5, [[("a", 0), ("k", 0)]])
    with pytest.raises(ValueError, match="in two groups"):
        coupled_masks(scores, 0.5, [[("a", 0), ("a", 1)], [("a", 1), ("a", 2)]])
    with pytest.raises(ValueError, match="combine must be one of"):
        coupled_masks(scores, 0.5, [], combine="max")


def test_without_groups_it_is_compute_masks():
    scores, _ = _random_problem(np.random.default_rng(3))
    plain = compute_masks(scores, 0.5)
    got = coupled_masks(scores, 0.5, [])
    assert all(got[n].tolist() == plain[n].tolist() for n in scores)


def test_criteria_say_how_coupled_scores_combine():
    assert get_criterion("wald").coupled == "sum"
    assert get_criterion("wald_diag").coupled == "sum"
    assert get_criterion("magnitude").coupled == "l2"
    assert get_criterion("l1_norm").coupled == "sum"
    assert get_criterion("apoz").coupled == "mean"
    with pytest.raises(ValueError, match="combine must be None or one of"):
        register_criterion("_bad_combine", statistics=None, combine="max")
    assert "_bad_combine" not in _CRITERIA


# ----------------------------------------------------------------------------- models


def resnet(width: int = 8) -> keras.Model:
    """A stem and two residual blocks: stem, b0b and b1b are coupled by the Adds."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for b in range(2):
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"b{b}a")(x)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"b{b}b")(y)
        y = keras.layers.BatchNormalization()(y)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n: int = 48, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 4, n)


def _dead_filters(model: keras.Model, name: str) -> list[int]:
    kernel = model.get_layer(name).kernel.numpy()
    return np.flatnonzero(~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)).tolist()


def test_the_channel_graph_couples_residual_and_squeeze_excite_units():
    coupled = trace_units(inverted_residual()).channels.coupled_units()
    layers = sorted({tuple(sorted({n for n, _ in group})) for group in coupled})
    assert layers == [("expand", "se_expand"), ("project", "stem")]
    assert sum(1 for g in coupled if g[0][0] in ("expand", "se_expand")) == 24
    assert all(len({i for _, i in group}) == 1 for group in coupled)  # channel j with j


@pytest.mark.parametrize("criterion", ["magnitude", "wald_diag"])
def test_prune_once_prunes_coupled_filters_together_and_shrink_removes_them(criterion):
    model, data = resnet(), _data()
    pruned = tsp.prune_once(model, data, 0.5, criterion, granularity="filter", verbose=0)
    dead = {n: _dead_filters(pruned, n) for n in ("stem", "b0b", "b1b")}
    assert dead["stem"] == dead["b0b"] == dead["b1b"]
    assert len(dead["stem"]) == 4  # half of the stage's 8 coupled channels
    result = tsp.shrink(pruned)
    assert result.removed["stem"] == (4, 8) and result.removed["b1b"] == (4, 8)
    assert result.removed["b0a"] == (4, 8)
    x = data[0]
    assert float(np.abs(pruned(x) - result.model(x)).max()) <= ATOL_EXACT


def test_a_coupled_group_scores_the_sum_of_its_units_wald_statistics():
    model, data = resnet(), _data()
    pruned = tsp.prune_once(model, data, 0.5, "wald_diag", granularity="filter", verbose=0)
    per_layer = tsp.scores(model, data, "wald_diag", granularity="filter", verbose=0)

    def unit_scores(name: str) -> np.ndarray:
        found = [v for k, v in per_layer.items() if k.startswith(f"{name}/kernel")][0]
        return found.reshape(-1, found.shape[-1])[0]  # every entry carries its unit's

    summed = sum(unit_scores(n) for n in ("stem", "b0b", "b1b"))
    weakest = sorted(np.argsort(summed, kind="stable")[:4].tolist())
    assert _dead_filters(pruned, "stem") == weakest


def test_fit_with_the_callbacks_prunes_coupled_filters_together(monkeypatch):
    traced = []

    def counting(model):
        traced.append(model.name)
        return trace_units(model)

    for module in ("tfstatprune.keras.callbacks", "tfstatprune.keras.consistency"):
        monkeypatch.setattr(importlib.import_module(module), "trace_units", counting)
    model, (x, y) = resnet(), _data()
    wrapped = tsp.prune_statistically(
        model, (x, y), "magnitude", OneShotSparsity(0.5), granularity="filter"
    )
    wrapped.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    wrapped.fit(x, y, epochs=1, batch_size=48, callbacks=tsp.callbacks(verbose=0), verbose=0)
    stripped = tsp.strip_pruning(wrapped)
    dead = {n: _dead_filters(stripped, n) for n in ("stem", "b0b", "b1b")}
    assert dead["stem"] == dead["b0b"] == dead["b1b"] and len(dead["stem"]) == 4
    assert tsp.shrink(stripped).removed["stem"] == (4, 8)
    assert len(traced) == 1  # one pruning step: the channel graph is traced once


def test_an_expand_filter_goes_with_its_squeeze_excite_unit():
    model = inverted_residual()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).uniform(0, 255, (32, 12, 12, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 32)
    pruned = tsp.prune_once(model, (x, y), 0.5, "wald_diag", granularity="filter", verbose=0)
    assert _dead_filters(pruned, "expand") == _dead_filters(pruned, "se_expand")
    assert len(_dead_filters(pruned, "expand")) == 12
    result = tsp.shrink(pruned)
    assert result.removed["expand"] == (12, 24)
    assert result.model.get_layer("dw").depthwise_kernel.shape[2] == 12
    assert float(np.abs(pruned(x) - result.model(x)).max()) <= ATOL_EXACT
