"""Shared fixtures. Tests that need the real data directory skip with a clear message where it is absent
(a user's fresh clone); CI has ../shared/data beside the clone."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def data_root():
    from stamp_st.paths import data_dir

    root = data_dir(required=False)
    if root is None:
        pytest.skip("shared data directory absent: set STAMP_ST_DATA to run the tests on real data")
    return root


@pytest.fixture(scope="session")
def her2st_root(data_root):
    p = data_root / "her2st"
    if not p.is_dir():
        pytest.skip(f"her2st data absent under {data_root}")
    return p


@pytest.fixture(scope="session")
def vocab(data_root):
    from stamp_st.preprocessing.vocab import GeneVocabulary

    p = data_root / "vocab" / "stamp_gene_vocab.tsv"
    if not p.is_file():
        pytest.skip(f"released gene vocabulary absent under {data_root}")
    return GeneVocabulary.from_tsv(p)


@pytest.fixture(scope="session")
def visium_dir(data_root):
    """The tiny real Space Ranger 1.0.0 output (scanpy test data)."""
    p = data_root / "visium_fixtures" / "spaceranger_1.0.0"
    if not p.is_dir():
        pytest.skip(f"Visium fixture absent under {data_root}")
    return p
