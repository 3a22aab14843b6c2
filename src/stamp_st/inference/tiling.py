"""Tissue detection and a tile grid over a whole slide, at the model's µm/px.

Tissue: Otsu threshold on the saturation channel of a low-resolution thumbnail (H&E tissue is coloured,
glass and background are grey/white), cleaned with small-object and small-hole removal (scikit-image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def tile_centers(slide, tile_um: float, um_per_px: float, tissue: TissueMask | None = None,
                 min_tissue_fraction: float = 0.5) -> np.ndarray:
    """Centres (x, y) in level-0 px of a non-overlapping grid of ``tile_um`` tiles that are mostly tissue."""
    side_px = tile_um / um_per_px
    nx, ny = int(slide.width_px // side_px), int(slide.height_px // side_px)
    xs = (np.arange(nx) + 0.5) * side_px
    ys = (np.arange(ny) + 0.5) * side_px
    cx, cy = np.meshgrid(xs, ys)
    centers = np.stack([cx.ravel(), cy.ravel()], 1)
    if tissue is None or len(centers) == 0:
        return centers
    m = tissue.mask
    d = tissue.downsample
    half = side_px / 2 / d
    keep = np.zeros(len(centers), bool)
    for i, (x, y) in enumerate(centers / d):
        x0, x1 = int(max(x - half, 0)), int(min(x + half + 1, m.shape[1]))
        y0, y1 = int(max(y - half, 0)), int(min(y + half + 1, m.shape[0]))
        win = m[y0:y1, x0:x1]
        keep[i] = win.size > 0 and win.mean() >= min_tissue_fraction
    return centers[keep]


def _drop_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[labels]
