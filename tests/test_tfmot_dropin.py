"""tfmot's workflows with the statistical wrapper: save, load, resume, custom loops, layers.

Each test is a workflow of tfmot's own sparsity tests (prune, pruning_wrapper,
pruning_callbacks, prune_integration) with ``prune_low_magnitude`` replaced by
``prune_statistically`` and ``UpdatePruningStep`` by ``tfstatprune.callbacks``.
Resumed runs are checked against an uninterrupted run of the same model.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_utils import (
    is_pruned_m_by_n,
)

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.masking import round_half_up

BATCH = 10
EXAMPLES = 60
STEPS_PER_EPOCH = EXAMPLES // BATCH


def _data(shape=(6,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((EXAMPLES, *shape)).astype(np.float32)
    y = (x.reshape(EXAMPLES, -1)[:, :classes].argmax(1)).astype(np.int64)
    return x, y


def _twin_mlp():
    """Two pruned hidden layers of one shape: their variables share a name after a reload."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.layers.Dense(8, activation="relu", input_shape=(6,), name="fc1"),
            keras.layers.Dense(8, activation="relu", name="fc2"),
            keras.layers.Dense(8, activation="relu", name="fc3"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, tsp.PruneStatistically)]


def _masks(model):
    return {w.layer.name: w.pruning_vars[0][1].numpy() for w in _wrappers(model)}


def _pruned(criterion="wald_diag", schedule=None):
    schedule = schedule or tsp.IterativeSparsity([0.3, 0.6], every=8)
    pruned = tsp.prune_statistically(_twin_mlp(), _data(), criterion, schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    return pruned


def _fit(model, epochs, initial_epoch=0, extra=(), first=()):
    x, y = _data()
    cbs = [*first, *tsp.callbacks((x, y), verbose=0), *extra]
    model.fit(
        x,
        y,
        epochs=epochs,
        initial_epoch=initial_epoch,
        batch_size=BATCH,
        shuffle=False,
        callbacks=cbs,
        verbose=0,
    )
    return cbs


@pytest.fixture(scope="module")
def uninterrupted():
    """The masks and weights of two epochs without a break (pruning at steps 0 and 8)."""
    model = _pruned()
    _fit(model, epochs=2)
    return _masks(model), model.get_weights()


# ---------------------------------------------------------------- 1. saving


SCHEDULES = {
    "ConstantSparsity": lambda: tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=4),
    "PolynomialDecay": lambda: tfmot.sparsity.keras.PolynomialDecay(0.2, 0.6, 0, 8, frequency=4),
    "IterativeSparsity": lambda: tsp.IterativeSparsity([0.3, 0.6], every=8),
}


# Each format with one schedule in the suite; every pair with TFSTATPRUNE_SLOW_TESTS=1.
QUICK_SAVES = {(".keras", "PolynomialDecay"), (".h5", "ConstantSparsity")}
QUICK_SAVES |= {("savedmodel", "IterativeSparsity")}
SAVES = [
    pytest.param(
        fmt,
        schedule,
        marks=pytest.mark.skipif(
            (fmt, schedule) not in QUICK_SAVES and not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
            reason="every format x schedule: set TFSTATPRUNE_SLOW_TESTS=1",
        ),
    )
    for fmt in (".keras", ".h5", "savedmodel")
    for schedule in SCHEDULES
]


@pytest.mark.parametrize(("fmt", "schedule"), SAVES)
def test_save_and_load_with_tfmots_and_tfstatprunes_schedules(tmp_path, schedule, fmt):
    model = _pruned("magnitude", SCHEDULES[schedule]())
    _fit(model, epochs=1)
    path = str(tmp_path / f"p{fmt}") if fmt != "savedmodel" else str(tmp_path / "p")
    model.save(path)
    loaded = keras.models.load_model(path)  # no prune_scope: registered on import
    assert [type(layer).__name__ for layer in loaded.layers] == ["PruneStatistically"] * 4
    for a, b in zip(_wrappers(model), _wrappers(loaded), strict=True):
        assert type(b.pruning_schedule) is type(a.pruning_schedule)
        assert b.pruning_schedule.get_config() == a.pruning_schedule.get_config()
    for name, mask in _masks(model).items():
        np.testing.assert_array_equal(_masks(loaded)[name], mask)
    x, _ = _data()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_to_json_and_clone_model_keep_the_wrapper_and_its_schedule(schedule):
    model = _pruned("magnitude", SCHEDULES[schedule]())
    for copy in (
        keras.models.model_from_json(model.to_json()),
        keras.models.model_from_config({"class_name": "Sequential", "config": model.get_config()}),
        keras.models.clone_model(model),
    ):
        assert [type(layer) for layer in copy.layers] == [tsp.PruneStatistically] * 4
        for a, b in zip(_wrappers(model), _wrappers(copy), strict=True):
            assert b.pruning_schedule.get_config() == a.pruning_schedule.get_config()
            assert (b.criterion, b.scope, b.granularity) == (a.criterion, a.scope, a.granularity)


