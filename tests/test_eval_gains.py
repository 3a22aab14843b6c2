"""Gains over a baseline with paired intervals, and cross-validated (per-fold) embedding sources."""

import numpy as np
import pytest
from test_eval_tasks import synthetic

from stamp_st.embedding_file import EmbeddingSet
from stamp_st.evaluation.gains import paired_bootstrap_gain
from stamp_st.evaluation.tasks import evaluate_sources


@pytest.fixture(scope="module")
def data():
    return synthetic(seed=1)


def _src(name, emb, d, **kw):
    return EmbeddingSet(name, emb, d["slide"], [f"p{i}" for i in range(len(emb))], counts=d["counts"],
                        gene_names=d["genes"], **kw)


def test_identical_sources_gain_exactly_nothing():
    rng = np.random.default_rng(0)
    t, p = rng.normal(size=(50, 5)), rng.normal(size=(50, 5))
    g = paired_bootstrap_gain([(t, p, p), (t, p, p)], "pearson", n_boot=50)
    assert g["gain"] == 0 and g["low"] == 0 and g["high"] == 0 and g["n_slides"] == 2


def test_informative_source_gains_over_noise_with_an_interval_above_zero(data):
    sources = {"good": _src("good", data["good"], data), "noise": _src("noise", data["noise"], data)}
    res = evaluate_sources(sources, data["labels"], ["probe", "expression"], baseline="noise")
    rows = {(r["task"], r["metric"]): r for r in res["gains"]}
    for key in (("probe", "balanced_accuracy"), ("expression", "ridge_pearson")):
        r = rows[key]
        assert r["source"] == "good" and r["baseline"] == "noise" and r["n_slides"] == 3
        assert 0 < r["low"] <= r["gain"] <= r["high"]
    # and the other way round the interval lies below zero
    back = evaluate_sources(sources, data["labels"], ["expression"], baseline="good")
    r = {(x["task"], x["metric"]): x for x in back["gains"]}[("expression", "ridge_pearson")]
    assert r["source"] == "noise" and r["high"] < 0


def test_a_cross_validated_source_scores_each_slide_with_its_own_model(data):
    """Each held-out slide must be scored with the embedding of the model that never saw it: here only
    the fold embeddings carry signal, so reading the source's plain ``emb`` would score like noise."""
    slides = list(dict.fromkeys(data["slide"].tolist()))
    folds = {sl: data["good"] + np.random.default_rng(i).normal(0, 0.1, data["good"].shape)
             for i, sl in enumerate(slides)}
    cv = _src("cv", data["noise"], data, fold_emb=folds)
    plain = _src("plain", data["noise"], data)
    res = evaluate_sources({"cv": cv, "plain": plain}, data["labels"], ["probe", "expression", "cluster"],
                           baseline="plain")
    t = res["tasks"]
    assert t["probe"]["cv"]["cross_validated"]
    assert len(t["probe"]["cv"]["per_fold"]) == len(slides)
    assert t["probe"]["cv"]["metrics"]["balanced_accuracy"]["mean"] > \
        t["probe"]["plain"]["metrics"]["balanced_accuracy"]["mean"] + 0.2
    assert t["expression"]["cv"]["metrics"]["ridge_pearson"]["n"] == len(slides)
    assert t["expression"]["cv"]["metrics"]["ridge_pearson"]["mean"] > \
        t["expression"]["plain"]["metrics"]["ridge_pearson"]["mean"] + 0.1
    assert [r["slide"] for r in t["cluster"]["cv"]["per_fold"]] == slides
    assert all(r["low"] > 0 for r in res["gains"] if r["metric"] in ("balanced_accuracy", "ridge_pearson"))
    missing = _src("cv", data["noise"], data, fold_emb={slides[0]: folds[slides[0]]})
    out = evaluate_sources({"cv": missing, "plain": plain}, data["labels"], ["probe"])
    assert "no cross-validated model" in out["tasks"]["probe"]["cv"]["skipped"]


