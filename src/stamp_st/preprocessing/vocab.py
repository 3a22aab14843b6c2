"""Gene vocabulary, symbol -> Ensembl mapping and vocabulary coverage.

The vocabulary is data, not code: the released 20,310-token table is read from the data directory (or any
path a user gives) and a model checkpoint carries the vocabulary it was trained with (``to_json``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import StampInputError, require_file
from ..readers.ensembl import (
    ENSEMBL_RE,
    ORGDB_TABLE,
    RELEASE_SYMBOL_TABLE,
    read_orgdb_table,
    read_symbol_table,
)


def strip_version(gene_id: str) -> str:
    """ENSG00000141510.17 -> ENSG00000141510 (a trailing make-unique '-1' is kept: it is part of the id)."""
    gid = str(gene_id)
    m = re.match(r"^(ENS[A-Z]*G\d+)\.\d+(-\d+)?$", gid)
    return m.group(1) + (m.group(2) or "") if m else gid


@dataclass(frozen=True)
class GeneVocabulary:
    """An ordered list of gene ids (token order) with their per-gene mean non-zero expression."""

    gene_ids: tuple[str, ...]
    mean_nonzero: np.ndarray  # float64 [V]; NaN where unknown
    symbols: tuple[str, ...] = ()
    source: str = ""
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if len(set(self.gene_ids)) != len(self.gene_ids):
            raise StampInputError("vocabulary holds duplicate gene ids", self.source or None,
                                  hint="make gene ids unique before building a vocabulary")
        if len(self.mean_nonzero) != len(self.gene_ids):
            raise StampInputError("vocabulary means and ids differ in length", self.source or None)
        m = np.asarray(self.mean_nonzero, np.float64)
        bad = np.flatnonzero(~np.isnan(m) & ~(np.isfinite(m) & (m > 0)))
        if len(bad):  # a divisor <= 0 or infinite would flip or erase the gene's rank silently
            i = int(bad[0])
            where = f"row {i} (line {i + 2})" if self.source.endswith(".tsv") else f"gene {i}"
            raise StampInputError(f"vocabulary mean_nonzero_expression must be positive and finite (or empty "
                                  f"where unknown): {len(bad)} value(s) are not, first {where}, gene "
                                  f"{self.gene_ids[i]}: {m[i]!r}", self.source or None,
                                  hint="fix those means or rebuild the vocabulary (`stamp-st build-corpus` "
                                       "writes gene_means.tsv)")
        self._index.update({g: i for i, g in enumerate(self.gene_ids)})

    def __len__(self) -> int:
        return len(self.gene_ids)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_tsv(cls, path: str | Path) -> GeneVocabulary:
        """Read the released table (index, gene_id, symbols, mean_nonzero_expression)."""
        path = require_file(path, "gene vocabulary file",
                            hint="point to stamp_gene_vocab.tsv of the released weights, or build one "
                                 "from your corpus with `stamp-st build-corpus` (gene_means.tsv)")
        try:
            df = pd.read_csv(path, sep="\t", dtype={"gene_id": str, "symbols": str}, keep_default_na=False,
                             na_values={"mean_nonzero_expression": ["nan", "NaN", ""]})
        except Exception as err:  # noqa: BLE001 - any parse error is the user's file
            raise StampInputError(f"cannot parse gene vocabulary ({err})", path) from err
        if len(df) == 0:
            raise StampInputError("the gene vocabulary holds no gene", path,
                                  hint="give a vocabulary with one row per gene (e.g. stamp_gene_vocab.tsv)")
        missing = {"gene_id", "mean_nonzero_expression"} - set(df.columns)
        if missing:
            raise StampInputError(f"gene vocabulary lacks columns {sorted(missing)}", path,
                                  hint="expected columns: index, gene_id, symbols, mean_nonzero_expression")
        if "index" in df.columns and not np.array_equal(df["index"].to_numpy(), np.arange(len(df))):
            raise StampInputError("vocabulary 'index' column is not 0..V-1 in order", path)
        syms = tuple(df["symbols"].astype(str)) if "symbols" in df.columns else ()
        return cls(tuple(df["gene_id"].astype(str)), df["mean_nonzero_expression"].to_numpy(np.float64),
                   syms, str(path))

    @classmethod
    def default(cls) -> GeneVocabulary:
        """The released vocabulary from the data directory."""
        from ..paths import vocab_file

        return cls.from_tsv(vocab_file())

    def to_json(self) -> dict:
        """Everything needed to rebuild the vocabulary; stored in checkpoints and corpus manifests."""
        return {
            "gene_ids": list(self.gene_ids),
            "mean_nonzero": [None if not np.isfinite(m) else float(m) for m in self.mean_nonzero],
            "symbols": list(self.symbols),
            "checksum": self.checksum,
        }

    @classmethod
    def from_json(cls, d: dict) -> GeneVocabulary:
        v = cls(tuple(d["gene_ids"]), np.array([np.nan if m is None else m for m in d["mean_nonzero"]], float),
                tuple(d.get("symbols", ())), "checkpoint")
        if "checksum" in d and d["checksum"] != v.checksum:
            raise StampInputError("vocabulary checksum does not match its gene ids (corrupt checkpoint?)")
        return v

    def write_tsv(self, path: str | Path) -> None:
        syms = self.symbols or ("",) * len(self)
        df = pd.DataFrame({"index": np.arange(len(self)), "gene_id": self.gene_ids, "symbols": syms,
                           "mean_nonzero_expression": self.mean_nonzero})
        from ..io_utils import atomic_write_text

        atomic_write_text(path, df.to_csv(sep="\t", index=False, na_rep="nan"))

    # ---------------------------------------------------------------- facts
    @property
    def checksum(self) -> str:
        """sha256 over the ordered gene ids: two vocabularies with the same checksum tokenize identically
        (given the same means)."""
        h = hashlib.sha256("\n".join(self.gene_ids).encode())
        return "sha256:" + h.hexdigest()[:16]

    def divisors_checksum(self, rounded: bool = True) -> str:
        """sha256 over the per-gene divisors the tokenizer uses: with ``checksum`` it covers everything in the
        vocabulary that changes tokens (same ids with other means rank genes differently)."""
        return "sha256:" + hashlib.sha256(self.divisors(rounded).astype("<f8").tobytes()).hexdigest()[:16]

    def index_of(self, gene_ids: Sequence[str]) -> np.ndarray:
        """Vocabulary index of each id, -1 where absent."""
        idx = self._index
        return np.fromiter((idx.get(strip_version(g), -1) for g in gene_ids), dtype=np.int64,
                           count=len(gene_ids))

    def divisors(self, rounded: bool = True) -> np.ndarray:
        """Per-gene divisor of the normalised expression.

        ``rounded=True`` is the release's rule (what its weights saw): NaN -> 0, round half up to an integer,
        then 0 -> 1. ``rounded=False`` keeps the real means (NaN or <= 0 -> 1), for new vocabularies.
        """
        m = np.asarray(self.mean_nonzero, np.float64)
        if rounded:
            d = np.floor(np.nan_to_num(m, nan=0.0) + 0.5)
        else:
            d = np.where(np.isfinite(m) & (m > 0), m, 1.0)
        d[d == 0] = 1.0
        return d


class SymbolMapper:
    """Gene symbol -> Ensembl id, from ordered tables (first table that knows a symbol wins).

    Default order: the release's own map, then the vocabulary's symbols column (it lists synonyms such as
    ``ATXN8,TWNK``), then Bioconductor's org.Hs.eg.db table (protein-coding rows first).
    """

    def __init__(self, tables: Sequence[dict[str, str]], sources: Sequence[str] = ()):
        self.tables = list(tables)
        self.sources = list(sources)
        merged: dict[str, str] = {}
        for t in reversed(self.tables):
            merged.update(t)
        self._merged = merged

    @classmethod
    def default(cls, vocab: GeneVocabulary | None = None, data_root: str | Path | None = None) -> SymbolMapper:
        """The default tables for ``vocab``, built once per process and vocabulary (reading them takes a
        second; every sample, slide task and command reuses them)."""
        from ..paths import data_dir

        root = Path(data_root) if data_root else data_dir(required=False)
        key = (vocab.checksum if vocab is not None else None, str(root))
        if key not in _DEFAULT_MAPPERS:
            _DEFAULT_MAPPERS[key] = cls._build_default(vocab, root)
        return _DEFAULT_MAPPERS[key]

    @classmethod
    def _build_default(cls, vocab: GeneVocabulary | None, root: Path | None) -> SymbolMapper:
        tables, sources = [], []
        if root is not None:
            release = root / RELEASE_SYMBOL_TABLE
            if release.is_file():
                tables.append(read_symbol_table(release))
                sources.append(str(release))
        if vocab is not None and vocab.symbols:
            t: dict[str, str] = {}
            for gid, syms in zip(vocab.gene_ids, vocab.symbols):
                for s in str(syms).split(","):
                    s = s.strip()
                    if s and s not in t:
                        t[s] = gid
            tables.append(t)
            sources.append("vocabulary symbols")
        if root is not None:
            org = root / ORGDB_TABLE
            if org.is_file():
                tables.append(read_orgdb_table(org))
                sources.append(str(org))
        return cls(tables, sources)

    def map(self, symbols: Sequence[str]) -> np.ndarray:
        """Ensembl id per symbol ('' where unknown)."""
        m = self._merged
        return np.array([m.get(str(s), "") for s in symbols], dtype=object)


_DEFAULT_MAPPERS: dict[tuple, SymbolMapper] = {}


# -------------------------------------------------------------------- mapping a sample onto a vocabulary
@dataclass
class GeneMapping:
    """How a sample's genes map onto a vocabulary. ``var_to_vocab[j]`` is -1 for dropped genes."""

    var_to_vocab: np.ndarray
    n_vocab: int
    how: np.ndarray  # per input gene: 'gene_id', 'symbol', or '' (dropped)

    @property
    def n_kept(self) -> int:
        return int((self.var_to_vocab >= 0).sum())

    def projection(self) -> sp.csr_matrix:
        """Sparse [n_var x n_vocab] 0/1 matrix: ``counts @ P`` gives vocabulary-aligned counts; input genes
        that map to the same vocabulary id are summed."""
        keep = np.flatnonzero(self.var_to_vocab >= 0)
        return sp.csr_matrix((np.ones(len(keep), np.float32), (keep, self.var_to_vocab[keep])),
                             shape=(len(self.var_to_vocab), self.n_vocab))

    def to_vocab_counts(self, counts) -> sp.csr_matrix:
        """Spots x vocabulary counts (CSR, float32)."""
        X = sp.csr_matrix(counts, dtype=np.float32)
        out = (X @ self.projection()).tocsr()
        out.eliminate_zeros()
        out.sort_indices()
        return out


