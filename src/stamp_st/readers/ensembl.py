"""Gene naming conventions the readers must recognise (Ensembl ids vs symbols) and the symbol -> Ensembl
tables of the data directory; the vocabulary mapping in ``preprocessing.vocab`` builds on them."""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..errors import StampInputError

RELEASE_SYMBOL_TABLE = "vocab/stamp_symbol_to_ensembl.tsv"  # the release's own map (under the data directory)
ORGDB_TABLE = "vocab/org.Hs.eg.db_3.16.0_genes.tsv.gz"  # Bioconductor's org.Hs.eg.db

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(-\d+)?$")


def looks_like_ensembl(names: Sequence[str], min_fraction: float = 0.5) -> bool:
    """True when most names are Ensembl gene ids (ENSG..., ENSMUSG...)."""
    names = [str(n) for n in names]
    if not names:
        return False
    hits = sum(bool(ENSEMBL_RE.match(n)) for n in names)
    return hits / len(names) >= min_fraction


def read_symbol_table(path: str | Path) -> dict[str, str]:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"symbol", "gene_id"} <= set(df.columns):
        raise StampInputError("symbol table needs columns 'symbol' and 'gene_id'", path)
    df = df[df["gene_id"] != ""].drop_duplicates("symbol", keep="first")
    return dict(zip(df["symbol"], df["gene_id"]))


def read_orgdb_table(path: str | Path) -> dict[str, str]:
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as fh:
        df = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    df = df[df["ensembl_id"] != ""].copy()
    df["_rank"] = (df["gene_type"] != "protein-coding").astype(int)
    df = df.sort_values(["_rank"], kind="stable").drop_duplicates("symbol", keep="first")
    return dict(zip(df["symbol"], df["ensembl_id"]))


@lru_cache(maxsize=4)
def _release_symbol_table(root: str) -> dict[str, str]:
    p = Path(root) / RELEASE_SYMBOL_TABLE
    return read_symbol_table(p) if p.is_file() else {}


def fill_gene_ids(symbols: Sequence[str], gene_ids: Sequence[str] | None) -> tuple[list[str], str | None]:
    """Ensembl ids for a sample's genes: the given ones, and for symbol-only inputs (her2st) the data
    directory's symbol -> Ensembl table (the release's, the first table ``SymbolMapper`` consults, so the
    vocabulary mapping is unchanged) where an id is missing; '' where the table does not know the symbol
    either. Returns (ids, a QC note or None)."""
    from ..paths import data_dir

    ids = [""] * len(symbols) if gene_ids is None else ["" if pd.isna(g) else str(g) for g in gene_ids]
    missing = [i for i, g in enumerate(ids) if not g]
    root = data_dir(required=False)
    if not missing or root is None or looks_like_ensembl([str(s) for s in symbols]):
        return ids, None
    table, source = _release_symbol_table(str(root)), RELEASE_SYMBOL_TABLE
    if not table:
        return ids, None
    n = 0
    for i in missing:
        gid = table.get(str(symbols[i]), "")
        if gid:
            ids[i] = gid
            n += 1
    return ids, f"var['gene_ids'] of {n} of {len(missing)} symbol-only genes filled from {source}"
