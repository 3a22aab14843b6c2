"""Pixel size (µm per full-resolution pixel) of a slide, inferred from the spots when no metadata says it.

The spot grid is a ruler printed on every ST slide: grid neighbours are a known distance apart (Visium 100 µm,
legacy ST 200 µm), so the median pixel distance between neighbour pairs gives µm/px robustly (a few badly
placed spots do not move a median). The spot diameter in pixels (Space Ranger's ``spot_diameter_fullres``)
is a weaker fallback: it is an estimate of Space Ranger's, not a measured distance.
"""

from __future__ import annotations

import numpy as np

from .constants import (
    GRID_HEX,
    GRID_SQUARE,
    HEX_COL_STEP,
    SQUARE_COL_STEP,
    UM_PER_PX_METADATA,
    UM_PER_PX_NONE,
    UM_PER_PX_SLIDE,
    UM_PER_PX_SPOT_DIAMETER,
    UM_PER_PX_SPOT_PITCH,
    UM_PER_PX_USER,
)

MIN_NEIGHBOUR_PAIRS = 3


def neighbour_pairs(array_row, array_col, grid: str) -> np.ndarray:
    """Index pairs [k, 2] of grid neighbours: same row and one grid step apart in column (hex: 2 array columns,
    square: 1), plus (square grid) same column and one row apart."""
    row = np.asarray(array_row, dtype=np.int64)
    col = np.asarray(array_col, dtype=np.int64)
    step = HEX_COL_STEP if grid == GRID_HEX else SQUARE_COL_STEP
    lookup = {(r, c): i for i, (r, c) in enumerate(zip(row.tolist(), col.tolist()))}
    pairs = []
    for i, (r, c) in enumerate(zip(row.tolist(), col.tolist())):
        j = lookup.get((r, c + step))
        if j is not None:
            pairs.append((i, j))
        if grid == GRID_SQUARE:
            j = lookup.get((r + 1, c))
            if j is not None:
                pairs.append((i, j))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def neighbour_distances_px(array_row, array_col, xy_px, grid: str) -> np.ndarray:
    """Pixel distances between all grid-neighbour pairs."""
    pairs = neighbour_pairs(array_row, array_col, grid)
    xy = np.asarray(xy_px, dtype=np.float64)
    if len(pairs) == 0:
        return np.zeros(0)
    return np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)


def um_per_px_from_pitch(array_row, array_col, xy_px, grid: str, pitch_um: float) -> float | None:
    """µm/px from the median neighbour distance; None when fewer than 3 neighbour pairs exist."""
    if grid not in (GRID_HEX, GRID_SQUARE):
        return None
    d = neighbour_distances_px(array_row, array_col, xy_px, grid)
    d = d[np.isfinite(d) & (d > 0)]
    if len(d) < MIN_NEIGHBOUR_PAIRS:
        return None
    return float(pitch_um / np.median(d))


def um_per_px_from_diameter(spot_diameter_px: float | None, spot_diameter_um: float) -> float | None:
    if spot_diameter_px is None or not np.isfinite(spot_diameter_px) or spot_diameter_px <= 0:
        return None
    return float(spot_diameter_um / spot_diameter_px)


def resolve_um_per_px(user: float | None = None, metadata: float | None = None,
                      spot_pitch: float | None = None, spot_diameter: float | None = None,
                      slide: float | None = None) -> tuple[float | None, str]:
    """The one rule for a slide's pixel size (µm per level-0 pixel): the first known value in order of trust,
    user > sample metadata > spot pitch > spot diameter > the slide file's resolution tag (last: HEST's WSIs,
    written with current libvips, carry a tag 10x off). Returns (value or None, its source)."""
    for value, source in ((user, UM_PER_PX_USER), (metadata, UM_PER_PX_METADATA),
                          (spot_pitch, UM_PER_PX_SPOT_PITCH), (spot_diameter, UM_PER_PX_SPOT_DIAMETER),
                          (slide, UM_PER_PX_SLIDE)):
        if value is not None and np.isfinite(value) and value > 0:
            return float(value), source
    return None, UM_PER_PX_NONE