def map_genes(symbols: Sequence[str], vocab: GeneVocabulary, gene_ids: Sequence[str] | None = None,
              mapper: SymbolMapper | None = None) -> GeneMapping:
    """Map a sample's genes onto ``vocab``: by Ensembl id where the sample has one, else by symbol."""
    n = len(symbols)
    idx = np.full(n, -1, np.int64)
    how = np.full(n, "", dtype=object)
    if gene_ids is not None:
        by_id = vocab.index_of([str(g) for g in gene_ids])
        idx[by_id >= 0] = by_id[by_id >= 0]
        how[by_id >= 0] = "gene_id"
    todo = np.flatnonzero(idx < 0)
    if len(todo):
        mapper = mapper or SymbolMapper.default(vocab)
        ens = mapper.map([symbols[i] for i in todo])
        # a symbol that is itself an Ensembl id maps directly
        ens = np.array([e if e else (str(symbols[i]) if ENSEMBL_RE.match(str(symbols[i])) else "")
                        for e, i in zip(ens, todo)], dtype=object)
        by_sym = vocab.index_of(list(ens))
        ok = by_sym >= 0
        idx[todo[ok]] = by_sym[ok]
        how[todo[ok]] = "symbol"
    return GeneMapping(idx, len(vocab), how)


def map_sample_genes(adata, vocab: GeneVocabulary, mapper: SymbolMapper | None = None) -> GeneMapping:
    """The one mapping of a sample of the reader contract onto ``vocab``: ``var_names`` are symbols,
    ``var["gene_ids"]`` Ensembl ids ("" where unknown); by id where known, else by symbol."""
    ids = adata.var["gene_ids"].astype(str).tolist() if "gene_ids" in adata.var else None
    if ids is not None and not any(ids):
        ids = None
    return map_genes([str(s) for s in adata.var_names], vocab, gene_ids=ids, mapper=mapper)


