"""The embedding file's own record lives in uns["stamp_st_embedding"], the sample's in uns["stamp_st"]; files
written before (the embedding record inside uns["stamp_st"]) still read."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stamp_st.embedding_file import (
    OBSM_STAMP_V,
    UNS_EMBEDDING,
    embedding_record,
    read_embedding_h5ad,
    write_embedding_h5ad,
)
from stamp_st.readers import SampleMeta


def test_the_embedding_record_and_the_sample_record_have_their_own_keys(tmp_path):
    rng = np.random.default_rng(0)
    meta = SampleMeta(sample_id="S1", technology="h5ad", image_path=str(tmp_path / "he.tif"), slide_um_per_px=0.5,
                      slide_um_per_px_source="user")
    path = write_embedding_h5ad(tmp_path / "e.h5ad", {OBSM_STAMP_V: rng.normal(size=(4, 3))}, ["S1"] * 4,
                                ["a", "b", "c", "d"], image_paths={"S1": meta.image_path},
                                record={"model": "toy", "notes": ["one"]}, sample=meta)
    a = ad.read_h5ad(path)
    rec = a.uns[UNS_EMBEDDING]
    assert rec["model"] == "toy" and list(rec["notes"]) == ["one"] and rec["image_paths"] == {"S1": meta.image_path}
    assert SampleMeta.of(a) == meta and "model" not in a.uns["stamp_st"]  # the sample's record, nothing else
    s = read_embedding_h5ad(path)
    assert s.image_paths == {"S1": meta.image_path} and s.emb.shape == (4, 3)


def test_a_file_written_before_reads_its_record_from_uns_stamp_st(tmp_path):
    """An embedding file of an earlier version: image paths, patches and the model inside uns["stamp_st"]."""
    rng = np.random.default_rng(1)
    n = 5
    a = ad.AnnData(X=sp.csr_matrix((n, 0), dtype=np.float32),
                   obs=pd.DataFrame({"slide_id": ["B1"] * n, "spot_id": [f"s{i}" for i in range(n)]},
                                    index=[f"B1/s{i}" for i in range(n)]))
    a.obsm[OBSM_STAMP_V] = rng.normal(size=(n, 6)).astype(np.float32)
    a.uns["stamp_st"] = {"image_paths": {"B1": "b1.tif"}, "image_path": "b1.tif", "model": "run", "um_per_px": 0.0,
                         "patches": rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8)}
    a.write_h5ad(tmp_path / "old.h5ad")
    back = ad.read_h5ad(tmp_path / "old.h5ad")
    assert embedding_record(back)["model"] == "run"
    s = read_embedding_h5ad(tmp_path / "old.h5ad")
    assert s.image_paths == {"B1": "b1.tif"} and s.patches.shape == (n, 4, 4, 3)


def test_a_sample_file_with_an_embedding_names_its_slide_and_image(tmp_path):
    """A sample AnnData (the readers' record in uns["stamp_st"]) with an obsm embedding and no obs['slide_id']."""
    n = 3
    a = ad.AnnData(X=sp.csr_matrix(np.ones((n, 2), np.float32)), obs=pd.DataFrame(index=["x", "y", "z"]),
                   var=pd.DataFrame(index=["G1", "G2"]))
    a.obsm["X_mine"] = np.eye(n, 4, dtype=np.float32)
    SampleMeta(sample_id="TENX1", image_path="slide.svs").store(a)
    a.write_h5ad(tmp_path / "sample.h5ad")
    s = read_embedding_h5ad(tmp_path / "sample.h5ad")
    assert set(s.slide_ids) == {"TENX1"} and s.image_paths == {"TENX1": "slide.svs"}
    assert s.name.endswith("X_mine") and s.counts.shape == (n, 2)
