"""Slide access: metadata, exact region reads against independent decoders, pyramid level choice, JPEG/PNG."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from stamp_st.errors import StampInputError
from stamp_st.readers.slide import ImageSlide, TiffSlide, image_size_px, open_slide


def pattern(h: int, w: int) -> np.ndarray:
    """RGB content where every pixel differs from its neighbours: R = x, G = y, B = x ^ y (mod 256)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x ^ y) % 256], axis=-1).astype(np.uint8)


def write_pyramid(path, base: np.ndarray, levels: int = 3, **kwargs) -> list[np.ndarray]:
    """A tiled, lossless pyramidal TIFF (SubIFDs) whose level k is base[::2**k, ::2**k]."""
    arrays = [np.ascontiguousarray(base[:: 2**k, :: 2**k]) for k in range(levels)]
    with tifffile.TiffWriter(path) as tw:
        tw.write(arrays[0], tile=(64, 64), photometric="rgb", compression="zlib", subifds=levels - 1, **kwargs)
        for a in arrays[1:]:
            tw.write(a, tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)
    return arrays


@pytest.fixture
def svs(data_root):
    p = data_root / "wsi" / "CMU-1-Small-Region.svs"
    if not p.exists():
        pytest.skip(f"{p} absent")
    return p


def test_svs_metadata_and_region_match_openslide_and_full_decode(svs):
    assert image_size_px(svs) == (2220, 2967)
    with open_slide(svs) as s:
        assert s.backend == "tifffile"
        assert (s.width_px, s.height_px) == (2220, 2967)
        assert s.um_per_px == pytest.approx(0.499)
        region = s.read_region(1500, 2000, 300, 200)
        full = tifffile.imread(svs, series=0, level=0)
        np.testing.assert_array_equal(region, full[2000:2200, 1500:1800])
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(svs)) as o:
        ref = np.asarray(o.read_region((1500, 2000), 0, (300, 200)))[..., :3]
    np.testing.assert_array_equal(region, ref)
    with open_slide(svs, backend="openslide") as s2:
        assert s2.um_per_px == pytest.approx(0.499)
        np.testing.assert_array_equal(s2.read_region(1500, 2000, 300, 200), ref)


def test_pyramid_levels_regions_and_outside_white(tmp_path):
    base = pattern(1000, 1200)
    path = tmp_path / "pyr.tif"
    arrays = write_pyramid(path, base, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide)
        assert s.level_dimensions == [(1200, 1000), (600, 500), (300, 250)]
        assert s.level_downsamples == pytest.approx([1, 2, 4])
        assert s.um_per_px == pytest.approx(0.5)
        np.testing.assert_array_equal(s.read_region(100, 50, 130, 70), base[50:120, 100:230])
        np.testing.assert_array_equal(s.read_level_region(2, 10, 20, 30, 40), arrays[2][20:60, 10:40])
        edge = s.read_region(1150, -20, 100, 60)  # crosses the right and top borders
        assert (edge[:20] == 255).all() and (edge[:, 50:] == 255).all()
        np.testing.assert_array_equal(edge[20:, :50], base[0:40, 1150:1200])
        assert (s.read_region(5000, 5000, 8, 8) == 255).all()
        # the coarsest level that still has the resolution: 4x needs level 2, 3.9x must stay on level 1
        assert s.best_level(4.0) == 2 and s.best_level(3.9) == 1 and s.best_level(1.5) == 0
        # an exact 1:1 square equals the region; a 4x-down square is read from level 2 (equal content)
        np.testing.assert_array_equal(s.read_square((500, 400), 64, 64), base[368:432, 468:532])
        sq = s.read_square((600, 400), 400, 100)
        np.testing.assert_array_equal(sq, arrays[2][50:150, 100:200])


