"""10x Space Ranger output (Visium): counts from ``filtered_feature_bc_matrix.h5`` (or, where it is absent, the
``filtered_feature_bc_matrix/`` folder of matrix.mtx.gz, barcodes.tsv.gz, features.tsv.gz; 1.x: genes.tsv),
spot centres from
``spatial/tissue_positions_list.csv`` (1.x, no header), ``spatial/tissue_positions.csv`` (>= 2.0, header) or
``spatial/tissue_positions.parquet`` (>= 3), scale factors from ``spatial/scalefactors_json.json``. The
full-resolution H&E is not part of the output folder, so its path comes from the user.

Visium HD: a bin folder ``outs/binned_outputs/square_016um`` (or ``square_008um``, ...) reads as spots on a
square grid whose pitch is the bin size (``bin_size_um``) and whose pixel size is Space Ranger's
``microns_per_pixel``; ``outs/`` itself reads its 16 µm bins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError, StampInputError
from .common import build_sample, match_spot_ids, require_file
from .constants import (
    FORMAT_SPACERANGER,
    GRID_HEX,
    GRID_SQUARE,
    SF_BIN_SIZE_UM,
    SF_MICRONS_PER_PIXEL,
    SF_SPOT_DIAMETER,
    SR_BINNED_DIR,
    SR_COL_ARRAY_COL,
    SR_COL_ARRAY_ROW,
    SR_COL_BARCODE,
    SR_COL_IN_TISSUE,
    SR_COL_PXL_COL,
    SR_COL_PXL_ROW,
    SR_DEFAULT_BIN,
    SR_FILTERED_H5,
    SR_FILTERED_MTX_DIR,
    SR_H5_SOFTWARE_ATTR,
    SR_IMAGE_KEYS,
    SR_MTX_FILES,
    SR_OUTS_DIR,
    SR_POSITION_COLUMNS,
    SR_POSITIONS_PARQUET,
    SR_POSITIONS_V1,
    SR_POSITIONS_V2,
    SR_SCALEFACTORS,
    SR_SPATIAL_DIR,
    UNS_SPATIAL,
    UNS_SPATIAL_IMAGES,
    UNS_SPATIAL_METADATA,
    UNS_SPATIAL_SCALEFACTORS,
    VAR_GENE_IDS,
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_PITCH_UM,
)
from .pixel_size import um_per_px_from_pitch


def has_counts(folder: Path) -> bool:
    """The folder holds the filtered matrix: the .h5, or the Market Exchange folder."""
    return (folder / SR_FILTERED_H5).is_file() or any((folder / SR_FILTERED_MTX_DIR / m).is_file()
                                                      for m in SR_MTX_FILES)


def counts_path(outs: Path) -> Path:
    """The filtered matrix of ``outs``: the .h5 where present, else the ``filtered_feature_bc_matrix/`` folder."""
    if (outs / SR_FILTERED_H5).is_file() or not has_counts(outs):
        return require_file(outs / SR_FILTERED_H5, f"counts matrix ({SR_FILTERED_H5} or {SR_FILTERED_MTX_DIR}/)",
                            hint="point to the Space Ranger 'outs' folder (it holds filtered_feature_bc_matrix.h5 "
                                 "or the filtered_feature_bc_matrix/ folder of matrix.mtx.gz, barcodes, features)")
    return outs / SR_FILTERED_MTX_DIR


def spaceranger_outs(path: str | Path) -> Path:
    """The folder that holds the matrix and ``spatial/``: ``path`` itself, its ``outs/``, or the folder of a
    given ``filtered_feature_bc_matrix.h5`` or ``filtered_feature_bc_matrix/``."""
    p = Path(path)
    if p.is_file() and p.name == SR_FILTERED_H5:
        return p.parent
    if p.is_dir() and p.name == SR_FILTERED_MTX_DIR and has_counts(p.parent):
        return p.parent
    if has_counts(p):
        return p
    if has_counts(p / SR_BINNED_DIR / SR_DEFAULT_BIN):  # Visium HD outs/: 16 µm bins
        return p / SR_BINNED_DIR / SR_DEFAULT_BIN
    if (p / SR_SPATIAL_DIR).is_dir():
        return p
    if has_counts(p / SR_OUTS_DIR):
        return p / SR_OUTS_DIR
    if has_counts(p / SR_OUTS_DIR / SR_BINNED_DIR / SR_DEFAULT_BIN):
        return p / SR_OUTS_DIR / SR_BINNED_DIR / SR_DEFAULT_BIN
    return p


def is_spaceranger(path: str | Path) -> bool:
    return has_counts(spaceranger_outs(path))


def positions_file(outs: Path) -> Path:
    spatial = outs / SR_SPATIAL_DIR
    for name in (SR_POSITIONS_PARQUET, SR_POSITIONS_V2, SR_POSITIONS_V1):
        if (spatial / name).is_file():
            return spatial / name
    raise DataNotFoundError(
        f"no spot positions file ({SR_POSITIONS_PARQUET}, {SR_POSITIONS_V2} or {SR_POSITIONS_V1})", spatial,
        hint="point to the Space Ranger 'outs' folder that holds spatial/ (positions, scale factors)")


def read_positions(path: Path) -> pd.DataFrame:
    """Positions table with the standard column names, index = barcode; header auto-detected (1.x files have
    none, >= 2.0 files have one)."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            first = path.open().readline().strip().split(",")
            has_header = first[0] == SR_COL_BARCODE
            df = pd.read_csv(path, header=0 if has_header else None,
                             names=None if has_header else list(SR_POSITION_COLUMNS), engine="c")
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise StampInputError(f"cannot parse spot positions ({err})", path) from err
    missing = set(SR_POSITION_COLUMNS) - set(df.columns)
    if missing:
        raise StampInputError(f"positions file lacks columns {sorted(missing)}", path,
                              hint=f"expected columns {', '.join(SR_POSITION_COLUMNS)}")
    df[SR_COL_BARCODE] = df[SR_COL_BARCODE].astype(str)
    if df[SR_COL_BARCODE].duplicated().any():
        raise StampInputError("positions file lists a barcode twice", path)
    return df.set_index(SR_COL_BARCODE)


