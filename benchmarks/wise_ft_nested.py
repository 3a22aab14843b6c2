"""WiSE-FT's alpha chosen by nested leave-one-section-out: the inner folds choose, the outer fold reports.

For each seed and each outer section ``o`` of the demo's paired corpus (B4, C2, C3, C4), the demo's Stage-2
recipe is trained with that seed once per inner section ``i`` (every other section but ``o``) on the two
sections left (``val_slides = [o, i]``: neither is seen). Each inner model's backbone is interpolated toward
the pretrained EfficientNet-Lite0 (``alpha * fine-tuned + (1 - alpha) * pretrained``, Wortsman et al. 2022)
for every alpha of the grid and scored on its inner section (HEST ridge, fitted on the other inner sections'
spots embedded by the same model); the alpha with the highest mean gain over the unaligned backbone on the
inner sections is ``o``'s alpha for that seed. Only then are that seed's outer fold models of the demo (and
its shuffled-gene control, with the same alpha) interpolated with each fold's alpha and scored on the outer
folds by ``pipeline.ablations``, beside the unchanged recipe. The outer sections never enter a choice.

    python benchmarks/wise_ft_nested.py --demo stamp_st_demo --out wise_ft_nested \\
        --json benchmarks/results/wise_ft_nested_cpu.json

Inner training: 12 Stage-2 runs per seed (about 75 s each on 2 CPU cores, the first one about 220 s: it fills
the frozen trunk's caches); scoring about 10 minutes. Resumable: finished inner runs and interpolated
checkpoints are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from wise_ft_ablation import interpolate_checkpoint, score_beside_recipe

GAIN_METRIC = ("expression", "ridge_pearson")  # HEST ridge: what the choice maximises


def train_inner(corpus: Path, gene_encoder: Path, out: Path, slides: list[str], seed: int,
                caches: dict, overrides: dict | None = None) -> dict:
    """(outer, inner) -> run folder of the demo recipe (with ``overrides``; a ``trainer`` key merges into its
    trainer settings) trained on the slides that are neither. ``caches``: the frozen parts' caches, shared by
    every run (they do not depend on the seed)."""
    from stamp_st.demo import DemoSettings
    from stamp_st.training.align import AlignConfig, run_align

    overrides = overrides or {}
    settings = {k: v for k, v in overrides.items() if k != "trainer"}
    runs = {}
    for o in slides:
        for i in slides:
            if i == o:
                continue
            run = out / f"seed{seed}" / o / i
            done = run / "train_seconds.json"
            if not done.is_file():
                trainer = {**overrides.get("trainer", {}), "seed": seed, "progress": False}
                cfg = AlignConfig.load(DemoSettings.align_config, gene_encoder=str(gene_encoder), val_slides=[o, i],
                                       trainer=trainer, **settings)
                t0 = time.perf_counter()
                run_align(corpus, cfg, run, caches=caches, verify_sha256=not caches)
                seconds = round(time.perf_counter() - t0, 1)
                done.write_text(json.dumps({"seconds": seconds}))
                print(f"inner model seed {seed}, outer {o}, inner {i}: {seconds:.0f} s", flush=True)
            runs[o, i] = run
    return runs


def recorded_seconds(runs) -> float:
    """Training seconds of inner runs as each recorded them (resumed calls count the first call's time)."""
    return round(sum(json.loads((r / "train_seconds.json").read_text())["seconds"] for r in runs), 1)


def inner_gains(checkpoints: dict[str, dict], corpus: Path, targets, slides: list[str]) -> dict:
    """``checkpoints``: candidate name -> {(outer, inner): checkpoint folder}. Returns outer -> candidate ->
    {"gain", "low", "high"} of HEST ridge on the inner sections over the backbone: each inner section embedded
    by the candidate's model that held it (and the outer section) out, ridge fitted on the other inner
    sections; the outer section's spots are left out of everything."""
    import numpy as np

    from stamp_st.embedding_file import EmbeddingSet
    from stamp_st.evaluation.tasks import evaluate_sources
    from stamp_st.inference.corpus_embed import embed_corpus

    cks = {f"{name}|{o}|{i}": ck for name, per in checkpoints.items() for (o, i), ck in per.items()}
    res = embed_corpus(cks, corpus, backbone="efficientnet_lite0", progress=False)
    sid, spot = res["slide_ids"], res["spot_ids"]
    counts, genes, labels = targets(sid, spot)
    gains: dict = {}
    for o in slides:
        keep = np.flatnonzero(sid != o)
        inner = [i for i in slides if i != o]

        def source(name, emb, folds=None, keep=keep):
            return EmbeddingSet(name, emb, sid, spot, counts=counts, gene_names=genes, fold_emb=folds).subset(keep)

        sources = {name: source(name, res["stamp_v"][f"{name}|{o}|{inner[0]}"],
                                {i: res["stamp_v"][f"{name}|{o}|{i}"] for i in inner}) for name in checkpoints}
        sources["backbone"] = source("backbone", res["backbone"])
        ev = evaluate_sources(sources, labels[keep], ["expression"], baseline="backbone")
        gains[o] = {g["source"]: {"gain": g["gain"], "low": g["low"], "high": g["high"]}
                    for g in ev["gains"] if (g["task"], g["metric"]) == GAIN_METRIC}
    return gains


def interpolated_inner(runs: dict, alphas: list[float], pretrained: dict, out: Path) -> dict[str, dict]:
    """"alpha <a>" -> {(outer, inner): each inner run's latest checkpoint with its backbone interpolated by a}."""
    from stamp_st.training.run_folder import latest_checkpoint

    cks: dict = {f"alpha {a}": {} for a in alphas}
    for (o, i), run in runs.items():
        ck = latest_checkpoint(run)
        for a in alphas:
            cks[f"alpha {a}"][o, i] = interpolate_checkpoint(ck, out / f"alpha{a}" / o / i / "checkpoints" / ck.name,
                                                            pretrained, a)
    return cks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished stamp-st demo output folder (stamp_st_demo)")
    ap.add_argument("--out", required=True, help="where the inner models and interpolated checkpoints go")
    ap.add_argument("--alphas", default="0.25,0.5,0.75,1.0", help="the grid (1 = the fine-tuned model unchanged)")
    ap.add_argument("--seeds", default="0,1,2", help="the demo's seeds: each chooses on its own inner models")
    ap.add_argument("--json", default="benchmarks/results/wise_ft_nested_cpu.json")
    args = ap.parse_args()

    from stamp_st.models.backbones import efficientnet_lite0
    from stamp_st.paths import her2st_dir
    from stamp_st.pipeline.ablations import her2st_targets
    from stamp_st.training.align import corpus_slides

    demo, out = Path(args.demo), Path(args.out)
    corpus, gene_encoder = demo / "corpus_paired", demo / "gene_encoder"
    alphas = sorted(float(a) for a in args.alphas.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    slides = corpus_slides(corpus)
    targets = partial(her2st_targets, her2st_dir())
    pretrained = efficientnet_lite0("efficientnet_lite0", None, True).model.state_dict()

    caches: dict = {}
    inner = {seed: train_inner(corpus, gene_encoder, out / "inner", slides, seed, caches) for seed in seeds}
    train_s = recorded_seconds(r for runs in inner.values() for r in runs.values())
    gains = {}
    for seed in seeds:
        by_name = inner_gains(interpolated_inner(inner[seed], alphas, pretrained, out / "inner_wise" / f"seed{seed}"),
                              corpus, targets, slides)
        gains[seed] = {o: {float(name.split()[-1]): g for name, g in v.items()} for o, v in by_name.items()}
    # highest inner gain; a tie goes to the larger alpha (the smaller change to the recipe)
    chosen = {seed: {o: max(alphas, key=lambda a, g=gains[seed][o]: (round(g[a]["gain"], 6), a)) for o in slides}
              for seed in seeds}
    for seed in seeds:
        for o in slides:
            print(f"seed {seed}, outer {o}: inner HEST-ridge gain " + ", ".join(
                f"alpha {a}: {gains[seed][o][a]['gain']:+.3f}" for a in alphas) + f" -> alpha {chosen[seed][o]}",
                flush=True)

    return score_beside_recipe(
        demo, out, "WiSE-FT, alpha chosen by inner folds", seeds, pretrained, chosen.get, args.json,
        what=__doc__.split("\n\n")[0], alphas=alphas,
        inner_gains={str(sd): {o: {str(a): g for a, g in v.items()} for o, v in gs.items()}
                     for sd, gs in gains.items()},
        chosen_alpha={str(sd): c for sd, c in chosen.items()}, inner_train_seconds=train_s)


if __name__ == "__main__":
    raise SystemExit(main())
