"""Gains over a baseline, measured as gains: for each held-out task, the difference between a source and
the baseline (e.g. Stamp_V and the unaligned backbone it started from) on the same held-out spots, with a
paired 95% interval from a bootstrap over spots within each held-out slide.

Each replicate resamples the test spots of every held-out slide (the same resample for both sources),
recomputes the metric for both on it, and averages the per-slide differences over slides; the interval
is the 2.5-97.5% percentile of the replicates. Pairing removes the slide-to-slide variation that both
sources share, which a comparison of two separate intervals over 3-4 slides cannot."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_BOOT = 1000

def _pearson_mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from .expression import per_gene_pearson

    r = per_gene_pearson(y_true, y_pred)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _ari(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's ``adjusted_rand_score`` (pair-confusion form, same special cases) without its input checks,
    which cost 30x the arithmetic in a 1,000-replicate bootstrap over a few hundred spots."""
    _, a = np.unique(y_true, return_inverse=True)
    _, b = np.unique(y_pred, return_inverse=True)
    n = a.size
    nb = int(b.max()) + 1 if n else 1
    cont = np.bincount(a * nb + b, minlength=(int(a.max()) + 1 if n else 1) * nb).astype(np.int64)
    sum_sq = int((cont * cont).sum())
    rows = np.bincount(a).astype(np.int64)
    cols = np.bincount(b).astype(np.int64)
    tp = sum_sq - n
    fp = int((cols * cols).sum()) - sum_sq
    fn = int((rows * rows).sum()) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


# the per-slide statistics a task's ``Gain`` may name (``evaluation.registry``); a task may also give its own
STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson_mean, "balanced_accuracy": _balanced_accuracy, "ari": _ari}


def statistic_fn(statistic: str | Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    """A ``Gain.statistic``: the function, a name in ``STATISTICS``, or ``"module:function"`` under
    ``stamp_st.evaluation`` (a new task's own statistic, imported when gains are computed)."""
    from .registry import resolve

    return resolve(statistic) if callable(statistic) or ":" in statistic else STATISTICS[statistic]


def paired_bootstrap_gain(per_slide: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                          metric: str | Callable[[np.ndarray, np.ndarray], float],
                          n_boot: int = N_BOOT, seed: int = 0, confidence: float = 0.95) -> dict:
    """``per_slide``: (truth, source prediction, baseline prediction) row-aligned arrays of each held-out
    slide; ``metric``: a statistic (``statistic_fn``; pearson: rows are spots, columns genes; balanced_accuracy,
    ari: 1-d labels; or a function (truth, prediction) -> float). Returns the mean over slides of source -
    baseline, its paired percentile interval, and per-slide gains."""
    fn = statistic_fn(metric)
    per = [(t, a, b) for t, a, b in per_slide if len(t) >= 2]
    if not per:
        return {"gain": float("nan"), "low": float("nan"), "high": float("nan"), "n_slides": 0,
                "per_slide": [], "n_boot": 0}
    point = [fn(t, a) - fn(t, b) for t, a, b in per]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for i in range(n_boot):
        diffs = []
        for t, a, b in per:
            idx = rng.integers(0, len(t), len(t))
            diffs.append(fn(t[idx], a[idx]) - fn(t[idx], b[idx]))
        reps[i] = np.nanmean(diffs)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(reps, [alpha, 1 - alpha])
    return {"gain": float(np.nanmean(point)), "low": float(low), "high": float(high), "n_slides": len(per),
            "per_slide": [float(p) for p in point], "n_boot": n_boot, "confidence": confidence}


def _present(pred: np.ndarray) -> np.ndarray:
    """Where a per-spot prediction exists: not "" (labels), not negative (cluster ids), not NaN."""
    if pred.dtype.kind in "OUS":
        return pred.astype(str) != ""
    return pred >= 0 if pred.dtype.kind in "iu" else np.isfinite(pred)


def _paired_slides(a, b, labels: np.ndarray | None, folds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(truth, source, baseline) of each held-out slide from two sources' predictions of one kind: per-spot
    arrays against the spot labels on the held-out spots both predicted, or per-fold records (``fold``,
    ``true``, ``pred``) paired by fold."""
    if isinstance(a, np.ndarray):
        if labels is None:
            return []
        both = _present(a) & _present(b)
        if a.dtype.kind in "OUS":  # labels compare as strings
            a, b = a.astype(str), b.astype(str)
        return [(labels[te].astype(str), a[te], b[te]) for fold in folds for te in [fold.test_idx[both[fold.test_idx]]]]
    rows_b = {f["fold"]: f for f in b}
    return [(np.asarray(f["true"]), np.asarray(f["pred"]), np.asarray(rows_b[f["fold"]]["pred"]))
            for f in a if f["fold"] in rows_b]


def task_gains(results: dict, predictions: dict, labels: np.ndarray | None, folds, baseline: str,
               sources: list[str] | None = None, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """One row per (task, metric of the task's ``gains``, source != baseline) that both were evaluated on: the
    paired gain. ``predictions`` is the per-task prediction store of ``evaluate_sources``; ``folds`` its
    held-out folds."""
    from .registry import EVAL_TASKS

    rows = []
    names = sources or [s for t in results["tasks"].values() for s in t]
    names = [s for s in dict.fromkeys(names) if s != baseline]
    for task, per_task in predictions.items():
        entry = EVAL_TASKS.get(task)
        if entry is None or per_task.get(baseline) is None:
            continue
        for gain in entry.gains:
            for src in names:
                if per_task.get(src) is None:
                    continue
                a, b = per_task[src], per_task[baseline]
                if gain.predictions:
                    a, b = a.get(gain.predictions), b.get(gain.predictions)
                if a is None or b is None:
                    continue
                per_slide = _paired_slides(a, b, labels, folds)
                if not per_slide:
                    continue
                g = paired_bootstrap_gain(per_slide, gain.statistic, n_boot=n_boot, seed=seed)
                rows.append({"task": task, "metric": gain.metric, "source": src, "baseline": baseline, **g,
                             "method": "paired bootstrap over spots within held-out slides"})
    return rows


def format_gain(row: dict, digits: int = 3) -> str:
    if not np.isfinite(row.get("gain", float("nan"))):
        return "n/a"
    return f"{row['gain']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]"
