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
