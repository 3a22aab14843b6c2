"""Every shipped Stage-1 / Stage-2 config loads through its own checked loader (unknown keys are refused)."""

from __future__ import annotations

import pytest

from stamp_st.configs import registered


@pytest.mark.parametrize("name", registered("pretrain"))
def test_shipped_pretrain_configs_load(name):
    from stamp_st.training.pretrain_genes import PretrainConfig

    cfg = PretrainConfig.load(name)
    assert cfg.phases and sum(p.get("steps", 0) for p in cfg.phases) in (0, cfg.trainer.get("max_steps", 0))


@pytest.mark.parametrize("name", registered("align"))
def test_shipped_align_configs_load(name):
    from stamp_st.training.align import AlignConfig

    cfg = AlignConfig.load(name)
    assert cfg.backbone and cfg.batch_size > 0


def _align_cfg(*argv):
    from stamp_st.cli import build_parser
    from stamp_st.cli.align_cmd import config_from_args

    return config_from_args(build_parser().parse_args(["align", "corpus", "--gene-encoder", "g", "--out", "o", *argv]))


def test_align_command_line_without_config_keeps_its_defaults():
    cfg = _align_cfg()
    assert (cfg.backbone, cfg.batch_size, cfg.val_max_batches, cfg.augment) == ("efficientnet_lite0", 16, 20, "none")
    assert cfg.trainer == {"max_steps": 1000, "lr": 1e-4, "weight_decay": 1e-3, "warmup_steps": 0, "precision": "auto"}
    assert _align_cfg("--val-max-batches", "0").val_max_batches is None


def test_align_config_then_the_options_given():
    from stamp_st.training.align import AlignConfig

    paper = AlignConfig.load("paper")
    cfg = _align_cfg("--config", "paper", "--batch-size", "8", "--lr", "3e-4", "--set", "val_every=10")
    assert (cfg.backbone, cfg.freeze_gene_encoder, cfg.batch_size) == (paper.backbone, True, 8)
    assert cfg.trainer == {**paper.trainer, "lr": 3e-4, "val_every": 10}  # the config's schedule kept
    assert cfg.gene_encoder == "g"
    demo = _align_cfg("--config", "demo_cpu")
    assert demo.trainable_blocks == 1 and demo.augment == "dihedral" and demo.trainer["max_steps"] == 200
    # the command line decides what trains: --freeze-backbone replaces the config's --trainable-blocks
    frozen = _align_cfg("--config", "demo_cpu", "--freeze-backbone")
    assert frozen.freeze_backbone and frozen.trainable_blocks is None


def test_align_config_errors_name_the_file(tmp_path):
    from stamp_st.errors import StampInputError

    bad = tmp_path / "mine.json"
    bad.write_text('{"batch_size": 8, "learning_rate": 1}')
    with pytest.raises(StampInputError, match="mine.json"):
        _align_cfg("--config", str(bad))
