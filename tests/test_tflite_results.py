"""``benchmarks/tflite_results.py``: its argument parsing only (its runs take minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARK = "tflite_results"


def test_results_script_arguments(benchmark_script):
    full = benchmark_script.parse_args([])
    assert not full.quick and full.out is None and full.test_examples is None
    assert full.criteria == ("magnitude", "wald_diag") and full.epochs == 8
    quick = benchmark_script.parse_args(["--quick", "--out", "docs/results/tflite.md"])
    assert quick.quick and quick.out == Path("docs/results/tflite.md")
    assert quick.epochs < full.epochs and quick.runs < full.runs
    assert quick.cache != full.cache
    with pytest.raises(SystemExit):
        benchmark_script.parse_args(["--bogus"])
