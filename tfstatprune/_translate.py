"""Keras 3 models to tf_keras and back: the one table of what differs between them.

tensorflow-model-optimization, and so tfstatprune, runs on tf_keras (Keras 2).
A Keras 3 model is translated into an equivalent tf_keras model before anything
else happens, and results go back to Keras 3:

1. **Architecture from the config.** Every layer is rebuilt in the other Keras
   from ``layer.get_config()``, with the keys that differ between the versions
   mapped by the tables below (:data:`ONLY_IN_KERAS3`, :data:`ONLY_IN_TF_KERAS`,
   :data:`RENAMED`, :data:`ACTIVATIONS`, :data:`OPS`). A key only one version
   has is dropped when it holds the value meaning what the other version does
   anyway; any other value is an error naming the layer and the key.
2. **The graph** is replayed node by node on the other Keras's inputs, so
   shared layers, nested models and several inputs/outputs keep their shape.
3. **Weights by layer and role.** Each weight is copied to the weight of the
   same name inside the same layer (``"query/kernel"`` of a
   ``MultiHeadAttention``; ``kernel`` of a Keras 3 ``DepthwiseConv2D`` is
   ``depthwise_kernel`` in tf_keras: :data:`WEIGHT_ROLES`), never by its
   position in the model's weight list.
4. **Predictions checked**: both models are run on sample inputs (the user's
   data when given, else random inputs of the model's input shape); a maximum
   absolute difference above :data:`ATOL` (1e-5) is an error -- above
   ``1e-5 * max |output|`` for outputs larger than 1 (float32 rounding of a
   different summation order grows with the values).

Keras 3 is imported only here and only when a Keras 3 object shows up. A layer
that cannot be translated (a custom Keras 3 layer, a backend op) gets an error
that names it and points to :func:`register_translation`.

Import-time effect: the tf_keras versions of Keras 3's ``hard_sigmoid`` and
``hard_silu`` activations are registered as serializable tf_keras objects
(package ``tfstatprune``), so that translated models can be cloned and saved.
"""

from __future__ import annotations

import functools
import inspect
import json
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfstatprune._keras import is_keras3_object, keras

__all__ = [
    "ATOL",
    "TranslationError",
    "register_translation",
    "require_tf_keras_model",
    "returns_users_keras",
    "saved_keras_version",
    "tf_keras_loss",
    "to_keras3",
    "to_tf_keras",
]

ATOL = 1e-5
SAMPLE_EXAMPLES = 8
SAMPLE_LENGTH = 8  # for input dimensions of unknown size (sequences)
KERAS_VERSIONS = (2, 3)

# ------------------------------------------------------------- the one table

ALL = "*"  # a key every layer class may carry
ANY = object()  # a key that is dropped whatever its value (e.g. a recorded shape)
_RNNS = ("LSTM", "GRU", "SimpleRNN")
_SEPARABLE = ("SeparableConv1D", "SeparableConv2D")
_NO_GROUPS = ("DepthwiseConv1D", "DepthwiseConv2D", *_SEPARABLE) + tuple(
    f"Conv{d}DTranspose" for d in ("1", "2", "3")
)

# Config keys only Keras 3 has: {key: (the classes that carry it, the value that
# means what tf_keras does without it)}. Another value is an error.
ONLY_IN_KERAS3: dict[str, tuple[Any, Any]] = {
    "quantization_config": (ALL, None),
    "input_axes": (ALL, None),  # variance-scaling initializers' fan axes
    "output_axes": (ALL, None),
    "rms_scaling": (("LayerNormalization",), False),
    "seed": ((*_RNNS, "MultiHeadAttention"), None),
    "sliding_window": (("MultiHeadAttention",), None),
    "use_gate": (("MultiHeadAttention",), False),
}
# Config keys only tf_keras has, in the same form.
ONLY_IN_TF_KERAS: dict[str, tuple[Any, Any]] = {
    "batch_input_shape": (ALL, ANY),  # the graph's inputs carry the shape
    "input_length": (("Embedding",), ANY),
    "groups": (_NO_GROUPS, 1),
    "kernel_initializer": (_SEPARABLE, ANY),  # unused by tf_keras' separable convolutions
    "kernel_regularizer": (_SEPARABLE, ANY),
    "kernel_constraint": (_SEPARABLE, ANY),
    "time_major": (_RNNS, False),
    "implementation": (_RNNS, ANY),  # an equivalent computation order
    "softmax_robust_masking": (("MultiHeadAttention",), False),
    "query_shape": (("MultiHeadAttention",), ANY),  # recorded build shapes
    "key_shape": (("MultiHeadAttention",), ANY),
    "value_shape": (("MultiHeadAttention",), ANY),
    "trainable": (("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"), ANY),
}
# tf_keras classes whose ``from_config`` wants recorded build shapes Keras 3
# does not record: made from their constructor, built by the call.
BUILT_BY_CALL_IN_TF_KERAS = ("MultiHeadAttention",)
# {class: {Keras 3 key: tf_keras key}}
RENAMED: dict[str, dict[str, str]] = {"LeakyReLU": {"negative_slope": "alpha"}}


