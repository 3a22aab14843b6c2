"""Visium HD binned outputs (Space Ranger >= 3: binned_outputs/square_016um|square_008um with
tissue_positions.parquet) read as spots on a square grid with the bin size as pitch and Space Ranger's
microns_per_pixel as pixel size. The fixture is built here, in Space Ranger's layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

UM_PER_PX = 0.2738
GENES = [("ENSG00000141736", "ERBB2"), ("ENSG00000091831", "ESR1"), ("ENSG00000186081", "KRT5")]


def _write_10x_h5(path, barcodes, counts):
    """A feature-barcode matrix in the 10x HDF5 (v3) layout: CSC, features x barcodes."""
    import scipy.sparse as sp

    m = sp.csc_matrix(counts.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        feats = g.create_group("features")
        feats["id"] = np.array([i for i, _ in GENES], dtype="S")
        feats["name"] = np.array([n for _, n in GENES], dtype="S")
        feats["feature_type"] = np.array([b"Gene Expression"] * len(GENES))
        feats["genome"] = np.array([b"GRCh38"] * len(GENES))
        f.attrs["software_version"] = "spaceranger-3.1.1"


def _bin_folder(outs, bin_um, n_rows, n_cols, keep_every=1):
    folder = outs / "binned_outputs" / f"square_{bin_um:03d}um"
    (folder / "spatial").mkdir(parents=True)
    pitch_px = bin_um / UM_PER_PX
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": (cols % 7 != 0).astype(int), "array_row": rows,
                        "array_col": cols, "pxl_row_in_fullres": 500 + rows * pitch_px + 0.3,
                        "pxl_col_in_fullres": 800 + cols * pitch_px - 0.2})
    pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": pitch_px, "bin_size_um": float(bin_um), "microns_per_pixel": UM_PER_PX,
        "tissue_lowres_scalef": 0.01, "tissue_hires_scalef": 0.05, "fiducial_diameter_fullres": 500.0,
        "regist_target_img_scalef": 0.2}))
    kept = pos[pos["in_tissue"] == 1].iloc[::keep_every]  # the filtered matrix: tissue bins only
    rng = np.random.default_rng(bin_um)
    _write_10x_h5(folder / "filtered_feature_bc_matrix.h5", kept["barcode"].tolist(),
                  rng.poisson(2.0, size=(len(kept), len(GENES))))
    return folder, kept


@pytest.fixture(scope="module")
def hd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("hd") / "sampleHD"
    outs = run / "outs"
    _, kept16 = _bin_folder(outs, 16, 12, 14)
    _, kept8 = _bin_folder(outs, 8, 24, 28, keep_every=2)
    return run, kept16, kept8


def test_16um_bins_read_as_spots_with_bin_pitch_and_pixel_size(hd_run):
    from stamp_st.readers import detect_format, read_sample

    run, kept16, _ = hd_run
    for path in (run, run / "outs", run / "outs" / "binned_outputs" / "square_016um"):
        assert detect_format(path) == "spaceranger"
    a = read_sample(run / "outs")
    meta = a.uns["stamp_st"]
    assert a.n_obs == len(kept16) and list(a.obs_names) == kept16["barcode"].tolist()
    assert meta["grid"] == "square" and meta["spot_pitch_um"] == 16.0 and meta["spot_diameter_um"] == 16.0
    assert meta["um_per_px"] == pytest.approx(UM_PER_PX) and meta["um_per_px_source"] == "metadata"
    # the grid agrees with Space Ranger's pixel size
    assert meta["qc"]["um_per_px_from_spot_pitch"] == pytest.approx(UM_PER_PX, rel=1e-3)
    np.testing.assert_allclose(a.obsm["spatial"][:, 0], kept16["pxl_col_in_fullres"].to_numpy())  # x = column
    np.testing.assert_allclose(a.obsm["spatial"][:, 1], kept16["pxl_row_in_fullres"].to_numpy())
    assert list(a.var["gene_ids"]) == [i for i, _ in GENES]
    assert meta["sample_id"] == "sampleHD_square_016um"


def test_8um_bins_by_their_folder(hd_run):
    from stamp_st.readers import read_sample

    run, _, kept8 = hd_run
    a = read_sample(run / "outs" / "binned_outputs" / "square_008um")
    meta = a.uns["stamp_st"]
    assert a.n_obs == len(kept8) and meta["spot_pitch_um"] == 8.0
    assert meta["qc"]["um_per_px_from_spot_pitch"] == pytest.approx(UM_PER_PX, rel=1e-3)


def test_spot_groups_use_the_square_grid(hd_run):
    from stamp_st.preprocessing.groups import spatial_groups
    from stamp_st.readers import read_sample

    run, _, _ = hd_run
    a = read_sample(run / "outs")
    groups = spatial_groups(a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy(), "square")
    assert len(groups) > 0 and (groups[:, 0] >= 0).all()
