"""StampModel: pretext token, CSP windows from the actual grid, the four losses end to end, embeddings,
frozen / cached gene encoder, checkpoints."""

from __future__ import annotations

import warnings

import pytest
import torch

from stamp_st.models.backbones import create_backbone
from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
from stamp_st.models.pretext import csp_window_geometry, csp_windows
from stamp_st.models.stamp import (
    StampModel,
    load_stamp,
    precompute_gene_embeddings,
    save_stamp,
)
from stamp_st.training.align_task import AlignTask, flatten_batch, slide_index

torch.set_num_threads(1)
IMG = 64  # 4 x 4 tokens for a /16 ViT: fast
GENE_CFG = GeneEncoderConfig(name="t", vocab_size=200, d_model=32, n_layers=1, n_heads=4, d_ff=64, context=40,
                             cgr_head=False)


def tiny_model(vit: bool = True, img: int = IMG, **kw) -> StampModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if vit:
            bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, img_size=img)
        else:
            bb = create_backbone("efficientnet_lite0", pretrained=False)
    bb.transform.size_px = img
    return StampModel(GeneEncoder(GENE_CFG), bb, **kw)


def tiny_task(vit: bool = True, img: int = IMG, neighbour_radius_um: float | None = None, **kw) -> AlignTask:
    """The Stage-2 task (losses) around ``tiny_model``."""
    return AlignTask(tiny_model(vit, img, **kw), neighbour_radius_um=neighbour_radius_um)


def tiny_batch(B: int = 3, img: int = IMG, L: int = 24, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(30, 230, (B, 2, L), generator=g)
    tokens[0, 1, 10:] = 0  # storage padding
    return {"patch": torch.randint(0, 256, (B, 2, img, img, 3), generator=g, dtype=torch.uint8),
            "region": torch.randint(0, 256, (B, 2, img, img, 3), generator=g, dtype=torch.uint8),
            "thumb": torch.randint(0, 256, (B, 2, 16, 16, 3), generator=g, dtype=torch.uint8),
            "region_label": torch.randint(0, 9, (B, 2), generator=g),
            "region_valid": torch.tensor([[True, False]] + [[True, True]] * (B - 1)),
            "tokens": tokens, "xy_um": torch.rand(B, 2, 2, generator=g) * 500,
            "slide_id": [f"s{i % 2}" for i in range(B)]}


def test_csp_window_geometry_reproduces_release_and_generalises():
    assert csp_window_geometry(14) == (6, 4)  # the release: 6 x 6 tokens, stride 4
    for g in range(3, 40):
        w, s = csp_window_geometry(g)
        assert w >= s >= 1 and 2 * s + w == g  # three windows tile the axis exactly
    tm = torch.randn(2, 5, 14, 14)
    win = csp_windows(tm)
    assert win.shape == (2, 9, 5)
    torch.testing.assert_close(win[:, 5], tm[:, :, 4:10, 8:14].mean(dim=(2, 3)))  # row 1, col 2
    assert csp_windows(torch.randn(1, 3, 12, 16)).shape == (1, 9, 3)


def test_pretext_token_passes_use_grid_from_input_size():
    m = tiny_model().eval()
    vb = m.visual_backbone
    x = torch.randn(2, 3, IMG, IMG)
    thumbs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        p1 = vb.forward_patch(x)
        region, pretext, tmap = vb.forward_region(x, thumbs)
        assert p1.shape == region.shape == pretext.shape == (2, 192)
        assert tmap.shape == (2, 192, IMG // 16, IMG // 16)
        _, _, tmap_big = vb.forward_region(torch.randn(1, 3, 96, 96), thumbs[:1])
        assert tmap_big.shape[-2:] == (6, 6)
        # the patch feature depends on the learnable token; the pretext output on the thumbnail
        vb.p_visual.add_(1.0)
        assert not torch.allclose(vb.forward_patch(x), p1)
        _, pretext2, _ = vb.forward_region(x, thumbs.flip(-1))
        assert not torch.allclose(pretext2, pretext)


def test_forward_returns_all_losses_and_trains_every_head():
    t = tiny_task()
    m = t.model
    out = t(tiny_batch())
    keys = {"loss", "loss_patch_spot", "loss_region_spot", "loss_patch_region", "loss_csp", "csp_acc", "logit_scale"}
    assert keys <= set(out)
    assert all(torch.isfinite(v).all() for v in out.values())
    parts = sum(out[k] for k in ("loss_patch_spot", "loss_region_spot", "loss_patch_region", "loss_csp"))
    torch.testing.assert_close(out["loss"], parts)
    out["loss"].backward()
    for name in ("visual_backbone.p_visual", "visual_backbone.ref_pos_embed.weight", "positioning_projection.weight",
                 "spot_projection.weight", "patch_projection.weight", "region_projection.weight", "logit_scale",
                 "spot_backbone.embeddings.weight", "visual_backbone.base_model.blocks.0.attn.qkv.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_convnet_equivalent_forward():
    t = tiny_task(vit=False, img=96)
    m = t.model
    out = t(tiny_batch(B=2, img=96))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.visual_backbone.thumb_mlp[0].weight.grad.abs().sum() > 0


def test_pooling_with_grad_equals_gene_encoder_embed():
    enc = GeneEncoder(GENE_CFG).eval()
    tokens = tiny_batch()["tokens"].reshape(6, -1)
    for pooling in ("mean", "released"):
        torch.testing.assert_close(enc.pool(tokens, pooling), enc.embed(tokens, pooling=pooling))
    # the release's quirk really differs (drops 3 top genes, averages padding)
    assert not torch.allclose(enc.pool(tokens, "released"), enc.pool(tokens, "mean"))


def test_frozen_gene_encoder_with_cached_features_gives_the_same_loss():
    t = tiny_task(freeze_gene_encoder=True).eval()
    m = t.model
    b = tiny_batch()
    cached = precompute_gene_embeddings(m, b["tokens"].reshape(6, -1), batch_size=4).reshape(3, 2, -1)
    with torch.no_grad():
        a = t(b)
        c = t(dict(b, gene_feat=cached, tokens=None))
    torch.testing.assert_close(a["loss"], c["loss"])
    t.train()
    assert not m.spot_backbone.training
    t(b)["loss"].backward()
    assert all(p.grad is None for p in m.spot_backbone.parameters())
    assert m.spot_projection.weight.grad is not None


def test_embeddings_and_fusion():
    m = tiny_model().eval()
    b = tiny_batch()
    with torch.no_grad():
        v = m.encode_image(b["patch"][:, 0])
        g = m.encode_genes(b["tokens"][:, 0])
    assert v.shape == g.shape == (3, 512)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))
    f = StampModel.fuse(v, g)
    assert f.shape == (3, 1024)
    torch.testing.assert_close(f[:, :512], v)
    assert m.encode_image(b["patch"][:, 0], space="backbone").shape == (3, 192)


def test_released_mode_rejects_neighbour_handling_and_uses_local_negatives():
    t = tiny_task(released=True)
    m = t.model
    assert m.pooling == "released" and not t.loss_fn.gather
    with pytest.raises(ValueError):
        tiny_task(released=True, neighbour_radius_um=100.0)


def test_neighbour_radius_changes_the_loss_only_when_spots_are_close():
    b = tiny_batch()
    b["slide_id"] = ["s", "s", "s"]
    b["xy_um"] = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[5000.0, 0], [9000.0, 0]], [[20000.0, 0], [30000.0, 0]]])
    base = tiny_task().eval()
    near = tiny_task(neighbour_radius_um=50.0).eval()
    far = tiny_task(neighbour_radius_um=1.0).eval()
    with torch.no_grad():
        lb, ln, lf = base(b)["loss_patch_spot"], near(b)["loss_patch_spot"], far(b)["loss_patch_spot"]
    torch.testing.assert_close(lb, lf)
    assert not torch.allclose(lb, ln)


