"""The blocked one-shot solver, SparseGPT, OBC and Wanda vs independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.criteria.block import restricted_update
from tfstatprune.criteria.solver import obc_prune, solve_layer
from tfstatprune.stats import WeightStatistics
from tfstatprune.stats.kronecker import KroneckerFactors

DAMPING = 0.01


def _layer(seed=0, n=400, i=12, o=5, bias=True):
    """Correlated inputs, their factors (bias row last) and a kernel/bias."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, i)) @ rng.normal(size=(i, i))
    a = np.hstack([x, np.ones((n, 1))]) if bias else x
    d = rng.normal(size=(n, o))
    factors = KroneckerFactors(n, a.T @ a, d.T @ d, 0.8 * d.T @ d + np.eye(o), has_bias=bias)
    stats = WeightStatistics(n, np.zeros((i, o)), np.ones((i, o)), kronecker=factors)
    return rng.normal(size=(i, o)), rng.normal(size=o) if bias else None, stats


def _damped(a):
    return a + DAMPING * np.mean(np.diag(a)) * np.eye(len(a))


def _lowest(score, count):
    """Bool mask of the ``count`` lowest entries of ``score`` (numpy, for the references)."""
    flat = np.zeros(score.size, bool)
    flat[np.argsort(score, axis=None, kind="stable")[:count]] = True
    return flat.reshape(score.shape)


def _restricted(theta, v, prune):
    """Per column ``theta - V[:, P] V_PP^-1 theta_P`` (the OBS compensation), P zeroed."""
    out = theta.copy()
    for j in range(theta.shape[1]):
        p = prune[:, j]
        if p.any():
            out[:, j] -= v[:, p] @ np.linalg.solve(v[np.ix_(p, p)], theta[p, j])
    return np.where(prune, 0.0, out)


