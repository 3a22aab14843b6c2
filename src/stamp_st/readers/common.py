"""What every reader shares: building the sample AnnData of the contract (docs/ARCHITECTURE.md), checking
spot ids, gene names and the image against the positions, and settling the pixel size. Each check raises
StampInputError naming the file and what to do, so a user never trains on silently misaligned data."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import StampInputError
from .constants import (
    IMAGE_SCALE_MISMATCH_FACTOR,
    OBS_ARRAY_COL,
    OBS_ARRAY_ROW,
    OBS_IN_TISSUE,
    OBSM_SPATIAL,
    VAR_GENE_IDS,
)
from .ensembl import fill_gene_ids, looks_like_ensembl
from .pixel_size import resolve_um_per_px, um_per_px_from_diameter, um_per_px_from_pitch
from .sample_meta import SampleMeta


def require_file(path: Path, what: str, hint: str) -> Path:
    from ..errors import require_file as _require

    return _require(path, what, hint)


def numeric_columns(df: pd.DataFrame, columns: Sequence[str], path, integer: Sequence[str] = ()) -> pd.DataFrame:
    """``df`` with ``columns`` as finite numbers (``integer``: whole numbers): a text value (a decimal comma
    ``12,5``, a unit, a shifted row) or an empty cell (a short, ragged row) is named with its row and column."""
    df = df.copy()
    for col in columns:
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce")
        bad = ~np.isfinite(num.to_numpy(np.float64)) | (num.isna().to_numpy())
        if col in integer:
            bad |= np.isfinite(num.to_numpy(np.float64)) & (num.to_numpy(np.float64) % 1 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = raw.iloc[i]
            comma = isinstance(value, str) and re.fullmatch(r"-?\d+,\d+", value.strip())
            raise StampInputError(
                f"column {col!r}: {int(bad.sum())} value(s) are not {'whole ' if col in integer else ''}numbers, "
                f"first in data row {i + 1}: {value!r}", path,
                hint="write decimals with a dot (12.5), not a comma" if comma else
                "every row needs a number in every column (a short or shifted row, or an empty cell, "
                "gives this)")
        df[col] = num
    return df


_SECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_section_id(section, source=None) -> str:
    """A section / sample id that becomes part of a file name: letters, digits, ``_ . -`` only, no ``..``, so
    that it can never point outside its folder (``../../x``, an absolute path)."""
    text = str(section)
    if not _SECTION_ID.match(text) or ".." in text:
        raise StampInputError(f"section id {text!r} is not a plain id (letters, digits, '_', '.', '-')", source,
                              hint="give the id as listed in the dataset's folder, e.g. TENX95 or B1")
    return text


def check_user_um_per_px(um_per_px: float | None) -> float | None:
    if um_per_px is None:
        return None
    v = float(um_per_px)
    if not np.isfinite(v) or v <= 0:
        raise StampInputError(f"pixel size must be a positive number of µm per pixel, got {um_per_px}",
                              hint="pass e.g. --um-per-px 0.5 for a 20x scan")
    return v


def match_spot_ids(counts_ids: Sequence[str], position_ids: Sequence[str], counts_path, positions_path,
                   min_fraction: float = 1.0) -> np.ndarray:
    """Bool mask over ``counts_ids``: which have a position. Raises when fewer than ``min_fraction`` of the
    counts spots match (the two files then come from different samples or runs)."""
    counts_ids = pd.Index(map(str, counts_ids))
    pos = pd.Index(map(str, position_ids))
    has_pos = counts_ids.isin(pos)
    n_match = int(has_pos.sum())
    if len(counts_ids) == 0 or n_match < min_fraction * len(counts_ids) or n_match == 0:
        raise StampInputError(
            f"spot ids of the counts ({counts_path}) and the positions do not match: {n_match} of "
            f"{len(counts_ids)} counts spots have a position, {int(pos.isin(counts_ids).sum())} of {len(pos)} "
            f"positions have counts (e.g. counts '{counts_ids[0] if len(counts_ids) else ''}', positions "
            f"'{pos[0] if len(pos) else ''}')",
            positions_path,
            hint="give the counts and positions of the same sample and run (check barcode suffixes such "
                 "as '-1' and the sample/section name)",
        )
    return np.asarray(has_pos)


def check_gene_names(symbols: Sequence[str], gene_ids: Sequence[str] | None, path) -> list[str]:
    """Catch a gene-name column that holds Ensembl ids while the id column holds symbols (swapped columns).
    Returns notes for QC (e.g. 'no symbols: genes will be mapped by Ensembl id')."""
    symbols = [str(s) for s in symbols]
    notes: list[str] = []
    if not looks_like_ensembl(symbols):
        return notes
    ids = None if gene_ids is None else [str(g) for g in gene_ids]
    if ids is not None and any(ids) and not looks_like_ensembl([g for g in ids if g]):
        raise StampInputError(
            "the gene-name (symbol) column holds Ensembl ids and the gene-id column holds other names "
            f"(e.g. name '{symbols[0]}', id '{ids[0]}'): the two columns look swapped",
            path,
            hint="re-export the features with gene ids in the id column and symbols in the name column "
                 "(for an .h5ad: var_names = symbols, var['gene_ids'] = Ensembl ids)",
        )
    if ids is not None and ids != symbols:
        raise StampInputError(
            f"both the gene-name and gene-id columns hold Ensembl ids and they differ (e.g. '{symbols[0]}' vs "
            f"'{ids[0]}')",
            path, hint="put gene symbols in the name column, or the same Ensembl ids in both")
    notes.append("gene names are Ensembl ids (no symbols): genes are mapped by Ensembl id")
    return notes


def check_image(image_path: str | Path, xy_px: np.ndarray, positions_path=None) -> tuple[int, int]:
    """Image size (width, height) from headers, after checking that every spot centre lies on the image.

    Positions far beyond the image mean a downscaled copy (hires/lowres PNG) was given as the full-resolution
    image; a few centres off the image mean the image and positions do not belong together."""
    from .slide import image_size_px

    image_path = Path(image_path)
    w, h = image_size_px(image_path)
    xy = np.asarray(xy_px, dtype=np.float64)
    if len(xy) == 0:
        return w, h
    max_x, max_y = float(np.nanmax(xy[:, 0])), float(np.nanmax(xy[:, 1]))
    if max_x > IMAGE_SCALE_MISMATCH_FACTOR * w or max_y > IMAGE_SCALE_MISMATCH_FACTOR * h:
        raise StampInputError(
            f"the image is {w} x {h} px but spot centres reach x={max_x:.0f}, y={max_y:.0f} px "
            f"(positions of {positions_path or 'the sample'} are in full-resolution pixels): this looks like "
            f"a downscaled image (about {max(max_x / w, max_y / h):.1f}x too small)",
            image_path,
            hint="give the full-resolution H&E image the sample was imaged with, not tissue_hires_image.png or "
                 "tissue_lowres_image.png",
        )
    off = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h) | ~np.isfinite(xy).all(axis=1)
    if off.any():
        raise StampInputError(
            f"{int(off.sum())} of {len(xy)} spot centres lie outside the image ({w} x {h} px; e.g. centre "
            f"({xy[off][0, 0]:.0f}, {xy[off][0, 1]:.0f}))",
            image_path,
            hint="check that the image and the positions belong to the same sample and that the image is not "
                 "cropped or rotated",
        )
    return w, h


def counts_problem(M) -> str | None:
    """Why ``M`` is not a raw count matrix (None when it is): the tokenizer's normalisation assumes raw
    counts, so log-transformed, scaled, negative or non-finite values would give garbage ranks. Every reader
    checks its counts here (``build_sample``), the h5ad reader also to pick the layer that holds counts."""
    data = np.asarray(M.data if sp.issparse(M) else M).ravel()
    if data.size == 0:
        return None
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        return f"non-numeric values (dtype {data.dtype})"
    if np.issubdtype(data.dtype, np.integer):
        return "negative values" if (data < 0).any() else None
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        return f"{n_nan} NaN and {int((~finite).sum()) - n_nan} infinite values"
    if (data < 0).any():
        return f"negative values (min {float(data.min()):g})"
    frac = data != np.round(data)
    if frac.any():
        return (f"non-integer values (e.g. {float(data[np.argmax(frac)]):g}: normalised or log-transformed "
                "data?)")
    return None


def check_raw_counts(M, path) -> None:
    problem = counts_problem(M)
    if problem is not None:
        raise StampInputError(f"the counts are not raw integer counts: {problem}", path,
                              hint="give the raw (UMI) count matrix, not normalised, scaled or log-transformed "
                                   "data")


def to_csr_counts(X) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    X.sort_indices()
    return X


def build_sample(
    X,
    obs_names: Sequence[str],
    var_names: Sequence[str],
    gene_ids: Sequence[str] | None,
    array_row,
    array_col,
    in_tissue,
    xy_px: np.ndarray,
    *,
    sample_id: str,
    fmt: str,
    source_path,
    positions_path=None,
    image_path=None,
    grid: str,
    spot_pitch_um: float,
    spot_diameter_um: float,
    um_per_px_user: float | None = None,
    um_per_px_metadata: float | None = None,
    spot_diameter_px: float | None = None,
    um_per_px_pitch: float | None = None,
    qc: dict | None = None,
    obs_extra: pd.DataFrame | None = None,
    uns_extra: dict | None = None,
    spot_pitch_assumed: bool = False,
):
    """The sample AnnData of the contract, with the image checked and the pixel size settled.
    ``spot_pitch_assumed``: the grid's pitch is a guess (a plain h5ad), so it cannot refute a given pixel size."""
    import anndata as ad

    obs_names = [str(s) for s in obs_names]
    check_raw_counts(X, source_path)
    if len(set(obs_names)) != len(obs_names):
        raise StampInputError("spot ids are not unique", source_path,
                              hint="make spot (barcode) ids unique before reading")
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    qc = dict(qc or {})
    notes = list(qc.pop("notes", []))
    notes += check_gene_names(var_names, gene_ids, source_path)
    image_size = None
    if image_path:
        image_size = list(check_image(image_path, xy, positions_path))
    pitch = um_per_px_pitch
    if pitch is None:  # a reader that knows more grid positions than spots (e.g. all Visium spots) passes it
        pitch = um_per_px_from_pitch(array_row, array_col, xy, grid, spot_pitch_um)
    diam = um_per_px_from_diameter(spot_diameter_px, spot_diameter_um)
    um_per_px, source = resolve_um_per_px(check_user_um_per_px(um_per_px_user), um_per_px_metadata, pitch, diam,
                                          where=positions_path or source_path, spots_known=not spot_pitch_assumed)
    qc["um_per_px_from_spot_pitch"] = pitch
    qc["um_per_px_from_spot_diameter"] = diam
    qc["notes"] = notes

    obs = pd.DataFrame(index=pd.Index(obs_names, name=None))
    obs[OBS_ARRAY_ROW] = np.asarray(array_row)
    obs[OBS_ARRAY_COL] = np.asarray(array_col)
    obs[OBS_IN_TISSUE] = np.asarray(in_tissue, dtype=bool)
    if obs_extra is not None:
        for c in obs_extra.columns:
            obs[c] = np.asarray(obs_extra[c])
    ids, filled = fill_gene_ids([str(v) for v in var_names], gene_ids)
    if filled:
        notes.append(filled)
    var = pd.DataFrame({VAR_GENE_IDS: ids}, index=pd.Index([str(v) for v in var_names]))
    adata = ad.AnnData(X=to_csr_counts(X), obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm[OBSM_SPATIAL] = xy
    SampleMeta(
        sample_id=str(sample_id), technology=fmt, source_path=str(source_path),
        image_path=str(image_path) if image_path else "", image_size_px=image_size, slide_um_per_px=um_per_px,
        slide_um_per_px_source=source, grid=grid, spot_pitch_um=float(spot_pitch_um),
        spot_diameter_um=float(spot_diameter_um), qc=qc,
    ).store(adata)
    for k, v in (uns_extra or {}).items():
        adata.uns[k] = v
    return adata
