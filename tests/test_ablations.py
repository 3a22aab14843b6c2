"""The Stage-2 ablations the demo runs over seeds (``pipeline.ablations``): every seed's fold models and its
shuffled-gene control, scored on the same held-out spots, with the genes' share paired between them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_paired(tmp_path_factory):
    """Two synthetic slides, their paired corpus and, per spot, counts and a label (top / bottom half)."""
    import anndata as ad
    from synthetic_pairs import synthetic_paired_corpus

    out, rows = synthetic_paired_corpus(tmp_path_factory)
    samples = {r["slide_id"]: ad.read_h5ad(r["path"]) for r in rows}

    def targets(slide_ids, spot_ids):
        import scipy.sparse as sp

        blocks, labels = [], []
        for sl, sp_id in zip(slide_ids, spot_ids):
            a = samples[str(sl)]
            i = a.obs_names.get_loc(str(sp_id))
            blocks.append(sp.csr_matrix(a.X[i]))
            labels.append("top" if a.obs["array_row"].iloc[i] < a.obs["array_row"].max() / 2 else "bottom")
        genes = np.asarray(samples["S0"].var_names)
        return sp.vstack(blocks).tocsr(), genes, np.asarray(labels, dtype=object)

    return out, targets


def _base_config(tmp_path):
    cfg = {"backbone": "efficientnet_lite0", "gene_encoder": "random:tiny", "batch_size": 2, "image_px": 64,
           "freeze_gene_encoder": True, "trainable_blocks": 1, "augment": "dihedral", "val_max_batches": None,
           "trainer": {"max_steps": 2, "lr": 1e-3, "precision": "fp32", "progress": False, "tensorboard": False,
                       "val_every": 2, "ckpt_every": 2}}
    p = tmp_path / "base.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_seeds_and_controls_on_the_same_folds_with_the_genes_share_paired(tmp_path, small_paired):
    from stamp_st.pipeline.ablations import GAIN_KINDS, run_ablations, summary_lines

    kinds = [k for k in GAIN_KINDS if k != "gain_over_reference"]  # no reference variant here
    corpus, targets = small_paired
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_ablations(corpus, "random:tiny", tmp_path / "abl", {"recipe": {}}, [0, 1], targets,
                            base_config=_base_config(tmp_path), progress=said.append)
    assert res["held_out"] == ["S0", "S1"] and res["seeds"] == [0, 1]
    v = res["variants"]["recipe"]
    for seed in ("0", "1"):
        s = v["seeds"][seed]
        assert "gain_over_reference" not in s
        for kind in kinds:
            assert {(g["task"], g["metric"]) for g in s[kind]} >= {("expression", "ridge_pearson")}
        run = {g["metric"]: g for g in s["gain_over_backbone"] if g["task"] == "expression"}
        ctl = {g["metric"]: g for g in s["control_gain_over_backbone"] if g["task"] == "expression"}
        share = {g["metric"]: g for g in s["genes_share"] if g["task"] == "expression"}
        assert all(g["baseline"] == f"recipe | seed {seed} | control" for g in share.values())
        # paired on the same spots: the share is the run's gain over the backbone minus its control's
        for m in share:
            assert share[m]["gain"] == pytest.approx(run[m]["gain"] - ctl[m]["gain"], abs=1e-6)
    # each seed and each control is a model of its own
    assert len({json.dumps(v["seeds"][s]["gain_over_backbone"], default=float) for s in ("0", "1")}) == 2
    for kind in kinds:
        assert v["summary"][kind]["expression/ridge_pearson"]["n_seeds"] == 2
    assert (tmp_path / "abl" / "corpus_shuffled_seed1" / "manifest.json").is_file()
    assert any("control" in line for line in summary_lines(res))

    # a second call reuses every finished run (nothing trained again) and an outside run named in reuse
    said.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_ablations(corpus, "random:tiny", tmp_path / "abl", {"recipe": {}}, [0, 1], targets,
                              base_config=_base_config(tmp_path), progress=said.append,
                              reuse={"recipe | seed 0": tmp_path / "abl" / "recipe" / "seed0"})
    assert not any("trained in" in m for m in said)
    assert again["variants"]["recipe"]["seeds"]["0"]["gain_over_backbone"] == v["seeds"]["0"]["gain_over_backbone"]


def test_each_variant_against_a_reference_recipe_seed_by_seed(tmp_path, small_paired):
    """``reference``: every other variant's gain over the reference's run of the same seed, paired on the same
    spots (its gain over the backbone minus the reference's); ``no_control``: the reference trains no control."""
    from stamp_st.pipeline.ablations import run_ablations

    corpus, targets = small_paired
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_ablations(corpus, "random:tiny", tmp_path / "abl", {"recipe": {}, "lower lr": {"trainer": {"lr": 1e-4}}},
                            [0], targets, base_config=_base_config(tmp_path), progress=said.append,
                            reference="recipe", no_control=["recipe"])
    assert res["reference"] == "recipe"
    assert sum("trained in" in m for m in said) == 3  # recipe, lower lr and lower lr's control
    assert not (tmp_path / "abl" / "recipe" / "control_seed0").exists()
    ref, var = res["variants"]["recipe"]["seeds"]["0"], res["variants"]["lower lr"]["seeds"]["0"]
    assert "gain_over_reference" not in ref and ref["genes_share"] == [] and ref["control_gain_over_backbone"] == []
    assert var["genes_share"]
    own = {g["metric"]: g["gain"] for g in var["gain_over_backbone"] if g["task"] == "expression"}
    base = {g["metric"]: g["gain"] for g in ref["gain_over_backbone"] if g["task"] == "expression"}
    versus = [g for g in var["gain_over_reference"] if g["task"] == "expression"]
    assert versus and all(g["baseline"] == "recipe | seed 0" for g in versus)
    for g in versus:
        assert g["gain"] == pytest.approx(own[g["metric"]] - base[g["metric"]], abs=1e-6)
    with pytest.raises(ValueError, match="reference"):
        run_ablations(corpus, "random:tiny", tmp_path / "abl", {"recipe": {}}, [0], targets,
                      base_config=_base_config(tmp_path), reference="other")
