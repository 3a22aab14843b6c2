"""Synthetic slides and a small corpus build configuration, shared by the corpus, alignment and bad-input tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stamp_st.corpus.build import BuildConfig

N_GENES = 60
GRID = 8  # 8 x 8 square grid -> 64 spots per slide
PITCH_PX = 40.0


def synthetic_vocab(tmp: Path) -> Path:
    from stamp_st.preprocessing.vocab import GeneVocabulary

    ids = tuple(f"ENSG{i:011d}" for i in range(N_GENES + 10))  # 10 vocabulary genes absent from the data
    v = GeneVocabulary(ids, np.linspace(1.0, 3.0, len(ids)), tuple(f"G{i}" for i in range(len(ids))))
    p = tmp / "vocab.tsv"
    v.write_tsv(p)
    return p


def synthetic_slide(tmp: Path, name: str, seed: int, image: bool = True) -> dict:
    """A synthetic Visium-like h5ad: counts with a few low-count and off-tissue spots, and an H&E-like PNG."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    r, c = r.ravel(), c.ravel()
    n = len(r)
    X = rng.poisson(rng.gamma(1.0, 4.0, size=(1, N_GENES)), size=(n, N_GENES)).astype(np.float32)
    X[:3] = 0
    X[:3, :2] = 1  # 3 spots under min_counts
    in_tissue = np.ones(n, bool)
    in_tissue[3:5] = False
    obs = pd.DataFrame({"array_row": r, "array_col": c, "in_tissue": in_tissue},
                       index=[f"{name}_s{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(N_GENES)])
    a = ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)
    xy = np.stack([c * PITCH_PX + 30.0, r * PITCH_PX + 30.0], axis=1)
    xy[-1] = [2.0, 2.0]  # its patch lies mostly off the image
    a.obsm["spatial"] = xy
    p = tmp / f"{name}.h5ad"
    a.write_h5ad(p)
    row = {"path": str(p), "format": "h5ad", "slide_id": name, "um_per_px": 1.0, "split": "train"}
    if image:
        side = int(GRID * PITCH_PX + 60)
        img = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
        ip = tmp / f"{name}.png"
        Image.fromarray(img).save(ip)
        row["image_path"] = str(ip)
    return row


def small_build_config(vocab: Path, kind: str, **kw) -> BuildConfig:
    from stamp_st.corpus.build import BuildConfig
    from stamp_st.corpus.qc import QCConfig

    base = dict(kind=kind, vocab_path=str(vocab), context=32, patch_um=20.0, out_px=16, thumb_px=4,
                qc=QCConfig(min_counts=10, min_genes=3), seed=7, shard_size=20, chunk_spots=8)
    base.update(kw)
    return BuildConfig(**base)


def small_corpus(src: Path, out: Path, kind: str, n_slides: int = 2, image: bool = True,
                 last_in_val: bool = False) -> list[dict]:
    """``n_slides`` synthetic slides (S0, S1, ...; vocabulary and slides written under ``src``) built into a
    ``kind`` corpus at ``out`` with ``small_build_config``; the last slide in the val split if ``last_in_val``.
    Returns the slides' sample rows."""
    from stamp_st.corpus.build import build_corpus
    from stamp_st.corpus.samples import entries_from_records

    rows = [synthetic_slide(src, f"S{i}", seed=i, image=image) for i in range(n_slides)]
    if last_in_val:
        rows[-1]["split"] = "val"
    build_corpus(entries_from_records(rows), out, small_build_config(synthetic_vocab(src), kind), workers=1,
                 processes=False, progress=False)
    return rows