def test_a_file_with_the_schedule_wrapped_twice_still_loads():
    wrapper = tsp.PruneStatistically(
        keras.layers.Dense(2), tfmot.sparsity.keras.ConstantSparsity(0.5, 0), "magnitude"
    )
    config = wrapper.get_config()
    inner = config["pruning_schedule"]
    config["pruning_schedule"] = {"class_name": inner["class_name"], "config": inner}
    rebuilt = tsp.PruneStatistically.from_config(config)
    assert rebuilt.pruning_schedule.get_config() == inner


# ---------------------------------------------------------------- 2. resuming


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_resume_from_a_checkpoint_gives_the_uninterrupted_masks(tmp_path, uninterrupted, fmt):
    masks, weights = uninterrupted
    first = _pruned()
    _fit(first, epochs=1)
    before = _masks(first)
    path = str(tmp_path / f"ck{fmt}")
    first.save(path)
    resumed = keras.models.load_model(path)
    _fit(resumed, epochs=2, initial_epoch=1)
    got = _masks(resumed)
    for name, mask in masks.items():
        np.testing.assert_array_equal(got[name], mask, err_msg=name)
        assert np.all(got[name][before[name] == 0] == 0), f"{name}: a pruned weight came back"
    assert not np.array_equal(got["fc2"], got["fc3"])
    for a, b in zip(resumed.get_weights(), weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_statistics_and_reports_of_a_reloaded_wrapper_keep_each_layer_apart(tmp_path):
    model = _pruned()
    _fit(model, epochs=1)
    path = str(tmp_path / "ck.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len({w.name for w in loaded.weights}) < len(loaded.weights)  # the names collide
    data = _data()
    kernels = [w.pruning_vars[0][0] for w in _wrappers(model)]
    want = tsp.collect_statistics(model, data, weights=kernels, verbose=0).weights
    again = [w.pruning_vars[0][0] for w in _wrappers(loaded)]
    got = tsp.collect_statistics(loaded, data, weights=again, verbose=0).weights
    assert list(got) == [f"{n}/kernel:0" for n in ("fc1", "fc2", "fc3", "out")] == list(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key].sumsq, value.sumsq, rtol=1e-5)
    assert str(tsp.sparsity_report(loaded)) == str(tsp.sparsity_report(model))


def test_weight_keys_are_layer_path_and_role():
    inputs = keras.Input((5,))
    inner = keras.Sequential([keras.layers.Dense(3, input_shape=(5,), name="d")], name="block")
    h = inner(inputs)
    attention = keras.layers.MultiHeadAttention(2, 2, name="mha")
    seq = keras.layers.Reshape((1, 3))(h)
    out = attention(seq, seq)
    model = keras.Model(inputs, out)
    keys = tsp.weight_keys(model)
    assert keys[inner.layers[0].kernel] == "d/kernel:0"  # models are left out of the path
    assert keys[attention._query_dense.kernel] == "mha/query/kernel:0"
    assert len(set(keys.values())) == len(model.weights)
    wrapped = tsp.PruneStatistically(keras.layers.Dense(2, name="fc"), tsp.OneShotSparsity(0.5))
    wrapped.build((None, 4))
    assert sorted(tsp.weight_keys(wrapped).values()) == [
        "fc/bias:0",
        "fc/kernel:0",
        "prune_statistically_fc/mask:0",
        "prune_statistically_fc/mask_step:0",
        "prune_statistically_fc/pruning_step:0",
        "prune_statistically_fc/threshold:0",
    ]


# ---------------------------------------------------------------- 3. callbacks


class _Interrupt(keras.callbacks.Callback):
    """Stops training with an error at the start of batch step ``at`` (a crash)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_begin(self, batch, logs=None):
        wrapper = _wrappers(self.model)[0]
        if int(wrapper.pruning_step.numpy()) + 1 == self.at:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("backup_first", [False, True], ids=["after", "before"])
def test_backup_and_restore_in_either_order_resumes_exactly(tmp_path, uninterrupted, backup_first):
    masks, weights = uninterrupted
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    place = {"first": [backup]} if backup_first else {"extra": [backup]}
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_pruned(), epochs=2, **{**place, "extra": [*place.get("extra", []), _Interrupt(10)]})
    resumed = _pruned()  # a new process: the same model, rebuilt
    _fit(resumed, epochs=2, **place)
    assert int(_wrappers(resumed)[0].pruning_step.numpy()) == 2 * STEPS_PER_EPOCH
    for name, mask in masks.items():
        np.testing.assert_array_equal(_masks(resumed)[name], mask, err_msg=name)
    for a, b in zip(resumed.get_weights(), weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tfmots_custom_training_loop_protocol():
    """tfmot's guide: set_model, on_train_begin, on_train_batch_begin per step, on_epoch_end."""
    model = _pruned()
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy()
    optimizer = keras.optimizers.Adam()
    (step_callback,) = tsp.callbacks((x, y), verbose=0)
    step_callback.set_model(model)
    step_callback.on_train_begin()
    for _ in range(2):
        for start in range(0, EXAMPLES, BATCH):
            step_callback.on_train_batch_begin(batch=-1)
            with tf.GradientTape() as tape:
                logits = model(x[start : start + BATCH], training=True)
                value = loss(y[start : start + BATCH], logits)
            grads = tape.gradient(value, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        step_callback.on_epoch_end(batch=-1)
    assert [h["step"] for h in step_callback.history] == [0, 8]
    for wrapper in _wrappers(model):
        weight, mask, _ = wrapper.pruning_vars[0]
        assert int((mask.numpy() == 0).sum()) == round_half_up(0.6 * mask.shape.num_elements())
        assert np.all(weight.numpy()[mask.numpy() == 0] == 0)


@pytest.mark.parametrize("schedule", ["IterativeSparsity", "ConstantSparsity"])
def test_tfmots_step_callback_alone_fails_at_the_first_pruning_step(schedule):
    begin = {"IterativeSparsity": 0, "ConstantSparsity": 3}[schedule]
    model = _pruned(
        "magnitude",
        tsp.IterativeSparsity([0.5], every=8)
        if schedule == "IterativeSparsity"
        else tfmot.sparsity.keras.ConstantSparsity(0.5, begin, frequency=100),
    )
    x, y = _data()
    seen = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(int(_wrappers(model)[0].pruning_step.numpy()))

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tfstatprune\.callbacks"):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Steps()],
        )
    assert len(seen) == max(begin, 1) - 1  # the batch of the first pruning step failed


# ---------------------------------------------------------------- 6. NaN


def test_masked_weights_are_exactly_zero_even_when_the_update_made_them_nan():
    model = _pruned("magnitude", tsp.OneShotSparsity(0.5))
    x, y = _data()

    class Poison(keras.callbacks.Callback):
        """What a 0/0 loss gradient does to a weight: NaN, after the optimizer step."""

        def on_train_batch_end(self, batch, logs=None):
            for wrapper in _wrappers(self.model):
                weight, mask, _ = wrapper.pruning_vars[0]
                value = weight.numpy()
                value[mask.numpy() == 0] = np.nan
                weight.assign(value)

    history = model.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[*tsp.callbacks(), Poison()]
    )
    assert np.all(np.isfinite(history.history["loss"]))  # each step masked the NaN first
    for wrapper in _wrappers(model):
        weight, mask, _ = wrapper.pruning_vars[0]
        assert np.all(weight.numpy()[mask.numpy() == 0] == 0)  # on_epoch_end masked it
    final = tsp.strip_pruning(model)
    for wrapper in _wrappers(model):
        kernel = final.get_layer(wrapper.layer.name).kernel.numpy()
        mask = wrapper.pruning_vars[0][1].numpy()
        assert np.all(kernel[mask == 0] == 0)
        assert int((kernel == 0).sum()) == round_half_up(0.5 * kernel.size)
    assert np.all(np.isfinite(final.predict(x, verbose=0)))