# Values tf_keras stores in another form: {(class, key): tf_keras value -> Keras 3 value}.
def _single_axis(axis: Any) -> Any:
    return axis[0] if isinstance(axis, list) and len(axis) == 1 else axis


TO_KERAS3_VALUES: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("BatchNormalization", "axis"): _single_axis,  # tf_keras records [3], Keras 3 takes 3
}
# {class: {Keras 3 weight role: tf_keras weight role}}
WEIGHT_ROLES: dict[str, dict[str, str]] = {
    "DepthwiseConv1D": {"kernel": "depthwise_kernel"},
    "DepthwiseConv2D": {"kernel": "depthwise_kernel"},
}


@keras.utils.register_keras_serializable(package="tfstatprune")
def keras3_hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
    """Keras 3's ``hard_sigmoid``: ``relu6(x + 3) / 6`` (tf_keras' is ``0.2 x + 0.5``)."""
    return tf.nn.relu6(x + 3.0) / 6.0


@keras.utils.register_keras_serializable(package="tfstatprune")
def keras3_hard_silu(x: tf.Tensor) -> tf.Tensor:
    """Keras 3's ``hard_silu`` (``hard_swish``): ``x * relu6(x + 3) / 6``."""
    return x * keras3_hard_sigmoid(x)


# Activations whose name means something else, or nothing, in tf_keras:
# {Keras 3 name: tf_keras name}; ``None``: no Keras 3 equivalent.
ACTIVATIONS: dict[str, str | None] = {
    "hard_sigmoid": "tfstatprune>keras3_hard_sigmoid",
    "hard_silu": "tfstatprune>keras3_hard_silu",
    "hard_swish": "tfstatprune>keras3_hard_silu",
}
TF_KERAS_ONLY_ACTIVATIONS = ("hard_sigmoid",)  # 0.2 x + 0.5: no Keras 3 namesake
# Keras 3 operations (``x + 3.0`` on a symbolic tensor) and the tf_keras
# ``TFOpLambda`` function that does the same: {Keras 3 op class: TF function}.
OPS: dict[str, str] = {
    "Add": "__operators__.add",
    "Subtract": "math.subtract",
    "Multiply": "math.multiply",
    "TrueDivide": "math.truediv",
    "Divide": "math.truediv",
}
_OPS_BACK = {"__operators__.add": "add", "math.add": "add", "math.subtract": "subtract"}
_OPS_BACK |= {"math.multiply": "multiply", "math.truediv": "true_divide"}

# ------------------------------------------------------------------ errors


class TranslationError(ValueError):
    """A model cannot be translated exactly between Keras 3 and tf_keras."""


def _register_hint(layer: Any, target: str) -> str:
    cls = type(layer)
    return (
        f"Register a translation for it: tsp.register_translation({cls.__name__}, fn), "
        f"where fn(layer) returns the equivalent {target} layer (or a callable applied "
        f"to the layer's inputs); its weights are then copied by name."
    )


# ----------------------------------------------------------------- the sides


class _Side(NamedTuple):
    """What the walk needs to know about one Keras."""

    version: int
    label: str
    api: Any  # the keras module
    package: str  # top-level module name of its built-in classes


def _keras3() -> Any:
    import keras as keras3  # imported here only: a Keras 3 object showed up

    return keras3


def _side(version: int) -> _Side:
    if version == 2:
        return _Side(2, "tf_keras", keras, "tf_keras")
    return _Side(3, "Keras 3", _keras3(), "keras")


def _version_of(obj: Any) -> int:
    return 3 if is_keras3_object(obj) else 2


# ---------------------------------------------------------------- user hooks

_TRANSLATIONS: dict[type, Callable[[Any], Any]] = {}


def register_translation(cls: type, fn: Callable[[Any], Any], *, replace: bool = False) -> None:
    """Teach the translation a layer class it does not know (a custom layer).

    Args:
      cls: the layer class of the model being translated (a Keras 3 class for
        :func:`to_tf_keras`, a tf_keras class for :func:`to_keras3`);
        subclasses use it too.
      fn: ``fn(layer) -> new_layer``: the equivalent layer of the other Keras,
        unbuilt. It is called on the translated inputs, then its weights are
        copied from ``layer`` by name and the predictions of the whole model
        are compared.
      replace: replace an earlier registration for ``cls`` (else an error).

    Example::

        tsp.register_translation(
            MyScale, lambda layer: tf_keras.layers.Rescaling(layer.factor, name=layer.name))
    """
    if not isinstance(cls, type) or not callable(fn):
        raise TypeError(f"register_translation(cls, fn) needs a class and a callable, got {cls!r}")
    if cls in _TRANSLATIONS and not replace:
        raise ValueError(f"{cls.__name__} already has a translation; pass replace=True")
    _TRANSLATIONS[cls] = fn


