"""Rank tokenizer with the release's semantics (METHOD.md §3), vectorised over a sparse spots x genes matrix.

Per spot: scale to 10,000 counts; divide each gene by its divisor (``GeneVocabulary.divisors``); keep the
non-zero genes sorted by that value, descending, ties broken by vocabulary index ascending (the release's
unstable argsort leaves tie order arbitrary; we pin it); token = vocabulary index + 30; pad with 0 to the
context length.

The sort key is ``count / divisor``: the per-spot scale (target_sum / total) is a positive constant within a
spot, so it cannot change the order, but multiplying by it adds a rounding step that splits exact ties
(3*s/3 vs 1*s/1) by floating-point noise. One correctly rounded division keeps equal ratios bit-equal, so the
vocabulary-index tie rule is what actually decides.

Counts are integers and the rounded divisors take few distinct values (86 in the released vocabulary), so
the keys are few: ``count / divisor`` for every count below K (512 for her2st) and every distinct divisor is
ranked once per tokenizer (one small ``np.unique``), and each spot is then a bucket sort on that rank over its
non-zeros only (compiled with numba): per-rank lists built in vocabulary order (the tie rule, by
construction), read in rank order until the context is full. No dense rows, no float64 copies. Large inputs are
cut into chunks of spots that run on threads (``tokenizer_threads``; the kernel releases the GIL); each chunk
writes only its own rows, so the tokens do not depend on the number of threads. Inputs outside that case (fractions, negative
values, counts too large for the table, e.g. with unrounded means) take the plain path: one stable argsort per
spot. Against the release's own pipeline on 5,000 her2st spots: README, "Measured".
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .vocab import GeneMapping, GeneVocabulary

TOKEN_OFFSET = 30  # ids 0..29 are reserved
MASK_ID = 0  # mask token inside the model, and padding in storage
STORAGE_PAD_ID = 0
MODEL_PAD_ID = 1  # padding inside the model (embedding padding_idx)
TARGET_SUM = 10_000.0
DEFAULT_CONTEXT = 1500


def per_spot_scale(totals: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """The one scaling of spots to ``target_sum`` counts: ``target_sum / total`` per spot (0 for an empty spot),
    used by the tokenizer and the corpus gene means (``corpus.gene_means``). The release pipeline and the
    evaluation's log1p-CP10k keep their own arithmetic order, which they must reproduce bit for bit."""
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)


@dataclass
class TokenizedSpots:
    tokens: np.ndarray  # int32 [n_spots, context], padded with STORAGE_PAD_ID
    n_genes: np.ndarray  # int32 [n_spots]: non-zero vocabulary genes before truncation
    empty: np.ndarray  # bool [n_spots]: no count in the vocabulary -> all padding, must not be trained on

    @property
    def n_empty(self) -> int:
        return int(self.empty.sum())


