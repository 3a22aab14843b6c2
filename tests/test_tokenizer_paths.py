"""The rank tokenizer's input cases beyond plain integer counts below 512: stored zeros, counts that need a
larger rank table, values that are not counts (fractions, negatives, NaN), float64 and integer dtypes, empty
input. Each against the plain per-spot reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stamp_st.preprocessing.tokenizer import RankTokenizer, tokenize_spot_reference
from stamp_st.preprocessing.vocab import GeneVocabulary


def vocab(n=80, seed=0):
    rng = np.random.default_rng(seed)
    return GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(n)), rng.choice([np.nan, 0.4, 1.0, 2.2, 3.0, 7.6], n))


def reference(dense, divisors, context):
    return np.stack([tokenize_spot_reference(r, divisors, context) for r in dense])


def counts(rng, n_spots, n_genes, high):
    x = rng.integers(0, high, size=(n_spots, n_genes)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0
    return x


@pytest.mark.parametrize("case", ["small", "large_counts", "stored_zeros", "fractions", "negative", "nan",
                                  "float64", "int64", "unsorted_indices"])
def test_matches_reference(case):
    v = vocab()
    rng = np.random.default_rng(3)
    dense = counts(rng, 60, len(v), 5 if case != "large_counts" else 100_000)
    if case == "fractions":
        dense[::3] *= 0.37
    if case == "negative":
        dense[5, 7] = -2
    X = sp.csr_matrix(dense)
    if case == "stored_zeros":
        X.data[::4] = 0  # kept in the structure, not genes of the spot
        dense = X.toarray()
    if case == "nan":
        X.data[3] = np.nan
        dense = X.toarray()
    if case == "float64":
        X = X.astype(np.float64)
    if case == "int64":
        X = X.astype(np.int64)
    if case == "unsorted_indices":
        X = sp.csr_matrix(sp.coo_matrix(dense).T.T)
        X.indices, X.data = X.indices.copy(), X.data.copy()
        for i in range(X.shape[0]):  # reverse each row's storage order
            a, b = X.indptr[i], X.indptr[i + 1]
            X.indices[a:b], X.data[a:b] = X.indices[a:b][::-1].copy(), X.data[a:b][::-1].copy()
        X.has_sorted_indices = False
    tok = RankTokenizer(v, context=30)
    out = tok.tokenize_vocab_counts(X)
    ref = reference(dense, v.divisors(), 30) if case != "nan" else None
    if case == "nan":  # NaN is a non-zero that sorts last, as in the per-spot path
        ref = reference(np.nan_to_num(dense, nan=1e-30), v.divisors(), 30)
    np.testing.assert_array_equal(out.tokens, ref)
    np.testing.assert_array_equal(out.n_genes, (np.nan_to_num(dense, nan=1) != 0).sum(1))
    assert out.tokens.dtype == np.int32


def test_table_grows_then_serves_smaller_batches():
    v = vocab()
    rng = np.random.default_rng(4)
    tok = RankTokenizer(v, context=40)
    for high in (3, 5_000, 7):
        dense = counts(rng, 20, len(v), high)
        np.testing.assert_array_equal(tok.tokenize_vocab_counts(sp.csr_matrix(dense)).tokens,
                                      reference(dense, v.divisors(), 40))


def test_empty_inputs():
    v = vocab()
    tok = RankTokenizer(v, context=10)
    assert tok.tokenize_vocab_counts(sp.csr_matrix((0, len(v)), dtype=np.float32)).tokens.shape == (0, 10)
    out = tok.tokenize_vocab_counts(sp.csr_matrix((3, len(v)), dtype=np.float32))
    assert (out.tokens == 0).all() and out.empty.all()


def test_threads_give_the_same_tokens(monkeypatch):
    """Chunks of spots on several threads against one thread and the reference, on spots of very different
    lengths (empty ones included) cut into many small chunks."""
    import threading

    import stamp_st.preprocessing.tokenizer as T

    v = vocab(300)
    rng = np.random.default_rng(5)
    dense = counts(rng, 257, len(v), 40)
    dense[rng.random(len(dense)) < 0.3, 150:] = 0  # short spots between long ones
    dense[[0, 17, 256]] = 0  # empty spots, at both ends too
    X = sp.csr_matrix(dense)
    tok = RankTokenizer(v, context=120)
    monkeypatch.setattr(T, "_PARALLEL_MIN_NNZ", 0)
    monkeypatch.setattr(T, "_CHUNKS_PER_THREAD", 37)
    monkeypatch.setattr(T, "tokenizer_threads", lambda: 3)
    calls = []
    real = T._rank_kernel

    def spy():
        kernel = real()
        return lambda *a: (calls.append((threading.current_thread().name, a[-2], a[-1])), kernel(*a))
    monkeypatch.setattr(T, "_rank_kernel", spy)
    out = tok.tokenize_vocab_counts(X)
    assert len(calls) > 50 and {name for name, *_ in calls} != {threading.current_thread().name}
    assert sorted((a, b) for _, a, b in calls)[0][0] == 0 and max(b for *_, b in calls) == len(dense)
    np.testing.assert_array_equal(out.tokens, reference(dense, v.divisors(), 120))
    calls.clear()
    monkeypatch.setattr(T, "tokenizer_threads", lambda: 1)
    np.testing.assert_array_equal(tok.tokenize_vocab_counts(X).tokens, out.tokens)
    assert len(calls) == 1


def test_thread_count_follows_omp_num_threads(monkeypatch):
    import stamp_st.preprocessing.tokenizer as T

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a one-thread process (a Dask worker, a benchmark)
    assert T.tokenizer_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert T.tokenizer_threads() >= 1


def test_a_forked_child_survives_and_tokenizes(monkeypatch):
    """After tokenizing on threads, the process may fork (a DataLoader worker): the child lives and gets the
    same tokens (numba's OpenMP layer would have killed it)."""
    import multiprocessing as mp

    import stamp_st.preprocessing.tokenizer as T

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    v = vocab(200)
    X = sp.csr_matrix(counts(np.random.default_rng(6), 400, len(v), 30))
    tok = RankTokenizer(v, context=50)
    monkeypatch.setattr(T, "_PARALLEL_MIN_NNZ", 0)
    monkeypatch.setattr(T, "tokenizer_threads", lambda: 2)
    want = tok.tokenize_vocab_counts(X).tokens
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_tokenize_in_child, args=(tok, X, q))
    child.start()
    try:
        got = q.get(timeout=120)  # before join: a child exits only once its queue is read
    finally:
        child.join(30)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


def _tokenize_in_child(tok, X, q):
    q.put(tok.tokenize_vocab_counts(X).tokens)
