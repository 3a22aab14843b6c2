"""The nested recipe benchmark's composed run: each held-out slide is embedded by the fold model of the recipe
its inner folds chose, found the way ``pipeline.ablations`` finds fold models."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _run(root: Path, slides: list[str]) -> Path:
    for s in slides:
        ck = root / "folds" / s / "checkpoints" / "step-0000200"
        ck.mkdir(parents=True)
        (ck / "model.safetensors").write_text(f"{root.name} {s}")
        (ck.parent / "latest").write_text(ck.name)
    return root


def test_composed_run_points_each_fold_at_the_chosen_recipe(tmp_path):
    from recipe_nested import compose_run

    from stamp_st.training.run_folder import latest_checkpoint

    slides = ["her2st_B4", "her2st_C2"]
    a, b = _run(tmp_path / "recipe", slides), _run(tmp_path / "candidate", slides)
    out = compose_run({"her2st_B4": a, "her2st_C2": b}, tmp_path / "nested")
    assert (latest_checkpoint(out / "folds" / "her2st_B4") / "model.safetensors").read_text() == "recipe her2st_B4"
    assert (latest_checkpoint(out / "folds" / "her2st_C2") / "model.safetensors").read_text() == "candidate her2st_C2"

    # a changed choice (a resumed call with other inner results) re-points the link; the models stay untouched
    compose_run({"her2st_B4": b, "her2st_C2": b}, out)
    assert (latest_checkpoint(out / "folds" / "her2st_B4") / "model.safetensors").read_text() == "candidate her2st_B4"
    assert (a / "folds" / "her2st_B4" / "checkpoints" / "step-0000200" / "model.safetensors").is_file()
