"""Stage-2 training on the shared engine: cached frozen gene features, checkpoints that load alone, LoRA."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from synthetic_pairs import SyntheticPairs, synthetic_paired_corpus

from stamp_st.models.stamp import load_stamp
from stamp_st.training.align import AlignConfig, run_align
from stamp_st.training.align_caches import GeneFeatureCache

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def visium_paired_corpus(tmp_path_factory):
    """A small synthetic paired corpus of two slides (built as in test_corpus)."""
    return synthetic_paired_corpus(tmp_path_factory)[0]


def test_align_runs_with_cached_frozen_gene_encoder_and_writes_a_stamp_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from stamp_st.models.backbones import create_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = create_backbone("timm:vit_tiny_patch16_224", pretrained=False).model
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    cfg = AlignConfig.from_dict({
        "backbone": "timm:vit_tiny_patch16_224", "backbone_weights": str(tmp_path / "vit.safetensors"),
        "image_px": 64, "gene_encoder": "random:tiny", "batch_size": 4,
        "freeze_gene_encoder": True, "neighbour_radius_um": 200.0,
        "trainer": {"max_steps": 4, "lr": 1e-3, "precision": "fp32", "progress": False, "tensorboard": False,
                    "log_every": 1}})
    data = SyntheticPairs(n_items=8, img_px=64, context=32, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_align(None, cfg, tmp_path / "run", device="cpu", train_data=data)
    cache = result["gene_cache"]
    assert cache["spots"] == 16 and cache["misses"] == 16 and cache["hits"] == 16  # 2 epochs, computed once
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_stamp(tmp_path / "run" / "checkpoints" / latest)
    assert model.stamp_config["kind"] == "stamp" and model.stamp_config["align"]["freeze_gene_encoder"]
    with torch.no_grad():
        v = model.encode_image(data.items[0]["patch"])
    assert v.shape == (2, 512) and torch.isfinite(v).all()


def test_cache_returns_what_the_frozen_encoder_computes():
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.stamp import StampModel

    model = StampModel(GeneEncoder("tiny"), create_backbone("efficientnet_lite0"), freeze_gene_encoder=True)
    data = SyntheticPairs(n_items=4, context=32, batch_size=4)
    batch = next(iter(data))
    filled = GeneFeatureCache().fill(batch, model)
    direct = model.gene_features(batch["tokens"].reshape(8, -1)).reshape(4, 2, -1)
    torch.testing.assert_close(filled["gene_feat"], direct)


def test_frozen_cnn_backbone_is_fully_frozen_and_its_cache_changes_nothing():
    """A frozen CNN computes the same features in train and eval mode (BatchNorm statistics fixed), so its
    cached patch features and region maps give the losses and gradients of the uncached model."""
    from stamp_st.training.align import build_align_model, build_align_task, image_cache_applies
    from stamp_st.training.align_caches import ImageFeatureCache

    cfg = AlignConfig.from_dict({"backbone": "efficientnet_lite0", "gene_encoder": "random:tiny",
                                 "freeze_gene_encoder": True, "freeze_backbone": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_align_model(cfg)
    assert image_cache_applies(cfg, model)
    batch = next(iter(SyntheticPairs(n_items=4, img_px=64, context=32, batch_size=4)))
    x = model.prepare_images(batch["patch"][:, 0])
    base = model.visual_backbone.base_model
    with torch.no_grad():
        train_f = base.train().forward_features(x)
        eval_f = base.eval().forward_features(x)
    torch.testing.assert_close(train_f, eval_f)
    assert not any(p.requires_grad for p in base.parameters())

    task = build_align_task(cfg, model)
    task.train()
    torch.manual_seed(0)
    direct = task(batch)
    cached_batch = ImageFeatureCache().fill(GeneFeatureCache().fill(batch, model), model)
    assert cached_batch["patch"] is None and cached_batch["region_map"].dtype == torch.float16
    cached = task(cached_batch)
    for k in direct:
        torch.testing.assert_close(cached[k], direct[k], atol=5e-3, rtol=5e-3)
    cached["loss"].backward()
    assert model.visual_backbone.thumb_mlp[0].weight.grad is not None  # the pretext query still trains


def test_cache_beyond_its_budget_computes_without_storing():
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.stamp import StampModel

    model = StampModel(GeneEncoder("tiny"), create_backbone("efficientnet_lite0"), freeze_gene_encoder=True)
    batch = next(iter(SyntheticPairs(n_items=4, context=32, batch_size=4)))
    full, capped = GeneFeatureCache(), GeneFeatureCache(max_bytes=3 * 128 * 4)
    a, b = full.fill(batch, model), capped.fill(batch, model)
    torch.testing.assert_close(a["gene_feat"], b["gene_feat"])
    assert len(full.features) == 8 and len(capped.features) == 3


def test_lora_trains_adapters_only_and_reloads(tmp_path):
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.lora import apply_lora
    from stamp_st.models.stamp import StampModel, save_stamp
    from stamp_st.training.align_task import AlignTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, img_size=64)
    bb.transform.size_px = 64
    model = StampModel(GeneEncoder("tiny"), bb)
    n = apply_lora(model, r=4)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    backbone_trainable = {k for k in trainable if k.startswith("visual_backbone.base_model.")}
    assert backbone_trainable and all("lora_" in k for k in backbone_trainable)
    assert n == sum(p.numel() for k, p in model.named_parameters() if k in backbone_trainable)
    assert "visual_backbone.p_visual" in trainable and "positioning_projection.weight" in trainable
    batch = next(iter(SyntheticPairs(n_items=2, context=32, batch_size=2)))
    AlignTask(model)(batch)["loss"].backward()
    with torch.no_grad():  # adapters start at zero (lora_B): give them a value so the reload is checked
        for k, p in model.named_parameters():
            if "lora_B" in k:
                p.normal_()
    save_stamp(tmp_path / "ck", model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_stamp(tmp_path / "ck")
    x = batch["patch"][0]
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x))


def test_retrieval_recall_counts_the_true_spot_among_the_top_k():
    from stamp_st.training.align_validation import retrieval_recall

    g = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    perfect = retrieval_recall(g.clone(), g, ["a"] * 3 + ["b"] * 3, ks=(1, 2))
    assert perfect["recall@1"] == 1.0 and perfect["chance_recall@1"] == 1 / 3
    shuffled = retrieval_recall(g[[1, 2, 0, 4, 5, 3]], g, ["a"] * 3 + ["b"] * 3, ks=(1, 3))
    assert shuffled["recall@1"] == 0.0 and shuffled["recall@3"] == 1.0


def test_retrieval_recall_of_collapsed_embeddings_is_chance():
    """Identical embeddings tie everywhere; counting only strictly better candidates would call that perfect."""
    from stamp_st.training.align_validation import retrieval_recall

    same = torch.ones(20, 4)
    r = retrieval_recall(torch.randn(20, 4), same, ["a"] * 20, ks=(1, 5))
    assert r["recall@1"] == pytest.approx(1 / 20) and r["recall@5"] == pytest.approx(5 / 20)


def test_partial_finetuning_freezes_early_blocks_and_keeps_features(tmp_path):
    from stamp_st.models.backbones import create_backbone, freeze_early_layers

    bb = create_backbone("efficientnet_lite0")
    net = bb.model.eval()
    x = torch.randn(2, 3, 96, 96)
    seen = []
    net.blocks[-3].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        net(x)
    frozen = freeze_early_layers(net, trainable_blocks=2)
    assert "conv_stem" in frozen and f"blocks.{len(net.blocks) - 3}" in frozen
    assert not any(p.requires_grad for p in net.blocks[0].parameters())
    assert all(p.requires_grad for p in net.blocks[-1].parameters())
    assert all(p.requires_grad for p in net.conv_head.parameters())
    net.train()  # frozen BatchNorm keeps its running statistics even in train mode
    with torch.no_grad():
        net(x)
    net.eval()
    with torch.no_grad():
        net(x)
    assert torch.allclose(seen[0], seen[-1], atol=1e-4)  # the frozen part computes what it did before


def test_val_slides_must_exist_and_leave_something_to_train_on():
    from stamp_st.errors import StampInputError
    from stamp_st.training.align import check_val_slides

    man = {"shards": [{"slide_id": "s1"}, {"slide_id": "s2"}, {"slide_id": "s2"}]}
    assert check_val_slides(None, man, "c") is None
    assert check_val_slides(["s2"], man, "c") == {"s2"}
    with pytest.raises(StampInputError, match="not in the corpus"):
        check_val_slides(["s3"], man, "c")
    with pytest.raises(StampInputError, match="nothing is left"):
        check_val_slides(["s1", "s2"], man, "c")


def test_trunk_cache_gives_the_uncached_losses_and_trains_the_tail():
    """Partial fine-tuning of a CNN with its frozen trunk cached: same losses as running the whole CNN,
    and gradients reach the last block and the conv head, not the trunk."""
    from stamp_st.training.align import build_align_model, build_align_task, trunk_cache_applies
    from stamp_st.training.align_caches import TrunkFeatureCache

    cfg = AlignConfig.from_dict({"backbone": "efficientnet_lite0", "gene_encoder": "random:tiny",
                                 "freeze_gene_encoder": True, "trainable_blocks": 1, "temperature_init": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_align_model(cfg)
    assert trunk_cache_applies(cfg, model)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(1.0)
    batch = next(iter(SyntheticPairs(n_items=4, img_px=64, context=32, batch_size=4)))
    task = build_align_task(cfg, model)
    task.eval()  # BatchNorm of the trainable tail: the same statistics on both paths
    direct = task(batch)
    cached_batch = TrunkFeatureCache().fill(GeneFeatureCache().fill(batch, model), model)
    assert cached_batch["patch"] is None and cached_batch["patch_trunk"].dtype == torch.float16
    cached = task(cached_batch)
    for k in direct:
        torch.testing.assert_close(cached[k], direct[k], atol=5e-3, rtol=5e-3)
    task.train()
    task(cached_batch)["loss"].backward()
    base = model.visual_backbone.base_model
    assert base.conv_head.weight.grad is not None and base.blocks[-1][0].conv_pw.weight.grad is not None
    assert all(p.grad is None for p in base.blocks[0].parameters())


def test_dihedral_augmentation_draws_each_of_the_eight_per_sample():
    from stamp_st.models.pretext import DIHEDRAL, dihedral_augment

    x = torch.arange(9.0).view(1, 1, 3, 3).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    y = dihedral_augment(x)
    variants = {tuple(v.flatten().tolist()) for v in y}
    expected = set()
    for k, flip in DIHEDRAL:
        r = torch.rot90(x[0], k, (-2, -1))
        expected.add(tuple((r.flip(-1) if flip else r).flatten().tolist()))
    assert variants == expected  # every output is one of the 8, and all 8 occur in 64 draws
    assert torch.equal(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)))


def test_runs_with_another_trainable_tail_do_not_share_trunk_maps(tmp_path, visium_paired_corpus):
    """The cached trunk ends where the trainable tail begins: a run that trains fewer blocks, given the caches
    of one that trained more, computes its own maps (the others' stop a block too early) and trains."""
    base = {"backbone": "efficientnet_lite0", "gene_encoder": "random:tiny", "batch_size": 2, "image_px": 64,
            "freeze_gene_encoder": True, "augment": "dihedral", "val_max_batches": None,
            "trainer": {"max_steps": 1, "lr": 1e-3, "precision": "fp32", "progress": False, "tensorboard": False,
                        "val_every": 1, "ckpt_every": 1}}
    shared: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = run_align(visium_paired_corpus, AlignConfig.from_dict({**base, "trainable_blocks": 1}),
                        tmp_path / "tail1", device="cpu", caches=shared)
        head = run_align(visium_paired_corpus, AlignConfig.from_dict({**base, "trainable_blocks": 0}),
                         tmp_path / "tail0", device="cpu", caches=shared)
    trunk_keys = sorted(k for k in shared if k.startswith("trunk_cache"))
    assert len(trunk_keys) == 2 and trunk_keys[0] != trunk_keys[1]
    assert one["trunk_cache"]["hits"] == 0 and head["trunk_cache"]["hits"] == 0  # nothing reused across tails
    assert head["trunk_cache"]["misses"] > 0

    # embedding both at once: one trunk pass per tail (the backbone rides on the first), each model as alone
    from stamp_st.inference.corpus_embed import embed_corpus, iter_corpus_spots
    from stamp_st.training.run_folder import latest_checkpoint

    cks = {"tail1": latest_checkpoint(tmp_path / "tail1"), "tail0": latest_checkpoint(tmp_path / "tail0")}
    emb = embed_corpus(cks, visium_paired_corpus, backbone="efficientnet_lite0", progress=False)
    assert emb["trunk_passes"] == 2 and not emb["shared_trunk"]
    patches = torch.from_numpy(np.stack([p for _, p, _ in iter_corpus_spots(visium_paired_corpus)]))
    for name, ck in cks.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = load_stamp(ck)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(emb["stamp_v"][name]),
                                       alone.encode_image(patches, space="backbone"), atol=2e-3, rtol=2e-3)
    assert not np.allclose(emb["stamp_v"]["tail1"], emb["stamp_v"]["tail0"])


