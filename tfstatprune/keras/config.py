"""Settings as objects: how statistics are collected, and what a pruning step does.

The entry points (:func:`tfstatprune.prune_once`,
:func:`tfstatprune.prune_statistically`, :func:`tfstatprune.scores`,
:class:`tfstatprune.keras.callbacks.StatisticalPruning`) keep their keyword
arguments for users; each turns them into these objects once
(:func:`settings_from_arguments`), and everything below them passes the objects.

* :class:`StatsConfig` -- how the statistics are collected (the loss, how
  many examples, chunk size and memory budget, seed, verbosity).
* :class:`MaskSettings` -- what a group of layers is masked by (criterion
  and its options, scope and its per-layer cap, granularity, biases, N:M): what a
  :class:`~tfstatprune.keras.wrapper.PruneStatistically` wrapper stores and
  serializes.
* :class:`PruneSettings` -- a one-shot pruning: the masks' settings, which
  layers, the per-class and per-unit floors, the sub-steps, and whether the
  BatchNormalization statistics are re-estimated afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from tfstatprune.granularity import Granularity, check_granularity
from tfstatprune.masking import SCOPES, check_m_by_n, check_max_layer_sparsity, column_floor

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_MIN_WEIGHTS_PER_CLASS",
    "DEFAULT_STATS",
    "ONE_SHOT_ARGUMENTS",
    "MaskSettings",
    "PruneSettings",
    "StatsConfig",
    "settings_from_arguments",
]

DEFAULT_MIN_WEIGHTS_PER_CLASS = 1


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """How the statistics of a pruning step are collected.

    Attributes:
      loss: per-example loss (default: the compiled loss).
      max_examples: use at most this many examples.
      batch_size: examples per statistics chunk (default: from the memory budget).
      memory_budget_mb: bound on the per-example quantities of one chunk
        (None: the collector's default).
      seed: seed for sampled labels (``hessian="ggn"``) and for criteria that
        declare a seed (``random``); step ``t`` collects with ``seed + t``.
      verbose: 1 shows the statistics progress bar.
      skip_nonfinite: leave out the examples whose loss or gradients are
        NaN/Inf, with a warning (default: an error naming them).

    Example:
      >>> StatsConfig(max_examples=100).collect_arguments(step=2)["seed"]
      2
    """

    loss: Any = None
    max_examples: int | None = None
    batch_size: int | None = None
    memory_budget_mb: float | None = None
    seed: int = 0
    verbose: int = 1
    skip_nonfinite: bool = False

    def collect_arguments(self, *, step: int = 0) -> dict[str, Any]:
        """Keyword arguments of :func:`tfstatprune.stats.collect_statistics` at ``step``."""
        found = dict(
            loss=self.loss,
            max_examples=self.max_examples,
            batch_size=self.batch_size,
            seed=self.seed + step,
            verbose=self.verbose,
            skip_nonfinite=self.skip_nonfinite,
        )
        if self.memory_budget_mb is not None:
            found["memory_budget_mb"] = self.memory_budget_mb
        return found


#: The statistics settings when none are given.
DEFAULT_STATS = StatsConfig()


@dataclasses.dataclass(frozen=True, eq=True)
class MaskSettings:
    """What the masks of a group of layers follow (one wrapper's settings).

    Attributes:
      criterion: a registered criterion name or a callable.
      options: the criterion's options (``{"hessian": "ggn"}``).
      scope: ``"layer"`` or ``"global"``.
      granularity: ``"weight"``, ``"unit"``, ``"filter"``, ``"channel"`` or a
        block (normalized by :func:`tfstatprune.granularity.check_granularity`).
      prune_bias: also mask biases.
      sparsity_m_by_n: ``(m, n)`` N:M masks, or None.
      max_layer_sparsity: with ``scope="global"``, no layer's weight is pruned
        beyond this fraction (None: no cap; see
        :func:`tfstatprune.masking.compute_masks`).

    Example:
      >>> MaskSettings("magnitude", granularity=[1, 4]).get_config()["granularity"]
      [1, 4]
    """

    criterion: Any = "wald"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scope: str = "layer"
    granularity: Granularity = "weight"
    prune_bias: bool = False
    sparsity_m_by_n: tuple[int, int] | None = None
    max_layer_sparsity: float | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        cap = check_max_layer_sparsity(self.max_layer_sparsity, self.scope)
        object.__setattr__(self, "max_layer_sparsity", cap)
        object.__setattr__(self, "options", dict(self.options or {}))
        object.__setattr__(self, "granularity", check_granularity(self.granularity))
        object.__setattr__(self, "prune_bias", bool(self.prune_bias))
        if self.sparsity_m_by_n is not None:
            object.__setattr__(self, "sparsity_m_by_n", check_m_by_n(self.sparsity_m_by_n))

    def group_key(self) -> tuple:
        """Layers with equal keys are scored and masked together."""
        criterion = self.criterion if isinstance(self.criterion, str) else id(self.criterion)
        return (
            criterion,
            repr(sorted(self.options.items())),
            self.scope,
            self.granularity,
            self.sparsity_m_by_n,
            self.max_layer_sparsity,
        )

    def get_config(self) -> dict[str, Any]:
        """The settings as a wrapper's config stores them (JSON types).

        Raises:
          ValueError: a callable criterion (register it and pass its name).
        """
        if not isinstance(self.criterion, str):
            raise ValueError(
                "a wrapper with a callable criterion cannot be saved; register it with "
                "tfstatprune.register_criterion(name) and pass the name"
            )
        granularity = self.granularity
        return {
            "criterion": self.criterion,
            "criterion_options": dict(self.options),
            "scope": self.scope,
            "prune_bias": self.prune_bias,
            "granularity": list(granularity) if isinstance(granularity, tuple) else granularity,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
            "max_layer_sparsity": self.max_layer_sparsity,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MaskSettings:
        """The inverse of :meth:`get_config` (missing keys take their defaults: a file
        written before ``max_layer_sparsity`` existed loads without a cap)."""
        defaults = cls()
        return cls(
            criterion=config.get("criterion", defaults.criterion),
            options=config.get("criterion_options") or {},
            scope=config.get("scope", defaults.scope),
            granularity=config.get("granularity", defaults.granularity),
            prune_bias=config.get("prune_bias", defaults.prune_bias),
            sparsity_m_by_n=config.get("sparsity_m_by_n"),
            max_layer_sparsity=config.get("max_layer_sparsity"),
        )


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """A one-shot pruning: the masks' settings plus which layers, floors and sub-steps.

    Attributes:
      masks: the :class:`MaskSettings`.
      layers: names of the layers to prune (None: the default choice).
      min_weights_per_class: with elementwise masks, the output layers keep
        at least this many weights per output unit (0: off).
      min_weights_per_unit: the same floor for every other pruned kernel.
      substeps: sub-steps of geometrically shrinking density (None: by criterion).
      recalibrate_batchnorm: re-estimate the moving statistics of the
        BatchNormalization layers downstream of the pruned layers on the
        statistics' examples (:mod:`tfstatprune.keras.recalibration`); None: when
        there are such layers and examples.
      allocation: global scope's per-layer levels: ``"threshold"`` (one
        threshold over the scores) or ``"error_curves"`` (from each layer's
        error curve, :mod:`tfstatprune.keras.allocation`; elementwise masks).
      refit_output: after pruning, refit the output Dense layer's surviving
        weights to its restricted minimiser on the statistics' examples
        (:mod:`tfstatprune.keras.refit`).

    Raises:
      ValueError: ``recalibrate_batchnorm`` not None, True or False; an
        unknown ``allocation``, or ``"error_curves"`` outside global scope or
        with structured or N:M masks.
    """

    masks: MaskSettings = dataclasses.field(default_factory=MaskSettings)
    layers: Sequence[str] | None = None
    min_weights_per_class: int = DEFAULT_MIN_WEIGHTS_PER_CLASS
    min_weights_per_unit: int = 0
    substeps: int | None = None
    recalibrate_batchnorm: bool | None = None
    allocation: str = "threshold"
    refit_output: bool = False

    def __post_init__(self) -> None:
        if self.refit_output not in (True, False):
            raise ValueError(f"refit_output must be True or False, got {self.refit_output!r}")
        if self.recalibrate_batchnorm not in (None, True, False):
            raise ValueError(
                "recalibrate_batchnorm must be None (when the model has BatchNormalization "
                f"after a pruned layer), True or False, got {self.recalibrate_batchnorm!r}"
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(
                f"allocation must be one of {list(ALLOCATIONS)}, got {self.allocation!r}"
            )
        masks = self.masks
        if self.allocation == "error_curves" and (
            masks.scope != "global" or masks.granularity != "weight" or masks.sparsity_m_by_n
        ):
            raise ValueError(
                "allocation='error_curves' chooses the per-layer levels of scope='global' with "
                f"granularity='weight' (got scope={masks.scope!r}, granularity="
                f"{masks.granularity!r}, sparsity_m_by_n={masks.sparsity_m_by_n}): pass "
                "scope='global', or leave allocation='threshold'"
            )

    def column_floor(self, *, output: bool) -> int:
        """Entries per output unit a layer's kernel keeps (0 unless masks are elementwise)."""
        if self.masks.granularity != "weight":
            return 0
        return column_floor(
            per_class=self.min_weights_per_class,
            per_unit=self.min_weights_per_unit,
            output=output,
        )


_MASK_ARGUMENTS = (
    "criterion",
    "scope",
    "granularity",
    "prune_bias",
    "sparsity_m_by_n",
    "max_layer_sparsity",
)
_PRUNE_ARGUMENTS = (
    "layers",
    "min_weights_per_class",
    "min_weights_per_unit",
    "substeps",
    "recalibrate_batchnorm",
    "allocation",
    "refit_output",
)
#: Arguments of a one-shot pruning that a wrapped model pruned while it trains, or
#: the scores alone, have no use for (refused there by name).
ONE_SHOT_ARGUMENTS = (
    "substeps",
    "recalibrate_batchnorm",
    "allocation",
    "refit_output",
    "holdout",
    "alpha",
)
#: The valid values of ``prune_once(..., allocation=...)``: one threshold over the
#: scores (global scope's rule), or levels from per-layer error curves.
ALLOCATIONS = ("threshold", "error_curves")
_STATS_ARGUMENTS = ("loss", "max_examples", "batch_size", "seed", "verbose", "skip_nonfinite")


def settings_from_arguments(**arguments: Any) -> tuple[PruneSettings, StatsConfig]:
    """The entry points' keyword arguments as objects; the rest are criterion options.

    The names are those of :func:`tfstatprune.prune_once` (``criterion``,
    ``scope``, ``granularity``, ``prune_bias``, ``sparsity_m_by_n``,
    ``max_layer_sparsity``, ``layers``, ``min_weights_per_class``,
    ``min_weights_per_unit``, ``substeps``, ``recalibrate_batchnorm``, ``allocation``,
    ``refit_output``, ``loss``,
    ``max_examples``, ``batch_size``, ``seed``, ``verbose``, ``skip_nonfinite``);
    a missing one takes the objects' default.

    >>> prune, stats = settings_from_arguments(criterion="obd", seed=3, hessian="ggn")
    >>> prune.masks.options, stats.seed
    ({'hessian': 'ggn'}, 3)
    """

    def take(names: Sequence[str]) -> dict[str, Any]:
        return {name: arguments.pop(name) for name in names if name in arguments}

    mask = take(_MASK_ARGUMENTS)
    prune = take(_PRUNE_ARGUMENTS)
    stats = StatsConfig(**take(_STATS_ARGUMENTS))
    return PruneSettings(MaskSettings(**mask, options=arguments), **prune), stats
