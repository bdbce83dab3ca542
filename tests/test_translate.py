"""Keras 3 models in, Keras 3 models out (:mod:`tfstatprune._translate`).

The reference is always the user's own Keras 3 model: a translation must
predict what it predicts (max |diff| <= 1e-5) and hold its weights under the
same layer and role names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

import tfstatprune as tsp
from tfstatprune import _translate
from tfstatprune._keras import keras
from tfstatprune.stats import NonFiniteDataError

ATOL = 1e-5
L3 = keras3.layers
ROOT = Path(__file__).resolve().parent.parent


def _functional(shape, *layers, dtype="float32"):
    x = keras3.Input(shape, dtype=dtype, name="x")
    y = x
    for layer in layers:
        y = layer(y)
    return keras3.Model(x, y, name="net")


def _merge():
    x = keras3.Input((4, 6), name="x")
    a = L3.Dense(6, name="a")(x)
    b = L3.Add(name="add")([x, a])
    c = L3.Concatenate(name="cat")([b, x])
    d = L3.Multiply(name="mul")([a, b])
    return keras3.Model(x, [L3.Flatten()(c), d], name="merge")


def _attention():
    x = keras3.Input((5, 6), name="x")
    y = L3.MultiHeadAttention(2, 3, name="mha")(x, x)
    return keras3.Model(x, L3.Dense(2, name="head")(y) * 0.5 + 1.0)


def _nested_and_shared():
    base = keras3.Sequential([keras3.Input((4,)), L3.Dense(5, activation="relu")], name="base")
    x = keras3.Input((4,), name="x")
    shared = L3.Dense(4, name="shared")
    return keras3.Model(x, L3.Dense(2, name="head")(base(shared(shared(x)))))


def _adapted_normalization():
    norm = L3.Normalization(name="norm")
    norm.adapt(np.random.default_rng(1).random((32, 3)) * 5)
    return _functional((3,), norm, L3.Dense(2, name="fc"))


MODELS = {
    "dense": lambda: _functional((3,), L3.Dense(4, activation="relu"), L3.Dense(2)),
    "sequential": lambda: keras3.Sequential(
        [keras3.Input((3,)), L3.Dense(4, activation="hard_silu"), L3.Dense(2)]
    ),
    "conv1d": lambda: _functional((8, 2), L3.Conv1D(3, 3), L3.MaxPooling1D(), L3.Flatten()),
    "conv2d": lambda: _functional(
        (8, 8, 2), L3.Conv2D(3, 3, padding="same"), L3.AveragePooling2D(2), L3.Flatten()
    ),
    "conv3d": lambda: _functional((4, 4, 4, 2), L3.Conv3D(2, 3), L3.GlobalMaxPooling3D()),
    "depthwise": lambda: _functional(
        (8, 8, 2), L3.DepthwiseConv2D(3, depth_multiplier=2), L3.DepthwiseConv2D(1)
    ),
    "depthwise1d": lambda: _functional((8, 2), L3.DepthwiseConv1D(3)),
    "separable": lambda: _functional(
        (8, 8, 2), L3.SeparableConv2D(4, 3), L3.SeparableConv2D(2, 1), L3.Flatten()
    ),
    "separable1d": lambda: _functional((8, 2), L3.SeparableConv1D(3, 3)),
    "batchnorm": lambda: _functional(
        (6, 6, 2), L3.BatchNormalization(), L3.ReLU(6.0), L3.GlobalAveragePooling2D()
    ),
    "layernorm": lambda: _functional((4, 3), L3.LayerNormalization(), L3.Dropout(0.5)),
    "embedding_lstm_gru": lambda: _functional(
        (5,),
        L3.Embedding(10, 4),
        L3.LSTM(3, return_sequences=True),
        L3.GRU(2),
        dtype="int32",
    ),
    "activations": lambda: _functional(
        (6,),
        L3.Activation("hard_sigmoid"),
        L3.LeakyReLU(0.2),
        L3.Activation("swish"),
        L3.Dense(3, activation="hard_swish"),
        L3.Softmax(),
    ),
    "reshape_rescaling": lambda: _functional(
        (6,),
        L3.Rescaling(0.5, offset=0.1),
        L3.Normalization(mean=0.2, variance=2.0),
        L3.Reshape((3, 2)),
        L3.Flatten(),
    ),
    "normalization_adapted": _adapted_normalization,
    "add_concatenate_multiply": _merge,
    "multi_head_attention_and_ops": _attention,
    "nested_model_and_shared_layer": _nested_and_shared,
    "bidirectional_time_distributed": lambda: _functional(
        (5, 3), L3.TimeDistributed(L3.Dense(2)), L3.Bidirectional(L3.LSTM(2))
    ),
}


def _randomize(model, seed=0):
    """Weights away from their initial values (variances positive, adapted states kept)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L3.Normalization):
            continue
        for w in layer.weights:
            value = rng.standard_normal(tuple(w.shape)) * 0.5
            if "variance" in w.path:
                value = np.abs(value) + 0.5
            w.assign(value.astype(w.dtype))
    return model


