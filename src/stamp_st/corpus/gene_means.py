"""Per-gene mean non-zero expression over a corpus: the divisor table the tokenizer reads (the release's
``mean_nonzero_expression`` column).

Definition (the same unit as ``RankTokenizer``): over the spots that pass QC, map counts onto the
vocabulary, scale each spot to 10,000 counts *of vocabulary genes* (no log), and for gene g average the
scaled values of the spots where g is non-zero: ``mean_g = sum_{s: x_sg > 0} x'_sg / #{s: x_sg > 0}``;
NaN where no spot expresses g. A build stores each slide's (sum, count) pairs, so the corpus value is an
exact sum over finished slides, in slide-id order, whatever the resume history.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import StampInputError
from ..preprocessing.tokenizer import TARGET_SUM, per_spot_scale
from .layout import MANIFEST_NAME, load_done, read_manifest, read_slide_means


def means_accumulators(vocab_counts: sp.csr_matrix, target_sum: float = TARGET_SUM) -> np.ndarray:
    """float64 [3, k]: vocabulary index, sum of scaled expression, number of spots with a non-zero count,
    over the genes present. Scaled = count x target_sum / the spot's vocabulary total (the tokenizer's unit)."""
    X = sp.csr_matrix(vocab_counts, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = per_spot_scale(totals, target_sum)
    X = sp.diags(scale) @ X
    X = sp.csc_matrix(X)
    sums = np.asarray(X.sum(axis=0)).ravel()
    nnz = np.diff(X.indptr).astype(np.float64)
    idx = np.flatnonzero(nnz > 0)
    return np.stack([idx.astype(np.float64), sums[idx], nnz[idx]])


def means_from_accumulators(accs: Iterable[np.ndarray], n_vocab: int) -> np.ndarray:
    """Combine per-slide float64 [3, k] arrays (vocabulary index, sum, non-zero count) into means [V]."""
    sums = np.zeros(n_vocab, np.float64)
    nnz = np.zeros(n_vocab, np.float64)
    for a in accs:
        idx = a[0].astype(np.int64)
        np.add.at(sums, idx, a[1])
        np.add.at(nnz, idx, a[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nnz > 0, sums / np.maximum(nnz, 1), np.nan)


def write_gene_means(vocab, means: np.ndarray, path: str | Path) -> Path:
    """A vocabulary TSV (``GeneVocabulary.write_tsv``) whose mean column holds the corpus means."""
    from ..preprocessing.vocab import GeneVocabulary

    v = GeneVocabulary(tuple(vocab.gene_ids), np.asarray(means, np.float64), tuple(vocab.symbols), str(path))
    v.write_tsv(path)
    return Path(path)


def compute_gene_means(corpus_dir: str | Path, vocab=None, out: str | Path | None = None):
    """Gene means of a built corpus from its per-slide records -> a ``GeneVocabulary`` (written to ``out``
    when given). ``vocab`` defaults to the released vocabulary; its checksum must match the corpus's."""
    from ..preprocessing.vocab import GeneVocabulary

    corpus_dir = Path(corpus_dir)
    mpath = corpus_dir / MANIFEST_NAME
    man, _ = read_manifest(corpus_dir)
    vocab = vocab or GeneVocabulary.default()
    if vocab.checksum != man["vocab"]["checksum"]:
        raise StampInputError("the vocabulary differs from the corpus's (checksum)", mpath,
                              hint="pass the vocabulary the corpus was built with")
    accs = []
    for s in man["slides"]:
        done = load_done(corpus_dir, s["slide_id"])
        if done is None:
            raise StampInputError(f"slide {s['slide_id']}: its done record is missing or damaged", corpus_dir,
                                  hint="re-run build-corpus on this folder to rebuild it")
        accs.append(read_slide_means(corpus_dir, done))
    means = means_from_accumulators(accs, len(vocab))
    result = GeneVocabulary(tuple(vocab.gene_ids), means, tuple(vocab.symbols), "corpus gene means")
    if out is not None:
        result.write_tsv(out)
    return result


def gene_means_from_counts(vocab_counts_list: Iterable, n_vocab: int) -> np.ndarray:
    """The same definition straight from vocabulary-aligned count matrices (spots x V): the test oracle and
    a helper for corpora built elsewhere."""
    return means_from_accumulators((means_accumulators(c) for c in vocab_counts_list), n_vocab)