class RankTokenizer:
    """Turns vocabulary-aligned counts into rank-ordered gene tokens."""

    def __init__(self, vocab: GeneVocabulary, context: int = DEFAULT_CONTEXT, rounded_means: bool = True,
                 target_sum: float = TARGET_SUM):
        self.vocab = vocab
        self.context = int(context)
        self.rounded_means = rounded_means
        self.target_sum = float(target_sum)
        self.divisors = vocab.divisors(rounded=rounded_means)

    def config(self) -> dict:
        return {"context": self.context, "rounded_means": self.rounded_means, "target_sum": self.target_sum,
                "token_offset": TOKEN_OFFSET, "vocab_checksum": self.vocab.checksum,
                "divisors_checksum": self.vocab.divisors_checksum(self.rounded_means)}

    def normalise(self, vocab_counts: sp.csr_matrix) -> sp.csr_matrix:
        """x * (target_sum / spot total) / divisor, float64, on the non-zeros only."""
        X = sp.csr_matrix(vocab_counts, dtype=np.float64, copy=True)
        X.eliminate_zeros()
        X.sort_indices()
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = per_spot_scale(totals, self.target_sum)
        row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        X.data = X.data * scale[row] / self.divisors[X.indices]
        return X

    def tokenize_vocab_counts(self, vocab_counts) -> TokenizedSpots:
        """Tokens for a [n_spots x len(vocab)] count matrix (dense or sparse)."""
        X = vocab_counts
        if not (sp.issparse(X) and X.format == "csr" and X.has_sorted_indices):
            X = sp.csr_matrix(X, copy=True)
            X.sort_indices()
        if X.shape[1] != len(self.vocab):
            raise ValueError(f"expected {len(self.vocab)} vocabulary columns, got {X.shape[1]}")
        min_count, max_count = _count_range()(X.data) if X.nnz else (1, 0)
        table = self._rank_table(max_count) if min_count >= 0 else None
        if table is None:  # fractions, negative values, or counts too large for the rank table
            return self._tokenize_per_spot(X)
        if min_count == 0:  # stored zeros are not genes of the spot
            X = X.copy()
            X.eliminate_zeros()
        n = X.shape[0]
        tokens = np.zeros((n, self.context), dtype=np.int32)  # STORAGE_PAD_ID
        _run_rank_kernel(X.indptr, X.indices, X.data, *table, self._divisor_classes[1], tokens)
        n_genes = np.diff(X.indptr).astype(np.int32)
        return TokenizedSpots(tokens, n_genes, n_genes == 0)

    @functools.cached_property
    def _divisor_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """(the distinct divisors, per vocabulary gene the index of its divisor among them): uint8 where they
        fit, so that the lookup's per-gene table stays in the L1 cache."""
        distinct, code = np.unique(self.divisors, return_inverse=True)
        code = code.ravel()
        return distinct, code.astype(np.uint8 if distinct.size <= 256 else np.int32)

    def _rank_table(self, max_count: int):
        """Dense descending rank of count / divisor for every count 0..K-1 (K a power of two above
        ``max_count``) and every distinct divisor, flattened count-major as ``[count * n_divisors + code]`` (so
        the small counts that make up most non-zeros share a few cache lines), with the same float64 division
        as the plain path (equal ratios share a rank, so ties stay ties); None when that table would exceed
        ``_MAX_PAIRS`` entries. Kept for the largest K asked so far (built once, tens of ms)."""
        have = getattr(self, "_table", None)
        if have is not None and have[0] > max_count:
            return have[1]
        k = max(512, 1 << int(max_count).bit_length())
        distinct = self._divisor_classes[0]
        if k * distinct.size > _MAX_PAIRS:
            return None
        ratios = np.arange(k, dtype=np.float64)[:, None] / distinct[None, :]
        uniq, inv = np.unique(ratios, return_inverse=True)
        rank_of = (uniq.size - 1 - inv.ravel()).astype(np.int16 if uniq.size <= 2**15 else np.int32)
        table = (rank_of, int(distinct.size), int(uniq.size))
        self._table = (k, table)
        return table

    def _tokenize_per_spot(self, X: sp.csr_matrix) -> TokenizedSpots:
        """Any values: keys for all non-zeros at once, one stable argsort per spot (indices are sorted within
        each row, so a stable sort on -key breaks ties by index)."""
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        X.eliminate_zeros()
        n = X.shape[0]
        nnz_per_row = np.diff(X.indptr)
        neg_key = -(X.data / self.divisors[X.indices])  # order of the normalised value, exact ties kept exact
        ids = X.indices.astype(np.int32) + TOKEN_OFFSET
        tokens = np.full((n, self.context), STORAGE_PAD_ID, dtype=np.int32)
        indptr = X.indptr
        for i in np.flatnonzero(nnz_per_row):
            a, b = indptr[i], indptr[i + 1]
            top = np.argsort(neg_key[a:b], kind="stable")[: self.context]
            tokens[i, : len(top)] = ids[a:b][top]
        return TokenizedSpots(tokens, nnz_per_row.astype(np.int32), nnz_per_row == 0)

    def tokenize(self, counts, mapping: GeneMapping, chunk_spots: int = 20_000) -> TokenizedSpots:
        """Tokens for a sample's raw counts [n_spots x n_genes] given its gene mapping; chunked so memory
        stays bounded on slides with many spots."""
        counts = sp.csr_matrix(counts)
        parts = [self.tokenize_vocab_counts(mapping.to_vocab_counts(counts[i:i + chunk_spots]))
                 for i in range(0, counts.shape[0], chunk_spots)]
        if not parts:
            return TokenizedSpots(np.zeros((0, self.context), np.int32), np.zeros(0, np.int32),
                                  np.zeros(0, bool))
        return TokenizedSpots(np.concatenate([p.tokens for p in parts]),
                              np.concatenate([p.n_genes for p in parts]),
                              np.concatenate([p.empty for p in parts]))


