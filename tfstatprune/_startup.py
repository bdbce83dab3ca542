"""A quiet start for the ``tfstatprune`` command: TensorFlow's start-up log lines.

Importing TensorFlow 2.21 on a machine without a GPU writes a dozen lines to
the process's standard error from C++ (oneDNN, "Could not find cuda drivers",
"failed call to cuInit", "All log messages before absl::InitializeLog() ...").
They are written before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` into absl's
log level, so that variable alone does not hide them (measured: the lines
appear with ``TF_CPP_MIN_LOG_LEVEL=3``).

:func:`quiet_tensorflow_start` therefore imports TensorFlow (and finds its
devices) with file descriptor 2 redirected to a temporary file, then writes
back the lines the log level lets through: absl-format lines (``I0000``,
``W0000``, ``E0000``, ``F0000`` ...) of a severity below the level are
dropped, every other line is kept. The level is the user's
``TF_CPP_MIN_LOG_LEVEL`` when set (it wins: ``0`` shows everything); unset,
start-up lines below FATAL are dropped and ``TF_CPP_MIN_LOG_LEVEL`` is set to
:data:`QUIET_LEVEL` for the rest of the run, which keeps run-time errors. The
Python ``absl`` logger is set to ERROR likewise.

Only the command line does this (:func:`launched_as_command`, checked first
thing in ``tfstatprune/__init__.py``): a program that imports tfstatprune keeps
TensorFlow's output as it is. Everything here is standard library until
TensorFlow itself is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LOG_LEVEL_VARIABLE",
    "QUIET_LEVEL",
    "captured_stderr",
    "launched_as_command",
    "quiet_tensorflow_start",
    "visible_lines",
]

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
#: The level set for the rest of a quiet run: INFO and WARNING hidden, errors shown.
QUIET_LEVEL = "2"
#: The level applied to the start-up lines when the user set none: only FATAL.
_START_LEVEL = 3
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
#: absl's prefix: severity letter, MMDD, time, thread, file:line].
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
#: Python's own stderr lines (a warning, a traceback): never a log line's continuation.
_PYTHON_LINE = re.compile(r"^(Traceback \(most recent call last\)|\S+:\d+: \w*(Warning|Error)\b)")
#: Names the command runs under: the console script, ``python -m tfstatprune[.cli]``.
_COMMAND = "tfstatprune"
_MODULES = ("tfstatprune", "tfstatprune.cli", "tfstatprune.__main__")


def launched_as_command() -> bool:
    """Whether this process is the ``tfstatprune`` command (not a program importing it)."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if script.split(".")[0].removesuffix("-script") == _COMMAND:
        return True
    argv = list(getattr(sys, "orig_argv", []))
    for flag, module in zip(argv, argv[1:], strict=False):
        if flag == "-m":
            return module in _MODULES
    return False


def visible_lines(text: str, level: int) -> str:
    """The lines of ``text`` that ``TF_CPP_MIN_LOG_LEVEL=level`` lets through.

    A line that is not in absl's format continues the log line before it
    (TensorFlow's CPU-feature message spans two lines), except Python's own
    lines (warnings, tracebacks) and lines before any log line: those are kept.

    >>> visible_lines("plain\\nI0000 00:00:17.5  12 port.cc:153] oneDNN\\nmore\\n", 1)
    'plain\\n'
    >>> visible_lines("E0000 00:00:17.5  12 cuda.cc:52] cuInit\\n", 2)
    'E0000 00:00:17.5  12 cuda.cc:52] cuInit\\n'
    """
    kept = []
    shown = True  # whether the current log line (and its continuation) is shown
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match:
            shown = _SEVERITY[match.group(1)] >= level
        elif line.startswith(_ABSL_PREAMBLE):
            shown = _SEVERITY["W"] >= level
        elif _PYTHON_LINE.match(line):
            shown = True
        if shown:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (C++ and Python writes alike) to a temporary file.

    Yields a list that holds the captured text once the block is left.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def quiet_tensorflow_start() -> None:
    """Import TensorFlow with its start-up lines filtered (see the module docstring).

    Does nothing when TensorFlow is already imported. When the import fails,
    everything it wrote is shown, unfiltered, before the error propagates.
    """
    if "tensorflow" in sys.modules:
        return
    user_level = os.environ.get(LOG_LEVEL_VARIABLE)
    if user_level is None:
        os.environ[LOG_LEVEL_VARIABLE] = QUIET_LEVEL
    try:
        level = _START_LEVEL if user_level is None else int(user_level)
    except ValueError:
        level = 0  # not a number: TensorFlow ignores it, so do we
    with captured_stderr() as captured:
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # cuInit and its error happen here
        except BaseException:
            failed = True
        else:
            failed = False
    text = captured[0]
    sys.stderr.write(text if failed else visible_lines(text, level))
    sys.stderr.flush()
    if failed:
        import tensorflow  # noqa: F401 - raise the import error again, in the open
    if user_level is None:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
