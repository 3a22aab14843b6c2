"""Gene-expression prediction from image embeddings on held-out slides.

* :func:`hest_ridge` — the HEST-Benchmark protocol (Jaume et al. 2024, ``hest/bench``): standardise and
  PCA to 256 dims fit on the training spots (only when both n_train and the embedding width exceed 256;
  otherwise standardise only), ridge regression with HEST's ``alpha = 100 / (n_features * n_targets)``
  (``solver='lsqr'``), Pearson per gene on the 50 most variable genes (variance on the training spots),
  averaged. HEST fits without intercept; because the PCA/standardised features are exactly centred on
  the training spots the coefficients are identical with an intercept, which we fit so that the
  paper's MSE is meaningful (Pearson is unchanged).
* :func:`retrieval_imputation` — BLEEP-style: a test spot's expression is the similarity-weighted mean
  of the expression of its top-k training spots, ranked by cosine between the query's image embedding
  and the reference gene embeddings (image embeddings where a source has no gene side).

Targets are log1p CP10k expression of the chosen genes. Metrics: mean Pearson (PCC) over genes and MSE
(mean over genes and spots), per held-out slide, then mean [95% t-interval] over slides.
"""

from __future__ import annotations

import warnings

import numpy as np

from .splits import Fold, make_folds, score_folds

HEST_PCA_DIM = 256
HEST_N_GENES = 50
FOLD_METRICS = ("pearson_mean", "mse")


def top_variable_genes(expr_train: np.ndarray, n: int = HEST_N_GENES) -> np.ndarray:
    """Indices of the ``n`` most variable genes on the training spots (highest first)."""
    var = np.asarray(expr_train, dtype=np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")
    order = order[var[order] > 0]
    return order[:n]


def per_gene_pearson(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r per column; NaN where either side is constant."""
    yt = y_true - y_true.mean(axis=0)
    yp = y_pred - y_pred.mean(axis=0)
    den = np.sqrt((yt**2).sum(axis=0) * (yp**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (yt * yp).sum(axis=0) / den
    r[~np.isfinite(r) | (den == 0)] = np.nan
    return r


def hest_features(x_train: np.ndarray, x_test: np.ndarray, pca_dim: int = HEST_PCA_DIM, seed: int = 0):
    """Standardise (+ PCA to ``pca_dim`` when samples and width allow), fit on train only."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scaler", StandardScaler())]
    used_pca = x_train.shape[0] > pca_dim and x_train.shape[1] > pca_dim
    if used_pca:
        steps.append(("pca", PCA(n_components=pca_dim, random_state=seed)))
    pipe = Pipeline(steps)
    return pipe.fit_transform(x_train), pipe.transform(x_test), used_pca