def test_bootstrap_ari_equals_sklearn():
    """The bootstrap's own ARI is sklearn's, on random, degenerate and string labels."""
    from sklearn.metrics import adjusted_rand_score

    from stamp_st.evaluation.gains import _ari

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, k, n), rng.integers(0, m, n)) for n, k, m in ((300, 5, 7), (50, 2, 2), (9, 3, 9))]
    cases += [(np.zeros(10, int), np.zeros(10, int)), (np.arange(10), np.arange(10)), (np.zeros(10, int), np.arange(10))]
    t = rng.integers(0, 4, 200)
    cases += [(np.array(["tumour", "stroma", "immune", "fat"])[t], np.where(rng.random(200) < 0.7, t, 0))]
    for a, b in cases:
        assert _ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_report_lists_the_ablations_with_their_intervals():
    from stamp_st.evaluation.report import ablations_table_html

    assert ablations_table_html({}) == ""
    row = {"task": "expression", "metric": "ridge_pearson", "source": "STAMP_V", "baseline": "backbone",
           "gain": 0.045, "low": 0.022, "high": 0.058}
    html = ablations_table_html({"ablations": {"what": "cv over 4 sections.", "command": "python x.py",
                                               "variants": {"frozen <heads>": {"gains": [row]}}}})
    assert "frozen &lt;heads&gt;" in html and "+0.045 [+0.022, +0.058]" in html and "#e3f4e3" in html


def _loop_interval(per, metric, n_boot, seed=0):
    """The bootstrap written plainly: one resample at a time, the statistic on the resampled rows."""
    from stamp_st.evaluation.gains import STATISTICS

    fn, rng, reps = STATISTICS[metric], np.random.default_rng(seed), []
    for _ in range(n_boot):
        diffs = []
        for t, a, b in per:
            idx = rng.integers(0, len(t), len(t))
            diffs.append(fn(t[idx], a[idx]) - fn(t[idx], b[idx]))
        reps.append(np.nanmean(diffs))
    return np.nanquantile(reps, [0.025, 0.975]), float(np.nanmean(reps))


@pytest.mark.parametrize("metric", ["pearson", "balanced_accuracy", "ari"])
@pytest.mark.parametrize("block_cells", [4_000_000, 300])
def test_block_bootstrap_draws_the_loops_resamples_and_gives_its_interval(metric, block_cells, monkeypatch):
    """Statistics of many resamples at once (draw counts as weights) equal the plain loop's, with a gene that
    is constant in many resamples, a class absent from some, slides of very different sizes, and replicate
    blocks cut anywhere."""
    from stamp_st.evaluation import gains

    monkeypatch.setattr(gains, "BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(3)
    per = []
    for n in (400, 37, 9):
        if metric == "pearson":
            t = rng.normal(size=(n, 6))
            t[:, 0] = rng.random(n) < 0.05  # rare: constant in many resamples (NaN there)
            t[:, 1] = 0.0  # constant everywhere
            per.append((t, t + rng.normal(0, 2, t.shape), t + rng.normal(0, 2.5, t.shape)))
        else:
            names = np.array(["tumour", "stroma", "immune", "fat", "rare"])
            t = names[np.minimum(rng.integers(0, 4, n) + (rng.random(n) < 0.02) * 4, 4)]
            good = np.where(rng.random(n) < 0.6, t, "stroma")
            bad = names[rng.integers(0, 4, n)]
            if metric == "ari":
                good, bad = np.unique(good, return_inverse=True)[1], rng.integers(0, 3, n)
            per.append((t, good, bad))
    g = paired_bootstrap_gain(per, metric, n_boot=200, seed=7)
    (low, high), _ = _loop_interval(per, metric, 200, seed=7)
    assert g["low"] == pytest.approx(low, abs=1e-10) and g["high"] == pytest.approx(high, abs=1e-10)
    assert g["low"] < g["high"]
