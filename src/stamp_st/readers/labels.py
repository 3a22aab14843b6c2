"""her2st spot labels, indexed by the reader's spot ids ("<x>x<y>", array coordinates), so that labels line up
with ``read_her2st`` output by ``labels.reindex(adata.obs_names)``.

- expression clusters (``ST-cluster/lbl``), named per patient by ``ST-cluster/motivation.csv``;
- pathologist regions (``ST-pat/lbl``, one section per patient), given at refined array coordinates that are
  rounded to the grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError, StampInputError
from .common import check_section_id
from .constants import (
    HER2ST_CLUSTER_COL_LABEL,
    HER2ST_CLUSTER_DIR,
    HER2ST_CLUSTER_NAMES,
    HER2ST_CLUSTER_SUFFIX,
    HER2ST_COL_X,
    HER2ST_COL_Y,
    HER2ST_PATHOLOGIST_COL_LABEL,
    HER2ST_PATHOLOGIST_DIR,
    HER2ST_PATHOLOGIST_SUFFIX,
)
from .her2st import spot_id

# motivation.csv is not valid CSV: cluster names contain unquoted commas ("immune : APC, B-cell, T-cell");
# a name ends where the free-text description starts.
_DESCRIPTION_START = ",Marker genes"


def _available(d: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in d.glob("*" + suffix)) if d.is_dir() else []


def her2st_cluster_names(root: str | Path) -> dict[tuple[str, int], str]:
    """{(patient, cluster id): name} from motivation.csv."""
    path = Path(root).joinpath(*HER2ST_CLUSTER_NAMES)
    if not path.is_file():
        raise DataNotFoundError("cluster names file not found", path, hint="check the her2st folder")
    names: dict[tuple[str, int], str] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",", 2)
        if len(parts) < 3 or not parts[1].strip().isdigit():
            raise StampInputError(f"line {n} is not 'patient,cluster,name,...': {line[:60]!r}", path)
        rest = parts[2]
        cut = rest.find(_DESCRIPTION_START)
        name = (rest[:cut] if cut >= 0 else rest).rstrip(",").strip()
        names[(parts[0].strip(), int(parts[1]))] = name
    return names


def her2st_cluster_labels(root: str | Path, section: str) -> pd.Series:
    """Expression-cluster name per spot of ``section`` (index = spot ids "<x>x<y>")."""
    root = Path(root)
    d = root.joinpath(*HER2ST_CLUSTER_DIR)
    path = d / f"{check_section_id(section, d)}{HER2ST_CLUSTER_SUFFIX}"
    if not path.is_file():
        raise StampInputError(f"no cluster labels for section '{section}'", path,
                              hint=f"sections with cluster labels: {', '.join(_available(d, HER2ST_CLUSTER_SUFFIX))}")
    df = pd.read_csv(path, sep="\t", engine="c")
    need = {HER2ST_COL_X, HER2ST_COL_Y, HER2ST_CLUSTER_COL_LABEL}
    if need - set(df.columns):
        raise StampInputError(f"cluster table lacks columns {sorted(need - set(df.columns))}", path)
    names = her2st_cluster_names(root)
    patient = str(section)[:1]
    ids = [spot_id(x, y) for x, y in zip(df[HER2ST_COL_X], df[HER2ST_COL_Y])]
    clusters = df[HER2ST_CLUSTER_COL_LABEL].astype(int).tolist()
    unknown = sorted({c for c in clusters if (patient, c) not in names})
    if unknown:
        raise StampInputError(f"clusters {unknown} of patient {patient} have no name in motivation.csv", path)
    s = pd.Series([names[(patient, c)] for c in clusters], index=pd.Index(ids), name="cluster", dtype=object)
    if s.index.duplicated().any():
        raise StampInputError("cluster table lists an array position twice", path)
    return s


def her2st_pathologist_labels(root: str | Path, section: str) -> pd.Series:
    """Pathologist region per spot (index = spot ids). Only one section per patient has these labels."""
    d = Path(root).joinpath(*HER2ST_PATHOLOGIST_DIR)
    path = d / f"{check_section_id(section, d)}{HER2ST_PATHOLOGIST_SUFFIX}"
    if not path.is_file():
        raise StampInputError(
            f"no pathologist labels for section '{section}'", path,
            hint=f"sections with pathologist labels: {', '.join(_available(d, HER2ST_PATHOLOGIST_SUFFIX))}")
    df = pd.read_csv(path, sep="\t", engine="c")
    need = {HER2ST_COL_X, HER2ST_COL_Y, HER2ST_PATHOLOGIST_COL_LABEL}
    if need - set(df.columns):
        raise StampInputError(f"pathologist table lacks columns {sorted(need - set(df.columns))}", path)
    df = df[df[[HER2ST_COL_X, HER2ST_COL_Y]].notna().all(axis=1)]  # F1 has a row without coordinates
    x = np.rint(df[HER2ST_COL_X].to_numpy(np.float64)).astype(int)
    y = np.rint(df[HER2ST_COL_Y].to_numpy(np.float64)).astype(int)
    s = pd.Series(df[HER2ST_PATHOLOGIST_COL_LABEL].astype(str).to_numpy(),
                  index=pd.Index([spot_id(a, b) for a, b in zip(x, y)]), name="pathologist_label", dtype=object)
    if s.index.duplicated().any():
        raise StampInputError(f"{int(s.index.duplicated().sum())} labelled spots round to the same grid position",
                              path)
    return s
