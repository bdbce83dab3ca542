"""The output layer's exact restricted estimator (``refit_output``) against a float64
numpy/scipy transcription of masked multinomial logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import tfstatprune as tsp
from tfstatprune._keras import keras

L2 = 1e-2


def _reference(h, y, kernel, bias, l2):
    """argmin over the nonzero entries of mean CE(softmax(h W + b)) + l2 * sum W^2, float64."""
    free = kernel != 0
    n, classes = h.shape[0], kernel.shape[1]
    onehot = np.eye(classes)[y]

    def f(theta):
        w = np.zeros(kernel.shape)
        w[free] = theta[: free.sum()]
        b = theta[free.sum() :]
        z = h @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        value = -np.log(p[np.arange(n), y]).mean() + l2 * (w**2).sum()
        g = (p - onehot) / n
        return value, np.concatenate([(h.T @ g + 2 * l2 * w)[free], g.sum(0)])

    theta = np.concatenate([kernel[free], bias]).astype(np.float64)
    result = scipy.optimize.minimize(f, theta, jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    w = np.zeros(kernel.shape)
    w[free] = result.x[: free.sum()]
    return w, result.x[free.sum() :], result.fun


def _classifier(seed=0, head_activation=None):
    """Dense(6) -> Dense(4) (softmax inside it, or in an Activation layer after it), with
    half the output kernel zeroed, and 300 labelled examples."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, "tanh", name="hidden")(inputs)
    out = keras.layers.Dense(
        4,
        head_activation is None and "softmax" or None,
        kernel_regularizer=keras.regularizers.l2(L2),
        name="out",
    )(hidden)
    if head_activation is not None:
        out = keras.layers.Activation(head_activation, name="probs")(out)
    model = keras.Model(inputs, out)
    kernel = rng.normal(size=(6, 4)).astype(np.float32)
    kernel[rng.random((6, 4)) < 0.5] = 0.0
    model.get_layer("out").set_weights([kernel, rng.normal(size=4).astype(np.float32)])
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = rng.integers(0, 4, 300)
    return model, x, y


@pytest.mark.parametrize("head_activation", [None, "softmax"])
def test_the_refit_is_the_restricted_minimiser_of_the_reference(head_activation):
    model, x, y = _classifier(head_activation=head_activation)
    hidden_before = [w.copy() for w in model.get_layer("hidden").get_weights()]
    kernel, bias = model.get_layer("out").get_weights()
    h = keras.Model(model.inputs, model.get_layer("hidden").output).predict(x, verbose=0)
    w_ref, b_ref, loss_ref = _reference(h.astype(np.float64), y, kernel, bias, L2)

    done = tsp.refit_output_layer(model, (x, y), loss="sparse_categorical_crossentropy")

    new_kernel, new_bias = model.get_layer("out").get_weights()
    assert done.layer == "out" and done.examples == 300
    assert done.free == int((kernel != 0).sum()) + 4
    assert np.array_equal(new_kernel == 0, kernel == 0)  # the zeros held, the rest moved
    assert done.loss_after == pytest.approx(loss_ref, rel=1e-5)
    # float32 resolves the objective to ~1e-7 and these weights (measured: <= 7e-4) ...
    np.testing.assert_allclose(new_kernel, w_ref, atol=3e-3)
    np.testing.assert_allclose(new_bias, b_ref, atol=3e-3)
    # ... which is far from where they started.
    assert np.abs(kernel - w_ref).max() > 0.3
    for before, after in zip(hidden_before, model.get_layer("hidden").get_weights(), strict=True):
        assert np.array_equal(before, after)


