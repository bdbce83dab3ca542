"""Dropout rate (Han et al. 2015) and BatchNormalization reset after pruning."""

from __future__ import annotations

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.keras.adjust import adjust_after_pruning, batchnorms_after, dropouts_before


def _sequential(momentum=0.99):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="fc1"),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.Dense(8, name="fc2"),
            keras.layers.BatchNormalization(momentum=momentum, name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, activation="softmax", name="output"),
        ]
    )


def _functional():
    inputs = keras.Input((4, 2))
    a = keras.layers.Dropout(0.4, name="d1")(inputs)
    a = keras.layers.Flatten(name="flat")(a)
    a = keras.layers.Dense(6, name="a")(a)
    b = keras.layers.Dropout(0.2, name="d2")(keras.layers.Flatten(name="flat2")(inputs))
    b = keras.layers.Dense(6, name="b")(b)
    merged = keras.layers.Add(name="add")([a, b])
    merged = keras.layers.BatchNormalization(name="bn")(merged)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(merged))


def test_graph_walks_find_the_dropout_before_and_the_batchnorm_after():
    model = _sequential()
    assert [d.name for d in dropouts_before(model, model.get_layer("fc2"))] == ["drop"]
    assert dropouts_before(model, model.get_layer("fc1")) == []
    assert [b.name for b in batchnorms_after(model, model.get_layer("fc2"))] == ["bn"]
    assert batchnorms_after(model, model.get_layer("output")) == []
    functional = _functional()
    assert [d.name for d in dropouts_before(functional, functional.get_layer("a"))] == ["d1"]
    assert [d.name for d in dropouts_before(functional, functional.get_layer("b"))] == ["d2"]
    # Add is not looked through
    assert batchnorms_after(functional, functional.get_layer("a")) == []


def test_adjust_scales_the_rate_by_sqrt_of_kept_connections_and_resets_statistics():
    model = _sequential()
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.make_train_function()
    traced = model.train_function
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(8, 3.0, np.float32))
    bn.moving_variance.assign(np.full(8, 7.0, np.float32))
    done = adjust_after_pruning(model, {model.get_layer("fc2"): (64, 16)})
    assert model.get_layer("drop").rate == pytest.approx(0.5 * np.sqrt(16 / 64))
    assert done.dropout == {"drop": (0.5, pytest.approx(0.25))} and done.batchnorm == ["bn"]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)
    assert model.train_function is not traced  # re-traced: fit uses the new rate
    # a second pruning step telescopes: D_o sqrt(C_2 / C_o)
    adjust_after_pruning(model, {model.get_layer("fc2"): (16, 4)}, batchnorm=False)
    assert model.get_layer("drop").rate == pytest.approx(0.5 * np.sqrt(4 / 64))
    functional = _functional()
    adjust_after_pruning(functional, {functional.get_layer("a"): (8, 2)}, batchnorm=False)
    assert functional.get_layer("d1").rate == pytest.approx(0.2)
    assert functional.get_layer("d2").rate == pytest.approx(0.2)


@pytest.mark.parametrize(
    "schedule, options, adjusted",
    [
        ("iterative", {}, True),
        ("one-shot", {}, False),
        ("one-shot", {"adjust_dropout": True, "reset_batchnorm": True}, True),
    ],
)
def test_statistical_pruning_adjusts_in_iterative_mode_by_default(schedule, options, adjusted):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = _sequential(momentum=1.0)  # moving statistics never move: a reset shows
    model.get_layer("bn").moving_mean.assign(np.full(8, 3.0, np.float32))
    pruning_schedule = (
        tsp.IterativeSparsity([0.5, 0.75], every=2)
        if schedule == "iterative"
        else tsp.OneShotSparsity(0.75)
    )
    wrapped = tsp.prune_statistically(model, None, "magnitude", pruning_schedule)
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(
        x,
        y,
        batch_size=10,
        epochs=1,
        verbose=0,
        callbacks=tsp.callbacks(None, verbose=0, **options),
    )
    rate = wrapped.get_layer("drop").rate
    mean = wrapped.get_layer("bn").moving_mean.numpy()
    if adjusted:
        assert rate == pytest.approx(0.5 * np.sqrt(0.25))
        np.testing.assert_array_equal(mean, 0.0)
    else:
        assert rate == 0.5
        np.testing.assert_array_equal(mean, 3.0)