_MAX_PAIRS = 1 << 22  # counts x distinct divisors: beyond this the rank table costs more than it saves


def _count_range_py(data):
    """(smallest, largest) value when every value is an integer that fits int32, else (-1, -1). Integer
    arithmetic (a round trip through int32, integer min/max) so that the loop vectorises."""
    bad = False
    lo = np.int32(2**31 - 1)
    hi = np.int32(-2**31)
    for e in range(data.shape[0]):
        x = data[e]
        c = np.int32(x)
        bad |= np.float32(c) != x  # NaN, inf, fractions, values beyond int32 (or float32's exact integers)
        lo = min(lo, c)
        hi = max(hi, c)
    if bad:
        return -1, -1
    return int(lo), int(hi)


def _rank_tokens_py(indptr, indices, data, rank_of, n_div, n_ranks, code, offset, tokens, start, stop) -> None:
    """Spots ``start..stop-1``, each a bucket sort of its non-zeros on their rank (0 = largest count / divisor):
    ranks are looked up (``rank_of[count * n_divisors + code[gene]]``); one pass, backwards, links each
    non-zero into its rank's list (so every list is in vocabulary order, the tie rule); the distinct ranks
    present (about a hundred) are sorted and their lists read in that order until the context is full.
    ``tokens`` must be zero-filled."""
    context = tokens.shape[1]
    head = np.full(n_ranks, -1, np.int32)  # per rank, its first non-zero in the spot (-1: none)
    longest = 0
    for i in range(start, stop):
        longest = max(longest, indptr[i + 1] - indptr[i])
    rank = np.empty(longest, np.int32)  # per non-zero of the spot, its rank
    nxt = np.empty(longest, np.int32)  # per non-zero, the next one of the same rank
    present = np.empty(longest + 1, np.int32)  # the distinct ranks of a spot, then sorted
    for s in range(start, stop):
        g = indptr[s]
        m = indptr[s + 1] - g
        for j in range(m):
            rank[j] = rank_of[np.int32(data[g + j]) * n_div + np.int32(code[indices[g + j]])]
        u = 0
        for j in range(m - 1, -1, -1):
            r = rank[j]
            h = head[r]
            present[u] = r  # kept only where the rank is new
            u += h < 0
            nxt[j] = h
            head[r] = j
        for k in range(1, u):  # insertion sort: about a hundred values, no allocation
            r = present[k]
            j = k - 1
            while j >= 0 and present[j] > r:
                present[j + 1] = present[j]
                j -= 1
            present[j + 1] = r
        pos = 0
        for k in range(u):
            r = present[k]
            j = head[r]
            head[r] = -1
            while j >= 0 and pos < context:
                tokens[s, pos] = indices[g + j] + offset
                pos += 1
                j = nxt[j]


def _jit(fn):
    import numba  # imported on first use: it takes a second, and most importers never tokenize

    return numba.njit(cache=True, nogil=True)(fn)


