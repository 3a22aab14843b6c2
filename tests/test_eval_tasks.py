"""Evaluation tasks on synthetic data: relative, honest checks (signal beats noise; chance stays near
chance) rather than numbers the code was tuned to print."""

import numpy as np
import pytest

from stamp_st.embedding_file import EmbeddingSet
from stamp_st.evaluation.clustering import cluster_slides
from stamp_st.evaluation.expression import hest_ridge, per_gene_pearson, retrieval_imputation
from stamp_st.evaluation.mil import abmil_cv
from stamp_st.evaluation.probe import linear_probe
from stamp_st.evaluation.retrieval import recall_at_k
from stamp_st.evaluation.tasks import evaluate_sources


def synthetic(n_slides=3, n_per=120, n_classes=3, d=32, g=80, seed=0):
    """Spots with a label, expression driven by the label plus a continuous latent, an 'informative'
    image embedding that sees label + latent and a pure-noise embedding."""
    rng = np.random.default_rng(seed)
    n = n_slides * n_per
    slide = np.repeat([f"S{i}" for i in range(n_slides)], n_per)
    y = rng.integers(0, n_classes, n)
    latent = rng.normal(size=(n, 4))
    centers = rng.normal(0, 2.0, size=(n_classes, d))
    mix = rng.normal(size=(4, d))
    good = centers[y] + latent @ mix + rng.normal(0, 1.0, (n, d))
    noise = rng.normal(size=(n, d))
    gene_prog = rng.normal(0, 1.0, (n_classes, g))
    gene_lat = rng.normal(0, 0.6, (4, g))
    rate = np.exp(1.0 + gene_prog[y] * 0.8 + latent @ gene_lat)
    counts = rng.poisson(rate).astype(np.float32)
    labels = np.array([f"c{k}" for k in y], dtype=object)
    labels[rng.random(n) < 0.05] = ""  # some unlabelled spots
    return dict(slide=slide, y=y, labels=labels, good=good, noise=noise, counts=counts,
                genes=np.array([f"G{i}" for i in range(g)]), xy=rng.uniform(0, 1000, (n, 2)))


@pytest.fixture(scope="module")
def data():
    import torch

    torch.set_num_threads(1)
    return synthetic()


def test_probe_signal_beats_noise(data):
    good = linear_probe(data["good"], data["labels"], data["slide"])
    noise = linear_probe(data["noise"], data["labels"], data["slide"])
    g, z = good["metrics"]["balanced_accuracy"], noise["metrics"]["balanced_accuracy"]
    assert g["n"] == 3 and len(good["per_fold"]) == 3
    assert g["mean"] > z["mean"] + 0.2
    assert good["metrics"]["macro_f1"]["mean"] > noise["metrics"]["macro_f1"]["mean"]
    assert abs(z["mean"] - 1 / 3) < 0.15  # noise is near chance for 3 balanced classes
    assert (good["predictions"][data["labels"] == ""] == "").all()  # unlabelled spots are not scored


def test_probe_excludes_classes_unseen_in_training(data):
    labels = data["labels"].copy()
    labels[(data["slide"] == "S0") & (data["y"] == 0)] = "only_in_S0"
    r = linear_probe(data["good"], labels, data["slide"])
    f0 = next(f for f in r["per_fold"] if f["fold"] == "S0")
    assert f0["n_unseen"] > 0


def test_clustering_signal_beats_noise(data):
    good = cluster_slides(data["good"], data["labels"], data["slide"])
    noise = cluster_slides(data["noise"], data["labels"], data["slide"])
    for m in ("kmeans_ari", "leiden_ari", "kmeans_nmi", "leiden_nmi"):
        assert good["metrics"][m]["mean"] > noise["metrics"][m]["mean"] + 0.1, m
    row = good["per_fold"][0]
    assert abs(row["leiden_n_clusters"] - row["k"]) <= 1  # resolution search reaches about k clusters


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    b[:, 3] = 1.0
    r = per_gene_pearson(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1])
    assert np.isnan(r[3])


