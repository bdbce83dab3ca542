"""``benchmarks/oneshot_cost.py``: its report from logged rows, without measuring again."""

from __future__ import annotations

import json

from benchmarks import _common, oneshot_cost


def _row(model: str, examples: int = 512) -> dict:
    row = dict(model=model, examples=examples, weights=2_000_000, plain_s=2.0, peak_mb=1500.0)
    for hessian, seconds in zip(oneshot_cost.HESSIANS, (18.0, 8.0, 6.0), strict=True):
        row[f"{hessian}_s"], row[f"{hessian}_ratio"] = seconds, seconds / 2.0
    for variant, seconds in (("default", 30.0), ("blocked", 10.0)):
        row[f"{variant}_solver_s"], row[f"{variant}_total_s"] = seconds, seconds + 18.0
    return row


def test_the_report_reads_the_log_and_measures_only_what_it_lacks(tmp_path, monkeypatch):
    log, out = tmp_path / "rows.jsonl", tmp_path / "cost.md"
    for row in (_row("mobilenetv2"), _row("resnet50", examples=256)):
        _common.append_row(log, row)
    measured = []

    def run(command, **_):  # the subprocess of a model the log lacks
        measured.append(command[command.index("--one") + 1])
        row = _row(measured[-1])

        class Done:
            returncode, stdout, stderr = 0, json.dumps(row) + "\n", ""

        return Done()

    monkeypatch.setattr(oneshot_cost.subprocess, "run", run)
    argv = ["--models", "mobilenetv2,resnet50", "--log", str(log), "--out", str(out)]
    oneshot_cost.main(argv)
    assert measured == ["resnet50"]  # its logged row was for another --examples
    assert len(_common.logged_rows(log)) == 3
    text = out.read_text()
    assert "python -m benchmarks.oneshot_cost --models mobilenetv2,resnet50" in text
    line = next(x for x in text.splitlines() if x.startswith("| mobilenetv2 |"))
    # 18 s of statistics against a 2 s pass: 9.0x; 10 s blocked over 2 M weights: 5.0
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:7] == ["18.0", "9.0x", "4.0x", "3.0x"]
    assert cells[9] == "5.0" and cells[10] == "-"
