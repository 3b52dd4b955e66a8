"""The statistics of a report: a mean with its Student-t confidence interval over seeds, the
paired t-test of two strategies matched by seed, and the Pareto front of accuracy against cost.

Seeds are the unit of replication: each seed is one independent training run, so an interval
over seeds says how far the mean accuracy could move with other seeds. With one seed there is
no spread to estimate, so no interval (``half`` is None), never a zero-width one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
PAIRED_TEST = "paired t-test"


def t_quantile(level: float, df: int) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def t_two_sided_p(t: float, df: int) -> float:
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df))


def _sd(xs: Sequence[float], mean: float, scale: float) -> float:
    """The sample standard deviation (ddof = 1); 0 when it is rounding noise: values that are
    equal but for the last bits of a float (accuracies k / N subtracted, say) are equal."""
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return 0.0 if sd <= 1e-12 * max(scale, 1e-300) else sd


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with the half-width of its ``level`` Student-t interval (None
    when ``n`` < 2: no interval can be given)."""

    n: int
    mean: float
    sd: float | None  # the sample standard deviation (ddof = 1); None with one value
    half: float | None
    level: float = LEVEL

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "half": self.half,
                "low": self.low, "high": self.high, "level": self.level}


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of the finite ``values`` and its Student-t ``level`` interval (df = n - 1)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, None, None, level)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(n, mean, None, None, level)
    sd = _sd(xs, mean, max(abs(x) for x in xs))
    return Interval(n, mean, sd, t_quantile(level, n - 1) * sd / math.sqrt(n), level)


@dataclass(frozen=True)
class Paired:
    """The paired t-test of a - b over the seeds both have (H0: mean difference 0, two-sided).

    ``reason`` says in words why there is no test (fewer than two pairs, or differences all
    equal, which leave the t statistic undefined); then ``t`` and ``p`` are NaN."""

    n: int
    mean_diff: float
    sd: float | None
    half: float | None  # of the ``level`` interval of the mean difference
    t: float
    p: float
    seeds: tuple
    reason: str | None = None
    level: float = LEVEL
    test: str = PAIRED_TEST

    @property
    def df(self) -> int:
        return self.n - 1

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean_diff - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean_diff + self.half

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        return {"test": self.test, "n": self.n, "df": self.df if self.n > 1 else None,
                "mean_diff": self.mean_diff, "sd": self.sd, "half": self.half, "low": self.low,
                "high": self.high, "t": self.t, "p": self.p, "seeds": list(self.seeds),
                "reason": self.reason, "level": self.level}


def paired_t(a: Mapping, b: Mapping, level: float = LEVEL) -> Paired:
    """Paired t-test of ``a`` against ``b``, both {seed: value}, over the seeds they share
    (values that are not finite are left out)."""
    seeds = tuple(sorted(s for s in a.keys() & b.keys()
                         if math.isfinite(float(a[s])) and math.isfinite(float(b[s]))))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    nan = math.nan
    if n == 0:
        return Paired(0, nan, None, None, nan, nan, seeds, "no seed in common, so nothing to pair",
                      level)
    mean = math.fsum(d) / n
    if n < 2:
        return Paired(n, mean, None, None, nan, nan, seeds,
                      "one pair only, too few for a paired t-test", level)
    scale = max(max(abs(float(a[s])), abs(float(b[s]))) for s in seeds)
    sd = _sd(d, mean, scale)
    if sd == 0:
        return Paired(n, mean, 0.0, None, nan, nan, seeds,
                      f"the {n} paired differences are all equal, so the t statistic is "
                      "undefined", level)
    se = sd / math.sqrt(n)
    t = mean / se
    return Paired(n, mean, sd, t_quantile(level, n - 1) * se, t, t_two_sided_p(t, n - 1),
                  seeds, None, level)


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[bool]:
    """Which points no other point dominates, for lower ``cost`` and higher ``value``.

    A point is dominated when another costs no more, is worth no less, and is strictly better
    in one of the two. Points with a missing (non-finite) coordinate are never on the front."""
    pts = [(float(c), float(v)) for c, v in zip(cost, value, strict=True)]
    ok = [math.isfinite(c) and math.isfinite(v) for c, v in pts]
    out = []
    for i, (c, v) in enumerate(pts):
        if not ok[i]:
            out.append(False)
            continue
        dominated = any(ok[j] and c2 <= c and v2 >= v and (c2 < c or v2 > v)
                        for j, (c2, v2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out
