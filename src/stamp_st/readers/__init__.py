"""Readers: every supported input becomes the same sample AnnData (docs/ARCHITECTURE.md, "Sample contract").

``read_sample(path)`` picks the reader from the layout on disk (``detect_format``); a format can be forced
when a folder is ambiguous.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataNotFoundError, StampInputError
from .constants import FORMAT_H5AD, FORMAT_HER2ST, FORMAT_HEST, FORMAT_SPACERANGER, FORMATS, H5AD_SUFFIX
from .sample_meta import SampleMeta

__all__ = ["FORMATS", "SampleMeta", "detect_format", "her2st_sections", "read_sample"]

_LAYOUTS = {
    FORMAT_SPACERANGER: "Space Ranger 'outs' folder (filtered_feature_bc_matrix.h5 + spatial/)",
    FORMAT_HEST: "HEST-1k root (st/, wsis/, metadata/) with --section ID, or st/<id>.h5ad",
    FORMAT_HER2ST: "her2st root (ST-cnts/, ST-spotfiles/) with --section ID",
    FORMAT_H5AD: ".h5ad file with obsm['spatial'] (give the image with --image)",
}


def _formats_text() -> str:
    return "; ".join(f"{k}: {v}" for k, v in _LAYOUTS.items())


def detect_format(path: str | Path) -> str:
    """The one format whose layout ``path`` matches; StampInputError when none or several match."""
    from .her2st import is_her2st
    from .hest import is_hest_h5ad, is_hest_root
    from .spaceranger import is_spaceranger

    p = Path(path)
    if not p.exists():
        raise DataNotFoundError("input not found", p, hint="check the sample path")
    found = []
    if is_spaceranger(p):
        found.append(FORMAT_SPACERANGER)
    if is_hest_root(p) or is_hest_h5ad(p):
        found.append(FORMAT_HEST)
    if is_her2st(p):
        found.append(FORMAT_HER2ST)
    if p.is_file() and p.suffix == H5AD_SUFFIX and not is_hest_h5ad(p):
        found.append(FORMAT_H5AD)
    if len(found) == 1:
        return found[0]
    what = "matches several formats (" + ", ".join(found) + ")" if found else "matches no known input layout"
    raise StampInputError(f"{what}", p, hint=f"pass the format explicitly (--format). Formats: {_formats_text()}")


def her2st_sections(root: str | Path) -> list[str]:
    from .her2st import her2st_sections as _sections

    return _sections(root)


def read_sample(path: str | Path, format: str | None = None, section: str | None = None,  # noqa: A002
                image_path: str | Path | None = None, um_per_px: float | None = None):
    """Read any supported input into the sample AnnData (raw counts CSR, spot centres in full-res pixels,
    pixel size and its source in the sample record: ``SampleMeta.of(adata)``)."""
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise StampInputError(f"unknown format '{fmt}'", path, hint=f"use one of: {', '.join(FORMATS)}")
    if not Path(path).exists():
        raise DataNotFoundError("input not found", path, hint="check the sample path")
    if section is not None and fmt in (FORMAT_SPACERANGER, FORMAT_H5AD):
        raise StampInputError(f"--section applies to her2st and HEST inputs, not to {fmt}", path,
                              hint="drop --section, or point to the folder of the one sample")
    if fmt == FORMAT_SPACERANGER:
        from .spaceranger import read_spaceranger

        return read_spaceranger(path, image_path=image_path, um_per_px=um_per_px)
    if fmt == FORMAT_HEST:
        from .hest import read_hest

        return read_hest(path, section=section, image_path=image_path, um_per_px=um_per_px)
    if fmt == FORMAT_HER2ST:
        from .her2st import read_her2st

        return read_her2st(path, section=section, image_path=image_path, um_per_px=um_per_px)
    from .h5ad import read_h5ad

    return read_h5ad(path, image_path=image_path, um_per_px=um_per_px)
