"""One-shot pruning frontier of LeNet-300-100 (or ResNet-20): every criterion, both scopes.

Usage::

    python -m benchmarks.criteria_frontier [--seeds 3] [--quick] [--retrain-repeats 1]
        [--variant LABEL=CRITERION[,key=value...]] [--out docs/results/criteria_frontier.md]
        [--model lenet_300_100|resnet20] [--stats-examples N]

LeNet-300-100 (L2 1e-4) is trained once per seed on MNIST (cached under
``runs/``), then pruned one-shot with each criterion at each sparsity, in layer
and global scope, biases kept; test accuracy is measured without retraining
and after ``--retrain-epochs`` epochs of retraining with the masks held. The
statistics use 10k training examples. Results are appended to a JSON-lines
file as they come (a rerun skips what is done), then tabulated (mean and
spread over seeds) and plotted, with wald_block minus magnitude paired by seed
and a McNemar test on the paired test predictions. ``--retrain-repeats R``
retrains every pruned model R times (other shuffles) and reports the mean.
``--variant`` adds a criterion with options under a label of its own, e.g.
``"wald_block d1=wald_block,damping=1"``; the option ``restricted=false`` keeps
a block criterion's mask but not its update (the survivors keep their dense
values). Every variant is compared with magnitude like wald_block.

``--model resnet20`` runs the same on the ResNet-20 of :mod:`benchmarks.mobile` (16/32/64
filters, BatchNormalization) on MNIST padded to 32x32x3: trained per seed on the first
:data:`CNN_TRAIN_EXAMPLES` training images, its BatchNormalization statistics then
re-estimated on the statistics' examples (``--stats-examples``, default
:data:`CNN_STATS_EXAMPLES` for it: the convolutions' Kronecker factors cost more per
example than LeNet's), pruned with ``prune_once``'s defaults for CNNs (BatchNormalization
re-estimated after pruning).

The report has a table for each scope in ``--scopes``; with ``--retrain-epochs 0``
each cell is the one-shot accuracy alone. Text in the ``--out`` file below the
line ``benchmarks._common.KEPT`` (a hand-written reading) is kept when the report is rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfstatprune as tsp
from benchmarks._common import (
    append_row,
    command_line,
    compile_and_fit,
    logged_rows,
    publish,
    train_dense,
)
from tfstatprune import datasets, models
from tfstatprune._keras import keras
from tfstatprune.commands import int_at_least
from tfstatprune.stopping import mcnemar_worse

CRITERIA = {
    "magnitude": ("magnitude", {}),
    "random": ("random", {}),
    "obd": ("obd", {}),
    "wald (fisher)": ("wald_diag", {"hessian": "fisher"}),
    "wald (ggn)": ("wald_diag", {"hessian": "ggn"}),
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {"substeps": 1}),  # one shot, as published
    "obc": ("obc", {"substeps": 1}),
    "obs": ("obs", {}),
    "wald_block": ("wald_block", {}),
}
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
SCOPES = ("layer", "global")
L2 = 1e-4
STATS_EXAMPLES = 10_000
CNN_STATS_EXAMPLES = 1024
CNN_TRAIN_EXAMPLES = 15_000
MODELS = ("lenet_300_100", "resnet20")
TITLES = {"lenet_300_100": "LeNet-300-100", "resnet20": "ResNet-20"}
BATCH = 128
LEARNING_RATE = 1e-3
RETRAIN_SEED_STRIDE = 1000  # repeat r of a seed's retraining runs with seed + stride * r
VARIANT_SYNTAX = "LABEL=CRITERION[,key=value...]"
FIELDS = ("one_shot", "retrained")  # test accuracy without / after retraining


def parse_variant(text: str) -> tuple[str, tuple[str, dict]]:
    """``LABEL=CRITERION[,key=value...]`` -> ``(label, (criterion, options))``.

    Values are read as JSON where they parse (``1``, ``0.5``, ``false``), else kept
    as strings (``hessian=ggn``).
    """
    label, sep, spec = text.partition("=")
    criterion, *pairs = spec.split(",")
    if not sep or not label.strip() or not criterion.strip():
        raise argparse.ArgumentTypeError(f"expected {VARIANT_SYNTAX}, got {text!r}")
    if label.strip() in CRITERIA:
        raise argparse.ArgumentTypeError(
            f"variant label {label.strip()!r} is a built-in criterion's label; choose another"
        )
    if criterion.strip() not in tsp.available_criteria():
        raise argparse.ArgumentTypeError(
            f"unknown criterion {criterion.strip()!r} in {text!r}; "
            f"available: {', '.join(tsp.available_criteria())}"
        )
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected key=value, got {pair!r} in {text!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return label.strip(), (criterion.strip(), options)


class KeepMasks(keras.callbacks.Callback):
    """Hold the zeros of a pruned model during retraining (weights *= mask after each step)."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.pairs = [(w, (w.numpy() != 0).astype(np.float32)) for w in model.trainable_weights]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for w, mask in self.pairs:
            w.assign(w * mask)


