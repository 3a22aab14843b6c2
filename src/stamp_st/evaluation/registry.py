"""The evaluation task registry: name -> runner + every fact ``evaluate_sources``, the gains, the CLI and the
report read about a task. Adding a task is one runner and one entry here; nothing else names a task.

Light on purpose (no numpy import): the CLI builds its help from it. A runner (``"module:function"`` under
``stamp_st.evaluation``, imported when the task runs, or a callable) is called as ``run(source, emb, gene_emb,
folds, ctx, sel)`` and returns ``(result, predictions)`` or the reason the task cannot run on that source (a
string, shown in the results and the report). ``ctx`` holds the labels, slide ids, expression and settings
(``tasks.TaskContext``); ``sel`` the rows to use (all, or a held-out slide for a per-slide task).

``result`` is ``{"metrics": {name: stats.summarise(...)}, "per_fold": rows, ...}`` (``splits.score_folds``
builds both). ``predictions`` (or None) are indexed over all of the source's spots: a per-spot array (a label,
a cluster; "" or -1 where none), a list of per-fold records (``{"fold", "true", "pred", ...}``) or of examples
naming spot indices, or a dict of those.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass

# how a cross-validated source's per-fold results merge (``EvalTask.merge``)
MERGE_PREDICTIONS = "predictions"  # metrics over every fold, per-fold rows joined, predictions joined
MERGE_METRICS = "metrics"  # metrics and per-fold rows only: no predictions (so no gains and no figures)
MERGES = (MERGE_PREDICTIONS, MERGE_METRICS)


def resolve(ref: str | Callable) -> Callable:
    """A function given as itself or as ``"module:function"`` under ``stamp_st.evaluation`` (imported on use)."""
    if callable(ref):
        return ref
    module, func = ref.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)


@dataclass(frozen=True)
class Gain:
    """A gain-over-baseline row: ``metric`` (a key of the task's metrics), recomputed per held-out slide by
    ``statistic`` (a name in ``gains.STATISTICS``, ``"module:function"`` under ``stamp_st.evaluation``, or a
    callable ``(truth, prediction) -> float``) from the task's predictions (``predictions``: their key where
    they are a dict, "" for the predictions themselves), inside a paired bootstrap over the held-out spots. Per-spot predictions are compared with the spot labels;
    per-fold records carry their own truth."""

    metric: str
    statistic: str | Callable
    predictions: str = ""


@dataclass(frozen=True)
class EvalTask:
    name: str
    title: str  # the report's heading
    runner: str | Callable  # "module:function" under stamp_st.evaluation, or the function
    default: bool = True  # run when no --tasks are given
    per_slide: bool = False  # scored within each slide: a cross-validated source gives its held-out slide's rows
    # how a cross-validated source's per-fold results merge: MERGE_PREDICTIONS, MERGE_METRICS, or None where the
    # task needs one embedding for every slide at once (it then says so for such a source)
    merge: str | None = MERGE_PREDICTIONS
    gains: tuple[Gain, ...] = ()  # the rows of the gain-over-baseline table
    protocol: str = ""  # one line under the report's "Protocols"
    # what each metric means, for the report: (name or fnmatch pattern, text), first match wins
    metric_notes: tuple[tuple[str, str], ...] = ()
    # the report's figures of each source: "module:function" or the function, ``draw(source name, predictions,
    # report.FigurePage)`` -> HTML snippets; "" for none (the report still draws the task's metric bars)
    figures: str | Callable = ""

    def __post_init__(self):
        if self.merge is not None and self.merge not in MERGES:
            raise ValueError(f"evaluation task {self.name!r}: merge={self.merge!r}; choose from {MERGES} or None")

    def load(self, field: str) -> Callable:
        """The function a field names (``runner``, ``figures``)."""
        return resolve(getattr(self, field))

    def metric_note(self, metric: str) -> str | None:
        return next((text for pattern, text in self.metric_notes if fnmatch.fnmatchcase(metric, pattern)), None)


_LABEL_NOTES = (("balanced_accuracy", "mean recall over classes"), ("macro_f1", "unweighted mean F1 over classes"))

EVAL_TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("probe", "Linear probe of spot labels (held-out slide)", "probe:run",
             gains=(Gain("balanced_accuracy", "balanced_accuracy"),),
             protocol="Probe: standardise + class-balanced logistic regression fit on the training slides; test "
                      "spots whose label never occurs in training are excluded and counted.",
             metric_notes=_LABEL_NOTES),
    EvalTask("cluster", "Clustering vs labels (per slide)", "clustering:run", per_slide=True,
             gains=(Gain("kmeans_ari", "ari", predictions="kmeans"),),
             protocol="Clustering: per slide on labelled spots, top-50 PCs; k-means with k = labels in the "
                      "slide; Leiden on a 15-NN graph, resolution bisected to about k clusters.",
             metric_notes=(("kmeans_ari", "k-means, k = number of labels"),
                           ("leiden_ari", "Leiden at about k clusters"),
                           ("*_nmi", "normalised mutual information of the clusters with the labels")),
             figures="report:cluster_figures"),
    EvalTask("expression", "Gene-expression prediction (held-out slide)", "expression:run",
             gains=(Gain("ridge_pearson", "pearson", predictions="ridge"),
                    Gain("ridge_cv_pearson", "pearson", predictions="ridge_cv"),
                    Gain("impute_pearson", "pearson", predictions="impute")),
             protocol="Expression: HEST-Benchmark (standardise, PCA 256 fit on train when samples allow, ridge "
                      "alpha = 100/(features x genes), Pearson per gene on the 50 most variable training genes); "
                      "ridge_cv: the same genes, standardised features, alpha by leave-one-out CV on the training "
                      "spots; imputation: similarity-weighted mean of the top-k training spots (BLEEP). "
                      "Gene-side sources are not scored (their input is the target).",
             metric_notes=(("ridge_pearson", "HEST protocol: PCA256 + ridge, mean PCC over 50 most variable genes"),
                           ("ridge_cv_pearson", "ridge with alpha by leave-one-out CV, same genes"),
                           ("impute_pearson", "BLEEP-style top-k retrieval imputation"),
                           ("*_mse", "log1p CP10k, same genes")),
             figures="report:expression_figures"),
    EvalTask("retrieval", "Cross-modal retrieval (within slide)", "retrieval:run", per_slide=True,
             protocol="Retrieval: recall@k within each slide between image and gene embeddings; chance = k/n.",
             metric_notes=(("chance_R@*", "chance level of recall@k (k / spots in the slide)"),) + tuple(
                 (f"{d}_R@*", f"{d.replace('_', ' ')} retrieval within each slide: share of queries whose own "
                              "spot ranks in the top k") for d in ("image_to_gene", "gene_to_image")),
             figures="report:retrieval_figures"),
    EvalTask("mil", "Slide classification, gated ABMIL (cross-validated)", "mil:run", default=False, merge=None,
             protocol="MIL: gated attention MIL (Ilse et al. 2018), stratified k-fold over slides, AUC.",
             metric_notes=(("auc", "stratified k-fold over slides"),)),
    EvalTask("knn", "k-NN label transfer (held-out slide)", "knn:run", default=False,
             protocol="k-NN: majority label of the 15 most cosine-similar labelled training spots; test spots "
                      "whose label never occurs in training are excluded.",
             metric_notes=_LABEL_NOTES),
)}
