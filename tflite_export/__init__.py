"""Keras -> TFLite export, validation and benchmarks for pruned models.

Typical use::

    from tflite_export import export, benchmark

    report = export(tsp.strip_pruning(pruned), "lenet.tflite", sparse=True)
    print(benchmark(["dense.tflite", "lenet.tflite"], data=(x_test, y_test)))

:func:`export` converts with ``tf.lite.TFLiteConverter`` (float32, float16,
dynamic-range or full-integer int8; sparse weight storage on request), checks
the .tflite outputs against Keras, and reports file size and, per weight
tensor, whether it is stored dense, stored sparse and densified at load, or
run by a native sparse kernel. :func:`benchmark` measures batch-1 latency with
the LiteRT interpreter, several models interleaved, and prints the
``benchmark_model`` command that repeats the measurement on an Android phone.

Where it sits: above the tfstatprune library, below tfstatprune's command
line. It imports the library (``strip_pruning``, ``load_model``, the Keras
choice, :mod:`tfstatprune.tables`, :mod:`tfstatprune.commands`); the library
never imports it. Only the experiments on top import it: the dispatch
:mod:`tfstatprune.cli` (for the ``export`` and ``bench`` commands of
:mod:`tflite_export.cli`) and :mod:`tfstatprune.demo`. ``tests/test_imports.py``
checks that the module graph of both packages has no cycle.
"""

from tflite_export.bench import BenchmarkResult, ModelTiming, android_command, benchmark
from tflite_export.convert import (
    QUANTIZE_MODES,
    TOLERANCES,
    ExportError,
    ExportReport,
    Tolerance,
    Validation,
    ValidationError,
    convert,
    export,
    validate,
)
from tflite_export.flatbuffer import (
    Storage,
    TFLiteFileError,
    WeightTensor,
    inspect_weights,
    read_tflite,
)

__all__ = [
    "QUANTIZE_MODES",
    "TOLERANCES",
    "BenchmarkResult",
    "ExportError",
    "ExportReport",
    "ModelTiming",
    "Storage",
    "TFLiteFileError",
    "Tolerance",
    "Validation",
    "ValidationError",
    "WeightTensor",
    "android_command",
    "benchmark",
    "convert",
    "export",
    "inspect_weights",
    "read_tflite",
    "validate",
]