def coverage_report(counts, mapping: GeneMapping, spot_ids: Sequence[str] | None = None) -> dict:
    """What the vocabulary kept: genes and fraction of counts, per sample and per spot."""
    X = sp.csr_matrix(counts)
    kept_cols = mapping.var_to_vocab >= 0
    total = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    kept = np.asarray(X[:, kept_cols].sum(axis=1)).ravel().astype(np.float64)
    Xb = X.copy()
    Xb.data = (Xb.data != 0).astype(np.int32)
    genes_detected = np.asarray(Xb.sum(axis=1)).ravel()
    genes_kept = np.asarray(Xb[:, kept_cols].sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, kept / np.maximum(total, 1e-12), 0.0)
    n_vocab_present = len(np.unique(mapping.var_to_vocab[kept_cols]))
    per_spot = pd.DataFrame({"total_counts": total, "kept_counts": kept, "fraction_counts_kept": frac,
                             "genes_detected": genes_detected, "genes_kept": genes_kept},
                            index=None if spot_ids is None else pd.Index(list(map(str, spot_ids)), name="spot"))
    return {
        "n_spots": int(X.shape[0]),
        "n_genes_input": int(X.shape[1]),
        "n_genes_kept": mapping.n_kept,
        "n_genes_by_id": int((mapping.how == "gene_id").sum()),
        "n_genes_by_symbol": int((mapping.how == "symbol").sum()),
        "n_vocab_genes_present": int(n_vocab_present),
        "n_vocab": mapping.n_vocab,
        "fraction_counts_kept": float(kept.sum() / total.sum()) if total.sum() > 0 else 0.0,
        "median_spot_fraction_counts_kept": float(np.median(frac)) if len(frac) else 0.0,
        "n_empty_spots": int((kept == 0).sum()),
        "per_spot": per_spot,
    }


