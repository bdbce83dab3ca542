"""``benchmarks/tflite_results.py``: its argument parsing only (its runs take minutes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tflite_results.py"


@pytest.fixture(scope="module")
def results_script():
    spec = importlib.util.spec_from_file_location("tflite_results_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_results_script_arguments(results_script):
    full = results_script.parse_args([])
    assert not full.quick and full.out is None and full.test_examples is None
    assert full.criteria == ("magnitude", "wald") and full.epochs == 8
    quick = results_script.parse_args(["--quick", "--out", "docs/results/tflite.md"])
    assert quick.quick and quick.out == Path("docs/results/tflite.md")
    assert quick.epochs < full.epochs and quick.runs < full.runs
    assert quick.cache != full.cache
    with pytest.raises(SystemExit):
        results_script.parse_args(["--bogus"])