def test_expression_prediction_signal_beats_noise(data):
    from stamp_st.evaluation.sources import log1p_cp10k

    expr = log1p_cp10k(data["counts"])
    good = hest_ridge(data["good"], expr, data["slide"], data["genes"])
    noise = hest_ridge(data["noise"], expr, data["slide"], data["genes"])
    assert good["metrics"]["pearson_mean"]["mean"] > noise["metrics"]["pearson_mean"]["mean"] + 0.2
    assert good["metrics"]["mse"]["mean"] < noise["metrics"]["mse"]["mean"]
    f = good["per_fold"][0]
    assert f["n_genes"] == 50 and f["pca"] is False  # 240 training spots < 256: no PCA
    assert f["alpha"] == pytest.approx(100 / (32 * 50))
    art = good["folds"][0]
    assert art["pred"].shape == (120, 50) and len(art["genes"]) == 50
    imp_good = retrieval_imputation(data["good"], data["good"], expr, data["slide"], data["genes"], k=20)
    imp_noise = retrieval_imputation(data["noise"], data["noise"], expr, data["slide"], data["genes"], k=20)
    assert imp_good["metrics"]["pearson_mean"]["mean"] > imp_noise["metrics"]["pearson_mean"]["mean"] + 0.1


def test_hest_uses_pca_when_samples_allow():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 300))
    expr = rng.normal(size=(700, 60))
    r = hest_ridge(x, expr, np.repeat(["a", "b"], 350), np.arange(60).astype(str))
    assert r["per_fold"][0]["pca"] is True and r["per_fold"][0]["n_features"] == 256


def test_retrieval_recall(data):
    rng = np.random.default_rng(0)
    img = data["good"]
    gene_aligned = img + rng.normal(0, 0.3, img.shape)
    r = recall_at_k(img, gene_aligned, data["slide"])
    r0 = recall_at_k(img, rng.normal(size=img.shape), data["slide"])
    m, m0 = r["metrics"], r0["metrics"]
    assert m["image_to_gene_R@1"]["mean"] > 0.5 and m["gene_to_image_R@10"]["mean"] > 0.8
    assert m0["image_to_gene_R@10"]["mean"] < 0.25  # chance is 10/120
    assert m["chance_R@5"]["mean"] == pytest.approx(5 / 120)
    assert r["examples"] and len(r["examples"][0]["retrieved"]) == 10


def _bags(n_bags, rng, informative):
    bags, y = [], []
    for i in range(n_bags):
        label = i % 2
        b = rng.normal(size=(int(rng.integers(20, 40)), 16)).astype(np.float32)
        if informative and label == 1:
            b[:3, :4] += 3.0  # a few key instances carry the label
        bags.append(b)
        y.append(label)
    return bags, np.array(y)


def test_abmil_finds_key_instances_and_random_labels_stay_near_chance():
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    bags, y = _bags(32, rng, informative=True)
    r = abmil_cv(bags, y, n_splits=4, epochs=10, hidden=64)
    assert r["metrics"]["auc"]["mean"] > 0.85
    bags0, _ = _bags(48, rng, informative=False)
    y0 = rng.permutation(np.arange(48) % 2)
    r0 = abmil_cv(bags0, y0, n_splits=4, epochs=10, hidden=64)
    assert abs(r0["metrics"]["auc"]["mean"] - 0.5) < 0.3  # loose: few bags, honest about noise


def test_evaluate_sources_side_by_side(data):
    import pandas as pd

    common = dict(slide_ids=data["slide"], spot_ids=np.arange(len(data["slide"])).astype(str), xy_px=data["xy"],
                  counts=data["counts"], gene_names=data["genes"])
    rng = np.random.default_rng(3)
    model = EmbeddingSet("model", data["good"], gene_emb=data["good"] + rng.normal(0, 0.3, data["good"].shape),
                         **common)
    base = EmbeddingSet("backbone", data["noise"], **common)
    # a reordered source must be aligned by key, not by row
    perm = rng.permutation(len(base))
    base = base.subset(perm)
    labels = pd.Series(data["labels"], index=model.keys)
    art = {}
    res = evaluate_sources({"model": model, "backbone": base}, labels,
                           tasks=("probe", "expression", "retrieval"), baseline="backbone", artifacts=art)
    t = res["tasks"]
    assert t["probe"]["model"]["metrics"]["balanced_accuracy"]["mean"] > \
        t["probe"]["backbone"]["metrics"]["balanced_accuracy"]["mean"] + 0.2
    assert t["expression"]["model"]["metrics"]["ridge_pearson"]["mean"] > \
        t["expression"]["backbone"]["metrics"]["ridge_pearson"]["mean"]
    assert "skipped" in t["retrieval"]["backbone"] and "metrics" in t["retrieval"]["model"]
    assert {r["source"] for r in res["table"]} == {"model", "backbone"}
    assert art["sources"]["backbone"].keys.tolist() == art["sources"]["model"].keys.tolist()
    import json

    json.dumps(res)  # JSON-ready
