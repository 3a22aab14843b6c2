"""Gains over a baseline, measured as gains: for each held-out task, the difference between a source and
the baseline (e.g. Stamp_V and the unaligned backbone it started from) on the same held-out spots, with a
paired 95% interval from a bootstrap over spots within each held-out slide.

Each replicate resamples the test spots of every held-out slide (the same resample for both sources),
recomputes the metric for both on it, and averages the per-slide differences over slides; the interval
is the 2.5-97.5% percentile of the replicates. Pairing removes the slide-to-slide variation that both
sources share, which a comparison of two separate intervals over 3-4 slides cannot.

The built-in statistics are computed for a block of replicates at once: a resample is the number of times
each spot was drawn, so a metric on it is a weighted metric, and the weighted sums of all replicates are one
matrix product (``WEIGHTED``). The resamples are the ones a replicate-by-replicate loop draws, so the
interval is that loop's (``benchmarks/bench_bootstrap.py`` checks it and times both)."""

from __future__ import annotations

import warnings
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


def _pearson_mean_weighted(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``_pearson_mean`` of each resample, ``w`` [replicates, spots] = how often each spot was drawn. Sums
    are taken about the full sample's mean (no cancellation); a gene constant in a resample is NaN, as in
    ``per_gene_pearson``."""
    yt = y_true - y_true.mean(axis=0)
    yp = y_pred - y_pred.mean(axis=0)
    n = w.sum(axis=1, keepdims=True)
    st, sp = w @ yt, w @ yp
    tt, pp = w @ (yt * yt), w @ (yp * yp)
    stt = tt - st * st / n
    spp = pp - sp * sp / n
    stp = w @ (yt * yp) - st * sp / n
    constant = (stt <= 1e-12 * tt) | (spp <= 1e-12 * pp)  # zero up to rounding
    with np.errstate(invalid="ignore", divide="ignore"):
        r = stp / np.sqrt(stt * spp)
    r[constant | ~np.isfinite(r)] = np.nan
    return _nanmean_rows(r)


def _balanced_accuracy_weighted(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``_balanced_accuracy`` of each resample (classes drawn in it only: 0 / 0 is NaN)."""
    classes, cls = np.unique(y_true, return_inverse=True)
    onehot = np.zeros((len(y_true), len(classes)))
    onehot[np.arange(len(y_true)), cls] = 1.0
    drawn = w @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (w @ (onehot * (y_pred == y_true)[:, None])) / drawn
    return _nanmean_rows(recall)


def _ari_weighted(y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``_ari`` of each resample: its contingency table is the drawn counts of each label pair (exact in
    float64 below 2**53 spots). The spot -> pair indicator is sparse: many clusters on a large slide stay small."""
    import scipy.sparse as sp

    _, a = np.unique(y_true, return_inverse=True)
    _, b = np.unique(y_pred, return_inverse=True)
    nb = int(b.max()) + 1
    pair = sp.csr_matrix((np.ones(len(a)), (a * nb + b, np.arange(len(a)))), shape=((int(a.max()) + 1) * nb, len(a)))
    cont = np.asarray(pair @ w.T).T.reshape(len(w), -1, nb)
    n = w.sum(axis=1)
    sum_sq = (cont * cont).sum(axis=(1, 2))
    rows, cols = cont.sum(axis=2), cont.sum(axis=1)
    tp = sum_sq - n
    fp = (cols * cols).sum(axis=1) - sum_sq
    fn = (rows * rows).sum(axis=1) - sum_sq
    tn = n * n - fp - fn - sum_sq
    with np.errstate(invalid="ignore", divide="ignore"):
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return np.where((fn == 0) & (fp == 0), 1.0, ari)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over non-NaN entries; NaN, silently, for a row without any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=1)


# the per-slide statistics a task's ``Gain`` may name (``evaluation.registry``); a task may also give its own
STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson_mean, "balanced_accuracy": _balanced_accuracy, "ari": _ari}
# the same statistics on many resamples at once: (truth, prediction, draws [replicates, spots]) -> [replicates]
WEIGHTED: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "pearson": _pearson_mean_weighted, "balanced_accuracy": _balanced_accuracy_weighted, "ari": _ari_weighted}
BLOCK_CELLS = 4_000_000  # replicates x spots of draw counts held at once (32 MB)


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
    weighted = WEIGHTED.get(metric) if isinstance(metric, str) else None
    reps = np.empty(n_boot)
    if weighted is None:  # a task's own statistic: one resample at a time
        for i in range(n_boot):
            diffs = []
            for t, a, b in per:
                idx = rng.integers(0, len(t), len(t))
                diffs.append(fn(t[idx], a[idx]) - fn(t[idx], b[idx]))
            reps[i] = np.nanmean(diffs)
    else:
        block = max(1, min(n_boot, BLOCK_CELLS // sum(len(t) for t, _, _ in per)))
        for start in range(0, n_boot, block):
            draws = [np.empty((min(block, n_boot - start), len(t))) for t, _, _ in per]
            for i in range(len(draws[0])):  # the loop's order of draws: replicate by replicate, slide by slide
                for w, (t, _, _) in zip(draws, per):
                    w[i] = np.bincount(rng.integers(0, len(t), len(t)), minlength=len(t))
            diffs = np.stack([weighted(t, a, w) - weighted(t, b, w) for w, (t, a, b) in zip(draws, per)], axis=1)
            reps[start:start + len(diffs)] = _nanmean_rows(diffs)
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
