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
    shared = a.keys() & b.keys()
    seeds = tuple(sorted(s for s in shared
                         if math.isfinite(float(a[s])) and math.isfinite(float(b[s]))))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    nan = math.nan
    if n == 0:
        why = ("no seed in common, so nothing to pair" if not shared else
               "not recorded for a seed both ran (e.g. no linear probe), so nothing to pair")
        return Paired(0, nan, None, None, nan, nan, seeds, why, level)
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


# --------------------------------------------------------------------------- test items
# Seeds are not the only source of noise: the test split is a sample of items too. With 360 test
# items (digits) one item is 0.28 points of accuracy, so a lead of two items is no evidence,
# whatever the seeds say. The functions below take each run's per-item correctness (which test
# items it classified right, in the split's order) so that intervals and tests see both sources.

def binomial_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) ``level`` interval of a proportion k / n."""
    from scipy import stats

    if n <= 0:
        return math.nan, math.nan
    a = 1 - level
    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two classifiers on the same items: of the ``discordant`` items
    that exactly one of them got right, ``a_only`` were a's; H0: either is equally likely."""

    a_only: int
    b_only: int
    n: int  # items compared
    p: float

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact two-sided McNemar test (a binomial test on the discordant items) of two per-item
    correctness vectors of one split."""
    if len(a) != len(b):
        raise ValueError(f"per-item vectors differ in length: {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    m = a_only + b_only
    if m == 0:
        return McNemar(0, 0, len(a), 1.0)
    # integers to the end: C(m, i) and 2^m overflow a float from m = 1,030 discordant items (a
    # 10,000-item test split gets there); int / int rounds once, and a tiny tail becomes 0.0
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2 ** m
    return McNemar(a_only, b_only, len(a), min(1.0, 2.0 * tail))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order (NaN stays NaN and is not
    counted among the comparisons)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


BOOTSTRAP = 2000  # resamples of the hierarchical bootstrap (50 in each 2.5% tail)


def _as_matrix(per_seed: Mapping[int, Sequence[bool]], seeds: Sequence[int]):
    import numpy as np

    rows = [np.asarray(per_seed[s], dtype=np.float64).reshape(-1) for s in seeds]
    if len({len(r) for r in rows}) > 1:
        raise ValueError("the runs' per-item vectors differ in length (not the same split?)")
    return np.stack(rows)  # (S, N)


def _resampled_means(m, rng, reps: int, chunk: int = 256):
    """Means of ``m`` (S, N) over ``reps`` hierarchical resamples: seeds with replacement
    (when there are several), then items with replacement (the same items for every seed, so
    that a paired difference stays paired). Vectorised in chunks of resamples: the item counts
    of a chunk are counted from one (chunk, N) draw of indices, the seed counts likewise."""
    import numpy as np

    s, n = m.shape
    out = np.empty(reps)
    for lo in range(0, reps, chunk):  # NOTE: a loop over chunks of resamples only
        r = min(chunk, reps - lo)
        rows = np.arange(r)[:, None]
        items = np.bincount((rng.integers(0, n, size=(r, n)) + rows * n).ravel(),
                            minlength=r * n).reshape(r, n).astype(np.float64)  # (r, N)
        seeds = (np.bincount((rng.integers(0, s, size=(r, s)) + rows * s).ravel(),
                             minlength=r * s).reshape(r, s).astype(np.float64) if s > 1
                 else np.ones((r, 1)))  # (r, S)
        per_seed = items @ m.T  # (r, S) each seed's total over the resampled items
        out[lo:lo + r] = (seeds * per_seed).sum(1) / (s * n)
    return out


@dataclass(frozen=True)
class ItemInterval:
    """A mean accuracy over seeds and test items with a bootstrap interval that includes both
    sources of variance (with one seed: the test items alone; then the exact binomial
    interval is given too)."""

    seeds: int
    items: int
    mean: float
    low: float
    high: float
    se: float
    exact: tuple[float, float] | None = None
    level: float = LEVEL

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {"seeds": self.seeds, "items": self.items, "mean": self.mean, "low": self.low,
                "high": self.high, "se": self.se, "exact": list(self.exact or ()) or None,
                "level": self.level}


def item_interval(per_seed: Mapping[int, Sequence[bool]], level: float = LEVEL,
                  reps: int = BOOTSTRAP, seed: int = 0) -> ItemInterval:
    """The mean accuracy of one strategy's runs ({seed: per-item correctness}) with a
    hierarchical bootstrap ``level`` interval over seeds and items."""
    import numpy as np

    seeds = sorted(per_seed)
    m = _as_matrix(per_seed, seeds)
    mean = float(m.mean())
    boot = _resampled_means(m, np.random.default_rng(seed), reps)
    a = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(boot, [a, 1 - a]))
    exact = None
    if len(seeds) == 1:
        exact = binomial_ci(int(m.sum()), m.shape[1], level)
    return ItemInterval(len(seeds), m.shape[1], mean, low, high, float(boot.std(ddof=1)), exact,
                        level)


@dataclass(frozen=True)
class PairedItems:
    """a - b in accuracy over the seeds both have and the same test items: the mean difference,
    its hierarchical bootstrap interval and standard error, a two-sided p-value (the exact
    McNemar test with one seed; with several, the bootstrap's: twice the share of resampled
    differences on the far side of 0), and the test's name."""

    seeds: int
    items: int
    mean_diff: float
    low: float
    high: float
    se: float
    p: float
    test: str
    level: float = LEVEL

    def as_dict(self) -> dict:
        return {"seeds": self.seeds, "items": self.items, "mean_diff": self.mean_diff,
                "low": self.low, "high": self.high, "se": self.se, "p": self.p,
                "test": self.test, "level": self.level}


