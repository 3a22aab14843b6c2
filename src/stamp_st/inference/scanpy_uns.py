"""scanpy's ``uns["spatial"][library_id]`` for an embedding file, so that ``sc.pl.spatial`` and
``squidpy.pl.spatial_scatter`` draw embeddings over the H&E directly.

scanpy (``read_visium``) keeps per library ``images`` (``hires`` ~2000 px, ``lowres`` ~600 px, uint8 RGB) and
``scalefactors`` (``tissue_hires_scalef`` / ``tissue_lowres_scalef``: image px per full-resolution px;
``spot_diameter_fullres``: spot diameter in full-resolution px). A sample that carries them (Space Ranger,
HEST) keeps its own; otherwise they are made from the full-resolution image, read through its pyramid.
"""

from __future__ import annotations

import numpy as np

from ..readers.constants import (
    SF_HIRES,
    SF_LOWRES,
    SF_SPOT_DIAMETER,
    UNS_SPATIAL,
    UNS_SPATIAL_IMAGES,
    UNS_SPATIAL_METADATA,
    UNS_SPATIAL_SCALEFACTORS,
)
from ..readers.sample_meta import SampleMeta

HIRES_SIDE_PX = 2000  # Space Ranger's tissue_hires_image
LOWRES_SIDE_PX = 600  # Space Ranger's tissue_lowres_image
_SCALEF = {"hires": SF_HIRES, "lowres": SF_LOWRES}


def _usable(lib: dict) -> bool:
    """A library scanpy can draw: at least one image with its scale factor, and the spot diameter."""
    images = lib.get(UNS_SPATIAL_IMAGES) or {}
    sf = lib.get(UNS_SPATIAL_SCALEFACTORS) or {}
    return SF_SPOT_DIAMETER in sf and any(k in images and _SCALEF[k] in sf for k in _SCALEF)


def _thumbnail(image_path, side_px: int) -> tuple[np.ndarray, float]:
    """The whole slide at ``side_px`` on its long side (uint8 RGB) and its scale factor."""
    from ..readers.slide import open_slide

    with open_slide(image_path) as slide:
        long_px = max(slide.width_px, slide.height_px)
        scale = min(1.0, side_px / long_px)
        out = int(round(long_px * scale))
        sq = slide.read_square((long_px / 2, long_px / 2), long_px, out)
        w, h = int(round(slide.width_px * scale)), int(round(slide.height_px * scale))
    return np.ascontiguousarray(sq[:h, :w]), out / long_px


def spatial_uns(adata, library_id: str) -> dict:
    """``{library_id: {images, scalefactors, metadata}}`` for a sample of the reader contract."""
    from PIL import Image

    have = adata.uns.get(UNS_SPATIAL)
    if isinstance(have, dict):
        for lib in have.values():
            if isinstance(lib, dict) and _usable(lib):
                return {library_id: {k: lib[k] for k in (UNS_SPATIAL_IMAGES, UNS_SPATIAL_SCALEFACTORS,
                                                          UNS_SPATIAL_METADATA) if k in lib}}
    meta = SampleMeta.of(adata)
    um = meta.slide_um_per_px
    sf: dict = {}
    if um and meta.spot_diameter_um:
        sf[SF_SPOT_DIAMETER] = meta.spot_diameter_um / um
    images: dict = {}
    if meta.image_path:
        hires, scale = _thumbnail(meta.image_path, HIRES_SIDE_PX)
        images["hires"] = hires
        sf[SF_HIRES] = scale
        lo_scale = min(1.0, LOWRES_SIDE_PX / max(hires.shape[:2])) * scale
        lo_size = (max(1, int(round(hires.shape[1] * lo_scale / scale))),
                   max(1, int(round(hires.shape[0] * lo_scale / scale))))
        images["lowres"] = np.asarray(Image.fromarray(hires).resize(lo_size, Image.Resampling.LANCZOS))
        sf[SF_LOWRES] = lo_scale
    if SF_SPOT_DIAMETER not in sf:  # scanpy needs a spot size: from the spot spacing, at Visium's ratio
        from scipy.spatial import cKDTree

        xy = np.asarray(adata.obsm["spatial"], np.float64)
        if len(xy) > 1:
            d, _ = cKDTree(xy).query(xy, k=2)
            sf[SF_SPOT_DIAMETER] = float(np.median(d[:, 1])) * 0.55  # 55 µm spots on a 100 µm pitch
        else:
            sf[SF_SPOT_DIAMETER] = 1.0
    return {library_id: {UNS_SPATIAL_IMAGES: images, UNS_SPATIAL_SCALEFACTORS: sf,
                         UNS_SPATIAL_METADATA: {"source": meta.image_path}}}
