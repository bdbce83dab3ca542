"""The output layer's restricted estimator, computed exactly after one-shot pruning.

The Wald test of a restriction ``theta_P = 0`` compares the unrestricted estimate
with the *restricted* one (seed paper, section 3),

    theta~ = argmin_theta L(theta)   subject to   theta_P = 0,

``L`` the mean loss over the data plus the layer's regularisation. The block
criteria's update (``wald_block``, ``obs``, ``sparsegpt``, ``obc``) is one Newton
step towards ``theta~`` under a Kronecker-factored Hessian: exact when ``L`` is
quadratic, which it is not at the classifier, where one-shot pruning loses most
(docs/results/layer_losses.md). For the model's output Dense layer with its
inputs ``h_i`` held (the earlier layers as pruned),

    L(W, b) = (1/n) sum_i l(y_i, g(W^T h_i + b)) + R(W) + R(b),

and for a cross-entropy on its softmax/sigmoid (or squared error on the identity)
``L`` is convex in the free entries of ``W`` and ``b``: its restricted minimiser
is computed to convergence by L-BFGS (Nocedal & Wright 2006, "Numerical
Optimization", Algorithm 7.5; scipy's L-BFGS-B), starting from the pruned
values, the zeros held. This is a fit of the output layer's surviving weights on
the given examples -- no other layer moves and no gradient passes through the
network -- and it is reported as such.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.optimize
import tensorflow as tf

from tfstatprune._keras import is_keras3_object, keras
from tfstatprune.stats.data import check_stats_data, input_rank, iter_chunks
from tfstatprune.stats.losses import resolve_loss
from tfstatprune.structure.walk import layer_calls, require_graph, tensor_key

__all__ = [
    "DEFAULT_REFIT_ITERATIONS",
    "EXAMPLES_PER_WEIGHT",
    "Refit",
    "output_dense",
    "refit_output_layer",
]

#: L-BFGS iterations at most (a 100 x 10 classifier on 10k examples takes 100-500).
DEFAULT_REFIT_ITERATIONS = 500
#: Examples the fit needs per free weight: "ten events per variable", the rule of thumb
#: for logistic regression of Peduzzi, Concato, Kemper, Holford & Feinstein (1996),
#: "A simulation study of the number of events per variable in logistic regression
#: analysis", J. Clin. Epidemiol. 49(12). With fewer the fit memorises the examples
#: (measured: MobileNetV2's 1280 x 10 classifier at 50 %, 64 examples: loss 2.50 -> 0.00).
EXAMPLES_PER_WEIGHT = 10
#: Examples per forward chunk when the output layer's inputs are computed.
_CHUNK = 1024
#: Layers the output may pass through after the Dense layer (no weights of their own).
_HEAD_LAYERS = (keras.layers.Activation, keras.layers.Softmax)


class Refit(NamedTuple):
    """What :func:`refit_output_layer` did: the layer, the examples, the objective."""

    layer: str
    examples: int
    free: int
    loss_before: float
    loss_after: float
    iterations: int

    def __str__(self) -> str:
        return (
            f"output layer {self.layer!r} refit on {self.examples} examples "
            f"({self.free} free weights, the zeros held): loss {self.loss_before:.4f} -> "
            f"{self.loss_after:.4f} in {self.iterations} L-BFGS iterations"
        )


def require_examples(layer: str, free: int, examples: int, *, at_least: bool = False) -> None:
    """A ValueError unless ``examples >= EXAMPLES_PER_WEIGHT * free``.

    ``at_least``: ``free`` is a lower bound (the check before pruning, when the
    weights the pruning leaves are not known yet).

    Example:
      >>> require_examples("head", 10, 100)
      >>> require_examples("head", 11, 100)
      Traceback (most recent call last):
      ...
      ValueError: refit_output would fit the 11 free weights of layer 'head' on 100 examples; a fit needs 10 examples per free weight (110) or it memorises them: pass more stats_data (or a higher sparsity of that layer), or refit_output=False
    """  # noqa: E501
    if examples < EXAMPLES_PER_WEIGHT * free:
        raise ValueError(
            f"refit_output would fit {'at least ' if at_least else ''}the {free} free weights "
            f"of layer {layer!r} on {examples} examples; a fit needs {EXAMPLES_PER_WEIGHT} "
            f"examples per free weight ({EXAMPLES_PER_WEIGHT * free}) or it memorises them: "
            "pass more stats_data (or a higher sparsity of that layer), or refit_output=False"
        )


def output_dense(model: keras.Model) -> tuple[keras.layers.Dense, keras.layers.Layer | None]:
    """The Dense layer that computes the model's single output and the Activation or
    Softmax layer after it (None: the Dense layer's output is the model's), or a
    ValueError naming what the output comes from."""
    if len(model.outputs) != 1:
        raise ValueError(
            f"refit_output refits the Dense layer of a model's single output; model "
            f"{model.name!r} has {len(model.outputs)} outputs: pass refit_output=False"
        )
    calls = layer_calls(model)
    producer = {tensor_key(t): call for call in calls for t in call.outputs}
    call, tail = producer[tensor_key(model.outputs[0])], None
    if isinstance(call.inner, _HEAD_LAYERS) and len(call.inputs) == 1:
        upstream = producer.get(tensor_key(call.inputs[0]))
        if upstream is not None:
            call, tail = upstream, call.inner
    layer = call.inner
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"refit_output refits the Dense layer that computes the model's output, but the "
            f"output of model {model.name!r} comes from layer {layer.name!r} "
            f"({type(layer).__name__}): pass refit_output=False"
        )
    count = sum(c.inner is layer for c in calls)
    if count != 1:
        raise ValueError(
            f"refit_output needs the output layer {layer.name!r} called once; it is called "
            f"{count} times (shared): pass refit_output=False"
        )
    return layer, tail


def refit_output_layer(
    model: keras.Model,
    data: Any,
    *,
    loss: Any = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    max_iterations: int = DEFAULT_REFIT_ITERATIONS,
) -> Refit:
    """Refit the nonzero weights of the model's output Dense layer to the restricted
    minimiser of its loss on ``data`` (in place; every zero stays zero).

    ``W~, b~ = argmin (1/n) sum_i l(y_i, g(W^T h_i + b)) + R(W) + R(b)`` over the
    nonzero entries, ``h_i`` the layer's inputs under ``model`` as it is, by L-BFGS
    from the current values (:mod:`tfstatprune.keras.refit`). The new values are
    kept only if the objective went down; otherwise the layer is left as it was.

    Args:
      model: a built tf_keras Sequential or functional model whose single output
        is computed by a Dense layer (directly, or through an Activation or
        Softmax layer).
      data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches.
      loss: the per-example loss (default: the compiled loss).
      max_examples: use at most this many examples (the first ones).
      batch_size: examples per forward chunk for the layer's inputs.
      max_iterations: L-BFGS iterations at most.

    Returns:
      The layer, the examples used, the free weights and the objective before and
      after.

    Raises:
      TypeError: a Keras 3 model or a subclassed one.
      ValueError: no single Dense output layer; no loss; data without labels or
        that does not fit; fewer than :data:`EXAMPLES_PER_WEIGHT` examples per
        free weight; a non-finite objective at the start.

    Example:
      >>> import numpy as np
      >>> from tfstatprune._keras import keras
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, "softmax")])
      >>> model.layers[0].set_weights([np.array([[1, 0], [0, 0], [0, -1]], "float32"),
      ...                              np.zeros(2, "float32")])
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(200, 3)).astype("float32")
      >>> y = (x[:, 1] > 0).astype("int64")
      >>> done = refit_output_layer(model, (x, y), loss="sparse_categorical_crossentropy")
      >>> done.free, done.loss_after < done.loss_before
      (2, True)
      >>> int((model.layers[0].kernel.numpy() != 0).sum())
      2
    """
    if is_keras3_object(model):
        raise TypeError(
            "refit_output_layer changes a model in place and works on tf_keras models: "
            "translate it with tfstatprune.to_tf_keras(model) first"
        )
    require_graph(model, "refit_output_layer")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    per_example = resolve_loss(model, loss)
    check_stats_data(model, data)
    dense, tail = output_dense(model)
    features = keras.Model(model.inputs, dense.input)

    def head(h: tf.Tensor) -> tf.Tensor:  # layers called on tensors: no node is added
        out = dense(h, training=False)
        return out if tail is None else tail(out, training=False)

    inputs, labels = [], []
    for x, y in iter_chunks(data, batch_size or _CHUNK, max_examples, input_rank(model)):
        inputs.append(np.asarray(features(x, training=False), np.float32))
        labels.append(np.asarray(y))
    if not inputs:
        raise ValueError("refit_output_layer needs examples with labels; data has none")
    h = tf.constant(np.concatenate(inputs))
    y = tf.constant(np.concatenate(labels))
    weights = [dense.kernel] + ([dense.bias] if dense.use_bias else [])
    regularizers = [dense.kernel_regularizer] + ([dense.bias_regularizer] if dense.use_bias else [])
    start = [w.numpy() for w in weights]
    free = [v != 0 for v in start]
    where = [tf.constant(np.flatnonzero(f.ravel())[:, None]) for f in free]
    sizes = [int(f.sum()) for f in free]
    examples = int(h.shape[0])
    require_examples(dense.name, sum(sizes), examples)

    @tf.function
    def objective(theta: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parts = tf.split(theta, sizes)
        with tf.GradientTape() as tape:
            for w, part, index in zip(weights, parts, where, strict=True):
                w.assign(tf.reshape(tf.scatter_nd(index, part, [w.shape.num_elements()]), w.shape))
            value = tf.reduce_mean(per_example(y, head(h)))
            for reg, w in zip(regularizers, weights, strict=True):
                if reg is not None:
                    value += reg(w)
        # The variables hold the parameters (assigned above): the gradient is theirs.
        grads = tape.gradient(value, weights)
        flat = [
            tf.gather_nd(tf.reshape(g, [-1]), index) for g, index in zip(grads, where, strict=True)
        ]
        return value, tf.concat(flat, 0)

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(tf.constant(theta, tf.float32))
        return float(value), np.asarray(grad, np.float64)

    theta0 = np.concatenate([v[f] for v, f in zip(start, free, strict=True)]).astype(np.float64)
    before, _ = value_and_grad(theta0)
    if not np.isfinite(before):
        for w, v in zip(weights, start, strict=True):
            w.assign(v)
        raise ValueError(
            f"the loss of model {model.name!r} on data is {before} before the refit: "
            "look for NaN/Inf in the examples or the weights"
        )
    try:
        result = scipy.optimize.minimize(
            value_and_grad,
            theta0,
            jac=True,
            method="L-BFGS-B",
            # Tolerances at float32's resolution of the loss and its gradient.
            options={"maxiter": int(max_iterations), "ftol": 1e-10, "gtol": 1e-7},
        )
        after, _ = value_and_grad(result.x)
    except BaseException:  # an interrupted fit leaves the layer as it was
        value_and_grad(theta0)
        raise
    if not np.isfinite(after) or after > before:
        value_and_grad(theta0)  # back to the pruned values
        after = before
    return Refit(dense.name, examples, int(sum(sizes)), before, after, int(result.nit))
