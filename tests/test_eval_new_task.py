"""A new evaluation task, added as a contributor would (one runner, one ``EvalTask`` entry), registered for the
test only: a Spearman expression read-out runs on a cross-validated source end to end (per-fold merge, gains
over a baseline, the report's table, notes, protocol and heading) with no other file changed."""

import json

import numpy as np
import pytest
from test_eval_tasks import synthetic

from stamp_st.embedding_file import EmbeddingSet
from stamp_st.evaluation.registry import EVAL_TASKS, EvalTask, Gain
from stamp_st.evaluation.report import write_report
from stamp_st.evaluation.splits import score_folds
from stamp_st.evaluation.tasks import evaluate_sources


def mean_spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over genes of Spearman's rho (spots x genes): Pearson of the ranks."""
    from scipy.stats import rankdata

    from stamp_st.evaluation.expression import per_gene_pearson

    rho = per_gene_pearson(rankdata(y_true, axis=0), rankdata(y_pred, axis=0))
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


def run_spearman(s, emb, gene_emb, folds, ctx, sel):
    """Ridge from the embedding to the 20 most variable training genes; Spearman per held-out fold."""
    from sklearn.linear_model import Ridge

    from stamp_st.evaluation.expression import top_variable_genes

    if ctx.expr_log is None:
        return "no expression counts"
    records = []

    def score(fold):
        genes = top_variable_genes(ctx.expr_log[fold.train_idx], 20)
        y_tr, y_te = ctx.expr_log[fold.train_idx][:, genes], ctx.expr_log[fold.test_idx][:, genes]
        pred = Ridge(alpha=1.0).fit(emb[fold.train_idx], y_tr).predict(emb[fold.test_idx])
        records.append({"fold": fold.name, "true": y_te, "pred": pred})
        return {"spearman_mean": mean_spearman(y_te, pred), "n_test": int(len(fold.test_idx))}

    return score_folds(folds, score, ["spearman_mean"]), records


SPEARMAN = EvalTask(
    "spearman", "Expression, Spearman per gene (held-out slide)", run_spearman, default=False,
    gains=(Gain("spearman_mean", mean_spearman),),
    protocol="Spearman: ridge (alpha 1) on the embedding, 20 most variable training genes, rho per gene.",
    metric_notes=(("spearman_mean", "mean Spearman rho over genes"),))


@pytest.fixture
def spearman_task(monkeypatch):
    monkeypatch.setitem(EVAL_TASKS, "spearman", SPEARMAN)
    return SPEARMAN


def _sources(d):
    slides = list(dict.fromkeys(d["slide"].tolist()))
    keys = [f"p{i}" for i in range(len(d["slide"]))]
    fold_emb = {sl: d["good"] + np.random.default_rng(i).normal(0, 0.1, d["good"].shape) for i, sl in enumerate(slides)}

    def src(name, emb, **kw):
        return EmbeddingSet(name, emb, d["slide"], keys, counts=d["counts"], gene_names=d["genes"], **kw)

    # only the fold embeddings carry signal: reading the plain ``emb`` of "cv" would score like noise
    return slides, {"cv": src("cv", d["noise"], fold_emb=fold_emb), "noise": src("noise", d["noise"])}


def test_a_registered_task_runs_on_a_cross_validated_source_with_gains_and_report(spearman_task, tmp_path):
    d = synthetic(n_per=60, seed=2)
    slides, sources = _sources(d)
    art: dict = {}
    res = evaluate_sources(sources, d["labels"], ["spearman"], baseline="noise", artifacts=art)
    cv, noise = res["tasks"]["spearman"]["cv"], res["tasks"]["spearman"]["noise"]
    assert cv["cross_validated"] and [r["fold"] for r in cv["per_fold"]] == slides
    assert cv["metrics"]["spearman_mean"]["n"] == len(slides)
    assert cv["metrics"]["spearman_mean"]["mean"] > noise["metrics"]["spearman_mean"]["mean"] + 0.1
    assert [r["fold"] for r in art["predictions"]["spearman"]["cv"]] == slides  # every held-out fold's record
    (gain,) = [g for g in res["gains"] if g["task"] == "spearman"]
    assert gain["metric"] == "spearman_mean" and gain["source"] == "cv" and gain["n_slides"] == len(slides)
    assert 0 < gain["low"] <= gain["gain"] <= gain["high"]
    assert {(r["metric"], r["source"]) for r in res["table"]} == {("spearman_mean", "cv"), ("spearman_mean", "noise")}

    results_json, report_html = write_report(tmp_path / "out", res, art, projection="pca")
    back = json.loads(results_json.read_text())
    assert back["gains"][0]["task"] == "spearman"
    html = report_html.read_text()
    assert f"<h2>{spearman_task.title}</h2>" in html
    assert spearman_task.protocol in html and "mean Spearman rho over genes" in html
    assert "<td>spearman</td><td>spearman_mean</td><td>cv</td>" in html  # the gain table's row


def test_a_task_that_cannot_merge_folds_says_why(monkeypatch):
    """merge=None (the task needs every slide's embedding at once): a cross-validated source gets a reason in
    the results, and the plain source is still scored."""
    monkeypatch.setitem(EVAL_TASKS, "spearman", EvalTask("spearman", "Spearman, whole cohort", run_spearman,
                                                         merge=None))
    d = synthetic(n_per=40, seed=2)
    _, sources = _sources(d)
    res = evaluate_sources(sources, None, ["spearman"])
    assert "not a cross-validated source" in res["tasks"]["spearman"]["cv"]["skipped"]
    assert "spearman_mean" in res["tasks"]["spearman"]["noise"]["metrics"]


def test_a_runner_returning_the_wrong_shape_is_told_what_to_return(monkeypatch):
    monkeypatch.setitem(EVAL_TASKS, "broken", EvalTask("broken", "Broken", lambda *a: {"spearman": 0.5}))
    d = synthetic(n_per=40, seed=2)
    _, sources = _sources(d)
    with pytest.raises(ValueError, match="must return \\(result, predictions\\)"):
        evaluate_sources(sources, None, ["broken"])
    with pytest.raises(ValueError, match="merge="):
        EvalTask("x", "X", run_spearman, merge="labels")


def test_a_metrics_only_task_merges_its_folds_without_predictions(monkeypatch):
    """merge="metrics": a cross-validated source gets its metrics over every held-out slide and no predictions,
    so no gain row (the plain sources still pair)."""
    monkeypatch.setitem(EVAL_TASKS, "spearman", EvalTask("spearman", "Spearman", run_spearman, merge="metrics",
                                                         gains=SPEARMAN.gains))
    d = synthetic(n_per=40, seed=2)
    slides, sources = _sources(d)
    sources["plain"] = EmbeddingSet("plain", d["good"], d["slide"], sources["noise"].spot_ids,
                                    counts=d["counts"], gene_names=d["genes"])
    art: dict = {}
    res = evaluate_sources(sources, None, ["spearman"], baseline="noise", artifacts=art)
    cv = res["tasks"]["spearman"]["cv"]
    assert cv["cross_validated"] and cv["metrics"]["spearman_mean"]["n"] == len(slides)
    assert art["predictions"]["spearman"]["cv"] is None
    assert [g["source"] for g in res["gains"]] == ["plain"]
