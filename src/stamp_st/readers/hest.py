"""HEST-1k layout (Jaume et al. 2024): ``st/<id>.h5ad`` (spot centres in ``obsm['spatial']``, full-resolution
WSI pixels), ``wsis/<id>.tif`` (pyramidal WSI) and ``metadata/<id>.json`` (pixel size, technology)."""

from __future__ import annotations

from pathlib import Path

from ..errors import StampInputError
from .common import check_section_id
from .constants import (
    FORMAT_HEST,
    GRID_HEX,
    GRID_SQUARE,
    H5AD_SUFFIX,
    HEST_LEGACY_ST_TECHNOLOGIES,
    HEST_METADATA_DIR,
    HEST_METADATA_SUFFIX,
    HEST_PIXEL_SIZE_KEYS,
    HEST_SPOT_DIAMETER_KEY,
    HEST_SPOT_PITCH_KEY,
    HEST_ST_DIR,
    HEST_TECHNOLOGY_KEY,
    HEST_VISIUM_HD,
    HEST_VISIUM_PREFIX,
    HEST_WSI_DIR,
    HEST_WSI_SUFFIXES,
)
from .h5ad import read_anndata_file, sample_from_anndata


def is_hest_root(path: str | Path) -> bool:
    p = Path(path)
    return (p / HEST_ST_DIR).is_dir() and ((p / HEST_WSI_DIR).is_dir() or (p / HEST_METADATA_DIR).is_dir())


def is_hest_h5ad(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == H5AD_SUFFIX and p.parent.name == HEST_ST_DIR and is_hest_root(p.parent.parent)


def is_hest(path: str | Path) -> bool:
    """A HEST-1k root or one of its st/<id>.h5ad files."""
    return is_hest_root(path) or is_hest_h5ad(path)


def is_plain_h5ad(path: str | Path) -> bool:
    """An .h5ad file that is not one of HEST's (those carry their slide and metadata beside them)."""
    p = Path(path)
    return p.is_file() and p.suffix == H5AD_SUFFIX and not is_hest_h5ad(p)


def hest_sections(root: str | Path) -> list[str]:
    return sorted(p.name[: -len(H5AD_SUFFIX)] for p in (Path(root) / HEST_ST_DIR).glob("*" + H5AD_SUFFIX))


def hest_paths(path: str | Path, section: str | None) -> tuple[Path, str]:
    """(HEST root, sample id) from a root + section, or from the path of ``st/<id>.h5ad``."""
    p = Path(path)
    if p.suffix == H5AD_SUFFIX:
        return p.parent.parent, check_section_id(p.name[: -len(H5AD_SUFFIX)], p)
    if section is not None:
        check_section_id(section, p)
    sections = hest_sections(p)
    if section is None or str(section) not in sections:
        what = "no sample id given" if section is None else f"sample '{section}' does not exist"
        shown = ", ".join(sections[:50]) + (" ..." if len(sections) > 50 else "")
        raise StampInputError(f"{what}; available in {HEST_ST_DIR}/: {shown or 'none'}", p / HEST_ST_DIR,
                              hint="pass one of them with section= / --section, or the path of st/<id>.h5ad")
    return p, str(section)


def read_metadata(root: Path, sample_id: str) -> tuple[dict, Path | None]:
    path = root / HEST_METADATA_DIR / f"{sample_id}{HEST_METADATA_SUFFIX}"
    if not path.is_file():
        return {}, None
    from ..io_utils import read_json

    meta = read_json(path, "HEST metadata file")
    if not isinstance(meta, dict):
        raise StampInputError(f"the HEST metadata must be a JSON object, got {type(meta).__name__}", path)
    return meta, path


def metadata_pixel_size(meta: dict, path) -> float | None:
    for key in HEST_PIXEL_SIZE_KEYS:
        v = meta.get(key)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError) as err:
            raise StampInputError(f"metadata '{key}' is not a number: {v!r}", path) from err
        if v > 0:
            return v
    return None


def wsi_path(root: Path, sample_id: str) -> Path | None:
    for suffix in HEST_WSI_SUFFIXES:
        p = root / HEST_WSI_DIR / f"{sample_id}{suffix}"
        if p.is_file():
            return p
    return None


def _float_or_none(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def read_hest(path: str | Path, section: str | None = None, image_path: str | Path | None = None,
              um_per_px: float | None = None):
    """One HEST-1k sample as the sample AnnData of the contract; the WSI is found in ``wsis/`` unless given."""
    root, sample_id = hest_paths(path, section)
    h5ad_path = root / HEST_ST_DIR / f"{sample_id}{H5AD_SUFFIX}"
    adata = read_anndata_file(h5ad_path)
    meta, meta_path = read_metadata(root, sample_id)
    tech = str(meta.get(HEST_TECHNOLOGY_KEY, "")).strip().lower()
    pitch_um = _float_or_none(meta.get(HEST_SPOT_PITCH_KEY))
    notes = [] if meta_path else [f"no {HEST_METADATA_DIR}/{sample_id}{HEST_METADATA_SUFFIX}: pixel size inferred"]
    if tech in HEST_LEGACY_ST_TECHNOLOGIES:
        grid = GRID_SQUARE
    elif tech.startswith(HEST_VISIUM_PREFIX) and tech != HEST_VISIUM_HD:
        grid = GRID_HEX
    else:  # Visium HD bins, Xenium pseudo-spots, ...: grid from the array coordinates, pitch from metadata
        grid = None
        if pitch_um is None and meta_path:
            notes.append(f"technology '{tech}' without '{HEST_SPOT_PITCH_KEY}': spot pitch assumed from the grid "
                         "shape; pass --um-per-px if the pixel size is wrong")
    if image_path is None:
        image_path = wsi_path(root, sample_id)
        if image_path is None:
            notes.append(f"no image in {HEST_WSI_DIR}/ for {sample_id}")
    return sample_from_anndata(
        adata, h5ad_path, fmt=FORMAT_HEST, sample_id=sample_id, image_path=image_path, um_per_px=um_per_px,
        um_per_px_metadata=metadata_pixel_size(meta, meta_path), grid=grid,
        spot_pitch_um=pitch_um,
        spot_diameter_um=_float_or_none(meta.get(HEST_SPOT_DIAMETER_KEY)),
        qc={"notes": notes, "metadata_path": str(meta_path) if meta_path else "", "st_technology": tech},
    )