def _registered(obj: Any) -> Callable[[Any], Any] | None:
    for cls in type(obj).__mro__:
        if cls in _TRANSLATIONS:
            return _TRANSLATIONS[cls]
    return None


# ---------------------------------------------------------- config translation


def _is_policy(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class_name") in (
        "DTypePolicy",
        "FloatDTypePolicy",
        "Policy",
    )


def _activation_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("class_name") == "function":
        return value.get("config")
    return None


def _map_activation(value: Any, source: _Side, where: str) -> Any:
    name = _activation_name(value)
    if name is None:
        return value
    if source.version == 3:
        return ACTIVATIONS.get(name, name)
    if name in TF_KERAS_ONLY_ACTIVATIONS:
        raise TranslationError(
            f"{where}: tf_keras' activation {name!r} (0.2 x + 0.5, clipped) has no Keras 3 "
            "namesake (Keras 3's hard_sigmoid is relu6(x + 3) / 6)"
        )
    back = {v: k for k, v in ACTIVATIONS.items()}
    return back.get(name, name)


def _map_config(config: dict, class_name: str, source: _Side, where: str) -> dict:
    """``config`` of a ``class_name`` object of ``source``, in the other Keras's keys."""
    only = ONLY_IN_KERAS3 if source.version == 3 else ONLY_IN_TF_KERAS
    renamed = RENAMED.get(class_name, {})
    if source.version == 2:
        renamed = {v: k for k, v in renamed.items()}
    found = {}
    for key, value in config.items():
        classes, neutral = only.get(key, ((), None))
        if classes == ALL or class_name in classes:
            if neutral is ANY or value == neutral:
                continue
            other = "tf_keras" if source.version == 3 else "Keras 3"
            raise TranslationError(
                f"{where}: {key}={value!r} has no {other} equivalent (only {neutral!r} translates)"
            )
        if isinstance(value, list):  # tf_keras' tracked ListWrapper
            value = list(value)
        if source.version == 2 and (class_name, key) in TO_KERAS3_VALUES:
            value = TO_KERAS3_VALUES[class_name, key](value)
        if _is_policy(value):
            value = value["config"]["name"]
        elif key == "activation":
            value = _map_activation(value, source, where)
        elif isinstance(value, dict) and "class_name" in value and "config" in value:
            inner, nested_class = value["config"], value["class_name"]
            if isinstance(inner, dict):
                inner = _map_config(inner, value["class_name"], source, f"{where}.{key}")
            kept = ("module", "registered_name") if source.version == 2 else ()  # Keras 3 finds
            value = {k: value[k] for k in kept if k in value}  # nested layers by module
            value |= {"class_name": nested_class, "config": inner}
        found[renamed.get(key, key)] = value
    return found


def _builtin_class(obj: Any, source: _Side, target: _Side) -> type | None:
    cls = type(obj)
    if cls.__module__.split(".")[0] != source.package:
        return None
    return getattr(target.api.layers, cls.__name__, None)


def _translate_op(op: Any, source: _Side, target: _Side) -> Callable[..., Any] | None:
    """A callable of the other Keras for a backend op node, or None."""
    if source.version == 3:
        name = OPS.get(type(op).__name__) if type(op).__module__.endswith("ops.numpy") else None
        if name is None:
            return None
        fn = functools.reduce(getattr, name.split("."), tf)
        return lambda *args, **kwargs: fn(*args, **kwargs)
    function = getattr(op, "get_config", dict)().get("function")
    if type(op).__name__ != "TFOpLambda" or function not in _OPS_BACK:
        return None
    fn = getattr(target.api.ops, _OPS_BACK[function])
    return lambda *args, name=None, **kwargs: fn(*args, **kwargs)


