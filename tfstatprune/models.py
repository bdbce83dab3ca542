"""Reference MNIST classifiers from the pruning literature, as tf_keras models.

Every builder returns an uncompiled ``keras.Sequential`` taking ``(28, 28, 1)``
images in ``[0, 1]`` (see :func:`tfstatprune.datasets.mnist`) and giving class
probabilities (softmax output; train with sparse categorical cross-entropy on
probabilities, as :func:`compile_classifier` does). Weights are deterministic
given ``seed``: layer ``i`` (counting weighted layers from 0) gets a
``GlorotUniform(seed=seed + i)`` kernel initializer and zero biases.

Layer names are stable so that pruning schedules can refer to them:

==================  ===========================================================
model               layers, in order
==================  ===========================================================
``lenet_300_100``   ``flatten``, ``fc1``, ``fc2``, ``output``
``lenet5``          ``conv1``, ``pool1``, ``conv2``, ``pool2``, ``flatten``,
                    ``fc1``, ``output``
``fc_challenge``    ``flatten``, ``fc1``, ``fc2``, ``fc3``, ``fc4``, ``output``
==================  ===========================================================

The last layer is always called :data:`OUTPUT_LAYER_NAME` (``"output"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tfstatprune._keras import keras
from tfstatprune.datasets import IMAGE_SHAPE, NUM_CLASSES
from tfstatprune.structure.cost import kernel_parameters

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "OUTPUT_LAYER_NAME",
    "compile_classifier",
    "count_params",
    "fc_challenge",
    "lenet5",
    "lenet_300_100",
]

OUTPUT_LAYER_NAME = "output"
DEFAULT_LEARNING_RATE = 1e-3

# LeNet-300-100 (LeCun et al. 1998; Han et al. 2015).
_LENET_300_100_UNITS = (300, 100)
# Caffe's LeNet-5 (examples/mnist/lenet_train_test.prototxt).
_LENET5_CONV_FILTERS = (20, 50)
_LENET5_KERNEL_SIZE = 5
_LENET5_POOL_SIZE = 2
_LENET5_FC_UNITS = 500
# The fully connected "weight pruning vs unit pruning" challenge network.
_FC_CHALLENGE_UNITS = (1000, 1000, 500, 200)


def _initializer(seed: int, index: int) -> keras.initializers.Initializer:
    """The kernel initializer of the ``index``-th weighted layer."""
    return keras.initializers.GlorotUniform(seed=seed + index)


def _regularizer(l2: float) -> keras.regularizers.Regularizer | None:
    """A kernel L2 regularizer, or None for ``l2 == 0``."""
    if l2 < 0:
        raise ValueError(f"l2 must be non-negative, got {l2}.")
    return keras.regularizers.L2(l2) if l2 > 0 else None


def _dense_stack(
    units: Sequence[int], *, l2: float, seed: int, use_bias: bool, first_index: int = 0
) -> list[keras.layers.Layer]:
    """ReLU layers ``fc{k}`` for ``units`` followed by the softmax ``output`` layer."""
    widths = [*units, NUM_CLASSES]
    layers: list[keras.layers.Layer] = []
    for offset, width in enumerate(widths):
        is_output = offset == len(widths) - 1
        index = first_index + offset
        layers.append(
            keras.layers.Dense(
                width,
                activation="softmax" if is_output else "relu",
                use_bias=use_bias,
                kernel_initializer=_initializer(seed, index),
                bias_initializer="zeros",
                kernel_regularizer=_regularizer(l2),
                name=OUTPUT_LAYER_NAME if is_output else f"fc{offset + 1}",
            )
        )
    return layers


def lenet_300_100(*, l2: float = 0.0, seed: int = 0, name: str = "lenet_300_100") -> keras.Model:
    """LeNet-300-100: a 784-300-100-10 fully connected ReLU network.

    266,610 parameters (266,200 weights and 410 biases).

    Args:
      l2: kernel L2 regularization factor (none when 0).
      seed: seed of the weight initializers.
      name: model name.

    Returns:
      An uncompiled model with layers ``flatten``, ``fc1``, ``fc2``, ``output``.

    Raises:
      ValueError: for a negative ``l2``.
    """
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(name="flatten"),
            *_dense_stack(_LENET_300_100_UNITS, l2=l2, seed=seed, use_bias=True),
        ],
        name=name,
    )


def lenet5(
    *,
    l2: float = 0.0,
    seed: int = 0,
    conv_activation: str | None = None,
    name: str = "lenet5",
) -> keras.Model:
    """Caffe's LeNet-5, the convolutional MNIST network of the pruning papers.

    ``conv1`` (20 filters 5x5, valid) -> ``pool1`` (max 2x2) -> ``conv2``
    (50 filters 5x5, valid) -> ``pool2`` (max 2x2) -> ``flatten`` -> ``fc1``
    (500, ReLU) -> ``output`` (10, softmax): 431,080 parameters (430,500
    weights and 580 biases). As in Caffe's ``lenet_train_test.prototxt`` the
    convolutions have no activation by default.

    Args:
      l2: kernel L2 regularization factor (none when 0).
      seed: seed of the weight initializers.
      conv_activation: activation of the two convolutions (Caffe: none).
      name: model name.

    Returns:
      An uncompiled model.

    Raises:
      ValueError: for a negative ``l2``.
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=IMAGE_SHAPE)]
    for index, filters in enumerate(_LENET5_CONV_FILTERS):
        layers += [
            keras.layers.Conv2D(
                filters,
                _LENET5_KERNEL_SIZE,
                padding="valid",
                activation=conv_activation,
                kernel_initializer=_initializer(seed, index),
                bias_initializer="zeros",
                kernel_regularizer=_regularizer(l2),
                name=f"conv{index + 1}",
            ),
            keras.layers.MaxPooling2D(_LENET5_POOL_SIZE, name=f"pool{index + 1}"),
        ]
    layers.append(keras.layers.Flatten(name="flatten"))
    layers += _dense_stack(
        (_LENET5_FC_UNITS,),
        l2=l2,
        seed=seed,
        use_bias=True,
        first_index=len(_LENET5_CONV_FILTERS),
    )
    return keras.Sequential(layers, name=name)