def _fold_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, np.ndarray]:
    r = per_gene_pearson(y_true, y_pred)
    mse = float(np.mean((y_true - y_pred) ** 2))
    return (float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")), mse, r


RIDGE_CV_ALPHAS = tuple(np.logspace(-1, 5, 13))


def hest_ridge(emb: np.ndarray, expr_log: np.ndarray, slide_ids: np.ndarray, gene_names: np.ndarray,
               folds: list[Fold] | None = None, n_genes: int = HEST_N_GENES, pca_dim: int = HEST_PCA_DIM,
               seed: int = 0, alpha: str = "hest") -> dict:
    """HEST-Benchmark ridge probe per held-out slide (see module docstring). ``alpha="cv"``: standardise
    only and choose alpha per gene set by efficient leave-one-out CV on the training spots (RidgeCV over
    1e-1..1e5), a regularised read-out where HEST's fixed alpha, tiny for 256 features and 50 genes, is
    nearly least squares on a few hundred training spots."""
    from sklearn.linear_model import Ridge, RidgeCV

    emb = np.asarray(emb, dtype=np.float64)

    def predict(fold: Fold, genes: np.ndarray, y_tr: np.ndarray):
        if len(genes) == 0 or len(fold.train_idx) < 2:
            return "no variable genes or too few training spots"
        x_tr, x_te, used_pca = hest_features(emb[fold.train_idx], emb[fold.test_idx],
                                             pca_dim if alpha == "hest" else 10**9, seed)
        if alpha == "hest":
            reg = Ridge(alpha=100.0 / (x_tr.shape[1] * y_tr.shape[1]), solver="lsqr", fit_intercept=True,
                        max_iter=1000, random_state=seed)
        else:
            reg = RidgeCV(alphas=RIDGE_CV_ALPHAS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(x_tr, y_tr)
        alpha_used = float(reg.alpha_ if alpha == "cv" else reg.alpha)
        return reg.predict(x_te), lambda r: {"n_genes_constant_in_test": int(np.isnan(r).sum()), "alpha": alpha_used,
                                             "pca": used_pca, "n_features": int(x_tr.shape[1])}

    return _expression_folds(expr_log, slide_ids, gene_names, folds, n_genes, predict)


def _expression_folds(expr_log, slide_ids, gene_names, folds: list[Fold] | None, n_genes: int, predict) -> dict:
    """The expression read-outs' fold loop: the ``n_genes`` most variable training genes, ``predict(fold, genes,
    training targets)`` -> (test predictions, ``extras(per-gene r)`` -> the row's own fields) or a skip reason;
    mean Pearson and MSE per fold, and each fold's record (``_fold_record``) in ``folds``."""
    expr_log = np.asarray(expr_log, dtype=np.float64)
    gene_names = np.asarray(gene_names).astype(str)
    folds = folds if folds is not None else make_folds(slide_ids)
    arts = []

    def score(fold: Fold):
        genes = top_variable_genes(expr_log[fold.train_idx], n_genes)
        out = predict(fold, genes, expr_log[fold.train_idx][:, genes])
        if isinstance(out, str):
            return out
        y_hat, extras = out
        y_te = expr_log[fold.test_idx][:, genes]
        pm, mse, r = _fold_scores(y_te, y_hat)
        arts.append(_fold_record(fold, gene_names[genes], y_te, y_hat, r))
        return {"pearson_mean": pm, "mse": mse, "n_genes": int(len(genes)), **extras(r),
                "n_test": int(len(fold.test_idx))}

    return {**score_folds(folds, score, FOLD_METRICS), "folds": arts}


def _fold_record(fold: Fold, genes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, r: np.ndarray) -> dict:
    """A held-out fold's predictions, for figures and paired gains (``true`` / ``pred``: spots x genes)."""
    return {"fold": fold.name, "test_idx": fold.test_idx, "genes": genes.tolist(),
            "true": y_true.astype(np.float32), "pred": y_pred.astype(np.float32), "pearson": r}


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_cosine(query: np.ndarray, reference: np.ndarray, k: int, chunk: int = 4096):
    """(indices [nq, k], cosine [nq, k]) of the k most similar reference rows, most similar first."""
    q, r = _l2n(query), _l2n(reference)
    k = int(min(k, r.shape[0]))
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    sim = np.empty((q.shape[0], k), dtype=np.float32)
    for s in range(0, q.shape[0], chunk):
        block = q[s:s + chunk] @ r.T
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(block, part, axis=1)
        o = np.argsort(-ps, axis=1, kind="stable")
        idx[s:s + chunk] = np.take_along_axis(part, o, axis=1)
        sim[s:s + chunk] = np.take_along_axis(ps, o, axis=1)
    return idx, sim


def retrieval_imputation(query_emb: np.ndarray, reference_emb: np.ndarray, expr_log: np.ndarray,
                         slide_ids: np.ndarray, gene_names: np.ndarray, folds: list[Fold] | None = None,
                         k: int = 50, n_genes: int = HEST_N_GENES) -> dict:
    """BLEEP-style imputation per held-out slide: for each test spot, the weighted mean expression of
    the ``k`` training spots whose reference embedding is most cosine-similar to the query embedding
    (weights = positive similarities; uniform where none is positive). Same genes and metrics as
    :func:`hest_ridge`."""
    def predict(fold: Fold, genes: np.ndarray, y_tr: np.ndarray):
        if len(genes) == 0:
            return "no variable genes"
        idx, sim = topk_cosine(query_emb[fold.test_idx], reference_emb[fold.train_idx], k)
        w = np.clip(sim, 0, None).astype(np.float64)
        none = w.sum(axis=1) <= 0
        w[none] = 1.0
        w /= w.sum(axis=1, keepdims=True)
        return np.einsum("qk,qkg->qg", w, y_tr[idx]), lambda r: {"k": int(idx.shape[1])}

    return _expression_folds(expr_log, slide_ids, gene_names, folds, n_genes, predict)


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``): HEST ridge (fixed and CV alpha) and retrieval imputation;
    predictions are each read-out's held-out fold records (``_fold_record``)."""
    from ..embedding_file import MODALITY_IMAGE

    if ctx.expr_log is None:
        return "no expression counts in any source (h5ad X is empty)"
    if s.modality != MODALITY_IMAGE:
        return (f"{s.modality}-side embedding is computed from the expression it would predict; image "
                "embeddings only")
    slide_ids, genes = ctx.slide_ids[sel], ctx.expr_src.gene_names
    ridge = hest_ridge(emb, ctx.expr_log, slide_ids, genes, folds, seed=ctx.seed)
    ridge_cv = hest_ridge(emb, ctx.expr_log, slide_ids, genes, folds, seed=ctx.seed, alpha="cv")
    ref = gene_emb if gene_emb is not None else emb
    imp = retrieval_imputation(emb, ref, ctx.expr_log, slide_ids, genes, folds, k=ctx.impute_k)
    r = {"metrics": {"ridge_pearson": ridge["metrics"]["pearson_mean"], "ridge_mse": ridge["metrics"]["mse"],
                     "ridge_cv_pearson": ridge_cv["metrics"]["pearson_mean"],
                     "impute_pearson": imp["metrics"]["pearson_mean"], "impute_mse": imp["metrics"]["mse"]},
         "per_fold": {"ridge": ridge["per_fold"], "ridge_cv": ridge_cv["per_fold"], "impute": imp["per_fold"]},
         "impute_reference": "gene embedding" if gene_emb is not None else "image embedding"}
    return r, {"ridge": ridge.pop("folds"), "ridge_cv": ridge_cv.pop("folds"), "impute": imp.pop("folds")}
