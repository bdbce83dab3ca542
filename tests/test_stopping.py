"""The statistical stopping rule vs hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

import tfstatprune as tsp
from tfstatprune.stopping import choose_sparsity, mcnemar_worse


def _pairs(both, dense_only, pruned_only, neither):
    dense = [1] * both + [1] * dense_only + [0] * pruned_only + [0] * neither
    pruned = [1] * both + [0] * dense_only + [1] * pruned_only + [0] * neither
    return dense, pruned


def test_exact_binomial_tail_for_few_discordant_pairs():
    dense, pruned = _pairs(90, 7, 1, 2)
    r = mcnemar_worse(dense, pruned)
    # P(B >= 7), B ~ Bin(8, 1/2) = (C(8,7) + C(8,8)) / 2^8
    assert r.exact and r.p_value == pytest.approx(9 / 256)
    assert (r.dense_only, r.pruned_only) == (7, 1)
    assert r.dense_accuracy == pytest.approx(0.97) and r.pruned_accuracy == pytest.approx(0.91)
    assert r.worse(0.05) and not r.worse(0.01)


def test_normal_approximation_with_continuity_correction():
    dense, pruned = _pairs(800, 60, 30, 110)
    r = mcnemar_worse(dense, pruned)
    z = (60 - 30 - 1) / math.sqrt(90)
    assert not r.exact
    assert r.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    better = mcnemar_worse(*_pairs(800, 30, 60, 110))
    z = (30 - 60 - 1) / math.sqrt(90)
    assert better.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    # one-sided: a better model is far from "worse"; close to the exact tail P(B >= 30)
    assert better.p_value > 0.99
    assert better.p_value == pytest.approx(scipy_stats.binom.sf(29, 90, 0.5), abs=1e-3)


def test_choose_sparsity_stops_before_the_first_significant_loss():
    dense = [1] * 100
    at = {
        0.5: [1] * 100,
        0.8: [1] * 97 + [0] * 3,  # p = 1/8: not significant
        0.9: [1] * 90 + [0] * 10,  # p = 2^-10: worse
        0.95: [1] * 100,  # never reached
    }
    choice = choose_sparsity(dense, at, alpha=0.05)
    assert choice.sparsity == 0.8
    assert list(choice.tests) == [0.5, 0.8, 0.9]
    assert "<- chosen" in str(choice)
    with pytest.raises(ValueError, match="alpha"):
        choose_sparsity(dense, at, alpha=1.5)
    with pytest.raises(ValueError, match="same length"):
        mcnemar_worse([1, 0], [1])


def test_prune_once_auto_returns_the_chosen_level(tiny_mlp_data, capsys):
    model, x, y = tiny_mlp_data
    result = tsp.prune_auto(model, None, (x, y), levels=(0.3, 0.6, 0.9), criterion="magnitude")
    assert result.sparsity in (0.0, 0.3, 0.6, 0.9)
    kernel = result.model.get_layer("fc1").kernel.numpy()
    assert np.isclose((kernel == 0).mean(), result.sparsity, atol=0.01)
    pruned = tsp.prune_once(model, None, "auto", "magnitude", holdout=(x, y), verbose=0)
    assert "sparsity='auto': chose" in capsys.readouterr().out
    assert pruned.count_params() == model.count_params()
    with pytest.raises(ValueError, match="holdout"):
        tsp.prune_once(model, None, "auto", "magnitude", verbose=0)