def _predict(model, x):
    out = model(x[0] if isinstance(x, list) and len(x) == 1 else x, training=False)
    return [np.asarray(keras3.ops.convert_to_numpy(y)) for y in tf.nest.flatten(out)]


def _weights_by_path(model):
    return {w.path: np.asarray(w.numpy()) for w in model.weights}


@pytest.mark.parametrize("name", list(MODELS))
def test_each_layer_kind_translates_both_ways(name):
    original = _randomize(MODELS[name]())
    x = _translate.sample_inputs(original)
    expected = _predict(original, x)
    before = _weights_by_path(original)

    translated = tsp.to_tf_keras(original)
    assert isinstance(translated, keras.Model)
    assert [layer.name for layer in translated.layers if type(layer).__name__ != "TFOpLambda"] == [
        layer.name for layer in original.layers if isinstance(layer, L3.Layer)
    ]  # Keras 3 ops (``y * 0.5``) become tf_keras TFOpLambda layers
    for got, want in zip(_predict(translated, x), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)

    back = tsp.to_keras3(translated)
    assert type(back).__module__.startswith("keras.")
    for got, want in zip(_predict(back, x), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    assert _weights_by_path(back).keys() == before.keys()
    for path, value in _weights_by_path(back).items():
        np.testing.assert_array_equal(value, before[path])
    for path, value in _weights_by_path(original).items():  # the user's model is untouched
        np.testing.assert_array_equal(value, before[path])


def test_weights_are_copied_by_role_not_position():
    """A registered layer that creates its weights in the other order still gets them right."""

    class Affine3(L3.Layer):
        def build(self, shape):
            self.kernel = self.add_weight(name="kernel", shape=(shape[-1], 2))
            self.bias = self.add_weight(name="bias", shape=(2,))

        def call(self, x):
            return x @ self.kernel + self.bias

    class Affine2(keras.layers.Layer):
        def build(self, shape):
            self.bias = self.add_weight(name="bias", shape=(2,))  # bias first
            self.kernel = self.add_weight(name="kernel", shape=(shape[-1], 2))

        def call(self, x):
            return tf.matmul(x, self.kernel) + self.bias

    model = _randomize(_functional((2,), Affine3(name="affine")))
    with pytest.raises(tsp.TranslationError, match=r"'affine'.*register_translation\(Affine3"):
        tsp.to_tf_keras(model)
    tsp.register_translation(Affine3, lambda layer: Affine2(name=layer.name))
    try:
        with pytest.raises(ValueError, match="already has a translation"):
            tsp.register_translation(Affine3, lambda layer: None)
        translated = tsp.to_tf_keras(model)
    finally:
        _translate._TRANSLATIONS.pop(Affine3)
    affine = translated.get_layer("affine")
    np.testing.assert_array_equal(affine.kernel.numpy(), model.get_layer("affine").kernel.numpy())
    np.testing.assert_array_equal(affine.bias.numpy(), model.get_layer("affine").bias.numpy())
    assert [w.name for w in affine.weights][0].endswith("bias:0")  # positions differ


def test_depthwise_kernel_role_and_attention_roles():
    model = _randomize(MODELS["depthwise"]())
    layer3 = model.layers[1]
    layer2 = tsp.to_tf_keras(model).get_layer(layer3.name)
    np.testing.assert_array_equal(layer2.depthwise_kernel.numpy(), layer3.kernel.numpy())
    mha3 = _randomize(_attention()).get_layer("mha")
    roles = _translate._roles(mha3, _translate._side(3))
    assert sorted(roles) == sorted(
        f"{part}/{kind}"
        for part in ("query", "key", "value", "attention_output")
        for kind in ("kernel", "bias")
    )


def test_untranslatable_op_and_option_name_the_layer():
    x = keras3.Input((3,), name="x")
    model = keras3.Model(x, keras3.ops.sin(L3.Dense(2, name="fc")(x)))
    with pytest.raises(tsp.TranslationError, match=r"backend operation.*register_translation"):
        tsp.to_tf_keras(model)
    rms = _functional((3,), L3.LayerNormalization(rms_scaling=True, name="ln"))
    with pytest.raises(tsp.TranslationError, match=r"'ln'.*rms_scaling=True"):
        tsp.to_tf_keras(rms)
    with pytest.raises(TypeError, match="subclassed"):

        class Sub(keras3.Model):
            def call(self, x):
                return x

        tsp.to_tf_keras(Sub())


def test_prediction_check_catches_a_wrong_translation():
    """A registered translation that computes something else is refused, not used."""

    class Twice(L3.Layer):
        def call(self, x):
            return 2.0 * x

    model = _functional((3,), Twice(name="twice"))
    tsp.register_translation(Twice, lambda layer: keras.layers.Rescaling(3.0, name=layer.name))
    try:
        with pytest.raises(tsp.TranslationError, match=r"max \|diff\|.*Layer .twice. computes"):
            tsp.to_tf_keras(model)
    finally:
        _translate._TRANSLATIONS.pop(Twice)


def test_mobilenet_v3_small_translates_both_ways():
    """keras.applications (ops, hard_swish, SE blocks, Rescaling); the rest in benchmarks/."""
    model = keras3.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classifier_activation=None
    )
    x = _translate.sample_inputs(model, count=2)
    expected = _predict(model, x)
    back = tsp.to_keras3(tsp.to_tf_keras(model))
    np.testing.assert_allclose(_predict(back, x)[0], expected[0], rtol=0, atol=ATOL)
    assert [layer.name for layer in back.layers if not layer.name.startswith("tf.")] == [
        layer.name for layer in model.layers if isinstance(layer, L3.Layer)
    ]


