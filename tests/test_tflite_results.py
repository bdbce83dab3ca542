"""``benchmarks/tflite_results.py``: its argument parsing only (its runs take minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARK = "tflite_results"


@pytest.fixture
def results_script(benchmark_script):
    return benchmark_script


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
