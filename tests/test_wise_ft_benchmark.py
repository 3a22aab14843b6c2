"""The WiSE-FT benchmarks' interpolation: fine-tuned backbone weights move toward the pretrained ones by alpha,
weights fine-tuning left alone (the frozen trunk) stay bit-identical, everything outside the backbone is kept."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _checkpoint(folder: Path, weights: dict) -> Path:
    folder.mkdir(parents=True)
    save_file(weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"kind": "stamp"}))
    return folder


def test_interpolation_moves_only_what_fine_tuning_changed(tmp_path):
    from wise_ft_ablation import PREFIX, interpolate_checkpoint

    pre = {"trunk.w": torch.randn(4, 3) / 3, "head.w": torch.randn(5), "bn.num_batches_tracked": torch.tensor(7)}
    tuned = pre["head.w"] + 1.0
    ck = _checkpoint(tmp_path / "run" / "checkpoints" / "step_200", {
        PREFIX + "trunk.w": pre["trunk.w"].clone(), PREFIX + "head.w": tuned,
        PREFIX + "bn.num_batches_tracked": torch.tensor(9), "gene_proj.w": torch.ones(2)})
    dst = interpolate_checkpoint(ck, tmp_path / "out" / "checkpoints" / "step_200", pre, 0.25)
    sd = load_file(dst / "model.safetensors")
    assert torch.equal(sd[PREFIX + "trunk.w"], pre["trunk.w"])  # untouched by fine-tuning: bit-identical
    torch.testing.assert_close(sd[PREFIX + "head.w"], 0.25 * tuned + 0.75 * pre["head.w"])
    assert int(sd[PREFIX + "bn.num_batches_tracked"]) == 9  # integer buffers are not interpolated
    assert torch.equal(sd["gene_proj.w"], torch.ones(2))
    assert (dst.parent / "latest").read_text() == "step_200"
    assert json.loads((dst / "config.json").read_text()) == {"kind": "stamp"}


def test_a_checkpoint_without_the_backbone_is_refused(tmp_path):
    from wise_ft_ablation import interpolate_checkpoint

    ck = _checkpoint(tmp_path / "ck", {"other.w": torch.zeros(3)})
    with pytest.raises(SystemExit, match="no backbone weight matched"):
        interpolate_checkpoint(ck, tmp_path / "out", {"w": torch.zeros(3)}, 0.5)


def test_inner_models_are_interpolated_once_per_alpha(tmp_path):
    from wise_ft_ablation import PREFIX
    from wise_ft_nested import interpolated_inner

    pre = {"head.w": torch.zeros(3)}
    runs = {}
    for o, i in [("B4", "C2"), ("C2", "B4")]:
        ck = _checkpoint(tmp_path / "inner" / o / i / "checkpoints" / "step-0000200",
                         {PREFIX + "head.w": torch.ones(3)})
        (ck.parent / "latest").write_text(ck.name)
        runs[o, i] = ck.parents[1]
    cks = interpolated_inner(runs, [0.5, 1.0], pre, tmp_path / "wise")
    assert sorted(cks) == ["alpha 0.5", "alpha 1.0"]
    assert sorted(cks["alpha 0.5"]) == [("B4", "C2"), ("C2", "B4")]
    for alpha, per in [(0.5, cks["alpha 0.5"]), (1.0, cks["alpha 1.0"])]:
        for ck in per.values():
            assert ck.name == "step-0000200"
            torch.testing.assert_close(load_file(ck / "model.safetensors")[PREFIX + "head.w"], torch.full((3,), alpha))