def paired_items(a: Mapping[int, Sequence[bool]], b: Mapping[int, Sequence[bool]],
                 level: float = LEVEL, reps: int = BOOTSTRAP, seed: int = 0) -> PairedItems:
    """Compare two strategies' per-item correctness, matched by seed and by item."""
    import numpy as np

    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise ValueError("no seed in common, so nothing to pair")
    d = _as_matrix(a, seeds) - _as_matrix(b, seeds)  # (S, N) in {-1, 0, 1}
    boot = _resampled_means(d, np.random.default_rng(seed), reps)
    q = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(boot, [q, 1 - q]))
    mean = float(d.mean())
    if len(seeds) == 1:
        p, test = mcnemar(a[seeds[0]], b[seeds[0]]).p, "exact McNemar"
    else:
        if not np.any(d):
            p = 1.0
        else:
            far = min(float((boot <= 0).mean()), float((boot >= 0).mean()))
            p = min(1.0, 2.0 * max(far, 1.0 / reps))
        test = "paired bootstrap over seeds and items"
    return PairedItems(len(seeds), d.shape[1], mean, low, high, float(boot.std(ddof=1)), p,
                       test, level)


def detectable(se: float, comparisons: int, level: float = LEVEL, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at the Holm family level would detect
    with probability ``power``, given the standard error ``se`` of the observed difference:
    (z_{1 - alpha / (2 m)} + z_power) se, with alpha = 1 - level and m the comparisons (the
    strictest step of Holm's procedure)."""
    from scipy import stats

    if not (se is not None and math.isfinite(se)):
        return math.nan
    m = max(1, comparisons)
    return (float(stats.norm.ppf(1 - (1 - level) / (2 * m))) + float(stats.norm.ppf(power))) * se


def pooled_se(n_items: int, accuracy: float, seeds: int = 1) -> float:
    """The standard error of a difference of two accuracies near ``accuracy`` on ``n_items``
    items when nothing pairs them (an upper bound for a paired comparison): the floor of what
    a comparison on this split can resolve."""
    if n_items <= 0:
        return math.nan
    p = min(max(accuracy, 1.0 / n_items), 1 - 1.0 / n_items)
    return math.sqrt(2 * p * (1 - p) / (n_items * max(1, seeds)))