def _new_layer(layer: Any, source: _Side, target: _Side) -> Any:
    """The other Keras's layer (or callable) for ``layer``, unbuilt."""
    fn = _registered(layer)
    if fn is not None:
        return fn(layer)
    where = f"layer {layer.name!r} ({type(layer).__name__})"
    if isinstance(layer, source.api.Model):
        return _translate(layer, source, target, data=None, check=False).model
    if not isinstance(layer, source.api.layers.Layer) or type(layer).__name__ == "TFOpLambda":
        op = _translate_op(layer, source, target)
        if op is None:
            raise TranslationError(
                f"{where} is a backend operation that has no {target.label} translation. "
                f"{_register_hint(layer, target.label)}"
            )
        return op
    cls = _builtin_class(layer, source, target)
    if cls is None:
        raise TranslationError(
            f"{where} from {type(layer).__module__} is not a built-in {source.label} layer "
            f"with a {target.label} namesake. {_register_hint(layer, target.label)}"
        )
    config = _map_config(layer.get_config(), type(layer).__name__, source, where)
    try:
        if target.version == 2 and cls.__name__ in BUILT_BY_CALL_IN_TF_KERAS:
            return cls(**config)
        return cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise TranslationError(
            f"{where}: its config does not build a {target.label} {cls.__name__} ({error}). "
            f"{_register_hint(layer, target.label)}"
        ) from error


# -------------------------------------------------------------- weight copy


def _variable_name(variable: Any, side: _Side) -> str:
    name = variable.path if side.version == 3 else variable.name
    return name.split(":")[0]


def _roles(layer: Any, side: _Side, *, short: bool = False) -> dict[str, Any]:
    """``{role: variable}``: each weight's path inside ``layer`` (``query/kernel``).

    ``short``: the weight's own name only, numbered in order when it repeats
    (``kernel``, ``kernel#2``): for wrappers (``Bidirectional``,
    ``TimeDistributed``) whose inner layers the two versions name differently.
    """
    renames = WEIGHT_ROLES.get(type(layer).__name__, {}) if side.version == 3 else {}
    found: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for variable in layer.weights:
        parts = _variable_name(variable, side).split("/")
        inner = parts[parts.index(layer.name) + 1 :] if layer.name in parts[:-1] else parts[-1:]
        inner = inner[-1:] if short else inner
        role = "/".join([*inner[:-1], renames.get(inner[-1], inner[-1])])
        counts[role] = counts.get(role, 0) + 1
        found[role if counts[role] == 1 else f"{role}#{counts[role]}"] = variable
    return found


def _copy_weights(old: Any, new: Any, source: _Side, target: _Side) -> dict[str, str]:
    """Copy ``old``'s weights into ``new`` by role; ``{new name: old name}``."""
    have, want = _roles(old, source), _roles(new, target)
    if set(have) != set(want):
        have, want = _roles(old, source, short=True), _roles(new, target, short=True)
    if set(have) != set(want):
        raise TranslationError(
            f"layer {old.name!r} ({type(old).__name__}): its weights {sorted(have)} do not "
            f"match the {target.label} layer's {sorted(want)}. {_register_hint(old, target.label)}"
        )
    names = {}
    for role, variable in have.items():
        value = np.asarray(variable.numpy())
        slot = want[role]
        if tuple(slot.shape) != value.shape:
            raise TranslationError(
                f"layer {old.name!r}: weight {role!r} has shape {value.shape} but the "
                f"{target.label} layer's has {tuple(slot.shape)}"
            )
        slot.assign(value)
        names[_variable_name(slot, target)] = _variable_name(variable, source)
    finalize = getattr(new, "finalize_state", None)  # Normalization: mean/variance from weights
    if have and callable(finalize):
        finalize()
    return names


# ---------------------------------------------------------------- the walk


class _Translated(NamedTuple):
    model: Any
    names: dict[str, str]  # {new weight name: old weight name}


def _nodes(model: Any, side: _Side) -> list[tuple[Any, tuple, dict, list]]:
    """``(layer, args, kwargs, outputs)`` of every call in ``model``, inputs first."""
    found = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            if side.version == 3:
                args, kwargs = node.arguments.args, node.arguments.kwargs
                found.append((node.operation, args, kwargs, list(node.outputs)))
            else:
                found.append(
                    (node.layer, node.call_args, node.call_kwargs, tf.nest.flatten(node.outputs))
                )
    return found


def _input_like(tensor: Any, target: _Side) -> Any:
    name = tensor._keras_history[0].name  # the InputLayer's name
    return target.api.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=name)


def _is_sequential(model: Any, side: _Side) -> bool:
    return isinstance(model, side.api.Sequential)


def _check_graph_model(model: Any, source: _Side) -> None:
    if not isinstance(model, source.api.Model):
        raise TypeError(
            f"Expected a Keras model (Sequential or functional), got {type(model).__name__}."
        )
    graph = _is_sequential(model, source) or getattr(model, "_is_graph_network", False)
    if source.version == 3:
        graph = graph or isinstance(model, source.api.src.models.Functional)
    if not graph:
        raise TypeError(
            f"{type(model).__name__} is a subclassed {source.label} model; tfstatprune "
            "translates Sequential and functional models: rebuild it with the functional API"
        )
    try:
        model.inputs  # noqa: B018 - a Sequential model without an input shape has none
    except (AttributeError, ValueError):
        model_inputs = None
    else:
        model_inputs = model.inputs
    if not model_inputs:
        raise ValueError(
            f"model {model.name!r} has no input shape yet: build it first (an Input layer "
            "or a first call on data) so that it can be translated"
        )


