"""Unsupervised clustering of each slide's spots, compared with the spot labels: k-means with k = the
number of labels in that slide, and Leiden on a kNN graph with the resolution searched until it gives
about k clusters (so that the two methods are judged at the same granularity)."""

from __future__ import annotations

import numpy as np

from .probe import labelled_mask
from .splits import score_folds, slide_units


def _reduce(emb: np.ndarray, n_pcs: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(np.asarray(emb, dtype=np.float64))
    k = int(min(n_pcs, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(x) if k < x.shape[1] else x


def kmeans_clusters(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)


def leiden_clusters(x: np.ndarray, k: int, n_neighbors: int = 15, seed: int = 0,
                    max_steps: int = 25) -> tuple[np.ndarray, float]:
    """Leiden (leidenalg, RB-configuration) on a symmetric kNN graph; bisect the resolution to reach k
    clusters (or the closest count found). Returns (clusters, resolution)."""
    import igraph as ig
    import leidenalg
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    nn = NearestNeighbors(n_neighbors=min(n_neighbors + 1, n)).fit(x)
    _, idx = nn.kneighbors(x)
    edges = {(min(i, j), max(i, j)) for i in range(n) for j in idx[i, 1:] if i != j}
    g = ig.Graph(n=n, edges=sorted(edges))

    def run(res: float) -> np.ndarray:
        part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition,
                                        resolution_parameter=res, seed=seed)
        return np.asarray(part.membership)

    lo, hi = 1e-3, 10.0
    best, best_res = run(1.0), 1.0
    for _ in range(max_steps):
        mid = float(np.sqrt(lo * hi))  # bisect on a log scale
        memb = run(mid)
        m = len(np.unique(memb))
        if abs(m - k) < abs(len(np.unique(best)) - k):
            best, best_res = memb, mid
        if m == k:
            break
        if m < k:
            lo = mid
        else:
            hi = mid
    return best, best_res


def cluster_slides(emb: np.ndarray, labels: np.ndarray, slide_ids: np.ndarray,
                   methods: tuple[str, ...] = ("kmeans", "leiden"), n_pcs: int = 50, seed: int = 0) -> dict:
    """Per slide (labelled spots only): ARI and NMI of each method; mean [95% t-interval] over slides.
    ``clusters`` holds every spot's cluster per method (-1 where unlabelled)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels, dtype=object)
    slide_ids = np.asarray(slide_ids).astype(str)
    has = labelled_mask(labels)
    clusters = {m: np.full(len(labels), -1, dtype=np.int64) for m in methods}

    def score(unit):
        idx = unit.test_idx
        y = labels[idx].astype(str)
        k = len(np.unique(y))
        if k < 2 or len(idx) <= k:
            return "fewer than 2 labels or too few spots"
        x = _reduce(emb[idx], n_pcs, seed)
        row = {"k": k, "n": int(len(idx))}
        for m in methods:
            if m == "kmeans":
                c = kmeans_clusters(x, k, seed)
            elif m == "leiden":
                c, res = leiden_clusters(x, k, seed=seed)
                row["leiden_resolution"] = res
                row["leiden_n_clusters"] = int(len(np.unique(c)))
            else:
                raise ValueError(f"unknown clustering method {m!r}")
            clusters[m][idx] = c
            row[f"{m}_ari"] = float(adjusted_rand_score(y, c))
            row[f"{m}_nmi"] = float(normalized_mutual_info_score(y, c))
        return row

    metrics = [f"{m}_{s}" for m in methods for s in ("ari", "nmi")]
    return {**score_folds(slide_units(slide_ids, has), score, metrics, key="slide"), "clusters": clusters}


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``): predictions are every spot's cluster per method (-1 where
    unlabelled or outside ``sel``)."""
    if ctx.lab is None:
        return "no spot labels given"
    r = cluster_slides(emb[sel], ctx.lab[sel], ctx.slide_ids[sel], seed=ctx.seed)
    return r, {m: _on_all_spots(c, sel, len(ctx.slide_ids)) for m, c in r.pop("clusters").items()}


def _on_all_spots(values: np.ndarray, sel, n: int) -> np.ndarray:
    """Per-spot values of the rows ``sel`` placed on all ``n`` spots (-1 elsewhere)."""
    out = np.full(n, -1, dtype=values.dtype)
    out[sel] = values
    return out
