"""Keras -> .tflite, validated against Keras, with a size and storage report."""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tflite_export import _data
from tflite_export._table import kib, table
from tflite_export.flatbuffer import Storage, WeightTensor, inspect_weights, read_tflite
from tflite_export.runtime import RUNTIME_XNNPACK, load, predict
from tflite_export.xnnpack import XnnpackCheck
from tflite_export.xnnpack import check as check_xnnpack

__all__ = [
    "ExportError",
    "ExportReport",
    "QUANTIZE_MODES",
    "REPRESENTATIVE_EXAMPLES",
    "TOLERANCES",
    "Tolerance",
    "Validation",
    "ValidationError",
    "convert",
    "export",
    "validate",
]

#: Values of ``quantize``: None keeps float32 weights and arithmetic.
QUANTIZE_MODES = (None, "dynamic", "float16", "int8")
#: Examples of ``representative_data`` used to calibrate int8 activations
#: (the TFLite guide suggests 100-500).
REPRESENTATIVE_EXAMPLES = 100
#: At most this many examples are compared in validation.
VALIDATION_EXAMPLES = 128
#: Random inputs (uniform in [0, 1), seed 0) used when no data is given.
RANDOM_EXAMPLES = 32
_RANDOM_SEED = 0
_FLOAT = "float32"
_GZIP_LEVEL = 9


class Tolerance(NamedTuple):
    """What validation accepts for one export mode.

    Attributes:
      max_abs: bound on ``max |tflite - keras|`` over all outputs, scaled by
        ``max(1, max |keras|)`` so that it is absolute for outputs in [-1, 1]
        (probabilities) and relative for larger ones (logits).
      min_argmax_agreement: minimum fraction of *decisive* examples whose argmax
        (predicted class) is unchanged; checked for outputs with > 1 column.
        An example is decisive when Keras's top output exceeds its second by
        more than the ``max_abs`` bound: near-ties (untrained models, random
        inputs) may flip under any rounding and are not held against the file.
    """

    max_abs: float
    min_argmax_agreement: float


#: Per mode. Observed on trained LeNet-300-100 (MNIST test inputs): float32
#: 3e-7, float16 4e-4, dynamic 4e-3, int8 1.6e-2 with every prediction kept.
TOLERANCES: dict[str, Tolerance] = {
    _FLOAT: Tolerance(1e-5, 1.0),
    "float16": Tolerance(1e-2, 0.99),
    "dynamic": Tolerance(5e-2, 0.98),
    "int8": Tolerance(1e-1, 0.95),
}


class ExportError(ValueError):
    """The converter produced a model that would compute wrong outputs."""


