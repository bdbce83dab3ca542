"""Bad inputs get a clear error (or a warning), and nothing the user had is changed.

First the new checks one by one against independent references (a float64
per-example loop, numpy); then one table of bad inputs (input, exception
type, a phrase of its message), each followed by a check that the user's
model weights, its saved file and the data arrays are exactly as before.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import tensorflow as tf
from reference import per_example_gradients, relative_error

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.stats import (
    NonFiniteDataError,
    NoSignalWarning,
    SkippedExamplesWarning,
    WeightStatistics,
    collect_statistics,
)
from tfstatprune.stats.moments import chunk_rounding

N = 64
NAN_AT = (3, 40)  # example indices with a NaN pixel
RTOL_SUMS = 1e-4  # float32 chunk sums vs the float64 per-example loop


@pytest.fixture(scope="module")
def net():
    """A 16-12-3 MLP trained two epochs, its 64 examples and labels (read-only)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(4, 4, 1), name="flatten"),
            keras.layers.Dense(12, activation="tanh", name="fc1"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((N, 4, 4, 1), dtype=np.float32)
    y = x.reshape(N, -1)[:, :3].argmax(1).astype(np.int64)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    x.setflags(write=False)
    y.setflags(write=False)
    return model, x, y


def _with_nan(x: np.ndarray, at: tuple[int, ...] = NAN_AT) -> np.ndarray:
    bad = x.copy()
    for i in at:
        bad[i, 1, 2, 0] = np.nan
    bad.setflags(write=False)
    return bad


# --- item 1: non-finite examples -----------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m, data: tsp.scores(m, data, verbose=0),
        lambda m, data: tsp.prune_once(m, data, 0.5, verbose=0),
        lambda m, data: collect_statistics(m, data, batch_size=16, closed_form=False, verbose=0),
    ],
    ids=["scores", "prune_once", "generic_path"],
)
def test_a_nan_example_is_an_error_naming_count_and_indices(net, call):
    model, x, y = net
    data = tf.data.Dataset.from_tensor_slices((_with_nan(x), y)).batch(16)  # across chunks
    with pytest.raises(NonFiniteDataError, match=r"2 of 64 examples.*\[3, 40\].*skip_nonfinite"):
        call(model, data)


def test_a_nan_example_inside_fit_is_an_error(net):
    model, x, y = net
    data = (_with_nan(x), y)
    pruned = tsp.prune_statistically(model, data, pruning_schedule=tsp.OneShotSparsity(0.5))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(NonFiniteDataError, match=r"2 of 64 examples"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=tsp.callbacks(data, verbose=0))
    skipping = tsp.callbacks(data, verbose=0, skip_nonfinite=True)
    with pytest.warns(SkippedExamplesWarning, match="left out 2 of 64"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=skipping)
    kernel = tsp.strip_pruning(pruned).get_layer("fc1").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("hessian", ["fisher", "ggn_exact"])
def test_skip_nonfinite_uses_exactly_the_other_examples(net, hessian):
    model, x, y = net
    keep = np.setdiff1d(np.arange(N), NAN_AT)
    with pytest.warns(SkippedExamplesWarning, match=r"left out 2 of 64.*\[3, 40\]"):
        got = collect_statistics(
            model, (_with_nan(x), y), hessian=hessian, batch_size=16, skip_nonfinite=True,
            verbose=0,
        )  # fmt: skip
    assert (got.count, got.skipped) == (N - 2, 2)
    grads = per_example_gradients(model, x[keep], y[keep])
    for w, g in zip(model.trainable_weights, grads, strict=True):
        st = got.weights[w.name]
        assert st.count == N - 2
        assert relative_error(st.sum, g.sum(0)) < RTOL_SUMS, w.name
        assert relative_error(st.sumsq, (g**2).sum(0)) < RTOL_SUMS, w.name
    if hessian == "ggn_exact":  # the same as collecting on the clean examples alone
        clean = collect_statistics(model, (x[keep], y[keep]), hessian=hessian, verbose=0)
        for name, st in clean.weights.items():
            assert relative_error(got.weights[name].curvature, st.curvature) < RTOL_SUMS


@pytest.mark.parametrize("value", [np.inf, 1e20], ids=["inf", "1e20"])
def test_infinite_and_huge_inputs_are_named_per_example(net, value):
    model, x, y = net
    bad = x.copy()
    bad[7] *= value  # one example: Inf, or large enough to overflow float32 when squared
    with pytest.raises(NonFiniteDataError, match=r"1 of 64 examples.*\[7\]"):
        tsp.scores(model, (bad, y), verbose=0)
    with pytest.warns(SkippedExamplesWarning):
        got = tsp.scores(model, (bad, y), skip_nonfinite=True, verbose=0)
    assert all(np.isfinite(s).all() and s.any() for s in got.values())


# --- item 2: degenerate statistics -----------------------------------------------------


