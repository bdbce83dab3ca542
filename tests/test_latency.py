"""The XNNPACK latency policy and the exporter's sparse-inference check."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tflite_export.xnnpack import check
from tfstatprune._keras import keras
from tfstatprune.keras.latency import latency_policy

L = keras.layers
#: The 1x1 convolutions of :func:`_mobile_model`, written out by hand.
POINTWISE = ["expand", "project", "se_reduce", "se_expand", "head"]


def _mobile_model(stem_channels: int = 3, pool: bool = True) -> keras.Model:
    """Stem, an inverted residual, a stride-2 depthwise, squeeze-excite, head, pooling."""
    inputs = keras.Input((16, 16, stem_channels))
    x = L.ZeroPadding2D(((1, 1), (1, 1)))(inputs)
    x = L.Conv2D(8, 3, strides=2, name="stem")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    y = L.Conv2D(16, 1, name="expand", activation="relu")(x)
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.Conv2D(8, 1, name="project")(y)
    x = L.Add()([x, y])
    x = L.ZeroPadding2D(((1, 1), (1, 1)))(x)
    x = L.DepthwiseConv2D(3, strides=2, name="down")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, name="se_reduce", activation="relu")(s)
    s = L.Conv2D(8, 1, name="se_expand", activation="sigmoid")(s)
    x = L.Multiply()([x, s])
    x = L.Conv2D(32, 1, name="head")(x)
    x = L.GlobalAveragePooling2D()(x) if pool else L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="classifier")(x))


def test_policy_picks_the_pointwise_convolutions_of_the_subgraph():
    policy = latency_policy(_mobile_model())
    assert policy.layers == POINTWISE
    assert policy.repadded == []


def test_policy_on_stock_mobilenetv2_repads_a_copy():
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3))
    pointwise = [
        layer.name
        for layer in model.layers
        if type(layer) is L.Conv2D and layer.kernel_size == (1, 1)
    ]
    stride2 = [
        layer.name
        for layer in model.layers
        if isinstance(layer, L.Conv2D | L.DepthwiseConv2D) and layer.strides == (2, 2)
    ]
    policy = latency_policy(model)
    assert policy.layers == pointwise and len(pointwise) == 34
    assert policy.repadded == sorted(stride2)
    assert model.get_layer("Conv1").padding == "same"  # the input model is untouched
    assert policy.model.get_layer("Conv1").padding == "valid"
    assert policy.model.output_shape == model.output_shape
    np.testing.assert_array_equal(
        policy.model.get_layer("Conv_1").kernel.numpy(), model.get_layer("Conv_1").kernel.numpy()
    )
    with pytest.raises(ValueError, match=r"Conv1.*SAME padding"):
        latency_policy(model, repad=False)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (lambda: _mobile_model(stem_channels=1), "no such convolution"),
        (lambda: _mobile_model(pool=False), "Flatten"),
    ],
)
def test_policy_names_why_there_is_no_subgraph(model, reason):
    with pytest.raises(ValueError, match=reason):
        latency_policy(model())


def _convert(model: keras.Model, zero_share: float, sparse: bool) -> bytes:
    model = keras.models.clone_model(model)
    for name in POINTWISE:
        layer = model.get_layer(name)
        kernel, *rest = layer.get_weights()
        kernel = np.random.default_rng(0).normal(size=kernel.shape).astype(np.float32)
        kernel.flat[: int(round(zero_share * kernel.size))] = 0.0
        layer.set_weights([kernel, *rest])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def test_check_says_which_subgraph_runs_sparse():
    model = _mobile_model()
    sparse = check(_convert(model, 0.9, sparse=True))
    assert sparse.sparse, sparse
    (subgraph,) = sparse.subgraphs
    assert subgraph.pointwise == len(POINTWISE)
    total = sum(model.get_layer(n).kernel.shape.num_elements() for n in POINTWISE)
    expected = sum(round(0.9 * model.get_layer(n).kernel.shape.num_elements()) for n in POINTWISE)
    assert subgraph.zero_share == pytest.approx(expected / total)
    dense_stored = check(_convert(model, 0.9, sparse=False))
    assert not dense_stored.sparse and "stored sparse" in dense_stored.subgraphs[0].problem
    too_dense = check(_convert(model, 0.5, sparse=True))
    assert not too_dense.sparse and "not more than 2/3" in too_dense.subgraphs[0].problem
