"""The default criterion "wald": the best Wald estimator each layer allows, and old files.

``"wald"`` is the block Wald statistic with the restricted estimator
(``"wald_block"``, the same criterion) where a layer has Kronecker factors
(Dense, Conv) and the seed paper's diagonal sandwich (``"wald_diag"``)
elsewhere. A wrapper saved before that change said ``"wald"`` for the diagonal
form: it loads as ``"wald_diag"``.

``data/wald_wrapper_v1.keras`` was written by tfstatprune at commit 8fe211b
(``"wald"`` = diagonal), with the masks that code's callback then pruned it to
(``wald_wrapper_v1_masks.json``, from ``wald_wrapper_v1_data.npz``); the script
is ``data/README.md``'s.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.keras.wrapper import CRITERION_VERSION, PruneStatistically, upgrade_criterion

DATA = Path(__file__).resolve().parent / "data"


def _embedding_model():
    """Embedding (no Kronecker factors) -> Flatten -> Dense softmax, and its data."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Embedding(12, 4, input_length=3, name="embed"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="fc"),
        ]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    return model, (rng.integers(0, 12, (40, 3)), rng.integers(0, 3, 40))


@pytest.mark.parametrize(
    "entry", [tsp.prune_once, tsp.scores, tsp.prune_statistically, PruneStatistically]
)
def test_every_entry_point_defaults_to_wald(entry):
    assert inspect.signature(entry).parameters["criterion"].default == "wald"


def test_wald_is_the_block_estimator_with_the_diagonal_fallback():
    wald, block, diag = (tsp.get_criterion(n) for n in ("wald", "wald_block", "wald_diag"))
    assert wald.fn is block.fn is tsp.criteria.wald_block
    assert wald.update is not None and wald.fallback == block.fallback == "wald_diag"
    assert diag.fn is tsp.criteria.wald_diag and diag.update is None
    # the Python function of the old name is still the diagonal form
    assert tsp.criteria.wald is tsp.criteria.wald_diag


def test_default_scores_each_layer_by_the_best_estimator_and_says_which(capsys):
    model, data = _embedding_model()
    got = tsp.scores(model, data, verbose=1)
    out = capsys.readouterr().out
    assert "criterion 'wald' per layer: wald_diag for embed; wald_block for fc" in out
    block = tsp.scores(model, data, "wald_block", verbose=0)
    diag = tsp.scores(model, data, "wald_diag", hessian="ggn_exact", verbose=0)
    embed, kernel = model.get_layer("embed").embeddings.name, model.get_layer("fc").kernel.name
    np.testing.assert_allclose(got[embed], diag[embed], rtol=1e-6)
    np.testing.assert_allclose(got[kernel], block[kernel], rtol=1e-6)
    assert not np.allclose(got[kernel], diag[kernel], rtol=1e-3)  # not the diagonal form


def test_scoring_result_names_the_estimator_of_every_layer():
    from tfstatprune.keras.config import StatsConfig
    from tfstatprune.keras.scoring import mask_units, score_units

    model, data = _embedding_model()
    units = mask_units([model.get_layer("embed"), model.get_layer("fc")])
    result = score_units(model, units, data, "wald", stats=StatsConfig(verbose=0))
    assert dict(result.estimators) == {"embed": "wald_diag", "fc": "wald_block"}
    assert result.fallback_layers == ("embed",)
    diag = score_units(model, units, data, "wald_diag", stats=StatsConfig(verbose=0))
    assert dict(diag.estimators) == {"embed": "wald_diag", "fc": "wald_diag"}


