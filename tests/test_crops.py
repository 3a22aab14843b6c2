"""Spot crops: the patch is exactly the labelled cell of its region, placements respect borders, seeds are
reproducible, colour stays RGB."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from stamp_st.errors import StampInputError
from stamp_st.preprocessing.crops import (
    CropGeometry,
    choose_region_labels,
    extract_spot_crops,
    region_placements,
)
from stamp_st.readers.slide import open_slide, resize_rgb

GEOM = CropGeometry(patch_um=30.0, out_px=30, region_factor=3, thumb_px=6)  # at 1 µm/px: 30 px patch


def gradient_slide(tmp_path, h=300, w=300):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), 128 + 100 * np.sin((x + 2 * y) / 40)], -1)
    path = tmp_path / "grad.tif"
    tifffile.imwrite(path, np.round(img).astype(np.uint8), photometric="rgb", tile=(64, 64))
    return open_slide(path)


def test_patch_is_the_labelled_cell_of_its_region(tmp_path):
    centers = np.array([[150.0, 150.0], [60.0, 200.0], [240.0, 50.0], [100.5, 180.25]])
    with gradient_slide(tmp_path) as s:
        crops = extract_spot_crops(s, centers, 1.0, GEOM, np.random.default_rng(3))
        for i, (cx, cy) in enumerate(centers):
            np.testing.assert_array_equal(crops.patch[i], s.read_square((cx, cy), 30, 30))
    assert crops.region_valid.all()
    for i in range(len(centers)):
        small = resize_rgb(crops.patch[i], 10, 10).astype(int)
        errs = np.array([np.abs(crops.region[i, r * 10:(r + 1) * 10, c * 10:(c + 1) * 10].astype(int) - small).mean()
                         for r in range(3) for c in range(3)])
        assert errs[crops.region_label[i]] < 2.0, errs
        assert np.argmin(errs) == crops.region_label[i]
        assert np.sort(errs)[1] > 5 * errs[crops.region_label[i]] + 5  # the other cells really differ


def test_placements_near_borders():
    side, w, h = 30.0, 300, 200
    centers = np.array([[15, 15], [285, 185], [150, 100], [15, 100], [150, 50]], dtype=float)
    v = region_placements(centers, side, w, h)
    assert np.flatnonzero(v[0]).tolist() == [0]  # top-left corner: patch must be the top-left cell
    assert np.flatnonzero(v[1]).tolist() == [8]  # bottom-right corner
    assert v[2].all()
    assert np.flatnonzero(v[3]).tolist() == [0, 3, 6]  # left border: first column only
    assert np.flatnonzero(v[4]).tolist() == [0, 1, 2, 3, 4, 5]  # 50 px from top: rows 0 and 1
    labels = choose_region_labels(v, np.random.default_rng(0))
    assert all(v[i, labels[i]] for i in range(len(v)))


def test_labels_uniform_over_valid_cells():
    v = np.ones((9000, 9), bool)
    v[4500:, [2, 5, 8]] = False
    labels = choose_region_labels(v, np.random.default_rng(1))
    counts = np.bincount(labels[:4500], minlength=9)
    assert counts.min() > 400 and counts.max() < 600
    assert not np.isin(labels[4500:], [2, 5, 8]).any()
    assert len(np.unique(labels[4500:])) == 6


def test_no_valid_placement_is_masked_not_minus_one(tmp_path):
    with gradient_slide(tmp_path, h=60, w=300) as s:  # 60 px high < 90 px region
        crops = extract_spot_crops(s, [[150, 30]], 1.0, GEOM, np.random.default_rng(0))
    assert not crops.region_valid[0] and crops.region_label[0] == 0
    assert (crops.region == 255).all()
    assert crops.patch[0].std() > 0  # the patch itself is still there


def test_determinism_and_shapes(tmp_path):
    centers = np.random.default_rng(9).uniform(50, 250, size=(12, 2))
    with gradient_slide(tmp_path) as s:
        a = extract_spot_crops(s, centers, 1.0, GEOM, np.random.default_rng(42))
        b = extract_spot_crops(s, centers, 1.0, GEOM, np.random.default_rng(42))
        c = extract_spot_crops(s, centers, 1.0, GEOM, np.random.default_rng(43))
    for f in ("patch", "region", "region_label", "region_valid", "thumb"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.region_label, c.region_label)
    assert a.patch.shape == (12, 30, 30, 3) and a.thumb.shape == (12, 6, 6, 3)
    assert a.region_label.dtype == np.int64 and a.region_valid.dtype == bool
    np.testing.assert_array_equal(a.thumb[0], resize_rgb(a.patch[0], 6, 6))


def test_rgb_order_and_physical_size(tmp_path):
    img = np.zeros((700, 1400, 3), np.uint8)
    img[:, :700, 0] = 255  # red left
    img[:, 700:, 2] = 255  # blue right
    path = tmp_path / "rb.tif"
    tifffile.imwrite(path, img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        crops = extract_spot_crops(s, [[350, 350], [1050, 350]], None, CropGeometry(), np.random.default_rng(0))
    assert crops.patch.shape == (2, 224, 224, 3)
    assert (crops.patch[0, ..., 0] == 255).all() and (crops.patch[0, ..., 2] == 0).all()
    assert (crops.patch[1, ..., 2] == 255).all() and (crops.patch[1, ..., 0] == 0).all()
    assert crops.region_valid.all() and (crops.region_label // 3 == 1).all()  # 672 px region: middle row only
    left, right = crops.region[0, :, :50].mean((0, 1)), crops.region[1, :, -50:].mean((0, 1))
    assert left[0] > 250 and left[2] < 5 and right[2] > 250 and right[0] < 5


def test_missing_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "n.tif", np.zeros((50, 50, 3), np.uint8), photometric="rgb")
    with open_slide(tmp_path / "n.tif") as s, pytest.raises(StampInputError, match="µm/px"):
        extract_spot_crops(s, [[25, 25]])


def test_geometry_json_roundtrip():
    g = CropGeometry(patch_um=100.0)
    assert CropGeometry.from_json(g.to_json()) == g
    assert g.patch_side_px(0.25) == pytest.approx(400.0)