def read_scalefactors(outs: Path) -> dict:
    path = require_file(outs / SR_SPATIAL_DIR / SR_SCALEFACTORS, "scale factors file",
                        hint="point to the Space Ranger 'outs' folder that holds spatial/scalefactors_json.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StampInputError(f"scale factors are not valid JSON ({err})", path) from err


def read_counts_h5(path: Path):
    """The 10x HDF5 matrix (v2 and v3 layouts) as AnnData, Gene Expression features only."""
    import scanpy as sc

    try:
        return sc.read_10x_h5(path, gex_only=True)
    except Exception as err:  # noqa: BLE001 - h5py/scanpy raise many types for a broken file
        raise StampInputError(f"cannot read the 10x HDF5 matrix ({type(err).__name__}: {err})", path,
                              hint="check that the file is a complete Space Ranger feature-barcode matrix") from err


def read_counts_mtx(folder: Path):
    """The Market Exchange matrix folder (Space Ranger >= 3 / 2 gzipped with features.tsv.gz, 1.x genes.tsv) as
    AnnData, Gene Expression features only; names as ``read_counts_h5`` gives them (symbols, not made unique)."""
    import scanpy as sc

    try:
        return sc.read_10x_mtx(folder, var_names="gene_symbols", make_unique=False, gex_only=True)
    except Exception as err:  # noqa: BLE001 - scanpy/pandas raise many types for a broken folder
        raise StampInputError(f"cannot read the 10x matrix folder ({type(err).__name__}: {err})", folder,
                              hint="it needs matrix.mtx.gz, barcodes.tsv.gz and features.tsv.gz (Space Ranger 1.x: "
                                   "matrix.mtx, barcodes.tsv, genes.tsv), complete and from one run") from err


def _software_version(path: Path) -> str:
    import h5py

    if path.is_dir():  # the Market Exchange folder records no version
        return ""

    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get(SR_H5_SOFTWARE_ATTR, "")
        return v.decode() if isinstance(v, bytes) else str(v)
    except OSError:
        return ""


def _load_spatial_images(outs: Path) -> dict:
    """hires/lowres PNGs as uint8 arrays, as scanpy's ``uns['spatial'][lib]['images']`` (small: <= 2000 px)."""
    from PIL import Image

    images = {}
    for key, name in SR_IMAGE_KEYS.items():
        p = outs / SR_SPATIAL_DIR / name
        if not p.is_file() and outs.parent.name == SR_BINNED_DIR:  # Visium HD: images in outs/spatial/
            p = outs.parent.parent / SR_SPATIAL_DIR / name
        if p.is_file():
            with Image.open(p) as im:
                images[key] = np.asarray(im.convert("RGB"))
    return images


def read_spaceranger(path: str | Path, image_path: str | Path | None = None, um_per_px: float | None = None,
                     library_id: str | None = None, load_images: bool = True):
    """Read a Space Ranger output folder into the sample AnnData of the contract."""
    outs = spaceranger_outs(path)
    h5 = counts_path(outs)
    pos_path = positions_file(outs)
    scalefactors = read_scalefactors(outs)
    counts = read_counts_h5(h5) if h5.suffix == ".h5" else read_counts_mtx(h5)
    positions = read_positions(pos_path)

    match_spot_ids(counts.obs_names, positions.index, h5, pos_path, min_fraction=1.0)
    pos = positions.loc[counts.obs_names.astype(str)]
    xy = np.column_stack([pos[SR_COL_PXL_COL].to_numpy(np.float64), pos[SR_COL_PXL_ROW].to_numpy(np.float64)])
    hd_bin_um = scalefactors.get(SF_BIN_SIZE_UM)
    if outs.parent.name == SR_BINNED_DIR:  # Visium HD bin folder: name the sample after the run
        run = outs.parent.parent
        lib = library_id or f"{run.parent.name if run.name == SR_OUTS_DIR else run.name}_{outs.name}"
    else:
        lib = library_id or (outs.parent.name if outs.name == SR_OUTS_DIR else outs.name)
    spatial_uns = {lib: {UNS_SPATIAL_IMAGES: _load_spatial_images(outs) if load_images else {},
                         UNS_SPATIAL_SCALEFACTORS: scalefactors,
                         UNS_SPATIAL_METADATA: {SR_H5_SOFTWARE_ATTR: _software_version(h5)}}}
    grid, pitch_um, diameter_um, um_meta = GRID_HEX, VISIUM_SPOT_PITCH_UM, VISIUM_SPOT_DIAMETER_UM, None
    if hd_bin_um:  # Visium HD: square bins, side = pitch; Space Ranger states the pixel size
        grid, pitch_um = GRID_SQUARE, float(hd_bin_um)
        diameter_um = pitch_um
        um_meta = scalefactors.get(SF_MICRONS_PER_PIXEL)
    # the pitch from every grid position (in and out of tissue), not only the spots that have counts
    pitch = um_per_px_from_pitch(positions[SR_COL_ARRAY_ROW], positions[SR_COL_ARRAY_COL],
                                 positions[[SR_COL_PXL_COL, SR_COL_PXL_ROW]].to_numpy(np.float64), grid,
                                 pitch_um)
    gene_ids = counts.var[VAR_GENE_IDS].astype(str).tolist() if VAR_GENE_IDS in counts.var else None
    return build_sample(
        counts.X, counts.obs_names, counts.var_names, gene_ids,
        pos[SR_COL_ARRAY_ROW].to_numpy(np.int64), pos[SR_COL_ARRAY_COL].to_numpy(np.int64),
        pos[SR_COL_IN_TISSUE].to_numpy() == 1, xy,
        sample_id=lib, fmt=FORMAT_SPACERANGER, source_path=outs, positions_path=pos_path,
        image_path=image_path, grid=grid, spot_pitch_um=pitch_um,
        spot_diameter_um=diameter_um, um_per_px_user=um_per_px,
        um_per_px_metadata=float(um_meta) if um_meta else None,
        spot_diameter_px=scalefactors.get(SF_SPOT_DIAMETER), um_per_px_pitch=pitch,
        qc={"n_positions": int(len(positions)), "positions_file": pos_path.name},
        uns_extra={UNS_SPATIAL: spatial_uns},
    )