def retrain(pruned: keras.Model, seed: int, epochs: int, data: datasets.MNIST) -> np.ndarray:
    """Retrain a copy of ``pruned`` with its zeros held; per test image, right or not
    (0 epochs: ``pruned`` as it is)."""
    if epochs == 0:
        return correct(pruned, data)
    model = keras.models.clone_model(pruned)
    model.set_weights(pruned.get_weights())
    compile_and_fit(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=BATCH,
        callbacks=[KeepMasks(model)],
        learning_rate=LEARNING_RATE,
        seed=seed,
    )
    return correct(model, data)


def load_data(model: str, quick: bool) -> datasets.MNIST:
    """MNIST for ``model``: 28x28x1 for LeNet-300-100, padded to 32x32x3 for ResNet-20."""
    data = datasets.mnist()
    if quick:
        data = datasets.MNIST(data.x_train[:6000], data.y_train[:6000], data.x_test, data.y_test)
    if model == "resnet20":
        from benchmarks.mobile import to_32x32x3

        data = datasets.MNIST(
            to_32x32x3(data.x_train), data.y_train, to_32x32x3(data.x_test), data.y_test
        )
    return data


def dense_model(
    seed: int,
    epochs: int,
    cache: Path,
    data: datasets.MNIST,
    model_name: str = "lenet_300_100",
    stats: tuple | None = None,
) -> keras.Model:
    """The dense model of ``seed``, trained and cached (ResNet-20: on the first
    :data:`CNN_TRAIN_EXAMPLES` images, its BatchNormalization re-estimated on ``stats``)."""
    if model_name == "resnet20":
        return _dense_resnet20(seed, epochs, cache, data, stats)
    path = cache / f"lenet_300_100_l2_seed{seed}_e{epochs}.keras"
    if path.exists():
        return keras.models.load_model(path)
    model = train_dense(
        models.lenet_300_100,
        data.x_train,
        data.y_train,
        seed=seed,
        l2=L2,
        epochs=epochs,
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
    )
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def _dense_resnet20(
    seed: int, epochs: int, cache: Path, data: datasets.MNIST, stats: tuple | None
) -> keras.Model:
    from benchmarks.mobile import resnet20

    path = cache / f"resnet20_seed{seed}_e{epochs}_n{CNN_TRAIN_EXAMPLES}.keras"
    if path.exists():
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    model = models.compile_classifier(resnet20(seed=seed), LEARNING_RATE)
    keras.utils.set_random_seed(seed)
    n = CNN_TRAIN_EXAMPLES
    model.fit(data.x_train[:n], data.y_train[:n], batch_size=BATCH, epochs=epochs, verbose=0)
    if stats is not None:
        tsp.recalibrate_batchnorm(model, stats)
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def correct(model: keras.Model, data: datasets.MNIST) -> np.ndarray:
    """Per test image, whether the model's prediction is right."""
    return model.predict(data.x_test, batch_size=2048, verbose=0).argmax(1) == data.y_test


def accuracy(model: keras.Model, data: datasets.MNIST) -> float:
    return float(correct(model, data).mean())


def pack(flags: np.ndarray) -> str:
    """Booleans as hex (8 per byte), for the JSON-lines log; :func:`unpack` inverts it."""
    return np.packbits(np.asarray(flags, bool)).tobytes().hex()


def unpack(text: str, size: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:size].astype(bool)


