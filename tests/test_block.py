"""Block Wald, layer-wise OBS and the restricted estimator vs dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RTOL_FLOAT32
from reference import float64_copy, relative_error

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion, obs, wald_block
from tfstatprune.criteria.block import restricted_update
from tfstatprune.stats import WeightStatistics, collect_statistics
from tfstatprune.stats.kronecker import KroneckerFactors


def _softmax_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.layers.Dense(6, activation="tanh", input_shape=(5,), name="hidden"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    y = rng.integers(0, 4, 80)
    return model, x, y


def test_kronecker_factors_match_float64_matrices():
    model, x, y = _softmax_mlp()
    got = collect_statistics(
        model, (x, y), hessian="ggn_exact", kronecker=True, batch_size=32, verbose=0
    )
    m64 = float64_copy(model)
    hidden = np.tanh(
        x.astype(np.float64) @ m64.layers[0].kernel.numpy() + m64.layers[0].bias.numpy()
    )
    a = np.hstack([hidden, np.ones((80, 1))])
    p = m64(x.astype(np.float64)).numpy()
    delta = p - np.eye(4)[y]  # softmax + cross-entropy: dL/dz = p - e_y
    ggn = sum(np.diag(pi) - np.outer(pi, pi) for pi in p)
    factors = got.weights[model.layers[1].kernel.name].kronecker
    assert factors.count == 80 and factors.has_bias
    assert relative_error(factors.inputs, a.T @ a) < RTOL_FLOAT32
    assert relative_error(factors.gradients, delta.T @ delta) < RTOL_FLOAT32
    assert relative_error(factors.curvature, ggn) < RTOL_FLOAT32


def test_block_scores_equal_the_explicit_kronecker_sandwich():
    rng = np.random.default_rng(2)
    n, i, o = 50, 4, 3
    a = rng.normal(size=(n, i))
    d = rng.normal(size=(n, o))
    dh = rng.normal(size=(n, o))
    factors = KroneckerFactors(n, a.T @ a, d.T @ d, dh.T @ dh, has_bias=False)
    stats = WeightStatistics(n, np.zeros((i, o)), np.ones((i, o)), kronecker=factors)
    theta = rng.normal(size=(i, o))
    # H = A (x) B_H and Sigma = A (x) B_S, with vec() running over (row i, column j).
    h = np.kron(a.T @ a / n, dh.T @ dh / n)
    sigma = np.kron(a.T @ a / n, d.T @ d / n)
    avar = np.linalg.inv(h) @ sigma @ np.linalg.inv(h)
    expected = n * theta.reshape(-1) ** 2 / np.diag(avar)
    got = wald_block(theta, stats, damping=0.0, variance_floor=0.0)
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-9)
    # OBS: theta^2 / (2 [A^-1]_ii) per unit.
    expected_obs = theta**2 / (2 * np.diag(np.linalg.inv(a.T @ a / n)))[:, None]
    np.testing.assert_allclose(obs(theta, stats, damping=0.0), expected_obs, rtol=1e-9)
    # A pruned weight conditions the others: [A_FF^-1] instead of [A^-1].
    theta[0, 0] = 0.0
    free = np.ones(i, bool)
    free[0] = False
    a_ff = (a.T @ a / n)[np.ix_(free, free)]
    conditional = theta[1:, 0] ** 2 / (2 * np.diag(np.linalg.inv(a_ff)))
    np.testing.assert_allclose(obs(theta, stats, damping=0.0)[1:, 0], conditional, rtol=1e-9)
    # Group (unit) Wald: n theta_j^T Avar_jj^-1 theta_j.
    grouped = get_criterion("wald_block").group_scores(
        [theta],
        [stats],
        [tsp.granularity.group_ids(theta.shape, "unit")],
        damping=0.0,
        variance_floor=0.0,
    )
    for j in range(o):
        idx = np.arange(i) * o + j
        block = avar[np.ix_(idx, idx)]
        np.testing.assert_allclose(
            grouped[j], n * theta[:, j] @ np.linalg.solve(block, theta[:, j]), rtol=1e-8
        )


def test_output_variance_guard_lets_units_without_downstream_weights_score_low():
    # Unit 2 no longer reaches the loss (its outgoing weights are pruned): its
    # gradient factor is 0 and its curvature only the damping. The bare sandwich
    # gives it variance 0 (infinite Wald statistics for its inputs); the guard
    # floors it at variance_floor * [B_H^-1]_22, so its inputs score lowest.
    rng = np.random.default_rng(4)
    n, i, o = 200, 5, 3
    a = rng.normal(size=(n, i))
    d = rng.normal(size=(n, o))
    d[:, 2] = 0.0
    dh = 1.5 * rng.normal(size=(n, o))
    dh[:, 2] = 0.0
    factors = KroneckerFactors(n, a.T @ a, d.T @ d, dh.T @ dh, has_bias=False)
    stats = WeightStatistics(n, np.zeros((i, o)), np.ones((i, o)), kronecker=factors)
    theta = np.ones((i, o))
    damping, floor = 0.01, 0.2
    got = wald_block(theta, stats, damping=damping, variance_floor=floor)
    b_h = dh.T @ dh / n
    b_h_inv = np.linalg.inv(b_h + damping * np.mean(np.diag(b_h)) * np.eye(o))
    sandwich = np.diag(b_h_inv @ (d.T @ d / n) @ b_h_inv)
    m = np.maximum(sandwich, floor * np.diag(b_h_inv))
    assert sandwich[2] == 0.0 and m[2] > 0
    a_n = a.T @ a / n
    inv_a = np.diag(np.linalg.inv(a_n + damping * np.mean(np.diag(a_n)) * np.eye(i)))
    np.testing.assert_allclose(got, n * theta**2 / (inv_a[:, None] * m[None, :]), rtol=1e-9)
    assert got[:, 2].max() < got[:, :2].min()


@pytest.mark.parametrize("pruned_fraction", [0.1, 0.5, 0.9])
def test_free_set_inverse_and_update_match_direct_formulas_at_any_sparsity(pruned_fraction):
    # Few pruned weights take the Schur-complement form, many the free-set form.
    rng = np.random.default_rng(5)
    n, i, o = 300, 12, 6
    x = rng.normal(size=(n, i)) @ rng.normal(size=(i, i))
    factors = KroneckerFactors(n, x.T @ x, np.eye(o), np.eye(o), has_bias=False)
    theta = rng.normal(size=(i, o))
    keep = rng.random((i, o)) >= pruned_fraction
    keep[0, 0] = True
    keep[:, 1] = keep[:, 2]  # a shared pattern
    a = x.T @ x / n
    v = np.linalg.inv(a)
    got = obs(np.where(keep, theta, 0.0), WeightStatistics(n, 0, 0, kronecker=factors), damping=0)
    moved, _ = restricted_update(theta, None, factors, keep, damping=0.0)
    for j in range(o):
        f, p = keep[:, j], ~keep[:, j]
        inv_ff = np.linalg.inv(a[np.ix_(f, f)])
        np.testing.assert_allclose(got[f, j], theta[f, j] ** 2 / (2 * np.diag(inv_ff)), rtol=1e-9)
        expected = theta[:, j] - v[:, p] @ np.linalg.solve(v[np.ix_(p, p)], theta[p, j])
        np.testing.assert_allclose(moved[f, j], expected[f], rtol=1e-8, atol=1e-10)
        assert np.all(moved[p, j] == 0)


def test_restricted_estimator_reaches_the_constrained_optimum_of_a_quadratic_loss():
    # Linear regression with squared error: the loss is exactly quadratic, so the
    # restricted estimator is least squares on the kept inputs (plus the bias).
    rng = np.random.default_rng(3)
    n, d, k = 400, 8, 2
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))  # correlated inputs
    y = x @ rng.normal(size=(d, k)) + 0.3 + 0.1 * rng.normal(size=(n, k))
    design = np.hstack([x, np.ones((n, 1))])
    full = np.linalg.lstsq(design, y, rcond=None)[0]
    model = keras.Sequential([keras.layers.Dense(k, input_shape=(d,), dtype="float64")])
    model.compile(loss="mse")
    model.set_weights([full[:-1], full[-1]])
    pruned = tsp.prune_once(
        model, (x, y), 0.5, "obs", substeps=1, damping=0.0, min_weights_per_class=0, verbose=0
    )
    kernel, bias = (w.numpy() for w in pruned.layers[0].weights)
    assert (kernel == 0).sum() == d * k // 2
    for j in range(k):
        kept = kernel[:, j] != 0
        columns = np.hstack([x[:, kept], np.ones((n, 1))])
        optimum = np.linalg.lstsq(columns, y[:, j], rcond=None)[0]
        np.testing.assert_allclose(kernel[kept, j], optimum[:-1], rtol=RTOL_FLOAT32, atol=1e-9)
        np.testing.assert_allclose(bias[j], optimum[-1], rtol=RTOL_FLOAT32, atol=1e-9)
    # the same update through the pure function, with V = A^-1 written out
    a = design.T @ design
    keep = np.vstack([kernel != 0, np.ones((1, k), bool)])
    new_kernel, new_bias = restricted_update(
        full[:-1], full[-1], KroneckerFactors(n, a, np.eye(k), None, True), keep, damping=0.0
    )
    v = np.linalg.inv(a / n)
    for j in range(k):
        p = ~keep[:, j]
        theta = full[:, j]
        expected = theta - v[:, p] @ np.linalg.solve(v[np.ix_(p, p)], theta[p])
        np.testing.assert_allclose(np.append(new_kernel[:, j], new_bias[j]), expected, atol=1e-9)


def test_block_criteria_need_dense_kernels_and_keep_every_class(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.95, "wald_block", verbose=0)
    out = pruned.get_layer("output").kernel.numpy()
    assert np.all((out != 0).sum(axis=0) >= 1)
    for name in ("fc1", "fc2"):
        kernel = pruned.get_layer(name).kernel.numpy()
        assert (kernel == 0).sum() == tsp.masking.round_half_up(0.95 * kernel.size)
    assert (out == 0).sum() == out.size - out.shape[1]  # the guard wins over the count
    grouped = keras.Sequential(
        [
            keras.layers.Conv2D(2, 3, groups=2, input_shape=(5, 5, 2), name="grouped"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    grouped.compile(loss="mse")
    data = (np.zeros((4, 5, 5, 2), np.float32), np.zeros((4, 2), np.float32))
    # a grouped conv has no Kronecker factors: the pure criterion refuses it ...
    with pytest.raises(ValueError, match=r"Conv1D/Conv2D kernels \(groups=1\)"):
        get_criterion("obs")(grouped.get_layer("grouped").kernel.numpy(), None)
    # ... and one-shot pruning scores it by the diagonal fallback ('obd') instead
    pruned = tsp.prune_once(grouped, data, 0.5, "obs", layers=["grouped"], verbose=0)
    kernel = pruned.get_layer("grouped").kernel.numpy()
    assert (kernel == 0).sum() == kernel.size // 2


def _softmax_cnn(seed=0, n=24):
    """Conv2D (stride 2, 'same', ReLU) -> Dense softmax, and its data."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.layers.Conv2D(
                3, 3, strides=2, padding="same", activation="relu", input_shape=(7, 7, 2)
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 7, 7, 2)).astype(np.float32)
    return model, x, rng.integers(0, 4, n)


