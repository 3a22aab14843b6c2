"""Gene-expression prediction scored by Spearman: ridge from the image embedding to the 50 most variable
training genes, Spearman's rho per gene on the held-out slide, averaged over genes."""

from __future__ import annotations

import numpy as np

from .expression import per_gene_pearson, top_variable_genes
from .splits import score_folds


def mean_spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from scipy.stats import rankdata

    rho = per_gene_pearson(rankdata(y_true, axis=0), rankdata(y_pred, axis=0))
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner: predictions are each held-out fold's (true, pred) record."""
    from sklearn.linear_model import Ridge

    if ctx.expr_log is None:
        return "no expression counts in any source"
    records = []

    def score(fold):
        genes = top_variable_genes(ctx.expr_log[fold.train_idx])
        y_tr, y_te = ctx.expr_log[fold.train_idx][:, genes], ctx.expr_log[fold.test_idx][:, genes]
        pred = Ridge(alpha=1.0).fit(emb[fold.train_idx], y_tr).predict(emb[fold.test_idx])
        records.append({"fold": fold.name, "true": y_te, "pred": pred})
        return {"spearman_mean": mean_spearman(y_te, pred), "n_test": int(len(fold.test_idx))}

    return score_folds(folds, score, ["spearman_mean"]), records
