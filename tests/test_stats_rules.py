"""Closed-form statistics rules vs brute force: a float64 per-example loop and the generic path.

Tolerance tiers, relative error in the max norm (``max |got - want| / max |want|``):
- ``RTOL_VS_FLOAT64``: float32 closed forms against a float64 per-example
  GradientTape loop over the same layer built in float64;
- ``RTOL_VS_GENERIC``: closed form against the generic ``vectorized_map`` path,
  both float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

from tfstatprune._keras import keras
from tfstatprune.stats import (
    ConvRule,
    DenseRule,
    GenericPathWarning,
    GradientRule,
    collect_statistics,
    collector,
    register_rule,
    registry,
    rule_for,
)
from tfstatprune.stats.rules import BatchMoments, moments_of

RTOL_VS_FLOAT64 = 1e-5
RTOL_VS_GENERIC = 1e-5
CLASSES = 3
EXAMPLES = 12


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the absolute error when want is 0)."""
    scale = np.abs(want).max()
    error = np.abs(np.asarray(got, np.float64) - want).max()
    return float(error / scale) if scale > 0 else float(error)


def _float64_config(config):
    if isinstance(config, dict):
        return {
            k: "float64" if k == "dtype" and v == "float32" else _float64_config(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    return config


def float64_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights, computing in float64."""
    copy = keras.Sequential.from_config(_float64_config(model.get_config()))
    copy.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return copy


def per_example_gradients(model: keras.Model, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """``[n, *w.shape]`` per-example gradients of every trainable weight, float64, one by one."""
    m64 = float64_copy(model)
    loss = keras.losses.SparseCategoricalCrossentropy(reduction="none")
    x64 = x.astype(np.float64) if x.dtype.kind == "f" else x
    grads = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(y[i : i + 1], m64(x64[i : i + 1], training=False)))
        grads.append(
            [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, m64.trainable_weights)]
        )
    return [np.stack([g[j] for g in grads]) for j in range(len(m64.trainable_weights))]


def classifier(inputs: tuple[int, ...], *layers: keras.layers.Layer) -> keras.Model:
    """``layers`` then Flatten and a softmax Dense, compiled with sparse cross-entropy."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(inputs),
            *layers,
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def randomise_batch_norm(model: keras.Model, rng: np.random.Generator) -> None:
    """Non-trivial gamma, beta and moving statistics for every BatchNormalization layer."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.normal(size=w.shape).astype(np.float32)
                    if "variance" not in w.name
                    else rng.uniform(0.5, 2.0, size=w.shape).astype(np.float32)
                    for w in layer.weights
                ]
            )


def assert_matches_references(model: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
    got = collect_statistics(model, (x, y), batch_size=5, verbose=0)
    assert got.generic == []
    generic = collect_statistics(model, (x, y), closed_form=False, verbose=0)
    want = per_example_gradients(model, x, y)
    for w, g in zip(model.trainable_weights, want, strict=True):
        stats = got.weights[w.name]
        assert relative_error(stats.sum, g.sum(0)) < RTOL_VS_FLOAT64, w.name
        assert relative_error(stats.sumsq, (g**2).sum(0)) < RTOL_VS_FLOAT64, w.name
        other = generic.weights[w.name]
        assert relative_error(stats.sum, other.sum) < RTOL_VS_GENERIC, w.name
        assert relative_error(stats.sumsq, other.sumsq) < RTOL_VS_GENERIC, w.name


def images(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(EXAMPLES, *shape)).astype(np.float32)
    return x, rng.integers(0, CLASSES, EXAMPLES)


CONV2D_CASES = {
    "valid": dict(filters=4, kernel_size=3),
    "same-strided-rect": dict(filters=4, kernel_size=(2, 3), strides=(2, 1), padding="same"),
    "same-dilated-nobias": dict(
        filters=3, kernel_size=3, padding="same", dilation_rate=2, use_bias=False
    ),
    "valid-strided-groups": dict(filters=6, kernel_size=3, strides=2, groups=2),
    "pointwise-relu": dict(filters=5, kernel_size=1, activation="relu"),
}
CONV1D_CASES = {
    "causal-dilated": dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2),
    "same-strided-groups": dict(filters=4, kernel_size=4, strides=2, padding="same", groups=2),
    "valid-tanh-nobias": dict(filters=3, kernel_size=2, activation="tanh", use_bias=False),
}
DEPTHWISE2D_CASES = {
    "same-multiplier": dict(kernel_size=3, depth_multiplier=2, padding="same"),
    "valid-strided-nobias": dict(kernel_size=2, strides=2, use_bias=False),
    "dilated": dict(kernel_size=2, dilation_rate=2, activation="relu"),
}
DEPTHWISE1D_CASES = {
    "valid-multiplier": dict(kernel_size=3, depth_multiplier=2),
    "same-strided": dict(kernel_size=3, strides=2, padding="same"),
}


@pytest.mark.parametrize("config", CONV2D_CASES.values(), ids=CONV2D_CASES)
def test_conv2d(config):
    x, y = images((7, 6, 4))
    assert_matches_references(classifier(x.shape[1:], keras.layers.Conv2D(**config)), x, y)


@pytest.mark.parametrize("config", CONV1D_CASES.values(), ids=CONV1D_CASES)
def test_conv1d(config):
    x, y = images((9, 4))
    assert_matches_references(classifier(x.shape[1:], keras.layers.Conv1D(**config)), x, y)


@pytest.mark.parametrize("config", DEPTHWISE2D_CASES.values(), ids=DEPTHWISE2D_CASES)
def test_depthwise_conv2d(config):
    x, y = images((6, 7, 3))
    layer = keras.layers.DepthwiseConv2D(**config)
    assert_matches_references(classifier(x.shape[1:], layer), x, y)


@pytest.mark.parametrize("config", DEPTHWISE1D_CASES.values(), ids=DEPTHWISE1D_CASES)
def test_depthwise_conv1d(config):
    x, y = images((8, 3))
    layer = keras.layers.DepthwiseConv1D(**config)
    assert_matches_references(classifier(x.shape[1:], layer), x, y)


@pytest.mark.parametrize("sequence", [(5,), ()], ids=["sequence-with-repeats", "one-id"])
def test_embedding(sequence):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, (EXAMPLES, *sequence))  # 4 of 6 ids: repeats and unused rows
    y = rng.integers(0, CLASSES, EXAMPLES)
    model = classifier(sequence, keras.layers.Embedding(6, 3))
    assert_matches_references(model, ids, y)


BATCH_NORM_CASES = {
    "images-last-axis": ((4, 5, 3), dict()),
    "features": ((6,), dict()),
    "axis-1-no-center": ((3, 5), dict(axis=1, center=False)),
    "two-axes-no-scale": ((4, 3), dict(axis=[1, 2], scale=False)),
}


@pytest.mark.parametrize("shape,config", BATCH_NORM_CASES.values(), ids=BATCH_NORM_CASES)
def test_batch_normalization_in_inference_mode(shape, config):
    x, y = images(shape)
    model = classifier(shape, keras.layers.BatchNormalization(**config))
    randomise_batch_norm(model, np.random.default_rng(2))
    assert_matches_references(model, x, y)


def test_several_rules_in_one_model():
    x, y = images((8, 8, 2))
    model = classifier(
        x.shape[1:],
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Dense(5, activation="tanh"),  # on [B, 3, 3, 4]: the rank-4 Dense path
    )
    randomise_batch_norm(model, np.random.default_rng(3))
    assert_matches_references(model, x, y)


@pytest.mark.parametrize("rank", [1, 2])
def test_channels_first_is_channels_last_transposed(rank):
    # CPU kernels do not run channels_first convolutions, so the rule is checked
    # directly: the same layer in both formats, inputs and deltas transposed.
    conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
    config = dict(filters=4, kernel_size=3, strides=2, padding="same")
    rng = np.random.default_rng(4)
    spatial = (7, 6)[:rank]
    last, first = conv(**config), conv(data_format="channels_first", **config)
    last.build((None, *spatial, 3))
    first.build((None, 3, *spatial))
    x = rng.normal(size=(5, *spatial, 3)).astype(np.float32)
    delta = rng.normal(size=(5, *last.compute_output_shape((5, *spatial, 3))[1:])).astype(
        np.float32
    )
    perm = [0, rank + 1, *range(1, rank + 1)]
    want = ConvRule().moments(last, tf.constant(x), tf.constant(delta))
    got = ConvRule().moments(first, tf.transpose(x, perm), tf.transpose(delta, perm))
    for role in ("kernel", "bias"):
        for a, b in zip(got[role], want[role], strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL_VS_FLOAT64, atol=1e-6)


def _dense_ggn_diagonal(model: keras.Model, x: np.ndarray, from_logits: bool) -> list[np.ndarray]:
    """sum_i diag(J_i^T (diag(p_i) - p_i p_i^T) J_i), J_i the float64 Jacobian of the logits."""
    config = _float64_config(model.get_config())
    if not from_logits:
        config["layers"][-1]["config"]["activation"] = "linear"  # logits of the softmax layer
    m64 = keras.Sequential.from_config(config)
    m64.set_weights([w.astype(np.float64) for w in model.get_weights()])
    total = [np.zeros(w.shape) for w in m64.trainable_weights]
    for i in range(len(x)):
        with tf.GradientTape(persistent=True) as tape:
            logits = m64(x[i : i + 1].astype(np.float64))[0]
        jacobians = tape.jacobian(logits, m64.trainable_weights)
        p = tf.nn.softmax(logits).numpy()
        h = np.diag(p) - np.outer(p, p)
        for acc, j in zip(total, jacobians, strict=True):
            j = j.numpy().reshape(len(p), -1)
            acc += np.einsum("ck,cd,dk->k", j, h, j).reshape(acc.shape)
    return total


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed_form", "generic"])
@pytest.mark.parametrize(
    "from_logits", [False, True], ids=["sparse-probabilities", "categorical-logits"]
)
def test_exact_ggn_matches_a_dense_jacobian_computation(from_logits, closed_form):
    x, y = images((5, 5, 2))
    model = classifier(x.shape[1:], keras.layers.Conv2D(3, 3, activation="tanh"))
    if from_logits:
        model.layers[-1].activation = keras.activations.linear
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        y = np.eye(CLASSES, dtype=np.float32)[y]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    got = collect_statistics(
        model, (x, y), loss=loss, hessian="ggn_exact", closed_form=closed_form, verbose=0
    )
    want = _dense_ggn_diagonal(model, x, from_logits)
    for w, exact in zip(model.trainable_weights, want, strict=True):
        stats = got.weights[w.name]
        assert relative_error(stats.curvature, exact) < RTOL_VS_FLOAT64, w.name
        assert relative_error(stats.ggn, exact / len(x)) < RTOL_VS_FLOAT64, w.name


def test_block_criteria_skip_only_the_factored_kernels_diagonal_curvature():
    # diagonal_curvature=False leaves out the per-weight curvature of the kernels
    # with Kronecker factors (Conv2D, Dense) and nothing else: the biases and the
    # depthwise kernel (no factors) keep theirs, equal to the float64 Jacobian
    # reference; the factors are those of a full collection.
    x, y = images((6, 6, 2))
    model = classifier(
        x.shape[1:],
        keras.layers.Conv2D(3, 3, activation="tanh"),
        keras.layers.DepthwiseConv2D(3, activation="tanh"),
    )
    want = _dense_ggn_diagonal(model, x, from_logits=False)
    common = dict(hessian="ggn_exact", kronecker=True, verbose=0)
    full = collect_statistics(model, (x, y), **common)
    got = collect_statistics(model, (x, y), diagonal_curvature=False, **common)
    factored = {model.layers[0].kernel.name, model.layers[-1].kernel.name}
    for w, exact in zip(model.trainable_weights, want, strict=True):
        stats, reference = got.weights[w.name], full.weights[w.name]
        np.testing.assert_array_equal(stats.sumsq, reference.sumsq)
        if w.name in factored:
            assert stats.curvature is None, w.name
            for part in ("inputs", "gradients", "curvature"):
                np.testing.assert_allclose(
                    getattr(stats.kronecker, part), getattr(reference.kronecker, part), rtol=1e-6
                )
        else:
            assert relative_error(stats.curvature, exact) < RTOL_VS_FLOAT64, w.name
    assert set(got.layers) == set(full.layers)


def test_block_scores_are_unchanged_without_the_diagonal_curvature():
    # tsp.scores("wald_block") collects without the factored kernels' diagonal
    # curvature; the scores equal the criterion's on a full collection, and the
    # biases (their own units with prune_bias=True, scored by the diagonal
    # fallback) still get their curvature.
    import tfstatprune as tsp
    from tfstatprune.criteria import wald_block, wald_diag
    from tfstatprune.stats.keys import weight_keys

    x, y = images((6, 6, 2))
    model = classifier(x.shape[1:], keras.layers.Conv2D(3, 3, activation="tanh"))
    got = tsp.scores(model, (x, y), "wald_block", prune_bias=True, verbose=0)
    full = collect_statistics(model, (x, y), hessian="ggn_exact", kronecker=True, verbose=0)
    key = weight_keys(model)
    for layer in (model.layers[0], model.layers[-1]):
        want = wald_block(layer.kernel.numpy(), full.weights[key[layer.kernel]])
        np.testing.assert_allclose(got[key[layer.kernel]], want, rtol=1e-6)
        bias = full.weights[key[layer.bias]]
        want = wald_diag(layer.bias.numpy(), bias, hessian="ggn_exact")
        np.testing.assert_allclose(got[key[layer.bias]], want, rtol=1e-6)


def test_exact_ggn_needs_a_cross_entropy_over_classes():
    x, y = images((4,))
    model = classifier(x.shape[1:])
    with pytest.raises(ValueError, match="cross-entropy"):
        collect_statistics(model, (x, y), loss="mse", hessian="ggn_exact", verbose=0)


def test_chunk_size_follows_what_each_rule_holds():
    # Per example, fisher: conv inputs 6*6*2 = 72, output 4*4*3 = 48, delta 48,
    # patches 16 * (3*3*2) = 288, per-example kernel gradient 54, bias 3; the
    # Dense layer: inputs 48, output 3, delta 3.
    per_example = 72 + 48 + 48 + 288 + 54 + 3 + 48 + 3 + 3
    # With a curvature pass, every delta and rule buffer is held twice.
    per_example_ggn = per_example + 48 + 288 + 54 + 3 + 3
    x, y = images((6, 6, 2))
    model = classifier(x.shape[1:], keras.layers.Conv2D(3, 3))
    budget_mb = 7.5 * per_example * 4 / 2**20  # room for 7 examples
    got = collect_statistics(model, (x, y), memory_budget_mb=budget_mb, verbose=0)
    assert got.chunk_size == 7
    assert got.peak_bytes == 7 * per_example * 4
    ggn = collect_statistics(model, (x, y), hessian="ggn", batch_size=3, verbose=0)
    assert ggn.peak_bytes == 3 * per_example_ggn * 4
    whole = collect_statistics(model, (x, y), batch_size=EXAMPLES, verbose=0)
    for name, stats in whole.weights.items():
        assert relative_error(got.weights[name].sumsq, stats.sumsq) < RTOL_VS_GENERIC


def test_registry_refuses_silent_overwrite(monkeypatch):
    monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))
    with pytest.raises(ValueError, match="already has the rule DenseRule"):
        register_rule(keras.layers.Dense, DenseRule())
    replacement = DenseRule()
    register_rule(keras.layers.Dense, replacement, overwrite=True)
    assert rule_for(keras.layers.Dense(2)) is replacement
    with pytest.raises(TypeError, match="GradientRule"):
        register_rule(keras.layers.Dense, object())
    with pytest.raises(TypeError, match="Layer class"):
        register_rule(int, DenseRule())


def test_registry_lookup_walks_the_mro():
    class MyDense(keras.layers.Dense):
        pass

    class MyConv(keras.layers.Conv2D):
        pass

    assert isinstance(rule_for(MyDense(2)), DenseRule)
    assert isinstance(rule_for(MyConv(2, 3)), ConvRule)
    # Transposed convolutions subclass Conv2D but must not inherit its rule.
    assert rule_for(keras.layers.Conv2DTranspose(2, 3)) is None
    assert rule_for(keras.layers.LSTM(2)) is None


class Scale(keras.layers.Layer):
    """``z = a * w``, elementwise: a layer without a built-in rule."""

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=input_shape[1:], initializer="ones")

    def call(self, inputs):
        return inputs * self.w


class ScaleRule(GradientRule):
    def weights(self, layer):
        return {"w": layer.w}

    def moments(self, layer, inputs, delta):
        return {"w": moments_of(inputs * delta)}


def test_a_registered_rule_replaces_the_generic_path(monkeypatch):
    monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))
    x, y = images((5,))
    model = classifier(x.shape[1:], Scale())
    model.layers[0].w.assign(np.linspace(0.5, 2.0, 5))
    generic = collect_statistics(model, (x, y), closed_form=False, verbose=0)
    register_rule(Scale, ScaleRule())
    got = collect_statistics(model, (x, y), verbose=0)
    assert got.generic == []
    for name, stats in generic.weights.items():
        assert relative_error(got.weights[name].sumsq, stats.sumsq) < RTOL_VS_GENERIC
    assert isinstance(got.weights[model.layers[0].w.name].sum, np.ndarray)
    assert BatchMoments._fields == ("sum", "sumsq")


def test_generic_fallback_warns_once_per_layer_class(monkeypatch):
    monkeypatch.setattr(collector, "_WARNED_CLASSES", set())

    class Unruled(Scale):
        pass

    x, y = images((5,))
    with pytest.warns(GenericPathWarning, match=r"Unruled \(no rule is registered\)"):
        first = collect_statistics(classifier(x.shape[1:], Unruled()), (x, y), verbose=0)
    assert len(first.generic) == 1  # the Unruled layer's w
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericPathWarning)
        collect_statistics(classifier(x.shape[1:], Unruled()), (x, y), verbose=0)
        # Asking for the generic path explicitly is not worth a warning either.
        collect_statistics(classifier(x.shape[1:], Scale()), (x, y), closed_form=False, verbose=0)


def test_unsupported_configuration_falls_back_with_its_reason(monkeypatch):
    monkeypatch.setattr(collector, "_WARNED_CLASSES", set())
    x, y = images((4, 3))
    model = classifier(x.shape[1:], keras.layers.BatchNormalization(virtual_batch_size=2))
    with pytest.warns(GenericPathWarning, match="virtual_batch_size"):
        got = collect_statistics(model, (x, y), batch_size=4, verbose=0)
    assert len(got.generic) == 2  # gamma and beta
