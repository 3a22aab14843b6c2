"""``stamp-st inspect`` and ``stamp-st tokenize`` end to end, on her2st sections and the Visium fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from stamp_st.cli import main


def inspect_json(capsys, *argv):
    rc = main(["inspect", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_inspect_visium_json(capsys, visium_dir, vocab):
    from stamp_st.readers import read_sample

    r = inspect_json(capsys, visium_dir)
    a = read_sample(visium_dir)
    assert (r["n_spots"], r["n_genes"], r["format"]) == (a.n_obs, a.n_vars, "spaceranger")
    assert r["um_per_px"] == pytest.approx(a.uns["stamp_st"]["um_per_px"])
    assert r["um_per_px_source"] == "spot_pitch"
    v = r["vocabulary"]
    assert v["checksum"] == vocab.checksum
    in_vocab = vocab.index_of(list(a.var["gene_ids"])) >= 0
    assert v["n_genes_by_id"] == in_vocab.sum()  # the fixture's genes are Ensembl ids
    X = a.X.toarray()
    assert v["fraction_counts_kept"] == pytest.approx(X[:, in_vocab].sum() / X.sum())


def test_inspect_text_her2st_with_image(capsys, her2st_root):
    assert main(["inspect", str(her2st_root), "--section", "B4"]) == 0
    out = capsys.readouterr().out
    assert "µm/px" in out and "spot_pitch" in out and ".jpg (" in out and "kept" in out


def test_inspect_user_pixel_size_and_explicit_vocab(capsys, her2st_root, data_root):
    r = inspect_json(capsys, her2st_root, "--section", "A1", "--um-per-px", "0.9",
                     "--vocab", data_root / "vocab" / "stamp_gene_vocab.tsv")
    assert (r["um_per_px"], r["um_per_px_source"]) == (0.9, "user")
    assert r["image_path"] == "" and r["image_size_px"] is None


def test_inspect_bad_section_exits_2(capsys, her2st_root):
    assert main(["inspect", str(her2st_root), "--section", "Q7"]) == 2
    err = capsys.readouterr().err
    assert "Q7" in err and "available" in err and "What to do" in err


@pytest.mark.slow
def test_inspect_and_tokenize_every_her2st_section(tmp_path, capsys, her2st_root):
    from stamp_st.readers import her2st_sections

    with_image = set()
    for sec in her2st_sections(her2st_root):
        r = inspect_json(capsys, her2st_root, "--section", sec)
        assert r["sample_id"] == sec and r["n_spots"] > 0 and r["n_genes"] > 0
        assert r["um_per_px_source"] == "spot_pitch" and r["um_per_px"] > 0
        assert r["vocabulary"]["n_genes_kept"] > 0.8 * r["n_genes"]
        out = tmp_path / f"{sec}.npz"
        assert main(["tokenize", str(her2st_root), "--section", sec, "--out", str(out), "--context", "64"]) == 0
        assert "wrote" in capsys.readouterr().out
        d = load_npz(out)
        assert len(d["spot_ids"]) + len(d["empty_spot_ids"]) == r["n_spots"]
        assert len(d["empty_spot_ids"]) == r["vocabulary"]["n_empty_spots"]
        if r["image_path"]:
            with_image.add(sec)
            assert len(r["image_size_px"]) == 2
    assert with_image == {p.parent.name for p in (her2st_root / "ST-imgs").glob("*/*/*.jpg")}


def load_npz(path):
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def test_tokenize_her2st_matches_tokenizer(tmp_path, capsys, her2st_root, vocab):
    from stamp_st.preprocessing.tokenizer import RankTokenizer
    from stamp_st.preprocessing.vocab import map_genes
    from stamp_st.readers import read_sample

    out = tmp_path / "c2.npz"
    assert main(["tokenize", str(her2st_root), "--section", "C2", "--out", str(out), "--context", "512"]) == 0
    d = load_npz(out)
    a = read_sample(her2st_root, section="C2")
    expected = RankTokenizer(vocab, context=512).tokenize(a.X, map_genes(list(a.var_names), vocab,
                                                                         list(a.var["gene_ids"])))
    assert d["tokens"].dtype == np.int32 and d["tokens"].shape == (a.n_obs, 512)
    np.testing.assert_array_equal(d["tokens"], expected.tokens)
    np.testing.assert_array_equal(d["spot_ids"], np.asarray(a.obs_names))
    np.testing.assert_array_equal(d["n_genes"], expected.n_genes)
    assert str(d["vocab_checksum"]) == vocab.checksum
    cfg = json.loads(str(d["tokenizer_config"]))
    assert cfg["context"] == 512 and cfg["rounded_means"] is True
    assert len(d["empty_spot_ids"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["c2.npz"]  # no temporary file left behind


def test_tokenize_visium_unrounded(tmp_path, capsys, visium_dir):
    out = tmp_path / "v.npz"
    assert main(["tokenize", str(visium_dir), "--out", str(out), "--unrounded-means"]) == 0
    d = load_npz(out)
    assert json.loads(str(d["tokenizer_config"]))["rounded_means"] is False
    assert d["tokens"].shape[1] == 1500
    assert ((d["tokens"] > 0).sum(1) == np.minimum(d["n_genes"], 1500)).all()


def test_tokenize_drops_and_lists_empty_spots(tmp_path, capsys, data_root):
    import anndata as ad
    import pandas as pd

    genes = ["ERBB2", "CD24", "KRT19", "NOT_A_GENE_1", "NOT_A_GENE_2"]
    X = np.array([[3, 1, 0, 0, 0], [0, 0, 0, 4, 2], [0, 2, 5, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"array_row": [0, 0, 1, 1], "array_col": [0, 2, 1, 3]},
                                                      index=["s0", "s1", "s2", "s3"]),
                   var=pd.DataFrame(index=genes))
    a.obsm["spatial"] = np.array([[10, 10], [30, 10], [20, 27], [40, 27]], float)
    a.write_h5ad(tmp_path / "t.h5ad")
    out = tmp_path / "t.npz"
    assert main(["tokenize", str(tmp_path / "t.h5ad"), "--out", str(out), "--context", "8"]) == 0
    err = capsys.readouterr().err
    assert "2 of 4 spots" in err and "s1" in err and "s3" in err
    d = load_npz(out)
    assert list(d["spot_ids"]) == ["s0", "s2"] and list(d["empty_spot_ids"]) == ["s1", "s3"]
    assert (d["tokens"][:, 0] > 0).all() and list(d["n_genes"]) == [2, 2]


def test_tokenize_rejects_bad_context(tmp_path, capsys, visium_dir):
    assert main(["tokenize", str(visium_dir), "--out", str(tmp_path / "x.npz"), "--context", "0"]) == 2
    assert "--context" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
