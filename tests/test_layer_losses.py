"""``benchmarks/layer_losses.py``: the drop table and the best layer-wise sum (runs take
minutes)."""

from __future__ import annotations

import pytest

BENCHMARK = "layer_losses"


def _rows(benchmark_script, criterion, by_layer, seeds=(0, 1)):
    return [
        dict(seed=s, criterion=criterion, sparsity=0.9, layer=k, dense=0.98, one_shot=v - s / 100)
        for s in seeds
        for k, v in by_layer.items()
    ]


def test_drops_alone_their_sum_and_the_joint_drop_per_seed(benchmark_script):
    joint = benchmark_script.ALL
    rows = _rows(benchmark_script, "c", {"fc1": 0.97, "out": 0.96, joint: 0.94})
    line = benchmark_script.table(rows, 0.9, ["c"], ["fc1", "out"])[-1]
    # seed 0 drops 1, 2 (sum 3), joint 4; seed 1 one point more each (sum 5): std 1 on the sum.
    assert line == "| c | 1.50 ± 0.50 | 2.50 ± 0.50 | 4.00 ± 1.00 | 4.50 ± 0.50 |"


def test_a_criterion_with_seeds_missing_gets_no_sum(benchmark_script):
    joint = benchmark_script.ALL
    rows = _rows(benchmark_script, "c", {"fc1": 0.97, joint: 0.94}) + _rows(
        benchmark_script, "c", {"out": 0.96}, seeds=(0,)
    )
    cells = benchmark_script.table(rows, 0.9, ["c", "absent"], ["fc1", "out"])[-1].split("|")
    assert [c.strip() for c in cells[1:-1]] == [
        "c",
        "1.50 ± 0.50",
        "2.00 ± 0.00",
        "",
        "4.50 ± 0.50",
    ]
    assert len(benchmark_script.table(rows, 0.9, ["c", "absent"], ["fc1", "out"])) == 3


def test_the_smallest_drop_of_each_layer_and_their_sum(benchmark_script):
    rows = _rows(benchmark_script, "a", {"fc1": 0.97, "out": 0.90}) + _rows(
        benchmark_script, "b", {"fc1": 0.95, "out": 0.96}
    )
    line = benchmark_script.best_per_layer(rows, 0.9, ["a", "b"], ["fc1", "out"])[0]
    assert line == "Smallest drop per layer alone: fc1 1.50 (a), out 2.50 (b); sum 4.00 points."


def test_an_unknown_criterion_is_refused_before_any_run(benchmark_script, capsys):
    with pytest.raises(SystemExit):
        benchmark_script.main(["--criteria", "magnitude,sparsgpt"])
    assert "got ['sparsgpt']" in capsys.readouterr().err
