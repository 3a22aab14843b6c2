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

from ..embedding_file import MODALITY_IMAGE, EmbeddingSet
from ..errors import StampInputError
from .registry import EVAL_TASKS
from .sources import align_sources, log1p_cp10k
from .splits import make_folds

# from the registry (evaluation/registry.py): one entry per task
TASKS = tuple(EVAL_TASKS)
DEFAULT_TASKS = tuple(n for n, t in EVAL_TASKS.items() if t.default)
TASK_TITLES = {n: t.title for n, t in EVAL_TASKS.items()}


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
    tasks: Sequence[str] = DEFAULT_TASKS,
    slide_labels: Mapping[str, object] | None = None,
    test_slides: Sequence[str] | None = None,
    baseline: str | None = None,
    impute_k: int = 50,
    seed: int = 0,
    artifacts: dict | None = None,
    progress=None,
) -> dict:
    """Evaluate each source on each task. ``labels``: a Series indexed by ``<slide_id>/<spot_id>`` (""
    = unlabelled), or an array in the spot order shared by all sources. ``slide_labels``: slide id ->
    class for the MIL task. ``test_slides``: a given split instead of leave-one-slide-out. When
    ``artifacts`` is a dict it is filled with arrays for figures (aligned sources, labels, expression,
    predictions)."""
    from .. import __version__

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise StampInputError(f"unknown tasks {unknown}", hint=f"choose from {', '.join(TASKS)}")
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
    return EVAL_TASKS[task].load_runner()(s, emb, gene_emb, folds, ctx, sel)


def _labels_and_slides(ctx: TaskContext, sel):
    return (None if ctx.lab is None else ctx.lab[sel]), ctx.slide_ids[sel]


def run_probe(s: EmbeddingSet, emb, gene_emb, folds, ctx: TaskContext, sel):
    lab, slide_ids = _labels_and_slides(ctx, sel)
    if lab is None:
        return "no spot labels given"
    from .probe import linear_probe

    r = linear_probe(emb, lab, slide_ids, folds, seed=ctx.seed)
    return r, r.pop("predictions")


def run_cluster(s: EmbeddingSet, emb, gene_emb, folds, ctx: TaskContext, sel):
    lab, slide_ids = _labels_and_slides(ctx, sel)
    if lab is None:
        return "no spot labels given"
    from .clustering import cluster_slides

    r = cluster_slides(emb[sel], lab, slide_ids, seed=ctx.seed)
    return r, r.pop("clusters")


def run_expression(s: EmbeddingSet, emb, gene_emb, folds, ctx: TaskContext, sel):
    slide_ids = ctx.slide_ids[sel]
    if ctx.expr_log is None:
        return "no expression counts in any source (h5ad X is empty)"
    if s.modality != MODALITY_IMAGE:
        return (f"{s.modality}-side embedding is computed from the expression it would predict; image "
                "embeddings only")
    from .expression import hest_ridge, retrieval_imputation

    genes = ctx.expr_src.gene_names
    ridge = hest_ridge(emb, ctx.expr_log, slide_ids, genes, folds, seed=ctx.seed)
    ridge_cv = hest_ridge(emb, ctx.expr_log, slide_ids, genes, folds, seed=ctx.seed, alpha="cv")
    ref = gene_emb if gene_emb is not None else emb
    imp = retrieval_imputation(emb, ref, ctx.expr_log, slide_ids, genes, folds, k=ctx.impute_k)
    r = {"metrics": {"ridge_pearson": ridge["metrics"]["pearson_mean"], "ridge_mse": ridge["metrics"]["mse"],
                     "ridge_cv_pearson": ridge_cv["metrics"]["pearson_mean"],
                     "impute_pearson": imp["metrics"]["pearson_mean"], "impute_mse": imp["metrics"]["mse"]},
         "per_fold": {"ridge": ridge["per_fold"], "ridge_cv": ridge_cv["per_fold"], "impute": imp["per_fold"]},
         "impute_reference": "gene embedding" if gene_emb is not None else "image embedding"}
    return r, {"ridge": ridge.pop("folds"), "ridge_cv": ridge_cv.pop("folds"), "impute": imp.pop("folds")}


def run_retrieval(s: EmbeddingSet, emb, gene_emb, folds, ctx: TaskContext, sel):
    slide_ids = ctx.slide_ids[sel]
    if gene_emb is None:
        return "no gene-side embedding in the same space (cross-modal retrieval needs an aligned model)"
    from .retrieval import recall_at_k

    r = recall_at_k(emb[sel], gene_emb[sel], slide_ids, seed=ctx.seed)
    return r, r.pop("examples")


def run_mil(s: EmbeddingSet, emb, gene_emb, folds, ctx: TaskContext, sel):
    slide_ids = ctx.slide_ids[sel]
    if not ctx.slide_labels:
        return "no slide labels given"
    from .mil import abmil_cv, bags_by_slide

    bag_names, bags = bags_by_slide(emb, slide_ids)
    keep = [i for i, b in enumerate(bag_names) if b in ctx.slide_labels]
    r = abmil_cv([bags[i] for i in keep], [ctx.slide_labels[bag_names[i]] for i in keep], seed=ctx.seed)
    return r["skipped"] if "skipped" in r else (r, None)


# per_fold keys that each summarised metric is computed from, where the names differ
_EXPRESSION_METRICS = {"ridge_pearson": ("ridge", "pearson_mean"), "ridge_mse": ("ridge", "mse"),
                       "ridge_cv_pearson": ("ridge_cv", "pearson_mean"),
                       "impute_pearson": ("impute", "pearson_mean"), "impute_mse": ("impute", "mse")}
_EXPRESSION_KINDS = ("ridge", "ridge_cv", "impute")


def _task_foldwise(task: str, s: EmbeddingSet, folds, ctx: TaskContext):
    """A cross-validated source: each held-out slide is scored with the embedding of its own model (trained
    without it), training-side spots included; per-fold results are merged and summarised again."""
    from .stats import summarise

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
    first = parts[0][1]
    n = len(s)
    if entry.merge == "expression":
        per_fold = {k: [row for _, r, _ in parts for row in r["per_fold"][k]] for k in _EXPRESSION_KINDS}
        metrics = {m: summarise([row[key] for row in per_fold[kind] if "skipped" not in row])
                   for m, (kind, key) in _EXPRESSION_METRICS.items()}
        preds = {k: [a for _, _, p in parts for a in p[k]] for k in _EXPRESSION_KINDS}
        return {**first, "metrics": metrics, "per_fold": per_fold, "cross_validated": True}, preds
    per_fold = [row for _, r, _ in parts for row in r["per_fold"]]
    ok = [row for row in per_fold if "skipped" not in row]
    metrics = {m: summarise([row[m] for row in ok if m in row]) for m in first["metrics"]}
    if entry.merge == "labels":
        preds = np.full(n, "", dtype=object)
        for f, _, p in parts:
            preds[f.test_idx] = p[f.test_idx]
    elif entry.merge == "clusters":
        preds = {m: np.full(n, -1, dtype=np.int64) for m in parts[0][2]}
        for f, _, p in parts:
            for m, c in p.items():
                preds[m][f.test_idx] = c
    else:  # retrieval examples: indices within the held-out slide -> spot indices
        preds = [{**e, "query": int(f.test_idx[e["query"]]), "retrieved": f.test_idx[e["retrieved"]].tolist()}
                 for f, _, p in parts for e in p]
    return {**first, "metrics": metrics, "per_fold": per_fold, "cross_validated": True}, preds


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
