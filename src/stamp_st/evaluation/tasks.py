"""Run every evaluation task on every embedding source, side by side, on held-out slides.

:func:`evaluate_sources` is the one entry point (the CLI and the demo call it): it aligns the sources on
their shared spots, builds the held-out-slide folds once, runs the asked tasks on each source and
returns a JSON-ready dict with one row per (task, metric, source) in ``table``."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..embedding_file import EmbeddingSet
from ..errors import StampInputError
from .registry import EVAL_TASKS, MERGE_METRICS
from .sources import align_sources, log1p_cp10k
from .splits import make_folds


def _resolve_labels(labels, first: EmbeddingSet, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, pd.Series):
        return labels.reindex(first.keys).fillna("").astype(str).to_numpy()
    if isinstance(labels, Mapping):
        return np.array([str(labels.get(k, "") or "") for k in first.keys])
    arr = np.asarray(labels, dtype=object)
    if len(arr) != n:
        raise StampInputError(f"labels have {len(arr)} entries for {n} aligned spots",
                              hint="pass labels as a pandas Series indexed by '<slide_id>/<spot_id>'")
    return np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in arr])


def evaluate_sources(
    sources: Mapping[str, EmbeddingSet],
    labels: pd.Series | Mapping | Sequence | None = None,
    tasks: Sequence[str] | None = None,
    slide_labels: Mapping[str, object] | None = None,
    test_slides: Sequence[str] | None = None,
    baseline: str | None = None,
    impute_k: int = 50,
    seed: int = 0,
    artifacts: dict | None = None,
    progress=None,
) -> dict:
    """Evaluate each source on each task (``tasks``: names in ``registry.EVAL_TASKS``; None: its default
    tasks). ``labels``: a Series indexed by ``<slide_id>/<spot_id>`` (""
    = unlabelled), or an array in the spot order shared by all sources. ``slide_labels``: slide id ->
    class for the MIL task. ``test_slides``: a given split instead of leave-one-slide-out. When
    ``artifacts`` is a dict it is filled with arrays for figures (aligned sources, labels, expression,
    predictions)."""
    from .. import __version__

    if tasks is None:  # the registry's default tasks
        tasks = [n for n, t in EVAL_TASKS.items() if t.default]
    unknown = sorted(set(tasks) - set(EVAL_TASKS))
    if unknown:
        raise StampInputError(f"unknown tasks {unknown}", hint=f"choose from {', '.join(EVAL_TASKS)}")
    if not sources:
        raise StampInputError("no embedding sources to evaluate")
    if labels is not None and not isinstance(labels, pd.Series | Mapping):
        first = next(iter(sources.values()))
        if any(len(s) != len(first) or not np.array_equal(s.keys, first.keys) for s in sources.values()):
            raise StampInputError("labels given as an array but the sources' spots differ",
                                  hint="pass labels as a Series indexed by '<slide_id>/<spot_id>'")
    notes: list[str] = []
    aligned = align_sources(sources, notes)
    names = list(aligned)
    first = aligned[names[0]]
    n = len(first)
    slide_ids = first.slide_ids
    lab = _resolve_labels(labels, first, n)
    expr_src = next((s for s in aligned.values() if s.counts is not None and s.gene_names is not None), None)
    expr_log = log1p_cp10k(expr_src.counts) if expr_src is not None else None
    folds = make_folds(slide_ids, test_slides)
    say = progress or (lambda msg: None)

    results: dict = {
        "meta": {
            "stamp_st_version": __version__, "python": platform.python_version(), "seed": seed,
            "n_spots": int(n), "slides": list(dict.fromkeys(slide_ids.tolist())),
            "split": "given" if test_slides else "leave-one-slide-out",
            "test_slides": list(test_slides or []), "tasks": list(tasks), "baseline": baseline,
            "n_labelled": None if lab is None else int((lab != "").sum()),
            "n_genes_expression": None if expr_log is None else int(expr_log.shape[1]),
            "interval": "95% Student-t interval over held-out slides / folds",
            "notes": notes,
        },
        "sources": {k: {"modality": s.modality, "dim": int(s.emb.shape[1]), "has_gene_embedding":
                        s.gene_emb is not None, "path": s.source_path} for k, s in aligned.items()},
        "tasks": {t: {} for t in tasks},
    }
    preds: dict = {t: {} for t in tasks}

    def skip(task, name, why):
        results["tasks"][task][name] = {"skipped": why}

    ctx = TaskContext(lab=lab, slide_ids=slide_ids, expr_log=expr_log, expr_src=expr_src, seed=seed,
                       impute_k=impute_k, slide_labels=slide_labels)
    for name, s in aligned.items():
        for task in tasks:
            say(f"{task} / {name}")
            if s.fold_emb is not None:
                out = _task_foldwise(task, s, folds, ctx)
            else:
                out = _task_once(task, s, s.emb, s.gene_emb, folds, ctx)
            if isinstance(out, str):
                skip(task, name, out)
                continue
            results["tasks"][task][name], preds[task][name] = out
    if baseline is not None and baseline in aligned:
        from .gains import task_gains

        say("gains over the baseline (paired bootstrap)")
        results["gains"] = task_gains(results, preds, lab, folds, baseline, sources=names, seed=seed)

    results["table"] = metric_table(results)
    if artifacts is not None:
        artifacts.update({"sources": aligned, "labels": lab, "expr_log": expr_log,
                          "gene_names": None if expr_src is None else expr_src.gene_names,
                          "predictions": preds, "folds": folds})
    return results


@dataclass
class TaskContext:
    """What every task may read besides the embedding: labels, slide ids, expression, settings."""

    lab: np.ndarray | None
    slide_ids: np.ndarray
    expr_log: np.ndarray | None
    expr_src: EmbeddingSet | None
    seed: int
    impute_k: int
    slide_labels: Mapping | None


def _task_once(task: str, s: EmbeddingSet, emb: np.ndarray, gene_emb: np.ndarray | None, folds, ctx: TaskContext,
               spots: np.ndarray | None = None):
    """One task on one embedding: (result, predictions), or the reason it was skipped. ``spots`` restricts
    per-slide tasks (clustering, retrieval) to those rows (the held-out slide of a cross-validated model)."""
    if task not in EVAL_TASKS:
        raise StampInputError(f"unknown task {task!r}")
    sel = slice(None) if spots is None else spots
    out = EVAL_TASKS[task].load("runner")(s, emb, gene_emb, folds, ctx, sel)
    if not isinstance(out, str):
        _check_result(EVAL_TASKS[task], out)
    return out


def _task_foldwise(task: str, s: EmbeddingSet, folds, ctx: TaskContext):
    """A cross-validated source: each held-out slide is scored with the embedding of its own model (trained
    without it), training-side spots included; the per-fold results merge as the task's entry says."""
    entry = EVAL_TASKS[task]
    if entry.merge is None:
        return f"{entry.title.split(',')[0].lower()} needs one embedding for every slide (not a cross-validated source)"
    missing = [f.name for f in folds if f.name not in s.fold_emb]
    if missing:
        return f"no cross-validated model for held-out slide(s) {missing}"
    parts = []
    for f in folds:
        gene = s.fold_gene_emb.get(f.name) if s.fold_gene_emb else None
        per_slide = entry.per_slide
        out = _task_once(task, s, s.fold_emb[f.name], gene, None if per_slide else [f], ctx,
                         spots=f.test_idx if per_slide else None)
        if isinstance(out, str):
            return out
        parts.append((f, *out))
    results = [r for _, r, _ in parts]
    merged = {**results[0], "metrics": merge_metrics([r["metrics"] for r in results]),
              "per_fold": _join([r["per_fold"] for r in results]), "cross_validated": True}
    if entry.merge == MERGE_METRICS:
        return merged, None
    return merged, merge_predictions([(f, p) for f, _, p in parts])