# -------------------------------------------------------------------- the released vocabulary, from its raw files
RELEASE_VOCAB_TSV = "stamp_gene_vocab.tsv"
RELEASE_SYMBOLS_TSV = "stamp_symbol_to_ensembl.tsv"


def release_vocabulary(model_h5ad: str | Path, means_npy: str | Path, symbols_pkl: str | Path) \
        -> tuple[GeneVocabulary, pd.DataFrame]:
    """The released vocabulary from the authors' raw files (Hanminghao/STAMP ``src/``): token order and
    Ensembl ids from ``model.h5ad``'s var names, per-gene means from ``Visium_mean.npy``, symbols from
    ``gene_name_id_dict.pkl`` (symbol -> Ensembl id; read as plain data, never a general unpickle). A token's
    symbols are every symbol of its id without a make-unique suffix ('ENSG...-1' has its gene's symbols),
    sorted and comma-joined. Returns (vocabulary, symbol table sorted by symbol)."""
    import anndata as ad

    from ..io_utils import PlainDataUnpickler

    try:
        ids = [str(g) for g in ad.read_h5ad(model_h5ad, backed="r").var_names]
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a broken file
        raise StampInputError(f"cannot read the release's model.h5ad ({err})", model_h5ad) from err
    try:
        means = np.load(means_npy, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"cannot read the release's per-gene means ({err})", means_npy) from err
    table = PlainDataUnpickler.load(symbols_pkl)
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise StampInputError("expected a dict of gene symbol -> Ensembl id strings", symbols_pkl)
    if means.ndim != 1 or len(means) != len(ids) or means.dtype.kind != "f":
        raise StampInputError(f"per-gene means: {means.shape} {means.dtype}, expected {len(ids)} floats", means_npy)
    by_id: dict[str, list[str]] = {}
    for sym, gid in sorted(table.items()):
        by_id.setdefault(gid, []).append(sym)
    symbols = tuple(",".join(by_id.get(re.sub(r"-\d+$", "", g), [])) for g in ids)
    vocab = GeneVocabulary(tuple(ids), means.astype(np.float64), symbols, str(model_h5ad))
    sym_table = pd.DataFrame(sorted(table.items()), columns=["symbol", "gene_id"])
    return vocab, sym_table