def _patches(x, size=3, stride=2, out=4):
    """``[n, out * out, size * size * C]`` input patches of a 'same' conv, by loops (float64)."""
    padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    rows = [
        padded[:, p * stride : p * stride + size, q * stride : q * stride + size].reshape(
            len(x), -1
        )
        for p in range(out)
        for q in range(out)
    ]
    return np.stack(rows, 1)


def test_conv_kronecker_factors_are_the_kfc_patch_moments():
    model, x, y = _softmax_cnn()
    got = collect_statistics(
        model, (x, y), hessian="ggn_exact", kronecker=True, batch_size=10, verbose=0
    )
    kernel, bias, w_out, b_out = (w.numpy().astype(np.float64) for w in model.weights)
    patches = _patches(x)  # [n, 16, 18]
    z = patches @ kernel.reshape(-1, 3) + bias  # [n, 16, 3]
    logits = np.maximum(z, 0).reshape(len(x), -1) @ w_out + b_out
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)

    def delta(label_onehot):  # dL/dz per position for the given labels, [n, 16, 3]
        return ((p - label_onehot) @ w_out.T).reshape(z.shape) * (z > 0)

    augmented = np.concatenate([patches, np.ones(patches.shape[:2] + (1,))], 2)
    d_true = delta(np.eye(4)[y]).reshape(-1, 3)
    curvature = sum(
        np.einsum(
            "i,ipj,ipk->jk", p[:, c], delta(np.eye(4)[[c] * len(x)]), delta(np.eye(4)[[c] * len(x)])
        )
        for c in range(4)
    )
    factors = got.weights[model.layers[0].kernel.name].kronecker
    assert factors.count == len(x) and factors.has_bias
    flat = augmented.reshape(-1, augmented.shape[-1])
    assert relative_error(factors.inputs, flat.T @ flat / 16) < RTOL_FLOAT32
    assert relative_error(factors.gradients, d_true.T @ d_true) < RTOL_FLOAT32
    assert relative_error(factors.curvature, curvature) < RTOL_FLOAT32


