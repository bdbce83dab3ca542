"""``tfstatprune compare``: a smoke run on a tiny model, the metrics, the output safety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import compare
from tfstatprune import cli, datasets, models
from tfstatprune._keras import keras
from tfstatprune.shrink import count_flops

SHAPE = (6, 6, 1)


def _tiny(*, l2: float = 0.0, seed: int = 0) -> keras.Model:
    init = keras.initializers.GlorotUniform(seed)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(12, activation="relu", name="fc1", kernel_initializer=init),
            keras.layers.Dense(3, activation="softmax", name="output", kernel_initializer=init),
        ]
    )


@pytest.fixture
def tiny(monkeypatch):
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.random((n, *SHAPE), dtype=np.float32)
        return x, x.reshape(n, -1)[:, :3].argmax(1).astype(np.int64)

    data = datasets.MNIST(*split(240), *split(60))
    monkeypatch.setitem(compare.MODELS, "tiny", _tiny)
    monkeypatch.setattr(compare, "load_mnist", lambda: (data, "synthetic"))


def test_compare_quick_smoke_run_and_cache(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--model",
        "tiny",
        "--quick",
        "--seeds",
        "2",
        "--sparsity",
        "0.5,0.75",
        "--criteria",
        "magnitude,n2ps",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("dense", "magnitude", "n2ps", "± ", "compression", "speedup"):
        assert name in printed
    assert (out / "compare.png").stat().st_size > 0
    assert (
        "| criterion | sparsity | test accuracy | compression | speedup |"
        in (out / "compare.md").read_text()
    )
    measured = json.loads((out / "compare.json").read_text())["measurements"]
    assert [(m["criterion"], m["sparsity"], m["seed"]) for m in measured] == [
        (c, s, seed)
        for seed in (0, 1)
        for c, s in [("dense", 0.0), *((c, s) for c in ("magnitude", "n2ps") for s in (0.5, 0.75))]
    ]
    weights, biases = 6 * 6 * 12 + 12 * 3, 12 + 3
    for m in measured:
        kept = round((1 - m["sparsity"]) * 432) + round((1 - m["sparsity"]) * 36)
        assert m["speedup"] == pytest.approx(weights / kept)
        # all parameters / non-zero ones; a bias may be 0 (a unit that never fired)
        assert (weights + biases) / kept >= m["compression"] >= (weights + biases) / (kept + biases)
        assert 0.0 <= m["accuracy"] <= 1.0 and m["retrained"] is None

    # Again: the cached model (and its history) is reused; retraining keeps the zeros.
    again = [
        "compare",
        "--model",
        "tiny",
        "--quick",
        "--seeds",
        "1",
        "--sparsity",
        "0.75",
        "--criteria",
        "weight_updates",
        "--retrain-epochs",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(again) == 0
    assert "reused the model" in capsys.readouterr().out
    assert "after 1 epoch(s) retraining" in (out / "compare.md").read_text()
    (_, pruned) = json.loads((out / "compare.json").read_text())["measurements"]
    assert pruned["speedup"] == pytest.approx(4 * weights / 468)  # the zeros were kept
    assert 0.0 <= pruned["retrained"] <= 1.0


def test_compare_refuses_foreign_files_and_unknown_criteria(tiny, tmp_path, capsys):
    (tmp_path / "compare.md").write_text("mine")
    argv = ["compare", "--model", "tiny", "--quick", "--out", str(tmp_path)]
    assert cli.main(argv) == cli.EXIT_ERROR
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "compare.md").read_text() == "mine"
    with pytest.raises(SystemExit):
        cli.main(["compare", "--criteria", "magnitude,nonsense"])
    assert "nonsense" in capsys.readouterr().err


def test_nonzero_flops_of_a_dense_model_is_count_flops():
    model = models.lenet5()
    assert compare.nonzero_flops(model) == count_flops(model)
    kernel = model.get_layer("conv2").kernel
    kernel.assign(np.zeros(kernel.shape, np.float32))
    positions = 8 * 8  # conv2's output: 8 x 8 pixels
    assert (
        compare.nonzero_flops(model) == count_flops(model) - kernel.shape.num_elements() * positions
    )