def test_repeated_examples_give_zero_wald_scores(net):
    # 256 copies of one example: the per-example gradients do not vary, so every
    # Wald statistic is 0 (before: 7-36 % non-zero, up to 1e6-1e8, float32 round-off).
    model, x, y = net
    copies = (np.repeat(x[:1], 256, axis=0), np.repeat(y[:1], 256))
    for name, s in tsp.scores(model, copies, "wald_diag", verbose=0).items():
        np.testing.assert_array_equal(s, 0.0, err_msg=name)


def test_rounding_bound_covers_the_residue_and_keeps_real_variance(net):
    model, x, y = net
    for chunk in (64, 7):
        got = collect_statistics(model, (np.repeat(x[:1], 64, 0), np.repeat(y[:1], 64)),
                                 batch_size=chunk, verbose=0)  # fmt: skip
        for st in got.weights.values():
            assert st.rounding == chunk_rounding(chunk)
            np.testing.assert_array_equal(st.variance, 0.0)
    got = collect_statistics(model, (x, y), verbose=0)  # distinct examples: float64 reference
    for w, g in zip(model.trainable_weights, per_example_gradients(model, x, y), strict=True):
        want = g.var(0)
        assert relative_error(got.weights[w.name].variance, want) < 1e-3, w.name
        assert np.count_nonzero(got.weights[w.name].variance) == np.count_nonzero(want > 0)


def test_too_few_examples_for_a_variance_is_an_error(net):
    model, x, y = net
    with pytest.raises(ValueError, match="needs at least 2 examples"):
        tsp.scores(model, (x[:1], y[:1]), verbose=0)
    with pytest.raises(ValueError, match="needs at least 2 examples"):
        WeightStatistics(1, np.ones(2), np.ones(2)).variance  # noqa: B018
    assert tsp.scores(model, (x[:1], y[:1]), "obd", verbose=0)  # no variance: defined


def test_all_zero_data_warns_naming_the_layers(net):
    model, x, y = net
    with pytest.warns(NoSignalWarning, match=r"\['fc1'\]"):
        tsp.scores(model, (np.zeros_like(x), y), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoSignalWarning)
        tsp.scores(model, (x, y), verbose=0)


# --- the table ---------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    call: Callable[[keras.Model, np.ndarray, np.ndarray], Any]
    error: type[Exception]
    phrase: str


def _subclassed() -> keras.Model:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.fc = keras.layers.Dense(3)

        def call(self, inputs: tf.Tensor) -> tf.Tensor:
            return self.fc(inputs)

    model = Net()
    model(np.zeros((1, 16), np.float32))
    return model


