"""Readers: every supported input becomes the same sample AnnData (docs/ARCHITECTURE.md, "Sample contract").

``read_sample(path)`` picks the reader from the layout on disk (``detect_format``); a format can be forced
when a folder is ambiguous.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataNotFoundError, StampInputError
from .constants import FORMAT_H5AD, FORMAT_HER2ST, FORMAT_HEST, FORMAT_SPACERANGER
from .sample_meta import SampleMeta

__all__ = ["FORMATS", "INPUT_FORMATS", "InputFormat", "SampleMeta", "detect_format", "her2st_sections",
           "read_sample"]


@dataclass(frozen=True)
class InputFormat:
    """One input format: what its layout on disk looks like, how to recognise it and how to read it.
    ``detect`` and ``read`` are ``"module:function"`` under ``stamp_st.readers``, imported when used (this
    registry stays light for the CLI). ``read(path, [section,] image_path=, um_per_px=)`` returns the sample of
    the contract (built with ``common.build_sample``); ``sections``: the input holds several samples."""

    name: str
    layout: str
    detect: str
    read: str
    sections: bool = False

    def _load(self, ref: str):
        module, func = ref.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), func)

    def matches(self, path: Path) -> bool:
        return bool(self._load(self.detect)(path))

    def read_sample(self, path, section=None, image_path=None, um_per_px=None):
        kw = {"section": section} if self.sections else {}
        return self._load(self.read)(path, image_path=image_path, um_per_px=um_per_px, **kw)


INPUT_FORMATS: dict[str, InputFormat] = {f.name: f for f in (
    InputFormat(FORMAT_SPACERANGER, "Space Ranger 'outs' folder (filtered_feature_bc_matrix.h5 or "
                "filtered_feature_bc_matrix/ + spatial/)",
                "spaceranger:is_spaceranger", "spaceranger:read_spaceranger"),
    InputFormat(FORMAT_HEST, "HEST-1k root (st/, wsis/, metadata/) with --section ID, or st/<id>.h5ad",
                "hest:is_hest", "hest:read_hest", sections=True),
    InputFormat(FORMAT_HER2ST, "her2st root (ST-cnts/, ST-spotfiles/) with --section ID",
                "her2st:is_her2st", "her2st:read_her2st", sections=True),
    InputFormat(FORMAT_H5AD, ".h5ad file with obsm['spatial'] (give the image with --image)",
                "hest:is_plain_h5ad", "h5ad:read_h5ad"),
)}
FORMATS = tuple(INPUT_FORMATS)


def _formats_text() -> str:
    return "; ".join(f"{k}: {v.layout}" for k, v in INPUT_FORMATS.items())


def detect_format(path: str | Path) -> str:
    """The one format whose layout ``path`` matches; StampInputError when none or several match."""
    p = Path(path)
    _check_input_path(p)
    found = [name for name, f in INPUT_FORMATS.items() if f.matches(p)]
    if len(found) == 1:
        return found[0]
    what = "matches several formats (" + ", ".join(found) + ")" if found else "matches no known input layout"
    raise StampInputError(f"{what}", p, hint=f"pass the format explicitly (--format). Formats: {_formats_text()}")


def _check_input_path(p: Path) -> None:
    """A sample is a folder or a regular file: absent, a device (/dev/zero) or a pipe is said as such."""
    from ..errors import not_a_file

    if p.is_dir() or p.is_file():
        return
    problem = not_a_file(p)
    cls = DataNotFoundError if problem.startswith("not found") else StampInputError
    raise cls(f"sample input: {problem}", p, hint="give a sample folder or file (see --help for the layouts)")


def her2st_sections(root: str | Path) -> list[str]:
    from .her2st import her2st_sections as _sections

    return _sections(root)


def read_sample(path: str | Path, format: str | None = None, section: str | None = None,  # noqa: A002
                image_path: str | Path | None = None, um_per_px: float | None = None):
    """Read any supported input into the sample AnnData (raw counts CSR, spot centres in full-res pixels,
    pixel size and its source in the sample record: ``SampleMeta.of(adata)``)."""
    fmt = format or detect_format(path)
    if fmt not in INPUT_FORMATS:
        raise StampInputError(f"unknown format '{fmt}'", path, hint=f"use one of: {', '.join(FORMATS)}")
    _check_input_path(Path(path))
    entry = INPUT_FORMATS[fmt]
    if section is not None and not entry.sections:
        raise StampInputError(f"--section applies to her2st and HEST inputs, not to {fmt}", path,
                              hint="drop --section, or point to the folder of the one sample")
    return entry.read_sample(path, section=section, image_path=image_path, um_per_px=um_per_px)
