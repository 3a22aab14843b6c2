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
    from stamp_st.embedding_file import read_trident_h5

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
    from stamp_st.embedding_file import read_trident_h5

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


# ------------------------------------------------ a real slide: TRIDENT's and CLAM's own read paths, re-typed
@pytest.fixture(scope="module")
def svs_tiles(tmp_path_factory, data_root):
    """``embed backbone:resnet50 CMU-1-Small-Region.svs --tiles --pt`` with a random ResNet-50 (fixed seed)
    given as a weight file, as a CLAM feature directory (h5_files/ + pt_files/)."""
    pytest.importorskip("openslide")
    import timm
    from safetensors.torch import save_file

    from stamp_st.cli import main

    svs = data_root / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip("CMU-1-Small-Region.svs absent from the data directory")
    tmp = tmp_path_factory.mktemp("svs")
    torch.manual_seed(0)
    full = timm.create_model("resnet50", pretrained=False, num_classes=0)
    weights = tmp / "resnet50.safetensors"
    save_file(full.state_dict(), str(weights))
    out = tmp / "feats" / "h5_files" / "CMU-1-Small-Region.h5"
    out.parent.mkdir(parents=True)
    rc = main(["embed", "backbone:resnet50", str(svs), "--tiles", "--backbone-weights", str(weights),
               "--out", str(out), "--pt", "--device", "cpu", "--batch-size", "16"])
    assert rc == 0
    return svs, weights, out


def test_tiles_equal_tridents_extraction(svs_tiles):
    """TRIDENT's extract_patch_features on our coords (OpenSlideWSI + WSIPatcher + ResNet50InferenceEncoder,
    re-typed) gives our features: the same tiles, pixel for pixel, through the same encoder."""
    import openslide
    import timm
    from safetensors.torch import load_file
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    svs, weights, out = svs_tiles
    with h5py.File(out, "r") as f:
        coords_attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
        ours = f["features"][:]
    img = openslide.OpenSlide(str(svs))
    # OpenSlideWSI._fetch_mpp / WSI._fetch_magnification
    mpp_x = round(float(img.properties[openslide.PROPERTY_NAME_MPP_X]), 4)
    mag = 80 if mpp_x < 0.16 else 60 if mpp_x < 0.2 else 40 if mpp_x < 0.3 else 20 if mpp_x < 0.6 else 10
    patch_size = coords_attrs.get("patch_size", None)
    level0_magnification = coords_attrs.get("level0_magnification", None)
    target_magnification = coords_attrs.get("target_magnification", None)
    assert level0_magnification == mag == 20 and target_magnification == 20  # integers, as TRIDENT writes
    assert isinstance(level0_magnification, np.integer) and isinstance(target_magnification, np.integer)
    # WSIPatcher.__init__ / _prepare
    src_pixel_size, dst_pixel_size = 10 / level0_magnification, 10 / target_magnification
    downsample = dst_pixel_size / src_pixel_size
    patch_size_src = round(patch_size * downsample)
    level_downsamples = img.level_downsamples
    level = next((lv for lv, d in enumerate(level_downsamples) if abs(d - downsample) <= 0.1), None)
    if level is None:
        level = max(lv for lv, d in enumerate(level_downsamples) if d <= downsample)
    level_downsample = int(level_downsamples[level])
    patch_size_level = round(patch_size_src / level_downsample)
    assert patch_size_src == coords_attrs["patch_size_level0"] == 224
    # ResNet50InferenceEncoder: timm resnet50 features_only at layer 3, strict=False load, average pool
    model = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3], num_classes=0)
    model.load_state_dict(load_file(str(weights)), strict=False)
    model.eval()
    eval_transform = transforms.Compose([
        transforms.Resize(224, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True),
        transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
    pick = np.linspace(0, len(coords) - 1, min(12, len(coords))).astype(int)
    tiles = []
    for x, y in coords[pick]:  # WSIPatcher.get_tile_xy(pil=True)
        tile = img.read_region((int(x), int(y)), level, (patch_size_level, patch_size_level)).convert("RGB")
        tile = tile.resize((patch_size, patch_size))
        tiles.append(eval_transform(tile))
    with torch.no_grad():
        theirs = torch.nn.AdaptiveAvgPool2d(1)(model(torch.stack(tiles))[0]).squeeze(-1).squeeze(-1).numpy()
    assert ours.shape == (len(coords), 1024)
    np.testing.assert_allclose(ours[pick], theirs, atol=1e-4, rtol=1e-4)


def test_clam_reads_the_same_tiles_and_its_pt_bag(svs_tiles):
    """CLAM's Whole_Slide_Bag_FP and StitchCoords (coords attrs, read_region at patch_level) and its default
    MIL loader (pt_files/<slide_id>.pt), re-typed from mahmoodlab/CLAM."""
    import os

    import openslide

    from stamp_st.inference.tiling import TileGrid, read_tile
    from stamp_st.readers.slide import open_slide

    svs, _, out = svs_tiles
    wsi = openslide.open_slide(str(svs))
    with h5py.File(out, "r") as f:  # Whole_Slide_Bag_FP.__init__
        dset = f["coords"]
        patch_level = f["coords"].attrs["patch_level"]
        patch_size = f["coords"].attrs["patch_size"]
        length = len(dset)
        print("start stitching {}".format(dset.attrs["name"]))  # StitchCoords
        ref = tuple((np.array((patch_size, patch_size)) * wsi.level_downsamples[patch_level]).astype(np.int32))
        coords = dset[:]
        features_h5 = f["features"][:]
    assert ref == (224, 224) and length == len(coords)
    with open_slide(svs) as slide:
        grid = TileGrid.for_slide(slide, slide.um_per_px, 112.0)
        for idx in (0, length // 2, length - 1):  # Whole_Slide_Bag_FP.__getitem__
            coord = coords[idx]
            img = wsi.read_region(coord, patch_level, (patch_size, patch_size)).convert("RGB")
            np.testing.assert_array_equal(np.asarray(img), read_tile(slide, grid, *coord))
    # Generic_MIL_Dataset.__getitem__ (use_h5=False)
    data_dir, slide_id = str(out.parent.parent), "CMU-1-Small-Region"
    full_path = os.path.join(data_dir, "pt_files", f"{slide_id}.pt")
    features = torch.load(full_path)
    assert features.dtype == torch.float32
    np.testing.assert_array_equal(features.numpy(), features_h5)


def test_pt_needs_tiles(tmp_path, capsys):
    from stamp_st.cli import main

    rc = main(["embed", "backbone:efficientnet_lite0", str(tmp_path / "x.h5ad"), "--pt", "--out",
               str(tmp_path / "x.h5")])
    assert rc == 2 and "--tiles" in capsys.readouterr().err
