"""Statistics under tf.distribute strategies equal the single-device statistics.

Logical devices must be configured before TensorFlow initialises, so each
scenario runs in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Float32 sums split differently over replicas and chunks: only round-off differs.
RTOL_ACROSS_REPLICAS = 1e-5
SUBPROCESS_TIMEOUT_S = 900  # a guard against hangs: on 2 busy cores the run takes minutes

_COMMON = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 6, 6, 2)).astype(np.float32)
    return x, rng.integers(0, 3, 37)

def build():
    from tfstatprune._keras import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, activation="relu"),
        keras.layers.LayerNormalization(),  # no rule: the generic path
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy")
    return model

def listed(a):
    return None if a is None else a.tolist()

def arrays(result):
    return {
        "count": result.count,
        "sums": [
            [w.sum.tolist(), w.sumsq.tolist(), listed(w.curvature)]
            for w in result.weights.values()
        ],
        "kronecker": [
            [k.inputs.tolist(), k.gradients.tolist(), listed(k.curvature)]
            for k in (w.kronecker for w in result.weights.values())
            if k is not None
        ],
    }
"""

_MIRRORED = """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import warnings
warnings.simplefilter("ignore")
from tfstatprune.stats import collect_statistics

x, y = data()
single = build()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()  # variables created under the strategy
mirrored.set_weights(single.get_weights())
out = {}

def ruled(model):  # all weights but the LayerNormalization's (slow to trace)
    return [w for w in model.trainable_weights if not any(w is v for v in model.layers[1].weights)]

# fisher, every weight, 36 examples in chunks of 12.
kwargs = dict(batch_size=12, verbose=0)
out["fisher"] = {
    "single": arrays(collect_statistics(single, (x[:36], y[:36]), **kwargs)),
    "model_strategy": arrays(collect_statistics(mirrored, (x[:36], y[:36]), **kwargs)),
}
with strategy.scope():  # a model built outside, collected inside the scope
    out["fisher"]["scope"] = arrays(collect_statistics(single, (x[:36], y[:36]), **kwargs))
# The exact GGN and the Kronecker factors, 37 examples: the last chunk has one
# example for two replicas (a padded example of weight 0).
kwargs = dict(batch_size=12, hessian="ggn_exact", kronecker=True, verbose=0)
out["ggn_exact"] = {
    "single": arrays(collect_statistics(single, (x, y), weights=ruled(single), **kwargs)),
    "model_strategy": arrays(
        collect_statistics(mirrored, (x, y), weights=ruled(mirrored), **kwargs)
    ),
}
# Non-finite examples 5 and 36: example 36 is alone in the last chunk, so the
# other replica's padding copies it (weight 0) and must not count it.
x_bad = x.copy()
x_bad[[5, 36]] = np.nan
kwargs = dict(batch_size=12, verbose=0)
out["nonfinite"] = {}
for key, model in (("single", single), ("model_strategy", mirrored)):
    try:
        collect_statistics(model, (x_bad, y), **{**kwargs, "weights": ruled(model)})
    except ValueError as error:
        message = str(error)
    skipped = collect_statistics(
        model, (x_bad, y), skip_nonfinite=True, **{**kwargs, "weights": ruled(model)}
    )
    out["nonfinite"][key] = {**arrays(skipped), "message": message}
print(json.dumps(out))
"""

_MULTI_WORKER = """
index, ports = int(sys.argv[1]), sys.argv[2].split(",")
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"localhost:{p}" for p in ports]},
    "task": {"type": "worker", "index": index},
})
import warnings
warnings.simplefilter("ignore")
from tfstatprune.stats import collect_statistics

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = build()
x, y = data()
shard = slice(0, 20) if index == 0 else slice(20, None)  # unequal shards
print(json.dumps({
    "worker": arrays(collect_statistics(model, (x[shard], y[shard]), batch_size=6, verbose=0)),
}))
"""


def _script(body: str) -> str:
    return textwrap.dedent(_COMMON) + textwrap.dedent(body)


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def assert_same_statistics(got: dict, want: dict) -> None:
    assert got["count"] == want["count"]
    assert len(got["kronecker"]) == len(want["kronecker"])
    for got_weight, want_weight in zip(
        got["sums"] + got["kronecker"], want["sums"] + want["kronecker"], strict=True
    ):
        for a, b in zip(got_weight, want_weight, strict=True):
            if b is None:
                assert a is None
                continue
            a, b = np.asarray(a), np.asarray(b)
            assert np.abs(a - b).max() <= RTOL_ACROSS_REPLICAS * np.abs(b).max()


def test_mirrored_strategy_matches_a_single_device():
    run = subprocess.run(
        [sys.executable, "-c", _script(_MIRRORED)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = _last_json_line(run.stdout)
    assert results["fisher"]["single"]["count"] == 36
    assert results["ggn_exact"]["single"]["count"] == 37
    assert len(results["ggn_exact"]["single"]["kronecker"]) == 2  # the Conv2D and the Dense
    for found in results.values():
        assert_same_statistics(found["model_strategy"], found["single"])
    assert_same_statistics(results["fisher"]["scope"], results["fisher"]["single"])
    for found in results["nonfinite"].values():  # the padding copy of example 36 not counted
        assert "2 of 37 examples" in found["message"] and "[5, 36]" in found["message"]
        assert found["count"] == 35


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.skipif(
    not os.environ.get("TFSTATPRUNE_SLOW_TESTS"),
    reason="two local workers take about 25 s; set TFSTATPRUNE_SLOW_TESTS=1 to run",
)
def test_multi_worker_mirrored_strategy_gives_every_worker_the_same_totals():
    ports = ",".join(str(p) for p in _free_ports(2))
    script = _script(_MULTI_WORKER)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=SUBPROCESS_TIMEOUT_S) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr[-3000:]
    first, second = (_last_json_line(stdout)["worker"] for stdout, _ in outputs)
    assert first == second  # identical on every worker, so identical masks
    common: dict = {}
    exec(textwrap.dedent(_COMMON), common)
    from tfstatprune.stats import collect_statistics

    x, y = common["data"]()
    single = collect_statistics(common["build"](), (x, y), verbose=0)
    assert_same_statistics(first, json.loads(json.dumps(common["arrays"](single))))