# ---------------------------------------------------------------- 4. models and layers

L = keras.layers
# Every layer type of tfmot's prune registry with weights: (input shape, layer).
REGISTRY_LAYERS = {
    "Conv1D": ((5, 2), lambda: L.Conv1D(3, 2)),
    "Conv2D": ((4, 4, 2), lambda: L.Conv2D(3, 2)),
    "Conv2DTranspose": ((3, 3, 2), lambda: L.Conv2DTranspose(2, 2)),
    "Conv3D": ((3, 3, 3, 1), lambda: L.Conv3D(2, 2)),
    "Conv3DTranspose": ((2, 2, 2, 1), lambda: L.Conv3DTranspose(2, 2)),
    "SeparableConv1D": ((5, 2), lambda: L.SeparableConv1D(3, 2)),
    "SeparableConv2D": ((4, 4, 2), lambda: L.SeparableConv2D(3, 2)),
    "Dense": ((5,), lambda: L.Dense(4)),
    "Embedding": ((4,), lambda: L.Embedding(7, 2)),
    "LocallyConnected1D": ((5, 2), lambda: L.LocallyConnected1D(2, 2)),
    "LocallyConnected2D": ((3, 3, 2), lambda: L.LocallyConnected2D(2, 2)),
    "MultiHeadAttention": ((3, 4), lambda: L.MultiHeadAttention(2, 2)),
    "LSTM": ((3, 2), lambda: L.LSTM(2)),
    "GRU": ((3, 2), lambda: L.GRU(2)),
    "SimpleRNN": ((3, 2), lambda: L.SimpleRNN(2)),
}