def test_prune_once_refits_the_copy_and_leaves_the_model(capsys):
    model, x, y = _classifier(seed=1)
    model.compile(loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    plain = tsp.prune_once(model, (x, y), 0.5, "wald_block", verbose=0)
    refit = tsp.prune_once(model, (x, y), 0.5, "wald_block", verbose=1, refit_output=True)
    assert "output layer 'out' refit on 300 examples" in capsys.readouterr().out
    for a, b in zip(before, model.get_weights(), strict=True):
        assert np.array_equal(a, b)
    for name in ("hidden", "out"):
        kept = [w != 0 for w in plain.get_layer(name).get_weights()]
        assert all(
            np.array_equal(k, w != 0)
            for k, w in zip(kept, refit.get_layer(name).get_weights(), strict=True)
        )
    assert np.array_equal(plain.get_layer("hidden").kernel, refit.get_layer("hidden").kernel)
    loss = keras.losses.SparseCategoricalCrossentropy()
    assert float(loss(y, refit(x))) < float(loss(y, plain(x)))


def test_a_model_whose_output_is_no_dense_layer_is_refused_before_the_statistics():
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    out = keras.layers.GlobalAveragePooling2D(name="pool")(conv)
    model = keras.Model(inputs, out)
    model.compile(loss="mse")
    x, y = np.zeros((4, 8, 8, 1), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="comes from layer 'pool' .*refit_output=False"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", verbose=0, refit_output=True)


def test_refit_output_needs_examples_and_a_bool():
    model, _, _ = _classifier()
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="refit_output=True fits the output layer"):
        tsp.prune_once(model, None, 0.5, "magnitude", verbose=0, refit_output=True)
    with pytest.raises(ValueError, match="refit_output must be True or False"):
        tsp.prune_once(model, None, 0.5, "magnitude", verbose=0, refit_output="yes")


def test_a_nonfinite_loss_is_an_error_and_the_layer_is_left_as_it_was():
    model, x, y = _classifier()
    x[3, 2] = np.nan
    kernel = model.get_layer("out").kernel.numpy()
    with pytest.raises(ValueError, match="NaN/Inf"):
        tsp.refit_output_layer(model, (x, y), loss="sparse_categorical_crossentropy")
    assert np.array_equal(model.get_layer("out").kernel.numpy(), kernel)


def test_too_few_examples_per_free_weight_is_an_error_not_a_memorised_fit():
    model, x, y = _classifier()
    free = int((model.get_layer("out").kernel.numpy() != 0).sum()) + 4
    kernel = model.get_layer("out").kernel.numpy()
    few = 10 * free - 1
    with pytest.raises(ValueError, match=rf"{free} free weights .* on {few} examples"):
        tsp.refit_output_layer(model, (x[:few], y[:few]), loss="sparse_categorical_crossentropy")
    assert np.array_equal(model.get_layer("out").kernel.numpy(), kernel)
    done = tsp.refit_output_layer(
        model, (x, y), loss="sparse_categorical_crossentropy", max_examples=few + 1
    )
    assert done.examples == few + 1


def _dense_classifier():
    """Dense(6) -> Dense(4, softmax), every weight nonzero (glorot init), 400 examples."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, "tanh", name="hidden"),
            keras.layers.Dense(4, "softmax", name="out"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(400, 5)).astype(np.float32), rng.integers(0, 4, 400)


@pytest.mark.parametrize(
    ("arguments", "examples", "free"),
    [(dict(sparsity=0.25), 170, 18), (dict(sparsity=0.5, layers=["hidden"]), 230, 24)],
)
def test_too_few_examples_for_the_refit_fail_before_the_statistics(
    monkeypatch, arguments, examples, free
):
    model, x, y = _dense_classifier()

    def collected(*args, **kwargs):
        raise AssertionError("the statistics were collected")

    monkeypatch.setattr("tfstatprune.keras.api.prune_step", collected)
    sparsity = arguments.pop("sparsity")
    with pytest.raises(ValueError, match=rf"at least the {free} free weights .* {examples} "):
        tsp.prune_once(
            model, (x[:examples], y[:examples]), sparsity, "magnitude", refit_output=True,
            verbose=0, **arguments,
        )  # fmt: skip
    # enough examples for the bound: the pre-check passes and the statistics are collected
    with pytest.raises(AssertionError, match="statistics were collected"):
        tsp.prune_once(
            model, (x[: 10 * free], y[: 10 * free]), sparsity, "magnitude", refit_output=True,
            verbose=0, **arguments,
        )  # fmt: skip


@pytest.mark.parametrize(
    "arguments", [dict(scope="global"), dict(granularity="unit", layers=["out"])]
)
def test_where_no_bound_holds_the_examples_are_counted_after_pruning(arguments):
    model, x, y = _dense_classifier()
    with pytest.raises(ValueError, match=r"refit_output would fit the \d+ free weights"):
        tsp.prune_once(
            model, (x[:100], y[:100]), 0.5, "magnitude", refit_output=True, verbose=0,
            **arguments,
        )  # fmt: skip


def test_an_interrupted_fit_leaves_the_layer_as_it_was(monkeypatch):
    model, x, y = _classifier()
    before = [w.copy() for w in model.get_layer("out").get_weights()]

    def interrupted(fun, theta, **kwargs):
        fun(theta + 1.0)  # the variables now hold other values
        raise KeyboardInterrupt

    monkeypatch.setattr("scipy.optimize.minimize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tsp.refit_output_layer(model, (x, y), loss="sparse_categorical_crossentropy")
    for a, b in zip(before, model.get_layer("out").get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_a_shared_output_layer_is_refused():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match="'shared' called once; it is called 2 times"):
        tsp.refit_output_layer(model, (np.zeros((90, 4)), np.zeros((90, 4))), loss="mse")
