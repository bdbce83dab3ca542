"""The command line starts without TensorFlow's log lines; the user's log level wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfstatprune import _startup

ROOT = Path(__file__).resolve().parents[1]
#: What TensorFlow 2.21 writes at import on a CPU-only machine (absl's prefixes).
NOISE = ("I0000 ", "W0000 ", "E0000 ", "cuInit", "absl::InitializeLog", "oneDNN")
TIMEOUT_S = 300


def test_command_line_help_has_no_tensorflow_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k != _startup.LOG_LEVEL_VARIABLE}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "tfstatprune.cli", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert "usage: tfstatprune" in done.stdout
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, done.stderr


LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796168606.044670   13643 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796168606.254914   13643 cpu_feature_guard.cc:227] This TensorFlow binary\n"
    "To enable the following instructions: AVX2, in other operations, rebuild TensorFlow\n"
    "W0000 00:00:1796168606.3   13643 some.cc:1] a warning\n"
    "E0000 00:00:1796168609.1   13643 cuda_platform.cc:52] failed call to cuInit\n"
    "Traceback (most recent call last): a Python error\n"
)


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        (0, [0, 1, 2, 3, 4, 5, 6]),  # TF_CPP_MIN_LOG_LEVEL=0: everything
        (1, [0, 4, 5, 6]),  # warnings (absl's preamble is one) and errors
        (2, [5, 6]),
        (3, [6]),  # FATAL only; the continuation (line 3) went with its line, Python's stays
    ],
)
def test_visible_lines_follow_the_log_level(level, kept):
    lines = LINES.splitlines(keepends=True)
    assert _startup.visible_lines(LINES, level) == "".join(lines[i] for i in kept)
    assert _startup.visible_lines("plain text first\n", 3) == "plain text first\n"


@pytest.mark.parametrize(
    ("argv", "orig_argv", "command"),
    [
        (["/venv/bin/tfstatprune", "demo"], ["python", "/venv/bin/tfstatprune", "demo"], True),
        (["-m"], ["python", "-m", "tfstatprune.cli", "--help"], True),
        (["-m"], ["python", "-m", "tfstatprune", "export"], True),
        (["/venv/bin/pytest"], ["python", "/venv/bin/pytest"], False),
        (["-m"], ["python", "-m", "pytest", "-m", "tfstatprune"], False),
        (["train.py"], ["python", "train.py"], False),
    ],
)
def test_only_the_command_is_quieted(monkeypatch, argv, orig_argv, command):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert _startup.launched_as_command() is command
