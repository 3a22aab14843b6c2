"""Any ``.h5ad`` with spot centres in ``obsm['spatial']`` (full-resolution pixels) plus, optionally, the path
of the image those pixels refer to. Also the shared AnnData -> sample step of the HEST reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StampInputError
from .common import build_sample, counts_problem, require_file
from .constants import (
    FORMAT_H5AD,
    GRID_HEX,
    GRID_SQUARE,
    LAYER_COUNTS,
    LEGACY_ST_SPOT_DIAMETER_UM,
    LEGACY_ST_SPOT_PITCH_UM,
    OBS_ARRAY_COL,
    OBS_ARRAY_ROW,
    OBS_IN_TISSUE,
    OBSM_SPATIAL,
    SF_SPOT_DIAMETER,
    UM_PER_PX_METADATA,
    UM_PER_PX_USER,
    UNS_SPATIAL,
    UNS_SPATIAL_SCALEFACTORS,
    UNS_STAMP,
    VAR_ID_COLUMNS,
    VAR_SYMBOL_COLUMNS,
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_PITCH_UM,
)
from .ensembl import looks_like_ensembl

GRID_DEFAULTS = {GRID_HEX: (VISIUM_SPOT_PITCH_UM, VISIUM_SPOT_DIAMETER_UM),
                 GRID_SQUARE: (LEGACY_ST_SPOT_PITCH_UM, LEGACY_ST_SPOT_DIAMETER_UM)}


def read_anndata_file(path: Path):
    import anndata as ad

    require_file(path, "AnnData file", hint="check the .h5ad path")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a broken file
        raise StampInputError(f"cannot read the .h5ad ({type(err).__name__}: {err})", path,
                              hint="check that the file is a complete AnnData .h5ad") from err


def raw_counts(adata, path) -> tuple[object, pd.Index, pd.DataFrame, str]:
    """(counts, var_names, var, where): X when it holds integer counts, else layers['counts'], else raw.X.
    The tokenizer's normalisation assumes raw counts; a log-normalised X would silently shift every rank."""
    candidates = [("X", adata.X, adata.var_names, adata.var)]
    if LAYER_COUNTS in adata.layers:
        candidates.append((f"layers['{LAYER_COUNTS}']", adata.layers[LAYER_COUNTS], adata.var_names, adata.var))
    if adata.raw is not None:
        candidates.append(("raw.X", adata.raw.X, adata.raw.var_names, adata.raw.var))
    for where, M, names, var in candidates:
        if M is not None and counts_problem(M) is None:
            return M, names, var, where
    raise StampInputError(
        f"no raw counts found (checked {', '.join(c[0] for c in candidates)}: they hold non-integer or negative "
        "values, e.g. log-normalised data)", path,
        hint=f"store the raw integer counts in X or layers['{LAYER_COUNTS}']")


def gene_names(var_names: pd.Index, var: pd.DataFrame) -> tuple[list[str], list[str] | None, list[str]]:
    """(symbols, Ensembl ids or None, notes). Where var_names are Ensembl ids and a symbol column exists, the
    symbols become the names (the contract's var_names are symbols)."""
    names = [str(v) for v in var_names]
    ids_col = next((c for c in VAR_ID_COLUMNS if c in var.columns), None)
    sym_col = next((c for c in VAR_SYMBOL_COLUMNS if c in var.columns), None)
    ids = None if ids_col is None else [("" if pd.isna(g) else str(g)) for g in var[ids_col]]
    notes: list[str] = []
    if looks_like_ensembl(names) and sym_col is not None:
        syms = [("" if pd.isna(s) else str(s)) for s in var[sym_col]]
        if not looks_like_ensembl([s for s in syms if s]):
            notes.append(f"var_names are Ensembl ids; symbols taken from var['{sym_col}']")
            if ids is None or not looks_like_ensembl([g for g in ids if g]):
                ids = list(names)
            names = [s if s else n for s, n in zip(syms, names)]
    elif looks_like_ensembl(names) and ids is None:
        ids = list(names)
    return names, ids, notes


def grid_from_array(array_row, array_col) -> str:
    """Visium's hex grid uses only positions with array_row + array_col even; a square grid uses all."""
    r = np.asarray(array_row, dtype=np.int64)
    c = np.asarray(array_col, dtype=np.int64)
    if len(r) > 1 and np.all((r + c) % 2 == 0):
        return GRID_HEX
    return GRID_SQUARE


