"""The embedding sources of an evaluation: ``FILE.h5ad[:KEY]`` / ``FILE.h5`` specs read through the embedding
file format (``stamp_st.embedding_file``), the raw-expression baseline (``:expr-pca``), sources stacked from one
file per slide, and every source narrowed to the spots all of them share."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..embedding_file import MODALITY_GENE, EmbeddingSet, read_embedding_h5ad, read_trident_h5
from ..errors import StampInputError, require_file

EXPR_PCA_KEY = "expr-pca"  # pseudo key: PCA of the file's own log1p CP10k expression


# ------------------------------------------------------------------ expression helpers
def log1p_cp10k(counts) -> np.ndarray:
    """log1p of counts scaled to 10,000 per spot (dense float32): the usual target of ST prediction."""
    import scipy.sparse as sp

    from ..preprocessing.tokenizer import TARGET_SUM

    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = x.astype(np.float64)
    tot = x.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    return np.log1p(x / tot * TARGET_SUM).astype(np.float32)


def raw_expression_pca(counts, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """The gene-side baseline: PCA(n_comps) of log1p CP10k expression (unsupervised; labels unused)."""
    from sklearn.decomposition import PCA

    x = log1p_cp10k(counts)
    keep = x.var(axis=0) > 0
    x = x[:, keep]
    k = int(min(n_comps, x.shape[0] - 1, x.shape[1]))
    if k < 1:
        raise StampInputError("too few spots or expressed genes for an expression PCA")
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)


def expression_pca_source(base: EmbeddingSet, name: str = "expression PCA", n_comps: int = 50) -> EmbeddingSet:
    """An :class:`EmbeddingSet` of raw-expression PCA over the spots of ``base`` (needs its counts)."""
    if base.counts is None:
        raise StampInputError(f"source {base.name!r} carries no expression counts for an expression PCA",
                              base.source_path or None, hint="write counts into the h5ad X")
    return replace(base, name=name, emb=raw_expression_pca(base.counts, n_comps), modality=MODALITY_GENE,
                   gene_emb=None, fold_emb=None, fold_gene_emb=None)


# ------------------------------------------------------------------ source specs
def parse_source_spec(spec: str) -> tuple[Path, str | None]:
    """``file.h5ad[:OBSM_KEY]`` -> (path, key or None)."""
    path, sep, key = spec.rpartition(":")
    if sep and path and key and not key.startswith(("/", "\\")) and not Path(spec).exists():
        return Path(path), key
    return Path(spec), None


def read_source(spec: str, name: str | None = None) -> EmbeddingSet:
    """Read ``file.h5ad[:KEY]`` (``:expr-pca``: a PCA of the file's expression) or ``file.h5`` (TRIDENT-style) by
    extension; ``a.h5ad,b.h5ad[:KEY]`` (comma-separated, e.g. one file per slide) reads each with the same key and
    stacks them."""
    if "," in spec:
        files, _, key = spec.rpartition(":") if parse_source_spec(spec)[1] else (spec, "", "")
        parts = [read_source(f"{f}:{key}" if key else f) for f in files.split(",") if f]
        return concat_sets(parts, name=name or parts[0].name)
    path, key = parse_source_spec(spec)
    require_file(path, "embedding file", hint="give an .h5ad written by `stamp-st embed` or a TRIDENT-style .h5")
    if path.suffix == ".h5ad":
        return read_embedding_h5ad(path, key, name, from_counts=raw_expression_pca if key == EXPR_PCA_KEY else None)
    if path.suffix in (".h5", ".hdf5"):
        return read_trident_h5(path, name)
    raise StampInputError("unknown embedding file type", path, hint="give an .h5ad or a TRIDENT-style .h5")


def concat_sets(sets: Sequence[EmbeddingSet], name: str | None = None) -> EmbeddingSet:
    """Stack sources of different slides (e.g. one TRIDENT file per slide) into one source."""
    if not sets:
        raise StampInputError("no embedding sets to concatenate")
    first = sets[0]

    def cat(attr):
        vals = [getattr(s, attr) for s in sets]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    paths: dict[str, str] = {}
    for s in sets:
        paths.update(s.image_paths)
    counts = genes = None
    if all(s.counts is not None and s.gene_names is not None for s in sets):
        import scipy.sparse as sp

        # genes measured in every slide only: a gene missing from one slide would read as zero there
        genes = [g for g in dict.fromkeys(first.gene_names.tolist())
                 if all(g in set(s.gene_names.tolist()) for s in sets[1:])]
        counts = sp.vstack([sp.csr_matrix(s.counts)[:, pd.Index(s.gene_names).get_indexer(genes)]
                            for s in sets]).tocsr()
        genes = np.asarray(genes)
    obs = None
    if all(s.obs is not None for s in sets):
        obs = pd.concat([s.obs for s in sets], axis=0, ignore_index=True)
    patches = cat("patches") if all(s.patches is not None and s.patches.shape[1:] == first.patches.shape[1:]
                                    for s in sets) else None
    return EmbeddingSet(name=name or first.name, emb=cat("emb"), slide_ids=cat("slide_ids"),
                        spot_ids=cat("spot_ids"), xy_px=cat("xy_px"), modality=first.modality,
                        gene_emb=cat("gene_emb"), counts=counts, gene_names=genes, obs=obs,
                        image_paths=paths, patches=patches, source_path=",".join(s.source_path for s in sets))


def align_sources(sources: Mapping[str, EmbeddingSet], notes: list | None = None) -> dict[str, EmbeddingSet]:
    """Restrict every source to the spots all of them share, in one common order, so that metrics
    compare like with like."""
    if not sources:
        raise StampInputError("no embedding sources given")
    items = list(sources.items())
    for name, s in items:
        if len(set(s.keys.tolist())) != len(s):
            raise StampInputError(f"source {name!r} has duplicate (slide_id, spot_id) pairs",
                                  s.source_path or None, hint="spot ids must be unique within a slide")
    common = set(items[0][1].keys.tolist())
    for _, s in items[1:]:
        common &= set(s.keys.tolist())
    if not common:
        raise StampInputError("the embedding sources share no spots",
                              hint="check that obs['slide_id'] and spot ids agree between files")
    order = [k for k in items[0][1].keys.tolist() if k in common]
    for name, s in items:  # nothing narrowed without a word: say how many spots each source loses
        if len(s) > len(order):
            msg = (f"source {name!r} ({s.source_path or 'in memory'}): {len(s) - len(order)} of {len(s)} spots "
                   f"are not in every source and are left out; {len(order)} common spots are evaluated")
            warnings.warn(msg, stacklevel=2)
            if notes is not None:
                notes.append(msg)
    out = {}
    for name, s in items:
        pos = pd.Index(s.keys).get_indexer(order)
        out[name] = s.subset(pos)
    return out