def _translate(
    model: Any, source: _Side, target: _Side, data: Any, check: bool, atol: float = ATOL
) -> _Translated:
    _check_graph_model(model, source)
    names: dict[str, str] = {}
    if _is_sequential(model, source):
        pairs = [(layer, _new_layer(layer, source, target)) for layer in model.layers]
        inputs = [_input_like(t, target) for t in model.inputs]
        new = target.api.Sequential([*inputs, *(n for _, n in pairs)], name=model.name)
    else:
        inputs = [_input_like(t, target) for t in model.inputs]
        tensors = {id(old): new for old, new in zip(model.inputs, inputs, strict=True)}
        made: dict[int, Any] = {}
        pairs = []

        def replace(value: Any) -> Any:
            return tensors.get(id(value), value)

        for layer, args, kwargs, outputs in _nodes(model, source):
            if id(layer) not in made:
                made[id(layer)] = _new_layer(layer, source, target)
                pairs.append((layer, made[id(layer)]))
            args, kwargs = tf.nest.map_structure(replace, (tuple(args), dict(kwargs)))
            result = made[id(layer)](*args, **kwargs)
            for old, new_tensor in zip(outputs, tf.nest.flatten(result), strict=True):
                tensors[id(old)] = new_tensor
        outputs = [tensors[id(t)] for t in model.outputs]
        new = target.api.Model(
            inputs if len(inputs) > 1 else inputs[0],
            outputs if len(outputs) > 1 else outputs[0],
            name=model.name,
        )
    for old, made_layer in pairs:
        if isinstance(old, source.api.Model) or not hasattr(made_layer, "weights"):
            continue  # nested models copied their own weights; ops have none
        names |= _copy_weights(old, made_layer, source, target)
    if check:
        made_for = {id(old): made_layer for old, made_layer in pairs}
        _check_predictions(model, new, source, target, data, atol, made_for)
        _carry_loss(model, new, source, target)
    return _Translated(new, names)


_LOSS_KEYS_DROPPED = ("name", "reduction", "dtype")  # the defaults of both versions


def _translated_loss(loss: Any, source: _Side, target: _Side) -> Any:
    """``loss`` in the target Keras: a built-in Loss re-made from its config (its
    ``from_logits`` kept), a built-in loss function by name; None without a counterpart."""
    if callable(loss) and not isinstance(loss, source.api.losses.Loss):
        loss = getattr(loss, "__name__", None)  # a built-in loss function, by name
    if isinstance(loss, source.api.losses.Loss):
        cls = getattr(target.api.losses, type(loss).__name__, None)
        if cls is None or type(loss).__module__.split(".")[0] != source.package:
            return None
        config = {k: v for k, v in loss.get_config().items() if k not in _LOSS_KEYS_DROPPED}
        loss = cls(**config)
    if loss is None or (isinstance(loss, str) and not hasattr(target.api.losses, loss)):
        return None
    return loss


def _carry_loss(old: Any, new: Any, source: _Side, target: _Side) -> None:
    """Compile ``new`` with ``old``'s compiled loss (the statistics use it); else leave it."""
    loss = _translated_loss(getattr(old, "loss", None), source, target)
    if loss is not None:
        new.compile(loss=loss)


def _keyword_dicts(signature: inspect.Signature, bound: inspect.BoundArguments) -> list[dict]:
    """The ``**kwargs`` dicts of a bound call (where a ``loss=`` may sit)."""
    return [
        bound.arguments[name]
        for name, p in signature.parameters.items()
        if p.kind is inspect.Parameter.VAR_KEYWORD and name in bound.arguments
    ]


def tf_keras_loss(loss: Any) -> Any:
    """A Keras 3 loss (object or built-in function) passed as ``loss=`` as the tf_keras
    loss the statistics run (anything else as it is).

    Raises:
      ValueError: a Keras 3 loss with no tf_keras counterpart (a custom class).
    """
    function = callable(loss) and getattr(loss, "__module__", "").split(".")[0] == "keras"
    if not (is_keras3_object(loss) or function):  # a Keras 3 Loss or built-in function
        return loss
    translated = _translated_loss(loss, _side(3), _side(2))
    if translated is None:
        raise ValueError(
            f"loss={type(loss).__name__}(...) is a Keras 3 loss without a tf_keras "
            "counterpart; the statistics run on the tf_keras model: pass a tf_keras loss, a "
            "built-in loss name, or a function (y_true, y_pred) -> per-example values"
        )
    return translated


