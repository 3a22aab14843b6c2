"""Does weight-space interpolation toward the pretrained backbone (WiSE-FT, Wortsman et al. 2022) keep what
the genes teach while giving back what fine-tuning alone changed?

Post hoc, no training: every fold model of a finished demo (its own seed-0 fold models and the ``ablations``
stage's seeds and shuffled-gene controls) gets its image backbone replaced by
``alpha * fine-tuned + (1 - alpha) * pretrained`` (ImageNet EfficientNet-Lite0), and the interpolated models
are scored beside the originals by ``pipeline.ablations`` on the same outer folds: gain over the backbone, the
control's gain and the genes' share, per seed with paired 95% intervals. ``alpha`` is fixed before scoring
(0.5, WiSE-FT's default); nothing is chosen here.

    python benchmarks/wise_ft_ablation.py --demo stamp_st_demo --out wise_ft --alpha 0.5 \\
        --json benchmarks/results/wise_ft_ablation_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from functools import partial
from pathlib import Path

PREFIX = "visual_backbone.base_model."


def demo_runs(demo: Path, seeds: list[int]) -> dict[tuple[int, bool], Path]:
    """(seed, control) -> run folder with ``folds/<slide>/`` of a finished demo: seed 0's real run is the demo's
    own fold models, the rest are its ``ablations`` stage's (``pipeline.ablations`` names them)."""
    from stamp_st.demo import DEMO_RECIPE
    from stamp_st.pipeline.ablations import run_name, seed_folder

    abl = demo / "ablations" / run_name(DEMO_RECIPE)
    runs = {}
    for s in seeds:
        runs[s, False] = demo / "stamp_model" if s == 0 else abl / seed_folder(s)
        runs[s, True] = abl / seed_folder(s, control=True)
    missing = [str(r) for r in runs.values() if not (r / "folds").is_dir()]
    if missing:
        raise SystemExit(f"no finished fold models in {', '.join(missing)}: run `stamp-st demo` with these seeds first")
    return runs


def interpolate_checkpoint(ck: Path, dst: Path, pretrained: dict, alpha: float) -> Path:
    """A copy of checkpoint folder ``ck`` at ``dst`` with its image backbone at
    ``alpha * fine-tuned + (1 - alpha) * pretrained``. Weights fine-tuning left unchanged (the frozen trunk) are
    copied as they are, so that the interpolated models still share the trunk's pass."""
    from safetensors.torch import load_file, save_file

    if (dst / "model.safetensors").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(ck / "model.safetensors")
    matched = 0
    for k, v in sd.items():
        ref = pretrained.get(k[len(PREFIX):]) if k.startswith(PREFIX) else None
        if ref is not None and v.is_floating_point():
            matched += 1
            if v.shape != ref.shape or not bool((v.float() == ref.float()).all()):
                sd[k] = (alpha * v.float() + (1 - alpha) * ref.float()).to(v.dtype).contiguous()
    if not matched:
        raise SystemExit(f"{ck}: no backbone weight matched the pretrained EfficientNet-Lite0")
    save_file(sd, dst / "model.safetensors")
    shutil.copy(ck / "config.json", dst / "config.json")
    (dst.parent / "latest").write_text(dst.name)
    return dst


def interpolate_run(run: Path, out: Path, pretrained: dict, alpha: float | dict[str, float]) -> Path:
    """A copy of ``run``'s fold models (latest checkpoint only) with the backbone interpolated; ``alpha``: one
    for every fold, or held-out slide -> its own."""
    from stamp_st.training.run_folder import latest_checkpoint

    for fold in sorted((run / "folds").iterdir()):
        ck = latest_checkpoint(fold)
        a = alpha[fold.name] if isinstance(alpha, dict) else alpha
        interpolate_checkpoint(ck, out / "folds" / fold.name / "checkpoints" / ck.name, pretrained, a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished stamp-st demo output folder (stamp_st_demo)")
    ap.add_argument("--out", required=True, help="where the interpolated fold models go")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tuned backbone (1 = unchanged)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default="benchmarks/results/wise_ft_ablation_cpu.json")
    args = ap.parse_args()

    from stamp_st.models.backbones import efficientnet_lite0

    demo, out = Path(args.demo), Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    pretrained = efficientnet_lite0("efficientnet_lite0", None, True).model.state_dict()
    return score_beside_recipe(demo, out, f"WiSE-FT, alpha {args.alpha}", seeds, pretrained,
                               lambda seed: args.alpha, args.json, what=__doc__.split("\n\n")[0], alpha=args.alpha)


def score_beside_recipe(demo: Path, out: Path, name: str, seeds: list[int], pretrained: dict, alpha_of_seed,
                        json_path: str, **record) -> int:
    """Interpolate every (seed, control) fold model of ``demo`` with ``alpha_of_seed(seed)`` (one alpha, or held-out
    slide -> alpha) and score it as variant ``name`` beside the demo's recipe on the same outer folds; writes
    ``json_path`` with ``record`` added and prints the summary."""
    from stamp_st.demo import DEMO_RECIPE
    from stamp_st.paths import her2st_dir
    from stamp_st.pipeline.ablations import her2st_targets, run_ablations, run_tag, seed_folder, summary_lines

    reuse = {}
    for (seed, control), run in demo_runs(demo, seeds).items():
        reuse[run_tag(DEMO_RECIPE, seed, control)] = run
        folder = out / "outer" / seed_folder(seed, control)
        reuse[run_tag(name, seed, control)] = interpolate_run(run, folder, pretrained, alpha_of_seed(seed))
    res = run_ablations(demo / "corpus_paired", demo / "gene_encoder", out, {DEMO_RECIPE: {}, name: {}}, seeds,
                        partial(her2st_targets, her2st_dir()), reuse=reuse)
    res.update(**record, demo=str(demo), command="python " + " ".join(sys.argv))
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(res, indent=1, default=float))
    print("\n".join(summary_lines(res)))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