def _check_result(entry, out) -> None:
    """A runner's answer in the shape the fold merge reads; otherwise say what the task's author must fix."""
    ok = (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)
          and isinstance(out[0].get("metrics"), dict) and isinstance(out[0].get("per_fold"), list | dict))
    if not ok:
        raise ValueError(f"evaluation task {entry.name!r}: its runner must return (result, predictions) with "
                         "result = {'metrics': {name: stats.summarise(...)}, 'per_fold': rows} (splits.score_folds "
                         f"builds both) or a reason string; got {type(out).__name__}")


def merge_metrics(per_fold_metrics: list[dict]) -> dict:
    """Each metric again as mean [95% t-interval], now over the values of every fold (each fold's summary keeps
    its values; a fold where the metric is undefined has none)."""
    from .stats import summarise

    return {m: summarise([v for fm in per_fold_metrics for v in fm.get(m, {}).get("values", [])])
            for m in per_fold_metrics[0]}


def _join(parts: list):
    """Per-fold rows of every fold in fold order: lists joined, dicts of lists joined per key."""
    if isinstance(parts[0], dict):
        return {k: [row for p in parts for row in p[k]] for k in parts[0]}
    return [row for p in parts for row in p]


def merge_predictions(parts: list[tuple]) -> object:
    """(fold, predictions) of each fold -> one set: a per-spot array takes each fold's held-out rows (the first
    fold's array elsewhere, i.e. its empty value), lists are joined, dicts merge per key."""
    first = parts[0][1]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: merge_predictions([(f, p[k]) for f, p in parts]) for k in first}
    if isinstance(first, list):
        return [x for _, p in parts for x in p]
    if isinstance(first, np.ndarray):
        if any(len(p) != len(first) or (len(f.test_idx) and f.test_idx.max() >= len(p)) for f, p in parts):
            raise ValueError("per-spot predictions must have one entry per spot of the source (a per-slide task "
                             "places its held-out slide's values at their spot indices); see evaluation.registry")
        out = first.copy()
        for f, p in parts:
            out[f.test_idx] = p[f.test_idx]
        return out
    raise ValueError(f"predictions of type {type(first).__name__} cannot merge over folds: return a per-spot "
                     "array, a list of per-fold records, a dict of those, or None (see evaluation.registry)")


def metric_table(results: dict) -> list[dict]:
    """Flatten to rows (task, metric, source, mean, low, high, n, method, text); low/high (and the text) are
    clipped to the metric's range (``stats.clip_interval``), so every reader of the table prints the same
    interval; ``results["tasks"]`` keeps the raw t-interval."""
    from .stats import clip_interval, interval_text

    rows = []
    for task, per_source in results["tasks"].items():
        for source, r in per_source.items():
            if "skipped" in r:
                rows.append({"task": task, "metric": "", "source": source, "skipped": r["skipped"]})
                continue
            for metric, iv in r["metrics"].items():
                low, high = iv["low"], iv["high"]
                if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
                    low, high = clip_interval(metric, low, high)
                row = {"task": task, "metric": metric, "source": source, "mean": iv["mean"], "low": low,
                       "high": high, "n": iv["n"], "method": iv["method"]}
                rows.append({**row, "text": interval_text(row)})
    return rows
