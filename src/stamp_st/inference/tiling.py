"""Tissue detection and TRIDENT's tile grid over a whole slide.

Tissue: Otsu threshold on the saturation channel of a low-resolution thumbnail (H&E tissue is coloured,
glass and background are grey/white), cleaned with small-object and small-hole removal (scikit-image).

Tiles follow TRIDENT's patcher (trident/wsi_objects/WSIPatcher.py) so that the same encoder gives the same
features on the same coordinates: magnifications are integers (the slide's from its µm/px bucket, the target
20x), a tile is ``patch_size * level0_mag // target_mag`` level-0 px, read as a whole number of pixels at the
pyramid level TRIDENT picks, and resized (PIL bicubic) only where that level's side is not ``patch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..embedding_file import trident_coords_attrs

TARGET_MAGNIFICATION = 20  # 10 / 0.5 µm/px: the magnification every registered backbone was trained at


def trident_magnification(um_per_px: float) -> int:
    """TRIDENT's integer magnification of a pixel size (``WSI._fetch_magnification``'s buckets)."""
    for bound, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if um_per_px < bound:
            return mag
    from ..errors import StampInputError

    raise StampInputError(f"pixel size {um_per_px:g} µm/px is coarser than 5x: too coarse for tiles",
                          hint="check the pixel size (--um-per-px)")


@dataclass(frozen=True)
class TileGrid:
    """Where and how tiles are read: sizes in px, magnifications as TRIDENT writes them."""

    patch_size_px: int  # tile side at the target magnification (the encoder's input before its own transform)
    level0_magnification: int
    target_magnification: int
    patch_size_level0_px: int  # tile side in level-0 px
    read_level: int  # pyramid level the tile is read at
    level_downsample: int  # int(level_downsamples[read_level]), as TRIDENT truncates it
    patch_size_level_px: int  # tile side read at ``read_level``

    @classmethod
    def for_slide(cls, slide, um_per_px: float, patch_um: float,
                  target_magnification: int = TARGET_MAGNIFICATION) -> TileGrid:
        mag0 = trident_magnification(um_per_px)
        patch_size = int(round(patch_um * target_magnification / 10.0))
        side0 = round(patch_size * mag0 / target_magnification)
        level = trident_level(list(slide.level_downsamples), mag0 / target_magnification)
        ds = int(slide.level_downsamples[level])
        return cls(patch_size, mag0, int(target_magnification), int(side0), level, ds, int(round(side0 / ds)))


    @property
    def clam_readable(self) -> bool:
        """CLAM reads ``patch_size`` px at ``patch_level`` (no resize): true where TRIDENT's read needs none."""
        return self.patch_size_level_px == self.patch_size_px

    def coords_attrs(self, name: str, slide, overlap_px: int = 0) -> dict:
        """``coords`` attributes: TRIDENT's (``coords_to_h5``: patch_size at the target magnification,
        patch_size_level0, integer magnifications, level-0 size, overlap, name) and CLAM's patch reader's and
        stitcher's (``patch_level``, ``downsample``, ``level_dim``, ``downsampled_level_dim``). CLAM reads
        ``patch_size`` px at ``patch_level``, so its keys are written only where that is the tile TRIDENT
        reads (no resize); elsewhere CLAM's reader would read another field and fails on the missing key."""
        attrs = trident_coords_attrs(name, self.patch_size_px, self.patch_size_level0_px, self.level0_magnification,
                                     self.target_magnification, slide.width_px, slide.height_px, overlap_px)
        if self.clam_readable:
            w, h = slide.level_dimensions[self.read_level]
            attrs.update({"patch_level": int(self.read_level),
                          "downsample": (slide.width_px / w, slide.height_px / h),
                          "level_dim": (int(w), int(h)), "downsampled_level_dim": (int(w), int(h))})
        return attrs


def trident_level(level_downsamples: list[float], downsample: float, tolerance: float = 0.1) -> int:
    """TRIDENT's ``get_best_level_and_custom_downsample`` (level only): a level within ``tolerance`` of the
    downsample, else the coarsest level at least as fine (or, when upsampling, the finest level)."""
    for level, d in enumerate(level_downsamples):
        if abs(d - downsample) <= tolerance:
            return level
    if downsample >= level_downsamples[0]:
        best = None
        for level, d in enumerate(level_downsamples):
            if d <= downsample:
                best = level
            else:
                break
        if best is not None:
            return best
    return 0


@dataclass
class TissueMask:
    mask: np.ndarray  # bool [h, w] on the thumbnail
    thumb_um_per_px: float | None  # None when the slide has no pixel size
    downsample: float  # level-0 px per thumbnail px


def tissue_mask(slide, thumb_max_px: int = 2048, min_object_um2: float = 0.05e6) -> TissueMask:
    """Boolean tissue mask on a thumbnail read through the slide's pyramid (never the full image)."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    scale = max(slide.width_px, slide.height_px) / thumb_max_px
    scale = max(scale, 1.0)
    w, h = int(round(slide.width_px / scale)), int(round(slide.height_px / scale))
    side = max(slide.width_px, slide.height_px)
    thumb_sq = slide.read_square((side / 2, side / 2), side, int(round(side / scale)))
    thumb = thumb_sq[:h, :w]
    sat = rgb2hsv(thumb)[..., 1]
    t = threshold_otsu(sat) if sat.max() > sat.min() else 1.0
    mask = sat > max(t, 0.05)
    um = slide.um_per_px * scale if slide.um_per_px else None
    min_px = int(min_object_um2 / um**2) if um else 64
    mask = _drop_small_components(mask, min_px)
    mask = ~_drop_small_components(~mask, min_px)  # fill small holes
    return TissueMask(mask, um, scale)


def tile_corners(slide, side_level0_px: int, tissue: TissueMask | None = None,
                 min_tissue_fraction: float = 0.5) -> np.ndarray:
    """Top-left corners (x, y), int64 level-0 px, of the non-overlapping grid of ``side_level0_px`` tiles from
    (0, 0) (TRIDENT's grid) that lie on the slide and are mostly tissue."""
    side = int(side_level0_px)
    nx, ny = slide.width_px // side, slide.height_px // side
    cx, cy = np.meshgrid(np.arange(nx, dtype=np.int64) * side, np.arange(ny, dtype=np.int64) * side)
    corners = np.stack([cx.ravel(), cy.ravel()], 1)
    if tissue is None or len(corners) == 0:
        return corners
    m = tissue.mask
    d = tissue.downsample
    keep = np.zeros(len(corners), bool)
    for i, (x, y) in enumerate(corners / d):
        x0, x1 = int(max(x, 0)), int(min(x + side / d + 1, m.shape[1]))
        y0, y1 = int(max(y, 0)), int(min(y + side / d + 1, m.shape[0]))
        win = m[y0:y1, x0:x1]
        keep[i] = win.size > 0 and win.mean() >= min_tissue_fraction
    return corners[keep]


def read_tile(slide, grid: TileGrid, x0_px: int, y0_px: int) -> np.ndarray:
    """One tile as TRIDENT's patcher reads it: ``patch_size_level_px`` px at ``read_level`` from the level-0
    corner, resized to ``patch_size_px`` (PIL bicubic, PIL's default) only where the two differ."""
    from ..readers.slide import resize_rgb

    ds = grid.level_downsample
    s = grid.patch_size_level_px
    a = slide.read_level_region(grid.read_level, int(x0_px) // ds, int(y0_px) // ds, s, s)
    if s != grid.patch_size_px:
        a = resize_rgb(a, grid.patch_size_px, grid.patch_size_px)
    return a


def _drop_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[labels]
