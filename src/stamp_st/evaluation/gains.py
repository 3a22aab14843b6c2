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

# (task, metric) -> how a per-slide metric is computed from (truth, prediction) rows of one held-out slide
METRIC_FNS: dict[tuple[str, str], str] = {
    ("expression", "ridge_pearson"): "pearson",
    ("expression", "ridge_cv_pearson"): "pearson",
    ("expression", "impute_pearson"): "pearson",
    ("probe", "balanced_accuracy"): "balanced_accuracy",
    ("cluster", "kmeans_ari"): "ari",
}


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


_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson_mean, "balanced_accuracy": _balanced_accuracy, "ari": _ari}


def paired_bootstrap_gain(per_slide: list[tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str,
                          n_boot: int = N_BOOT, seed: int = 0, confidence: float = 0.95) -> dict:
    """``per_slide``: (truth, source prediction, baseline prediction) row-aligned arrays of each held-out
    slide; ``metric``: pearson (rows are spots, columns genes), balanced_accuracy or ari (1-d labels).
    Returns the mean over slides of source - baseline, its paired percentile interval, and per-slide gains."""
    fn = _FNS[metric]
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


def _expression_rows(preds: dict, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {f["fold"]: (np.asarray(f["true"]), np.asarray(f["pred"])) for f in preds.get(kind, [])}


def task_gains(results: dict, predictions: dict, labels: np.ndarray | None, folds, baseline: str,
               sources: list[str] | None = None, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """One row per (task, metric, source != baseline) that both were evaluated on: the paired gain.

    ``predictions`` is the per-task prediction store of ``evaluate_sources``; ``folds`` its held-out folds."""
    rows = []
    names = sources or [s for t in results["tasks"].values() for s in t]
    names = [s for s in dict.fromkeys(names) if s != baseline]
    for (task, metric), kind in METRIC_FNS.items():
        per_task = predictions.get(task, {})
        if baseline not in per_task:
            continue
        for src in names:
            if src not in per_task:
                continue
            per_slide = []
            if task == "expression":
                key = {"ridge_pearson": "ridge", "ridge_cv_pearson": "ridge_cv"}.get(metric, "impute")
                a, b = _expression_rows(per_task[src], key), _expression_rows(per_task[baseline], key)
                per_slide = [(a[f][0], a[f][1], b[f][1]) for f in a if f in b]
            elif task == "probe" and labels is not None:
                pa, pb = np.asarray(per_task[src], dtype=object), np.asarray(per_task[baseline], dtype=object)
                for fold in folds:
                    te = fold.test_idx[(pa[fold.test_idx] != "") & (pb[fold.test_idx] != "")]
                    per_slide.append((labels[te].astype(str), pa[te].astype(str), pb[te].astype(str)))
            elif task == "cluster" and labels is not None:
                ca, cb = per_task[src].get("kmeans"), per_task[baseline].get("kmeans")
                if ca is None or cb is None:
                    continue
                for fold in folds:
                    te = fold.test_idx[(ca[fold.test_idx] >= 0) & (cb[fold.test_idx] >= 0)]
                    per_slide.append((labels[te].astype(str), ca[te], cb[te]))
            if not per_slide:
                continue
            g = paired_bootstrap_gain(per_slide, kind, n_boot=n_boot, seed=seed)
            rows.append({"task": task, "metric": metric, "source": src, "baseline": baseline, **g,
                         "method": "paired bootstrap over spots within held-out slides"})
    return rows


def format_gain(row: dict, digits: int = 3) -> str:
    if not np.isfinite(row.get("gain", float("nan"))):
        return "n/a"
    return f"{row['gain']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]"
