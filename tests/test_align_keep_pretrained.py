"""Stage-2 options that keep the pretrained image features (issue [fidelity]): frozen BatchNorm statistics,
L2-SP, an EMA of the weights, HED stain jitter (on images and in the trunk cache), and the gene-shuffled
control corpus."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from synthetic_pairs import SyntheticPairs

from stamp_st.errors import StampInputError
from stamp_st.training.align import AlignConfig, build_align_model, build_align_task

torch.set_num_threads(1)


def _task(**settings):
    cfg = AlignConfig.from_dict({"backbone": "efficientnet_lite0", "gene_encoder": "random:tiny",
                                 "freeze_gene_encoder": True, "trainable_blocks": 1, "image_px": 64, **settings})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_align_model(cfg)
    return cfg, model, build_align_task(cfg, model)


def _batch():
    return next(iter(SyntheticPairs(n_items=4, img_px=64, context=32, batch_size=4)))


@pytest.mark.parametrize("freeze", [False, True])
def test_frozen_bn_stats_keep_the_tails_running_statistics(freeze):
    _, model, task = _task(freeze_bn_stats=freeze)
    task.train()
    bn = model.visual_backbone.base_model.bn2
    before = bn.running_mean.clone()
    assert bn.training is not freeze and task.training
    task(_batch())["loss"].backward()
    assert torch.equal(bn.running_mean, before) is freeze
    assert bn.weight.grad is not None  # frozen statistics, still a trainable affine


def test_l2sp_pulls_the_trainable_backbone_weights_back_to_their_start():
    _, model, task = _task(l2sp_weight=0.5)
    assert float(task.l2sp_penalty().detach()) == 0.0
    base = model.visual_backbone.base_model
    with torch.no_grad():
        base.conv_head.weight.add_(0.1)
    expected = 0.01 * base.conv_head.weight.numel()
    assert float(task.l2sp_penalty().detach()) == pytest.approx(expected, rel=1e-4)
    task.train()
    out = task(_batch())
    assert float(out["l2sp"]) == pytest.approx(expected, rel=1e-4)
    names = task.no_weight_decay()
    assert "model.visual_backbone.base_model.conv_head.weight" in names  # L2-SP instead of decay to zero
    assert not any(".blocks.0." in n for n in names if "base_model" in n)  # frozen weights are not pulled
    # with no penalty the loss is the losses alone
    _, _, plain = _task()
    assert plain.l2sp_penalty() is None and "l2sp" not in plain.train()(_batch())


def test_ema_final_weights_are_the_average_of_the_trajectory(tmp_path):
    from test_engine import ToyData, ToyModel, _cfg

    from stamp_st.models.checkpoint import load_checkpoint
    from stamp_st.training.engine import Trainer

    decay, steps = 0.6, 6
    plain = ToyModel()
    w = [{k: v.clone() for k, v in plain.state_dict().items()}]
    tr = Trainer(plain, _cfg(max_steps=steps, grad_accum=1, val_every=0, ckpt_every=0), tmp_path / "a", ToyData())
    step = tr._optimizer_step

    def record():
        g = step()
        w.append({k: v.clone() for k, v in plain.state_dict().items()})
        return g

    tr._optimizer_step = record
    tr.fit()
    expected = {k: v.clone() for k, v in w[0].items()}
    for wt in w[1:]:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * wt[k]
    averaged = ToyModel()
    Trainer(averaged, _cfg(max_steps=steps, grad_accum=1, val_every=0, ckpt_every=0, ema_decay=decay),
            tmp_path / "b", ToyData()).fit()
    sd, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / f"step-{steps:07d}")
    for k, v in expected.items():
        torch.testing.assert_close(sd[k], v, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(v, w[-1][k])  # the average is not the last iterate


def test_ema_resumes_identically(tmp_path):
    from test_engine import ToyData, ToyModel, _cfg

    from stamp_st.models.checkpoint import load_checkpoint
    from stamp_st.training.engine import Trainer

    kw = dict(max_steps=8, grad_accum=1, val_every=0, ckpt_every=4, ema_decay=0.7)
    Trainer(ToyModel(), _cfg(**kw), tmp_path / "a", ToyData()).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyModel(), _cfg(**kw), tmp_path / "b", ToyData(fail_after=6)).fit()
    Trainer(ToyModel(), _cfg(**kw), tmp_path / "b", ToyData()).fit()
    a, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-0000008")
    b, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-0000008")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hed_jitter_is_a_per_image_stain_change():
    from stamp_st.preprocessing.stain import hed_jitter, hed_jitter_params

    rng = np.random.default_rng(0)
    # H&E-like colours: mixtures of haematoxylin (blue-purple) and eosin (pink) over white
    img = np.broadcast_to(np.array([150, 90, 170], np.uint8), (2, 8, 8, 3)).copy()
    img[:, :4] = [230, 150, 190]
    same = hed_jitter(img, np.ones((2, 3)), np.zeros((2, 3)))
    assert same.dtype == np.uint8 and np.abs(same.astype(int) - img).max() <= 4  # rgb2hed round trip
    scale, shift = hed_jitter_params(2, 0.05, 0.005, rng)
    assert scale.shape == shift.shape == (2, 3) and np.all(np.abs(scale - 1) <= 0.05)
    out = hed_jitter(img, scale, shift)
    assert not np.array_equal(out[0], out[1])  # one draw per image
    assert np.abs(out.astype(int) - same).mean() > 0.5
    with pytest.raises(ValueError, match="N, H, W, 3"):
        hed_jitter(img[0], scale, shift)


def test_trunk_cache_with_stain_variants_plain_for_validation_drawn_for_training():
    from stamp_st.training.align_caches import GeneFeatureCache, TrunkFeatureCache

    cfg, model, task = _task(hed_scale=0.05, hed_shift=0.005, stain_variants=3)
    batch = GeneFeatureCache().fill(_batch(), model)
    jit = TrunkFeatureCache(hed_scale=0.05, hed_shift=0.005, variants=3, seed=0)
    plain = TrunkFeatureCache().fill(batch, model)
    val = jit.fill(batch, model, train=False)
    assert val["patch_trunk"].shape == plain["patch_trunk"].shape
    assert torch.equal(val["patch_trunk"], plain["patch_trunk"])  # validation: the unjittered crop
    stored = next(iter(jit.features.values()))["patch_trunk"]
    assert stored.shape[0] == 3 and not torch.equal(stored[0], stored[1])
    torch.manual_seed(0)
    drawn = [jit.fill(batch, model, train=True)["patch_trunk"] for _ in range(4)]
    assert any(not torch.equal(d, plain["patch_trunk"]) for d in drawn)
    assert jit.stats()["misses"] == 8  # computed once per spot, all variants at once


def test_keep_pretrained_settings_are_checked():
    for bad in ({"l2sp_weight": -1}, {"hed_scale": 1.5}, {"hed_shift": -0.1}, {"stain_variants": 0},
                {"trainer": {"ema_decay": 1.0}}):
        with pytest.raises(StampInputError):
            AlignConfig.from_dict(bad)
    cfg = AlignConfig.load("demo_cpu")
    assert cfg.freeze_bn_stats and cfg.l2sp_weight > 0 and cfg.trainer["ema_decay"] and cfg.stain_jitter()


def test_shuffled_genes_copy_is_a_valid_corpus_with_permuted_tokens(tmp_path):
    from stamp_st.corpus.controls import shuffled_genes_copy
    from stamp_st.corpus.layout import check_shards, read_manifest
    from stamp_st.corpus.shards import iter_shard_raw

    src = _paired_corpus(tmp_path)
    dst = shuffled_genes_copy(src, tmp_path / "shuffled", seed=1)
    man, base = read_manifest(dst)
    check_shards(man, base, sha256=True)  # its own sizes and checksums
    assert man["control"]["kind"] == "shuffled_genes_within_slide" and "/" not in json.dumps(man["control"])
    src_man, _ = read_manifest(src)
    moved, by_slide = 0, {}
    for sh in src_man["shards"]:
        a = list(iter_shard_raw(str(src / sh["url"])))
        b = list(iter_shard_raw(str(dst / sh["url"])))
        assert [r["__key__"] for r in a] == [r["__key__"] for r in b]
        assert all(r["patch.png"] == s["patch.png"] and r["meta.json"] == s["meta.json"] for r, s in zip(a, b))
        pair = by_slide.setdefault(sh["slide_id"], ([], []))
        pair[0].extend(r["tokens.npy"] for r in a)
        pair[1].extend(r["tokens.npy"] for r in b)
        moved += sum(r["tokens.npy"] != s["tokens.npy"] for r, s in zip(a, b))
    for before, after in by_slide.values():  # a permutation within each slide
        assert sorted(before) == sorted(after)
    assert moved > 0
    assert shuffled_genes_copy(src, dst, seed=1) == dst  # a finished copy is reused
    with pytest.raises(StampInputError, match="another corpus"):
        shuffled_genes_copy(src, dst, seed=2)


def _paired_corpus(tmp_path):
    from synthetic_slides import small_corpus

    out = tmp_path / "paired"
    small_corpus(tmp_path, out, "paired")
    return out


def test_report_shows_each_seed_the_spread_and_the_genes_only_sections():
    from stamp_st.evaluation.report import ablations_table_html, genes_only_table_html

    def gain(v, lo, hi):
        return {"task": "expression", "metric": "ridge_pearson", "gain": v, "low": lo, "high": hi}

    results = {"ablations": {"what": "w", "a_priori_choice": "fixed first", "command": "c", "variants": {
        "recipe": {"seeds": {"0": {"genes_share": [gain(0.02, 0.01, 0.03)]},
                             "1": {"genes_share": [gain(0.04, 0.02, 0.05)]}},
                   "summary": {"genes_share": {"expression/ridge_pearson": {
                       "mean": 0.03, "sd": 0.0141, "min": 0.02, "max": 0.04, "n_seeds": 2}}}},
        "frozen backbone, heads only": {"note": "gain 0 by construction"}}},
        "genes_only": {"what": "held out", "labels": {"clusters": {
            "table": [{"source": "G", "metric": "kmeans_ari", "mean": 0.2, "low": 0.1, "high": 0.3},
                      {"source": "PCA", "metric": "kmeans_ari", "mean": 0.15, "low": 0.1, "high": 0.2}],
            "gains": [{"source": "G", "gain": 0.05, "low": -0.01, "high": 0.1}]}}}}
    html = ablations_table_html(results)
    assert "+0.030 ± 0.014 [+0.020, +0.040] (n=2)" in html and "#e3f4e3" in html  # both seeds above zero
    assert "+0.020 [+0.010, +0.030]; +0.040 [+0.020, +0.050]" in html and "by construction" in html
    assert "fixed first" in html
    g = genes_only_table_html(results)
    assert "+0.050 [-0.010, +0.100]" in g and "(baseline)" in g
    assert ablations_table_html({}) == "" and genes_only_table_html({}) == ""


def test_gene_corpus_tokens_give_each_held_out_spot_once_at_full_context(tmp_path):
    from synthetic_slides import small_corpus

    from stamp_st.inference.corpus_embed import gene_corpus_tokens

    out = tmp_path / "genes"
    small_corpus(tmp_path, out, "genes", image=False, last_in_val=True)
    sid, spot, toks = gene_corpus_tokens(out, ["S1"], split="val")
    man = json.loads((out / "manifest.json").read_text())
    n_spots = next(s["n_spots"] for s in man["slides"] if s["slide_id"] == "S1")
    assert len(spot) == len(set(spot)) == n_spots and set(sid) == {"S1"}
    assert toks.shape == (n_spots, 32) and (toks[:, 0] != 0).all()  # every spot has tokens, padded to context
    with pytest.raises(StampInputError, match="split"):
        gene_corpus_tokens(out, ["S0"], split="val")  # Stage 1 trained on it
    with pytest.raises(StampInputError, match="not in the corpus"):
        gene_corpus_tokens(out, ["S9"])
