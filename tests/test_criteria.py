"""Criteria vs hand computations; a contract test over every registered criterion."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion, obd, wald_diag, wald_pvalues
from tfstatprune.granularity import group_ids
from tfstatprune.stats import ActivationStatistics, WeightStatistics
from tfstatprune.stats.history import UpdateStatistics
from tfstatprune.stats.kronecker import KroneckerFactors


def _softmax_regression(rng, n=200, d=4, k=3):
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(d, k)).astype(np.float32)
    y = rng.integers(0, k, n)
    model = keras.Sequential([keras.layers.Dense(k, use_bias=False, activation="softmax")])
    model.build((None, d))
    model.set_weights([w])
    model.compile(loss="sparse_categorical_crossentropy")
    return model, x, y, w


def test_wald_by_hand_on_softmax_regression():
    # Per-example gradient of the cross-entropy of p = softmax(x W) w.r.t. W:
    # s_i = x_i^T (p_i - e_{y_i}). Then H = mean s^2, Sigma = var s,
    # W = n theta^2 H^2 / Sigma -- all in float64 numpy, no autodiff.
    rng = np.random.default_rng(0)
    model, x, y, w = _softmax_regression(rng)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(3)[y]
    s = x64[:, :, None] * residual[:, None, :]
    h = (s**2).mean(0)
    sigma = s.var(0)
    expected = len(x) * w64**2 * h**2 / sigma
    got = tsp.scores(model, (x, y), "wald_diag", verbose=0)[model.layers[0].kernel.name]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    expected_obd = 0.5 * w64**2 * h
    got_obd = tsp.scores(model, (x, y), "obd", verbose=0)[model.layers[0].kernel.name]
    np.testing.assert_allclose(got_obd, expected_obd, rtol=1e-4)


def test_wald_is_zero_not_nan_without_curvature_or_variance():
    stats = WeightStatistics(
        5,
        np.array([0.0, 0.0, 5.0]),
        np.array([0.0, 0.0, 5.0]),  # third: every example has gradient 1, Sigma = 0
        regularizer_curvature=np.array([0.0, 2e-4, 0.0]),
    )
    got = wald_diag(np.array([1.0, -2.0, 3.0]), stats)
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])
    assert np.all(np.isfinite(obd(np.array([1.0, -2.0, 3.0]), stats)))


def test_wald_ggn_uses_the_sampled_curvature():
    stats = WeightStatistics(4, np.zeros(2), np.array([4.0, 8.0]), curvature=np.array([8.0, 4.0]))
    # H = curvature / n = [2, 1]; Sigma = sumsq / n = [1, 2]; W = n theta^2 H^2 / Sigma.
    np.testing.assert_allclose(wald_diag(np.ones(2), stats, hessian="ggn"), [16.0, 2.0])
    with pytest.raises(ValueError, match="hessian"):
        wald_diag(np.ones(2), stats, hessian="kfac")
    with pytest.raises(ValueError, match="hessian='ggn'"):
        wald_diag(np.ones(2), stats._replace(curvature=None), hessian="ggn")


@pytest.mark.parametrize("df", [1, 2, 5])
def test_pvalues_match_scipy_and_closed_forms(df):
    w = np.array([0.0, 0.5, 3.841458820694124, 10.0, 100.0])
    got = wald_pvalues(w, df=df)
    np.testing.assert_allclose(got, 1.0 - scipy_stats.chi2.cdf(w, df), rtol=1e-9, atol=1e-15)
    if df == 1:
        closed = [math.erfc(math.sqrt(v / 2)) for v in w]
        np.testing.assert_allclose(got, closed, rtol=1e-9, atol=1e-300)
    if df == 2:
        np.testing.assert_allclose(got, np.exp(-w / 2), rtol=1e-9, atol=1e-300)
    as_dict = wald_pvalues({"a": w}, df=df)
    np.testing.assert_array_equal(as_dict["a"], got)
    with pytest.raises(ValueError, match="df"):
        wald_pvalues(w, df=0)


def test_random_is_seeded_and_distinct_per_seed():
    theta = np.zeros((5, 4))
    a = get_criterion("random")(theta, None, seed=1)
    np.testing.assert_array_equal(a, get_criterion("random")(theta, None, seed=1))
    assert not np.array_equal(a, get_criterion("random")(theta, None, seed=2))


@pytest.mark.parametrize("name", tsp.available_criteria())
@pytest.mark.parametrize("hessian", ["fisher", "ggn", "ggn_exact"])
def test_every_registered_criterion_honours_the_contract(name, hessian):
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(6, 3))
    theta[0, 0] = 0.0
    n = 10
    grads = rng.normal(size=(n, 6, 3))
    grads[:, 1, 1] = 0.0  # a weight the data never moves
    a = rng.normal(size=(20 * n, 6))
    a[:, 1] = 0.0  # an input that is always zero
    d = rng.normal(size=(20 * n, 3))
    factors = KroneckerFactors(20 * n, a.T @ a, d.T @ d, 0.9 * d.T @ d, has_bias=False)
    stats = WeightStatistics(
        n, grads.sum(0), (grads**2).sum(0), curvature=(grads**2).sum(0) * 0.9, kronecker=factors
    )
    crit = get_criterion(name)
    takes_hessian = "hessian" in inspect.signature(crit.fn).parameters
    options = {"hessian": hessian} if takes_hessian else {}
    need = crit.request(options)
    if need is not None and need.history:  # a record of training instead of gradients
        stats = UpdateStatistics(n, np.abs(grads).sum(0), theta, (grads**2).mean(0), 5)
    if crit.groups_only:  # whole units only (apoz, bn_scale): single weights are refused
        with pytest.raises(ValueError, match="granularity='unit'"):
            crit(theta, stats, **options)
        counts = ActivationStatistics(n, float(n), np.array([0.0, 3.0, float(n)]), "relu")
        if "bn_gamma" in inspect.signature(crit.fn).parameters:
            options["bn_gamma"] = rng.normal(size=3)
        with_counts = stats._replace(activations=counts)
        groups = crit.group_scores(
            [theta], [with_counts], [group_ids(theta.shape, "unit")], **options
        )
        assert groups.shape == (3,) and np.all(np.isfinite(groups))
        return
    got = crit(theta, stats if need else None, **options)
    assert got.shape == theta.shape
    assert got.dtype == np.float64
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, crit(theta, stats if need else None, **options))
    if need is not None and not need.history:
        assert got[0, 0] == 0.0  # theta = 0 carries no evidence
    if need is not None and not need.kronecker:
        assert got[1, 1] == 0.0  # nor does a weight without curvature
    if need is not None and need.kronecker:  # an input that is always zero ranks last
        flat = crit(np.ones_like(theta), stats, **options)
        assert np.all(flat[1] < flat[2:].min())
    grouping = group_ids(theta.shape, "unit")
    groups = crit.group_scores([theta], [stats if need else None], [grouping], **options)
    assert groups.shape == (3,) and np.all(np.isfinite(groups))


def test_registry_names_unknown_criteria_and_refuses_overwrite():
    with pytest.raises(ValueError, match="available: .*magnitude"):
        get_criterion("saliency")
    with pytest.raises(ValueError, match="already registered"):
        tsp.register_criterion("magnitude")(lambda theta, stats: theta)
    custom = get_criterion(lambda theta, stats: np.abs(theta) * 2)
    np.testing.assert_array_equal(custom(np.array([-1.0]), None), [2.0])
    bad = get_criterion(lambda theta, stats: np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        bad(np.ones(2), None)


def test_regularizer_curvature_is_opt_in_for_wald_and_default_for_obd():
    stats = WeightStatistics(4, np.zeros(1), np.array([4.0]), regularizer_curvature=np.array([1.0]))
    # data: H = 1, Sigma = 1; the penalty adds 1 to H when asked
    np.testing.assert_allclose(wald_diag(np.array([1.0]), stats), [4.0])
    np.testing.assert_allclose(wald_diag(np.array([1.0]), stats, regularizer=True), [16.0])
    np.testing.assert_allclose(obd(np.array([1.0]), stats), [1.0])
    np.testing.assert_allclose(obd(np.array([1.0]), stats, regularizer=False), [0.5])
