"""Per-layer levels from error curves: the allocation, the joint error, prune_once's option."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune.criteria.block import solver_update
from tfstatprune.keras.allocation import curve_grid
from tfstatprune.masking import allocate_by_curves, round_half_up
from tfstatprune.stats import WeightStatistics
from tfstatprune.stats.kronecker import KroneckerFactors

DAMPING = 0.01


def _convex_curve(rng, steps):
    """Errors at counts 0..steps with increasing increments (a convex curve)."""
    increments = np.sort(rng.exponential(size=steps))
    return list(range(steps + 1)), [0.0, *np.cumsum(increments)]


@pytest.mark.parametrize("seed", range(10))
def test_the_allocation_is_the_brute_force_optimum_on_convex_curves(seed):
    rng = np.random.default_rng(seed)
    curves = {name: _convex_curve(rng, int(rng.integers(1, 6))) for name in "abc"}
    most = sum(c[-1] for c, _ in curves.values())
    for total in range(most + 1):
        got = allocate_by_curves(curves, total)
        assert sum(got.values()) == total
        best = min(
            sum(curves[n][1][k] for n, k in zip(curves, combo, strict=True))
            for combo in itertools.product(*(c for c, _ in curves.values()))
            if sum(combo) == total
        )
        cost = sum(curves[n][1][got[n]] for n in curves)
        assert cost == pytest.approx(best, abs=1e-12)


def test_the_allocation_interpolates_between_grid_points_and_skips_what_is_above_the_hull():
    # "a": the point at 2 lies above the chord from 0 to 4, so a's first step is 0 -> 4
    # at slope 1; "b" costs 2 per entry: a is pruned first, in part.
    curves = {"a": ([0, 2, 4], [0.0, 3.0, 4.0]), "b": ([0, 10], [0.0, 20.0])}
    assert allocate_by_curves(curves, 3) == {"a": 3, "b": 0}
    assert allocate_by_curves(curves, 6) == {"a": 4, "b": 2}


def test_the_allocation_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="outside what the curves allow"):
        allocate_by_curves({"a": ([0, 2], [0.0, 1.0])}, 3)
    with pytest.raises(ValueError, match="counts must increase"):
        allocate_by_curves({"a": ([0, 2, 2], [0.0, 1.0, 2.0])}, 1)
    with pytest.raises(ValueError, match="empty"):
        allocate_by_curves({}, 0)
    with pytest.raises(ValueError, match="errors be finite"):
        allocate_by_curves({"a": ([0, 1], [np.inf, np.inf]), "b": ([0, 2], [0.0, 1.0])}, 2)
    with pytest.raises(ValueError, match="total must be an integer"):
        allocate_by_curves({"a": ([0, 2], [0.0, 1.0])}, 1.5)


def test_the_grid_ends_at_the_most_a_unit_may_lose():
    assert curve_grid(10, 7)[-1] == 7 and curve_grid(10, 7)[0] == 0
    grid = curve_grid(1000, 990)
    assert grid == sorted(set(grid)) and grid[-1] == 990 and len(grid) > 15


def _layer(seed=0, n=300, i=9, o=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, i)) @ rng.normal(size=(i, i))
    a = np.hstack([x, np.ones((n, 1))])
    d = rng.normal(size=(n, o))
    factors = KroneckerFactors(n, a.T @ a, d.T @ d, None, has_bias=True)
    stats = WeightStatistics(n, np.zeros((i, o)), np.ones((i, o)), kronecker=factors)
    return rng.normal(size=(i, o)), rng.normal(size=o), stats


@pytest.mark.parametrize("blocked", [False, True])
def test_the_updates_error_is_the_joint_obs_statistic_of_each_unit(blocked):
    """The exact estimator: ``sum_j w_j theta_Pj^T [V_PP]^-1 theta_Pj`` (V = A^-1), the least
    any move with theta_P = 0 costs, by hand per unit. The blocked solver freezes the rows
    before each block, so its move costs more: its error is that move's cost."""
    kernel, bias, stats = _layer()
    factors = stats.kronecker
    a = factors.inputs / factors.count
    a = a + DAMPING * np.mean(np.diag(a)) * np.eye(len(a))
    v = np.linalg.inv(a)
    theta = np.vstack([kernel, bias])
    rng = np.random.default_rng(1)
    keep = np.ones(theta.shape, bool)
    for j in range(theta.shape[1]):
        keep[rng.choice(kernel.shape[0], j + 2, replace=False), j] = False
    weight = rng.uniform(0.5, 2.0, size=theta.shape[1])
    options = dict(block_size=4, exact_flops=0) if blocked else dict(block_size=None)
    update = solver_update(
        kernel,
        bias,
        stats,
        keep,
        choosable=np.zeros(keep.shape, bool),
        damping=DAMPING,
        column_weight=weight,
        **options,
    )
    want = 0.0
    for j in range(theta.shape[1]):
        p = ~keep[:, j]
        want += weight[j] * theta[p, j] @ np.linalg.solve(v[np.ix_(p, p)], theta[p, j])
    np.testing.assert_array_equal(update.keep, keep)
    if not blocked:
        assert update.error == pytest.approx(want, rel=1e-8)
        return
    d = np.vstack([update.kernel, update.bias]) - theta
    cost = sum(weight[j] * d[:, j] @ a @ d[:, j] for j in range(theta.shape[1]))
    assert update.error == pytest.approx(cost, rel=1e-8)
    assert update.error > want * (1 + 1e-6)


