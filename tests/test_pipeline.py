"""The one pruning step, the settings objects and the declarations of criteria."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria.registry import StatsRequest, get_criterion, register_criterion
from tfstatprune.keras.callbacks import may_prune
from tfstatprune.keras.config import (
    MaskSettings,
    PruneSettings,
    StatsConfig,
    settings_from_arguments,
)
from tfstatprune.keras.scoring import mask_units, score_units
from tfstatprune.masking import column_floor, compute_masks, mask_sparsity, round_half_up
from tfstatprune.schedules import schedule_decision

BATCH = 20


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, tsp.PruneStatistically)]


def _first_step_matches(pruned, once):
    """Run the callback's step 0 on ``pruned`` (before any training) and check that its
    masks are ``once``'s zeros; returns the callback."""
    pruned.compile("adam", "sparse_categorical_crossentropy")
    callback = tsp.callbacks(verbose=0)[0]
    callback.set_model(pruned)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    for wrapper in _wrappers(pruned):
        kernel = once.get_layer(wrapper.layer.name).kernel.numpy()
        mask = wrapper.pruning_vars[0][1].numpy()
        np.testing.assert_array_equal(mask, (kernel != 0).astype(mask.dtype))
    return callback


def _masks(model):
    return {k: v for w in _wrappers(model) for k, v in w.current_masks().items()}


# --- masking: the per-column floor -------------------------------------------------


def _reference_floor_masks(scores, sparsity, count):
    """Brute force: protect each column's ``count`` best, prune the lowest of the rest."""
    rows, cols = scores.shape
    protected = np.zeros(scores.shape, bool)
    for j in range(cols):
        order = sorted(range(rows), key=lambda i: (-scores[i, j], i))
        protected[order[: min(count, rows)], j] = True
    n_prune = min(round_half_up(sparsity * scores.size), int((~protected).sum()))
    candidates = sorted(
        (scores[i, j], i * cols + j)
        for i in range(rows)
        for j in range(cols)
        if not protected[i, j]
    )
    keep = np.ones(scores.size, bool)
    for _, flat in candidates[:n_prune]:
        keep[flat] = False
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [1, 2, 5])
def test_column_floor_matches_a_brute_force_reference(seed, count):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(4, 3))
    for sparsity in (0.3, 0.6, 0.95):
        got = compute_masks({"k": scores}, sparsity, keep_per_column={"k": count})["k"]
        np.testing.assert_array_equal(got, _reference_floor_masks(scores, sparsity, count))
        assert (got.sum(axis=0) >= min(count, 4)).all()


def _reference_global_floor_masks(scores, sparsity, count, min_kept=1):
    """Global scope by hand: floors fixed first, then one ranking of the rest."""
    protected = {}
    for name, arr in scores.items():
        mask = np.zeros(arr.shape, bool)
        if arr.ndim == 2:
            for j in range(arr.shape[1]):
                order = sorted(range(arr.shape[0]), key=lambda i: (-arr[i, j], i))
                mask[order[: min(count, arr.shape[0])], j] = True
        protected[name] = mask.reshape(-1)
    entries = sorted(
        (float(arr.reshape(-1)[i]), position, i)
        for position, (name, arr) in enumerate(scores.items())
        for i in range(arr.size)
        if not protected[name][i]
    )
    names = list(scores)
    budget = round_half_up(sparsity * sum(a.size for a in scores.values()))
    without_floors = sum(max(a.size - min_kept, 0) for a in scores.values())
    keep = {name: np.ones(arr.size, bool) for name, arr in scores.items()}
    for _, position, i in entries:
        if budget == 0:
            break
        name = names[position]
        if keep[name].sum() > min_kept:
            keep[name][i] = False
            budget -= 1
    asked = round_half_up(sparsity * sum(a.size for a in scores.values()))
    if budget > 0 and asked - budget < min(asked, without_floors):
        return None  # the floors stop the total: an error
    return {name: keep[name].reshape(arr.shape) for name, arr in scores.items()}