def test_folds_train_one_model_per_held_out_slide_and_a_final_one(tmp_path, visium_paired_corpus):
    from stamp_st.training.align import run_align_folds

    cfg = AlignConfig.from_dict({
        "backbone": "efficientnet_lite0", "gene_encoder": "random:tiny", "batch_size": 2, "image_px": 64,
        "freeze_gene_encoder": True, "trainable_blocks": 1, "augment": "dihedral", "val_max_batches": None,
        "trainer": {"max_steps": 2, "lr": 1e-3, "precision": "fp32", "progress": False, "tensorboard": False,
                    "val_every": 2, "ckpt_every": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_align_folds(visium_paired_corpus, cfg, tmp_path / "cv", device="cpu")
    slides = res["slides"]
    assert len(slides) >= 2
    import json

    for sl in slides:
        saved = json.loads((tmp_path / "cv" / "folds" / sl / "align_config.json").read_text())
        assert saved["val_slides"] == [sl]
        assert (tmp_path / "cv" / "folds" / sl / "checkpoints" / "latest").is_file()
    assert (tmp_path / "cv" / "checkpoints" / "latest").is_file()
    assert json.loads((tmp_path / "cv" / "align_config.json").read_text())["val_slides"] is None
    # one trunk cache for every run: its counts only grow from run to run, and no spot is stored twice
    stats = [res["folds"][sl]["result"]["trunk_cache"] for sl in slides] + [res["final"]["result"]["trunk_cache"]]
    assert all(a["misses"] <= b["misses"] and a["hits"] < b["hits"] for a, b in zip(stats, stats[1:]))
    n_spots = json.loads((visium_paired_corpus / "manifest.json").read_text())["totals"]["n_spots"]
    assert 0 < stats[-1]["spots"] <= n_spots

    # every spot by every model at once, sharing the trunk and the gene encoder: equal to each model alone
    from stamp_st.inference.corpus_embed import embed_corpus, iter_corpus_spots

    cks = {sl: tmp_path / "cv" / "folds" / sl / "checkpoints" / "latest" for sl in slides}
    cks = {k: v.parent / v.read_text().strip() for k, v in cks.items()}
    emb = embed_corpus(cks, visium_paired_corpus, backbone="efficientnet_lite0", progress=False)
    assert emb["shared_trunk"] and emb["trunk_passes"] == 1 and len(emb["spot_ids"]) == n_spots
    patches = torch.from_numpy(np.stack([p for _, p, _ in iter_corpus_spots(visium_paired_corpus)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = load_stamp(cks[slides[0]])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(emb["stamp_v_joint"][slides[0]]), alone.encode_image(patches),
                                   atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(torch.from_numpy(emb["stamp_v"][slides[0]]),
                                   alone.encode_image(patches, space="backbone"), atol=2e-3, rtol=2e-3)
    assert not np.allclose(emb["stamp_v"][slides[0]], emb["stamp_v"][slides[1]])  # each fold its own model
    assert emb["backbone"].shape == (n_spots, 1280)
