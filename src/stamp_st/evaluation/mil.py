"""Slide-level classification from bags of tile/spot embeddings with gated attention MIL (ABMIL,
Ilse et al., ICML 2018), cross-validated AUC over stratified folds of slides."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .splits import Fold, score_folds


def _build_abmil(in_dim: int, hidden: int, attn: int, dropout: float):
    import torch
    from torch import nn

    class GatedABMIL(nn.Module):
        """h = MLP(x); a = softmax(w^T (tanh(V h) * sigmoid(U h))); logit = c^T sum_i a_i h_i."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.attn_v = nn.Linear(hidden, attn)
            self.attn_u = nn.Linear(hidden, attn)
            self.attn_w = nn.Linear(attn, 1)
            self.classifier = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [n, d]
            h = self.fc(x)
            a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
            a = torch.softmax(a, dim=0)
            return self.classifier(a @ h).squeeze(-1), a

    return GatedABMIL()


def train_abmil(bags: Sequence[np.ndarray], y: np.ndarray, epochs: int = 40, lr: float = 5e-4,
                weight_decay: float = 1e-4, hidden: int = 128, attn: int = 64, dropout: float = 0.1,
                seed: int = 0):
    """Train one gated ABMIL (binary) on ``bags`` (list of [n_i, d]); returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = _build_abmil(bags[0].shape[1], hidden, attn, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    xs = [torch.as_tensor(np.asarray(b, dtype=np.float32)) for b in bags]
    ys = torch.as_tensor(np.asarray(y, dtype=np.float32))
    pos = float(ys.sum())
    pos_weight = torch.tensor((len(ys) - pos) / max(pos, 1.0))  # balance classes
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for i in rng.permutation(len(xs)):
            logit, _ = model(xs[i])
            loss = loss_fn(logit, ys[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def predict_abmil(model, bags: Sequence[np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.array([float(torch.sigmoid(model(torch.as_tensor(np.asarray(b, dtype=np.float32)))[0]))
                         for b in bags])


def abmil_cv(bags: Sequence[np.ndarray], y: Sequence, n_splits: int = 5, seed: int = 0, **train_kw) -> dict:
    """Stratified k-fold over bags: train ABMIL on k-1 folds, AUC on the held-out fold; mean [95%
    t-interval] over folds. ``y`` is binary (0/1 or two distinct values)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2:
        return {"metrics": {}, "per_fold": [], "skipped": f"ABMIL needs 2 slide classes, got {len(classes)}"}
    yb = (y == classes[1]).astype(np.int64)
    n_splits = int(min(n_splits, np.bincount(yb).min()))
    if n_splits < 2:
        return {"metrics": {}, "per_fold": [], "skipped": "fewer than 2 slides in the minority class"}
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [Fold(f"fold{i}", tr, te) for i, (tr, te) in enumerate(skf.split(np.zeros(len(yb)), yb))]
    order = {f.name: i for i, f in enumerate(folds)}  # each fold's model gets its own seed

    def score(fold: Fold):
        model = train_abmil([bags[j] for j in fold.train_idx], yb[fold.train_idx], seed=seed + order[fold.name], **train_kw)
        p = predict_abmil(model, [bags[j] for j in fold.test_idx])
        return {"auc": float(roc_auc_score(yb[fold.test_idx], p)), "n_test": int(len(fold.test_idx))}

    return {**score_folds(folds, score, ("auc",)), "positive_class": str(classes[1])}


def bags_by_slide(emb: np.ndarray, slide_ids: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Group spot/tile embeddings into one bag per slide (in first-seen order)."""
    slide_ids = np.asarray(slide_ids).astype(str)
    names = list(dict.fromkeys(slide_ids.tolist()))
    return names, [np.asarray(emb[slide_ids == s], dtype=np.float32) for s in names]


def run(s, emb, gene_emb, folds, ctx, sel):
    """Registry runner (``evaluation.registry``): ABMIL over the slides' bags, no per-spot predictions."""
    if not ctx.slide_labels:
        return "no slide labels given"
    bag_names, bags = bags_by_slide(emb, ctx.slide_ids[sel])
    keep = [i for i, b in enumerate(bag_names) if b in ctx.slide_labels]
    r = abmil_cv([bags[i] for i in keep], [ctx.slide_labels[bag_names[i]] for i in keep], seed=ctx.seed)
    return r["skipped"] if "skipped" in r else (r, None)