def spot_diameter_from_uns(adata) -> float | None:
    spatial = adata.uns.get(UNS_SPATIAL)
    if not isinstance(spatial, dict):
        return None
    for lib in spatial.values():
        try:
            return float(lib[UNS_SPATIAL_SCALEFACTORS][SF_SPOT_DIAMETER])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def sample_from_anndata(adata, path: Path, *, fmt: str, sample_id: str, image_path=None,
                        um_per_px: float | None = None, um_per_px_metadata: float | None = None,
                        grid: str | None = None, spot_pitch_um: float | None = None,
                        spot_diameter_um: float | None = None, qc: dict | None = None):
    """Contract sample from an in-memory AnnData that carries ``obsm['spatial']`` in full-resolution px."""
    if OBSM_SPATIAL not in adata.obsm:
        raise StampInputError("no spot centres: obsm['spatial'] is missing", path,
                              hint="store the spot centres (x, y) in full-resolution image pixels in "
                                   "obsm['spatial']")
    xy = np.asarray(adata.obsm[OBSM_SPATIAL], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise StampInputError(f"obsm['spatial'] has shape {xy.shape}, expected [n_spots, 2]", path)
    xy = xy[:, :2]
    counts, var_names, var, where = raw_counts(adata, path)
    symbols, ids, notes = gene_names(var_names, var)
    qc = dict(qc or {})
    qc["counts_from"] = where
    prev = adata.uns.get(UNS_STAMP, {}) if isinstance(adata.uns.get(UNS_STAMP), dict) else {}
    if um_per_px_metadata is None and prev.get("um_per_px_source") in (UM_PER_PX_USER, UM_PER_PX_METADATA):
        um_per_px_metadata = prev.get("um_per_px")  # a sample we wrote ourselves keeps its known pixel size
    n = adata.n_obs
    # neither the caller (a format that knows its technology) nor our own record states the grid and pitch: the
    # pitch below is a guess from the array layout, which may rank estimates but cannot refute a given pixel size
    pitch_assumed = not (spot_pitch_um or prev.get("spot_pitch_um") or grid or prev.get("grid"))
    if OBS_ARRAY_ROW in adata.obs and OBS_ARRAY_COL in adata.obs:
        row = adata.obs[OBS_ARRAY_ROW].to_numpy(np.int64)
        col = adata.obs[OBS_ARRAY_COL].to_numpy(np.int64)
        grid = grid or prev.get("grid") or grid_from_array(row, col)
    else:
        row = col = np.full(n, -1, np.int64)
        grid = grid or prev.get("grid") or GRID_HEX
        notes.append("no obs['array_row'/'array_col']: spatial grouping and the spot-pitch pixel size are "
                     "unavailable")
    pitch_default, diam_default = GRID_DEFAULTS.get(grid, GRID_DEFAULTS[GRID_HEX])
    spot_pitch_um = spot_pitch_um or prev.get("spot_pitch_um") or pitch_default
    spot_diameter_um = spot_diameter_um or prev.get("spot_diameter_um") or diam_default
    in_tissue = (adata.obs[OBS_IN_TISSUE].to_numpy().astype(bool) if OBS_IN_TISSUE in adata.obs
                 else np.ones(n, bool))
    qc["notes"] = list(qc.get("notes", [])) + notes
    return build_sample(
        counts, adata.obs_names, symbols, ids, row, col, in_tissue, xy,
        sample_id=sample_id, fmt=fmt, source_path=path, positions_path=path, image_path=image_path,
        grid=grid, spot_pitch_um=spot_pitch_um, spot_diameter_um=spot_diameter_um, um_per_px_user=um_per_px,
        um_per_px_metadata=um_per_px_metadata, spot_diameter_px=spot_diameter_from_uns(adata), qc=qc,
        spot_pitch_assumed=pitch_assumed, uns_extra={UNS_SPATIAL: adata.uns[UNS_SPATIAL]} if isinstance(adata.uns.get(UNS_SPATIAL), dict) else None,
    )


def read_h5ad(path: str | Path, image_path: str | Path | None = None, um_per_px: float | None = None):
    """A generic .h5ad (e.g. scanpy's read_visium output written to disk) as the sample of the contract."""
    path = Path(path)
    adata = read_anndata_file(path)
    return sample_from_anndata(adata, path, fmt=FORMAT_H5AD, sample_id=path.stem, image_path=image_path,
                               um_per_px=um_per_px)
