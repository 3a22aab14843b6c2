"""Embedding spots and whole-slide tiles: a saved STAMP checkpoint and a plain backbone through the same path."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from PIL import Image

from stamp_st.preprocessing.vocab import GeneVocabulary

torch.set_num_threads(1)


def _tissue_image(path, size_px=600, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((size_px, size_px, 3), 240, np.uint8)
    img[100:500, 100:500] = rng.integers(90, 200, size=(400, 400, 3), dtype=np.uint8) * np.array([1, 0.5, 1])
    Image.fromarray(img).save(path, quality=95)
    return path


def _sample(tmp_path, vocab: GeneVocabulary, n=6):
    rng = np.random.default_rng(1)
    dense = rng.poisson(2.0, size=(n, len(vocab))).astype(np.float32)
    dense[n - 1] = 0  # an empty spot: gene embeddings must say so (NaN), not invent one
    counts = sp.csr_matrix(dense)
    xy = np.column_stack([np.linspace(200, 400, n), np.full(n, 300.0)])
    a = ad.AnnData(X=counts, obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame({"gene_ids": list(vocab.gene_ids)}, index=[f"G{i}" for i in range(len(vocab))]))
    a.obsm["spatial"] = xy
    a.uns["stamp_st"] = {"sample_id": "toy", "image_path": str(_tissue_image(tmp_path / "he.jpg")),
                         "um_per_px": 0.5, "source_path": str(tmp_path)}
    return a


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.stamp import StampModel, save_stamp

    tmp = tmp_path_factory.mktemp("ck")
    vocab = GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(40)), np.ones(40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StampModel(GeneEncoder("tiny"), create_backbone("efficientnet_lite0"))
    save_stamp(tmp / "stamp", model.eval(), vocabulary=vocab, tokenizer={"context": 64, "rounded_means": True})
    return tmp / "stamp", vocab


def test_stamp_checkpoint_embeds_image_genes_and_fusion(toy_checkpoint, tmp_path):
    from stamp_st.embedding_file import read_embedding_h5ad, write_embedding_h5ad
    from stamp_st.inference.embed import embed_sample, load_embedder
    from stamp_st.models.stamp import load_stamp

    path, vocab = toy_checkpoint
    embedder = load_embedder(str(path), device="cpu")
    adata = _sample(tmp_path, vocab)
    out = embed_sample(embedder, adata, batch_size=4)
    # Stamp_V: the image encoder's own feature; its joint-space projection beside it; no duplicate X_backbone
    assert out["X_stamp_v"].shape == (6, 1280) and out["X_stamp_v_joint"].shape == (6, 512)
    assert out["X_stamp_g"].shape == (6, 512) and out["X_stamp_f"].shape == (6, 1024) and "X_backbone" not in out
    np.testing.assert_allclose(np.linalg.norm(out["X_stamp_v_joint"], axis=1), 1.0, rtol=1e-4)
    net = load_stamp(path)
    with torch.no_grad():
        joint = net.encode_image(patch_feat=torch.from_numpy(out["X_stamp_v"])).numpy()
    np.testing.assert_allclose(out["X_stamp_v_joint"], joint, atol=1e-5)
    np.testing.assert_allclose(out["X_stamp_f"][:, :512], out["X_stamp_v_joint"], atol=1e-5)
    assert np.isnan(out["X_stamp_g"][-1]).all() and np.isfinite(out["X_stamp_g"][:-1]).all()
    # the same spot's patch gives the same Stamp_V whatever the batch it falls in
    again = embed_sample(embedder, adata, batch_size=1, with_genes=False)
    np.testing.assert_allclose(again["X_stamp_v"], out["X_stamp_v"], atol=1e-4)

    f = write_embedding_h5ad(tmp_path / "e.h5ad", out, ["toy"] * 6, list(adata.obs_names), xy_px=adata.obsm["spatial"])
    back = read_embedding_h5ad(f, key="X_stamp_v")
    np.testing.assert_allclose(back.emb, out["X_stamp_v"], atol=1e-6)


def test_plain_backbone_is_the_baseline_and_has_no_gene_side(tmp_path):
    from stamp_st.inference.embed import embed_sample, load_embedder

    vocab = GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(10)), np.ones(10))
    embedder = load_embedder("backbone:efficientnet_lite0", device="cpu")
    out = embed_sample(embedder, _sample(tmp_path, vocab, n=3), batch_size=3)
    assert set(out) == {"X_backbone"} and out["X_backbone"].shape == (3, 1280)


def test_whole_slide_tiles_cover_tissue_only(data_root, tmp_path):
    from stamp_st.inference.embed import embed_slide_tiles, load_embedder
    from stamp_st.inference.tiling import tile_corners, tissue_mask
    from stamp_st.readers.slide import open_slide

    svs = data_root / "wsi" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip("CMU-1-Small-Region.svs absent from the data directory")
    with open_slide(svs) as slide:
        mask = tissue_mask(slide, thumb_max_px=512)
        every = tile_corners(slide, 448)
        tissue = tile_corners(slide, 448, mask)
        assert 0 < len(tissue) < len(every)  # the slide has glass around its tissue
        embedder = load_embedder("backbone:efficientnet_lite0", device="cpu", patch_um=224.0)
        feats, coords, grid = embed_slide_tiles(embedder, slide, slide.um_per_px, batch_size=16)
    assert grid.patch_size_level0_px == 448 and grid.level0_magnification == 20  # 0.499 µm/px is TRIDENT's 20x
    assert feats.shape == (len(tissue), 1280) and coords.shape == (len(tissue), 2)
    assert (coords % 448 == 0).all()  # whole-pixel grid from (0, 0): the stride never alternates
    assert (coords >= 0).all() and (coords[:, 0] + 448 <= 2220).all() and (coords[:, 1] + 448 <= 2967).all()


def test_precision_auto_is_fp32_for_released_models_and_bf16_is_applied(toy_checkpoint, tmp_path):
    from stamp_st.inference.embed import embed_sample, load_embedder, resolve_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_precision("auto", cuda, released=True) == "fp32"
    assert resolve_precision("auto", cuda, released=False) == "bf16"
    assert resolve_precision("auto", cpu, released=False) == "fp32"
    assert resolve_precision("fp32", cuda, released=False) == "fp32"
    path, vocab = toy_checkpoint
    adata = _sample(tmp_path, vocab, n=3)
    fp32 = embed_sample(load_embedder(str(path), device="cpu", precision="fp32"), adata, with_genes=False)
    bf16 = embed_sample(load_embedder(str(path), device="cpu", precision="bf16"), adata, with_genes=False)
    assert not np.array_equal(fp32["X_stamp_v_joint"], bf16["X_stamp_v_joint"])  # the autocast really ran
    np.testing.assert_allclose(fp32["X_stamp_v_joint"], bf16["X_stamp_v_joint"], atol=0.1)


def test_released_pipeline_feeds_the_release_crops_and_tokens(toy_checkpoint, tmp_path, data_root):
    """Stamp_V of ``pipeline="released"`` is the model on the release's crops (cv2.imread: BGR, 224 px cut,
    cv2.resize); Stamp_G on its tokens; both differ from the default pipeline's."""
    cv2 = pytest.importorskip("cv2", reason="the released pipeline needs OpenCV: pip install 'stamp-st[release]'")
    from stamp_st.inference.embed import embed_sample, load_embedder
    from stamp_st.models.stamp import load_stamp
    from stamp_st.preprocessing.release_pipeline import ReleaseTokenizer

    path, vocab = toy_checkpoint
    adata = _sample(tmp_path, vocab)
    adata.var_names = list(vocab.gene_ids)  # names the release's map does not know are kept: ids match as is
    embedder = load_embedder(str(path), device="cpu")
    rel = embed_sample(embedder, adata, batch_size=4, pipeline="released")
    ours = embed_sample(embedder, adata, batch_size=4)

    wsi = cv2.imread(adata.uns["stamp_st"]["image_path"])
    crops = np.stack([cv2.resize(wsi[int(y - 112):int(y + 112), int(x - 112):int(x + 112)], (224, 224))
                      for x, y in adata.obsm["spatial"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_stamp(path)
    tok, _ = ReleaseTokenizer(vocab, context=64).tokenize_sample(adata.X, list(adata.var_names))
    with torch.no_grad():
        ref_v = net.encode_image(torch.from_numpy(crops)).numpy()
        ref_g = net.encode_genes(torch.from_numpy(tok.tokens[:-1].astype(np.int64))).numpy()
    np.testing.assert_allclose(rel["X_stamp_v_joint"], ref_v, atol=1e-5)
    np.testing.assert_allclose(rel["X_stamp_g"][:-1], ref_g, atol=1e-5)
    assert np.isnan(rel["X_stamp_g"][-1]).all()
    assert not np.allclose(rel["X_stamp_v_joint"], ours["X_stamp_v_joint"], atol=1e-3)


@pytest.mark.parametrize("name", ["uni_v1", "conch_v1", "timm:resnet18"])
def test_bare_backbone_name_gets_a_hint(name, tmp_path, capsys):
    from stamp_st.cli import main

    rc = main(["embed", name, str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "x.h5ad.out.h5ad"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"did you mean backbone:{name}" in err


def test_checkpoint_names_its_input_pixel_size_and_earlier_ones_still_load(toy_checkpoint, tmp_path):
    """config.json's model input pixel size is ``input_um_per_px`` (not the slide's); a checkpoint written when
    it was called ``um_per_px`` loads, with the key under its current name."""
    import json
    import shutil

    from stamp_st.models.checkpoint import CONFIG_FILE, load_config
    from stamp_st.models.stamp import load_stamp

    path, _ = toy_checkpoint
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["input_um_per_px"] == pytest.approx(112.0 / 224) and "um_per_px" not in cfg
    old = tmp_path / "old"
    shutil.copytree(path, old)
    cfg["um_per_px"] = cfg.pop("input_um_per_px")
    (old / CONFIG_FILE).write_text(json.dumps(cfg))
    assert load_config(old)["input_um_per_px"] == pytest.approx(0.5) and "um_per_px" not in load_config(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_stamp(old).stamp_config["input_um_per_px"] == pytest.approx(0.5)
