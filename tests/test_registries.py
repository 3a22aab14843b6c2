"""Tests generated from the registries (backbones, input formats, evaluation tasks): every entry resolves, the
CLI and ``doctor`` list exactly the registered names, and every entry small enough to run here runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from stamp_st.evaluation.registry import EVAL_TASKS
from stamp_st.models.registry import BACKBONES, backbone_entry, backbone_names
from stamp_st.readers import FORMATS, INPUT_FORMATS

BUILDABLE = sorted({e.name for e in BACKBONES.values() if e.test_kwargs is not None and not e.prefix})


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_entry_resolves_to_a_builder(name):
    entry = BACKBONES[name]
    assert callable(entry.load_builder()) and entry.description
    if not entry.prefix:
        assert backbone_entry(name) is entry


@pytest.mark.parametrize("name", BUILDABLE)
def test_small_backbones_build_and_embed(name):
    import torch

    from stamp_st.models.backbones import create_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone(name, pretrained=False, **BACKBONES[name].test_kwargs)
    with torch.no_grad():
        out = bb.model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, bb.embed_dim)


def test_cli_help_and_doctor_list_the_registered_backbones(capsys):
    from stamp_st.cli import main
    from stamp_st.cli.doctor_cmd import backbone_report

    with pytest.raises(SystemExit):
        main(["align", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert all(n in text for n in backbone_names())
    assert list(backbone_report()) == backbone_names()


def test_unknown_backbone_names_the_registered_ones():
    from stamp_st.errors import StampInputError

    with pytest.raises(StampInputError, match="efficientnet_lite0"):
        backbone_entry("no_such_net")


@pytest.mark.parametrize("name", FORMATS)
def test_every_input_format_resolves_and_rejects_an_empty_folder(name, tmp_path):
    f = INPUT_FORMATS[name]
    assert callable(f._load(f.read)) and f.layout
    assert f.matches(tmp_path) is False


def test_cli_format_choices_are_the_registered_formats(capsys):
    from stamp_st.cli import main

    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert "{" + ",".join(FORMATS) + "}" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EVAL_TASKS))
def test_every_evaluation_task_runs_or_says_why_not(name):
    """Each registered task on a small synthetic set: metrics with intervals, or the reason it was skipped."""
    import pandas as pd
    from test_eval_tasks import synthetic

    from stamp_st.embedding_file import EmbeddingSet
    from stamp_st.evaluation.report import task_title
    from stamp_st.evaluation.tasks import evaluate_sources

    d = synthetic(n_slides=4, n_per=40)
    rng = np.random.default_rng(1)
    src = EmbeddingSet("model", d["good"], slide_ids=d["slide"], spot_ids=np.arange(len(d["slide"])).astype(str),
                       xy_px=d["xy"], counts=d["counts"], gene_names=d["genes"],
                       gene_emb=d["good"] + rng.normal(0, 0.3, d["good"].shape))
    slide_labels = {s: i % 2 for i, s in enumerate(dict.fromkeys(d["slide"].tolist()))}
    res = evaluate_sources({"model": src}, pd.Series(d["labels"], index=src.keys), tasks=(name,),
                           slide_labels=slide_labels)
    r = res["tasks"][name]["model"]
    assert "skipped" in r or all(np.isfinite(m["mean"]) or m["n"] == 0 for m in r["metrics"].values())
    assert task_title(name) == EVAL_TASKS[name].title


DECLARED = sorted({e.name for e in BACKBONES.values() if e.capabilities is not None})


def test_every_built_backbone_entry_declares_its_capabilities():
    assert {e.name for e in BACKBONES.values()
            if not e.prefix and e.builder != "backbones:unsupported"} == set(DECLARED)


@pytest.mark.parametrize("name", DECLARED)
def test_declared_capabilities_are_what_the_built_model_supports(name):
    """Each entry's declaration against its model, built on the meta device (no weights, no memory): the
    input side, where --trainable-blocks counts from (and up to), LoRA, another --image-px."""
    import torch

    from stamp_st.errors import StampInputError
    from stamp_st.models.backbones import capabilities_of, create_backbone, freeze_early_layers
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.lora import apply_lora
    from stamp_st.models.stamp import StampModel

    caps = BACKBONES[name].capabilities

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_backbone(name, pretrained=False)

    with torch.device("meta"):
        bb = build()
        measured = capabilities_of(bb)
        assert measured == caps, f"{name} declares {caps}; its model supports {measured}"
        assert bb.transform.size_px == caps.input_px
        if caps.align_as:  # embedding only: StampModel refuses it, and names the trunk to align
            with pytest.raises(StampInputError, match=caps.align_as):
                StampModel(GeneEncoder("tiny"), bb)
            return
        other_px = caps.input_px - 112  # a multiple of 14 and 16: every ViT's patch fits
        if caps.any_input_px:
            bb.model.eval()(torch.zeros(1, 3, other_px, other_px))
        if caps.blocks:
            freeze_early_layers(bb.model, caps.blocks)
            with pytest.raises(StampInputError, match=f"0..{caps.blocks}"):
                freeze_early_layers(bb.model, caps.blocks + 1)
        else:
            with pytest.raises(StampInputError, match="no 'blocks'"):
                freeze_early_layers(bb.model, 1)
        model = StampModel(GeneEncoder("tiny"), build())
        if caps.lora:
            assert apply_lora(model, r=2) > 0
        else:
            with pytest.raises(StampInputError, match="ViT"):
                apply_lora(model, r=2)


@pytest.mark.parametrize("backbone,option,value", [
    ("resnet18", "--trainable-blocks", "1"), ("efficientnet_lite0", "--lora", "4"),
    ("timm:convnext_nano", "--trainable-blocks", "2"), ("efficientnet_lite0", "--trainable-blocks", "8"),
    ("virchow2", "--lora", "4")])
def test_unsupported_backbone_options_are_refused_before_the_run(backbone, option, value, tmp_path, capsys):
    """The capability check runs when the command line is read: exit 2 naming the backbone, the option and
    the backbones that support it, and no run folder."""
    from stamp_st.cli import main
    from stamp_st.models.registry import CAPABILITY_OPTIONS, backbones_supporting

    out = tmp_path / "run"
    assert main(["align", str(tmp_path / "no_corpus"), "--gene-encoder", "random:tiny", "--out", str(out),
                 "--backbone", backbone, option, value]) == 2
    err = capsys.readouterr().err
    assert backbone in err and (option in err or backbone == "virchow2") and not out.exists()
    key = {v: k for k, v in CAPABILITY_OPTIONS.items()}[option]
    if value == "8":  # more blocks than the backbone has
        assert "0..7" in err
    elif backbone == "virchow2":  # not aligned at all: the name to align instead
        assert "virchow2_cls" in err
    else:
        assert all(n in err for n in backbones_supporting(key))