# ------------------------------------------------------------ the entry points


@pytest.fixture(scope="module")
def small_cnn():
    keras3.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((96, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean((1, 2, 3)) > x[:, 4:].mean((1, 2, 3))).astype("int64")
    model = keras3.Sequential(
        [
            keras3.Input((8, 8, 1)),
            L3.Conv2D(4, 3, activation="relu", name="conv"),
            L3.Flatten(name="flatten"),
            L3.Dense(16, activation="relu", name="fc"),
            L3.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    return model, x, y


def test_full_path_keras3_in_keras3_out(small_cnn, tmp_path):
    from tflite_export import export

    model, x, y = small_cnn
    before = _weights_by_path(model)
    wrapped = tsp.prune_statistically(model, (x, y), "wald_diag", tsp.OneShotSparsity(0.5))
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=tsp.callbacks((x, y)))
    reference = tsp.strip_pruning(wrapped, keras_version=2)
    final = tsp.strip_pruning(wrapped)
    assert isinstance(reference, keras.Model) and type(final).__module__.startswith("keras.")
    assert [layer.name for layer in final.layers] == [layer.name for layer in model.layers]
    for name in ("conv", "fc", "out"):
        kernel = np.asarray(final.get_layer(name).kernel.numpy())
        assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.02)
        np.testing.assert_array_equal(kernel, reference.get_layer(name).kernel.numpy())
    np.testing.assert_allclose(_predict(final, x)[0], reference(x).numpy(), rtol=0, atol=ATOL)

    report = export(final, tmp_path / "cnn.tflite", verbose=False)
    assert report.validation.passed
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "cnn.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x[:1])
    interpreter.invoke()
    np.testing.assert_allclose(
        interpreter.get_tensor(out["index"]), _predict(final, x[:1])[0], rtol=0, atol=ATOL
    )
    for path, value in _weights_by_path(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_batchnorm_recalibration_of_a_keras3_model():
    keras3.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 6, 6, 2)).astype("float32") + 1.0
    y = np.arange(32) % 2
    model = _functional(
        (6, 6, 2),
        L3.Conv2D(4, 3, name="conv"),
        L3.BatchNormalization(name="bn"),
        L3.ReLU(),
        L3.Flatten(),
        L3.Dense(2, activation="softmax", name="out"),
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match="to_tf_keras"):
        tsp.recalibrate_batchnorm(model, x)
    kept = np.array(model.get_layer("bn").moving_mean.numpy())
    on = tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity="filter", verbose=0)
    off = tsp.prune_once(
        model,
        (x, y),
        0.5,
        "magnitude",
        granularity="filter",
        recalibrate_batchnorm=False,
        verbose=0,
    )
    assert type(on).__module__.startswith("keras.")
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean.numpy(), kept)
    np.testing.assert_array_equal(off.get_layer("bn").moving_mean.numpy(), kept)
    probe = keras3.Model(on.inputs, on.get_layer("bn").input)
    inputs = np.asarray(probe.predict(x, verbose=0), np.float64)
    np.testing.assert_allclose(
        on.get_layer("bn").moving_mean.numpy(), inputs.mean((0, 1, 2)), rtol=1e-5, atol=1e-6
    )


