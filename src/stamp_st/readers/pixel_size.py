"""Pixel size (µm per full-resolution pixel) of a slide, inferred from the spots when no metadata says it.

The spot grid is a ruler printed on every ST slide: grid neighbours are a known distance apart (Visium 100 µm,
legacy ST 200 µm), so the median pixel distance between neighbour pairs gives µm/px robustly (a few badly
placed spots do not move a median). The spot diameter in pixels (Space Ranger's ``spot_diameter_fullres``)
is a weaker fallback: it is an estimate of Space Ranger's, not a measured distance.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import StampInputError
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
# two estimates further apart than this ratio are reported (a spot diameter is Space Ranger's estimate and
# drifts by a few %; 10 % is beyond that and beyond any 20x/40x scanner spread)
WARN_RATIO = 1.10
# a given pixel size further than this from what the sample's own spot grid implies is refused unless confirmed:
# a unit slip (nm, mm, µm/px of another level) is a factor >= 2, a real rescan of the same slide is not
REFUSE_RATIO = 1.5
# the smallest patch side, in image pixels, worth upsampling to a 224 px backbone input (scaled for other input
# sizes): below it a patch is mostly interpolation (a 4.7 µm/px CytAssist image gives a 112 µm patch of 24 px)
MIN_PATCH_PX = 64
CONFIRM_UM_PER_PX_ENV = "STAMP_ST_CONFIRM_UM_PER_PX"  # set by --confirm-um-per-px
ALLOW_COARSE_IMAGE_ENV = "STAMP_ST_ALLOW_COARSE_IMAGE"  # set by --allow-coarse-image


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


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
                      slide: float | None = None, where=None, confirmed: bool | None = None,
                      spots_known: bool = True) -> tuple[float | None, str]:
    """The one rule for a slide's pixel size (µm per level-0 pixel): the first known value in order of trust,
    user > sample metadata > spot pitch > spot diameter > the slide file's resolution tag (last: HEST's WSIs,
    written with current libvips, carry a tag 10x off). Returns (value or None, its source).

    Checked against each other: estimates more than ``WARN_RATIO`` apart give a warning; a user value more than
    ``REFUSE_RATIO`` from what the sample's spots imply (pitch, else spot diameter) is refused unless
    ``confirmed`` (default: ``$STAMP_ST_CONFIRM_UM_PER_PX``, which ``--confirm-um-per-px`` sets) or the spot
    geometry is itself a guess (``spots_known=False``: a plain h5ad's assumed pitch)."""
    known = {src: float(v) for v, src in ((user, UM_PER_PX_USER), (metadata, UM_PER_PX_METADATA),
                                           (spot_pitch, UM_PER_PX_SPOT_PITCH),
                                           (spot_diameter, UM_PER_PX_SPOT_DIAMETER), (slide, UM_PER_PX_SLIDE))
             if v is not None and np.isfinite(v) and v > 0}
    if not known:
        return None, UM_PER_PX_NONE
    source = next(iter(known))
    check_estimates(known, where, confirmed if spots_known else True)
    return known[source], source


def check_estimates(known: dict[str, float], where=None, confirmed: bool | None = None) -> None:
    """Warn where two pixel-size estimates (user, metadata, spot pitch, spot diameter; not the slide tag) disagree
    by more than ``WARN_RATIO``; refuse a user value ``REFUSE_RATIO`` off the sample's spots unless confirmed."""
    confirmed = _env_flag(CONFIRM_UM_PER_PX_ENV) if confirmed is None else confirmed
    implied_src = next((s for s in (UM_PER_PX_SPOT_PITCH, UM_PER_PX_SPOT_DIAMETER) if s in known), None)
    user = known.get(UM_PER_PX_USER)
    if user is not None and implied_src is not None:
        ratio = max(user, known[implied_src]) / min(user, known[implied_src])
        if ratio > REFUSE_RATIO and not confirmed:
            raise StampInputError(
                f"the given pixel size {user:g} µm/px is {ratio:.1f}x off the {known[implied_src]:.4g} µm/px that "
                f"the sample's {implied_src.replace('_', ' ')} implies", where,
                hint="check the unit (µm per full-resolution pixel) and that the image is the one the spot "
                     "coordinates refer to; if the value is right, pass --confirm-um-per-px")
    compared = [(s, v) for s, v in known.items() if s != UM_PER_PX_SLIDE]
    for i, (s1, v1) in enumerate(compared):
        for s2, v2 in compared[i + 1:]:
            if max(v1, v2) / min(v1, v2) > WARN_RATIO:
                warnings.warn(f"{where or 'sample'}: pixel size from {s1} ({v1:.4g} µm/px) and from {s2} "
                              f"({v2:.4g} µm/px) differ by {100 * (max(v1, v2) / min(v1, v2) - 1):.0f} %; "
                              f"using {compared[0][0]}. A rescaled image, or spot coordinates of another "
                              "image, give this", stacklevel=3)


def check_patch_resolution(patch_um: float, um_per_px: float, out_px: int = 224, where=None,
                           allow: bool | None = None) -> float:
    """The patch side in image pixels; refused where the patch would be upsampled more than ``224 /
    MIN_PATCH_PX`` (3.5x) to the model's ``out_px`` input, i.e. under 64 px for a 224 px backbone (an image too
    coarse for the patch, e.g. a CytAssist overview given as the H&E), unless ``allow`` (default:
    ``$STAMP_ST_ALLOW_COARSE_IMAGE``, which ``--allow-coarse-image`` sets)."""
    side = float(patch_um) / float(um_per_px)
    allow = _env_flag(ALLOW_COARSE_IMAGE_ENV) if allow is None else allow
    min_px = MIN_PATCH_PX * float(out_px) / 224.0
    if side < min_px and not allow:
        raise StampInputError(
            f"the image is too coarse for the patch: {patch_um:g} µm at {um_per_px:.3g} µm/px is {side:.0f} px, "
            f"under {min_px:.0f} px (it would be upsampled {out_px / max(side, 1e-9):.0f}x to the model's "
            f"{out_px} px input)", where,
            hint="give the full-resolution H&E (about 0.25-1 µm/px), check --um-per-px, or pass "
                 "--allow-coarse-image to embed it anyway")
    return side
