"""RankTokenizer (vectorised) against the plain per-spot reference, on real her2st spots and on tie-heavy
synthetic data; empty spots; coverage numbers against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stamp_st.preprocessing.tokenizer import (
    STORAGE_PAD_ID,
    TOKEN_OFFSET,
    RankTokenizer,
    tokenize_spot_reference,
)
from stamp_st.preprocessing.vocab import GeneMapping, GeneVocabulary, coverage_report, map_genes


def reference_tokens(vocab_counts, divisors, context):
    dense = sp.csr_matrix(vocab_counts).toarray()
    return np.stack([tokenize_spot_reference(r, divisors, context) for r in dense])


@pytest.fixture(scope="module")
def her2st_sample(her2st_root, vocab):
    from stamp_st.readers import read_sample

    a = read_sample(her2st_root, section="C2")  # 187 spots
    mapping = map_genes(list(a.var_names), vocab, a.var["gene_ids"].tolist())
    return a, mapping


@pytest.mark.parametrize("rounded", [True, False])
def test_matches_reference_on_her2st(her2st_sample, vocab, rounded):
    a, mapping = her2st_sample
    tok = RankTokenizer(vocab, context=1500, rounded_means=rounded)
    out = tok.tokenize(a.X, mapping, chunk_spots=64)  # several chunks
    vc = mapping.to_vocab_counts(a.X)
    ref = reference_tokens(vc, vocab.divisors(rounded=rounded), 1500)
    np.testing.assert_array_equal(out.tokens, ref)
    assert out.tokens.dtype == np.int32
    np.testing.assert_array_equal(out.n_genes, np.diff(vc.indptr))
    assert (out.n_genes > 1500).any(), "some her2st spots exceed the context: truncation is exercised"


def test_unrounded_means_change_the_order(her2st_sample, vocab):
    a, mapping = her2st_sample
    r = RankTokenizer(vocab, rounded_means=True).tokenize(a.X, mapping)
    u = RankTokenizer(vocab, rounded_means=False).tokenize(a.X, mapping)
    assert (r.tokens != u.tokens).any(axis=1).mean() > 0.5
    # same genes, different order (where the context does not truncate)
    for i in np.flatnonzero(r.n_genes <= 1500)[:5]:
        assert set(r.tokens[i][r.tokens[i] > 0]) == set(u.tokens[i][u.tokens[i] > 0])
    m = vocab.mean_nonzero
    d = vocab.divisors(rounded=False)
    ok = np.isfinite(m) & (m > 0)
    np.testing.assert_array_equal(d[ok], m[ok])
    assert (d[~ok] == 1).all()
    dr = vocab.divisors(rounded=True)
    assert set(np.unique(dr)) <= set(np.arange(1, 1 + int(dr.max())).astype(float))
    assert RankTokenizer(vocab, rounded_means=False).config()["rounded_means"] is False


def tie_vocab(n=60, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.choice([np.nan, 0.3, 1.0, 1.5, 2.0, 2.5, 3.7], size=n)
    return GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(n)), means.astype(float))


@pytest.mark.parametrize("rounded", [True, False])
def test_matches_reference_with_many_ties(rounded):
    v = tie_vocab()
    rng = np.random.default_rng(1)
    counts = rng.choice([0, 0, 0, 1, 1, 2, 3], size=(200, len(v))).astype(np.float32)
    tok = RankTokenizer(v, context=25, rounded_means=rounded)
    out = tok.tokenize_vocab_counts(sp.csr_matrix(counts))
    ref = reference_tokens(counts, v.divisors(rounded=rounded), 25)
    np.testing.assert_array_equal(out.tokens, ref)
    # the data really has ties, and they are broken by vocabulary index ascending
    normed = tok.normalise(sp.csr_matrix(counts)).toarray()
    row0 = normed[0][normed[0] > 0]
    assert len(np.unique(row0)) < len(row0) / 2
    genes = out.tokens[0][out.tokens[0] > 0] - TOKEN_OFFSET
    vals = normed[0, genes]
    assert np.all(np.diff(vals) <= 0)
    same = np.diff(vals) == 0
    assert same.any() and np.all(np.diff(genes)[same] > 0)


def test_empty_spots_are_flagged():
    v = tie_vocab(10)
    counts = np.zeros((4, 12), np.float32)  # 12 input genes: the last two are outside the vocabulary
    counts[0, :3] = [5, 1, 2]
    counts[2, 10:] = 7  # counts only in unmapped genes
    mapping = GeneMapping(np.r_[np.arange(10), -1, -1], len(v), np.array(["gene_id"] * 10 + ["", ""], object))
    out = RankTokenizer(v, context=8).tokenize(counts, mapping)
    np.testing.assert_array_equal(out.empty, [False, True, True, True])
    assert out.n_empty == 3
    assert (out.tokens[1:] == STORAGE_PAD_ID).all() and (out.n_genes[1:] == 0).all()
    assert out.n_genes[0] == 3 and (out.tokens[0, :3] > 0).all() and (out.tokens[0, 3:] == 0).all()
    empty = RankTokenizer(v, context=8).tokenize(np.zeros((0, 12)), mapping)
    assert empty.tokens.shape == (0, 8)


def test_duplicate_genes_are_summed():
    v = tie_vocab(5)
    mapping = GeneMapping(np.array([0, 0, 1]), len(v), np.array(["symbol"] * 3, object))
    vc = mapping.to_vocab_counts(np.array([[2, 3, 1]], np.float32)).toarray()
    np.testing.assert_array_equal(vc[0, :2], [5, 1])


def test_coverage_report_matches_direct_computation(her2st_sample, vocab):
    a, mapping = her2st_sample
    rep = coverage_report(a.X, mapping, a.obs_names)
    X = a.X.toarray().astype(np.float64)
    kept = mapping.var_to_vocab >= 0
    assert rep["n_spots"] == a.n_obs and rep["n_genes_input"] == a.n_vars
    assert rep["n_genes_kept"] == kept.sum()
    assert rep["n_genes_by_symbol"] + rep["n_genes_by_id"] == kept.sum()
    assert rep["fraction_counts_kept"] == pytest.approx(X[:, kept].sum() / X.sum())
    per = X[:, kept].sum(1) / X.sum(1)
    assert rep["median_spot_fraction_counts_kept"] == pytest.approx(np.median(per))
    assert rep["n_empty_spots"] == int((X[:, kept].sum(1) == 0).sum())
    assert rep["n_vocab_genes_present"] == len(set(mapping.var_to_vocab[kept]))
    np.testing.assert_allclose(rep["per_spot"]["genes_kept"], (X[:, kept] > 0).sum(1))
    assert list(rep["per_spot"].index[:3]) == list(a.obs_names[:3])


def exact_order_tokens(counts_row, divisors, context):
    """Oracle without floating point: rank by the exact rational count * scale / divisor (the per-spot scale
    is a positive constant, so count / divisor orders the same), ties by vocabulary index."""
    from fractions import Fraction

    nz = np.flatnonzero(counts_row)
    key = {int(g): Fraction(int(counts_row[g])) / Fraction(float(divisors[g])) for g in nz}
    ranked = sorted(key, key=lambda g: (-key[g], g))[:context]
    out = np.zeros(context, np.int32)
    out[: len(ranked)] = np.asarray(ranked, np.int64) + TOKEN_OFFSET
    return out


def test_exact_ties_are_broken_by_vocabulary_index():
    # count 3 / divisor 3 ties exactly with count 1 / divisor 1; 3*s/3 and 1*s/1 differ in floating point for
    # some spot scales s (either way), which must not decide the order
    v = GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(5)), np.array([1.0, 3.0, 3.0, 1.0, 1.0]))
    rows = np.array([[1, 3, 3, 1, k] for k in range(1, 200)], np.float32)
    out = RankTokenizer(v, context=5).tokenize_vocab_counts(sp.csr_matrix(rows))
    for r, t in zip(rows, out.tokens):
        np.testing.assert_array_equal(t, exact_order_tokens(r, v.divisors(), 5))


def test_matches_exact_oracle_on_her2st(her2st_sample, vocab):
    a, mapping = her2st_sample
    vc = mapping.to_vocab_counts(a.X[:20]).toarray()
    out = RankTokenizer(vocab, context=1500).tokenize_vocab_counts(sp.csr_matrix(vc))
    for i in range(len(vc)):
        np.testing.assert_array_equal(out.tokens[i], exact_order_tokens(vc[i], vocab.divisors(), 1500))
