"""Ranking metrics shared by Stage-2 validation (``training.align_validation``) and the evaluation tasks
(``evaluation.retrieval``): one definition of "rank of the true match" and of recall@k with random ties.
Plain numpy, no stamp_st imports, so any layer may use it."""

from __future__ import annotations

import numpy as np


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