def _model_with(kind, examples=20):
    shape, make = REGISTRY_LAYERS[kind]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape, dtype="int32" if kind == "Embedding" else "float32")
    layer = make()
    h = layer(inputs, inputs) if kind == "MultiHeadAttention" else layer(inputs)
    out = L.Dense(2, activation="softmax", name="out")(L.Flatten()(h))
    model = keras.Model(inputs, out)
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    if kind == "Embedding":
        x = rng.integers(0, 7, (examples, *shape))
    else:
        x = rng.standard_normal((examples, *shape)).astype(np.float32)
    return model, layer, x, rng.integers(0, 2, examples)


# tfmot prunes the 4 projections of MultiHeadAttention, kernel and recurrent kernel of RNNs
PRUNED_TENSORS = {"MultiHeadAttention": 4, "LSTM": 2, "GRU": 2, "SimpleRNN": 2}


# The suite runs the layers new to model-level pruning and one convolution; the whole
# registry x both criteria (30 fits, ~1-3 min) with TFSTATPRUNE_SLOW_TESTS=1.
QUICK = {("MultiHeadAttention", "wald"), ("GRU", "wald"), ("SimpleRNN", "magnitude")}
QUICK |= {("Conv2D", "wald"), ("Embedding", "magnitude")}
CASES = [
    pytest.param(
        kind,
        criterion,
        marks=pytest.mark.skipif(
            (kind, criterion) not in QUICK and not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
            reason="the whole registry: set TFSTATPRUNE_SLOW_TESTS=1",
        ),
    )
    for kind in REGISTRY_LAYERS
    for criterion in ("magnitude", "wald")
]


@pytest.mark.parametrize(("kind", "criterion"), CASES)
def test_every_layer_of_tfmots_registry_prunes_at_model_level(kind, criterion):
    model, layer, x, y = _model_with(kind)
    pruned = tsp.prune_statistically(
        model, (x, y), criterion, tsp.OneShotSparsity(0.5), min_weights_per_class=0
    )
    pruned.compile("sgd", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tsp.stats.GenericPathWarning)
        pruned.fit(x, y, batch_size=10, verbose=0, callbacks=tsp.callbacks((x, y), verbose=0))
    wrapper = pruned.get_layer(f"prune_statistically_{layer.name}")
    assert len(wrapper.pruning_vars) == PRUNED_TENSORS.get(kind, 1)
    for weight, mask, _ in wrapper.pruning_vars:
        size = mask.shape.num_elements()
        assert int((mask.numpy() == 0).sum()) == round_half_up(0.5 * size), weight.name
        assert np.all(weight.numpy()[mask.numpy() == 0] == 0)


def _fit_and_check(model, x, y, sparsity=0.5):
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=tsp.callbacks((x, y), verbose=0))
    wrappers = [w for w in _wrappers(model) if w.pruning_vars]
    assert wrappers
    for wrapper in wrappers:
        mask = wrapper.pruning_vars[0][1].numpy()
        assert int((mask == 0).sum()) == round_half_up(sparsity * mask.size), wrapper.name


