"""The evaluation task registry: name -> runner + the facts ``evaluate_sources``, the CLI and the report read.

Light on purpose (no numpy import): the CLI builds its help from it. Runners are ``"module:function"`` under
``stamp_st.evaluation``, imported when a task runs, and are called as ``run(source, emb, gene_emb, folds, ctx,
sel)`` -> ``(result, predictions)`` or the reason the task was skipped (a string); ``ctx`` holds the labels,
slide ids, expression and settings (``tasks.TaskContext``). Adding a task is one runner and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EvalTask:
    name: str
    title: str  # the report's heading
    runner: str  # "module:function" under stamp_st.evaluation
    default: bool = True  # run when no --tasks are given
    per_slide: bool = False  # scored within each slide: a cross-validated source gives its held-out slide's rows
    # how a cross-validated source's per-fold predictions merge: "labels" (one label per spot), "clusters"
    # ({method: cluster per spot}), "examples" (retrieval examples), "expression", or None (no per-fold run)
    merge: str | None = "labels"

    def load_runner(self) -> Callable:
        module, func = self.runner.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), func)


EVAL_TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("probe", "Linear probe of spot labels (held-out slide)", "tasks:run_probe"),
    EvalTask("cluster", "Clustering vs labels (per slide)", "tasks:run_cluster", per_slide=True, merge="clusters"),
    EvalTask("expression", "Gene-expression prediction (held-out slide)", "tasks:run_expression",
             merge="expression"),
    EvalTask("retrieval", "Cross-modal retrieval (within slide)", "tasks:run_retrieval", per_slide=True,
             merge="examples"),
    EvalTask("mil", "Slide classification, gated ABMIL (cross-validated)", "tasks:run_mil", default=False, merge=None),
    EvalTask("knn", "k-NN label transfer (held-out slide)", "knn:run", default=False),
)}
