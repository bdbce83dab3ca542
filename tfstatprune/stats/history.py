"""What training did to each weight: the record history-based criteria read.

:class:`tfstatprune.WeightHistory` (a Keras callback) watches the prunable
weights during ``fit``. After every optimizer step t = 1..T it folds the new
value ``theta_t`` into a few running quantities per weight, never a list of
past values:

- ``abs_updates``: ``sum_t |theta_t - theta_(t-1)|``, the accumulated size of
  the weight's updates (``theta_0`` is the value when training began);
- ``mean`` / ``variance``: the mean and variance of ``theta_t`` over the last
  steps, with the weighted recurrence (West 1979; Finch 2009)

      d = theta_t - mean
      mean     <- mean + a_t d
      variance <- (1 - a_t) (variance + a_t d^2),     a_t = max(1 / t, 1 / K)

  which for ``t <= K`` is exactly the (population) mean and variance of
  ``theta_1..theta_t``, and afterwards forgets old steps geometrically (step
  ``t - j`` weighs ``(1 - 1/K)^j``): the variation over roughly the last ``K``
  steps (``K = window``; no window: equal weights over the whole run).

Everything here is float32 on the device while training and numpy (float64)
once read.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["UpdateStatistics", "variation_step"]


class UpdateStatistics(NamedTuple):
    """The recorded history of one weight tensor (see the module docstring).

    Attributes:
      steps: the number of optimizer steps recorded (T).
      abs_updates: ``sum_t |theta_t - theta_(t-1)|``, the weight's shape.
      mean: the (windowed) mean of ``theta_t``.
      variance: the (windowed) variance of ``theta_t`` around ``mean``.
      window: ``K`` of the recurrence, or None (equal weights over all steps).
    """

    steps: int
    abs_updates: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    window: int | None = None


def variation_step(
    mean: np.ndarray, variance: np.ndarray, value: np.ndarray, step: int, window: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the windowed mean/variance recurrence (``step`` counts from 1).

    >>> m, v = np.zeros(1), np.zeros(1)
    >>> for t, x in enumerate([1.0, 2.0, 3.0], start=1):
    ...     m, v = variation_step(m, v, np.array([x]), t, None)
    >>> float(m[0]), round(float(v[0]), 6)
    (2.0, 0.666667)
    """
    alpha = 1.0 / step if window is None else max(1.0 / step, 1.0 / window)
    d = value - mean
    return mean + alpha * d, (1.0 - alpha) * (variance + alpha * d * d)
