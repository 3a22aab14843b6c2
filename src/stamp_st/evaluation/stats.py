"""Confidence intervals for evaluation metrics: a t-interval over folds (few, independent held-out
slides) and a percentile bootstrap (many spots or genes). Every reported number carries one, because
the field's published numbers rarely do and single-split means mislead."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Interval:
    """A metric summary: mean with a two-sided interval; low/high are NaN where undefined (n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    method: str  # "t" | "bootstrap" | "single"
    confidence: float = 0.95
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self, digits: int = 3) -> str:
        if not np.isfinite(self.mean):
            return NA_TEXT
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


# a metric with no finite value (every held-out slide/fold left it undefined: e.g. one class only, or
# too few spots): said, not left as a bare "n/a"
NA_TEXT = "n/a (undefined on every held-out slide/fold: one class or too few spots)"


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean over folds: mean ± t_{(1+c)/2, n-1} · s / sqrt(n). NaN values
    (a fold where the metric is undefined) are dropped and not counted."""
    from scipy import stats

    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "t", confidence, [])
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, "single", confidence, v.tolist())
    sem = float(v.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n, "t", confidence, v.tolist())


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.mean,
) -> Interval:
    """Percentile bootstrap of ``statistic`` over the values (resampled with replacement)."""
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "bootstrap", confidence, [])
    point = float(statistic(v))
    if n < 2:
        return Interval(point, float("nan"), float("nan"), n, "single", confidence, v.tolist())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if statistic is np.mean:
        boots = v[idx].mean(axis=1)
    else:
        boots = np.array([statistic(v[i]) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return Interval(point, float(low), float(high), n, "bootstrap", confidence, v.tolist())


def summarise(values: Sequence[float], method: str = "t", confidence: float = 0.95, seed: int = 0) -> dict:
    """JSON-ready summary of per-fold (or per-unit) values; ``method`` is ``t`` or ``bootstrap``."""
    if method == "t":
        return t_interval(values, confidence).to_dict()
    if method == "bootstrap":
        return bootstrap_interval(values, confidence, seed=seed).to_dict()
    raise ValueError(f"unknown interval method {method!r} (use 't' or 'bootstrap')")
