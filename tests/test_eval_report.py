"""Embedding file formats round-trip, the report renders (table + inline images, no external assets),
and the CLI writes results.json + report.html."""

import json

import numpy as np
import pytest

from stamp_st.embedding_file import (
    read_embedding_h5ad,
    read_trident_h5,
    write_embedding_h5ad,
    write_trident_h5,
)
from stamp_st.errors import StampInputError
from stamp_st.evaluation.sources import align_sources, read_source


def _write(tmp_path, rng, n_per=60, patches=True):
    slides = np.repeat(["S0", "S1", "S2"], n_per)
    n = len(slides)
    y = rng.integers(0, 3, n)
    good = rng.normal(size=(n, 16)) + np.eye(3, 16)[y] * 4
    counts = rng.poisson(np.exp(1 + np.eye(3, 30)[y] * 2 + rng.normal(0, 0.2, (n, 30)))).astype(np.float32)
    img = tmp_path / "he.png"
    from PIL import Image

    Image.fromarray(rng.integers(150, 255, (200, 300, 3), dtype=np.uint8)).save(img)
    extra = {"patches": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)} if patches else {}
    path = write_embedding_h5ad(
        tmp_path / "emb.h5ad", {"X_stamp_v_joint": good, "X_stamp_g": good + rng.normal(0, 0.3, good.shape),
                                "X_backbone": rng.normal(size=(n, 16))},
        slide_ids=slides, spot_ids=[f"{i}x{i % 7}" for i in range(n)], xy_px=rng.uniform(0, 1000, (n, 2)),
        counts=counts, gene_names=[f"G{i}" for i in range(30)], image_paths={"S0": str(img)}, record=extra)
    import anndata as ad

    a = ad.read_h5ad(path)
    a.obs["region"] = np.array([f"r{k}" for k in y])
    a.write_h5ad(path)
    return path


def test_h5ad_roundtrip_and_key_choice(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, rng)
    s = read_embedding_h5ad(path)
    assert s.name.endswith("X_stamp_v_joint") and s.modality == "image" and s.gene_emb is not None
    assert s.counts.shape == (180, 30) and s.image_paths == {"S0": str(tmp_path / "he.png")}
    b = read_source(f"{path}:X_backbone", "bb")
    assert b.name == "bb" and b.gene_emb is None
    e = read_source(f"{path}:expr-pca")
    assert e.modality == "gene" and e.emb.shape[1] <= 50
    with pytest.raises(StampInputError, match="X_nope"):
        read_source(f"{path}:X_nope")


def test_trident_roundtrip_and_alignment(tmp_path):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(10, 8))
    xy = rng.uniform(0, 500, (10, 2))
    p = write_trident_h5(tmp_path / "s.h5", f, xy, "B4", spot_ids=[f"s{i}" for i in range(10)], encoder="x")
    s = read_trident_h5(p)
    assert s.slide_ids[0] == "B4" and s.spot_ids[3] == "s3" and np.allclose(s.emb, f)
    t = s.subset(np.arange(9, -1, -1)[:7])
    a = align_sources({"a": s, "b": t})
    assert len(a["a"]) == 7 and np.array_equal(a["a"].keys, a["b"].keys)
    assert np.allclose(a["a"].emb, a["b"].emb)