def test_block_criteria_on_a_conv_kernel_are_the_sandwich_of_its_patch_matrix():
    model, x, y = _softmax_cnn(seed=1, n=40)
    stats = collect_statistics(
        model, (x, y), hessian="ggn_exact", kronecker=True, verbose=0
    ).weights[model.layers[0].kernel.name]
    f = stats.kronecker
    n = f.count
    kernel = model.layers[0].kernel.numpy().astype(np.float64)
    theta = np.vstack([kernel.reshape(-1, 3), np.zeros((1, 3))])  # bias row: kept, not scored
    b_inv = np.linalg.inv(f.curvature / n)
    avar = np.kron(np.linalg.inv(f.inputs / n), b_inv @ (f.gradients / n) @ b_inv)
    expected = (n * theta.reshape(-1) ** 2 / np.diag(avar)).reshape(theta.shape)[:-1]
    got = wald_block(kernel, stats, damping=0.0, variance_floor=0.0)
    assert got.shape == kernel.shape
    np.testing.assert_allclose(got.reshape(-1, 3), expected, rtol=1e-6)
    saliency = theta**2 / (2 * np.diag(np.linalg.inv(f.inputs / n)))[:, None]
    np.testing.assert_allclose(
        obs(kernel, stats, damping=0.0).reshape(-1, 3), saliency[:-1], rtol=1e-6
    )


