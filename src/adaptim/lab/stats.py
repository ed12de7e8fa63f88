"""The statistics behind the lab's conclusions, as pure NumPy/SciPy functions on numbers.

- :func:`paired_difference`: the mean per-seed difference of two optimizers
  with its Student-t 95% confidence interval and two-sided p-value (every
  optimizer sees the same data for a seed, so pairing by seed removes the
  problem's seed-to-seed variation).
- :func:`equivalence_p`: the two one-sided tests (TOST, Schuirmann 1987) that
  the mean difference lies inside ``±margin``.
- :func:`seeds_to_separate`: how many seeds a paired t-test needs to separate
  two optimizers with 80% power, at the observed difference and paired SD.
- :func:`holm`: Holm's (1979) step-down adjustment when several "better
  than" claims are made at once.
- :func:`sequential_level`: the per-look level that keeps the chance of a
  false separation at ``alpha`` over all the looks of adaptive seeding (a
  Pocock-style constant boundary, calibrated by simulation).
- :func:`stratified_bootstrap_ci` and :func:`probability_of_improvement`:
  Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice":
  runs are resampled with replacement within each problem (stratum), and
  P(X > Y) is the share of run pairs in which X beats Y (ties count one
  half), averaged over problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import stats

ALPHA = 0.05
#: Power asked of :func:`seeds_to_separate`.
POWER = 0.8
#: Bootstrap resamples; with the fixed generator seed the intervals are reproducible.
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 2021

Array = NDArray[np.float64]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``x[i] - y[i]`` over ``n`` pairs, with its 95% CI and two-sided p-value.

    With fewer than two pairs there is no interval and no test (``None``).
    """

    n: int
    mean: float
    sd: float
    low: float | None
    high: float | None
    p_value: float | None


def paired_difference(
    x: Sequence[float], y: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Student's t on the per-pair differences ``x - y``."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        raise ValueError("paired_difference needs at least one pair")
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, 0.0, None, None, None)
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # every pair differs by the same amount: no noise to test against
        return PairedDifference(n, mean, 0.0, mean, mean, 1.0 if mean == 0.0 else 0.0)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedDifference(n, mean, sd, mean - half, mean + half, p)


def equivalence_p(difference: PairedDifference, margin: float) -> float | None:
    """TOST p-value for ``-margin < mean difference < margin`` (small: equivalent).

    The larger of the two one-sided t-tests' p-values; ``p <= alpha`` is the
    same as the ``1 - 2·alpha`` confidence interval lying inside the margin.
    """
    n, mean, sd = difference.n, difference.mean, difference.sd
    if n < 2 or margin <= 0:
        return None
    if sd == 0.0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    above_lower = float(stats.t.sf((mean + margin) / se, n - 1))
    below_upper = float(stats.t.cdf((mean - margin) / se, n - 1))
    return max(above_lower, below_upper)


def seeds_to_separate(
    mean: float, sd: float, alpha: float = ALPHA, power: float = POWER, limit: int = 1000
) -> int | None:
    """Fewest seeds for a two-sided paired t-test at ``alpha`` to detect ``mean`` with ``power``.

    Uses the noncentral t distribution with the observed paired SD as the
    truth. ``None`` when the observed difference is zero or more than
    ``limit`` seeds would be needed.
    """
    if mean == 0.0 or not math.isfinite(mean) or not math.isfinite(sd):
        return None
    if sd == 0.0:
        return 2
    n = np.arange(2, limit + 1, dtype=np.float64)
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(mean) / sd * np.sqrt(n)
    achieved = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
    enough = np.flatnonzero(achieved >= power)
    return int(n[enough[0]]) if enough.size else None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Compare each with ``alpha``: the family-wise error of all the claims
    whose adjusted p-value is at most ``alpha`` stays at most ``alpha``.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@lru_cache(maxsize=64)
def sequential_level(
    first: int, last: int, alpha: float = ALPHA, draws: int = 40_000, seed: int = 11
) -> float:
    """Nominal two-sided level per look when a paired t-test is repeated after every added seed.

    Adaptive seeding looks at the data with ``first``, ``first + 1``, ...,
    ``last`` seeds and stops once the leader is separated; testing each look
    at ``alpha`` would raise the chance of a false separation well above
    ``alpha`` (optional stopping). This finds the constant per-look level
    (Pocock 1977) at which the chance of *any* false separation over all the
    looks is ``alpha``, by simulating paired differences under no true
    difference. With a single look it is ``alpha`` itself.
    """
    first = max(first, 2)
    if last <= first:
        return alpha
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((draws, last))
    n = np.arange(1, last + 1, dtype=np.float64)
    total = np.cumsum(d, axis=1)
    squares = np.cumsum(d * d, axis=1)
    mean = total / n
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (squares - n * mean * mean) / (n - 1)
        t = mean / np.sqrt(variance / n)
    looks = np.arange(first, last + 1)
    p = 2 * stats.t.sf(np.abs(t[:, looks - 1]), looks - 1)
    smallest = p.min(axis=1)
    return float(np.quantile(smallest, alpha))


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float] | Array],
    statistic: Callable[[list[Array]], float],
    confidence: float = 0.95,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` with runs resampled within each stratum (problem)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, dtype=np.float64) for s in strata]
    values = np.empty(reps)
    for r in range(reps):
        values[r] = statistic([a[rng.integers(0, a.size, a.size)] for a in arrays])
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _improvement(x: Array, y: Array) -> Array:
    """P(a run of x beats a run of y) over all pairs, ties one half (higher is better).

    The last axis holds the runs; leading axes (bootstrap resamples) broadcast.
    """
    diff = x[..., :, None] - y[..., None, :]
    wins: Array = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))
    return wins


@dataclass(frozen=True)
class Improvement:
    probability: float
    low: float
    high: float


def probability_of_improvement(
    x: Sequence[Sequence[float]],
    y: Sequence[Sequence[float]],
    confidence: float = 0.95,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
) -> Improvement:
    """P(X > Y) averaged over problems, with its stratified-bootstrap interval.

    ``x[m]`` and ``y[m]`` are the runs' scores (higher is better: negate a
    loss) of the two optimizers on problem ``m``; the runs need not be paired.
    Each resample draws, within every problem, the runs of X and of Y with
    replacement (the strata are the problems), as ``rliable`` does.
    """
    if len(x) != len(y) or not x or any(len(s) == 0 for s in [*x, *y]):
        raise ValueError("probability_of_improvement needs runs of both on every problem")
    rng = np.random.default_rng(seed)
    point = 0.0
    resampled = np.zeros(reps)
    for xs, ys in zip(x, y, strict=True):
        a, b = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        point += float(_improvement(a, b))
        resampled += _improvement(
            a[rng.integers(0, a.size, (reps, a.size))], b[rng.integers(0, b.size, (reps, b.size))]
        )
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled / len(x), [tail, 1 - tail])
    return Improvement(point / len(x), float(low), float(high))
