"""``--pipeline released``: tokens and crops equal the release's ``tokenize_single_sample``
(tokenize_and_encode.py), re-implemented here compactly as the oracle from the release's own lines: its
symbol map only, ``var_names_make_unique``, the outer concat with the vocabulary template, ``sf_normalize``,
division by the rounded means, numpy's ``argsort`` per spot; ``cv2.imread`` (BGR), its slice, ``cv2.resize``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stamp_st.preprocessing.release_pipeline import ReleaseTokenizer, release_patches, tied_positions
from stamp_st.preprocessing.vocab import GeneVocabulary
from stamp_st.readers.ensembl import read_symbol_table

IMAGED = ("B4", "C2", "C3", "C4")


# ------------------------------------------------------------------ the oracle: the release's lines, compactly
def _release_tokens(counts, symbols, symbol_map, vocab_ids, mean, max_seq_len=4096, aux_tokens=30):
    import anndata as ad
    from sklearn.utils import sparsefuncs

    adata = ad.AnnData(sp.csr_matrix(counts).astype("float32"))
    adata.var_names = [symbol_map.get(s, s) for s in symbols]  # map_gene_ids
    if adata.var_names.duplicated().any():
        adata.var_names_make_unique()
    head_vars = pd.Index(vocab_ids)
    head = ad.AnnData(sp.csr_matrix((1, len(head_vars)), dtype=np.float64))  # model.h5ad: one empty row
    head.var_names = head_vars
    adata = ad.concat([head, adata[:, adata.var_names.isin(head_vars)]], join="outer", axis=0)
    adata = adata[1:]
    adata = adata[:, head_vars]
    if not sp.isspmatrix_csr(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    adata.X = adata.X.astype("float32")
    x = np.nan_to_num(adata.X)
    x = x.copy()  # sf_normalize
    c = np.array(x.sum(axis=1))
    c += c == 0.0
    sparsefuncs.inplace_row_scale(x, 10000.0 / c)
    mean = np.nan_to_num(mean)
    mean = np.where(mean == 0, 1, np.where((mean % 1) >= 0.5, np.ceil(mean), np.floor(mean)))
    mean = mean + (mean == 0)
    out = x / mean.reshape((1, -1))
    out = sp.csr_matrix(out) if isinstance(out, np.matrix) else out.tocsr()  # tokenize_data
    tokens = np.zeros((out.shape[0], max_seq_len), np.int32)
    for i in range(out.shape[0]):
        a, b = out.indptr[i], out.indptr[i + 1]
        idx = out.indices[a:b][np.argsort(-out.data[a:b])[:max_seq_len]] + aux_tokens
        tokens[i, :len(idx)] = idx
    return tokens


@pytest.fixture(scope="module")
def release_assets(data_root):
    vocab = GeneVocabulary.default()
    sym = data_root / "vocab" / "stamp_symbol_to_ensembl.tsv"
    if not sym.is_file():
        pytest.skip(f"the release's symbol map is absent: {sym}")
    return vocab, read_symbol_table(sym)


def _check_section(her2st_root, section, vocab, symbol_map, max_spots: int | None = None) -> tuple[int, int, int]:
    """Tokens of ``section`` (its first ``max_spots`` spots: each spot's tokens depend on that spot and the
    vocabulary's means only) equal the oracle's."""
    from stamp_st.readers import read_sample

    adata = read_sample(her2st_root, section=section)
    if max_spots is not None:
        adata = adata[:max_spots].copy()
    symbols = list(adata.var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _release_tokens(adata.X, symbols, symbol_map, list(vocab.gene_ids), vocab.mean_nonzero)[:, :1500]
    rt = ReleaseTokenizer(vocab, symbol_map, context=1500)
    tok, mapping = rt.tokenize_sample(adata.X, symbols)
    np.testing.assert_array_equal(tok.tokens, ref, err_msg=f"her2st {section}")
    x = rt.normalised(adata.X, mapping)
    ties = [tied_positions(-np.sort(-x.data[x.indptr[i]:x.indptr[i + 1]]), 1500) for i in range(x.shape[0])]
    return adata.n_obs, int(sum(t > 0 for t in ties)), int(sum(ties))


def test_released_tokens_equal_the_release_on_an_imaged_section(her2st_root, release_assets):
    vocab, symbol_map = release_assets
    n, spots_with_ties, tied = _check_section(her2st_root, "B4", vocab, symbol_map)
    assert n > 200 and spots_with_ties > 0  # ties are the rule: the order among them is numpy's argsort's
    print(f"B4: {n} spots equal; {spots_with_ties} with ties in their first 1500 ranks ({tied} tied positions)")


@pytest.mark.slow
def test_released_tokens_equal_the_release_on_every_her2st_section(her2st_root, release_assets):
    from stamp_st.readers import her2st_sections

    vocab, symbol_map = release_assets
    sections = her2st_sections(her2st_root)
    rows = [(s, *_check_section(her2st_root, s, vocab, symbol_map, max_spots=40)) for s in sections]
    print("\n".join(f"{s}: {n} spots equal, {k} with ties ({t} tied positions)" for s, n, k, t in rows))
    assert len(rows) == len(sections) > 0


def test_release_mapping_uses_only_the_release_map_and_keeps_the_first_duplicate(release_assets):
    vocab, symbol_map = release_assets
    rt = ReleaseTokenizer(vocab, symbol_map)
    sym, gid = next(iter(symbol_map.items()))
    j = vocab.index_of([gid])[0]
    # a symbol our default mapper knows (org.Hs.eg.db) that the release's map does not: dropped here
    from stamp_st.preprocessing.vocab import SymbolMapper

    default = SymbolMapper.default(vocab)
    unknown = next((s for t in default.tables for s, g in t.items()
                    if s not in symbol_map and vocab.index_of([g])[0] >= 0), "NOT_A_GENE")
    m = rt.mapping([sym, sym, gid, unknown, vocab.gene_ids[5]])
    # the duplicate symbol becomes '<id>-1' (not in the vocabulary), the literal id too ('<id>-2')
    assert m.var_to_vocab.tolist() == [j, -1, -1, -1, 5]
    counts = sp.csr_matrix(np.array([[2, 7, 9, 4, 1]], np.float32))
    tok = rt.tokenize(counts, m).tokens[0]
    assert tok[:2].tolist() == [j + 30, 5 + 30] or tok[:2].tolist() == [5 + 30, j + 30]
    assert (tok[2:] == 0).all()  # no sums over duplicates, unknown symbols dropped


# ------------------------------------------------------------------ crops
def test_released_patches_equal_the_release_crops(her2st_root):
    cv2 = pytest.importorskip("cv2", reason="the released pipeline needs OpenCV: pip install 'stamp-st[release]'")
    from stamp_st.readers import read_sample
    from stamp_st.readers.slide import open_slide

    adata = read_sample(her2st_root, section="B4")
    image = adata.uns["stamp_st"]["image_path"]
    wsi = cv2.imread(str(image))  # the release: BGR, full resolution
    centers = np.asarray(adata.obsm["spatial"], np.float64)
    # a spot near each edge and one off the slide (numpy's slicing: a negative start wraps, an end is cut)
    h, w = wsi.shape[:2]
    centers = np.vstack([centers, [[30.0, 40.0], [w - 20.5, h / 2], [w / 2, h - 10.0], [-500.0, 300.0]]])
    ps = 112
    with open_slide(image) as slide:
        ours, ok = release_patches(slide, centers, ps)
    for i, (x, y) in enumerate(centers):
        img = wsi[int(y - ps):int(y + ps), int(x - ps):int(x + ps)]
        if img.size == 0:  # the release skips the spot
            assert not ok[i]
            continue
        assert ok[i]
        np.testing.assert_array_equal(ours[i], cv2.resize(img, (224, 224)), err_msg=f"spot {i}")
    assert ok.sum() >= len(centers) - 2


def test_tokenize_cli_released_pipeline_writes_the_release_tokens(tmp_path, her2st_root, release_assets):
    import json

    from stamp_st.cli import main
    from stamp_st.readers import read_sample

    vocab, symbol_map = release_assets
    out = tmp_path / "c3.npz"
    assert main(["tokenize", str(her2st_root), "--section", "C3", "--out", str(out), "--pipeline", "released"]) == 0
    d = np.load(out)
    a = read_sample(her2st_root, section="C3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _release_tokens(a.X, list(a.var_names), symbol_map, list(vocab.gene_ids), vocab.mean_nonzero)
    rows = pd.Index(a.obs_names).get_indexer(d["spot_ids"])
    np.testing.assert_array_equal(d["tokens"], ref[rows, :1500])
    assert json.loads(str(d["tokenizer_config"]))["pipeline"] == "released"


def _release_region_label(x, y, ps, w, h, rng):
    """The release's ``get_safe_region``: a random valid cell of the 6ps x 6ps region, -1 if none."""
    valid = []
    for grid_id in range(9):
        row, col = grid_id // 3, grid_id % 3
        x1, y1 = x - (col * 2 + 1) * ps, y - (row * 2 + 1) * ps
        if x1 >= 0 and y1 >= 0 and x1 + 6 * ps <= w and y1 + 6 * ps <= h:
            valid.append(grid_id)
    if not valid:
        return -1, None
    g = rng.choice(valid)
    x1, y1 = x - (g % 3 * 2 + 1) * ps, y - (g // 3 * 2 + 1) * ps
    return g, (int(x1), int(y1), int(x1 + 6 * ps), int(y1 + 6 * ps))


def test_paired_corpus_released_pipeline_holds_the_release_tokens_and_crops(her2st_root, release_assets, tmp_path):
    """A paired corpus built with ``pipeline="released"`` stores, per spot, the release's tokens, its BGR patch
    and its region at the cell its ``random.seed(42)`` sequence picks (over every spot in input order)."""
    import random

    cv2 = pytest.importorskip("cv2", reason="the released pipeline needs OpenCV: pip install 'stamp-st[release]'")
    pytest.importorskip("distributed")
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.corpus.shards import iter_shard
    from stamp_st.readers import read_sample

    vocab, symbol_map = release_assets
    cfg = BuildConfig(kind="paired", vocab_path=vocab.source, pipeline="released", shard_size=512)
    man = build_corpus(her2st_samples(her2st_root, sections=["B4"]), tmp_path, cfg, workers=1, processes=False,
                       progress=False)["manifest"]
    assert man["settings"]["pipeline"] == "released"
    a = read_sample(her2st_root, section="B4")
    wsi = cv2.imread(str(a.uns["stamp_st"]["image_path"]))
    h, w = wsi.shape[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_tokens = _release_tokens(a.X, list(a.var_names), symbol_map, list(vocab.gene_ids), vocab.mean_nonzero)
    rng = random.Random(42)
    regions = [_release_region_label(x, y, 112, w, h, rng) for x, y in np.asarray(a.obsm["spatial"], float)]
    row_of = {s: i for i, s in enumerate(a.obs_names)}
    n = 0
    for sh in man["shards"]:
        for item in iter_shard(str(tmp_path / sh["url"])):
            meta = item["meta.json"]
            i = row_of[meta["spot_id"]]
            x, y = a.obsm["spatial"][i]
            t = item["tokens.npy"]
            np.testing.assert_array_equal(t, ref_tokens[i, :t.shape[-1]])
            assert not ref_tokens[i, t.shape[-1]:1500].any()
            patch = cv2.resize(wsi[int(y - 112):int(y + 112), int(x - 112):int(x + 112)], (224, 224))
            np.testing.assert_array_equal(item["patch.png"], patch)
            label, box = regions[i]
            assert meta["region_valid"] == (label >= 0)
            if label >= 0:
                assert meta["region_label"] == label
                x0, y0, x1, y1 = box
                np.testing.assert_array_equal(item["region.png"], cv2.resize(wsi[y0:y1, x0:x1], (224, 224)))
            n += 1
    assert n == man["totals"]["n_spots"] > 200


def test_default_corpus_settings_are_unchanged_by_the_pipeline_option():
    """Corpora built before ``pipeline`` existed keep their settings hash (no rebuild on resume); a released
    corpus records its pipeline."""
    from stamp_st.corpus.build import BuildConfig

    default = BuildConfig(kind="paired", vocab_path="v.tsv").settings("sha256:x")
    assert "pipeline" not in default and "magnification" not in default
    released = BuildConfig(kind="paired", vocab_path="v.tsv", pipeline="released", magnification=40).settings("s")
    assert released["pipeline"] == "released" and released["magnification"] == 40
