"""BatchNormalization statistics re-estimated after one-shot pruning, against numpy.

The reference for every layer is computed independently of the code under test: a
Keras sub-model from the model's inputs to the layer's input tensor, its outputs in
float64 numpy, ``mean`` and ``var`` over the axes the layer does not keep (with
Bessel's correction where Keras's fused kernel trains the layer), evaluated on the
model *after* recalibration -- so a downstream layer's reference sees the upstream
layers already re-estimated.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.keras.config import PruneSettings, settings_from_arguments
from tfstatprune.keras.recalibration import ChannelMoments, Recalibration, batchnorms_downstream

RTOL = 1e-5  # float32 activations, float64 reductions on both sides
ATOL = 1e-6


def _conv_net(seed: int = 0) -> keras.Model:
    """Conv-BN-ReLU-Conv-BN-ReLU-Dense: two BatchNormalization layers in sequence."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(5, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs)


def _dense_net(**norm: object) -> keras.Model:
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, name="fc"),
            keras.layers.BatchNormalization(name="bn", **norm),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


def _stale(model: keras.Model, value: float = 5.0) -> None:
    """Moving statistics far from anything the data gives."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(tf.fill(layer.moving_mean.shape, value))
            layer.moving_variance.assign(tf.fill(layer.moving_variance.shape, value**2))


def _data(shape: tuple[int, ...], n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, *shape)) * 2.0 + 0.5).astype(np.float32)
    return x, rng.integers(0, 3, n)


def _reference(model: keras.Model, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the input of BatchNormalization ``name`` over ``x``, in numpy."""
    norm = model.get_layer(name)
    probe = keras.Model(model.inputs, norm.input)
    values = np.asarray(probe.predict(x, verbose=0, batch_size=len(x)), np.float64)
    keep = [a - 1 for a in norm.axis] if norm.virtual_batch_size else list(norm.axis)
    reduce = tuple(a for a in range(values.ndim) if a not in keep)
    ddof = 1 if norm.fused else 0
    m = values.size // int(np.prod([values.shape[a] for a in keep]))
    mean = values.mean(axis=reduce, keepdims=True)
    var = ((values - mean) ** 2).sum(axis=reduce, keepdims=True) / (m - ddof)
    shape = norm.moving_mean.shape
    return mean.reshape(shape), var.reshape(shape)


def _assert_matches_reference(model, names, x):
    for name in names:
        mean, var = _reference(model, name, x)
        norm = model.get_layer(name)
        np.testing.assert_allclose(norm.moving_mean.numpy(), mean, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(norm.moving_variance.numpy(), var, rtol=RTOL, atol=ATOL)


def test_two_batchnorms_in_sequence_match_numpy_with_upstream_recalibrated():
    model = _conv_net()
    _stale(model)
    x, y = _data((8, 8, 2))
    before_bn2 = _reference(model, "bn2", x)  # its inputs with bn1 still stale
    done = tsp.recalibrate_batchnorm(model, (x, y), batch_size=7)
    assert done.layers == ["bn1", "bn2"] and done.examples == 40 and done.passes == 2
    assert model.get_layer("bn1").fused  # Bessel's correction applies here
    _assert_matches_reference(model, ["bn1", "bn2"], x)
    # bn2's inputs changed when bn1 was re-estimated: an estimate made before would fail
    assert not np.allclose(model.get_layer("bn2").moving_mean.numpy(), before_bn2[0], rtol=0.01)


@pytest.mark.parametrize(
    "norm",
    [{}, {"virtual_batch_size": 4}],
    ids=["dense-bn", "virtual-batches"],
)
def test_dense_batchnorm_matches_numpy_on_arrays_and_datasets(norm):
    x, y = _data((5,), n=44)
    references = {}
    for form, data in [
        ("x", x),
        ("xy", (x, y)),
        ("batches", tf.data.Dataset.from_tensor_slices((x, y)).batch(12)),
        ("inputs", tf.data.Dataset.from_tensor_slices(x).batch(12)),
        ("examples", tf.data.Dataset.from_tensor_slices((x, y))),
    ]:
        model = _dense_net(**norm)
        _stale(model)
        done = tsp.recalibrate_batchnorm(model, data, batch_size=8, max_examples=32)
        assert done.layers == ["bn"] and done.examples == 32, form
        assert not model.get_layer("bn").fused  # no Bessel's correction here
        _assert_matches_reference(model, ["bn"], x[:32])
        references[form] = model.get_layer("bn").moving_variance.numpy()
    for form, variance in references.items():
        np.testing.assert_allclose(variance, references["x"], rtol=1e-12, err_msg=form)


def test_batchnorm_over_two_axes():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [keras.Input((4, 3)), keras.layers.BatchNormalization(axis=[1, 2], name="bn")]
    )
    _stale(model)
    x, _ = _data((4, 3))
    tsp.recalibrate_batchnorm(model, x)
    assert model.get_layer("bn").moving_mean.shape == (1, 4, 3)
    _assert_matches_reference(model, ["bn"], x)


