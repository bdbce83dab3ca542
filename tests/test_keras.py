"""The Keras glue: wrapping, fitting with the callbacks, stripping, saving, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from conftest import RTOL_FLOAT32

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.masking import round_half_up

BATCH = 10


def _kernels(model):
    return {
        w.name: w.numpy()
        for layer in model.layers
        for w in layer.trainable_weights
        if "kernel" in w.name
    }


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, tsp.PruneStatistically)]


def _fit(pruned, x, y, epochs=2, **callback_options):
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    cbs = tsp.callbacks((x, y), verbose=0, **callback_options)
    pruned.fit(x, y, epochs=epochs, batch_size=BATCH, callbacks=cbs, verbose=0)
    return cbs[0]


@pytest.mark.parametrize("criterion", ["wald", "wald_diag", "magnitude", "obd", "random"])
def test_fit_reaches_exact_sparsity_and_strip_keeps_predictions(tiny_mlp_data, criterion):
    model, x, y = tiny_mlp_data
    original = [w.copy() for w in model.get_weights()]
    schedule = tsp.IterativeSparsity([0.5, 0.8], every=3)
    pruned = tsp.prune_statistically(model, (x, y), criterion, schedule)
    callback = _fit(pruned, x, y)
    assert [h["step"] for h in callback.history] == [0, 3]
    # statistics are collected with training=False: the step counter saw only the 12 batches
    assert all(int(w.pruning_step.numpy()) == 12 for w in _wrappers(pruned))
    for wrapper in _wrappers(pruned):
        for weight, mask, _ in wrapper.pruning_vars:
            pruned_count = int((mask.numpy() == 0).sum())
            assert pruned_count == round_half_up(0.8 * mask.shape.num_elements()), weight.name
    final = tsp.strip_pruning(pruned)
    assert not _wrappers(final)
    np.testing.assert_allclose(final.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    for wrapper in _wrappers(pruned):
        kernel = final.get_layer(wrapper.layer.name).kernel.numpy()
        assert np.all(kernel[wrapper.pruning_vars[0][1].numpy() == 0] == 0)
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights(), strict=True))


def test_masks_are_monotone_across_pruning_steps(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_diag", tsp.IterativeSparsity([0.3, 0.6], every=2)
    )
    masks = []
    pruned.compile("adam", "sparse_categorical_crossentropy")

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            masks.append(
                [m.numpy().copy() for w in _wrappers(pruned) for _, m, _ in w.pruning_vars]
            )

    pruned.fit(
        x,
        y,
        epochs=1,
        batch_size=BATCH,
        callbacks=[*tsp.callbacks((x, y), verbose=0), Record()],
        verbose=0,
    )
    for before, after in zip(masks, masks[1:], strict=False):
        for a, b in zip(before, after, strict=True):
            assert np.all(b <= a)


def test_global_scope_prunes_the_total_and_differs_per_layer(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_diag", tsp.OneShotSparsity(0.7), scope="global"
    )
    _fit(pruned, x, y, epochs=1)
    masks = [m.numpy() for w in _wrappers(pruned) for _, m, _ in w.pruning_vars]
    total = sum(m.size for m in masks)
    assert sum(int((m == 0).sum()) for m in masks) == round_half_up(0.7 * total)
    assert len({round(float((m == 0).mean()), 3) for m in masks}) > 1
    assert all(m.sum() >= 1 for m in masks)


def test_tfmot_schedules_and_tools_work_with_the_wrapper(tiny_mlp_data, tmp_path):
    model, x, y = tiny_mlp_data
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, 0.75, begin_step=0, end_step=6, frequency=2
    )
    pruned = tsp.prune_statistically(model, (x, y), "wald_diag", schedule, hessian="ggn")
    pruned.compile("adam", "sparse_categorical_crossentropy")
    cbs = tsp.callbacks((x, y), log_dir=str(tmp_path / "logs"), verbose=0)
    pruned.fit(x, y, epochs=2, batch_size=BATCH, callbacks=cbs, verbose=0)
    assert [h["step"] for h in cbs[0].history] == [2, 4, 6]
    for wrapper in _wrappers(pruned):
        mask = wrapper.pruning_vars[0][1].numpy()
        assert int((mask == 0).sum()) == round_half_up(0.75 * mask.size)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert not _wrappers(stripped)
    assert any((tmp_path / "logs").rglob("*tfevents*"))


def test_fit_without_the_callback_fails_with_a_clear_message(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(model, (x, y), "wald_diag", tsp.OneShotSparsity(0.5, step=2))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(tf.errors.InvalidArgumentError, match="tfstatprune.callbacks"):
        pruned.fit(
            x,
            y,
            epochs=1,
            batch_size=BATCH,
            verbose=0,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        )


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_load_a_wrapped_model(tiny_mlp_data, tmp_path, suffix):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model,
        (x, y),
        "wald",
        tsp.IterativeSparsity([0.5, 0.75], every=4),
        scope="layer",
        hessian="ggn",
    )
    _fit(pruned, x, y, epochs=1)
    path = str(tmp_path / f"pruned{suffix}")
    pruned.save(path)
    with tsp.prune_scope():
        loaded = keras.models.load_model(path)
    assert [type(w).__name__ for w in _wrappers(loaded)] == ["PruneStatistically"] * 3
    for a, b in zip(_wrappers(pruned), _wrappers(loaded), strict=True):
        assert b.criterion == "wald" and b.criterion_options == {"hessian": "ggn"}
        assert b.pruning_schedule == a.pruning_schedule
        np.testing.assert_array_equal(a.pruning_vars[0][1].numpy(), b.pruning_vars[0][1].numpy())
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )
    # training goes on from the saved step: the 0.75 level is reached at step 4
    _fit(loaded, x, y, epochs=1)
    mask = _wrappers(loaded)[0].pruning_vars[0][1].numpy()
    assert int((mask == 0).sum()) == round_half_up(0.75 * mask.size)


def test_functional_model_and_layer_selection(tiny_mlp_data):
    _, x, y = tiny_mlp_data
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inputs)
    a = keras.layers.Dense(6, activation="relu", name="a")(h)
    b = keras.layers.Dense(6, activation="relu", name="b")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(
        keras.layers.Concatenate()([a, b])
    )
    model = keras.Model(inputs, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_diag", tsp.OneShotSparsity(0.5), layers=["a", "out"]
    )
    assert sorted(w.layer.name for w in _wrappers(pruned)) == ["a", "out"]
    _fit(pruned, x, y, epochs=1)
    final = tsp.strip_pruning(pruned)
    assert float((final.get_layer("a").kernel.numpy() == 0).mean()) == pytest.approx(0.5, abs=0.02)
    assert float((final.get_layer("b").kernel.numpy() == 0).mean()) == 0.0


def test_prune_once_returns_a_pruned_copy(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    before = [w.copy() for w in model.get_weights()]
    for scope in ("layer", "global"):
        pruned = tsp.prune_once(
            model, (x, y), 0.9, "wald_diag", scope, min_weights_per_class=0, verbose=0
        )
        assert not _wrappers(pruned)
        kernels = _kernels(pruned)
        zeros = [int((k == 0).sum()) for k in kernels.values()]
        if scope == "layer":
            assert zeros == [round_half_up(0.9 * k.size) for k in kernels.values()]
        else:
            assert sum(zeros) == round_half_up(0.9 * sum(k.size for k in kernels.values()))
        biases = [w.numpy() for w in pruned.trainable_weights if "bias" in w.name]
        assert all(np.count_nonzero(bias) > 0 for bias in biases)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    with_bias = tsp.prune_once(model, None, 0.5, "magnitude", prune_bias=True, verbose=0)
    bias = with_bias.get_layer("fc1").bias.numpy()
    assert int((bias == 0).sum()) == round_half_up(0.5 * bias.size)


def test_scores_are_keyed_by_weight_name(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    got = tsp.scores(model, (x, y), "wald_diag", verbose=0)
    assert list(got) == [model.get_layer(n).kernel.name for n in ("fc1", "fc2", "output")]
    assert all(
        s.shape == model.get_layer(n).kernel.shape
        for s, n in zip(got.values(), ("fc1", "fc2", "output"), strict=True)
    )
    rand = tsp.scores(model, None, "random", verbose=0)
    first, second = list(rand.values())[:2]
    assert not np.array_equal(first.ravel()[:10], second.ravel()[:10])


def test_bad_input_gets_a_clear_error(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tsp.prune_once(model, (x, y), 1.0, "magnitude", verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tsp.OneShotSparsity(-0.1)
    with pytest.raises(ValueError, match="empty"):
        tsp.prune_statistically(model, (x[:0], y[:0]), "wald_diag")
    with pytest.raises(ValueError, match="expects"):
        tsp.prune_statistically(model, (x.reshape(60, 16), y), "wald_diag")
    with pytest.raises(ValueError, match="no prunable layers"):
        tsp.prune_statistically(
            keras.Sequential([keras.layers.Flatten(input_shape=(2, 2))]), None, "magnitude"
        )
    with pytest.raises(ValueError, match="unknown criterion 'wold'"):
        tsp.prune_statistically(model, (x, y), "wold")
    with pytest.raises(ValueError, match="does not take"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", hessian="ggn", verbose=0)

    def summed(y_true, y_pred):
        return tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))

    with pytest.raises(ValueError, match="per example"):
        tsp.prune_once(model, (x, y), 0.5, "wald_diag", loss=summed, verbose=0)
    with pytest.raises(ValueError, match="scope"):
        tsp.prune_once(model, (x, y), 0.5, "wald_diag", "network", verbose=0)
    with pytest.raises(ValueError, match="needs statistics"):
        tsp.prune_once(model, None, 0.5, "wald_diag", verbose=0)


def test_statistics_of_a_wrapped_model_take_the_closed_form_path(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(model, (x, y), "wald_diag", tsp.OneShotSparsity(0.5))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    weights = [v for w in _wrappers(pruned) for v, _, _ in w.pruning_vars]
    got = tsp.collect_statistics(pruned, (x, y), weights=weights, verbose=0)
    assert got.generic == []
    plain = tsp.collect_statistics(model, (x, y), verbose=0)
    for v in weights:
        np.testing.assert_allclose(
            got.weights[v.name].sumsq, plain.weights[v.name].sumsq, rtol=RTOL_FLOAT32
        )