# -------------------------------------------------------- the prediction check


def _data_inputs(data: Any, count: int) -> Any:
    """The first ``count`` inputs of ``(x, y)``, ``x`` or a dataset; None if unusable."""
    if isinstance(data, tf.data.Dataset):
        batch = next(iter(data.take(1)), None)
        data = batch[0] if isinstance(batch, tuple) else batch
    elif isinstance(data, tuple) and len(data) in (2, 3):
        data = data[0]
    if isinstance(data, (list, tuple)):
        return [np.asarray(x)[:count] for x in data]
    if data is None or not hasattr(data, "shape"):
        return None
    return np.asarray(data)[:count]


def _embedding_bound(model: Any) -> int:
    dims = [getattr(layer, "input_dim", 0) for layer in _all_layers(model)]
    dims = [d for d in dims if isinstance(d, int) and d > 0]
    return min(dims, default=2)


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def sample_inputs(model: Any, data: Any = None, count: int = SAMPLE_EXAMPLES) -> list[np.ndarray]:
    """Inputs to compare predictions on: ``data``'s first examples, else random ones.

    Examples with a non-finite input are left out: they say nothing about the
    translation, and the statistics' own check names them to the user.
    """
    given = _data_inputs(data, count) if data is not None else None
    if given is not None:
        given = given if isinstance(given, list) else [given]
        if len(given) == len(model.inputs):
            finite = np.ones(len(given[0]), bool)
            for x in given:
                x = np.asarray(x)
                if np.issubdtype(x.dtype, np.floating):
                    finite &= np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if finite.any():
                return [np.asarray(x)[finite] for x in given]
    rng = np.random.default_rng(0)
    found = []
    for tensor in model.inputs:
        shape = [count] + [SAMPLE_LENGTH if d is None else int(d) for d in tensor.shape[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype))
        if np.issubdtype(dtype, np.integer):
            found.append(rng.integers(0, _embedding_bound(model), size=shape).astype(dtype))
        else:
            found.append(rng.standard_normal(shape).astype(dtype))
    return found


def _predict(model: Any, side: _Side, x: list[np.ndarray]) -> list[np.ndarray]:
    out = model(x if len(model.inputs) > 1 else x[0], training=False)
    to_numpy = side.api.ops.convert_to_numpy if side.version == 3 else np.asarray
    return [np.asarray(to_numpy(y), np.float64) for y in tf.nest.flatten(out)]


class Agreement(NamedTuple):
    """How two models' (or layers') outputs compare on the same inputs."""

    max_abs_diff: float
    max_abs_output: float
    atol: float = ATOL

    @property
    def tolerance(self) -> float:
        """``atol``, times the largest ``|output|`` when it exceeds 1 (float32 rounding)."""
        return self.atol * max(1.0, self.max_abs_output)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _compare(expected: list[np.ndarray], got: list[np.ndarray], atol: float) -> Agreement:
    diff = max(
        float(np.max(np.abs(p - q), initial=0.0)) for p, q in zip(expected, got, strict=True)
    )
    return Agreement(diff, max(float(np.max(np.abs(p), initial=0.0)) for p in expected), atol)


def agreement(a: Any, b: Any, x: list[np.ndarray], atol: float = ATOL) -> Agreement:
    """Largest ``|a(x) - b(x)|`` and ``|a(x)|`` over all outputs (either Keras)."""
    return _compare(*(_predict(m, _side(_version_of(m)), x) for m in (a, b)), atol)


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(getattr(value, "numpy", lambda: value)(), np.float64)


def _layer_agreements(
    old: Any, source: _Side, made: dict[int, Any], x: list[np.ndarray], atol: float
) -> list[tuple[str, Agreement]]:
    """Each call of ``old`` re-run by its translation on the original's own inputs.

    Isolates a layer that computes differently from rounding that a deep
    network amplifies: every translated layer gets exactly the inputs the
    original layer saw.
    """
    graph = getattr(old, "_functional", old)  # a Keras 3 Sequential keeps its graph there
    nodes = _nodes(graph, source)
    known = {id(t): np.asarray(v) for t, v in zip(old.inputs, x, strict=True)}
    wanted = {}
    for _, args, kwargs, outputs in nodes:
        for t in [*tf.nest.flatten((tuple(args), dict(kwargs))), *outputs]:
            if hasattr(t, "shape") and hasattr(t, "dtype") and id(t) not in known:
                wanted[id(t)] = t
    probe = source.api.Model(
        old.inputs if len(old.inputs) > 1 else old.inputs[0], list(wanted.values())
    )
    values = tf.nest.flatten(probe(x if len(x) > 1 else x[0], training=False))
    to_numpy = source.api.ops.convert_to_numpy if source.version == 3 else np.asarray
    known |= {key: np.asarray(to_numpy(v)) for key, v in zip(wanted, values, strict=True)}
    found = []
    for layer, args, kwargs, outputs in nodes:
        if id(layer) not in made:
            continue
        args, kwargs = tf.nest.map_structure(
            lambda v: known.get(id(v), v), (tuple(args), dict(kwargs))
        )
        got = tf.nest.flatten(made[id(layer)](*args, **kwargs))
        expected = [known[id(t)] for t in outputs]
        found.append(
            (layer.name, _compare([_numpy(e) for e in expected], [_numpy(g) for g in got], atol))
        )
    return found


