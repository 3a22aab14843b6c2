"""The typed record of a sample (technology, slide, pixel size and where it came from, spot grid), built and
validated once by the readers. Everything outside ``readers/`` reads it as ``SampleMeta.of(adata)``, never
through string keys; on an AnnData (and so in ``.h5ad`` files) it is stored as the dict ``uns["stamp_st"]``
with the keys of docs/ARCHITECTURE.md, written and read here only (``to_uns`` / ``from_uns``).

Pixel sizes are named by what they measure: ``slide_um_per_px`` is µm per full-resolution (level-0) pixel of
the slide; the model's input pixel size is ``CropGeometry.patch_um / out_px`` (``preprocessing.crops``) and a
backbone's training magnification is ``Backbone.native_um_per_px``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import StampInputError
from .constants import (
    GRID_HEX,
    GRID_SQUARE,
    UM_PER_PX_METADATA,
    UM_PER_PX_NONE,
    UM_PER_PX_SLIDE,
    UM_PER_PX_SPOT_DIAMETER,
    UM_PER_PX_SPOT_PITCH,
    UM_PER_PX_USER,
    UNS_STAMP,
)

GRIDS = (GRID_HEX, GRID_SQUARE)
UM_PER_PX_SOURCES = (UM_PER_PX_USER, UM_PER_PX_METADATA, UM_PER_PX_SPOT_PITCH, UM_PER_PX_SPOT_DIAMETER,
                     UM_PER_PX_SLIDE, UM_PER_PX_NONE)
# field -> key in uns["stamp_st"] (the names files have always carried)
_UNS_KEYS = {
    "sample_id": "sample_id", "technology": "format", "source_path": "source_path", "image_path": "image_path",
    "image_size_px": "image_size_px", "slide_um_per_px": "um_per_px", "slide_um_per_px_source": "um_per_px_source",
    "grid": "grid", "spot_pitch_um": "spot_pitch_um", "spot_diameter_um": "spot_diameter_um", "qc": "qc",
}


def _positive_or_none(value, what: str, source) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise StampInputError(f"{what} must be a number, got {value!r}", source) from None
    if not math.isfinite(v) or v <= 0:
        raise StampInputError(f"{what} must be a positive number, got {value!r}", source)
    return v


@dataclass(frozen=True)
class SampleMeta:
    """What stamp-st knows about one sample besides its counts and spot positions."""

    sample_id: str = ""
    technology: str = ""  # the reader's format name (a key of readers.INPUT_FORMATS)
    source_path: str = ""
    image_path: str = ""  # the H&E slide; "" when none
    image_size_px: tuple[int, int] | None = None  # slide (width, height) at level 0
    slide_um_per_px: float | None = None  # µm per level-0 slide pixel
    slide_um_per_px_source: str = UM_PER_PX_NONE  # user | metadata | spot_pitch | spot_diameter | none
    grid: str = GRID_HEX
    spot_pitch_um: float | None = None  # centre to centre: 100 Visium, 200 legacy ST
    spot_diameter_um: float | None = None  # 55 Visium, 100 legacy ST
    qc: dict = field(default_factory=dict, compare=False)  # what the reader dropped, estimates, notes

    def __post_init__(self):
        src = self.source_path or None
        set_ = object.__setattr__
        set_(self, "sample_id", str(self.sample_id))
        set_(self, "image_path", str(self.image_path or ""))
        set_(self, "slide_um_per_px", _positive_or_none(self.slide_um_per_px, "the slide's µm/px", src))
        set_(self, "spot_pitch_um", _positive_or_none(self.spot_pitch_um, "spot_pitch_um", src))
        set_(self, "spot_diameter_um", _positive_or_none(self.spot_diameter_um, "spot_diameter_um", src))
        if self.image_size_px is not None:
            size = tuple(int(v) for v in self.image_size_px)
            if len(size) != 2:
                raise StampInputError(f"image_size_px must be (width, height), got {self.image_size_px!r}", src)
            set_(self, "image_size_px", size)
        if self.grid not in GRIDS:
            raise StampInputError(f"unknown spot grid {self.grid!r}", src, hint=f"use one of {', '.join(GRIDS)}")
        if self.slide_um_per_px_source not in UM_PER_PX_SOURCES:
            raise StampInputError(f"unknown pixel-size source {self.slide_um_per_px_source!r}", src,
                                  hint=f"use one of {', '.join(UM_PER_PX_SOURCES)}")
        if (self.slide_um_per_px is None) != (self.slide_um_per_px_source == UM_PER_PX_NONE):
            raise StampInputError(f"pixel size {self.slide_um_per_px} with source "
                                  f"{self.slide_um_per_px_source!r}: a size needs a source and 'none' no size", src)

    @property
    def has_image(self) -> bool:
        return bool(self.image_path)

    def to_uns(self) -> dict:
        """The dict stored as ``uns["stamp_st"]`` (same keys and value types as every earlier version)."""
        d = {key: getattr(self, name) for name, key in _UNS_KEYS.items()}
        d["image_size_px"] = list(self.image_size_px) if self.image_size_px is not None else None
        return d

    @classmethod
    def from_uns(cls, d: dict | None, source=None) -> SampleMeta:
        """The record from ``uns["stamp_st"]``; keys it does not know are ignored (embedding files add their
        own), missing ones take the defaults (an AnnData built by hand may carry only some)."""
        d = dict(d or {})
        kw = {name: d[key] for name, key in _UNS_KEYS.items() if key in d and d[key] is not None}
        if not kw.get("slide_um_per_px"):  # None, or the 0 that embedding files write for "unknown"
            kw.pop("slide_um_per_px", None)
            kw["slide_um_per_px_source"] = UM_PER_PX_NONE
        elif kw.get("slide_um_per_px_source", UM_PER_PX_NONE) == UM_PER_PX_NONE:
            kw["slide_um_per_px_source"] = UM_PER_PX_METADATA  # a size given without saying where it came from
        if "source_path" not in kw and source is not None:
            kw["source_path"] = str(source)
        if "qc" in kw:
            kw["qc"] = dict(kw["qc"])
        return cls(**kw)

    @classmethod
    def of(cls, adata) -> SampleMeta:
        """The record of a sample AnnData (read afresh each time: ``uns`` is the one stored copy)."""
        d = adata.uns.get(UNS_STAMP)
        return cls.from_uns(d if isinstance(d, dict) else None)

    def store(self, adata) -> None:
        adata.uns[UNS_STAMP] = self.to_uns()