@pytest.mark.parametrize("shape", [(6, 6, 3), (4,)], ids=["fused", "not-fused"])
def test_the_estimate_is_what_keras_stores_after_one_step_on_all_examples(shape):
    """Against Keras itself: momentum 0, one training-mode call on every example."""
    x, _ = _data(shape, n=12)
    inputs = keras.Input(shape)
    outputs = keras.layers.BatchNormalization(momentum=0.0, name="bn")(inputs)
    trained, recalibrated = keras.Model(inputs, outputs), None
    recalibrated = tsp.copy_model(trained)
    trained(x, training=True)
    tsp.recalibrate_batchnorm(recalibrated, x, batch_size=5)
    for attribute in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            getattr(recalibrated.get_layer("bn"), attribute).numpy(),
            getattr(trained.get_layer("bn"), attribute).numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_channel_moments_merge_is_the_moments_of_the_union():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(101, 4)) * 1e3 + 1e6  # a large mean: the naive formula fails
    merged = ChannelMoments.of(values[:13]).merge(ChannelMoments.of(values[13:60]))
    merged = merged.merge(ChannelMoments.of(values[60:]))
    np.testing.assert_allclose(merged.mean, values.mean(0), rtol=1e-14)
    np.testing.assert_allclose(merged.variance(1), values.var(0, ddof=1), rtol=1e-10)
    with pytest.raises(ValueError, match="more than 1 value"):
        ChannelMoments.of(values[:1]).variance(1)


