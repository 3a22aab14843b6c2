"""The spot `.h5ad` that `embed` writes is scanpy-ready: sc.pl.spatial draws it over its H&E,
sc.pp.neighbors runs on an embedding, gene ids and grid coordinates travel."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


def _visium_like(tmp_path, n_side=5, pitch_px=100.0):
    """A small square grid of spots over a tiled TIFF (0.5 µm/px), as a plain .h5ad sample."""
    rng = np.random.default_rng(0)
    img = np.full((800, 1000, 3), 235, np.uint8)
    img[100:700, 150:850] = (rng.integers(90, 200, size=(600, 700, 3)) * np.array([1, 0.5, 1])).astype(np.uint8)
    tifffile.imwrite(tmp_path / "he.tif", img, photometric="rgb", tile=(256, 256))
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    xy = np.column_stack([250 + cols.ravel() * pitch_px, 200 + rows.ravel() * pitch_px])
    n = len(xy)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(3.0, size=(n, 4)).astype(np.float32)),
                   obs=pd.DataFrame({"array_row": rows.ravel(), "array_col": cols.ravel(),
                                     "in_tissue": np.ones(n, int)}, index=[f"spot{i}" for i in range(n)]),
                   var=pd.DataFrame({"gene_ids": [f"ENSG0000000000{i}" for i in range(4)]},
                                    index=["ERBB2", "ESR1", "KRT5", "CD3E"]))
    a.obsm["spatial"] = xy.astype(np.float64)
    a.write_h5ad(tmp_path / "sample.h5ad")
    return tmp_path / "sample.h5ad", tmp_path / "he.tif", xy


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from stamp_st.cli import main

    tmp = tmp_path_factory.mktemp("scanpy")
    sample, image, xy = _visium_like(tmp)
    out = tmp / "emb.h5ad"
    rc = main(["embed", "backbone:efficientnet_lite0", str(sample), "--image", str(image), "--um-per-px", "0.5",
               "--out", str(out), "--device", "cpu", "--batch-size", "25"])
    assert rc == 0
    return out, xy


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scanpy points to squidpy
def test_sc_pl_spatial_draws_the_embedding_over_the_he(embedded):
    import matplotlib.pyplot as plt
    import scanpy as sc
    from matplotlib.image import AxesImage

    path, xy = embedded
    adata = sc.read_h5ad(path)
    lib = "sample"
    assert list(adata.uns["spatial"]) == [lib]
    sf = adata.uns["spatial"][lib]["scalefactors"]
    hires = adata.uns["spatial"][lib]["images"]["hires"]
    assert hires.shape[:2] == (800, 1000) and sf["tissue_hires_scalef"] == pytest.approx(1.0)
    assert adata.uns["spatial"][lib]["images"]["lowres"].shape[1] == 600
    assert sf["spot_diameter_fullres"] == pytest.approx(100 / 0.5)  # a square grid reads as legacy ST: 100 µm spots
    adata.obs["emb0"] = adata.obsm["X_backbone"][:, 0]
    axes = sc.pl.spatial(adata, color=["emb0", "array_row"], library_id=lib, show=False)
    images = [c for c in axes[0].get_children() if isinstance(c, AxesImage)]
    assert images and images[0].get_array().shape[:2] == hires.shape[:2]
    # the spots sit where the image shows them: scanpy scales full-res coords by the hires scale factor
    np.testing.assert_allclose(adata.obsm["spatial"], xy)
    plt.close("all")


def test_neighbors_and_metadata_travel(embedded):
    import scanpy as sc

    path, _ = embedded
    adata = sc.read_h5ad(path)
    sc.pp.neighbors(adata, use_rep="X_backbone", n_neighbors=5)
    assert adata.obsp["connectivities"].shape == (25, 25)
    assert list(adata.var["gene_ids"])[:2] == ["ENSG00000000000", "ENSG00000000001"]
    assert {"array_row", "array_col", "in_tissue"} <= set(adata.obs.columns)
    assert adata.obs["in_tissue"].astype(bool).all() and adata.obs["array_col"].max() == 4


def test_a_sample_with_scanpy_images_keeps_them():
    from stamp_st.inference.scanpy_uns import spatial_uns

    a = ad.AnnData(X=np.zeros((2, 1), np.float32))
    a.obsm["spatial"] = np.zeros((2, 2))
    img = np.zeros((20, 30, 3), np.uint8)
    a.uns["spatial"] = {"V1": {"images": {"hires": img},
                               "scalefactors": {"tissue_hires_scalef": 0.1, "spot_diameter_fullres": 89.0}}}
    a.uns["stamp_st"] = {}
    out = spatial_uns(a, "S1")
    assert list(out) == ["S1"] and out["S1"]["images"]["hires"] is img
    assert out["S1"]["scalefactors"]["spot_diameter_fullres"] == 89.0