def test_prune_once_scores_and_shrink_answer_in_keras3(small_cnn):
    model, x, y = small_cnn
    got = tsp.scores(model, (x, y), "magnitude", verbose=0)
    kernels = [model.get_layer(name).kernel for name in ("conv", "fc", "out")]
    assert list(got) == [k.path for k in kernels]  # Keras 3's names, not tf_keras'
    np.testing.assert_array_equal(got[kernels[1].path], np.abs(kernels[1].numpy()))
    pruned = tsp.prune_once(model, (x, y), 0.5, "magnitude", verbose=0)
    assert type(pruned).__module__.startswith("keras.")
    fc = np.asarray(pruned.get_layer("fc").kernel.numpy())
    assert int((fc == 0).sum()) == fc.size // 2
    as_tf = tsp.prune_once(model, (x, y), 0.5, "magnitude", verbose=0, keras_version=2)
    assert isinstance(as_tf, keras.Model)
    np.testing.assert_array_equal(as_tf.get_layer("fc").kernel.numpy(), fc)
    units = tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity="unit", verbose=0)
    small = tsp.shrink(units)
    assert type(small.model).__module__.startswith("keras.")
    assert small.model.get_layer("fc").kernel.shape == (6 * 6 * 2, 8)  # half the filters, units
    np.testing.assert_allclose(_predict(small.model, x)[0], _predict(units, x)[0], atol=ATOL)
    with pytest.raises(ValueError, match="keras_version must be 2"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", verbose=0, keras_version=4)
    cut = tsp.prune_by_threshold(model, 0.1)
    assert type(cut).__module__.startswith("keras.")
    kernel = model.get_layer("fc").kernel.numpy()
    np.testing.assert_array_equal(
        cut.get_layer("fc").kernel.numpy(), np.where(np.abs(kernel) < 0.1, 0.0, kernel)
    )


def test_compiled_loss_object_and_user_data_reach_the_translation(small_cnn):
    model, x, y = small_cnn
    logits = keras3.Sequential(
        [keras3.Input((8, 8, 1)), L3.Flatten(), L3.Dense(2, name="out")], name="logits"
    )
    logits.compile(loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    translated = tsp.to_tf_keras(logits)
    assert isinstance(translated.loss, keras.losses.SparseCategoricalCrossentropy)
    assert translated.loss.get_config()["from_logits"] is True
    got = tsp.scores(logits, (x, y), "wald_diag", verbose=0)
    assert list(got) == [logits.get_layer("out").kernel.path]
    np.testing.assert_array_equal(_translate.sample_inputs(model, (x, y))[0], x[:8])
    np.testing.assert_array_equal(
        _translate.sample_inputs(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))[0],
        x[:4],
    )


def test_a_keras3_loss_passed_as_loss_is_the_tf_keras_loss_it_names(small_cnn):
    """``loss=`` a Keras 3 Loss object (its from_logits kept) or built-in function gives the
    scores of the tf_keras loss of the same name on the translated model."""
    _, x, y = small_cnn
    logits = keras3.Sequential(
        [keras3.Input((8, 8, 1)), L3.Flatten(), L3.Dense(2, name="out")], name="logits2"
    )
    translated = tsp.to_tf_keras(logits)
    want = tsp.scores(
        translated,
        (x, y),
        "wald_block",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        verbose=0,
    )
    (want,) = want.values()
    got = tsp.scores(
        logits,
        (x, y),
        "wald_block",
        loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
        verbose=0,
    )[logits.get_layer("out").kernel.path]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    softmax = keras3.Sequential(
        [keras3.Input((8, 8, 1)), L3.Flatten(), L3.Dense(2, activation="softmax", name="out")]
    )
    scored = tsp.scores(
        softmax, (x, y), "wald_block", loss=keras3.losses.sparse_categorical_crossentropy, verbose=0
    )
    assert np.isfinite(next(iter(scored.values()))).all()


def test_tf_keras_alias_works_in_this_process():
    """``tf.keras`` here is tf_keras (tfmot sets TF_USE_LEGACY_KERAS=1 on import): kept."""
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, name="fc")])
    pruned = tsp.prune_once(model, None, 0.5, "magnitude", verbose=0)
    assert type(pruned) is type(model)


