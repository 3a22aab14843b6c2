"""Run every evaluation task on every embedding source, side by side, on held-out slides.

:func:`evaluate_sources` is the one entry point (the CLI and the demo call it): it aligns the sources on
their shared spots, builds the held-out-slide folds once, runs the asked tasks on each source and
returns a JSON-ready dict with one row per (task, metric, source) in ``table``."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import StampInputError
from .embeddings_io import MODALITY_IMAGE, EmbeddingSet, align_sources, log1p_cp10k
from .splits import make_folds

TASKS = ("probe", "cluster", "expression", "retrieval", "mil")
DEFAULT_TASKS = ("probe", "cluster", "expression", "retrieval")

TASK_TITLES = {
    "probe": "Linear probe of spot labels (held-out slide)",
    "cluster": "Clustering vs labels (per slide)",
    "expression": "Gene-expression prediction (held-out slide)",
    "retrieval": "Cross-modal retrieval (within slide)",
    "mil": "Slide classification, gated ABMIL (cross-validated)",
}


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
    aligned = align_sources(sources)
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
        },
        "sources": {k: {"modality": s.modality, "dim": int(s.emb.shape[1]), "has_gene_embedding":
                        s.gene_emb is not None, "path": s.source_path} for k, s in aligned.items()},
        "tasks": {t: {} for t in tasks},
    }
    preds: dict = {t: {} for t in tasks}

    def skip(task, name, why):
        results["tasks"][task][name] = {"skipped": why}

    for name, s in aligned.items():
        for task in tasks:
            say(f"{task} / {name}")
            if task in ("probe", "cluster") and lab is None:
                skip(task, name, "no spot labels given")
                continue
            if task == "probe":
                from .probe import linear_probe

                r = linear_probe(s.emb, lab, slide_ids, folds, seed=seed)
                preds[task][name] = r.pop("predictions")
            elif task == "cluster":
                from .clustering import cluster_slides

                r = cluster_slides(s.emb, lab, slide_ids, seed=seed)
                preds[task][name] = r.pop("clusters")
            elif task == "expression":
                if expr_log is None:
                    skip(task, name, "no expression counts in any source (h5ad X is empty)")
                    continue
                if s.modality != MODALITY_IMAGE:
                    skip(task, name, f"{s.modality}-side embedding is computed from the expression it would "
                                     "predict; image embeddings only")
                    continue
                from .expression import hest_ridge, retrieval_imputation

                ridge = hest_ridge(s.emb, expr_log, slide_ids, expr_src.gene_names, folds, seed=seed)
                ref = s.gene_emb if s.gene_emb is not None else s.emb
                imp = retrieval_imputation(s.emb, ref, expr_log, slide_ids, expr_src.gene_names, folds,
                                           k=impute_k)
                preds[task][name] = {"ridge": ridge.pop("folds"), "impute": imp.pop("folds")}
                r = {"metrics": {"ridge_pearson": ridge["metrics"]["pearson_mean"],
                                 "ridge_mse": ridge["metrics"]["mse"],
                                 "impute_pearson": imp["metrics"]["pearson_mean"],
                                 "impute_mse": imp["metrics"]["mse"]},
                     "per_fold": {"ridge": ridge["per_fold"], "impute": imp["per_fold"]},
                     "impute_reference": "gene embedding" if s.gene_emb is not None else "image embedding"}
            elif task == "retrieval":
                if s.gene_emb is None:
                    skip(task, name, "no gene-side embedding in the same space (cross-modal retrieval "
                                     "needs an aligned model)")
                    continue
                from .retrieval import recall_at_k

                r = recall_at_k(s.emb, s.gene_emb, slide_ids, seed=seed)
                preds[task][name] = r.pop("examples")
            elif task == "mil":
                if not slide_labels:
                    skip(task, name, "no slide labels given")
                    continue
                from .mil import abmil_cv, bags_by_slide

                bag_names, bags = bags_by_slide(s.emb, slide_ids)
                keep = [i for i, b in enumerate(bag_names) if b in slide_labels]
                r = abmil_cv([bags[i] for i in keep], [slide_labels[bag_names[i]] for i in keep], seed=seed)
                if "skipped" in r:
                    skip(task, name, r["skipped"])
                    continue
            results["tasks"][task][name] = r

    results["table"] = metric_table(results)
    if artifacts is not None:
        artifacts.update({"sources": aligned, "labels": lab, "expr_log": expr_log,
                          "gene_names": None if expr_src is None else expr_src.gene_names,
                          "predictions": preds, "folds": folds})
    return results


def metric_table(results: dict) -> list[dict]:
    """Flatten to rows (task, metric, source, mean, low, high, n, method, text)."""
    from .stats import Interval

    rows = []
    for task, per_source in results["tasks"].items():
        for source, r in per_source.items():
            if "skipped" in r:
                rows.append({"task": task, "metric": "", "source": source, "skipped": r["skipped"]})
                continue
            for metric, iv in r["metrics"].items():
                text = Interval(**iv).format()
                rows.append({"task": task, "metric": metric, "source": source, "mean": iv["mean"],
                             "low": iv["low"], "high": iv["high"], "n": iv["n"], "method": iv["method"],
                             "text": text})
    return rows
