"""Estimators for non-deterministic agents: each case runs n times, c of them pass.

- pass@k: the chance at least one of k attempts passes, 1 - C(n-c, k) / C(n, k)
  (the unbiased estimator of Chen et al. 2021, HumanEval).
- pass^k: the chance all k attempts pass, C(c, k) / C(n, k) (tau-bench, Yao et al. 2024):
  the reliability number; it falls fast when an agent is only sometimes right.
- Wilson lower bound: a conservative pass rate for small samples (95 % by default). It treats
  every attempt as independent, which the n attempts of one case are not (a hard case fails
  them all), so it is too narrow for repeated runs; prefer the bootstrap.
- Bootstrap interval over cases: resample whole cases with replacement (attempts of a case
  stay together), recompute the mean of a per-case statistic; the percentile interval holds
  for pass@1, pass@k and pass^k alike.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _check(n: int, c: int, k: int) -> None:
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of attempts n={n}; run each case at least k times")


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k attempts passes) given c passes out of n."""
    _check(n, c, k)
    if n - c < k:
        return 1.0
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total  # one division: exact where the ratio is


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: P(all k attempts pass) given c passes out of n (tau-bench estimator)."""
    _check(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def wilson_lower_bound(successes: int, n: int, z: float = 1.959963984540054) -> float:
    """Lower end of the Wilson score interval for a proportion (0 when n == 0)."""
    if n == 0:
        return 0.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be between 0 and n={n}")
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def bootstrap_interval(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-case `values` (one value per case).

    The seed is fixed so the same report always gives the same interval (a CI gate must not
    flip on a re-run). With one case the interval is that value: there is nothing to resample.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be at least 1 (2000 is usual)")
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    pool = list(values)
    means = sorted(math.fsum(rng.choices(pool, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[max(0, math.floor(tail * resamples))]
    hi = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return (lo, hi)
