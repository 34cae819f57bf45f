"""Confidence intervals and the pass@k estimator, as small pure functions.

- :func:`wilson_interval`: the 95% Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai and
  DasGupta 2001 recommend it over the normal approximation, which collapses to a point at 0% and 100%).
- :func:`pass_at_k`: the unbiased pass@k of one problem from ``n`` samples with ``c`` correct (Codex paper, Chen
  et al. 2021, arXiv 2107.03374, Eq. 1), computed as a product so that no binomial coefficient is ever formed.
- :func:`bootstrap_interval`: the percentile bootstrap interval of a mean (Efron 1979), used for pass@k, whose
  per-problem values are not 0/1 counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z_95 = 1.959963984540054
"""The standard normal quantile at 0.975."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``::

        (p + z^2 / 2n  +-  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),   p = successes / n

    the set of proportions ``p0`` that a two-sided score test at level ``z`` does not reject. ``(0, 1)`` for
    ``n = 0`` (no information)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    low = 0.0 if successes == 0 else (centre - spread) / scale  # exactly 0 and 1 at the ends, not rounded near
    high = 1.0 if successes == n else (centre + spread) / scale
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` of ``n`` samples correct::

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

    1 when fewer than ``k`` samples are wrong (every draw of ``k`` holds a correct one).

    Raises:
        ValueError: not ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def bootstrap_interval(values: Sequence[float], seed: int = 0, resamples: int = 2000,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values``: ``resamples`` resamples with replacement
    (seeded), the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of their means. ``(0, 1)`` when empty."""
    if not values:
        return 0.0, 1.0
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    low = means[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    high = means[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return low, high
