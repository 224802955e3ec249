"""Comparisons that know signal from noise: paired per task, with a 95% interval and a verdict.

A probe scores the candidate and the baseline on the same tasks, so each task gives a pair. The
difference of a metric is compared per task (paired), never as two independent means:

- **Pass/fail metrics** (every per-task value 0 or 1: pass@1 with one greedy sample, a multiple-choice
  answer): only the tasks whose outcome changed carry information — `gained` (candidate passes, baseline
  fails) and `lost`. The verdict is the exact two-sided sign test on those discordant pairs (exact
  McNemar): with `m = gained + lost`, `gained ~ Binomial(m, 1/2)` when nothing changed. The interval is
  the exact (Clopper-Pearson) interval of `theta = gained / m`, mapped onto the difference of pass rates
  as `(m / N) (2 theta - 1)` — conditional on the number of tasks that changed, and consistent with the
  test: it excludes 0 exactly when the test rejects at the same level. Exact, so it holds for the 10 or 30
  tasks a probe has, where a normal approximation does not.
- **Graded metrics** (rewards in [0, 1], pass@k from several samples): a paired bootstrap of the mean
  per-task difference (10,000 resamples of the tasks, a fixed seed, percentile interval). With fewer
  than `MIN_BOOTSTRAP` tasks a bootstrap interval is too narrow to trust: the verdict stays inconclusive.

The verdict: `improved` when the whole interval is above 0, `regressed` when below, else `inconclusive`.
Across the jobs of a sweep (seeds), a metric is summarised by its mean and a Student-t interval.
Pure Python (numpy only for the bootstrap, imported when one runs): no scipy needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
MIN_BOOTSTRAP = 10
MIN_DISCORDANT = 6  # the fewest changed tasks, all one way, that the exact test can call at 95% (2 * 0.5**6 < 0.05)

Verdict = Literal["improved", "regressed", "inconclusive"]


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline on one metric over `n` paired tasks."""

    n: int
    baseline: float
    candidate: float
    delta: float
    low: float
    high: float
    verdict: Verdict
    method: Literal["exact", "bootstrap"]
    confidence: float = CONFIDENCE
    p_value: float | None = None  # the exact test's (pass/fail metrics)
    gained: int | None = None  # pass/fail: tasks the candidate passes and the baseline fails
    lost: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def verdict(low: float, high: float) -> Verdict:
    return "improved" if low > 0 else "regressed" if high < 0 else "inconclusive"


def compare(baseline: Sequence[float], candidate: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """Paired comparison of per-task values (the same tasks, in the same order).

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError(f"a paired comparison needs the same tasks on both sides ({len(baseline)} vs {len(candidate)})")
    n = len(baseline)
    b_mean, c_mean = sum(baseline) / n, sum(candidate) / n
    if all(v in (0, 1) for v in (*baseline, *candidate)):
        gained = sum(1 for b, c in zip(baseline, candidate, strict=True) if c and not b)
        lost = sum(1 for b, c in zip(baseline, candidate, strict=True) if b and not c)
        low, high = mcnemar_interval(gained, lost, n, confidence)
        p = sign_test(gained, gained + lost)
        found: Verdict = "inconclusive" if p >= 1 - confidence else "improved" if gained > lost else "regressed"
        return Comparison(n, b_mean, c_mean, c_mean - b_mean, low, high, found, "exact", confidence, p, gained, lost)
    diffs = [c - b for b, c in zip(baseline, candidate, strict=True)]
    low, high = bootstrap_interval(diffs, confidence)
    graded = verdict(low, high) if n >= MIN_BOOTSTRAP else "inconclusive"
    return Comparison(n, b_mean, c_mean, c_mean - b_mean, low, high, graded, "bootstrap", confidence)


# ------------------------------------------------------------------ pass/fail: exact


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly term by term."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def sign_test(k: int, m: int) -> float:
    """Two-sided exact binomial test of k successes in m trials against 1/2 (the exact McNemar test)."""
    if m == 0:
        return 1.0
    tail = binom_cdf(min(k, m - k), m, 0.5)
    return min(1.0, 2 * tail)


def clopper_pearson(k: int, m: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion k / m, by bisection on the exact CDF."""
    if m == 0:
        return 0.0, 1.0
    alpha = 1 - confidence

    def solve(f: Any) -> float:  # f is increasing in p on [0, 1]; the p where it crosses 0
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
            if hi - lo < 1e-13:
                break
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: (1 - binom_cdf(k - 1, m, p)) - alpha / 2)  # P(X >= k; p) = alpha/2
    high = 1.0 if k == m else solve(lambda p: alpha / 2 - binom_cdf(k, m, p))  # P(X <= k; p) = alpha/2
    return low, high


def mcnemar_interval(gained: int, lost: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The interval of the difference in pass rate over n paired tasks, from the exact interval of the share of
    changed tasks that were gained (conditional on how many changed)."""
    m = gained + lost
    if m == 0:
        return 0.0, 0.0
    low, high = clopper_pearson(gained, m, confidence)
    return m / n * (2 * low - 1), m / n * (2 * high - 1)


# ------------------------------------------------------------------ graded: paired bootstrap


def bootstrap_interval(
    diffs: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile interval of the mean of per-task differences, resampling tasks with replacement."""
    import numpy as np

    values = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ------------------------------------------------------------------ how many tasks a gate needs


def tasks_needed(effect: float, confidence: float = CONFIDENCE, power: float = 0.8, limit: int = 100_000) -> int | None:
    """The fewest paired pass/fail tasks with which the exact test detects a change of `effect` (a share of tasks,
    e.g. 0.1 = one task in ten) with the given power — in the most favourable case, where every changed task
    changes the same way (so `changed ~ Binomial(N, effect)` and the test needs MIN_DISCORDANT of them or more,
    see `_min_changed`). Churn in both directions needs more. None when `effect` is 0."""
    if effect <= 0:
        return None
    effect = min(effect, 1.0)
    n = 1
    while n <= limit:
        need = _min_changed(confidence)
        if n >= need and 1 - binom_cdf(need - 1, n, effect) >= power:
            return n
        n = n + 1 if n < 1000 else int(n * 1.01) + 1
    return None


def _min_changed(confidence: float) -> int:
    """The fewest changed tasks, all the same way, the exact two-sided test calls at this confidence."""
    m = 1
    while sign_test(m, m) >= 1 - confidence:
        m += 1
    return m


# ------------------------------------------------------------------ across jobs (seeds)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t with df degrees of freedom (bisection on its CDF)."""
    lo, hi = -1e6, 1e6
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def t_cdf(t: float, df: int) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for i in range(1, 500):
        for numerator in (i * (b - i) * x / ((a + 2 * i - 1) * (a + 2 * i)), -(a + i) * (a + b + i) * x / ((a + 2 * i) * (a + 2 * i + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * f / a


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation and Student-t interval of one metric across jobs (low/high None for one job)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": round(mean, 6), "std": None, "low": None, "high": None, "confidence": confidence}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * std / math.sqrt(n)
    return {
        "n": n,
        "mean": round(mean, 6),
        "std": round(std, 6),
        "low": round(mean - half, 6),
        "high": round(mean + half, 6),
        "confidence": confidence,
    }
