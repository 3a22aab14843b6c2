"""`embed --tiles` writes what TRIDENT's and CLAM's loaders read. The reads below imitate, attribute by
attribute, those of TRIDENT (trident/IO.py read_coords; WSI.extract_patch_features / visualize_coords /
extract_slide_features; WSIPatcher's src/dst magnification arithmetic; the Titan, Madeleine and GigaPath slide
encoders' use of ``patch_size_level0``) and of CLAM (dataset_generic's h5 bag: ``features`` + ``coords``;
the stitching code's ``coords.attrs['name']``), as read in mahmoodlab/TRIDENT and mahmoodlab/CLAM."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import torch

torch.set_num_threads(1)

TRUE_UM_PER_PX = 0.5
TISSUE = (slice(200, 1000), slice(300, 900))  # rows (y), cols (x) of the tissue block


def _slide(path, size_px=1200, tissue=True, tag_um_per_px=TRUE_UM_PER_PX * 10):
    """A TIFF whose resolution tag is 10x off (as HEST's WSIs written by current libvips)."""
    rng = np.random.default_rng(0)
    img = np.full((size_px, size_px, 3), 240, np.uint8)
    if tissue:
        h = TISSUE[0].stop - TISSUE[0].start
        w = TISSUE[1].stop - TISSUE[1].start
        img[TISSUE] = (rng.integers(90, 200, size=(h, w, 3)) * np.array([1, 0.5, 1])).astype(np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", tile=(256, 256),
                     resolution=(1e4 / tag_um_per_px, 1e4 / tag_um_per_px), resolutionunit="CENTIMETER")
    return path


def _hest_root(tmp_path, tissue=True):
    root = tmp_path / "hest"
    (root / "wsis").mkdir(parents=True)
    (root / "metadata").mkdir()
    _slide(root / "wsis" / "TENX99.tif", tissue=tissue)
    (root / "metadata" / "TENX99.json").write_text(json.dumps({"pixel_size_um_estimated": TRUE_UM_PER_PX,
                                                               "st_technology": "Visium"}))
    return root


@pytest.fixture(scope="module")
def tile_file(tmp_path_factory):
    from stamp_st.cli import main

    tmp = tmp_path_factory.mktemp("tiles")
    root = _hest_root(tmp)
    out = tmp / "h5_files" / "TENX99.h5"
    out.parent.mkdir()
    rc = main(["embed", "backbone:efficientnet_lite0", str(root), "--section", "TENX99", "--tiles",
               "--out", str(out), "--device", "cpu", "--batch-size", "8"])
    assert rc == 0
    return out


def test_trident_patch_encoder_reads(tile_file):
    # trident.IO.read_coords, then WSI.extract_patch_features' / visualize_coords' checks
    with h5py.File(tile_file, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    patch_size = attrs.get("patch_size", None)
    level0_magnification = attrs.get("level0_magnification", None)
    target_magnification = attrs.get("target_magnification", None)
    assert None not in (patch_size, level0_magnification, target_magnification)
    assert int(attrs.get("overlap", 0)) == 0
    # WSIPatcher(src_mag=..., dst_mag=...): pixel size = 10 / magnification; tile side at level 0
    src_pixel_size = 10 / level0_magnification
    dst_pixel_size = 10 / target_magnification
    patch_size_src = round(patch_size * dst_pixel_size / src_pixel_size)
    assert patch_size_src == attrs["patch_size_level0"] == round(112 / TRUE_UM_PER_PX)  # metadata, not TIFF tag
    assert patch_size == 224 and level0_magnification == 20
    assert attrs["level0_width"] == attrs["level0_height"] == 1200 and attrs["name"] == "TENX99"
    # coords are level-0 top-left corners: every tile lies on the slide and is mostly the tissue block
    assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2 and len(coords) > 0
    tissue = np.zeros((1200, 1200), bool)
    tissue[TISSUE] = True
    for x, y in coords:
        assert 0 <= x and x + patch_size_src <= attrs["level0_width"]
        assert 0 <= y and y + patch_size_src <= attrs["level0_height"]
        assert tissue[y:y + patch_size_src, x:x + patch_size_src].mean() >= 0.5


def test_trident_slide_encoder_reads(tile_file):
    # WSI.extract_slide_features: features, coords (rounded to int64), dict(coords.attrs)
    with h5py.File(tile_file, "r") as f:
        coords = f["coords"][:]
        patch_features = f["features"][:]
        coords_attrs = dict(f["coords"].attrs)
        feat_attrs = dict(f["features"].attrs)
    assert patch_features.ndim == 2 and patch_features.shape == (len(coords), 1280)
    assert patch_features.dtype == np.float32 and np.isfinite(patch_features).all()
    patch_size_level0 = int(coords_attrs["patch_size_level0"])  # Titan, GigaPath (tile_size), Madeleine
    grid = torch.from_numpy(coords).to(torch.int64) // patch_size_level0  # Madeleine: tile grid indices
    assert len({tuple(r) for r in grid.tolist()}) == len(coords)  # one tile per grid cell
    assert feat_attrs["encoder"] == "backbone:efficientnet_lite0" and feat_attrs["name"] == "TENX99"


def test_clam_mil_bag_reads(tile_file):
    # CLAM Generic_MIL_Dataset(use_h5=True): h5_files/<slide_id>.h5 -> features[:], coords[:]
    slide_id = "TENX99"
    with h5py.File(tile_file.parent / f"{slide_id}.h5", "r") as hdf5_file:
        features = hdf5_file["features"][:]
        coords = hdf5_file["coords"][:]
        name = hdf5_file["coords"].attrs["name"]  # stitching prints it
    features = torch.from_numpy(features)
    assert features.ndim == 2 and len(features) == len(coords) and name == slide_id


def test_stamp_reader_gives_tile_centres(tile_file):
    from stamp_st.evaluation.embeddings_io import read_trident_h5

    s = read_trident_h5(tile_file)
    with h5py.File(tile_file, "r") as f:
        corners = f["coords"][:]
    assert s.slide_ids[0] == "TENX99"
    np.testing.assert_allclose(s.xy_px, corners + 112.0, atol=1e-9)  # centre = corner + 224 px / 2


def test_no_tissue_is_refused(tmp_path, capsys):
    from stamp_st.cli import main

    root = _hest_root(tmp_path, tissue=False)
    out = tmp_path / "empty.h5"
    rc = main(["embed", "backbone:efficientnet_lite0", str(root), "--section", "TENX99", "--tiles",
               "--out", str(out), "--device", "cpu"])
    assert rc == 2 and not out.exists()
    assert "tissue" in capsys.readouterr().err


def test_hest_root_needs_a_section(tmp_path, capsys):
    from stamp_st.cli import main

    root = _hest_root(tmp_path)
    rc = main(["embed", "backbone:efficientnet_lite0", str(root), "--tiles", "--out", str(tmp_path / "x.h5"),
               "--device", "cpu"])
    assert rc == 2 and "TENX99" in capsys.readouterr().err


def test_spot_h5_uses_the_same_corner_convention(tmp_path, capsys):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from stamp_st.cli import main
    from stamp_st.evaluation.embeddings_io import read_trident_h5

    slide = _slide(tmp_path / "he.tif")
    xy = np.array([[500.0, 500.0], [620.5, 610.0], [700.0, 800.0]])
    a = ad.AnnData(X=sp.csr_matrix(np.ones((3, 2), np.float32)),
                   obs=pd.DataFrame(index=["a", "b", "c"]), var=pd.DataFrame(index=["G1", "G2"]))
    a.obsm["spatial"] = xy
    a.write_h5ad(tmp_path / "spots.h5ad")
    out = tmp_path / "spots.h5"
    rc = main(["embed", "backbone:efficientnet_lite0", str(tmp_path / "spots.h5ad"), "--image", str(slide),
               "--um-per-px", str(TRUE_UM_PER_PX), "--out", str(out), "--device", "cpu", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(out), "kind": "spots", "n_spots": 3, "keys": {"X_backbone": 1280}}
    with h5py.File(out, "r") as f:
        corners = f["coords"][:]
        assert f["coords"].attrs["patch_size_level0"] == 224
    np.testing.assert_allclose(corners, np.round(xy - 112.0))
    back = read_trident_h5(out)
    assert list(back.spot_ids) == ["a", "b", "c"]
    np.testing.assert_allclose(back.xy_px, xy, atol=0.5)