def test_restricted_estimator_on_a_conv_filter_is_least_squares_on_its_kept_patches():
    # The compensation re-fits each filter's output over all positions of all
    # examples from the patch entries it keeps (KFC's input factor, damping 0).
    model, x, y = _softmax_cnn(seed=2, n=40)
    pruned = tsp.prune_once(
        model, (x, y), 0.6, "obs", layers=[model.layers[0].name], substeps=1, damping=0.0, verbose=0
    )
    kernel, bias = (w.numpy() for w in model.layers[0].weights)
    new_kernel, new_bias = (w.numpy() for w in pruned.layers[0].weights)
    assert new_kernel.shape == kernel.shape
    assert (new_kernel == 0).sum() == tsp.masking.round_half_up(0.6 * kernel.size)
    design = _patches(x).reshape(-1, kernel[..., 0].size)
    for j in range(3):
        kept = new_kernel[..., j].reshape(-1) != 0
        target = design @ kernel[..., j].reshape(-1) + bias[j]
        columns = np.hstack([design[:, kept], np.ones((len(design), 1))])
        optimum = np.linalg.lstsq(columns, target, rcond=None)[0]
        np.testing.assert_allclose(
            new_kernel[..., j].reshape(-1)[kept], optimum[:-1], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(new_bias[j], optimum[-1], rtol=1e-4, atol=1e-5)


def test_wald_block_inside_fit_updates_the_survivors(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_block", tsp.OneShotSparsity(0.6), hessian="ggn"
    )
    before = model.get_layer("fc2").kernel.numpy()
    pruned.compile("sgd", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=1, batch_size=60, callbacks=tsp.callbacks((x, y), verbose=0), verbose=0)
    after = tsp.strip_pruning(pruned).get_layer("fc2").kernel.numpy()
    kept = after != 0
    assert (~kept).sum() == tsp.masking.round_half_up(0.6 * after.size)
    # survivors moved by the compensation far more than one SGD step would move them
    assert np.abs(after[kept] - before[kept]).max() > 1e-3


def test_min_weights_per_unit_keeps_every_unit_connected(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.95, "wald_block", min_weights_per_unit=1, verbose=0)
    for name in ("fc1", "fc2", "output"):
        kernel = pruned.get_layer(name).kernel.numpy()
        assert np.all((kernel != 0).sum(axis=0) >= 1), name
    fc1 = pruned.get_layer("fc1").kernel.numpy()
    assert (fc1 == 0).sum() == fc1.size - fc1.shape[1]  # the floor wins over the exact count


def test_wald_block_prunes_conv_filters_by_their_group_statistic():
    model, x, y = _softmax_cnn(seed=9, n=40)  # the filter of least norm is not the one
    stats = collect_statistics(
        model, (x, y), hessian="ggn_exact", kronecker=True, verbose=0
    ).weights[model.layers[0].kernel.name]
    f, n = stats.kronecker, stats.kronecker.count
    kernel, bias = (w.numpy().astype(np.float64) for w in model.layers[0].weights)
    theta = np.vstack([kernel.reshape(-1, 3), bias[None, :]])
    b_inv = np.linalg.inv(f.curvature / n)
    m = np.diag(b_inv @ (f.gradients / n) @ b_inv)
    # a whole filter (its column and bias): n theta_j^T A theta_j / M_jj
    expected = [n * theta[:, j] @ (f.inputs / n) @ theta[:, j] / m[j] for j in range(3)]
    pruned = tsp.prune_once(
        model,
        (x, y),
        1 / 3,
        "wald_block",
        granularity="filter",
        layers=[model.layers[0].name],
        substeps=1,
        damping=0.0,
        variance_floor=0.0,
        verbose=0,
    )
    kept = [bool(np.any(pruned.layers[0].kernel.numpy()[..., j])) for j in range(3)]
    assert kept.count(False) == 1 and not kept[int(np.argmin(expected))]
    assert int(np.argmin(expected)) != int(np.argmin(np.linalg.norm(theta, axis=0)))
