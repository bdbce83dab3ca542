"""Tests of tfstatprune.schedules: decisions, TF/Python agreement, serialization, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,
)
from tensorflow_model_optimization.sparsity.keras import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    UpdatePruningStep,
    prune_low_magnitude,
)

from tfstatprune._keras import keras
from tfstatprune.schedules import (
    PACKAGE,
    IterativeSparsity,
    OneShotSparsity,
    PruningDecision,
    PruningEvent,
    StatisticalSchedule,
    pruning_steps,
    schedule_decision,
)

EXTRA_STEPS = 5

SCHEDULES = [
    OneShotSparsity(0.5),
    OneShotSparsity(0.3, step=7),
    OneShotSparsity(0.0, step=1),
    IterativeSparsity([0.5, 0.75, 0.9], begin_step=2, every=3),
    IterativeSparsity([0.2], begin_step=0, every=1),
    IterativeSparsity([0.1, 0.1, 0.6, 0.95], begin_step=1, every=1),
    IterativeSparsity([0.25, 0.5], begin_step=4, every=10),
]


def _steps(schedule: StatisticalSchedule) -> range:
    return range(-2, pruning_steps(schedule)[-1] + EXTRA_STEPS)


def _as_python(result) -> PruningDecision:
    should_prune, sparsity = result
    assert should_prune.dtype == tf.bool and sparsity.dtype == tf.float32
    assert should_prune.shape == () and sparsity.shape == ()
    return PruningDecision(bool(should_prune.numpy()), float(sparsity.numpy()))


def _assert_agrees(decision: PruningDecision, tf_decision: PruningDecision, step: int) -> None:
    assert tf_decision.should_prune == decision.should_prune, step
    assert np.float32(tf_decision.sparsity) == np.float32(decision.sparsity), step


# ---------------------------------------------------------------- golden values


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, (False, 0.0)), (2, (False, 0.0)), (3, (True, 0.5)), (4, (False, 0.5)), (99, (False, 0.5))],
)
def test_one_shot_golden(step, expected):
    assert OneShotSparsity(0.5, step=3).decision(step) == PruningDecision(*expected)


def test_one_shot_default_prunes_before_training():
    schedule = OneShotSparsity(0.8)
    assert schedule.decision(0) == PruningDecision(True, 0.8)
    assert schedule.decision(1) == PruningDecision(False, 0.8)
    assert schedule.decision(-1) == PruningDecision(False, 0.0)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, (False, 0.0)),
        (1, (False, 0.0)),
        (2, (True, 0.5)),
        (3, (False, 0.5)),
        (4, (False, 0.5)),
        (5, (True, 0.75)),
        (7, (False, 0.75)),
        (8, (True, 0.9)),
        (9, (False, 0.9)),
        (11, (False, 0.9)),
        (1000, (False, 0.9)),
    ],
)
def test_iterative_golden(step, expected):
    schedule = IterativeSparsity([0.5, 0.75, 0.9], begin_step=2, every=3)
    assert schedule.decision(step) == PruningDecision(*expected)


def test_iterative_defaults():
    schedule = IterativeSparsity([0.5, 0.9])
    assert pruning_steps(schedule) == [0, 1000]
    assert schedule.decision(999) == PruningDecision(False, 0.5)
    assert schedule.decision(1000) == PruningDecision(True, 0.9)


def test_decision_accepts_numpy_integers():
    schedule = OneShotSparsity(0.5, step=3)
    assert schedule.decision(np.int64(3)) == schedule.decision(3)
    assert schedule.decision(np.array(3)) == schedule.decision(3)


def test_events_and_pruning_steps():
    schedule = IterativeSparsity([0.5, 0.75], begin_step=10, every=5)
    assert schedule.events() == (PruningEvent(10, 0.5), PruningEvent(15, 0.75))
    assert pruning_steps(schedule) == [10, 15]
    assert pruning_steps(OneShotSparsity(0.1, step=4)) == [4]


@settings(max_examples=50, deadline=None)
@given(
    levels=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=6).map(sorted),
    begin_step=st.integers(0, 50),
    every=st.integers(1, 20),
    step=st.integers(-5, 200),
)
def test_iterative_decision_properties(levels, begin_step, every, step):
    schedule = IterativeSparsity(levels, begin_step=begin_step, every=every)
    decision = schedule.decision(step)
    offset = step - begin_step
    in_range = 0 <= offset <= (len(levels) - 1) * every
    assert decision.should_prune == (in_range and offset % every == 0)
    if offset < 0:
        assert decision.sparsity == 0.0
    else:
        assert decision.sparsity == levels[min(offset // every, len(levels) - 1)]


# ---------------------------------------------------------------- TF agrees with Python


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_tf_call_agrees_eagerly(schedule):
    for step in _steps(schedule):
        expected = schedule.decision(step)
        _assert_agrees(expected, _as_python(schedule(step)), step)
        _assert_agrees(expected, _as_python(schedule(tf.constant(step, tf.int64))), step)
        _assert_agrees(expected, _as_python(schedule(tf.constant(step, tf.int32))), step)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_tf_call_agrees_in_graph_mode(schedule):
    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def call(step):
        return schedule(step)

    for step in _steps(schedule):
        _assert_agrees(schedule.decision(step), _as_python(call(tf.constant(step, tf.int64))), step)


def test_tf_call_indexes_an_int64_variable_like_tfmot():
    schedule = IterativeSparsity([0.5, 0.8], begin_step=1, every=2)
    step = tf.Variable(-1, dtype=tf.int64)

    @tf.function
    def advance():
        step.assign_add(1)
        return schedule(step)

    for expected_step in range(8):
        _assert_agrees(schedule.decision(expected_step), _as_python(advance()), expected_step)


def test_pruning_inside_fit_follows_the_schedule():
    keras.utils.set_random_seed(0)
    n_in, n_out, batch, n_batches = 8, 10, 4, 6
    schedule = IterativeSparsity([0.5, 0.8], begin_step=2, every=3)
    model = keras.Sequential(
        [
            keras.Input((n_in,)),
            prune_low_magnitude(keras.layers.Dense(n_out), pruning_schedule=schedule),
        ]
    )
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(batch * n_batches, n_in)).astype("float32")
    y = np.zeros((batch * n_batches, n_out), "float32")
    sparsities = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            mask = self.model.layers[0].pruning_vars[0][1].numpy()
            sparsities.append(1.0 - float(mask.mean()))

    model.fit(
        x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[UpdatePruningStep(), Record()]
    )
    # Steps 1..6: nothing at step 1, 0.5 from step 2, 0.8 from step 5.
    assert sparsities[0] == 0.0
    assert sparsities[1:4] == pytest.approx([0.5] * 3, abs=0.02)
    assert sparsities[4:] == pytest.approx([0.8] * 2, abs=0.02)


# ---------------------------------------------------------------- serialization


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_get_config_from_config_round_trip(schedule):
    config = schedule.get_config()
    assert config["class_name"] == f"{PACKAGE}>{type(schedule).__name__}"
    assert json.loads(json.dumps(config)) == config
    cls = type(schedule)
    assert cls.from_config(config) == schedule
    assert cls.from_config(config["config"]) == schedule
    assert cls.from_config(json.loads(json.dumps(config))).events() == schedule.events()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_keras_serialization_round_trip(schedule):
    assert keras.utils.deserialize_keras_object(schedule.get_config()) == schedule
    serialized = keras.utils.serialize_keras_object(schedule)
    assert serialized["registered_name"] == f"{PACKAGE}>{type(schedule).__name__}"
    restored = keras.utils.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert restored == schedule


def test_registered_names():
    assert keras.utils.get_registered_name(OneShotSparsity) == "tfstatprune>OneShotSparsity"
    assert keras.utils.get_registered_name(IterativeSparsity) == "tfstatprune>IterativeSparsity"


def test_deserialize_by_plain_name_with_custom_objects():
    config = {"class_name": "IterativeSparsity", "config": {"sparsities": [0.5], "every": 3}}
    restored = keras.utils.deserialize_keras_object(
        config, custom_objects={"IterativeSparsity": IterativeSparsity}
    )
    assert restored == IterativeSparsity([0.5], every=3)


def test_from_config_rejects_another_class():
    with pytest.raises(ValueError, match="IterativeSparsity"):
        OneShotSparsity.from_config(IterativeSparsity([0.5]).get_config())


@pytest.mark.parametrize("schedule", SCHEDULES[:1] + SCHEDULES[3:4], ids=repr)
def test_tfmot_wrapper_round_trip(schedule):
    wrapper = PruneLowMagnitude(keras.layers.Dense(3), pruning_schedule=schedule)
    config = json.loads(json.dumps(wrapper.get_config()))
    restored = PruneLowMagnitude.from_config(config)
    assert restored.pruning_schedule == schedule


def test_equality_hash_repr():
    a, b = IterativeSparsity([0.5, 0.8], 1, 2), IterativeSparsity((0.5, 0.8), 1, 2)
    assert a == b and hash(a) == hash(b)
    assert a != IterativeSparsity([0.5, 0.8], 1, 3)
    assert OneShotSparsity(0.5) != IterativeSparsity([0.5])
    assert repr(a) == "IterativeSparsity(sparsities=[0.5, 0.8], begin_step=1, every=2)"
    assert repr(OneShotSparsity(0.5, 2)) == "OneShotSparsity(sparsity=0.5, step=2)"
    assert isinstance(a, PruningSchedule)


# ---------------------------------------------------------------- schedule_decision


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.6, begin_step=2, end_step=10, frequency=3),
        ConstantSparsity(0.4, begin_step=0),
        PolynomialDecay(0.1, 0.8, begin_step=0, end_step=20, frequency=5),
        PolynomialDecay(0.0, 0.5, begin_step=3, end_step=9, power=1, frequency=2),
    ],
    ids=lambda s: type(s).__name__,
)
def test_schedule_decision_matches_tfmot_schedules(schedule):
    for step in range(25):
        should_prune, sparsity = schedule(tf.constant(step, tf.int64))
        decision = schedule_decision(schedule, step)
        assert isinstance(decision.should_prune, bool) and isinstance(decision.sparsity, float)
        assert decision.should_prune == bool(should_prune.numpy())
        assert decision.sparsity == float(sparsity.numpy())


def test_schedule_decision_golden_polynomial():
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, power=1, frequency=5)
    assert schedule_decision(schedule, 5) == PruningDecision(True, pytest.approx(0.25))
    assert schedule_decision(schedule, 6).should_prune is False


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_schedule_decision_uses_decision(schedule):
    for step in _steps(schedule):
        assert schedule_decision(schedule, step) == schedule.decision(step)


def test_schedule_decision_for_user_schedule():
    class EveryOther(PruningSchedule):
        def __call__(self, step):
            return tf.equal(step % 2, 0), tf.constant(0.3, tf.float32)

        def get_config(self):
            return {}

    assert schedule_decision(EveryOther(), 4) == PruningDecision(True, float(np.float32(0.3)))
    assert schedule_decision(EveryOther(), 5).should_prune is False


def test_schedule_decision_while_tracing():
    schedule = ConstantSparsity(0.5, begin_step=0, frequency=2)
    seen = []

    @tf.function
    def traced():
        seen.append(schedule_decision(schedule, 4))
        return tf.constant(0)

    traced()
    assert seen == [PruningDecision(True, 0.5)]


def test_schedule_decision_errors():
    with pytest.raises(TypeError, match="pruning schedule"):
        schedule_decision(0.5, 1)
    with pytest.raises(TypeError, match="should_prune, sparsity"):
        schedule_decision(lambda step: tf.constant(True), 1)
    with pytest.raises(ValueError, match="step must be an integer"):
        schedule_decision(OneShotSparsity(0.5), 1.5)


def test_pruning_steps_rejects_other_schedules():
    with pytest.raises(TypeError, match="ConstantSparsity"):
        pruning_steps(ConstantSparsity(0.5, 0))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: OneShotSparsity(1.0), r"sparsity must be in \[0, 1\).*1\.0"),
        (lambda: OneShotSparsity(-0.1), r"sparsity must be in \[0, 1\).*-0\.1"),
        (lambda: OneShotSparsity(float("nan")), r"sparsity must be in \[0, 1\).*nan"),
        (lambda: OneShotSparsity("0.5"), r"sparsity must be a real number in \[0, 1\)"),
        (lambda: OneShotSparsity(True), r"sparsity must be a real number"),
        (lambda: OneShotSparsity(0.5, step=-1), r"step must be an integer >= 0, got -1"),
        (lambda: OneShotSparsity(0.5, step=2.0), r"step must be an integer >= 0, got 2\.0"),
        (lambda: IterativeSparsity([]), r"sparsities is empty"),
        (lambda: IterativeSparsity(0.5), r"sparsities must be a sequence"),
        (lambda: IterativeSparsity("0.5"), r"sparsities must be a sequence"),
        (lambda: IterativeSparsity([0.5, 1.0]), r"sparsities\[1\] must be in \[0, 1\).*1\.0"),
        (lambda: IterativeSparsity([-0.5]), r"sparsities\[0\] must be in \[0, 1\).*-0\.5"),
        (
            lambda: IterativeSparsity([0.5, 0.3]),
            r"non-decreasing.*sparsities\[1\]=0\.3 < sparsities\[0\]=0\.5.*monotone",
        ),
        (lambda: IterativeSparsity([0.5], begin_step=-3), r"begin_step must be .*>= 0, got -3"),
        (lambda: IterativeSparsity([0.5], begin_step=1.5), r"begin_step must be an integer"),
        (lambda: IterativeSparsity([0.5], every=0), r"every must be an integer >= 1, got 0"),
        (lambda: IterativeSparsity([0.5], every=1e3), r"every must be an integer >= 1, got 1000"),
        (lambda: OneShotSparsity(0.5).decision(0.5), r"step must be an integer, got 0\.5"),
    ],
)
def test_validation_errors(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_numpy_arguments_are_accepted():
    schedule = IterativeSparsity(np.array([0.1, 0.2]), begin_step=np.int64(2), every=np.int32(3))
    assert schedule.get_config()["config"] == {
        "sparsities": [0.1, 0.2],
        "begin_step": 2,
        "every": 3,
    }
    assert json.dumps(schedule.get_config())