def run(args: argparse.Namespace) -> list[dict]:
    data = load_data(args.model, args.quick)
    stats = (data.x_train[: args.stats_examples], data.y_train[: args.stats_examples])
    log = Path(args.log)
    done = {
        (row["seed"], row["criterion"], row["scope"], row["sparsity"]): row
        for row in logged_rows(log)
    }
    criteria = {k: CRITERIA[k] for k in args.criteria.split(",")}
    criteria.update(args.variant)
    rows = list(done.values())
    for seed in range(args.seeds):
        dense = dense_model(seed, args.epochs, Path(args.cache), data, args.model, stats)
        dense_acc = accuracy(dense, data)
        for label, (criterion, options) in criteria.items():
            for scope in args.scopes.split(","):
                for sparsity in args.sparsities:
                    key = (seed, label, scope, sparsity)
                    if key in done:
                        continue
                    started = time.perf_counter()
                    given = dict(options)
                    restricted = given.pop("restricted", True)
                    pruned = tsp.prune_once(
                        dense,
                        stats,
                        sparsity,
                        criterion,
                        scope,
                        seed=seed,
                        verbose=0,
                        min_weights_per_unit=args.min_weights_per_unit,
                        **given,
                    )
                    if not restricted:  # the mask alone: survivors keep their dense values
                        for kept, before in zip(pruned.weights, dense.weights, strict=True):
                            kept.assign(before.numpy() * (kept.numpy() != 0))
                    seconds = time.perf_counter() - started
                    one_shot = correct(pruned, data)
                    runs = [
                        retrain(pruned, seed + RETRAIN_SEED_STRIDE * r, args.retrain_epochs, data)
                        for r in range(args.retrain_repeats)
                    ]
                    row = dict(
                        seed=seed,
                        criterion=label,
                        scope=scope,
                        sparsity=sparsity,
                        dense=dense_acc,
                        one_shot=float(one_shot.mean()),
                        retrained=float(np.mean([run.mean() for run in runs])),
                        prune_seconds=seconds,
                        test_images=int(one_shot.size),
                        one_shot_correct=pack(one_shot),
                    )
                    if len(runs) == 1:  # paired test predictions (repeats are not independent)
                        row["retrained_correct"] = pack(runs[0])
                    else:
                        row["retrained_runs"] = [float(run.mean()) for run in runs]
                    rows.append(row)
                    append_row(log, row)
                    print(
                        f"seed {seed} {label:>14} {scope:>6} {sparsity:.2f}: "
                        f"{row['one_shot']:.4f} -> {row['retrained']:.4f} ({seconds:.1f} s)",
                        flush=True,
                    )
    return rows


def parse_pair(text: str) -> tuple[str, str]:
    """``"OURS vs BASE"`` as ``(OURS, BASE)``.

    >>> parse_pair("wald_block + refit vs obs + refit")
    ('wald_block + refit', 'obs + refit')
    """
    ours, sep, base = text.partition(" vs ")
    if not sep or not ours.strip() or not base.strip():
        raise argparse.ArgumentTypeError(f"expected 'OURS vs BASE', got {text!r}")
    return ours.strip(), base.strip()


def _grid(first: str, labels: list[str], sparsities: list[float], cell) -> list[str]:
    """Markdown table lines: one row per label, one column per sparsity, ``cell(label, s)``."""
    lines = [
        f"| {first} | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---" * (len(sparsities) + 1) + "|",
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(cell(label, s) for s in sparsities) + " |")
    return lines


def table(
    rows: list[dict],
    scope: str,
    sparsities: list[float],
    criteria: list[str],
    fields: tuple[str, ...] = FIELDS,
) -> str:
    """A markdown table of one scope: mean ± std over seeds of each of ``fields``
    (``one_shot``, ``retrained``), joined by " / " in a cell."""

    def cell(label: str, s: float) -> str:
        picked = [
            r
            for r in rows
            if r["criterion"] == label and r["scope"] == scope and r["sparsity"] == s
        ]
        if not picked:
            return ""
        parts = []
        for field in fields:
            values = np.array([r[field] for r in picked]) * 100
            parts.append(f"{values.mean():.1f} ± {values.std():.1f}")
        return " / ".join(parts)

    return "\n".join(_grid("criterion", criteria, sparsities, cell))