def write_release_vocabulary(files: dict[str, Path], out_dir: str | Path) -> Path:
    """``out_dir/stamp_gene_vocab.tsv`` and ``out_dir/stamp_symbol_to_ensembl.tsv`` from the raw release files
    (``download.download_stamp_vocab_files``). Returns the vocabulary file."""
    from ..io_utils import atomic_write_text

    vocab, sym_table = release_vocabulary(files["model.h5ad"], files["Visium_mean.npy"],
                                          files["gene_name_id_dict.pkl"])
    out = Path(out_dir)
    vocab.write_tsv(out / RELEASE_VOCAB_TSV)
    atomic_write_text(out / RELEASE_SYMBOLS_TSV, sym_table.to_csv(sep="\t", index=False))
    return out / RELEASE_VOCAB_TSV


# -------------------------------------------------------------------- a vocabulary that keeps almost nothing
# below these the sample is not in the vocabulary's namespace: her2st and Visium human samples keep 94-96 % of
# counts and thousands of genes per spot on the released vocabulary; a mouse sample kept 0.3 % and 2 genes
MIN_FRACTION_COUNTS_KEPT = 0.10
MIN_MEDIAN_GENES_KEPT = 50
_MOUSE_SYMBOL_RE = re.compile(r"^[A-Z][a-z][a-z0-9]*(-[a-z0-9]+)?$")  # Actb, Gapdh, Gm12345 (human: ACTB)


def likely_namespace_problem(symbols: Sequence[str], gene_ids: Sequence[str] | None = None) -> str:
    """A short guess at why a sample's genes miss a human vocabulary: another species (ENSMUSG ids, mouse-style
    'Actb' symbols) or another id namespace (Entrez numbers, ...)."""
    ids = [str(g) for g in (gene_ids or []) if str(g)]
    if ids:
        m = pd.Series(ids).str.extract(r"^(ENS[A-Z]*G)\d")[0].dropna()
        if len(m) > len(ids) / 2 and (m != "ENSG").mean() > 0.5:
            prefix = m[m != "ENSG"].mode()[0]
            species = "mouse" if prefix == "ENSMUSG" else "a non-human species"
            return f"the gene ids are {prefix}... Ensembl ids of {species}, not human ENSG ids"
    syms = [str(s) for s in symbols]
    if syms:
        mouse = np.mean([bool(_MOUSE_SYMBOL_RE.match(s)) for s in syms])
        if mouse > 0.5:
            return (f"{mouse:.0%} of the gene symbols are written like mouse symbols ('Actb'; human symbols are "
                    "upper case, 'ACTB'): likely a mouse (or other non-human) sample")
        if np.mean([s.isdigit() for s in syms]) > 0.5:
            return "the gene names are numbers: likely Entrez ids, another id namespace"
    return "the gene names are in another namespace than the vocabulary's (human symbols / Ensembl ENSG ids)"


def check_vocabulary_coverage(report: dict, symbols: Sequence[str], gene_ids: Sequence[str] | None = None,
                              where=None) -> None:
    """Refuse a sample of which the vocabulary keeps almost nothing (``coverage_report``): under
    ``MIN_FRACTION_COUNTS_KEPT`` of the counts, or a median under ``MIN_MEDIAN_GENES_KEPT`` kept genes per spot
    where the spots detect at least twice as many; the message names the likely cause."""
    per_spot = report.get("per_spot")
    med_kept = float(per_spot["genes_kept"].median()) if per_spot is not None and len(per_spot) else 0.0
    med_det = float(per_spot["genes_detected"].median()) if per_spot is not None and len(per_spot) else 0.0
    frac = float(report["fraction_counts_kept"])
    if frac >= MIN_FRACTION_COUNTS_KEPT and not (med_kept < MIN_MEDIAN_GENES_KEPT and med_det >= 2 * med_kept
                                                  and med_det >= MIN_MEDIAN_GENES_KEPT):
        return
    cause = likely_namespace_problem(symbols, gene_ids)
    raise StampInputError(
        f"the gene vocabulary keeps almost nothing of this sample: {frac:.1%} of counts, "
        f"{report['n_genes_kept']} of {report['n_genes_input']} genes, median {med_kept:.0f} genes per spot "
        f"(of {med_det:.0f} detected); {cause}", where,
        hint="the released vocabulary is human: use a human sample, or map the genes to human Ensembl ids "
             "(var['gene_ids']); for another species build a vocabulary from your own corpus (build-corpus "
             "writes gene_means.tsv) and train on it; to embed the image alone use backbone:NAME")