def test_global_scope_never_prunes_a_column_floor():
    scores = {"k": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([5.0, 6.0])}
    got = compute_masks(scores, 0.5, scope="global", keep_per_column={"k": 1})
    assert got["k"].tolist() == [[False, False], [True, True]]
    assert got["b"].tolist() == [False, True]
    # 4 of 6 asked, but the floors and b's last weight leave 3: an error, not fewer.
    with pytest.raises(ValueError, match="column floors"):
        compute_masks(scores, 0.67, scope="global", keep_per_column={"k": 1})


def test_prune_once_refuses_floors_that_cannot_hold_the_global_total_before_statistics():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="out")])
    # 5 of 6 asked; one weight per class leaves 3. stats_data=None: the check comes first.
    with pytest.raises(ValueError, match="column floors"):
        tsp.prune_once(model, None, 0.9, "wald", "global", verbose=0)
    pruned = tsp.prune_once(model, None, 0.9, "magnitude", "global", min_weights_per_class=0)
    assert int((pruned.get_layer("out").kernel.numpy() == 0).sum()) == 5


def test_a_column_floor_keeps_the_best_tiebreak_among_equal_scores():
    scores = {"k": np.array([[0.0, 1.0], [0.0, 2.0]])}
    ties = {"k": np.array([[0.1, 1.0], [5.0, 1.0]])}
    got = compute_masks(scores, 0.5, tiebreak=ties, keep_per_column={"k": 1})["k"]
    assert got.tolist() == [[False, False], [True, True]]  # column 0 keeps |theta| 5.0


@pytest.mark.parametrize("seed", range(8))
def test_global_column_floor_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    scores = {"k": rng.normal(size=(4, 3)), "b": rng.normal(size=5), "o": rng.normal(size=(3, 2))}
    count = int(rng.integers(1, 4))
    for sparsity in (0.2, 0.5, 0.8, 0.95):
        floors = {"k": count, "o": count}
        want = _reference_global_floor_masks(scores, sparsity, count)
        if want is None:
            with pytest.raises(ValueError, match="column floors"):
                compute_masks(scores, sparsity, scope="global", keep_per_column=floors)
            continue
        got = compute_masks(scores, sparsity, scope="global", keep_per_column=floors)
        for name in scores:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} at {sparsity}")


def test_a_column_floor_outranks_infinite_scores():
    # Column 0's floor is row 0; the +inf in column 1 ties the floor's old +inf stand-in.
    scores = {"k": np.array([[1.0, np.inf], [0.5, np.inf], [0.2, 0.1]])}
    for scope, level in (("layer", 0.9), ("global", 0.6)):
        got = compute_masks(scores, level, scope=scope, keep_per_column={"k": 1})["k"]
        assert got[:, 0].tolist() == [True, False, False], scope
        assert got[:, 1].sum() >= 1, scope


def test_previously_pruned_floor_entries_stay_pruned_in_global_scope():
    scores = {"k": np.array([[3.0, 1.0], [2.0, 4.0]]), "b": np.array([0.5, 0.6])}
    previous = {"k": np.array([[0, 1], [1, 1]]), "b": np.array([1, 1])}
    got = compute_masks(scores, 0.5, scope="global", previous=previous, keep_per_column={"k": 1})
    assert not got["k"][0, 0]  # the column's best, but pruned before: monotone wins
    assert got["k"][1, 0] and got["k"][1, 1]  # each column's best live entry is its floor
    assert got["k"][0, 1] is np.False_ and got["b"].tolist() == [False, True]


def test_column_floor_applies_to_kernels_only_and_counts_per_class():
    scores = {"bias": np.array([3.0, 1.0, 2.0])}
    got = compute_masks(scores, 0.5, keep_per_column={"bias": 5})
    assert got["bias"].tolist() == [True, False, False]  # not 2-D: no floor
    assert column_floor(per_class=2, per_unit=1, output=True) == 2
    assert column_floor(per_class=2, per_unit=3, output=True) == 3
    assert column_floor(per_class=2, per_unit=1, output=False) == 1
    with pytest.raises(ValueError, match="keep_per_column"):
        compute_masks({"k": np.ones((2, 2))}, 0.5, keep_per_column={"k": -1})