def paired_gap(
    rows: list[dict],
    sparsities: list[float],
    ours: str = "wald_block",
    base: str = "magnitude",
    scopes: tuple[str, ...] = SCOPES,
    fields: tuple[str, ...] = FIELDS,
) -> list[str]:
    """Lines of a table: ``ours - base`` per seed (same dense model), mean ± std, in points.

    Where the log has the per-image predictions, each figure carries the p-value of a
    one-sided McNemar test of "``ours`` is less accurate", the test images of all seeds
    pooled (discordant pairs summed over seeds).
    """
    by_key = {(r["seed"], r["criterion"], r["scope"], r["sparsity"]): r for r in rows}

    def figure(pairs: list[tuple[dict, dict]], field: str) -> str:
        gaps = np.array([(a[field] - b[field]) * 100 for a, b in pairs])
        mean = round(float(gaps.mean()), 2) + 0.0  # as printed; + 0.0 turns -0.0 into 0.0
        text = f"{mean:+.2f} ± {gaps.std():.2f}"
        flags = f"{field}_correct"
        if all(flags in a and flags in b for a, b in pairs):
            test = mcnemar_worse(
                np.concatenate([unpack(b[flags], b["test_images"]) for a, b in pairs]),
                np.concatenate([unpack(a[flags], a["test_images"]) for a, b in pairs]),
            )
            text += f" (p {test.p_value:.2f})"
        return text + ("" if mean >= 0 else " **<**")

    def cell(scope: str, s: float) -> str:
        pairs = [
            (by_key[k], by_key[(k[0], base, scope, s)])
            for k in by_key
            if k[1:] == (ours, scope, s) and (k[0], base, scope, s) in by_key
        ]
        if not pairs:
            return ""
        return " / ".join(figure(pairs, field) for field in fields)

    return _grid("scope", list(scopes), sparsities, cell)