def _diagnosis(old: Any, source: _Side, made: dict[int, Any], x: list, atol: float) -> str:
    try:
        layers = _layer_agreements(old, source, made, x, atol)
    except Exception as error:  # noqa: BLE001 - a diagnosis must not hide the real error
        return f"(no per-layer comparison: {type(error).__name__}: {error})"
    wrong = [(name, a) for name, a in layers if not a.passed]
    if wrong:
        name, a = wrong[0]
        return (
            f"Layer {name!r} computes differently: max |diff| {a.max_abs_diff:.3g} on outputs "
            f"up to {a.max_abs_output:.3g}, given the original's inputs. Translate it yourself "
            "with tsp.register_translation(LayerClass, fn)."
        )
    name, a = max(layers, key=lambda pair: pair[1].max_abs_diff / pair[1].tolerance)
    return (
        f"Every layer, given the original's inputs, agrees within float32 rounding (largest: "
        f"{a.max_abs_diff:.3g} on outputs up to {a.max_abs_output:.3g}, layer {name!r}); the "
        "network amplifies rounding differences. If that is acceptable, translate it with a "
        "larger tolerance yourself: tsp.to_tf_keras(model, atol=...)."
    )


def _check_predictions(
    old: Any,
    new: Any,
    source: _Side,
    target: _Side,
    data: Any,
    atol: float,
    made: dict[int, Any],
) -> None:
    x = sample_inputs(old, data)
    found = agreement(old, new, x, atol)
    if not found.passed:
        raise TranslationError(
            f"the {target.label} translation of {source.label} model {old.name!r} predicts "
            f"differently: max |diff| = {found.max_abs_diff:.3g} > {found.tolerance:.3g} on "
            f"{len(x[0])} sample inputs. {_diagnosis(old, source, made, x, atol)}"
        )


# ---------------------------------------------------------------- public API

_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tf_keras model -> names
_CAME_AS_KERAS3: weakref.WeakSet = weakref.WeakSet()  # wrapped models to hand back as Keras 3


def to_tf_keras(model: Any, data: Any = None, *, atol: float = ATOL) -> keras.Model:
    """An equivalent tf_keras model of a Keras 3 Sequential or functional ``model``.

    Architecture from the layers' configs, weights copied by layer and role,
    predictions checked to ``max |diff| <= atol`` (times the largest ``|output|``
    when it exceeds 1) on ``data``'s first inputs (``(x, y)``, ``x`` or a
    dataset) or random inputs of the model's shape. When they differ, the error
    says which layer computes differently, or that every layer agrees and the
    network amplifies float32 rounding. A tf_keras model is returned as it is;
    ``model`` is never modified.

    Raises:
      TranslationError: a layer without translation (the message says how to
        register one), a Keras 3 option tf_keras lacks, or differing predictions.
      TypeError: a subclassed model or not a Keras model.
    """
    if isinstance(model, keras.Model):
        return model
    _check_atol(atol)
    translated = _translate(model, _side(3), _side(2), data, check=True, atol=atol)
    _NAMES[translated.model] = translated.names
    return translated.model


def require_tf_keras_model(model: object, what: str = "model", data: object = None) -> keras.Model:
    """``model`` as a tf_keras ``Model``: itself, or the translation of a Keras 3 model.

    Args:
      model: the object a user passed in.
      what: how the error message should call it.
      data: inputs to check a translation's predictions on (default: random ones).

    Raises:
      TranslationError: a Keras 3 model that cannot be translated exactly.
      TypeError: for anything that is not a Keras model at all.
    """
    if isinstance(model, keras.Model):
        return model
    if is_keras3_object(model):
        return to_tf_keras(model, data)
    raise TypeError(
        f"Expected the {what} to be a tf_keras Model (Sequential or functional), "
        f"got {type(model).__name__}."
    )