_count_range = functools.cache(lambda: _jit(_count_range_py))
_rank_kernel = functools.cache(lambda: _jit(_rank_tokens_py))
_PARALLEL_MIN_NNZ = 1 << 18  # below this, threads cost more than they save (one chunk)
_CHUNKS_PER_THREAD = 4  # spots differ in length: smaller chunks balance the threads


def tokenizer_threads() -> int:
    """Threads the tokenizer may use: the cores this process may run on, capped by ``OMP_NUM_THREADS`` where
    that is set, so that a process told to use one thread (a Dask worker, a benchmark) does not start more."""
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        threads = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(threads, int(omp))) if omp.isdigit() else max(1, threads)


def _run_rank_kernel(indptr, indices, data, rank_of, n_div, n_ranks, code, tokens) -> None:
    """Tokens of every spot, on ``tokenizer_threads()`` threads when the input is large enough to pay for
    them (the release tokenizes one spot at a time on one core). The kernel releases the GIL, so plain Python
    threads run it in parallel; each chunk of spots has its own buffers and writes only its own rows, so the
    output does not depend on the threads. (Not numba's ``parallel=True``: its OpenMP layer kills any child
    the process forks afterwards, e.g. a DataLoader worker.)"""
    kernel = _rank_kernel()
    n, nnz = indptr.shape[0] - 1, int(indptr[-1])
    threads = tokenizer_threads()
    args = (indptr, indices, data, rank_of, n_div, n_ranks, code, TOKEN_OFFSET, tokens)
    if threads == 1 or nnz < _PARALLEL_MIN_NNZ or n < 2:
        kernel(*args, 0, n)
        return
    from concurrent.futures import ThreadPoolExecutor

    # chunk edges at equal shares of the non-zeros (the work), as spot indices
    cuts = np.searchsorted(indptr, np.linspace(0, nnz, threads * _CHUNKS_PER_THREAD + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]])).tolist()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stamp-st-tokenize") as pool:
        for f in [pool.submit(kernel, *args, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
            f.result()


def tokenize_spot_reference(vocab_counts_row: np.ndarray, divisors: np.ndarray, context: int,
                            target_sum: float = TARGET_SUM) -> np.ndarray:
    """Plain per-spot implementation of the same semantics (the test oracle and the benchmark baseline)."""
    x = np.asarray(vocab_counts_row, dtype=np.float64)
    total = x.sum()
    out = np.full(context, STORAGE_PAD_ID, dtype=np.int32)
    if total <= 0:
        return out
    nz = np.flatnonzero(x)
    vals = x[nz] / divisors[nz]  # order of x * (target_sum / total) / divisor, without splitting exact ties
    ranked = sorted(zip(nz.tolist(), vals.tolist()), key=lambda t: (-t[1], t[0]))[:context]
    for pos, (gene, _) in enumerate(ranked):
        out[pos] = gene + TOKEN_OFFSET
    return out


def recorded_divisors_checksum(tokenizer: dict | None, vocabulary: dict | None = None) -> str | None:
    """The divisors checksum a tokenizer config records (newer files), else computed from the recorded
    vocabulary and ``rounded_means`` (older checkpoints), else None."""
    tokenizer = tokenizer or {}
    if tokenizer.get("divisors_checksum"):
        return str(tokenizer["divisors_checksum"])
    if vocabulary and vocabulary.get("mean_nonzero") is not None:
        from .vocab import GeneVocabulary

        return GeneVocabulary.from_json(vocabulary).divisors_checksum(bool(tokenizer.get("rounded_means", True)))
    return None


def check_same_divisors(a: str | None, b: str | None, source, what_a: str, what_b: str) -> None:
    """Refuse two tokenizations whose per-gene means differ (tokens of the same counts would differ)."""
    from ..errors import StampInputError

    if a and b and a != b:
        raise StampInputError(f"{what_a} was tokenized with other gene means than {what_b} (divisors {a} vs {b}): "
                              "the same counts give other tokens", source,
                              hint="build the corpus with the vocabulary (and --unrounded-means setting) the model "
                                   "was trained with")
