"""``benchmarks/criteria_frontier.py``: variants and the paired table (its runs take minutes)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

BENCHMARK = "criteria_frontier"


def test_variant_label_criterion_and_typed_options(benchmark_script):
    label, (criterion, options) = benchmark_script.parse_variant(
        "wb d1=wald_block,damping=1,restricted=false,hessian=ggn"
    )
    assert (label, criterion) == ("wb d1", "wald_block")
    assert options == {"damping": 1, "restricted": False, "hessian": "ggn"}
    assert benchmark_script.parse_variant("plain=obs") == ("plain", ("obs", {}))


@pytest.mark.parametrize(
    "text, message",
    [
        ("wald_block", "LABEL=CRITERION"),
        ("=wald_block", "LABEL=CRITERION"),
        ("x=", "LABEL=CRITERION"),
        ("x=no_such_criterion", "unknown criterion 'no_such_criterion'"),
        ("x=wald_block,damping", "key=value"),
        ("magnitude=wald_block", "built-in criterion's label"),
    ],
)
def test_bad_variants_name_the_problem(benchmark_script, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        benchmark_script.parse_variant(text)


def test_paired_gap_of_a_variant_against_magnitude(benchmark_script):
    def row(seed, criterion, one_shot, retrained, flags):
        return dict(
            seed=seed,
            criterion=criterion,
            scope="layer",
            sparsity=0.5,
            one_shot=one_shot,
            retrained=retrained,
            test_images=4,
            one_shot_correct=benchmark_script.pack(np.array(flags, bool)),
        )

    rows = [
        row(0, "magnitude", 0.50, 0.90, [1, 1, 0, 0]),
        row(0, "v", 0.75, 0.80, [1, 1, 1, 0]),
        row(1, "magnitude", 0.50, 0.90, [1, 0, 1, 0]),
        row(1, "v", 0.25, 0.90, [0, 0, 1, 0]),
    ]
    lines = benchmark_script.paired_gap(rows, [0.5], ours="v")
    layer = next(line for line in lines if line.startswith("| layer"))
    # one-shot gaps +25 and -25 points: mean 0, std 25; retrained -10 and 0: mean -5, std 5.
    # Discordant pairs pooled: magnitude right / v wrong 1, v right / magnitude wrong 1,
    # so P(B >= 1) with B ~ Bin(2, 1/2) is 0.75.
    assert "+0.00 ± 25.00 (p 0.75)" in layer
    assert "-5.00 ± 5.00 **<**" in layer
    assert benchmark_script.paired_gap(rows, [0.5], ours="wald_block")[2].count("|") == 3


def test_a_gap_that_rounds_to_zero_is_not_marked_below(benchmark_script):
    rows = [
        dict(seed=0, criterion=c, scope="global", sparsity=0.8, one_shot=v, retrained=v)
        for c, v in (("magnitude", 0.98000), ("wald_block", 0.97999))
    ]
    line = benchmark_script.paired_gap(rows, [0.8])[3]
    assert line.startswith("| global") and "+0.00 ± 0.00 / +0.00 ± 0.00 |" in line


def test_two_variants_under_one_label_are_refused(benchmark_script, capsys):
    with pytest.raises(SystemExit):
        benchmark_script.main(["--variant", "v=wald_block", "--variant", "v=obs,damping=1"])
    assert "--variant labels must differ" in capsys.readouterr().err


@pytest.mark.parametrize("retrain_epochs", [0, 2])
def test_report_has_only_the_scopes_run_and_one_number_without_retraining(
    benchmark_script, retrain_epochs
):
    rows = [
        dict(
            seed=0,
            criterion=c,
            scope="layer",
            sparsity=0.9,
            dense=0.98,
            one_shot=one,
            retrained=0.97 if retrain_epochs else one,
        )
        for c, one in (("magnitude", 0.60), ("wald_block", 0.95))
    ]
    args = argparse.Namespace(
        seeds=1, epochs=8, retrain_epochs=retrain_epochs, retrain_repeats=1, sparsities=[0.9]
    )
    args.model, args.stats_examples = "lenet_300_100", 10_000
    args.variant, args.pair = [], [("wald_block", "wald_block")]
    given = ["--retrain-epochs", str(retrain_epochs)]
    fields = benchmark_script.FIELDS[:1] if retrain_epochs == 0 else benchmark_script.FIELDS
    text = benchmark_script.report(
        rows, args, given, ["magnitude", "wald_block"], ("layer",), fields
    )
    assert "## layer scope" in text and "global" not in text
    assert "## wald_block minus wald_block" in text  # a --pair
    row = next(line for line in text.splitlines() if line.startswith("| wald_block |"))
    gap = next(line for line in text.splitlines() if line.startswith("| layer |"))
    if retrain_epochs == 0:
        assert row == "| wald_block | 95.0 ± 0.0 |"
        assert gap == "| layer | +35.00 ± 0.00 |"
        assert "**without retraining**" in text and "after 0 epochs" not in text
    else:
        assert row == "| wald_block | 95.0 ± 0.0 / 97.0 ± 0.0 |"
        assert "after 2 epochs of retraining" in text


def test_an_unknown_scope_is_refused_before_any_run(benchmark_script, capsys):
    with pytest.raises(SystemExit):
        benchmark_script.main(["--scopes", "layer,globl"])
    assert "--scopes takes layer, global" in capsys.readouterr().err


def test_a_pair_is_tabulated_and_a_pair_of_criteria_not_run_is_refused(benchmark_script, capsys):
    assert benchmark_script.parse_pair("a + r vs b") == ("a + r", "b")
    with pytest.raises(argparse.ArgumentTypeError, match="OURS vs BASE"):
        benchmark_script.parse_pair("a versus b")
    with pytest.raises(SystemExit):
        benchmark_script.main(["--criteria", "magnitude,obs", "--pair", "obs vs sparsegpt"])
    assert "--pair names criteria not run: ['sparsegpt']" in capsys.readouterr().err


def test_resnet20_runs_on_32x32x3_and_its_dense_model_is_cached(
    benchmark_script, tmp_path, monkeypatch
):
    data = benchmark_script.load_data("resnet20", quick=True)
    assert data.x_train.shape[1:] == data.x_test.shape[1:] == (32, 32, 3)
    monkeypatch.setattr(benchmark_script, "CNN_TRAIN_EXAMPLES", 128)
    stats = (data.x_train[:64], data.y_train[:64])
    dense = benchmark_script.dense_model(0, 1, tmp_path, data, "resnet20", stats)
    assert [p.name for p in tmp_path.iterdir()] == ["resnet20_seed0_e1_n128.keras"]
    again = benchmark_script.dense_model(0, 1, tmp_path, data, "resnet20", stats)
    for a, b in zip(dense.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # the moving statistics were re-estimated on the statistics' examples
    bn = dense.get_layer("stem_bn")
    h = dense.get_layer("stem")(stats[0]).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=(0, 1, 2)), atol=1e-4)


def test_the_report_names_the_cnn(benchmark_script):
    args = argparse.Namespace(
        seeds=1, epochs=2, retrain_epochs=0, retrain_repeats=1, sparsities=[0.5], variant=[],
        pair=[], model="resnet20", stats_examples=1024,
    )  # fmt: skip
    rows = [
        dict(seed=0, criterion="magnitude", scope="layer", sparsity=0.5, dense=0.98,
             one_shot=0.9, retrained=0.9)
    ]  # fmt: skip
    text = benchmark_script.report(
        rows, args, ["--model", "resnet20"], ["magnitude"], ("layer",), ("one_shot",)
    )
    assert text.startswith("# One-shot pruning of ResNet-20: criteria compared")
    assert "MNIST padded to 32x32x3" in text and "statistics on 1,024 training examples" in text
