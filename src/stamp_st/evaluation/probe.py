"""Linear probe of spot labels on held-out slides: standardise, class-balanced logistic regression fit
on the training slides, balanced accuracy and macro-F1 on the held-out slide."""

from __future__ import annotations

import warnings

import numpy as np

from .splits import Fold, make_folds, score_folds

LABEL_METRICS = ("balanced_accuracy", "macro_f1")


def labelled_mask(labels: np.ndarray) -> np.ndarray:
    """True where a spot has a label (not None/NaN/empty)."""
    lab = np.asarray(labels, dtype=object)
    return np.array([x is not None and not (isinstance(x, float) and np.isnan(x)) and str(x) != ""
                     for x in lab], dtype=bool)


def linear_probe(
    emb: np.ndarray,
    labels: np.ndarray,
    slide_ids: np.ndarray,
    folds: list[Fold] | None = None,
    C: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict:
    """Per held-out fold: balanced accuracy and macro-F1 over the test spots whose label occurs in the
    training slides (a class never seen in training cannot be predicted; such spots are counted in
    ``n_unseen`` and excluded). Returns per-fold values, mean [95% t-interval] and per-spot predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels, dtype=object)
    slide_ids = np.asarray(slide_ids).astype(str)
    has = labelled_mask(labels)
    lab = np.where(has, labels, "").astype(str)
    folds = folds if folds is not None else make_folds(slide_ids)
    pred = np.full(len(emb), "", dtype=object)

    def score(fold: Fold):
        tr = fold.train_idx[has[fold.train_idx]]
        te = fold.test_idx[has[fold.test_idx]]
        classes = np.unique(lab[tr])
        if len(classes) < 2 or len(te) == 0:
            return "fewer than 2 training classes or no test labels"
        seen = np.isin(lab[te], classes)
        te_seen = te[seen]
        if len(te_seen) == 0:
            return "no test label occurs in training"
        clf = make_pipeline(StandardScaler(), LogisticRegression(
            C=C, class_weight="balanced", max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the metric is what counts
            clf.fit(emb[tr], lab[tr])
        yp = clf.predict(emb[te_seen])
        pred[te_seen] = yp
        yt = lab[te_seen]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # balanced accuracy warns when a predicted class is absent
            bacc = float(balanced_accuracy_score(yt, yp))
        f1 = float(f1_score(yt, yp, labels=np.unique(yt), average="macro", zero_division=0))
        return {"balanced_accuracy": bacc, "macro_f1": f1, "n_test": int(len(te_seen)),
                "n_unseen": int((~seen).sum()), "n_train": int(len(tr)), "n_classes_train": int(len(classes))}

    return {**score_folds(folds, score, LABEL_METRICS), "predictions": pred}


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``): predictions are the held-out spots' labels ("" elsewhere)."""
    if ctx.lab is None:
        return "no spot labels given"
    r = linear_probe(emb, ctx.lab[sel], ctx.slide_ids[sel], folds, seed=ctx.seed)
    return r, r.pop("predictions")
