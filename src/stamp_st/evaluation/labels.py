"""Spot labels for evaluation: her2st expression-cluster labels (ST-cluster) and pathologist labels
(ST-pat), read through :mod:`stamp_st.readers.labels`, or any obs column of an embedding file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..embedding_file import EmbeddingSet
from ..errors import StampInputError

LABEL_KINDS = ("her2st-cluster", "her2st-pat")


def load_labels(spec: str, source: EmbeddingSet, her2st_root: str | Path | None = None) -> pd.Series:
    """Labels for every spot of ``source`` as a Series indexed by its keys (``<slide>/<spot>``); spots
    without a label are "". ``spec``: ``her2st-cluster``, ``her2st-pat`` or ``obs:COLUMN``."""
    keys = source.keys
    if spec.startswith("obs:"):
        col = spec[4:]
        if source.obs is None or col not in source.obs:
            have = [] if source.obs is None else list(source.obs.columns)
            raise StampInputError(f"obs column {col!r} not found (have {have})", source.source_path or None,
                                  hint="pass --labels obs:COLUMN with an existing column")
        vals = source.obs[col].astype(object).where(source.obs[col].notna(), "").astype(str).to_numpy()
        return pd.Series(vals, index=keys)
    if spec not in LABEL_KINDS:
        raise StampInputError(f"unknown label source {spec!r}", hint=f"use one of {LABEL_KINDS} or obs:COLUMN")
    try:
        from ..readers import labels as rl
    except ImportError as err:
        raise StampInputError("the her2st label reader (stamp_st.readers.labels) is not available",
                              hint="update stamp-st, or pass labels as an obs column (obs:COLUMN)") from err
    from ..paths import her2st_dir

    root = Path(her2st_root) if her2st_root else her2st_dir()
    if not root.is_dir():
        from ..errors import not_a_file

        raise StampInputError(f"the her2st label root is {not_a_file(root).replace('a regular file', 'a file')}",
                              root, hint="pass --her2st-root with the her2st folder (holding ST-cluster/ and ST-pat/)")
    fn = rl.her2st_cluster_labels if spec == "her2st-cluster" else rl.her2st_pathologist_labels
    out = np.full(len(source), "", dtype=object)
    for sl in dict.fromkeys(source.slide_ids.tolist()):
        idx = np.flatnonzero(source.slide_ids == sl)
        try:
            lab = fn(root, sl)
        except StampInputError as err:
            if err.path is not None and not err.path.exists():
                continue  # this section has no labels of that kind (ST-pat: one section per patient)
            raise
        lab = lab.astype(object).where(lab.notna(), "").astype(str)
        out[idx] = lab.reindex(source.spot_ids[idx]).fillna("").to_numpy()
    if not (out != "").any():
        raise StampInputError(f"--labels {spec}: no spot of the {len(dict.fromkeys(source.slide_ids.tolist()))} "
                              f"slide(s) has a label under this root", root,
                              hint="check --her2st-root and that the embedding's slide ids are her2st section "
                                   "ids (e.g. A1, B1)")
    return pd.Series(out.astype(str), index=keys)
