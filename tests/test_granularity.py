"""Structured granularity: group ids, group scores by hand, exact group counts."""

from __future__ import annotations

import numpy as np
import pytest

import tfstatprune as tsp
from tfstatprune._keras import keras
from tfstatprune.criteria import get_criterion
from tfstatprune.granularity import check_granularity, expand, group_ids, reduce_groups
from tfstatprune.masking import round_half_up
from tfstatprune.stats import WeightStatistics


def test_group_ids_for_each_granularity():
    unit = group_ids((3, 2), "unit")
    assert unit.ids.tolist() == [[0, 1], [0, 1], [0, 1]] and unit.count == 2
    assert group_ids((2,), "unit", bias=True).ids.tolist() == [0, 1]
    conv = group_ids((3, 3, 2, 5), "filter")
    assert conv.count == 5 and np.all(conv.ids[..., 4] == 4)
    channel = group_ids((3, 3, 2, 5), "channel")
    assert channel.count == 2 and np.all(channel.ids[:, :, 1, :] == 1)
    block = group_ids((10, 3), (1, 4))
    # rows 0-3, 4-7 and the partial 8-9 of each column are blocks
    assert block.count == 9
    assert block.ids[:, 1].tolist() == [1, 1, 1, 1, 4, 4, 4, 4, 7, 7]
    assert check_granularity([1, 16]) == (1, 16)


@pytest.mark.parametrize(
    ("shape", "granularity", "bias"),
    [((4,), "unit", False), ((3, 3, 1, 2), (1, 4), False), ((5,), "channel", True)],
)
def test_misfitting_granularity_is_an_error(shape, granularity, bias):
    with pytest.raises(ValueError, match="granularity|groups"):
        group_ids(shape, granularity, bias=bias)
    with pytest.raises(ValueError, match="granularity must be one of"):
        check_granularity("row")


def test_group_scores_by_hand():
    theta = np.array([[1.0, -2.0], [3.0, 0.5]])
    bias = np.array([0.5, -1.0])
    stats_k = WeightStatistics(4, np.zeros((2, 2)), np.full((2, 2), 4.0))
    stats_b = WeightStatistics(4, np.zeros(2), np.full(2, 4.0))
    groups = [group_ids(theta.shape, "unit"), group_ids(bias.shape, "unit", bias=True)]
    # Wald with H = Sigma = 1: W_k = 4 theta^2; a unit sums its column and its bias.
    wald = get_criterion("wald_diag").group_scores([theta, bias], [stats_k, stats_b], groups)
    np.testing.assert_allclose(wald, [4 * (1 + 9 + 0.25), 4 * (4 + 0.25 + 1)])
    mag = get_criterion("magnitude").group_scores([theta, bias], [None, None], groups)
    np.testing.assert_allclose(mag, [np.sqrt(1 + 9 + 0.25), np.sqrt(4 + 0.25 + 1)])
    l1 = get_criterion("l1_norm").group_scores([theta, bias], [None, None], groups)
    np.testing.assert_allclose(l1, [4.5, 3.5])
    np.testing.assert_array_equal(expand(np.array([True, False]), groups[0]), [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match="how"):
        reduce_groups([theta], groups[:1], "max")


@pytest.mark.parametrize("criterion", ["wald", "wald_diag", "magnitude"])
def test_unit_pruning_removes_whole_units_exactly(tiny_mlp_data, criterion):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.5, criterion, granularity="unit", verbose=0)
    everything = tsp.prune_once(
        model,
        (x, y),
        0.5,
        criterion,
        granularity="unit",
        layers=["fc1", "fc2", "output"],
        verbose=0,
    )
    for name, chosen in [("fc1", pruned), ("fc2", pruned), ("output", everything)]:
        layer = chosen.get_layer(name)
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        dead = np.all(kernel == 0, axis=0)
        assert dead.sum() == round_half_up(0.5 * kernel.shape[1]), name
        assert np.all(bias[dead] == 0) and np.all(kernel[:, ~dead].any(axis=0))
    # By default the output layer keeps its units (its classes).
    assert pruned.get_layer("output").kernel.numpy().any(axis=0).all()


def test_block_pruning_zeroes_blocks_of_four_inputs(tiny_mlp_data):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_once(model, (x, y), 0.75, "wald_diag", granularity=(1, 4), verbose=0)
    kernel = pruned.get_layer("fc1").kernel.numpy()  # [16 inputs, 12 outputs]
    blocks = kernel.reshape(4, 4, 12)
    dead = np.all(blocks == 0, axis=1)
    assert dead.sum() == round_half_up(0.75 * 4 * 12)
    assert np.all(blocks.any(axis=1) | dead)  # no partly pruned block
    assert np.count_nonzero(pruned.get_layer("fc1").bias.numpy()) > 0


def test_filter_and_channel_pruning_of_a_conv_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.layers.Conv2D(6, 3, activation="relu", input_shape=(8, 8, 1), name="conv"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((30, 8, 8, 1), np.float32), rng.integers(0, 3, 30)
    pruned = tsp.prune_once(
        model, (x, y), 0.5, "wald_diag", granularity="filter", layers=["conv", "conv2"], verbose=0
    )
    kernel = pruned.get_layer("conv").kernel.numpy()
    dead = ~kernel.reshape(-1, 6).any(axis=0)
    assert dead.sum() == 3 and np.all(pruned.get_layer("conv").bias.numpy()[dead] == 0)
    by_channel = tsp.prune_once(
        model, (x, y), 0.5, "magnitude", granularity="channel", layers=["conv2"], verbose=0
    )
    kernel2 = by_channel.get_layer("conv2").kernel.numpy()
    assert (~kernel2.transpose(2, 0, 1, 3).reshape(6, -1).any(axis=1)).sum() == 3
    with pytest.raises(ValueError, match="layer 'conv'"):
        tsp.prune_once(model, (x, y), 0.5, "magnitude", granularity=(1, 4), verbose=0)


def test_unit_pruning_inside_fit_and_saved_granularity(tiny_mlp_data, tmp_path):
    model, x, y = tiny_mlp_data
    pruned = tsp.prune_statistically(
        model, (x, y), "wald_diag", tsp.IterativeSparsity([0.25, 0.5], every=3), granularity=(1, 4)
    )
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=1, batch_size=10, callbacks=tsp.callbacks((x, y), verbose=0), verbose=0)
    wrapper = pruned.layers[1]
    mask = wrapper.pruning_vars[0][1].numpy().reshape(4, 4, 12)
    assert np.all(mask.min(axis=1) == mask.max(axis=1))  # whole blocks
    assert int((mask[:, 0, :] == 0).sum()) == round_half_up(0.5 * 48)
    path = str(tmp_path / "p.keras")
    pruned.save(path)
    assert keras.models.load_model(path).layers[1].granularity == (1, 4)
    units = tsp.prune_statistically(
        model, (x, y), "magnitude", tsp.OneShotSparsity(0.5), granularity="unit"
    )
    assert all(
        len(w.pruning_vars) == 2 for w in units.layers if isinstance(w, tsp.PruneStatistically)
    )
