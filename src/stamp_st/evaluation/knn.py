"""k-nearest-neighbour label transfer to the held-out slide: each test spot takes the majority label of its
k most similar (cosine) training spots. A probe without a fitted model: it asks whether the embedding's own
neighbourhoods carry the label, where the linear probe asks whether a direction does."""

from __future__ import annotations

import numpy as np

from .probe import LABEL_METRICS, labelled_mask
from .splits import make_folds, score_folds

K = 15


def knn_transfer(emb: np.ndarray, labels: np.ndarray, slide_ids: np.ndarray, folds=None, k: int = K) -> dict:
    """Per held-out fold: balanced accuracy and macro-F1 of the k-NN vote over the test spots whose label occurs
    in training; mean [95% t-interval] over folds and per-spot predictions (as ``probe.linear_probe``)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier

    emb = np.asarray(emb, dtype=np.float32)
    has = labelled_mask(labels)
    lab = np.where(has, np.asarray(labels, dtype=object), "").astype(str)
    folds = folds if folds is not None else make_folds(np.asarray(slide_ids).astype(str))
    pred = np.full(len(emb), "", dtype=object)

    def score(fold):
        tr, te = fold.train_idx[has[fold.train_idx]], fold.test_idx[has[fold.test_idx]]
        te = te[np.isin(lab[te], np.unique(lab[tr]))]
        if len(np.unique(lab[tr])) < 2 or len(te) == 0:
            return "fewer than 2 training classes or no test labels"
        clf = KNeighborsClassifier(n_neighbors=min(k, len(tr)), metric="cosine").fit(emb[tr], lab[tr])
        yp, yt = clf.predict(emb[te]), lab[te]
        pred[te] = yp
        return {"balanced_accuracy": float(balanced_accuracy_score(yt, yp)),
                "macro_f1": float(f1_score(yt, yp, labels=np.unique(yt), average="macro", zero_division=0)),
                "n_test": int(len(te)), "n_train": int(len(tr))}

    return {**score_folds(folds, score, LABEL_METRICS), "predictions": pred}


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``)."""
    if ctx.lab is None:
        return "no spot labels given"
    r = knn_transfer(emb, ctx.lab[sel], ctx.slide_ids[sel], folds)
    return r, r.pop("predictions")