def test_a_model_built_later_a_layer_and_a_list_of_layers_are_wrapped_as_tfmot_does():
    x, y = _data()
    later = keras.Sequential([L.Dense(8, activation="relu"), L.Dense(3, activation="softmax")])
    pruned = tsp.prune_statistically(later, None, "magnitude", tsp.OneShotSparsity(0.5))
    assert (
        not later.built and [type(layer) for layer in pruned.layers] == [tsp.PruneStatistically] * 2
    )
    pruned.build((None, 6))
    _fit_and_check(pruned, x, y)

    single = tsp.prune_statistically(L.Dense(3), None, "wald", tsp.OneShotSparsity(0.5))
    assert isinstance(single, tsp.PruneStatistically) and single.criterion == "wald"
    # every layer wrapped, as tfmot allows: the Flatten wrapper has nothing to prune
    wrapped = tsp.prune_statistically(
        [L.Reshape((6, 1), input_shape=(6,)), L.Flatten(), L.Dense(3, activation="softmax")],
        None,
        "magnitude",
        tsp.IterativeSparsity([0.25, 0.5], every=2),
    )
    assert [type(layer) for layer in wrapped] == [tsp.PruneStatistically] * 3
    _fit_and_check(keras.Sequential(wrapped), x, y)

    # a layer's own arguments go to its wrapper, as tfmot's prune_low_magnitude passes them
    first = tsp.prune_statistically(
        L.Dense(8, activation="relu"), None, "magnitude", input_shape=(6,)
    )
    built = keras.Sequential([first, L.Dense(3, activation="softmax")])
    assert built.built and built.input_shape == (None, 6)
    _fit_and_check(built, x, y)
    with pytest.raises(ValueError, match=r"\['input_shape'\] are arguments of a layer"):
        tsp.prune_statistically(built, None, "magnitude", input_shape=(6,))


def test_layers_tfmot_cannot_prune_and_objects_it_refuses_raise_value_errors():
    class MyDense(L.Dense):  # tfmot's registry is by exact type
        pass

    inputs = keras.Input((2, 4, 4, 1))
    h = L.ConvLSTM2D(2, 2, name="convlstm")(inputs)
    out = L.Dense(2, name="fc")(MyDense(3, name="mine")(L.Flatten()(h)))
    model = keras.Model(inputs, out)
    with pytest.raises(ValueError, match=r"'convlstm' \(ConvLSTM2D\), 'mine' \(MyDense\)"):
        tsp.prune_statistically(model, None, "magnitude")
    assert tsp.prune_statistically(model, None, "magnitude", layers=["fc"])  # the way out
    # a Sequential built later is judged by its layers' types, as tfmot judges it
    for unsupported in (L.ConvLSTM2D(2, (5, 5), name="later_lstm"), MyDense(3, name="later")):
        later = keras.Sequential([L.Dense(10), L.Dropout(0.4), unsupported])
        with pytest.raises(ValueError, match=f"'{unsupported.name}'"):
            tsp.prune_statistically(later, None, "magnitude")
    with pytest.raises(ValueError, match="tf_keras Model"):
        tsp.prune_statistically("model.keras", None, "magnitude")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="subclassed"):
        tsp.prune_statistically(Subclassed(), None, "magnitude")


def test_recurrent_statistics_match_a_per_example_loop():
    from reference import per_example_gradients, relative_error

    model, layer, x, y = _model_with("GRU", examples=12)
    got = tsp.collect_statistics(model, (x, y), verbose=0)
    grads = per_example_gradients(model, x, y)
    keys = tsp.weight_keys(model)
    for weight, g in zip(model.trainable_weights, grads, strict=True):
        stats = got.weights[keys[weight]]
        assert relative_error(np.asarray(stats.sum), g.sum(0)) < 1e-4, keys[weight]
        assert relative_error(np.asarray(stats.sumsq), (g**2).sum(0)) < 1e-4, keys[weight]


# ---------------------------------------------------------------- 5. N:M sparsity


def _reference_m_by_n(scores, m, n):
    """Per output unit and kernel position, its input channels cut into groups of n (the
    last one shorter): keep the n - m best of each."""
    keep = np.zeros(scores.shape, bool)
    for index in np.ndindex(*scores.shape[:-2], scores.shape[-1]):
        position, unit = index[:-1], index[-1]
        row = scores[(*position, slice(None), unit)]
        kept = np.zeros(row.size, bool)
        for start in range(0, row.size, n):
            group = row[start : start + n]
            best = np.argsort(-group, kind="stable")[: n - m]
            kept[start + best] = True
        keep[(*position, slice(None), unit)] = kept
    return keep