def test_default_prune_once_is_the_block_pruning_with_its_update(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    got = tsp.prune_once(model, (x, y), 0.8, verbose=0)
    block = tsp.prune_once(model, (x, y), 0.8, "wald_block", verbose=0)
    diag = tsp.prune_once(model, (x, y), 0.8, "wald_diag", verbose=0)
    for name in ("fc1", "fc2", "output"):
        kernel = got.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(kernel, block.get_layer(name).kernel.numpy())
    # the restricted estimator moved the survivors: the diagonal form only masks
    survivors = got.get_layer("fc1").kernel.numpy() != 0
    dense = model.get_layer("fc1").kernel.numpy()
    assert not np.allclose(got.get_layer("fc1").kernel.numpy()[survivors], dense[survivors])
    kept = diag.get_layer("fc1").kernel.numpy() != 0
    np.testing.assert_array_equal(diag.get_layer("fc1").kernel.numpy()[kept], dense[kept])


def test_the_callback_records_and_prints_which_layer_fell_back(capsys):
    model, (x, y) = _embedding_model()
    pruned = tsp.prune_statistically(model, (x, y), pruning_schedule=tsp.OneShotSparsity(0.5))
    pruned.compile("sgd", "sparse_categorical_crossentropy")
    callbacks = tsp.callbacks((x, y), verbose=1)
    pruned.fit(x, y, batch_size=40, epochs=1, verbose=0, callbacks=callbacks)
    record = next(c for c in callbacks if isinstance(c, tsp.StatisticalPruning)).history[0]
    assert record["estimators"] == {"embed": "wald_diag", "fc": "wald_block"}
    assert "criterion 'wald' per layer: wald_diag for embed; wald_block for fc" in (
        capsys.readouterr().out
    )


def test_a_wrapper_saved_before_the_version_says_wald_diag():
    old = {"criterion": "wald", "criterion_options": {"hessian": "ggn"}}
    assert upgrade_criterion(old) == {
        "criterion": "wald_diag",
        "criterion_options": {"hessian": "ggn"},
    }
    assert upgrade_criterion({"criterion": "wald_block"})["criterion"] == "wald_block"
    assert upgrade_criterion({"criterion": "magnitude"})["criterion"] == "magnitude"
    current = {"criterion": "wald", "criterion_version": CRITERION_VERSION}
    assert upgrade_criterion(current) == {"criterion": "wald"}


def test_a_new_wrapper_round_trips_with_its_version():
    wrapper = PruneStatistically(keras.layers.Dense(3), tsp.OneShotSparsity(0.5))
    config = json.loads(json.dumps(wrapper.get_config()))
    assert config["criterion"] == "wald" and config["criterion_version"] == CRITERION_VERSION
    assert PruneStatistically.from_config(config).criterion == "wald"
    del config["criterion_version"]  # as tfstatprune wrote it before the version
    assert PruneStatistically.from_config(config).criterion == "wald_diag"


def test_a_wald_model_saved_by_the_old_code_loads_and_prunes_as_it_did():
    model = tsp.load_model(DATA / "wald_wrapper_v1.keras")
    wrappers = [layer for layer in model.layers if isinstance(layer, PruneStatistically)]
    assert [w.criterion for w in wrappers] == ["wald_diag", "wald_diag"]
    data = np.load(DATA / "wald_wrapper_v1_data.npz")
    x, y = data["x"], data["y"]
    callbacks = tsp.callbacks((x, y), verbose=0)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
    expected = json.loads((DATA / "wald_wrapper_v1_masks.json").read_text())
    got = {k: v for w in wrappers for k, v in w.current_masks().items()}
    assert sorted(got) == sorted(expected)
    for key, mask in expected.items():
        np.testing.assert_array_equal(got[key], np.asarray(mask), err_msg=key)
    # saved again, it says wald_diag with the current version, and stays so
    config = wrappers[0].get_config()
    assert (config["criterion"], config["criterion_version"]) == ("wald_diag", CRITERION_VERSION)


def test_a_regression_model_gets_the_block_form_with_the_empirical_fisher():
    # the exact GGN needs a cross-entropy loss; with MSE the default takes H = Sigma
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Dense(6, activation="tanh", input_shape=(4,), name="fc"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.normal(size=(50, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="cross-entropy"):  # asked for explicitly: refused
        tsp.scores(model, (x, y), "wald", hessian="ggn_exact", verbose=0)
    got = tsp.scores(model, (x, y), verbose=0)
    fisher = tsp.scores(model, (x, y), "wald_block", hessian="fisher", verbose=0)
    assert set(got) == set(fisher)
    for key in got:
        np.testing.assert_allclose(got[key], fisher[key], rtol=1e-6)
    pruned = tsp.prune_once(model, (x, y), 0.5, verbose=0)
    kernel = pruned.get_layer("fc").kernel.numpy()
    assert (kernel == 0).sum() == kernel.size // 2


def test_the_block_form_with_the_empirical_fisher_is_obs_weighted_per_unit():
    from tfstatprune.stats import WeightStatistics
    from tfstatprune.stats.kronecker import KroneckerFactors

    # A = diag(2, 4), B_S = diag(1, 4) (no curvature factor: H = Sigma): M = B_S^-1,
    # W_ij = n theta_ij^2 / ([A^-1]_ii M_jj) = n theta^2 A_ii B_jj for diagonal factors
    f = KroneckerFactors(2, 2 * np.diag([2.0, 4.0]), 2 * np.diag([1.0, 4.0]), None, False)
    st = WeightStatistics(2, np.zeros((2, 2)), np.ones((2, 2)), kronecker=f)
    got = tsp.criteria.wald_block(np.ones((2, 2)), st, damping=0.0, variance_floor=0.0)
    np.testing.assert_allclose(got, 2 * np.outer([2.0, 4.0], [1.0, 4.0]))
