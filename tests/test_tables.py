"""Tests of :mod:`tfstatprune.tables`, the one table formatter (text and markdown)."""

from __future__ import annotations

import pytest

from tfstatprune import tables

TABLE = tables.Table(
    headers=["model", "fc1", "test accuracy"],
    rows=[["dense", "0.0 %", "98.12 %"], ["wald", "90.0 %", "97.5 %"]],
    align="lrr",
)


def test_format_text_aligns_columns():
    assert tables.format_text(TABLE) == (
        "model     fc1  test accuracy\n"
        "-----  ------  -------------\n"
        "dense   0.0 %        98.12 %\n"
        "wald   90.0 %         97.5 %"
    )


def test_format_markdown():
    assert tables.format_markdown(TABLE) == (
        "| model | fc1 | test accuracy |\n"
        "|:--|--:|--:|\n"
        "| dense | 0.0 % | 98.12 % |\n"
        "| wald | 90.0 % | 97.5 % |"
    )


def test_markdown_escapes_pipes():
    table = tables.Table(["a|b"], [["x|y"]], "l")
    assert tables.format_markdown(table).splitlines()[::2] == ["| a\\|b |", "| x\\|y |"]


@pytest.mark.parametrize(
    "table",
    [
        tables.Table(["a", "b"], [["1"]], "lr"),
        tables.Table(["a", "b"], [["1", "2"]], "l"),
        tables.Table(["a"], [["1"]], "c"),
    ],
)
def test_malformed_tables_are_rejected(table):
    with pytest.raises(ValueError):
        tables.format_text(table)
    with pytest.raises(ValueError):
        tables.format_markdown(table)


def test_columns_of_numbers_are_right_aligned_when_align_is_none():
    table = tables.Table(
        ["weight", "shape", "sparsity"],
        [["fc1/kernel", "784x300", "90.0%"], ["output/bias", "10", "n/a"]],
    )
    assert tables.numeric_align(table.headers, table.rows) == "llr"
    assert tables.format_text(table, indent="  ") == (
        "  weight       shape    sparsity\n"
        "  -----------  -------  --------\n"
        "  fc1/kernel   784x300     90.0%\n"
        "  output/bias  10            n/a"
    )
    assert tables.numeric_align(["a", "b"], []) == "ll"


class _Named:
    name = "lenet"


def test_the_reports_print_through_the_one_formatter():
    from tfstatprune.keras.report import LayerSparsity, SparsityReport
    from tfstatprune.shrink import ShrinkResult

    shrunk = ShrinkResult(
        _Named(), 1_000, 600, 2_000, 1_000, {"fc1": (30, 300), "output": (10, 10)}
    )
    assert str(shrunk) == (
        "shrink: 'lenet'\n"
        "layer   kept  total  removed\n"
        "------  ----  -----  -------\n"
        "fc1       30    300    90.0%\n"
        "output    10     10     0.0%\n"
        "parameters: 1,000 -> 600 (1.67x smaller)\n"
        "FLOPs (MACs): 2,000 -> 1,000 (2.00x smaller)"
    )
    report = SparsityReport([LayerSparsity("fc1", 2_000, 1_500, 1_200, 300, 10, 2)])
    assert str(report).splitlines() == [
        "layer  weights  zeros    own  upstream  sparsity  dead units",
        "-----  -------  -----  -----  --------  --------  ----------",
        "fc1      2,000  1,500  1,200       300     75.0%        2/10",
        "total    2,000  1,500  1,200       300     75.0%        2/10",
    ]
