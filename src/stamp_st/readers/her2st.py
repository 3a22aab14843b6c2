"""her2st (Andersson et al., Nat Commun 2021): legacy ST, 100 µm spots on a 200 µm square grid.

Counts ``ST-cnts/<sec>.tsv.gz`` (rows = spots "<x>x<y>" in array coordinates, columns = gene symbols),
spot table ``ST-spotfiles/<sec>_selection.tsv`` (x, y, pixel_x, pixel_y, selected), H&E
``ST-imgs/<patient>/<sec>/*.jpg`` for a few sections. The study gives no pixel size: it is inferred from the
200 µm grid pitch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError, StampInputError
from .common import build_sample, check_section_id, match_spot_ids, numeric_columns, require_file
from .constants import (
    FORMAT_HER2ST,
    GRID_SQUARE,
    HER2ST_COL_PIXEL_X,
    HER2ST_COL_PIXEL_Y,
    HER2ST_COL_SELECTED,
    HER2ST_COL_X,
    HER2ST_COL_Y,
    HER2ST_COUNTS_DIR,
    HER2ST_COUNTS_SUFFIX,
    HER2ST_IMAGE_GLOB,
    HER2ST_IMAGES_DIR,
    HER2ST_SPOT_ID_SEP,
    HER2ST_SPOTS_DIR,
    HER2ST_SPOTS_SUFFIX,
    LEGACY_ST_SPOT_DIAMETER_UM,
    LEGACY_ST_SPOT_PITCH_UM,
)

# at least this fraction of the counts' spots must be in the spot table, else the files do not belong together
MIN_MATCH_FRACTION = 0.5


def is_her2st(path: str | Path) -> bool:
    p = Path(path)
    return (p / HER2ST_COUNTS_DIR).is_dir() and (p / HER2ST_SPOTS_DIR).is_dir()


def her2st_sections(root: str | Path) -> list[str]:
    """Section ids with a counts file (e.g. 'A1', 'B4'), sorted."""
    d = Path(root) / HER2ST_COUNTS_DIR
    if not d.is_dir():
        raise DataNotFoundError(f"no {HER2ST_COUNTS_DIR}/ folder: not a her2st root", root,
                                hint="point to the her2st folder that holds ST-cnts/ and ST-spotfiles/")
    return sorted(p.name[: -len(HER2ST_COUNTS_SUFFIX)] for p in d.glob("*" + HER2ST_COUNTS_SUFFIX))


def spot_id(x, y) -> str:
    return f"{int(x)}{HER2ST_SPOT_ID_SEP}{int(y)}"


def section_image(root: str | Path, section: str) -> Path | None:
    """The full-resolution H&E of a section, or None where the study publishes none."""
    d = Path(root) / HER2ST_IMAGES_DIR / section[:1] / check_section_id(section, root)
    found = sorted(d.glob(HER2ST_IMAGE_GLOB)) if d.is_dir() else []
    if len(found) > 1:
        raise StampInputError(f"several images for section {section}: {[f.name for f in found]}", d,
                              hint="pass the one to use with image_path= / --image")
    return found[0] if found else None


def read_counts_tsv(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(dense float32 counts [spots x genes], spot ids, gene symbols). The header is read separately so that
    duplicate gene symbols keep their real names (pandas would rename them to 'X.1'); no per-column dtype map
    (15k entries make pandas' C parser several times slower), and one chunk (``low_memory=False``: chunked
    parsing of a 15k-column table spends most of its time concatenating column chunks)."""
    import gzip

    try:
        with gzip.open(path, "rt") as fh:
            header = fh.readline().rstrip("\n").split("\t")
        genes = header[1:]
        df = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0, engine="c", low_memory=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise StampInputError(f"cannot parse the counts table ({err})", path,
                              hint="expected a tab-separated table: spot id, then one integer column per gene") \
            from err
    if df.shape[1] != len(genes):
        raise StampInputError(f"header names {len(genes)} genes but rows hold {df.shape[1]} values", path)
    bad = [genes[i] for i, t in enumerate(df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise StampInputError(f"non-numeric counts in {len(bad)} gene columns (e.g. {bad[0]})", path,
                              hint="the table must hold raw integer counts")
    X = df.to_numpy(np.float32)  # values are checked with every reader's in build_sample
    return X, [str(i) for i in df.index], genes


def read_spot_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", engine="c")
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"cannot parse the spot table ({err})", path) from err
    need = {HER2ST_COL_X, HER2ST_COL_Y, HER2ST_COL_PIXEL_X, HER2ST_COL_PIXEL_Y, HER2ST_COL_SELECTED}
    if need - set(df.columns):
        raise StampInputError(f"spot table lacks columns {sorted(need - set(df.columns))}", path,
                              hint=f"expected columns {sorted(need)}")
    df = numeric_columns(df, sorted(need), path, integer=(HER2ST_COL_X, HER2ST_COL_Y, HER2ST_COL_SELECTED))
    df.index = [spot_id(int(x), int(y)) for x, y in zip(df[HER2ST_COL_X], df[HER2ST_COL_Y])]
    if df.index.duplicated().any():
        raise StampInputError("spot table lists an array position twice", path)
    return df


def read_her2st(root: str | Path, section: str | None = None, image_path: str | Path | None = None,
                um_per_px: float | None = None):
    """One her2st section as the sample AnnData of the contract. Spots without a selected position are
    dropped and counted in ``uns['stamp_st']['qc']``."""
    root = Path(root)
    if section is not None:
        check_section_id(section, root)
    sections = her2st_sections(root)
    if section is None or str(section) not in sections:
        what = "no section given" if section is None else f"section '{section}' does not exist"
        raise StampInputError(f"{what}; available: {', '.join(sections)}", root / HER2ST_COUNTS_DIR,
                              hint="pass one of them with section= / --section")
    section = str(section)
    counts_path = require_file(root / HER2ST_COUNTS_DIR / f"{section}{HER2ST_COUNTS_SUFFIX}", "counts",
                               hint="check the her2st folder")
    spots_path = require_file(root / HER2ST_SPOTS_DIR / f"{section}{HER2ST_SPOTS_SUFFIX}", "spot table",
                              hint=f"the section needs {HER2ST_SPOTS_DIR}/{section}{HER2ST_SPOTS_SUFFIX}")
    counts, ids, genes = read_counts_tsv(counts_path)
    spots = read_spot_table(spots_path)

    has_pos = match_spot_ids(ids, spots.index, counts_path, spots_path, min_fraction=MIN_MATCH_FRACTION)
    selected = np.zeros(len(ids), bool)
    selected[has_pos] = spots.loc[np.asarray(ids)[has_pos], HER2ST_COL_SELECTED].to_numpy() == 1
    keep = has_pos & selected
    qc = {
        "n_spots_counts": len(ids),
        "n_spots_table": int(len(spots)),
        "n_dropped_no_position": int((~has_pos).sum()),
        "n_dropped_not_selected": int((has_pos & ~selected).sum()),
        "n_table_spots_without_counts": int((~spots.index.isin(ids)).sum()),
    }
    kept_ids = [i for i, k in zip(ids, keep) if k]
    tab = spots.loc[kept_ids]
    if image_path is None:
        image_path = section_image(root, section)
    xy = tab[[HER2ST_COL_PIXEL_X, HER2ST_COL_PIXEL_Y]].to_numpy(np.float64)
    return build_sample(
        counts[keep], kept_ids, genes, None,
        tab[HER2ST_COL_Y].to_numpy(np.int64), tab[HER2ST_COL_X].to_numpy(np.int64), np.ones(len(tab), bool), xy,
        sample_id=section, fmt=FORMAT_HER2ST, source_path=counts_path, positions_path=spots_path,
        image_path=image_path, grid=GRID_SQUARE, spot_pitch_um=LEGACY_ST_SPOT_PITCH_UM,
        spot_diameter_um=LEGACY_ST_SPOT_DIAMETER_UM, um_per_px_user=um_per_px, qc=qc,
    )
