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
from .stats import summarise


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
