"""Cross-modal retrieval within a held-out slide: for each spot's image embedding, rank the slide's
gene embeddings by cosine (image->gene) and vice versa (gene->image); recall@k is the share of queries
whose own spot is among the top k. Chance is k / n_spots, reported beside it.

Ties are broken at random, in expectation: embeddings that collapse to one vector (an untrained or
degenerate model) then score exactly at chance, not at the perfect recall that counting only strictly
better candidates would give them."""

from __future__ import annotations

import numpy as np

from .expression import topk_cosine
from .stats import summarise


def true_match_ranks(query: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For ``query[i]``, how many references score above its true match ``reference[i]`` by cosine, and how
    many others tie with it."""
    q = np.asarray(query, np.float64)
    r = np.asarray(reference, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    r = r / np.linalg.norm(r, axis=1, keepdims=True).clip(1e-12)
    above, tied = np.empty(len(q), np.int64), np.empty(len(q), np.int64)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ r.T
        t = sim[np.arange(len(sim)), np.arange(s, s + len(sim))][:, None]  # same arithmetic as the others
        above[s:s + chunk] = (sim > t).sum(1)
        tied[s:s + chunk] = (sim == t).sum(1) - 1
    return above, tied


def recall_from_ranks(ranks: tuple[np.ndarray, np.ndarray], ks: tuple[int, ...]) -> dict[int, float]:
    """Expected recall@k with ties broken uniformly at random."""
    above, tied = ranks
    return {k: float(np.clip((k - above) / (tied + 1), 0.0, 1.0).mean()) for k in ks}


def recall_at_k(img_emb: np.ndarray, gene_emb: np.ndarray, slide_ids: np.ndarray,
                ks: tuple[int, ...] = (1, 5, 10), n_examples: int = 3, seed: int = 0) -> dict:
    """Per slide recall@k both directions, mean [95% t-interval] over slides, plus a few
    image->gene examples (query index, retrieved indices) for figures."""
    slide_ids = np.asarray(slide_ids).astype(str)
    kmax = max(ks)
    per_slide, examples = [], []
    rng = np.random.default_rng(seed)
    for sl in dict.fromkeys(slide_ids.tolist()):
        idx = np.flatnonzero(slide_ids == sl)
        n = len(idx)
        if n < 2:
            per_slide.append({"slide": sl, "skipped": "fewer than 2 spots"})
            continue
        row = {"slide": sl, "n": n}
        for direction, q, r in (("image_to_gene", img_emb[idx], gene_emb[idx]),
                                ("gene_to_image", gene_emb[idx], img_emb[idx])):
            for k, v in recall_from_ranks(true_match_ranks(q, r), ks).items():
                row[f"{direction}_R@{k}"] = v
            if direction == "image_to_gene":
                top, _ = topk_cosine(q, r, kmax)
                for qi in rng.choice(n, size=min(n_examples, n), replace=False):
                    examples.append({"slide": sl, "query": int(idx[qi]), "retrieved": idx[top[qi]].tolist()})
        for k in ks:
            row[f"chance_R@{k}"] = min(k, n) / n
        per_slide.append(row)
    ok = [r for r in per_slide if "skipped" not in r]
    names = [f"{d}_R@{k}" for d in ("image_to_gene", "gene_to_image") for k in ks] + [f"chance_R@{k}" for k in ks]
    return {"metrics": {m: summarise([r[m] for r in ok]) for m in names}, "per_fold": per_slide,
            "examples": examples}
