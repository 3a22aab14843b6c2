"""Spot crops for Stage 2 (METHOD.md §2): a patch centred on each spot, a 3x larger region in which the patch
is one cell of a 3x3 grid (the cross-scale localisation target), and a tiny thumbnail of the patch.

Sizes are physical: side_px = patch_um / um_per_px, so slides scanned at 20x and 40x give the same tissue
area. Reads go through ``Slide.read_square``, which picks the pyramid level that fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..config_types import IMAGE_PX, PATCH_UM, check_ranges, ranged
from ..errors import StampInputError
from ..readers.pixel_size import check_patch_resolution, resolve_um_per_px

WHITE = 255


@dataclass(frozen=True)
class CropGeometry:
    patch_um: float = ranged(112.0, PATCH_UM)  # side of the patch, in µm (2 x 112 px at 20x in the release)
    out_px: int = ranged(224, IMAGE_PX)  # patch and region are both resized to out_px x out_px
    region_factor: int = ranged(3, lo=1, hi=15, integer=True)  # region side = factor x patch side; label grid factor x factor
    thumb_px: int = ranged(16, lo=1, hi=1024, integer=True)  # thumbnail of the patch fed to the region pass's pretext token

    def __post_init__(self):
        check_ranges(self, None, "crop setting")

    def patch_side_px(self, um_per_px: float) -> float:
        return self.patch_um / float(um_per_px)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CropGeometry:
        return cls(**{k: d[k] for k in ("patch_um", "out_px", "region_factor", "thumb_px") if k in d})


@dataclass
class SpotCrops:
    patch: np.ndarray  # uint8 [n, out, out, 3] RGB
    region: np.ndarray  # uint8 [n, out, out, 3] RGB; white where region_valid is False
    region_label: np.ndarray  # int64 [n]: row*factor + col of the patch's cell; 0 where invalid
    region_valid: np.ndarray  # bool [n]: False -> no placement inside the slide; mask from that loss
    thumb: np.ndarray  # uint8 [n, thumb, thumb, 3]

    def __len__(self) -> int:
        return len(self.region_label)


def region_placements(centers_xy_px: np.ndarray, side_px: float, width_px: int, height_px: int,
                      factor: int = 3, tol_px: float = 1e-6) -> np.ndarray:
    """bool [n, factor*factor]: whether putting the patch in cell (row, col) keeps the region inside the
    slide. Cell (r, c) means the region's top-left is (cx - side/2 - c*side, cy - side/2 - r*side)."""
    c = np.asarray(centers_xy_px, dtype=np.float64).reshape(-1, 2)
    k = np.arange(factor)
    x0 = c[:, 0:1] - side_px / 2 - k[None, :] * side_px  # [n, factor] by column
    y0 = c[:, 1:2] - side_px / 2 - k[None, :] * side_px  # [n, factor] by row
    span = factor * side_px
    ok_x = (x0 >= -tol_px) & (x0 + span <= width_px + tol_px)
    ok_y = (y0 >= -tol_px) & (y0 + span <= height_px + tol_px)
    return (ok_y[:, :, None] & ok_x[:, None, :]).reshape(len(c), factor * factor)


def choose_region_labels(valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random valid cell per spot (0 where none). One uniform draw per spot, whatever the
    validity pattern, so a seed gives the same labels for the same spots."""
    u = rng.random(len(valid))
    n_valid = valid.sum(axis=1)
    pick = np.minimum((u * n_valid).astype(np.int64), np.maximum(n_valid - 1, 0))
    # index of the pick-th True in each row
    cum = np.cumsum(valid, axis=1)
    labels = np.argmax(cum > pick[:, None], axis=1).astype(np.int64)
    labels[n_valid == 0] = 0
    return labels


def resize_batch(images: np.ndarray, out_px: int) -> np.ndarray:
    from ..readers.slide import resize_rgb

    return np.stack([resize_rgb(im, out_px, out_px) for im in images]) if len(images) else \
        np.zeros((0, out_px, out_px, 3), np.uint8)


def extract_spot_crops(slide, centers_xy_px, um_per_px: float | None = None,
                       geometry: CropGeometry | None = None, rng: np.random.Generator | None = None) -> SpotCrops:
    """Patch, region, label and thumbnail for every spot centre (level-0 px). ``um_per_px`` defaults to the
    slide's metadata; pass the sample's value where it was inferred from the spot grid."""
    geometry = geometry or CropGeometry()
    rng = rng if rng is not None else np.random.default_rng(0)
    if um_per_px is None:
        um_per_px = resolve_um_per_px(slide=slide.um_per_px)[0]
    if um_per_px is None or not np.isfinite(um_per_px) or um_per_px <= 0:
        raise StampInputError("no pixel size (µm/px) for this slide", getattr(slide, "path", None),
                              hint="pass um_per_px, or let the reader infer it from the spot pitch")
    centers = np.asarray(centers_xy_px, dtype=np.float64).reshape(-1, 2)
    n, f, out = len(centers), int(geometry.region_factor), int(geometry.out_px)
    side = geometry.patch_side_px(um_per_px)
    check_patch_resolution(geometry.patch_um, um_per_px, geometry.out_px, getattr(slide, "path", None))
    valid = region_placements(centers, side, slide.width_px, slide.height_px, f)
    labels = choose_region_labels(valid, rng)
    region_valid = valid.any(axis=1)
    rows, cols = labels // f, labels % f
    # region centre: the patch centre moved from cell (row, col) to the middle cell
    mid = (f - 1) / 2.0
    rcx = centers[:, 0] + (mid - cols) * side
    rcy = centers[:, 1] + (mid - rows) * side

    patch = np.empty((n, out, out, 3), np.uint8)
    region = np.full((n, out, out, 3), WHITE, np.uint8)
    for i in range(n):
        patch[i] = slide.read_square(centers[i], side, out)
        if region_valid[i]:
            region[i] = slide.read_square((rcx[i], rcy[i]), f * side, out)
    thumb = resize_batch(patch, geometry.thumb_px)
    return SpotCrops(patch=patch, region=region, region_label=labels, region_valid=region_valid, thumb=thumb)