# --- criteria declare what the glue passes them --------------------------------------


def test_a_declared_seed_option_gets_a_seed_per_unit_and_step(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    seen = []

    @register_criterion(
        "_test_declared_seed", statistics=StatsRequest(gradients=False, seed="rng"), overwrite=True
    )
    def declared(theta, stats=None, *, rng=None):
        seen.append(rng)
        return np.random.default_rng(rng).random(np.shape(theta))

    units = mask_units([model.get_layer("fc1"), model.get_layer("fc2")])
    result = score_units(model, units, None, "_test_declared_seed", {}, StatsConfig(seed=7), step=3)
    assert seen == [[7, 3, index] for index in range(len(units))]
    for index, unit in enumerate(units):
        expected = np.random.default_rng([7, 3, index]).random(unit.weights[0].shape)
        np.testing.assert_array_equal(result.scores[unit.key], expected)
    seen.clear()
    score_units(model, units, None, "_test_declared_seed", {"rng": 1})
    assert seen == [1] * len(units)  # the user's own value wins
    assert tsp.StatsRequest is StatsRequest  # what the README tells users to declare with


def test_the_registered_criteria_declare_seed_and_batchnorm_scale():
    assert get_criterion("random").needs({}) == StatsRequest(gradients=False, seed="seed")
    assert get_criterion("bn_scale").needs({}).bn_scale == "bn_gamma"
    assert get_criterion("random").request({}) is None  # no data to collect
    assert get_criterion("magnitude").needs({}).needs_data is False
    assert get_criterion("wald").needs({}).needs_data is True


# --- settings objects -----------------------------------------------------------------


def test_settings_from_arguments_sorts_the_keywords():
    prune, stats = settings_from_arguments(
        criterion="wald_block",
        scope="global",
        granularity=[1, 4],
        layers=["fc1"],
        min_weights_per_unit=2,
        substeps=3,
        loss="mse",
        max_examples=10,
        seed=4,
        verbose=0,
        damping=0.1,
    )
    assert prune == PruneSettings(
        MaskSettings("wald_block", {"damping": 0.1}, "global", (1, 4)),
        layers=["fc1"],
        min_weights_per_unit=2,
        substeps=3,
    )
    assert stats == StatsConfig(loss="mse", max_examples=10, seed=4, verbose=0)
    assert stats.collect_arguments(step=2)["seed"] == 6
    assert "memory_budget_mb" not in stats.collect_arguments()
    assert StatsConfig(memory_budget_mb=8).collect_arguments()["memory_budget_mb"] == 8
    with pytest.raises(ValueError, match="scope"):
        settings_from_arguments(scope="network")


@pytest.mark.parametrize(
    "settings",
    [
        MaskSettings(),
        MaskSettings("obd", {"hessian": "ggn"}, "global", "unit", True),
        MaskSettings("magnitude", granularity=(1, 4)),
        MaskSettings("random", sparsity_m_by_n=(2, 4)),
        MaskSettings("wald_block", scope="global", max_layer_sparsity=0.98),
    ],
)
def test_mask_settings_round_trip_through_the_wrapper_config(settings):
    assert MaskSettings.from_config(settings.get_config()) == settings
    wrapper = tsp.PruneStatistically.from_settings(
        keras.layers.Dense(4), tsp.OneShotSparsity(0.5), settings
    )
    wrapper.build((None, 8))
    config = wrapper.get_config()
    back = tsp.PruneStatistically.from_config(config)
    assert back.settings == wrapper.settings
    config.pop("layer")  # (the original inner layer is built, the new one not yet)
    assert {k: v for k, v in back.get_config().items() if k != "layer"} == config


def test_a_wrapper_saved_before_the_layer_cap_loads_without_one():
    settings = MaskSettings("magnitude", scope="global", max_layer_sparsity=0.9)
    wrapper = tsp.PruneStatistically.from_settings(
        keras.layers.Dense(4), tsp.OneShotSparsity(0.5), settings
    )
    wrapper.build((None, 8))
    config = wrapper.get_config()
    assert config["max_layer_sparsity"] == 0.9
    del config["max_layer_sparsity"]  # what older files hold
    back = tsp.PruneStatistically.from_config(config)
    assert back.max_layer_sparsity is None
    assert back.settings == MaskSettings("magnitude", scope="global")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"max_layer_sparsity": 0.9}, "pass scope='global', or leave max_layer_sparsity=None"),
        ({"scope": "global", "max_layer_sparsity": 1.0}, r"\[0, 1\).*None for no cap"),
        ({"scope": "global", "max_layer_sparsity": "0.9"}, "real number"),
    ],
)
def test_a_bad_layer_cap_is_refused_before_anything_runs(arguments, match):
    with pytest.raises(ValueError, match=match):
        settings_from_arguments(criterion="magnitude", **arguments)
    with pytest.raises(ValueError, match=match):
        tsp.PruneStatistically(keras.layers.Dense(2), tsp.OneShotSparsity(0.5), **arguments)