def _levels(model):
    return {
        layer.name: float(np.mean(layer.kernel.numpy() == 0))
        for layer in model.layers
        if hasattr(layer, "kernel")
    }


def test_prune_once_with_error_curves_prunes_the_total_at_the_printed_levels(tiny_mlp_data, capsys):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.7, "wald", "global", allocation="error_curves")
    lines = capsys.readouterr().out.splitlines()
    kernels = {layer.name: layer.kernel.numpy() for layer in pruned.layers[1:]}
    total = sum(k.size for k in kernels.values())
    assert sum(int((k == 0).sum()) for k in kernels.values()) == round_half_up(0.7 * total)
    assert (kernels["output"] != 0).sum(axis=0).min() >= 1  # every class keeps a weight
    chosen = next(line for line in lines if "levels from error curves" in line)
    assert chosen.endswith(
        ", ".join(f"{name} {level:.1%}" for name, level in _levels(pruned).items())
    )
    # The layers do not all get the total's level: the curves decide.
    assert len({round(v, 3) for v in _levels(pruned).values()}) > 1
    assert all(np.isfinite(k).all() for k in kernels.values())


def test_error_curves_respect_the_layer_cap(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(
        model,
        (x, y),
        0.6,
        "magnitude",
        "global",
        allocation="error_curves",
        max_layer_sparsity=0.65,
        verbose=0,
    )
    assert max(_levels(pruned).values()) <= 0.65


def test_error_curves_are_refused_where_they_do_not_apply(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    with pytest.raises(ValueError, match="scope='global'"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", allocation="error_curves")
    with pytest.raises(ValueError, match="granularity='weight'"):
        tsp.prune_once(
            model, (x, y), 0.5, "magnitude", "global", granularity="unit", allocation="error_curves"
        )
    with pytest.raises(ValueError, match="allocation must be one of"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", "global", allocation="dp")
    with pytest.raises(TypeError, match="takes no allocation"):
        tsp.prune_statistically(model, (x, y), "magnitude", allocation="error_curves")


def _embedding_model():
    from tfstatprune._keras import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(12, 6, name="embed"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 12, size=(64, 4)).astype("int32")
    return model, (x, (x[:, 0] % 3).astype("int64"))


def test_error_curves_refuse_solver_errors_beside_fallback_scores_of_another_scale():
    model, data = _embedding_model()
    with pytest.raises(ValueError, match=r"not one scale.*\['embed'\]|\['embed'\].*not one scale"):
        tsp.prune_once(model, data, 0.5, "obs", "global", allocation="error_curves", verbose=0)
    pruned = tsp.prune_once(
        model, data, 0.5, "wald", "global", allocation="error_curves", verbose=0
    )
    weights = [pruned.get_layer("embed").embeddings.numpy(), pruned.get_layer("out").kernel.numpy()]
    total = sum(w.size for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round_half_up(0.5 * total)
