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

    def format(self, metric: str = "", digits: int = 3) -> str:
        """'mean [low, high]', clipped to ``metric``'s range (``interval_text``)."""
        return interval_text({"metric": metric, "mean": self.mean, "low": self.low, "high": self.high}, digits)


# The range a metric can take, by a part of its name (first match wins). A t-interval over 3-4 folds can
# reach past it (recall below 0, F1 above 1), which the metric itself never does: every printed or drawn
# interval is clipped here, in one place (``clip_interval``), for the console, the HTML and the charts.
METRIC_RANGES = (("mse", (0.0, np.inf)), ("pearson", (-1.0, 1.0)), ("_ari", (-0.5, 1.0)), ("nmi", (0.0, 1.0)),
                 ("recall", (0.0, 1.0)), ("r@", (0.0, 1.0)), ("accuracy", (0.0, 1.0)), ("f1", (0.0, 1.0)),
                 ("auc", (0.0, 1.0)), ("chance", (0.0, 1.0)))


def metric_range(metric: str) -> tuple[float, float]:
    """(lowest, highest) value of a metric by its name; (-inf, inf) for a name not listed. ARI's floor is -0.5
    (Chacón & Rastrojo 2023)."""
    name = metric.lower()
    return next((r for key, r in METRIC_RANGES if key in name), (-np.inf, np.inf))


def clip_interval(metric: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = metric_range(metric)
    return float(np.clip(low, lo, hi)), float(np.clip(high, lo, hi))


def interval_text(row: dict, digits: int = 3) -> str:
    """'mean [low, high]' of a result row (metric, mean, low, high), the interval clipped to the metric's range."""
    mean = row.get("mean", np.nan)
    if mean is None or not np.isfinite(mean):
        return NA_TEXT
    low, high = row.get("low"), row.get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    lo, hi = clip_interval(row.get("metric", ""), low, high)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


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