# --- global scope with a cap per layer ------------------------------------------------

CAPPED = dict(sparsity=0.7, cap=0.75)  # uncapped, magnitude prunes fc1 to 78 %


def _kernel_levels(model):
    return mask_sparsity({layer.name: layer.kernel.numpy() for layer in model.layers[1:]})


def test_prune_once_with_a_cap_makes_the_masks_of_the_masking_rule(tiny_mlp_data, capsys):
    model, x, y = tiny_mlp_data
    sparsity, cap = CAPPED["sparsity"], CAPPED["cap"]
    once = tsp.prune_once(model, None, sparsity, "magnitude", "global", max_layer_sparsity=cap)
    scores = tsp.scores(model, None, "magnitude", verbose=0)
    thetas = {k: np.abs(w.numpy()) for w, k in tsp.weight_keys(model).items() if k in scores}
    options = dict(scope="global", tiebreak=thetas, keep_per_column={"output/kernel:0": 1})
    want = compute_masks(scores, sparsity, max_layer_sparsity=cap, **options)
    uncapped = compute_masks(scores, sparsity, **options)
    assert max(mask_sparsity(uncapped).values()) > cap  # (so the cap binds)
    for layer in once.layers[1:]:
        kernel = layer.kernel.numpy()
        np.testing.assert_array_equal(kernel != 0, want[f"{layer.name}/kernel:0"])
    levels = _kernel_levels(once)
    assert max(levels.values()) <= cap
    line = capsys.readouterr().out.strip().splitlines()[-1]
    total = sum(v.size for v in want.values())
    pruned = sum(int((v == 0).sum()) for v in want.values())
    assert line == (
        f"[tfstatprune] global scope pruned {pruned / total:.1%} of {total:,} weights: "
        + ", ".join(f"{name} {level:.1%}" for name, level in levels.items())
        + f" (max_layer_sparsity {cap:g})"
    )
    assert pruned == round_half_up(sparsity * total)


