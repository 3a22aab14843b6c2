"""Cross-modal retrieval within a held-out slide: for each spot's image embedding, rank the slide's
gene embeddings by cosine (image->gene) and vice versa (gene->image); recall@k is the share of queries
whose own spot is among the top k. Chance is k / n_spots, reported beside it.

Ties are broken at random, in expectation: embeddings that collapse to one vector (an untrained or
degenerate model) then score exactly at chance, not at the perfect recall that counting only strictly
better candidates would give them."""

from __future__ import annotations

import numpy as np

from ..metrics import recall_from_ranks, true_match_ranks
from .expression import topk_cosine
from .splits import score_folds, slide_units


def recall_at_k(img_emb: np.ndarray, gene_emb: np.ndarray, slide_ids: np.ndarray,
                ks: tuple[int, ...] = (1, 5, 10), n_examples: int = 3, seed: int = 0) -> dict:
    """Per slide recall@k both directions, mean [95% t-interval] over slides, plus a few
    image->gene examples (query index, retrieved indices) for figures."""
    slide_ids = np.asarray(slide_ids).astype(str)
    kmax = max(ks)
    examples = []
    rng = np.random.default_rng(seed)

    def score(unit):
        idx = unit.test_idx
        n = len(idx)
        if n < 2:
            return "fewer than 2 spots"
        row = {"n": n}
        for direction, q, r in (("image_to_gene", img_emb[idx], gene_emb[idx]),
                                ("gene_to_image", gene_emb[idx], img_emb[idx])):
            for k, v in recall_from_ranks(true_match_ranks(q, r), ks).items():
                row[f"{direction}_R@{k}"] = v
            if direction == "image_to_gene":
                top, _ = topk_cosine(q, r, kmax)
                for qi in rng.choice(n, size=min(n_examples, n), replace=False):
                    examples.append({"slide": unit.name, "query": int(idx[qi]), "retrieved": idx[top[qi]].tolist()})
        for k in ks:
            row[f"chance_R@{k}"] = min(k, n) / n
        return row

    names = [f"{d}_R@{k}" for d in ("image_to_gene", "gene_to_image") for k in ks] + [f"chance_R@{k}" for k in ks]
    return {**score_folds(slide_units(slide_ids), score, names, key="slide"), "examples": examples}


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``): predictions are a few image->gene examples, by spot index."""
    if gene_emb is None:
        return "no gene-side embedding in the same space (cross-modal retrieval needs an aligned model)"
    r = recall_at_k(emb[sel], gene_emb[sel], ctx.slide_ids[sel], seed=ctx.seed)
    spots = np.arange(len(ctx.slide_ids))[sel]  # rows of ``sel`` -> spot indices
    return r, [{**e, "query": int(spots[e["query"]]), "retrieved": spots[e["retrieved"]].tolist()}
               for e in r.pop("examples")]
