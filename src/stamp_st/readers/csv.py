"""A plain folder of two CSV tables: ``counts.csv`` (spots x genes, first column the spot id) and
``positions.csv`` (spot id, array_row, array_col, x_px, y_px in full-resolution pixels); Visium geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StampInputError
from .common import build_sample, match_spot_ids, numeric_columns, require_file
from .constants import (
    CSV_COL_X_PX,
    CSV_COL_Y_PX,
    CSV_COUNTS,
    CSV_POSITIONS,
    FORMAT_CSV,
    GRID_HEX,
    OBS_ARRAY_COL,
    OBS_ARRAY_ROW,
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_PITCH_UM,
)


def is_csv(path: str | Path) -> bool:
    p = Path(path)
    return (p / CSV_COUNTS).is_file() and (p / CSV_POSITIONS).is_file()


def _table(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(require_file(path, what, hint=f"the folder needs {path.name}"), index_col=0)
    except StampInputError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise StampInputError(f"cannot parse the {what} ({err})", path) from err


def read_csv(path: str | Path, image_path: str | Path | None = None, um_per_px: float | None = None):
    """The folder's sample; spots without a position are an error (the two tables must match)."""
    root = Path(path)
    counts = _table(root / CSV_COUNTS, "counts table")
    pos = numeric_columns(_table(root / CSV_POSITIONS, "positions table"),
                          [OBS_ARRAY_ROW, OBS_ARRAY_COL, CSV_COL_X_PX, CSV_COL_Y_PX], root / CSV_POSITIONS,
                          integer=(OBS_ARRAY_ROW, OBS_ARRAY_COL))
    ids = [str(i) for i in counts.index]
    pos.index = pos.index.map(str)
    match_spot_ids(ids, pos.index, root / CSV_COUNTS, root / CSV_POSITIONS)
    tab = pos.loc[ids]
    return build_sample(
        counts.to_numpy(np.float32), ids, list(counts.columns), None,
        tab[OBS_ARRAY_ROW].to_numpy(np.int64), tab[OBS_ARRAY_COL].to_numpy(np.int64), np.ones(len(ids), bool),
        tab[[CSV_COL_X_PX, CSV_COL_Y_PX]].to_numpy(np.float64),
        sample_id=root.name, fmt=FORMAT_CSV, source_path=root / CSV_COUNTS, positions_path=root / CSV_POSITIONS,
        image_path=image_path, grid=GRID_HEX, spot_pitch_um=VISIUM_SPOT_PITCH_UM,
        spot_diameter_um=VISIUM_SPOT_DIAMETER_UM, um_per_px_user=um_per_px,
    )