def fc_challenge(*, seed: int = 0, l2: float = 0.0, name: str = "fc_challenge") -> keras.Model:
    """The 784-1000-1000-500-200-10 ReLU network without biases.

    The network of the "weight pruning vs unit pruning" comparison: no layer
    has a bias, so every parameter is a prunable weight (2,386,000 in all).

    Args:
      seed: seed of the weight initializers.
      l2: kernel L2 regularization factor (none when 0).
      name: model name.

    Returns:
      An uncompiled model with layers ``flatten``, ``fc1`` .. ``fc4``, ``output``.

    Raises:
      ValueError: for a negative ``l2``.
    """
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(name="flatten"),
            *_dense_stack(_FC_CHALLENGE_UNITS, l2=l2, seed=seed, use_bias=False),
        ],
        name=name,
    )


def compile_classifier(
    model: keras.Model, learning_rate: float = DEFAULT_LEARNING_RATE
) -> keras.Model:
    """Compile a softmax classifier with Adam, cross-entropy and accuracy.

    The loss is sparse categorical cross-entropy on probabilities (integer
    labels, ``from_logits=False``), matching the builders' softmax outputs.

    Args:
      model: the model to compile (in place).
      learning_rate: Adam's learning rate.

    Returns:
      ``model`` itself, for chaining.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def count_params(model: keras.Model, *, include_biases: bool = True) -> int:
    """Count the kernel (and bias) entries of a model's layers.

    Layers wrapped by ``keras.layers.Wrapper`` (such as tfmot's pruning
    wrapper) and nested models are looked into; other variables (pruning masks,
    optimizer slots, normalization statistics) are not counted.

    Args:
      model: a built model.
      include_biases: count biases too (otherwise kernels only).

    Returns:
      The number of scalar weights.

    Raises:
      ValueError: when the model is not built yet.
    """
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it or build it first.")
    return kernel_parameters(model, include_biases=include_biases)