@pytest.mark.skipif(
    not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
    reason="a fresh TensorFlow process takes about 25 s; set TFSTATPRUNE_SLOW_TESTS=1 to run",
)
def test_tf_keras_alias_as_keras3_is_translated():
    """TF_USE_LEGACY_KERAS=0 and ``tf.keras`` used before tfstatprune: Keras 3 in and out."""
    script = textwrap.dedent(
        """
        import tensorflow as tf
        m = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
        import tfstatprune as tsp
        p = tsp.prune_once(m, None, 0.5, "magnitude", verbose=0)
        print(type(m).__module__.split(".")[0], type(p).__module__.split(".")[0])
        """
    )
    env = dict(os.environ, TF_USE_LEGACY_KERAS="0", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["keras", "keras"]


def test_load_model_and_cli_export_of_a_keras3_file(small_cnn, tmp_path, capsys):
    from tfstatprune import cli

    model, x, _ = small_cnn
    path = tmp_path / "cnn.keras"
    model.save(path)
    assert _translate.saved_keras_version(path) == 3
    loaded = tsp.load_model(path)
    assert type(loaded).__module__.startswith("keras.")
    as_tf = tsp.load_model(path, keras_version=2)
    assert isinstance(as_tf, keras.Model)
    np.testing.assert_allclose(as_tf(x[:4]).numpy(), _predict(model, x[:4])[0], atol=ATOL)
    out = tmp_path / "cnn.tflite"
    assert cli.main(["export", str(path), str(out)]) == cli.EXIT_OK
    assert "validation vs Keras: passed" in capsys.readouterr().out


def test_nan_in_the_data_of_a_keras3_model_names_the_examples(small_cnn):
    """The translation check leaves non-finite examples out; the statistics name them."""
    model, x, y = small_cnn
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteDataError, match=r"example indices \[3\]"):
        tsp.prune_once(model, (bad, y), 0.5, "wald_diag", verbose=0)