def to_keras3(model: Any, data: Any = None, *, atol: float = ATOL) -> Any:
    """An equivalent Keras 3 model of a tf_keras ``model`` (the inverse of :func:`to_tf_keras`).

    Pruning wrappers must be stripped first (:func:`tfstatprune.strip_pruning`).
    A Keras 3 model is returned as it is.
    """
    if is_keras3_object(model):
        return model
    _check_atol(atol)
    return _translate(model, _side(2), _side(3), data, check=True, atol=atol).model


def _check_atol(atol: float) -> None:
    if not (isinstance(atol, (int, float)) and np.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")


def weight_names(model: Any) -> dict[str, str]:
    """``{tf_keras weight name: Keras 3 weight path}`` of a model from :func:`to_tf_keras`."""
    return dict(_NAMES.get(model, {}))


def saved_keras_version(path: str | Path) -> int:
    """2 or 3: which Keras wrote the ``.keras`` (or ``.h5``) file at ``path``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version", "2")
    else:
        import h5py

        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", "2")
        version = version.decode() if isinstance(version, bytes) else str(version)
    return 3 if str(version).startswith("3") else 2


def check_keras_version(keras_version: int | None) -> None:
    if keras_version is not None and keras_version not in KERAS_VERSIONS:
        raise ValueError(
            f"keras_version must be 2 (tf_keras), 3 (Keras 3) or None (the Keras the model "
            f"came in), got {keras_version!r}"
        )


def _deliver(result: Any, version: int) -> Any:
    """``result`` (a model, or a NamedTuple with a ``model``) in Keras ``version``."""
    convert = to_keras3 if version == 3 else to_tf_keras
    if hasattr(result, "_replace") and hasattr(result, "model"):
        return result._replace(model=convert(result.model))
    return convert(result)


_KERAS3_NOTE = {
    "model": "\n\n    Keras 3: a Keras 3 ``model`` is translated to tf_keras first (predictions "
    "checked)\n    and the result comes back in Keras 3; ``keras_version=2`` keeps it in "
    "tf_keras.\n",
    "wrapped": "\n\n    Keras 3: a Keras 3 ``model`` is translated to tf_keras first (predictions "
    "checked);\n    the wrapped tf_keras model remembers it, and ``strip_pruning`` hands "
    "back Keras 3\n    (``keras_version=2`` here: tf_keras).\n",
    "names": "\n\n    Keras 3: a Keras 3 ``model`` is translated to tf_keras first (predictions "
    "checked);\n    the result is keyed by its Keras 3 weight paths.\n",
}


def returns_users_keras(result: str = "model") -> Callable[[Callable], Callable]:
    """Decorate an entry point taking ``model`` so that it speaks the user's Keras.

    A Keras 3 ``model`` is translated to tf_keras (checked on ``stats_data``
    when the function takes it) before the call. What comes back depends on
    ``result``:

    - ``"model"``: the returned model (or NamedTuple's ``model``) is handed back
      in the Keras the model came in (a Keras 3 model, or a pruned model made
      from one), or in ``keras_version`` (2 or 3) when the caller passes it;
    - ``"wrapped"``: the returned (tf_keras, pruning-wrapped) model remembers
      that it came from Keras 3, for :func:`tfstatprune.strip_pruning`;
    - ``"names"``: the returned ``{weight name: ...}`` is keyed by the Keras 3
      weight paths.
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, keras_version: int | None = None, **kwargs: Any) -> Any:
            check_keras_version(keras_version)
            bound = signature.bind(*args, **kwargs)
            model = bound.arguments.get("model")
            came = 3 if is_keras3_object(model) or model in _CAME_AS_KERAS3 else 2
            if is_keras3_object(model):
                bound.arguments["model"] = to_tf_keras(model, bound.arguments.get("stats_data"))
            for arguments in (bound.arguments, *_keyword_dicts(signature, bound)):
                if arguments.get("loss") is not None:
                    arguments["loss"] = tf_keras_loss(arguments["loss"])
            out = fn(*bound.args, **bound.kwargs)
            want = keras_version or came
            if result == "wrapped":
                if want == 3:
                    _CAME_AS_KERAS3.add(out)
                return out
            if result == "names":
                names = weight_names(bound.arguments["model"])
                return {names.get(k.split(":")[0], k): v for k, v in out.items()}
            return _deliver(out, want)

        extra = inspect.Parameter("keras_version", inspect.Parameter.KEYWORD_ONLY, default=None)
        params = list(signature.parameters.values())
        at = next(
            (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
            len(params),
        )
        wrapper.__signature__ = signature.replace(parameters=[*params[:at], extra, *params[at:]])
        wrapper.__doc__ = (fn.__doc__ or "") + _KERAS3_NOTE[result]
        return wrapper

    return decorate