def plot(
    rows: list[dict],
    sparsities: list[float],
    criteria: list[str],
    path: Path,
    scopes: tuple[str, ...] = SCOPES,
    fields: tuple[str, ...] = FIELDS,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(fields),
        len(scopes),
        figsize=(5.5 * len(scopes), 4 * len(fields)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for col, scope in enumerate(scopes):
        for row_index, field in enumerate(fields):
            ax = axes[row_index][col]
            for label in criteria:
                means = []
                for s in sparsities:
                    vals = [
                        r[field]
                        for r in rows
                        if r["criterion"] == label and r["scope"] == scope and r["sparsity"] == s
                    ]
                    means.append(np.mean(vals) * 100 if vals else np.nan)
                ax.plot([s * 100 for s in sparsities], means, marker="o", label=label)
            title = "no retraining" if field == "one_shot" else "after retraining"
            ax.set_title(f"{scope} scope, {title}")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the dense model")
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument(
        "--retrain-repeats",
        type=int_at_least(1),
        default=1,
        help="retrain each pruned model this many times (other shuffles); report the mean",
    )
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument(
        "--sparsities", type=lambda t: [float(v) for v in t.split(",")], default=list(SPARSITIES)
    )
    parser.add_argument(
        "--min-weights-per-unit", type=int, default=0, help="prune_once's min_weights_per_unit"
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar=VARIANT_SYNTAX,
        help="add a criterion with options under its own label (repeatable); "
        "restricted=false keeps a block criterion's mask without its update",
    )
    parser.add_argument(
        "--pair",
        type=parse_pair,
        action="append",
        default=[],
        metavar="OURS vs BASE",
        help="also tabulate criterion OURS minus BASE (labels as reported; repeatable)",
    )
    parser.add_argument("--scopes", default=",".join(SCOPES))
    parser.add_argument("--cache", default="runs/criteria_frontier")
    parser.add_argument("--log", default="runs/criteria_frontier/results.jsonl")
    parser.add_argument("--out", default=None, help="write the markdown table (and a .png) here")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 2 levels")
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument(
        "--stats-examples",
        type=int_at_least(1),
        default=None,
        help=f"examples of the statistics (default {STATS_EXAMPLES}; resnet20: "
        f"{CNN_STATS_EXAMPLES})",
    )
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.stats_examples is None:
        args.stats_examples = CNN_STATS_EXAMPLES if args.model == "resnet20" else STATS_EXAMPLES
    labels = [label for label, _ in args.variant]
    if len(set(labels)) < len(labels):
        parser.error(f"--variant labels must differ, got {labels}")
    known = {*args.criteria.split(","), *labels}
    for pair in args.pair:
        if not set(pair) <= known:
            parser.error(f"--pair names criteria not run: {sorted(set(pair) - known)}")
    unknown = sorted(set(args.scopes.split(",")) - set(SCOPES))
    if unknown:
        parser.error(f"--scopes takes {', '.join(SCOPES)} (comma-separated), got {unknown}")
    if args.quick:
        args.seeds, args.epochs, args.retrain_epochs = 1, 1, 1
        args.sparsities = [0.9, 0.95]
        args.log = str(Path(args.cache) / "quick.jsonl")
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    scopes = tuple(args.scopes.split(","))
    fields = FIELDS[:1] if args.retrain_epochs == 0 else FIELDS
    criteria = [*args.criteria.split(","), *dict(args.variant)]
    out = Path(args.out) if args.out else None
    publish(report(rows, args, given, criteria, scopes, fields), out)
    if out is not None:
        plot(rows, args.sparsities, criteria, out.with_suffix(".png"), scopes, fields)


def report(
    rows: list[dict],
    args: argparse.Namespace,
    given: list[str],
    criteria: list[str],
    scopes: tuple[str, ...],
    fields: tuple[str, ...],
) -> str:
    """The markdown report: one table per scope run, the paired gaps, the dense accuracy.

    With ``fields == ("one_shot",)`` (no retraining) each cell is one number.
    """
    measured = (
        "**without retraining**"
        if fields == FIELDS[:1]
        else f"**without retraining / after {args.retrain_epochs} epochs of retraining** "
        "(masks held"
        + (
            f"; mean of {args.retrain_repeats} retraining runs with different shuffles"
            if args.retrain_repeats > 1
            else ""
        )
        + ")"
    )
    model = args.model
    trained = (
        f"ResNet-20 (16/32/64 filters, BatchNormalization; `benchmarks.mobile.resnet20`) on "
        f"MNIST padded to 32x32x3, trained {args.epochs} epochs (Adam, batch {BATCH}) per seed "
        f"on the first {CNN_TRAIN_EXAMPLES:,} training images, its BatchNormalization "
        "statistics re-estimated on the statistics' examples before and after pruning"
        if model == "resnet20"
        else f"LeNet-300-100, L2 {L2}, trained {args.epochs} epochs (Adam, batch {BATCH}) per seed"
    )
    text = [
        f"# One-shot pruning of {TITLES[model]}: criteria compared",
        "",
        f"Command: `{command_line('criteria_frontier', given)}`",
        "",
        f"{trained}; {args.seeds} seed(s); statistics on "
        f"{args.stats_examples:,} training examples; biases kept; "
        "test accuracy (%) on the 10k MNIST test images, mean ± std over seeds, "
        f"{measured}.",
        "",
    ]
    for scope in scopes:
        text += [f"## {scope} scope", "", table(rows, scope, args.sparsities, criteria, fields), ""]
    which = "without / after retraining" if len(fields) > 1 else "without retraining"
    pairs = [(ours, "magnitude") for ours in ["wald_block", *dict(args.variant)]]
    for ours, base in pairs + args.pair:
        gap = paired_gap(rows, args.sparsities, ours, base, scopes=scopes, fields=fields)
        if len(gap) < 3 or not any(c.strip() for line in gap[2:] for c in line.split("|")[2:]):
            continue
        text += [
            f"## {ours} minus {base}",
            "",
            "Accuracy difference in points, paired by seed (same dense model), mean ± std, "
            f"{which}; **<** marks a mean below {base}; (p ...): one-sided "
            f"McNemar test of {ours} being less accurate, the paired test predictions of all "
            "seeds pooled (small p: significantly worse). The test takes the pruned models as "
            "given: it covers the sampling of test images"
            + (
                ", not the randomness of retraining (which shuffle a model is retrained with); "
                "`--retrain-repeats` averages over that."
                if len(fields) > 1
                else "."
            ),
            "",
            *gap,
            "",
        ]
    dense = [r["dense"] for r in rows if r["criterion"] == criteria[0]]
    if dense:
        text.append(f"Dense test accuracy: {np.mean(dense) * 100:.2f} % (mean over seeds).")
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    main()