@dataclass(frozen=True)
class Validation:
    """The comparison of the .tflite model with Keras.

    Attributes:
      examples: number of inputs compared.
      inputs: where they came from (``"sample_inputs"``, ``"representative_data"``,
        ``"random uniform [0, 1)"``).
      max_abs_diff: ``max |tflite - keras|`` over all outputs.
      bound: the accepted maximum (:class:`Tolerance` scaled by the outputs).
      argmax_agreement: fraction of all examples with the same argmax (None for
        a single output column).
      decisive: number of examples whose Keras top-2 margin exceeds ``bound``.
      decisive_agreement: fraction of those with the same argmax (None when
        there are none); the value that is checked.
      min_argmax_agreement: the accepted minimum.
      runtime: what ran the .tflite model (``"XNNPACK"``, ``"builtin kernels"``).
      xnnpack_error: why XNNPACK could not prepare the model, if it could not.
    """

    examples: int
    inputs: str
    max_abs_diff: float
    bound: float
    argmax_agreement: float | None
    decisive: int
    decisive_agreement: float | None
    min_argmax_agreement: float
    runtime: str
    xnnpack_error: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the outputs are within tolerance (NaN fails)."""
        close = bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.bound)
        agree = (
            self.decisive_agreement is None or self.decisive_agreement >= self.min_argmax_agreement
        )
        return close and agree

    def __str__(self) -> str:
        agreement = ""
        if self.argmax_agreement is not None:
            decisive = (
                "no decisive example"
                if self.decisive_agreement is None
                else f"{self.decisive_agreement:.1%} of {self.decisive} decisive, "
                f"min {self.min_argmax_agreement:.0%}"
            )
            agreement = f", argmax agreement {self.argmax_agreement:.1%} ({decisive})"
        verdict = "passed" if self.passed else "FAILED"
        text = (
            f"validation vs Keras: {verdict}: max |diff| {self.max_abs_diff:.2e} "
            f"(bound {self.bound:.1e}){agreement}; {self.examples} examples "
            f"({self.inputs}), run with {self.runtime}"
        )
        if self.xnnpack_error:
            text += (
                f"\n  warning: XNNPACK (LiteRT's default CPU delegate) cannot prepare this "
                f"model ({self.xnnpack_error.strip()}); apps must run it without XNNPACK "
                f"(benchmark_model --use_xnnpack=false), or export with sparse=False"
            )
        return text


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote.

    Attributes:
      path: the .tflite file.
      quantize: the quantization mode (None: float32).
      sparse: whether sparse storage was asked for.
      stripped: whether pruning wrappers were removed first.
      size_bytes: file size.
      gzip_bytes: size after ``gzip -9`` (what an app download costs).
      weights: every weight tensor with its sparsity and storage.
      validation: the comparison with Keras (None when not validated).
      xnnpack: which subgraph XNNPACK runs sparse (:mod:`tflite_export.xnnpack`).
    """

    path: Path
    quantize: str | None
    sparse: bool
    stripped: bool
    size_bytes: int
    gzip_bytes: int
    weights: tuple[WeightTensor, ...]
    validation: Validation | None
    xnnpack: XnnpackCheck | None = None

    def count(self, storage: Storage) -> int:
        """Number of weight tensors with this storage."""
        return sum(w.storage is storage for w in self.weights)

    def __str__(self) -> str:
        mode = self.quantize or _FLOAT
        header = (
            f"TFLite export {self.path.name}: {mode}, sparse storage "
            f"{'on' if self.sparse else 'off'}"
            f"{', pruning wrappers stripped' if self.stripped else ''}\n"
            f"  size {kib(self.size_bytes)} KiB raw, {kib(self.gzip_bytes)} KiB gzipped"
        )
        rows = [
            (
                w.name,
                "x".join(str(d) for d in w.shape),
                w.dtype,
                "n/a" if w.sparsity is None else f"{w.sparsity:.1%}",
                w.describe_storage(),
            )
            for w in self.weights
        ]
        parts = [header, table(("weight", "shape", "dtype", "sparsity", "storage"), rows)]
        parts.append(f"  {self.validation}" if self.validation else "  not validated")
        if self.xnnpack is not None:
            parts.append(f"  {self.xnnpack}")
        return "\n".join(parts)


class ValidationError(AssertionError):
    """The .tflite outputs differ from Keras beyond the tolerance; ``.report`` has details."""

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


