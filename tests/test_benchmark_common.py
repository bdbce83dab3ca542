"""``benchmarks/_common.py``: the command line a report names and a results file's kept text."""

from __future__ import annotations

import shlex

from benchmarks import _common


def test_the_command_line_reruns_as_written_arguments_with_spaces_quoted():
    line = _common.command_line("criteria_frontier", ["--variant", "wb 8=wald_block,substeps=8"])
    assert shlex.split(line)[3:] == ["--variant", "wb 8=wald_block,substeps=8"]
    assert _common.command_line("mobile", []) == "python -m benchmarks.mobile"


def test_publish_keeps_the_hand_written_reading_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "report.md"
    _common.publish("# first\n", out)
    assert out.read_text() == "# first\n"
    out.write_text("# old\n| stale | table |\n")
    _common.publish("# new\n", out, figure="![plot](report.png)\n")
    assert out.read_text() == "# new\n![plot](report.png)\n"
    reading = f"{_common.KEPT}\n\nReading: by hand.\n"
    out.write_text("# old\n| stale | table |\n\n" + reading)
    _common.publish("# new\n", out)
    assert out.read_text() == "# new\n\n" + reading
    assert "Reading" not in capsys.readouterr().out
