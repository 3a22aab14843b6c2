"""Readers: every format gives the sample contract; every bad input gives an actionable StampInputError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stamp_st.errors import DataNotFoundError, StampInputError
from stamp_st.readers import detect_format, her2st_sections, read_sample

SR_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


# ----------------------------------------------------------------------------- helpers
def assert_contract(a, fmt):
    assert sp.isspmatrix_csr(a.X) or isinstance(a.X, sp.csr_matrix)
    assert a.X.dtype == np.float32 and (a.X.data >= 0).all() and np.all(a.X.data == np.round(a.X.data))
    assert a.obs_names.is_unique and a.var_names.is_unique
    for c in ("array_row", "array_col", "in_tissue"):
        assert c in a.obs
    assert a.obs["in_tissue"].dtype == bool
    assert "gene_ids" in a.var
    xy = a.obsm["spatial"]
    assert xy.dtype == np.float64 and xy.shape == (a.n_obs, 2)
    m = a.uns["stamp_st"]
    assert m["format"] == fmt
    for k in ("sample_id", "source_path", "image_path", "image_size_px", "um_per_px", "um_per_px_source", "grid",
              "spot_pitch_um", "spot_diameter_um"):
        assert k in m
    assert m["um_per_px_source"] in ("metadata", "spot_pitch", "spot_diameter", "user", "none")
    assert m["grid"] in ("hex", "square")


def median_neighbour_px(df, row, col, x, y, step):
    """Independent pitch computation: join each spot with the spot `step` columns to its right."""
    right = df[[row, col, x, y]].copy()
    right[col] = right[col] - step
    m = df.merge(right, on=[row, col], suffixes=("", "_r"))
    return float(np.median(np.hypot(m[x] - m[x + "_r"], m[y] - m[y + "_r"])))


def copy_visium(src, dst):
    shutil.copytree(src, dst)
    return dst


def write_v2(outs):
    """Space Ranger >= 2.0 layout: tissue_positions.csv with a header replaces tissue_positions_list.csv."""
    old = outs / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(old, header=None, names=SR_COLS)
    df.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    old.unlink()


# ----------------------------------------------------------------------------- Space Ranger
def test_spaceranger_v1_contract_and_pitch(visium_dir):
    a = read_sample(visium_dir)
    assert_contract(a, "spaceranger")
    assert a.shape == (100, 100)
    pos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None, names=SR_COLS)
    pos = pos.set_index("barcode").loc[a.obs_names]
    np.testing.assert_array_equal(a.obsm["spatial"][:, 0], pos["pxl_col_in_fullres"])
    np.testing.assert_array_equal(a.obsm["spatial"][:, 1], pos["pxl_row_in_fullres"])
    np.testing.assert_array_equal(a.obs["array_row"], pos["array_row"])
    m = a.uns["stamp_st"]
    assert m["grid"] == "hex" and m["spot_pitch_um"] == 100 and m["spot_diameter_um"] == 55
    allpos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None, names=SR_COLS)
    d = median_neighbour_px(allpos, "array_row", "array_col", "pxl_col_in_fullres", "pxl_row_in_fullres", 2)
    assert m["um_per_px_source"] == "spot_pitch"
    assert m["um_per_px"] == pytest.approx(100.0 / d)
    sf = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    lib = a.uns["spatial"][m["sample_id"]]
    assert lib["scalefactors"] == sf
    assert lib["images"]["lowres"].shape[:2] == (600, 600)
    assert m["qc"]["um_per_px_from_spot_diameter"] == pytest.approx(55.0 / sf["spot_diameter_fullres"])


def test_spaceranger_v2_layout_gives_same_sample(visium_dir, tmp_path):
    a = read_sample(visium_dir)
    outs = copy_visium(visium_dir, tmp_path / "v2")
    write_v2(outs)
    b = read_sample(outs)
    assert b.uns["stamp_st"]["qc"]["positions_file"] == "tissue_positions.csv"
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    for k in ("um_per_px", "um_per_px_source", "grid", "image_size_px"):
        assert a.uns["stamp_st"][k] == b.uns["stamp_st"][k]
    # the folder above outs/ and the h5 file itself are accepted too
    (tmp_path / "run").mkdir()
    shutil.move(str(outs), tmp_path / "run" / "outs")
    assert read_sample(tmp_path / "run").n_obs == 100


def test_user_pixel_size_wins_and_is_validated(visium_dir):
    a = read_sample(visium_dir, um_per_px=0.5)
    assert a.uns["stamp_st"]["um_per_px"] == 0.5 and a.uns["stamp_st"]["um_per_px_source"] == "user"
    with pytest.raises(StampInputError, match="positive"):
        read_sample(visium_dir, um_per_px=-1)


def test_spaceranger_missing_files(visium_dir, tmp_path):
    outs = copy_visium(visium_dir, tmp_path / "o")
    (outs / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(DataNotFoundError, match="scalefactors_json.json"):
        read_sample(outs, format="spaceranger")
    (outs / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(DataNotFoundError, match="positions"):
        read_sample(outs, format="spaceranger")


def test_spaceranger_barcodes_do_not_match(visium_dir, tmp_path):
    outs = copy_visium(visium_dir, tmp_path / "o")
    p = outs / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(p, header=None, names=SR_COLS)
    df["barcode"] = df["barcode"].str.replace("-1", "-2")
    df.to_csv(p, header=False, index=False)
    with pytest.raises(StampInputError, match="0 of 100 counts spots have a position") as e:
        read_sample(outs)
    assert "What to do" in str(e.value) and "tissue_positions_list.csv" in str(e.value)


def test_spaceranger_swapped_gene_columns(visium_dir, tmp_path):
    import h5py

    outs = copy_visium(visium_dir, tmp_path / "o")
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "r+") as f:
        g = f["matrix/features"]
        n = len(g["id"])
        del g["id"]
        g.create_dataset("id", data=np.array([f"GENE{i}".encode() for i in range(n)]))
    with pytest.raises(StampInputError, match="swapped"):
        read_sample(outs)


def test_lowres_image_given_as_fullres(visium_dir):
    with pytest.raises(StampInputError, match="downscaled") as e:
        read_sample(visium_dir, image_path=visium_dir / "spatial" / "tissue_lowres_image.png")
    assert "tissue_lowres_image.png" in str(e.value)


# ----------------------------------------------------------------------------- generic h5ad and image checks
def make_adata(n=30, genes=("CD24", "ERBB2", "KRT19", "ACTB", "NOTAGENE"), seed=0, xy_max=290):
    import anndata as ad

    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n), 6)
    X = sp.csr_matrix(rng.poisson(3, size=(n, len(genes))).astype(np.float32))
    a = ad.AnnData(X=X, obs=pd.DataFrame({"array_row": rows, "array_col": cols * 2 + rows % 2},
                                         index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=list(genes)))
    # hex-like layout, 40 px per 100 µm -> 2.5 µm/px
    a.obsm["spatial"] = np.column_stack([10 + a.obs["array_col"] * 20.0, 10 + rows * 34.64]).clip(0, xy_max)
    return a


def test_h5ad_generic_and_image_checks(tmp_path):
    from PIL import Image

    a = make_adata()
    p = tmp_path / "s.h5ad"
    a.write_h5ad(p)
    assert detect_format(p) == "h5ad"
    s = read_sample(p)
    assert_contract(s, "h5ad")
    assert s.uns["stamp_st"]["grid"] == "hex"
    assert s.uns["stamp_st"]["um_per_px"] == pytest.approx(2.5)
    assert s.uns["stamp_st"]["image_size_px"] is None

    xy = a.obsm["spatial"]
    ok = tmp_path / "ok.png"
    Image.new("RGB", (int(xy[:, 0].max()) + 5, int(xy[:, 1].max()) + 5), "white").save(ok)
    s = read_sample(p, image_path=ok)
    assert s.uns["stamp_st"]["image_size_px"] == [int(xy[:, 0].max()) + 5, int(xy[:, 1].max()) + 5]

    cropped = tmp_path / "cropped.png"
    Image.new("RGB", (int(xy[:, 0].max()) - 20, int(xy[:, 1].max()) + 5), "white").save(cropped)
    with pytest.raises(StampInputError, match="outside the image"):
        read_sample(p, image_path=cropped)

    small = tmp_path / "small.png"
    Image.new("RGB", (int(xy[:, 0].max()) // 4, int(xy[:, 1].max()) // 4), "white").save(small)
    with pytest.raises(StampInputError, match="downscaled"):
        read_sample(p, image_path=small)
    with pytest.raises(DataNotFoundError):
        read_sample(p, image_path=tmp_path / "absent.png")


def test_h5ad_symbols_from_var_column_and_raw_counts(tmp_path):
    a = make_adata(genes=("ENSG00000184697", "ENSG00000141736", "ENSG00000171345"))
    a.var["gene_symbols"] = ["CD24", "ERBB2", "KRT19"]
    counts = a.X.copy()
    a.layers["counts"] = counts
    a.X = sp.csr_matrix(np.log1p(counts.toarray()) / 3)  # normalised X: the reader must take the layer
    a.write_h5ad(tmp_path / "e.h5ad")
    s = read_sample(tmp_path / "e.h5ad")
    assert list(s.var_names) == ["CD24", "ERBB2", "KRT19"]
    assert list(s.var["gene_ids"]) == ["ENSG00000184697", "ENSG00000141736", "ENSG00000171345"]
    assert (s.X != counts).nnz == 0
    assert s.uns["stamp_st"]["qc"]["counts_from"] == "layers['counts']"


def test_h5ad_bad_inputs(tmp_path):
    a = make_adata()
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(StampInputError, match=r"obsm\['spatial'\]"):
        read_sample(tmp_path / "nospatial.h5ad")
    b = make_adata()
    b.X = sp.csr_matrix(b.X.toarray() * 0.37)
    b.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(StampInputError, match="raw counts"):
        read_sample(tmp_path / "lognorm.h5ad")
    c = make_adata(genes=("ENSG00000184697", "ENSG00000141736"))
    c.var["gene_ids"] = ["CD24", "ERBB2"]
    c.write_h5ad(tmp_path / "swapped.h5ad")
    with pytest.raises(StampInputError, match="swapped"):
        read_sample(tmp_path / "swapped.h5ad")


# ----------------------------------------------------------------------------- HEST-1k
def make_hest(root, sample_id="TENX99", meta=None, image_px=(320, 300)):
    import tifffile

    a = make_adata()
    (root / "st").mkdir(parents=True)
    (root / "wsis").mkdir()
    (root / "metadata").mkdir()
    a.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    tifffile.imwrite(root / "wsis" / f"{sample_id}.tif",
                     np.full((image_px[1], image_px[0], 3), 255, np.uint8), photometric="rgb")
    meta = {"pixel_size_um_estimated": 0.2734, "st_technology": "Visium", "spot_diameter": 55.0,
            "inter_spot_dist": 100.0} if meta is None else meta
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta))
    return a


def test_hest_layout(tmp_path):
    root = tmp_path / "hest"
    a = make_hest(root)
    assert detect_format(root) == "hest"
    s = read_sample(root, section="TENX99")
    assert_contract(s, "hest")
    m = s.uns["stamp_st"]
    assert (m["um_per_px"], m["um_per_px_source"]) == (0.2734, "metadata")
    assert m["image_size_px"] == [320, 300] and m["image_path"].endswith("wsis/TENX99.tif")
    assert m["qc"]["um_per_px_from_spot_pitch"] == pytest.approx(2.5)
    assert (s.X != a.X).nnz == 0
    # the h5ad path alone works too
    h = root / "st" / "TENX99.h5ad"
    assert detect_format(h) == "hest"
    assert read_sample(h).uns["stamp_st"]["sample_id"] == "TENX99"
    with pytest.raises(StampInputError, match="does not exist; available in st/: TENX99"):
        read_sample(root, section="TENX1")


def test_hest_embedded_pixel_size_and_legacy_st(tmp_path):
    root = tmp_path / "hest"
    make_hest(root, meta={"pixel_size_um_embedded": 0.5, "st_technology": "Spatial Transcriptomics"})
    m = read_sample(root, section="TENX99").uns["stamp_st"]
    assert (m["um_per_px"], m["um_per_px_source"]) == (0.5, "metadata")
    assert (m["grid"], m["spot_pitch_um"], m["spot_diameter_um"]) == ("square", 200.0, 100.0)


# ----------------------------------------------------------------------------- her2st
def test_her2st_sections(her2st_root):
    secs = her2st_sections(her2st_root)
    assert len(secs) == len(list((her2st_root / "ST-cnts").glob("*.tsv.gz")))
    assert {"A1", "B4", "C2"} <= set(secs)


def test_her2st_section_with_image(her2st_root):
    a = read_sample(her2st_root, section="B4")
    assert_contract(a, "her2st")
    m = a.uns["stamp_st"]
    assert (m["grid"], m["spot_pitch_um"], m["spot_diameter_um"]) == ("square", 200.0, 100.0)
    assert m["image_path"].endswith(".jpg") and len(m["image_size_px"]) == 2
    sel = pd.read_csv(her2st_root / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
    t = sel.loc[a.obs_names]
    np.testing.assert_array_equal(a.obs["array_col"], t["x"])
    np.testing.assert_array_equal(a.obs["array_row"], t["y"])
    np.testing.assert_array_equal(a.obsm["spatial"], t[["pixel_x", "pixel_y"]].to_numpy())
    dx = median_neighbour_px(sel, "y", "x", "pixel_x", "pixel_y", 1)
    assert m["um_per_px_source"] == "spot_pitch"
    assert m["um_per_px"] == pytest.approx(200.0 / dx, rel=0.02)  # the reader also uses vertical neighbours
    assert 0.6 < m["um_per_px"] < 0.8  # ATTRIBUTION.md: about 0.69 µm/px
    # symbol-only input: var["gene_ids"] from the release's symbol -> Ensembl table, as the vocabulary maps them
    from stamp_st.readers.ensembl import RELEASE_SYMBOL_TABLE, read_symbol_table

    table_path = her2st_root.parent / RELEASE_SYMBOL_TABLE
    if table_path.is_file():
        table = read_symbol_table(table_path)
        ids = a.var["gene_ids"].astype(str)
        known = [s for s in a.var_names if s in table]
        assert len(known) > 0.5 * a.n_vars
        assert all(ids[s] == table[s] for s in known)
        assert all(ids[s] == "" for s in a.var_names if s not in table)
        assert any("gene_ids" in n for n in m["qc"]["notes"])
    # counts are the file's, spot by spot
    raw = pd.read_csv(her2st_root / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0, nrows=5)
    for sid in raw.index:
        row = a[sid].X.toarray().ravel()
        np.testing.assert_array_equal(row, raw.loc[sid].to_numpy(np.float32))


def test_her2st_without_image_and_unknown_section(her2st_root):
    a = read_sample(her2st_root, section="A1")
    assert a.uns["stamp_st"]["image_path"] == "" and a.uns["stamp_st"]["image_size_px"] is None
    assert a.uns["stamp_st"]["um_per_px"] is not None
    with pytest.raises(StampInputError, match="'Z9' does not exist; available: A1"):
        read_sample(her2st_root, section="Z9")
    with pytest.raises(StampInputError, match="no section given"):
        read_sample(her2st_root)


def fake_her2st(her2st_root, tmp_path, section="A1"):
    root = tmp_path / "her2st"
    (root / "ST-cnts").mkdir(parents=True)
    (root / "ST-spotfiles").mkdir()
    (root / "ST-cnts" / f"{section}.tsv.gz").symlink_to(her2st_root / "ST-cnts" / f"{section}.tsv.gz")
    sel = pd.read_csv(her2st_root / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    return root, sel


def test_her2st_unselected_and_unpositioned_spots_are_dropped(her2st_root, tmp_path):
    root, sel = fake_her2st(her2st_root, tmp_path)
    n_counts = read_sample(her2st_root, section="A1").n_obs
    sel.loc[sel.index[:5], "selected"] = 0
    sel = sel.iloc[:-3]
    sel.to_csv(root / "ST-spotfiles" / "A1_selection.tsv", sep="\t", index=False)
    a = read_sample(root, section="A1")
    qc = a.uns["stamp_st"]["qc"]
    counts_ids = set(pd.read_csv(her2st_root / "ST-cnts" / "A1.tsv.gz", sep="\t", usecols=[0]).iloc[:, 0])
    table_ids = set(sel["x"].astype(str) + "x" + sel["y"].astype(str))
    assert qc["n_dropped_no_position"] == len(counts_ids - table_ids)
    assert qc["n_dropped_not_selected"] == 5
    assert a.n_obs == n_counts - qc["n_dropped_no_position"] - 5
    assert set(a.obs_names) <= table_ids


def test_her2st_positions_from_another_grid(her2st_root, tmp_path):
    root, sel = fake_her2st(her2st_root, tmp_path)
    sel["x"] += 100
    sel.to_csv(root / "ST-spotfiles" / "A1_selection.tsv", sep="\t", index=False)
    with pytest.raises(StampInputError, match=r"0 of \d+ counts spots have a position"):
        read_sample(root, section="A1")


def test_her2st_missing_spot_table(her2st_root, tmp_path):
    root, _ = fake_her2st(her2st_root, tmp_path)
    with pytest.raises(DataNotFoundError, match="spot table"):
        read_sample(root, section="A1")


# ----------------------------------------------------------------------------- format detection
def test_detect_format(tmp_path, visium_dir, her2st_root):
    assert detect_format(visium_dir) == "spaceranger"
    assert detect_format(her2st_root) == "her2st"
    with pytest.raises(StampInputError, match="no known input layout"):
        detect_format(tmp_path)
    both = tmp_path / "both"
    copy_visium(visium_dir, both)
    (both / "ST-cnts").mkdir()
    (both / "ST-spotfiles").mkdir()
    with pytest.raises(StampInputError, match="several formats") as e:
        detect_format(both)
    assert "--format" in str(e.value)
    assert read_sample(both, format="spaceranger").n_obs == 100
    with pytest.raises(DataNotFoundError):
        detect_format(tmp_path / "absent")


# ----------------------------------------------------------------------------- pixel size helpers
def test_pitch_inference_is_robust_to_outliers():
    from stamp_st.readers.pixel_size import resolve_um_per_px, um_per_px_from_pitch

    rows, cols = np.meshgrid(np.arange(20), np.arange(0, 40, 2), indexing="ij")
    cols = cols + rows % 2
    x = cols * 50.0  # same-row neighbours (2 array columns apart) are 100 px = 100 µm apart: 1 µm/px
    y = rows * 100.0 * np.sqrt(3) / 2
    xy = np.column_stack([x.ravel(), y.ravel()])
    xy[:7] += 300  # a few misplaced spots
    v = um_per_px_from_pitch(rows.ravel(), cols.ravel(), xy, "hex", 100.0)
    assert v == pytest.approx(1.0)
    assert um_per_px_from_pitch([0], [0], [[0, 0]], "hex", 100.0) is None
    assert resolve_um_per_px(None, None, 0.7, 0.6) == (0.7, "spot_pitch")
    assert resolve_um_per_px(None, 0.25, 0.7, 0.6) == (0.25, "metadata")
    assert resolve_um_per_px(None, None, None, 0.6) == (0.6, "spot_diameter")
    assert resolve_um_per_px() == (None, "none")


# ----------------------------------------------------------------------------- her2st labels
def test_her2st_cluster_labels(her2st_root):
    from stamp_st.readers.labels import her2st_cluster_labels, her2st_cluster_names

    names = her2st_cluster_names(her2st_root)
    assert names[("G", 3)] == "immune : APC, B-cell, T-cell"  # commas inside an unquoted name
    assert names[("F", 0)] == "unknown"
    a = read_sample(her2st_root, section="B4")
    lab = her2st_cluster_labels(her2st_root, "B4")
    assert lab.index.isin(a.obs_names).mean() > 0.95
    raw = pd.read_csv(her2st_root / "ST-cluster" / "lbl" / "B4-cluster-annotation.tsv.gz", sep="\t")
    r = raw.iloc[0]
    assert lab[f"{r['x']}x{r['y']}"] == names[("B", int(r["label"]))]
    assert set(lab) <= {v for (p, _), v in names.items() if p == "B"}


def test_her2st_pathologist_labels(her2st_root):
    from stamp_st.readers.labels import her2st_pathologist_labels

    a = read_sample(her2st_root, section="A1")
    lab = her2st_pathologist_labels(her2st_root, "A1")
    assert a.obs_names.isin(lab.index).mean() > 0.95
    assert {"invasive cancer", "connective tissue"} <= set(lab)
    with pytest.raises(StampInputError, match="sections with pathologist labels: A1"):
        her2st_pathologist_labels(her2st_root, "B4")


# ------------------------------------------------------------------ Space Ranger matrix folder (no .h5)
def _as_mtx_folder(visium_dir, out, legacy: bool):
    """The fixture's filtered_feature_bc_matrix.h5 rewritten as the Market Exchange folder Space Ranger writes
    beside it (>= 3: gzipped matrix/barcodes/features with feature types; 1.x: plain matrix, barcodes, genes)."""
    import gzip
    import shutil

    import scanpy as sc
    import scipy.io
    import scipy.sparse as sp

    a = sc.read_10x_h5(visium_dir / "filtered_feature_bc_matrix.h5", gex_only=False)
    shutil.copytree(visium_dir / "spatial", out / "spatial")
    mtx = out / "filtered_feature_bc_matrix"
    mtx.mkdir(parents=True)
    feats = [f"{g}\t{s}" + ("" if legacy else f"\t{t}") for g, s, t in
             zip(a.var["gene_ids"], a.var_names, a.var["feature_types"])]
    opener = open if legacy else gzip.open
    ext = "" if legacy else ".gz"
    with opener(mtx / f"barcodes.tsv{ext}", "wt") as fh:
        fh.write("\n".join(a.obs_names) + "\n")
    with opener(mtx / (f"genes.tsv{ext}" if legacy else f"features.tsv{ext}"), "wt") as fh:
        fh.write("\n".join(feats) + "\n")
    with opener(mtx / f"matrix.mtx{ext}", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(a.X).T.tocoo(), field="integer")
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["v3-gz", "v1-genes.tsv"])
def test_spaceranger_matrix_folder_reads_equal_to_the_h5(visium_dir, tmp_path, legacy):
    import scipy.sparse as sp

    from stamp_st.readers import detect_format, read_sample

    outs = _as_mtx_folder(visium_dir, tmp_path / "outs", legacy)
    assert detect_format(outs) == "spaceranger" and detect_format(tmp_path) == "spaceranger"
    want = read_sample(visium_dir)
    for path in (outs, outs / "filtered_feature_bc_matrix"):
        got = read_sample(path)
        assert list(got.obs_names) == list(want.obs_names) and list(got.var_names) == list(want.var_names)
        assert list(got.var["gene_ids"]) == list(want.var["gene_ids"])
        assert (sp.csr_matrix(got.X) != sp.csr_matrix(want.X)).nnz == 0
        np.testing.assert_array_equal(got.obsm["spatial"], want.obsm["spatial"])


def test_a_broken_matrix_folder_is_named(visium_dir, tmp_path):
    from stamp_st.readers import read_sample

    outs = _as_mtx_folder(visium_dir, tmp_path / "outs", legacy=False)
    (outs / "filtered_feature_bc_matrix" / "features.tsv.gz").unlink()
    with pytest.raises(StampInputError, match="10x matrix folder"):
        read_sample(outs)