def test_checkpoint_roundtrip(tmp_path):
    m = tiny_model().eval()
    b = tiny_batch()
    save_stamp(tmp_path / "run", m, crop_geometry={"patch_um": 112.0, "out_px": 224, "region_factor": 3,
                                                   "thumb_px": 16})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m2 = load_stamp(tmp_path / "run")
    assert m2.stamp_config["kind"] == "stamp" and m2.stamp_config["image_size_px"] == IMG
    with torch.no_grad():
        torch.testing.assert_close(m2.encode_image(b["patch"][:, 0]), m.encode_image(b["patch"][:, 0]))
        torch.testing.assert_close(m2.encode_genes(b["tokens"][:, 0]), m.encode_genes(b["tokens"][:, 0]))


def test_slide_index_is_stable():
    a, b = slide_index(["x", "y", "x"]), slide_index(["x", "y", "x"])
    assert torch.equal(a, b) and a[0] == a[2] != a[1]


def _release_vit_grid_pooling(vit_output, grid_size=(3, 3), kernel_size=6, stride=4):
    """The release's ``vit_grid_pooling`` (models/_utils.py), re-implemented as the reference: [B, 196, D]
    region tokens -> 6 x 6 windows at stride 4 -> [B, D, 3, 3] means -> ``.view(B, -1, D)``."""
    b, _, d = vit_output.shape
    x = vit_output.reshape(b, 14, 14, d).permute(0, 3, 1, 2)
    patches = x.unfold(2, kernel_size, stride).unfold(3, kernel_size, stride)
    patches = patches.contiguous().view(b, d, grid_size[0], grid_size[1], -1)
    return patches.mean(dim=-1).view(b, -1, d)


def test_released_mode_csp_logits_equal_the_release_pooling():
    """At 224 px (14 x 14 region tokens, the release's geometry) the released-mode CSP windows are the
    release's reshape, bit for bit, and the CSP loss of ``forward`` is the cross-entropy of its logits."""
    import torch.nn.functional as F

    from stamp_st.models.backbones import normalise_images
    from stamp_st.models.stamp import scale_from_param

    task = tiny_task(img=224, released=True).eval()
    m = task.model
    batch = tiny_batch(B=2, img=224, seed=3)
    with torch.no_grad():
        out = task(batch)
        b = flatten_batch(batch)
        t = m.transform
        thumb = normalise_images(b["thumb"], t.mean, t.std, None)
        _, pretext, tmap = m.visual_backbone.forward_region(m.prepare_images(b["region"]), thumb)
        tokens = tmap.flatten(2).transpose(1, 2)  # [N, 196, D]: the release's region tokens
        ref_windows = _release_vit_grid_pooling(tokens)
        assert torch.equal(csp_windows(tmap, released=True), ref_windows)
        assert not torch.allclose(csp_windows(tmap), ref_windows)  # the intended pooling differs
        proj = m.positioning_projection
        logits = scale_from_param(m.logit_scale) * torch.einsum(
            "nkd,nd->nk", F.normalize(proj(ref_windows), dim=-1), F.normalize(proj(pretext), dim=-1))
        valid = b["region_valid"].bool()
        ce = F.cross_entropy(logits, b["region_label"].long(), reduction="none")
        torch.testing.assert_close(out["loss_csp"], (ce * valid).sum() / valid.sum())
        # our default (intended) pooling gives another loss on the same inputs
        m.released = False
        assert not torch.allclose(task(batch)["loss_csp"], out["loss_csp"])
