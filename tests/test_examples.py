"""The golden end-to-end run: ``tfstatprune demo --quick`` in a temporary directory.

It trains LeNet-300-100 for one epoch on a subset of MNIST, prunes it to 90 %
by the Wald statistic and by magnitude, and saves everything; the checks read
the saved models back, independently of what the demo reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from tfstatprune import cli
from tfstatprune._keras import keras

TARGET = 0.9
KERNELS = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 100 * 10}
CRITERIA = ("wald", "magnitude")
# A trained float32 weight is exactly zero by chance essentially never; allow a few.
CHANCE_ZEROS = 0.001


class Run(NamedTuple):
    out: Path
    stdout: str


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo run once, through the command line, in a fresh directory."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(["demo", "--quick", "--seed", "0", "--out", str(out)])
    assert status == cli.EXIT_OK
    return Run(out, stdout.getvalue())


def _kernel_zeros(model: keras.Model) -> dict[str, tuple[int, int]]:
    found = {}
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None:
            kernel = layer.kernel.numpy()
            found[layer.name] = (int(np.count_nonzero(kernel == 0)), kernel.size)
    return found


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def test_writes_the_models_and_reports(quick_run):
    names = {p.name for p in quick_run.out.iterdir()}
    assert names == {
        "dense.keras",
        "wald.keras",
        "magnitude.keras",
        "results.md",
        "results.json",
        cli.OutputDir.MANIFEST,
    }


@pytest.mark.parametrize("criterion", CRITERIA)
def test_pruned_models_have_the_target_sparsity(quick_run, criterion):
    model = keras.models.load_model(quick_run.out / f"{criterion}.keras", compile=False)
    zeros = _kernel_zeros(model)
    assert set(zeros) == set(KERNELS)
    for name, size in KERNELS.items():
        pruned, found_size = zeros[name]
        assert found_size == size
        target = _round_half_up(TARGET * size)
        assert target <= pruned <= target + max(1, int(CHANCE_ZEROS * size)), name


def test_dense_model_is_dense_and_differs_from_the_pruned(quick_run):
    dense = keras.models.load_model(quick_run.out / "dense.keras", compile=False)
    zeros = _kernel_zeros(dense)
    assert all(count <= CHANCE_ZEROS * size for count, size in zeros.values())
    wald = keras.models.load_model(quick_run.out / "wald.keras", compile=False)
    magnitude = keras.models.load_model(quick_run.out / "magnitude.keras", compile=False)
    masks = [(m.get_layer("fc1").kernel.numpy() == 0) for m in (wald, magnitude)]
    assert not np.array_equal(*masks), "the two criteria chose the same weights"


def test_results_json(quick_run):
    numbers = json.loads((quick_run.out / "results.json").read_text())
    assert list(numbers["models"]) == ["dense", *CRITERIA]
    for model in numbers["models"].values():
        assert 0.0 <= model["test_accuracy"] <= 1.0
        assert model["seconds"] > 0
    for criterion in CRITERIA:
        layers = numbers["models"][criterion]["layers"]
        assert {k: v["size"] for k, v in layers.items()} == KERNELS
    assert numbers["models"]["wald"]["scoring_seconds"] > 0
    assert numbers["config"]["quick"] is True
    assert numbers["stats_examples"] == cli.load_example("demo").QUICK_STATS_EXAMPLES
    assert numbers["total_seconds"] >= sum(numbers["phases"].values()) * 0.99


def test_prints_the_table(quick_run):
    lines = quick_run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header].split()[:4] == ["model", "fc1", "fc2", "output"]
    rows = {line.split()[0]: line for line in lines[header + 2 : header + 5]}
    assert list(rows) == ["dense", *CRITERIA]
    for criterion in CRITERIA:
        assert rows[criterion].split()[1:9:2] == ["90.0"] * 4  # fc1 fc2 output all
    accuracies = [float(row.split()[9]) / 100 for row in rows.values()]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert any(line.startswith("prune + retrain: wald") for line in lines)
    assert lines[-1].startswith("Saved in ")


def test_markdown_matches_the_printed_numbers(quick_run):
    report = (quick_run.out / "results.md").read_text()
    numbers = json.loads((quick_run.out / "results.json").read_text())
    assert "quick run" in report
    for name, model in numbers["models"].items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"{100 * model['test_accuracy']:.2f} %" in row
        assert f"{100 * model['test_accuracy']:.2f} %" in quick_run.stdout


def test_a_second_run_reuses_the_dense_model(quick_run):
    demo = cli.load_example("demo")
    out = cli.OutputDir(quick_run.out, tool=demo.TOOL)
    config = demo.DemoConfig.from_options(out=quick_run.out, quick=True, seed=0)
    recipe = demo.dense_recipe(
        config, json.loads((quick_run.out / "results.json").read_text())["mnist_source"]
    )
    x = np.zeros((1, 28, 28, 1), np.float32)
    model, cached = demo.dense_model(out, recipe, x, np.zeros(1, np.int64))
    assert cached
    out.check(config.output_files())  # all ours: a second run may overwrite them
