"""Tests of tfstatprune.models: the reference MNIST classifiers."""

from __future__ import annotations

import numpy as np
import pytest

from tfstatprune import models
from tfstatprune._keras import keras
from tfstatprune.datasets import IMAGE_SHAPE, NUM_CLASSES

# 784*300 + 300 + 300*100 + 100 + 100*10 + 10
LENET_300_100_PARAMS = 266_610
LENET_300_100_BIASES = 300 + 100 + 10
# conv1 5*5*1*20 + 20, conv2 5*5*20*50 + 50, fc1 (4*4*50)*500 + 500, output 500*10 + 10
LENET5_PARAMS = 431_080
LENET5_BIASES = 20 + 50 + 500 + 10
# 784*1000 + 1000*1000 + 1000*500 + 500*200 + 200*10, no biases
FC_CHALLENGE_PARAMS = 2_386_000

BUILDERS = {
    "lenet_300_100": models.lenet_300_100,
    "lenet5": models.lenet5,
    "fc_challenge": models.fc_challenge,
}
LAYER_NAMES = {
    "lenet_300_100": ["flatten", "fc1", "fc2", "output"],
    "lenet5": ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "output"],
    "fc_challenge": ["flatten", "fc1", "fc2", "fc3", "fc4", "output"],
}
WEIGHTED_LAYERS = {"lenet_300_100": 3, "lenet5": 4, "fc_challenge": 5}
BATCH = 4
L2 = 1e-4
TRAIN_STEPS = 10


@pytest.fixture(params=sorted(BUILDERS))
def builder_name(request: pytest.FixtureRequest) -> str:
    return request.param


def random_images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((BATCH, *IMAGE_SHAPE), dtype=np.float32)


def test_parameter_counts() -> None:
    lenet = models.lenet_300_100()
    assert models.count_params(lenet) == lenet.count_params() == LENET_300_100_PARAMS
    assert models.count_params(lenet, include_biases=False) == (
        LENET_300_100_PARAMS - LENET_300_100_BIASES
    )
    conv = models.lenet5()
    assert models.count_params(conv) == conv.count_params() == LENET5_PARAMS
    assert models.count_params(conv, include_biases=False) == LENET5_PARAMS - LENET5_BIASES
    fc = models.fc_challenge()
    assert models.count_params(fc) == fc.count_params() == FC_CHALLENGE_PARAMS
    assert models.count_params(fc, include_biases=False) == FC_CHALLENGE_PARAMS


def test_fc_challenge_has_no_biases() -> None:
    model = models.fc_challenge()
    assert all(not layer.get_config().get("use_bias", False) for layer in model.layers)
    assert len(model.weights) == WEIGHTED_LAYERS["fc_challenge"]


def test_layer_names_and_output(builder_name: str) -> None:
    model = BUILDERS[builder_name]()
    assert [layer.name for layer in model.layers] == LAYER_NAMES[builder_name]
    assert model.layers[-1].name == models.OUTPUT_LAYER_NAME
    assert model.input_shape == (None, *IMAGE_SHAPE)
    assert model.output_shape == (None, NUM_CLASSES)
    assert model.optimizer is None  # uncompiled
    probabilities = model(random_images()).numpy()
    assert probabilities.shape == (BATCH, NUM_CLASSES)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_deterministic_given_seed(builder_name: str) -> None:
    build = BUILDERS[builder_name]
    first, again, other = build(seed=7), build(seed=7), build(seed=8)
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    kernels = [w for w in first.get_weights() if w.ndim > 1]
    other_kernels = [w for w in other.get_weights() if w.ndim > 1]
    assert all(not np.array_equal(a, b) for a, b in zip(kernels, other_kernels, strict=True))
    np.testing.assert_array_equal(first(random_images()), again(random_images()))


def test_l2_regularization(builder_name: str) -> None:
    build = BUILDERS[builder_name]
    assert build().losses == []
    regularized = build(l2=L2)
    assert len(regularized.losses) == WEIGHTED_LAYERS[builder_name]
    assert all(float(loss) > 0 for loss in regularized.losses)
    with pytest.raises(ValueError, match="l2 must be non-negative"):
        build(l2=-L2)


def test_lenet5_conv_activation() -> None:
    assert models.lenet5().get_layer("conv1").get_config()["activation"] == "linear"
    relu = models.lenet5(conv_activation="relu")
    assert relu.get_layer("conv2").get_config()["activation"] == "relu"


def test_compile_classifier_trains() -> None:
    model = models.compile_classifier(models.lenet_300_100())
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    labels = np.arange(BATCH) % NUM_CLASSES
    losses = [model.train_on_batch(random_images(), labels)[0] for _ in range(TRAIN_STEPS)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert "accuracy" in model.metrics_names


def test_count_params_looks_through_pruning_wrappers() -> None:
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    pruned = tfmot.sparsity.keras.prune_low_magnitude(models.lenet_300_100())
    assert models.count_params(pruned) == LENET_300_100_PARAMS
    assert pruned.count_params() > LENET_300_100_PARAMS  # masks and thresholds


def test_count_params_needs_a_built_model() -> None:
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        models.count_params(model)