def export(
    model: Any,
    path: str | os.PathLike[str],
    *,
    sparse: bool = True,
    quantize: str | None = None,
    representative_data: Any = None,
    validate: bool = True,
    sample_inputs: Any = None,
    overwrite: bool = False,
    atol: float | None = None,
    verbose: bool = True,
) -> ExportReport:
    """Convert a (pruned) tf_keras model to .tflite, write it, check it, report.

    Pruning wrappers (tfstatprune's ``PruneStatistically``, tfmot's
    ``PruneLowMagnitude``) are stripped first with
    :func:`tfstatprune.strip_pruning`. Modes (``quantize``):

    - None: float32 weights and arithmetic; validated to 1e-5.
    - ``"dynamic"``: int8 weights, activations quantized on the fly.
    - ``"float16"``: float16 weights, float32 arithmetic.
    - ``"int8"``: full integer: int8 weights and activations calibrated on
      :data:`REPRESENTATIVE_EXAMPLES` examples of ``representative_data``, and
      **int8 input and output** (what integer-only NPUs and microcontrollers
      need). Feed it ``round(x / scale) + zero_point`` with the input tensor's
      quantization parameters; :func:`validate` and
      :func:`tflite_export.benchmark` do so.

    ``sparse=True`` adds ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: weights at
    least 30 % zero are stored compressed. Only ``FULLY_CONNECTED`` runs them
    sparse (float32 1x4 blocks along the input dimension, int8 1x16); other
    sparse weights are expanded by a ``DENSIFY`` op at load (smaller file, no
    speed-up). The report says which is which.

    Args:
      model: a tf_keras model, possibly with pruning wrappers.
      path: the .tflite file to write.
      sparse: store sparse weights compressed.
      quantize: None, ``"dynamic"``, ``"float16"`` or ``"int8"``.
      representative_data: inputs like the training data, required for
        ``"int8"``: an array of examples, ``(x, y)``, or a ``tf.data.Dataset``
        of ``x`` or ``(x, y)`` (batched or not).
      validate: compare the .tflite outputs with Keras (see :data:`TOLERANCES`).
      sample_inputs: validation inputs (same forms as ``representative_data``);
        default: ``representative_data``, else :data:`RANDOM_EXAMPLES` uniform
        random inputs.
      overwrite: replace an existing file.
      atol: override the mode's ``Tolerance.max_abs``.
      verbose: print the report.

    Returns:
      The :class:`ExportReport` (also printed when ``verbose``).

    Raises:
      FileExistsError: when ``path`` exists and ``overwrite`` is False.
      ValueError: for an unknown ``quantize``, or ``"int8"`` without data.
      ExportError: when the converted model reads compressed weights with an
        op that has no sparse kernel (float16 with 1x4-block sparsity); nothing
        is written.
      ValidationError: when validation fails (the file is kept for inspection;
        the error's ``.report`` has the numbers).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    model, stripped = strip_if_pruned(model)
    content = convert(
        model, sparse=sparse, quantize=quantize, representative_data=representative_data
    )
    weights = inspect_weights(content)
    broken = [w for w in weights if w.storage is Storage.UNSUPPORTED]
    if broken:
        readers = ", ".join(sorted({c for w in broken for c in w.consumers}))
        raise ExportError(
            f"not writing {path}: the converter stored {len(broken)} weight(s) sparse for ops "
            f"that cannot read sparse data ({readers}), which computes wrong outputs (seen "
            f"with quantize='float16' on 1x4-block sparse weights). Export with "
            f"sparse=False, or quantize=None to keep the native sparse kernel."
        )
    with open(path, "wb" if overwrite else "xb") as file:
        file.write(content)
    checked = None
    if validate:
        data, source = _validation_inputs(model, sample_inputs, representative_data)
        checked = _compare(model, content, str(path), data, source, quantize, atol)
    report = ExportReport(
        path=path,
        quantize=quantize,
        sparse=sparse,
        stripped=stripped,
        size_bytes=len(content),
        gzip_bytes=len(gzip.compress(content, compresslevel=_GZIP_LEVEL)),
        weights=weights,
        validation=checked,
        xnnpack=check_xnnpack(content),
    )
    if verbose:
        print(report)
    if checked is not None and checked.xnnpack_error:
        warnings.warn(
            f"{path}: XNNPACK cannot prepare this model; it runs on the builtin kernels only",
            RuntimeWarning,
            stacklevel=2,
        )
    if checked is not None and not checked.passed:
        hint = "Pass atol= to accept a larger difference, or validate=False."
        if checked.runtime == RUNTIME_XNNPACK:
            builtin = _compare(
                model, content, str(path), data, source, quantize, atol, xnnpack=False
            )
            if builtin.passed:
                hint = (
                    f"On the builtin kernels (XNNPACK off) it does match (max |diff| "
                    f"{builtin.max_abs_diff:.2e}): XNNPACK computes this model wrongly (seen "
                    f"for quantize='dynamic' with 1x16-block sparse weights). Run it with "
                    f"XNNPACK off, or export with sparse=False."
                )
        raise ValidationError(f"{path} (kept) does not match Keras: {checked}. {hint}", report)
    return report


def strip_if_pruned(model: Any) -> tuple[Any, bool]:
    """``(model without pruning wrappers, whether there were any)``."""
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    from tfstatprune import strip_pruning
    from tfstatprune._keras import require_tf_keras_model

    model = require_tf_keras_model(model)
    wrapped = any(isinstance(m, pruning_wrapper.PruneLowMagnitude) for m in model.submodules)
    return (strip_pruning(model), True) if wrapped else (model, False)


def convert(
    model: Any,
    *,
    sparse: bool = True,
    quantize: str | None = None,
    representative_data: Any = None,
) -> bytes:
    """The .tflite bytes of a plain tf_keras model (see :func:`export` for the modes)."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates activations on representative_data; pass some "
            "training inputs (an array, (x, y), or a tf.data.Dataset)"
        )
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [] if quantize is None else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        calibration = _data.examples(
            representative_data, _example_shape(model), REPRESENTATIVE_EXAMPLES
        )
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # int8 I/O: the converter notes that it has no input statistics; the
        # calibration gives them.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        return converter.convert()