def test_the_callback_caps_layers_as_prune_once_does(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    sparsity, cap = CAPPED["sparsity"], CAPPED["cap"]
    once = tsp.prune_once(
        model, None, sparsity, "magnitude", "global", max_layer_sparsity=cap, verbose=0
    )
    pruned = tsp.prune_statistically(
        model,
        None,
        "magnitude",
        tsp.OneShotSparsity(sparsity),
        scope="global",
        max_layer_sparsity=cap,
    )
    assert all(w.max_layer_sparsity == cap for w in _wrappers(pruned))
    callback = _first_step_matches(pruned, once)
    assert max(callback.history[0]["sparsity"].values()) <= cap


def test_a_cap_the_total_cannot_fit_under_fails_before_the_statistics(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    # "wald" needs statistics and is given no data: the cap's error comes first
    with pytest.raises(ValueError, match=r"prunes 281 of the 312 .* at most 248"):
        tsp.prune_once(model, None, 0.9, "wald", "global", max_layer_sparsity=0.8)


# --- stats_data given once -------------------------------------------------------------


def test_callbacks_use_the_stats_data_given_to_prune_statistically(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    runs = {}
    for passed_again in (False, True):
        keras.utils.set_random_seed(1)
        pruned = tsp.prune_statistically(model, (x, y), "wald", tsp.OneShotSparsity(0.5))
        pruned.compile("adam", "sparse_categorical_crossentropy")
        cbs = tsp.callbacks((x, y), verbose=0) if passed_again else tsp.callbacks(verbose=0)
        pruned.fit(x, y, epochs=1, batch_size=BATCH, callbacks=cbs, shuffle=False, verbose=0)
        assert cbs[0].history[0]["examples"] == len(x)
        runs[passed_again] = _masks(pruned)
    for key, mask in runs[True].items():
        np.testing.assert_array_equal(runs[False][key], mask)


def test_a_criterion_needing_data_without_any_is_a_clear_error(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(model, None, "wald", tsp.OneShotSparsity(0.5))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="needs statistics.*prune_statistically.*callbacks"):
        pruned.fit(x, y, epochs=1, batch_size=BATCH, callbacks=tsp.callbacks(verbose=0))
    plain = tsp.prune_statistically(model, None, "magnitude", tsp.OneShotSparsity(0.5))
    plain.compile("adam", "sparse_categorical_crossentropy")
    plain.fit(x, y, epochs=1, batch_size=BATCH, callbacks=tsp.callbacks(verbose=0), verbose=0)
    assert all(float(m.mean()) == 0.5 for m in _masks(plain).values())


# --- one step for both entry points -----------------------------------------------------


@pytest.mark.parametrize(
    ("criterion", "substeps"), [("wald_diag", None), ("magnitude", None), ("wald", 1)]
)
def test_prune_once_and_the_callback_take_the_same_step(tiny_mlp_data, criterion, substeps):
    # (the default "wald" updates the surviving weights, and prune_once then prunes in
    # several substeps by default; the callback's single step is substeps=1)
    model, x, y = tiny_mlp_data
    once = tsp.prune_once(model, (x, y), 0.6, criterion, substeps=substeps, verbose=0)
    pruned = tsp.prune_statistically(model, (x, y), criterion, tsp.OneShotSparsity(0.6))
    _first_step_matches(pruned, once)


# --- the callback's per-batch work ------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        pruning_schedule.ConstantSparsity(0.5, 0, end_step=0),
        pruning_schedule.ConstantSparsity(0.5, 2, end_step=11, frequency=3),
        pruning_schedule.ConstantSparsity(0.5, 1, end_step=-1, frequency=4),
        pruning_schedule.PolynomialDecay(0.1, 0.8, 3, 9, frequency=2),
    ],
)
def test_may_prune_agrees_with_tfmots_own_schedules(schedule):
    for step in range(-2, 30):
        assert may_prune(schedule, step) == schedule_decision(schedule, step).should_prune, step


def test_the_counted_step_follows_the_wrappers_across_epochs(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    schedule = pruning_schedule.PolynomialDecay(0.2, 0.6, begin_step=2, end_step=8, frequency=3)
    pruned = tsp.prune_statistically(model, (x, y), "magnitude", schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    cbs = tsp.callbacks(verbose=0)
    pruned.fit(x, y, epochs=4, batch_size=BATCH, callbacks=cbs, verbose=0)  # 3 batches each
    assert [h["step"] for h in cbs[0].history] == [2, 5, 8]
    assert all(int(w.mask_step.numpy()) == 8 for w in _wrappers(pruned))
    assert all(int(w.pruning_step.numpy()) == 12 for w in _wrappers(pruned))
