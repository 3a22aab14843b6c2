"""Concepts with one definition each: the sample's gene mapping onto the vocabulary, the scaling of spots to
10,000 counts, and rank / world size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stamp_st.corpus.gene_means import gene_means_from_counts
from stamp_st.distributed import env_rank_world, group_rank_world
from stamp_st.preprocessing.tokenizer import TARGET_SUM, per_spot_scale
from stamp_st.preprocessing.vocab import GeneVocabulary, map_genes, map_sample_genes


def _vocab():
    ids = tuple(f"ENSG{i:011d}" for i in range(5))
    return GeneVocabulary(ids, np.ones(5), tuple(f"G{i}" for i in range(5)), "test")


def test_sample_mapping_uses_ids_where_known_and_symbols_else():
    import anndata as ad

    v = _vocab()
    var = pd.DataFrame({"gene_ids": ["ENSG00000000003", "", ""]}, index=["X", "G1", "nothing"])
    a = ad.AnnData(X=sp.csr_matrix(np.ones((2, 3), np.float32)), var=var)
    m = map_sample_genes(a, v, mapper=_IdentityMapper())
    assert m.var_to_vocab.tolist() == [3, 1, -1]
    a.var["gene_ids"] = ""  # no id at all: the same as no column
    assert map_sample_genes(a, v, mapper=_IdentityMapper()).var_to_vocab.tolist() == \
        map_genes(["X", "G1", "nothing"], v, None, mapper=_IdentityMapper()).var_to_vocab.tolist()


class _IdentityMapper:
    """Symbol G<i> -> its id in the test vocabulary."""

    def map(self, symbols):
        return [f"ENSG{int(s[1:]):011d}" if s[:1] == "G" and s[1:].isdigit() else "" for s in symbols]


def test_one_scaling_to_ten_thousand_counts():
    totals = np.array([0.0, 1.0, 400.0])
    np.testing.assert_array_equal(per_spot_scale(totals), [0.0, TARGET_SUM, TARGET_SUM / 400.0])
    counts = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 2.0]]))
    # gene means: mean over expressing spots of the count scaled to 10,000 per spot
    np.testing.assert_allclose(gene_means_from_counts([counts], 3), [(2500.0 + 5000.0) / 2, 7500.0, 5000.0])


def test_rank_and_world(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert env_rank_world() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_rank_world() == (3, 4, 1)
    assert group_rank_world() == (0, 1) and group_rank_world(default=(2, 5)) == (2, 5)  # no process group