def test_report_renders_and_cli(tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    from stamp_st.cli import main

    path = _write(tmp_path, np.random.default_rng(2))
    out = tmp_path / "out"
    rc = main(["evaluate", "--embeddings", f"{path}:X_stamp_v_joint", f"{path}:X_backbone", "--names", "stamp",
               "backbone", "--baseline", "backbone", "--add-expression-pca", "--labels", "obs:region",
               "--tasks", "probe,cluster,expression,retrieval", "--projection", "pca", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["sources"]) == {"stamp", "backbone", "expression PCA"}
    assert "skipped" in res["tasks"]["expression"]["expression PCA"]  # gene side is not scored on expression
    assert res["tasks"]["probe"]["stamp"]["metrics"]["balanced_accuracy"]["mean"] > \
        res["tasks"]["probe"]["backbone"]["metrics"]["balanced_accuracy"]["mean"]
    html = (out / "report.html").read_text()
    assert "<table" in html and html.count("<img") >= 6 and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "stamp" in html and "backbone (baseline)" in html
    for slide in ("S0", "S1", "S2"):  # maps for every held-out slide, for each image source
        for name in ("stamp", "backbone"):
            assert f"{name}: measured vs ridge-predicted expression of the best-predicted genes, slide {slide}" in html
    assert "image-&gt;gene retrieval" in html  # retrieval examples (the file's patches)
    out_text = capsys.readouterr().out
    assert "retrieval" in out_text
    # the console prints the interval the HTML shows: clipped to the metric's range
    for r in res["table"]:
        if r.get("mean") is not None and r.get("low") is not None:
            assert r["text"] in out_text or r["text"].split(" [")[0] in out_text
            if "R@" in r["metric"] or "accuracy" in r["metric"] or "f1" in r["metric"]:
                assert 0.0 <= r["low"] <= r["high"] <= 1.0
            if "mse" in r["metric"]:
                assert r["low"] >= 0.0


def test_cli_rejects_mismatched_names(tmp_path):
    from stamp_st.cli import main

    path = _write(tmp_path, np.random.default_rng(3), patches=False)
    assert main(["evaluate", "--embeddings", str(path), "--names", "a", "b", "--out", str(tmp_path / "o")]) == 2


def test_comma_separated_files_stack_slides_and_intersect_genes(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for sl, genes in (("A", ["g1", "g2", "g3"]), ("B", ["g3", "g1", "g9"])):
        paths.append(write_embedding_h5ad(
            tmp_path / f"{sl}.h5ad", {"X_backbone": rng.normal(size=(5, 4))}, [sl] * 5,
            [f"{i}x1" for i in range(5)], counts=rng.poisson(3, (5, 3)), gene_names=genes))
    s = read_source(f"{paths[0]},{paths[1]}:X_backbone", "bb")
    assert s.name == "bb" and len(s) == 10 and sorted(set(s.slide_ids)) == ["A", "B"]
    assert s.gene_names.tolist() == ["g1", "g3"] and s.counts.shape == (10, 2)
    import anndata as ad

    b = ad.read_h5ad(paths[1])
    assert np.array_equal(s.counts[5:, 0].toarray().ravel(), b[:, "g1"].X.toarray().ravel())


def test_training_curves_figure_reads_engine_metrics(tmp_path):
    import pandas as pd

    from stamp_st.evaluation.figures import training_curves

    rows = [(s, 0, "val", m, v) for s in (0, 20, 40) for m, v in
            (("recall@1", 0.01 * s), ("chance_recall@1", 0.006), ("csp_acc", 0.1 + s / 100))]
    rows.append((10, 0, "train", "loss", 3.0))
    pd.DataFrame(rows, columns=["step", "epoch", "split", "metric", "value"]).to_csv(tmp_path / "m.csv", index=False)
    assert training_curves(tmp_path / "m.csv", "run")
    assert training_curves(tmp_path / "absent.csv", "run") is None


def test_training_curves_draw_every_logged_step(tmp_path, monkeypatch):
    """A run validated only at its end (the demo's Stage 2) still shows its whole training: every logged
    training step is on the curve, the validation is a point, bookkeeping series are left out."""
    import pandas as pd

    import stamp_st.evaluation.figures as F

    rows = [(s, 0, "train", m, v) for s in range(10, 201, 10)
            for m, v in (("loss", 5 - s / 100), ("csp_acc", s / 400), ("lr", 1e-3))]
    rows += [(200, 0, "val", "recall@1", 0.2), (200, 0, "val", "chance_recall@1", 0.01),
             (200, 0, "val", "loss", 3.2)]
    pd.DataFrame(rows, columns=["step", "epoch", "split", "metric", "value"]).to_csv(tmp_path / "m.csv", index=False)
    figs = []
    monkeypatch.setattr(F, "fig_to_b64", lambda fig: figs.append(fig) or "x")
    assert F.training_curves(tmp_path / "m.csv", "Stage 2") == "x"
    axes = {ax.get_title(): ax for ax in figs[0].axes}
    assert set(axes) == {"loss", "recall@1", "csp_acc"}  # no lr panel
    train = next(line for line in axes["loss"].lines if line.get_label().startswith("train"))
    assert list(train.get_xdata()) == list(range(10, 201, 10))
    val = next(line for line in axes["loss"].lines if line.get_label().startswith("val"))
    assert list(val.get_xdata()) == [200]


def test_retrieval_patches_are_cut_from_the_he(tmp_path):
    from PIL import Image

    from stamp_st.embedding_file import EmbeddingSet
    from stamp_st.evaluation.report import _patches_from_he

    img = np.full((400, 400, 3), 255, np.uint8)
    img[:200] = (200, 40, 120)  # the top half is tissue-coloured
    Image.fromarray(img).save(tmp_path / "he.png")
    xy = np.array([[100.0, 100.0], [160.0, 100.0], [100.0, 300.0], [160.0, 300.0]])
    s = EmbeddingSet("a", np.zeros((4, 2)), ["S"] * 4, list("abcd"), xy_px=xy,
                     image_paths={"S": str(tmp_path / "he.png")})
    patches = _patches_from_he(s, [{"slide": "S", "query": 0, "retrieved": [2, 1]}], out_px=16)
    assert set(patches) == {0, 1, 2} and patches[0].shape == (16, 16, 3)
    np.testing.assert_array_equal(patches[0][8, 8], (200, 40, 120))
    np.testing.assert_array_equal(patches[2][8, 8], (255, 255, 255))
    s.image_paths = {}
    assert _patches_from_he(s, [{"slide": "S", "query": 0, "retrieved": [2]}]) is None