def _tfmots_m_by_n(scores, m_by_n):
    """tfmot's own N:M mask of a rank-2 or rank-4 kernel (top-k of the magnitudes)."""
    weights = tf.constant(np.asarray(scores, np.float32))
    rows = pruning_utils.weights_rearrange(weights)
    mask = pruning_utils.generate_m_by_n_mask(rows, m_by_n)
    return np.asarray(pruning_utils.m_by_n_sparsity_mask_prepare(mask, weights.shape)) > 0


@pytest.mark.parametrize("m_by_n", [(2, 4), (1, 3), (3, 4)])
@pytest.mark.parametrize(
    "shape", [(8, 3), (5, 2), (7, 3), (3, 3, 2, 4), (3, 3, 8, 2), (5, 7, 7, 3), (2, 5, 3)]
)
def test_m_by_n_masks_keep_the_best_of_each_group_in_tfmots_layout(shape, m_by_n):
    rng = np.random.default_rng(sum(shape))
    scores = rng.standard_normal(shape)
    got = tsp.masking.m_by_n_masks({"w": scores}, m_by_n)["w"]
    np.testing.assert_array_equal(got, _reference_m_by_n(scores, *m_by_n))
    if len(shape) in (2, 4):  # the ranks tfmot's layout reads
        positive = np.abs(scores) + 1.0  # tfmot ranks magnitudes: the same order here
        np.testing.assert_array_equal(
            tsp.masking.m_by_n_masks({"w": positive}, m_by_n)["w"],
            _tfmots_m_by_n(positive, m_by_n),
        )
        weights = tf.constant(np.where(got, 1.0 + rng.random(shape), 0.0))
        assert is_pruned_m_by_n(weights, m_by_n)
    # pruned stays pruned: a group keeps fewer rather than revive one
    previous = _reference_m_by_n(-scores, *m_by_n)
    again = tsp.masking.m_by_n_masks({"w": scores}, m_by_n, previous={"w": previous})["w"]
    assert not np.any(again & ~previous)
    with pytest.raises(ValueError, match="0 < m < n"):
        tsp.masking.m_by_n_masks({"w": scores}, (4, 4))
    with pytest.raises(ValueError, match="prune_bias=False"):
        tsp.masking.m_by_n_masks({"b": scores.ravel()}, m_by_n)


def _conv_model():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            L.Conv2D(4, 3, activation="relu", input_shape=(5, 5, 4), name="conv"),
            L.Flatten(),
            L.Dense(8, activation="relu", name="fc"),
            L.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 5, 5, 4)).astype(np.float32)
    return model, x, rng.integers(0, 3, 24)


def _assert_two_of_four(kernel):
    assert is_pruned_m_by_n(tf.constant(kernel), (2, 4))
    assert int((kernel == 0).sum()) >= kernel.size // 2


NM_CRITERIA = ["magnitude", "wald_diag", "obd", "obs", "wald_block", "random", "taylor"]
NM_CRITERIA += ["sensitivity", "l1_norm"]


def test_prune_once_with_m_by_n_gives_tfmots_pattern_for_every_criterion():
    model, x, y = _conv_model()
    for criterion in NM_CRITERIA:
        pruned = tsp.prune_once(model, (x, y), 0.5, criterion, sparsity_m_by_n=(2, 4), verbose=0)
        for name in ("conv", "fc", "out"):
            _assert_two_of_four(pruned.get_layer(name).kernel.numpy())
    with pytest.raises(ValueError, match="sparsity=0.5"):
        tsp.prune_once(model, (x, y), 0.8, "wald_diag", sparsity_m_by_n=(2, 4), verbose=0)
    with pytest.raises(TypeError, match="pass it to prune_once"):
        tsp.scores(model, (x, y), "magnitude", sparsity_m_by_n=(2, 4), verbose=0)