@pytest.mark.parametrize("name", ["wald_block", "obs"])
def test_one_block_is_the_per_unit_restricted_estimator_with_the_same_mask(name):
    kernel, bias, stats = _layer()
    factors = stats.kronecker
    n = factors.count
    a = _damped(factors.inputs / n)
    v = np.linalg.inv(a)
    theta = np.vstack([kernel, bias])
    # the criterion's score by hand: n theta^2 / ([A^-1]_ii M_jj), or OBS theta^2 / 2 [A^-1]_ii
    score = theta**2 / np.diag(v)[:, None]
    if name == "wald_block":
        b_h = _damped(factors.curvature / n)
        m_full = np.linalg.inv(b_h) @ (factors.gradients / n) @ np.linalg.inv(b_h)
        m = np.maximum(np.diag(m_full), 0.2 * np.diag(np.linalg.inv(b_h)))
        score = n * score / m[None, :]
    np.testing.assert_allclose(
        get_criterion(name)(kernel, stats), score[:-1] / (1 if name == "wald_block" else 2)
    )
    kernel_prune = _lowest(score[:-1], 30)  # 30 of 60 kernel entries; the bias row stays
    decided = ~np.vstack([kernel_prune, np.zeros((1, 5), bool)])
    choosable = np.vstack([np.ones_like(kernel, bool), np.zeros((1, 5), bool)])
    expected = _restricted(theta, v, ~decided)
    # a different starting mask with the same count: the solver re-chooses the decided one
    shuffled = np.random.default_rng(1).permutation(decided[:-1].reshape(-1)).reshape(12, 5)
    start = np.vstack([shuffled, np.ones((1, 5), bool)])
    crit = get_criterion(name)
    for keep in (decided, start):
        update = crit.update(
            kernel, bias, stats, keep, choosable=choosable, block_size=13, exact_flops=0
        )
        np.testing.assert_array_equal(update.keep, decided)
        np.testing.assert_allclose(update.kernel, expected[:-1], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(update.bias, expected[-1], rtol=1e-8, atol=1e-10)
    # the per-unit estimator the solver replaced gives the same update on that mask
    old_kernel, old_bias = restricted_update(kernel, bias, factors, decided, damping=DAMPING)
    np.testing.assert_allclose(old_kernel, expected[:-1], rtol=1e-8, atol=1e-10)
    for options in ({"block_size": None}, {}):  # per unit (forced, or cheap enough)
        per_unit = crit.update(kernel, bias, stats, start, choosable=choosable, **options)
        np.testing.assert_array_equal(per_unit.keep, start)  # no choice: the mask as given
        moved = restricted_update(kernel, bias, factors, start, damping=DAMPING)[0]
        np.testing.assert_allclose(per_unit.kernel, moved, rtol=1e-12)


def test_blocks_remove_their_rows_exactly_against_the_rows_after_them():
    # Block b: theta[k:] -= V_b[:, P] V_b[P, P]^-1 theta_P with V_b = inv(A[k:, k:]),
    # the rows before k frozen -- written out with explicit inverses, no Cholesky.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))
    a = _damped(x.T @ x / 300)
    theta = rng.normal(size=(10, 4))
    keep = rng.random((10, 4)) > 0.6
    expected = theta.copy()
    for k in range(0, 10, 3):
        v_b = np.linalg.inv(a[k:, k:])
        prune = np.zeros((10 - k, 4), bool)
        prune[:3] = ~keep[k : k + 3]
        expected[k:] = _restricted(expected[k:], v_b, prune)
    got = solve_layer(theta, a, keep, choosable=np.zeros_like(keep), block_size=3)
    np.testing.assert_array_equal(got.keep, keep)
    np.testing.assert_allclose(got.theta, np.where(keep, expected, 0.0), rtol=1e-8, atol=1e-10)


def _sparsegpt_reference(w, h, sparsity, blocksize, percdamp=0.01):
    """SparseGPT, Algorithm 1 (Frantar & Alistarh 2023) as its reference code writes it.

    ``w``: ``[out, in]``; ``h = X X^T`` over inputs. One deviation: a block
    prunes exactly ``sparsity * numel`` entries (the published ``tmp <= thresh``
    with ``thresh = sort(tmp)[int(numel * sparsity)]`` takes one more).
    """
    w = w.copy()
    columns = w.shape[1]
    h = h + percdamp * np.mean(np.diag(h)) * np.eye(columns)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: hinv^T hinv = H^-1
    mask = np.zeros(w.shape, bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        tmp = w1**2 / np.diag(hinv1)[None, :] ** 2
        count = int(round(tmp.size * sparsity))
        mask1 = _lowest(tmp, count)
        for i in range(i2 - i1):
            col = w1[:, i]
            d = hinv1[i, i]
            q = np.where(mask1[:, i], 0.0, col)
            e = (col - q) / d
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = np.where(mask1, 0.0, w1)
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, mask


def test_sparsegpt_is_the_published_algorithm():
    kernel, _, stats = _layer(seed=7, i=16, o=6, bias=False)
    factors = stats.kronecker
    crit = get_criterion("sparsegpt")
    score = crit(kernel, stats)
    decided = ~_lowest(score, 48)  # half of 96 entries; four blocks of 4 rows x 6 columns
    w, mask = _sparsegpt_reference(kernel.T, factors.inputs, 0.5, 4)
    update = crit.update(
        kernel, None, stats, decided, choosable=np.ones_like(decided), block_size=4
    )
    np.testing.assert_array_equal(~update.keep, mask.T)
    np.testing.assert_allclose(update.kernel, w.T, rtol=1e-8, atol=1e-10)
    assert not np.array_equal(~decided, mask.T)  # the blocks chose other weights


def _obc_reference(theta, a, counts):
    """Greedy OBS per column with the inverse of the free set recomputed at every step."""
    theta = theta.copy()
    keep = np.ones(theta.shape, bool)
    for j, count in enumerate(counts):
        for _ in range(count):
            f = np.nonzero(keep[:, j])[0]
            inv = np.linalg.inv(a[np.ix_(f, f)])
            q = np.argmin(theta[f, j] ** 2 / np.diag(inv))
            theta[f, j] -= theta[f[q], j] / inv[q, q] * inv[:, q]
            theta[f[q], j] = 0.0
            keep[f[q], j] = False
    return theta, keep


def test_obc_is_exact_greedy_obs_per_unit_and_refuses_large_layers():
    kernel, _, stats = _layer(seed=3, i=9, o=4, bias=False)
    crit = get_criterion("obc")
    decided = ~_lowest(crit(kernel, stats), 20)
    counts = (~decided).sum(0)
    update = crit.update(kernel, None, stats, decided, choosable=np.ones_like(decided))
    a = _damped(stats.kronecker.inputs / stats.kronecker.count)
    theta, keep = _obc_reference(kernel, a, counts)
    np.testing.assert_array_equal(update.keep, keep)
    np.testing.assert_allclose(update.kernel, theta, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match=r"layer 'big'.*9 inputs, over max_inputs=8"):
        crit.update(kernel, None, stats, decided, choosable=decided, max_inputs=8, layer="big")


def test_obc_drops_pruned_entries_and_finished_columns_exactly():
    # 40 inputs, columns pruning 3 to 36 weights: the batch sheds finished columns
    # and shrinks to the free entries as it goes; the result is still the greedy
    # OBS of the reference, which inverts the free block afresh at every step.
    rng = np.random.default_rng(7)
    b = rng.normal(size=(40, 25))
    a = b @ b.T / 40 + 0.05 * np.eye(40)
    theta = rng.normal(size=(40, 6))
    counts = np.array([3, 36, 20, 30, 9, 36])
    order = np.argsort(np.abs(theta), axis=0)
    keep = np.ones(theta.shape, bool)
    for j, count in enumerate(counts):
        keep[order[:count, j], j] = False
    got = obc_prune(theta, a, keep)
    want, want_keep = _obc_reference(theta, a, counts)
    np.testing.assert_array_equal(got.keep, want_keep)
    np.testing.assert_allclose(got.theta, want, rtol=1e-7, atol=1e-10)


def _dense_softmax(seed=0, n=60, d=6, k=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.layers.Dense(k, activation="softmax", input_shape=(d,), name="fc")]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, k, n)


def test_wanda_is_magnitude_times_input_norm_by_hand():
    model, x, y = _dense_softmax()
    got = tsp.scores(model, (x, y), "wanda", verbose=0)[model.layers[0].kernel.name]
    norms = np.sqrt(np.sum(x.astype(np.float64) ** 2, 0))
    np.testing.assert_allclose(got, np.abs(model.layers[0].kernel.numpy()) * norms[:, None], 1e-5)
    pruned = tsp.prune_once(model, (x, y), 0.5, "wanda", min_weights_per_class=0, verbose=0)
    kept = pruned.layers[0].kernel.numpy()
    np.testing.assert_array_equal(kept[kept != 0], model.layers[0].kernel.numpy()[kept != 0])


def test_a_layer_over_the_memory_budget_is_refused_by_name():
    model, x, y = _dense_softmax()
    with pytest.raises(MemoryError, match=r"layer 'fc'.*budget of 0 MB.*memory_budget_mb"):
        tsp.prune_once(model, (x, y), 0.5, "wald_block", memory_budget_mb=1e-4, verbose=0)


@pytest.mark.parametrize("name", ["wald_block", "sparsegpt", "obc", "obs"])
def test_one_shot_pruning_keeps_exact_counts_and_every_class(name, tiny_mlp_data):
    model, x, y = tiny_mlp_data
    blocked = {"block_size": 4, "exact_flops": 0}  # the blocked solver, not the per-unit one
    options = {"obc": {}, "sparsegpt": {"block_size": 4}}.get(name, blocked)
    pruned = tsp.prune_once(model, (x, y), 0.9, name, substeps=1, verbose=0, **options)
    for name_ in ("fc1", "fc2", "output"):
        kernel = pruned.get_layer(name_).kernel.numpy()
        if name_ == "output":
            assert np.all((kernel != 0).sum(0) >= 1)
        else:
            assert (kernel == 0).sum() == tsp.masking.round_half_up(0.9 * kernel.size)


def test_block_criteria_fall_back_per_layer_where_there_are_no_factors(capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Embedding(12, 4, input_length=3, name="embed"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="fc"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 12, (40, 3)), rng.integers(0, 3, 40))
    scores = tsp.scores(model, data, "wald_block", verbose=1)
    embed = model.get_layer("embed").embeddings
    expected = tsp.scores(model, data, "wald_diag", hessian="ggn_exact", verbose=0)[embed.name]
    np.testing.assert_allclose(scores[embed.name], expected, rtol=1e-6)
    out = capsys.readouterr().out
    assert "wald_diag for embed" in out and "wald_block for fc" in out
    assert "scored by 'wald_diag', without an update" in out
    pruned = tsp.prune_once(model, data, 0.5, "wald_block", verbose=0)
    table = pruned.get_layer("embed").embeddings.numpy()
    assert (table == 0).sum() == table.size // 2