def test_layers_choose_which_and_bad_names_and_shared_layers_are_refused():
    model = _conv_net()
    _stale(model)
    x, _ = _data((8, 8, 2))
    done = tsp.recalibrate_batchnorm(model, x, layers=["bn2"])
    assert done.layers == ["bn2"] and done.passes == 1
    np.testing.assert_array_equal(model.get_layer("bn1").moving_mean.numpy(), 5.0)
    _assert_matches_reference(model, ["bn2"], x)
    with pytest.raises(ValueError, match="conv1"):
        tsp.recalibrate_batchnorm(model, x, layers=["conv1"])
    inputs = keras.Input((3,))
    norm = keras.layers.BatchNormalization(name="shared")
    shared = keras.Model(inputs, keras.layers.Add()([norm(inputs), norm(2 * inputs)]))
    with pytest.raises(ValueError, match="called more than once"):
        tsp.recalibrate_batchnorm(shared, np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        tsp.recalibrate_batchnorm(model, x[:0])


def test_a_model_without_batchnorm_is_left_as_it_is(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    weights = [w.copy() for w in model.get_weights()]
    assert tsp.recalibrate_batchnorm(model, (x, y)) == Recalibration([], 0, 0)
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)
    # prune_once's default does nothing here: the same copy as with the option off
    auto = tsp.prune_once(model, (x, y), 0.5, "magnitude", verbose=0)
    off = tsp.prune_once(model, (x, y), 0.5, "magnitude", recalibrate_batchnorm=False, verbose=0)
    for got, want in zip(auto.get_weights(), off.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_batchnorms_downstream_follow_every_path():
    model = _conv_net()
    assert [n.name for n in batchnorms_downstream(model, [model.get_layer("conv2")])] == ["bn2"]
    assert [n.name for n in batchnorms_downstream(model, [model.get_layer("conv1")])] == [
        "bn1",
        "bn2",
    ]
    assert batchnorms_downstream(model, [model.get_layer("out")]) == []


def _trained_conv_net() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    model = _conv_net()
    x, y = _data((8, 8, 2), n=64)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model, x, y


def test_prune_once_recalibrates_by_default_on_the_stats_examples_and_keeps_the_user_model(
    capsys,
):
    model, x, y = _trained_conv_net()
    original = [w.copy() for w in model.get_weights()]
    pruned = tsp.prune_once(
        model, (x, y), 0.5, "magnitude", granularity="filter", max_examples=48, batch_size=10
    )
    printed = capsys.readouterr().out
    assert "[tfstatprune] moving mean and variance of 2 BatchNormalization layer(s)" in printed
    assert "on 48 examples" in printed
    _assert_matches_reference(pruned, ["bn1", "bn2"], x[:48])
    for got, want in zip(model.get_weights(), original, strict=True):
        np.testing.assert_array_equal(got, want)  # the user's model, statistics included
    off = tsp.prune_once(
        model,
        (x, y),
        0.5,
        "magnitude",
        granularity="filter",
        recalibrate_batchnorm=False,
        verbose=0,
    )
    for name in ("bn1", "bn2"):
        np.testing.assert_array_equal(
            off.get_layer(name).moving_mean.numpy(), model.get_layer(name).moving_mean.numpy()
        )
    # the same kernels either way: only the statistics differ
    np.testing.assert_array_equal(
        off.get_layer("conv2").kernel.numpy(), pruned.get_layer("conv2").kernel.numpy()
    )


def test_prune_once_recalibrates_only_downstream_of_the_pruned_layers():
    model, x, y = _trained_conv_net()
    pruned = tsp.prune_once(
        model, (x, y), 0.5, "magnitude", granularity="filter", layers=["conv2"], verbose=0
    )
    np.testing.assert_array_equal(
        pruned.get_layer("bn1").moving_variance.numpy(),
        model.get_layer("bn1").moving_variance.numpy(),
    )
    _assert_matches_reference(pruned, ["bn2"], x)


def test_prune_once_without_examples_skips_by_default_and_refuses_when_asked():
    model, _, _ = _trained_conv_net()
    pruned = tsp.prune_once(model, None, 0.5, "magnitude", verbose=0)
    np.testing.assert_array_equal(
        pruned.get_layer("bn2").moving_mean.numpy(), model.get_layer("bn2").moving_mean.numpy()
    )
    with pytest.raises(ValueError, match=r"pass stats_data=\(x, y\)"):
        tsp.prune_once(model, None, 0.5, "magnitude", recalibrate_batchnorm=True, verbose=0)


def test_the_option_is_a_prune_once_setting_refused_where_it_does_nothing():
    prune, _ = settings_from_arguments(recalibrate_batchnorm=False, substeps=2)
    assert prune == PruneSettings(substeps=2, recalibrate_batchnorm=False)
    with pytest.raises(ValueError, match="recalibrate_batchnorm"):
        settings_from_arguments(recalibrate_batchnorm="yes")
    model = _dense_net()
    x, y = _data((5,))
    for name, value in [("recalibrate_batchnorm", True), ("substeps", 2)]:
        with pytest.raises(TypeError, match=f"takes no {name}: it applies to prune_once only"):
            tsp.prune_statistically(model, (x, y), "magnitude", **{name: value})
        with pytest.raises(TypeError, match=f"takes no {name}"):
            tsp.scores(model, (x, y), "magnitude", verbose=0, **{name: value})
