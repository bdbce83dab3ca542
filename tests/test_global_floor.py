"""``benchmarks/global_floor.py``: which settings run, and the report's table."""

from __future__ import annotations

BENCHMARK = "global_floor"


def test_only_caps_that_can_hold_the_total_run(benchmark_script):
    caps = [0.95, 0.98, 0.99]
    assert benchmark_script.settings(0.9, caps) == [
        ("layer", None),
        ("global", None),
        ("curves", None),
        ("global", 0.95),
        ("global", 0.98),
        ("global", 0.99),
    ]
    assert [cap for _, cap in benchmark_script.settings(0.98, caps)] == [
        None,
        None,
        None,
        0.98,
        0.99,
    ]
    assert ("curves", None) not in benchmark_script.settings(0.9, caps, curves=False)


def test_the_table_has_a_row_per_setting_and_leaves_missing_cells_empty(benchmark_script):
    def row(scope, cap, sparsity, one_shot, levels):
        return dict(
            criterion="magnitude",
            scope=scope,
            cap=cap,
            sparsity=sparsity,
            one_shot=one_shot,
            levels=dict(zip(["fc1", "fc2", "output"], levels, strict=True)),
        )

    rows = [
        row("global", 0.95, 0.9, 0.9, [0.95, 0.8, 0.5]),
        row("global", None, 0.9, 0.8, [0.97, 0.7, 0.4]),
        row("layer", None, 0.9, 0.7, [0.9, 0.9, 0.9]),
        row("layer", None, 0.98, 0.2, [0.98, 0.98, 0.98]),
        row("curves", None, 0.9, 0.85, [0.96, 0.75, 0.3]),
    ]
    lines = benchmark_script.tables(rows, [0.9, 0.98], [0.95])
    assert lines[0] == "## magnitude"
    assert lines[2] == (
        "| setting | 90%: accuracy, fc1 / fc2 / output | 98%: accuracy, fc1 / fc2 / output |"
    )
    assert lines[4:8] == [
        "| layer | **70.00%**, 90.0% / 90.0% / 90.0% | **20.00%**, 98.0% / 98.0% / 98.0% |",
        "| global | **80.00%**, 97.0% / 70.0% / 40.0% |  |",
        "| global, error curves | **85.00%**, 96.0% / 75.0% / 30.0% |  |",
        "| global, cap 0.95 | **90.00%**, 95.0% / 80.0% / 50.0% |  |",
    ]