def test_fit_with_m_by_n_keeps_tfmots_pattern():
    model, x, y = _conv_model()
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_diag", tsp.IterativeSparsity([0.5], every=4), sparsity_m_by_n=(2, 4)
    )
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=tsp.callbacks((x, y), verbose=0))
    final = tsp.strip_pruning(pruned)
    for name in ("conv", "fc", "out"):
        _assert_two_of_four(final.get_layer(name).kernel.numpy())
    with pytest.raises(ValueError, match="granularity='weight'"):
        tsp.prune_statistically(
            model, None, "magnitude", granularity="unit", sparsity_m_by_n=(2, 4)
        )


@pytest.mark.parametrize("shape", [(8, 3), (7, 5), (3, 3, 6, 4), (2, 2, 9, 3)])
def test_m_by_n_pattern_agrees_with_tfmots_check(shape):
    rng = np.random.default_rng(sum(shape))
    for m_by_n in [(2, 4), (1, 4), (3, 4), (4, 8), (6, 8)]:
        if m_by_n[1] > shape[-2]:  # one padded group per row: not read as a pattern
            continue
        kernel = np.where(
            tsp.masking.m_by_n_masks({"w": rng.standard_normal(shape)}, m_by_n)["w"],
            1.0 + rng.random(shape),
            0.0,
        )
        found = tsp.masking.m_by_n_pattern(kernel)
        assert found is not None and is_pruned_m_by_n(tf.constant(kernel), found)
        assert found[0] / found[1] >= m_by_n[0] / m_by_n[1]
        # no denser pattern of either group size holds (tfmot's check is the judge)
        for n in (n for n in (4, 8) if n <= shape[-2]):
            denser = int(np.floor(found[0] / found[1] * n)) + 1
            if denser < n:
                assert not is_pruned_m_by_n(tf.constant(kernel), (denser, n))
    dense = 1.0 + rng.random(shape)
    assert tsp.masking.m_by_n_pattern(dense) is None
    dense.flat[0] = 0.0  # one zero is no pattern
    assert tsp.masking.m_by_n_pattern(dense) is None


def test_export_report_names_the_m_by_n_kernels_and_says_the_runtime_ignores_them(tmp_path):
    from tflite_export import export
    from tflite_export.convert import M_BY_N_NOTE

    model, x, y = _conv_model()
    pruned = tsp.prune_once(model, (x, y), 0.5, "magnitude", sparsity_m_by_n=(2, 4), verbose=0)
    report = export(pruned, tmp_path / "nm.tflite", representative_data=x, verbose=False)
    assert report.m_by_n == (("conv", (2, 4)), ("fc", (2, 4)), ("out", (2, 4)))
    assert "N:M pattern in conv 2:4, fc 2:4, out 2:4" in str(report)
    assert M_BY_N_NOTE in str(report)
    plain = export(model, tmp_path / "dense.tflite", representative_data=x, verbose=False)
    assert plain.m_by_n == () and "N:M" not in str(plain)


# ---------------------------------------------------------------- MirroredStrategy

_MIRRORED = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tfstatprune as tsp
from tfstatprune._keras import keras
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 6)).astype(np.float32)
y = rng.integers(0, 3, 40)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu", input_shape=(6,)),
                              keras.layers.Dense(3, activation="softmax")])
    pruned = tsp.prune_statistically(model, (x, y), "wald_diag",
                                     tsp.IterativeSparsity([0.25, 0.5], every=4))
    pruned.compile("adam", "sparse_categorical_crossentropy")
pruned.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=tsp.callbacks((x, y), verbose=0))
path = os.path.join(sys.argv[1], "mirrored.h5")
pruned.save(path)
loaded = keras.models.load_model(path)
masks = lambda m: [w.pruning_vars[0][1].numpy() for w in m.layers]
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "pruned": [int((k == 0).sum()) for k in masks(pruned)],
    "sizes": [int(k.size) for k in masks(pruned)],
    "same": all(np.array_equal(a, b) for a, b in zip(masks(pruned), masks(loaded))),
    "zeros": all(np.all(w.pruning_vars[0][0].numpy()[m == 0] == 0)
                 for w, m in zip(loaded.layers, masks(loaded))),
}))
"""


@pytest.mark.skipif(
    not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
    reason="a fresh process with two logical CPUs takes 30-90 s; set TFSTATPRUNE_SLOW_TESTS=1",
)
def test_mirrored_strategy_fit_then_h5_reload(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,  # a guard against hangs, not a time limit
        env=env,
        cwd=root,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["replicas"] == 2
    assert got["pruned"] == [round_half_up(0.5 * n) for n in got["sizes"]]
    assert got["same"] and got["zeros"]
