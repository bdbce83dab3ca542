"""Activation statistics: how often each output channel of a layer is exactly zero.

For a Dense or convolution layer with activation ``f`` and pre-activation
output ``z`` (``[n, ..., C]``, channels last), the collector counts, per output
channel ``c``, the (example, position) pairs where ``f(z)[..., c] == 0``. The
*average percentage of zeros* (APoZ, Hu et al. 2016, "Network trimming: a
data-driven neuron pruning approach towards efficient deep architectures") is

    APoZ_c = sum_i sum_p 1[f(z_i)[p, c] == 0] / (n * P),

``P`` the number of positions per example (1 for a Dense layer on flat
inputs, the output's spatial size for a convolution).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ActivationStatistics"]


class ActivationStatistics(NamedTuple):
    """Zero counts of one layer's activations, per output channel.

    Attributes:
      count: n, the number of examples.
      observations: ``n * P``, the (example, position) pairs per channel.
      zeros: float64 ``(C,)``, the pairs where the activation is exactly 0.
      activation: the name of the layer's activation (``"relu"``, ...).

    Example:
      >>> s = ActivationStatistics(2, 4.0, np.array([1.0, 4.0]), "relu")
      >>> s.apoz
      array([0.25, 1.  ])
    """

    count: int
    observations: float
    zeros: np.ndarray
    activation: str = "linear"

    @property
    def apoz(self) -> np.ndarray:
        """The average percentage (fraction) of zeros of each channel."""
        return np.asarray(self.zeros, np.float64) / max(float(self.observations), 1.0)

    def merge(self, other: ActivationStatistics) -> ActivationStatistics:
        """Combine two disjoint sets of examples (counts add)."""
        if np.shape(self.zeros) != np.shape(other.zeros):
            raise ValueError(
                f"cannot merge activation statistics of {np.shape(self.zeros)} and "
                f"{np.shape(other.zeros)} channels"
            )
        return ActivationStatistics(
            self.count + other.count,
            float(self.observations) + float(other.observations),
            np.add(self.zeros, other.zeros, dtype=np.float64),
            self.activation,
        )