def _keras3_model() -> Any:
    import keras as keras3

    model = keras3.Sequential([keras3.Input((16,)), keras3.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _logits_model(keras_module: Any = keras) -> Any:
    """A logits head compiled with a loss that reads probabilities (a user error)."""
    model = keras_module.Sequential([keras_module.Input((16,)), keras_module.layers.Dense(3)])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def sparse_categorical_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """A user's loss named like Keras' (it could as well take logits)."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def _keras3() -> Any:
    import keras as keras3

    return keras3


def _nan_weights(model: keras.Model) -> keras.Model:
    copy = tsp.copy_model(model)
    kernel = copy.get_layer("fc1").kernel
    kernel.assign(np.where(np.eye(16, 12, dtype=bool), np.nan, kernel.numpy()))
    copy.compile("adam", "sparse_categorical_crossentropy")
    return copy


def _uncompiled_loss(model: keras.Model) -> keras.Model:
    copy = tsp.copy_model(model)
    copy.compile("adam", loss=None)
    return copy


def _fit_with_callbacks(model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
    probe = tsp.copy_model(model)  # fit must fail before it trains, on a copy to be sure
    probe.compile("adam", "sparse_categorical_crossentropy")
    probe.fit(x, y, epochs=1, verbose=0, callbacks=tsp.callbacks((x, y)))


def _labels(y: np.ndarray, at: int, value: Any) -> np.ndarray:
    bad = y.copy()
    bad[at] = value
    return bad


CASES = [
    # item 1: non-finite data
    Case("nan pixels", lambda m, x, y: tsp.scores(m, (_with_nan(x), y), verbose=0),
         NonFiniteDataError, "2 of 64 examples"),
    Case("inf input", lambda m, x, y: tsp.prune_once(m, (x * np.float32(np.inf), y), 0.5,
         verbose=0), NonFiniteDataError, "skip_nonfinite=True"),
    Case("inputs x1e20", lambda m, x, y: tsp.scores(m, (x * np.float32(1e20), y), verbose=0),
         NonFiniteDataError, "too large for float32"),
    Case("nan labels with mse", lambda m, x, y: tsp.scores(
         m, (x, np.full((N, 3), np.nan, np.float32)), loss="mse", verbose=0),
         NonFiniteDataError, "64 of 64 examples"),
    # item 2: too few examples
    Case("one example", lambda m, x, y: tsp.prune_once(m, (x[:1], y[:1]), 0.5, verbose=0),
         ValueError, "needs at least 2 examples"),
    Case("one example wald_block", lambda m, x, y: tsp.prune_once(
         m, (x[:1], y[:1]), 0.5, "wald_block", verbose=0), ValueError, "at least 2 examples"),
    # item 3: labels
    Case("label 12 of 3 classes", lambda m, x, y: tsp.scores(m, (x, _labels(y, 5, 12)),
         verbose=0), ValueError, "found [12] at example indices [5]"),
    Case("label -1", lambda m, x, y: tsp.prune_once(m, (x, _labels(y, 9, -1)), 0.5,
         verbose=0), ValueError, "class indices in [0, 3)"),
    Case("one-hot labels, sparse loss", lambda m, x, y: tsp.scores(
         m, (x, np.eye(3, dtype=np.float32)[y]), verbose=0), ValueError, "y.argmax(-1)"),
    Case("sparse labels, one-hot loss", lambda m, x, y: tsp.scores(
         m, (x, y), loss="categorical_crossentropy", verbose=0), ValueError, "to_categorical"),
    Case("fractional class labels", lambda m, x, y: tsp.scores(
         m, (x, y + 0.5), verbose=0), ValueError, "class indices"),
    # item 5: messages that used to mislead
    Case("nan model weights", lambda m, x, y: tsp.prune_once(_nan_weights(m), (x, y), 0.5,
         verbose=0), ValueError, "the model's weights are not finite: fc1/kernel"),
    Case("nan weights, magnitude", lambda m, x, y: tsp.prune_once(
         _nan_weights(m), None, 0.5, "magnitude", verbose=0), ValueError, "layer 'fc1'"),
    Case("compile(loss=None)", lambda m, x, y: tsp.scores(_uncompiled_loss(m), (x, y),
         verbose=0), ValueError, "compiled with loss=None"),
    Case("string inputs", lambda m, x, y: tsp.scores(m, (x.astype(str), y), verbose=0),
         TypeError, "expects float32"),
    Case("string inputs at wrap", lambda m, x, y: tsp.prune_statistically(m, (x.astype(str), y)),
         TypeError, "dtype str"),
    # checks that already held
    Case("sparsity 1.5", lambda m, x, y: tsp.prune_once(m, (x, y), 1.5, verbose=0),
         ValueError, "sparsity"),
    Case("empty data", lambda m, x, y: tsp.scores(m, (x[:0], y[:0]), verbose=0),
         ValueError, "empty"),
    Case("wrong input shape", lambda m, x, y: tsp.scores(m, (x.reshape(N, 16), y),
         verbose=0), ValueError, "expects"),
    Case("unknown criterion", lambda m, x, y: tsp.prune_once(m, (x, y), 0.5, "wald2",
         verbose=0), ValueError, "wald2"),
    Case("unknown option", lambda m, x, y: tsp.scores(m, (x, y), hessain="ggn", verbose=0),
         ValueError, "does not take the option"),
    Case("unknown layers=", lambda m, x, y: tsp.prune_once(m, (x, y), 0.5, layers=["fc9"],
         verbose=0), ValueError, "fc9"),
    Case("decreasing schedule", lambda m, x, y: tsp.prune_statistically(
         m, (x, y), pruning_schedule=tsp.IterativeSparsity([0.8, 0.5], every=10)),
         ValueError, "decreas"),
    Case("callbacks without wrappers", _fit_with_callbacks, ValueError,
         "no tfstatprune pruning wrappers"),
    Case("subclassed model", lambda m, x, y: tsp.prune_once(_subclassed(), (x, y), 0.5,
         verbose=0), ValueError, "subclassed"),
    Case("probability loss on logits", lambda m, x, y: tsp.scores(
         _logits_model(), (x.reshape(N, 16), y), verbose=0),
         ValueError, "SparseCategoricalCrossentropy(from_logits=True)"),
    Case("keras 3, probability loss on logits", lambda m, x, y: tsp.prune_once(
         _logits_model(_keras3()), (x.reshape(N, 16), y), 0.5, "wald", verbose=0),
         ValueError, "the model outputs logits"),
    Case("own function named like a cross-entropy, exact GGN", lambda m, x, y: tsp.scores(
         m, (x, y), "wald_block", hessian="ggn_exact", loss=sparse_categorical_crossentropy,
         verbose=0), ValueError, "not a function of your own"),
    Case("keras 3 model, label 12", lambda m, x, y: tsp.scores(
         _keras3_model(), (x.reshape(N, 16), _labels(y, 5, 12)), verbose=0),
         ValueError, "found [12] at example indices [5]"),
]  # fmt: skip


def _digest(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory):
    """The user's model on disk, and its hash."""
    path = tmp_path_factory.mktemp("user") / "model.keras"
    net[0].save(path)
    return path, _digest(path)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_table(net, saved, case):
    model, x, y = net
    weights = [w.copy() for w in model.get_weights()]
    x_before, y_before = x.copy(), y.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only the error is under test here
        with pytest.raises(case.error) as caught:
            case.call(model, x, y)
    assert case.phrase in str(caught.value), str(caught.value)
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    path, digest = saved
    assert _digest(path) == digest
