"""The cost of the default criterion: ``prune_once`` with ``"wald"`` vs ``"wald_diag"``.

Usage::

    python -m benchmarks.default_cost [--models lenet_300_100,lenet5]

Each model is trained one epoch on 20,000 MNIST training images (Adam, seed 0), then
pruned one-shot to 90 % of every layer by each criterion with statistics on 1,000
training images; prints the wall-clock seconds of the ``prune_once`` call and the test
accuracy of the pruned model (no retraining).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tfstatprune as tsp
from tfstatprune import datasets, models
from tfstatprune._keras import keras

CRITERIA = ("wald_diag", "wald")
SPARSITY = 0.9
TRAIN_EXAMPLES = 20_000
STATS_EXAMPLES = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet_300_100,lenet5")
    args = parser.parse_args()
    data = datasets.mnist(datasets.resolve_source())
    x, y = data.x_train, data.y_train
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        model = models.compile_classifier(getattr(models, name)(seed=0))
        model.fit(x[:TRAIN_EXAMPLES], y[:TRAIN_EXAMPLES], batch_size=128, epochs=1, verbose=0)
        for criterion in CRITERIA:
            started = time.perf_counter()
            stats = (x[:STATS_EXAMPLES], y[:STATS_EXAMPLES])
            pruned = tsp.prune_once(model, stats, SPARSITY, criterion, verbose=0)
            seconds = time.perf_counter() - started
            predicted = np.argmax(pruned.predict(data.x_test, verbose=0), axis=-1)
            accuracy = 100 * float(np.mean(predicted == data.y_test))
            print(
                f"{name} {criterion}: {seconds:.1f} s, test accuracy {accuracy:.2f} %", flush=True
            )


if __name__ == "__main__":
    main()