def _representative(x: np.ndarray):
    def generate() -> Iterator[list[np.ndarray]]:
        for example in x:
            yield [example[None]]

    return generate


def _example_shape(model: Any) -> tuple[int | None, ...]:
    if len(model.inputs) != 1:
        raise ValueError(
            f"{model.name} has {len(model.inputs)} inputs; calibration and validation "
            "support single-input models (pass validate=False to skip validation)"
        )
    return tuple(model.inputs[0].shape[1:])


def _validation_inputs(model: Any, sample_inputs: Any, representative_data: Any):
    shape = _example_shape(model)
    if sample_inputs is not None:
        return _data.examples(sample_inputs, shape, VALIDATION_EXAMPLES), "sample_inputs"
    if representative_data is not None:
        x = _data.examples(representative_data, shape, VALIDATION_EXAMPLES)
        return x, "representative_data"
    if any(d is None for d in shape):
        raise ValueError(f"{model.name} has an input of unknown shape {shape}; pass sample_inputs")
    rng = np.random.default_rng(_RANDOM_SEED)
    return rng.random((RANDOM_EXAMPLES, *shape), dtype=np.float32), "random uniform [0, 1)"


def validate(
    model: Any,
    tflite: bytes | str | os.PathLike[str],
    inputs: Any,
    *,
    quantize: str | None = None,
    atol: float | None = None,
) -> Validation:
    """Compare a .tflite model with the Keras model it came from.

    Args:
      model: the plain tf_keras model.
      tflite: the .tflite bytes or file.
      inputs: inputs (array, ``(x, y)`` or ``tf.data``); at most
        :data:`VALIDATION_EXAMPLES` are used.
      quantize: the export mode, which picks the :data:`TOLERANCES` entry.
      atol: override the mode's ``Tolerance.max_abs``.

    Returns:
      The :class:`Validation` (check ``.passed``).
    """
    if isinstance(tflite, bytes | bytearray):
        content, name = bytes(tflite), "model"
    else:
        content, name = read_tflite(tflite), str(tflite)
    x = _data.examples(inputs, _example_shape(model), VALIDATION_EXAMPLES)
    return _compare(model, content, name, x, "inputs", quantize, atol)


def _compare(
    model: Any,
    content: bytes,
    name: str,
    x: np.ndarray,
    source: str,
    quantize: str | None,
    atol: float | None,
    *,
    xnnpack: bool = True,
) -> Validation:
    if len(model.outputs) != 1:
        raise ValueError(
            f"{model.name} has {len(model.outputs)} outputs; validation supports "
            "single-output models (pass validate=False)"
        )
    tolerance = TOLERANCES[quantize or _FLOAT]
    loaded = load(content, name, xnnpack=xnnpack)
    got = predict(loaded.interpreter, x)
    expected = np.asarray(model(x, training=False), np.float32).reshape(got.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    bound = (tolerance.max_abs if atol is None else atol) * scale
    diff = float(np.abs(got - expected).max())
    agreement = decisive_agreement = None
    decisive = 0
    if got.ndim > 1 and got.shape[-1] > 1:
        same = got.argmax(-1) == expected.argmax(-1)
        top2 = np.sort(expected, axis=-1)[..., -2:]
        is_decisive = (top2[..., 1] - top2[..., 0]) > bound
        agreement = float(same.mean())
        decisive = int(is_decisive.sum())
        decisive_agreement = float(same[is_decisive].mean()) if decisive else None
    return Validation(
        examples=len(x),
        inputs=source,
        max_abs_diff=diff,
        bound=bound,
        argmax_agreement=agreement,
        decisive=decisive,
        decisive_agreement=decisive_agreement,
        min_argmax_agreement=tolerance.min_argmax_agreement,
        runtime=loaded.runtime,
        xnnpack_error=loaded.xnnpack_error,
    )