def test_mpp_from_inch_tags_ome_and_implausible(tmp_path):
    a = pattern(64, 64)
    tifffile.imwrite(tmp_path / "inch.tif", a, photometric="rgb", resolution=(25_400 / 0.25, 25_400 / 0.25),
                     resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "dpi72.tif", a, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "x.ome.tif", a, photometric="rgb", metadata={"PhysicalSizeX": 0.325,
                                                                              "axes": "YXS"})
    with open_slide(tmp_path / "inch.tif") as s:
        assert s.um_per_px == pytest.approx(0.25)
    with open_slide(tmp_path / "dpi72.tif") as s:
        assert s.um_per_px is None  # 352 µm/px is an editor default, not a microscope
    with open_slide(tmp_path / "x.ome.tif") as s:
        assert s.um_per_px == pytest.approx(0.325)
        np.testing.assert_array_equal(s.read_region(0, 0, 64, 64), a)


def test_grey_tiff_becomes_rgb(tmp_path):
    g = (np.arange(32 * 48) % 256).reshape(32, 48).astype(np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", g)
    with open_slide(tmp_path / "g.tif") as s:
        out = s.read_region(0, 0, 48, 32)
    assert out.shape == (32, 48, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_big_jpeg_memmap_cache_and_draft_levels(tmp_path):
    h, w = 600, 800
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 230  # left half red, right half blue: catches BGR
    img[:, w // 2 :, 2] = 230
    path = tmp_path / "slide.jpg"
    Image.fromarray(img).save(path, quality=95)
    assert image_size_px(path) == (w, h)
    cache = tmp_path / "cache"
    decoded = np.asarray(Image.open(path).convert("RGB"))
    with open_slide(path, cache=cache, max_in_memory_px=1000) as s:
        assert isinstance(s, ImageSlide)
        assert s.level_downsamples[:2] == pytest.approx([1.0, 2.0])
        np.testing.assert_array_equal(s.read_region(100, 200, 50, 40), decoded[200:240, 100:150])
        assert len(list(cache.glob("*_x1.npy"))) == 1
        sq = s.read_square((400, 300), 400, 100)  # 4x down: served from a draft-mode level
        assert any(cache.glob("*_x4.npy"))
        assert sq.shape == (100, 100, 3)
        left, right = sq[:, :40].mean((0, 1)), sq[:, 60:].mean((0, 1))
        assert left[0] > 200 and left[2] < 30 and right[2] > 200 and right[0] < 30
    with open_slide(path, cache=cache, max_in_memory_px=1000) as s:  # second open reuses the cache
        np.testing.assert_array_equal(s.read_region(0, 0, 10, 10), decoded[:10, :10])
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob("*.tmp"))


def test_png_grey_in_memory(tmp_path):
    g = (np.arange(40 * 30) % 256).reshape(30, 40).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    with open_slide(tmp_path / "g.png") as s:
        assert s.um_per_px is None
        out = s.read_region(-5, 0, 20, 10)
    assert (out[:, :5] == 255).all()
    np.testing.assert_array_equal(out[:, 5:, 1], g[:10, :15])


def test_bad_inputs(tmp_path):
    with pytest.raises(StampInputError, match="not found"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(StampInputError, match="not found"):
        image_size_px(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(StampInputError):
        open_slide(bad)
    with pytest.raises(StampInputError):
        image_size_px(bad)
    badj = tmp_path / "bad.jpg"
    badj.write_bytes(b"\xff\xd8 nope")
    with pytest.raises(StampInputError):
        image_size_px(badj)


def test_direct_tile_reads_equal_zarr_reads_and_cache_is_bounded(tmp_path):
    base = pattern(700, 900)
    path = tmp_path / "pyr.tif"
    write_pyramid(path, base, levels=2)
    rng = np.random.default_rng(0)
    with TiffSlide(path, tile_cache_mb=0.05) as direct, TiffSlide(path) as via_zarr:
        assert all(p is not None for p in direct._tiled)
        via_zarr._tiled = [None] * via_zarr.level_count  # force the zarr path
        for _ in range(20):
            level = int(rng.integers(0, 2))
            x0, y0 = (int(v) for v in rng.integers(-50, 800, 2))
            w, h = (int(v) for v in rng.integers(1, 300, 2))
            np.testing.assert_array_equal(direct.read_level_region(level, x0, y0, w, h),
                                          via_zarr.read_level_region(level, x0, y0, w, h))
        assert direct._tile_cache_bytes <= 0.05 * 2**20 or len(direct._tile_cache) == 1
