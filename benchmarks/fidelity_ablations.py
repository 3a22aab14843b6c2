"""Does alignment make the image encoder better on held-out sections, which part of the recipe does it, and
how much of it comes from the genes?

Runs Stage 2 cross-validated over the imaged sections of a paired corpus (one model per held-out section,
``run_align_folds(final=False)``) for Stage-2 variants, each with several seeds and, for each seed, the same
variant trained on a copy of the corpus whose gene profiles are shuffled among the spots of each slide
(``corpus.controls.shuffled_genes_copy``, a permutation per seed): what fine-tuning gains without the
pairing (augmentation, the new stain's statistics, the image-only losses) is not gained from the genes.
Every spot is embedded with the model that never saw its section (one pass of the shared frozen trunk for
all models), and for each variant and seed the script reports, with a paired 95% bootstrap interval over
held-out spots (``stamp_st.evaluation.gains``):

- the gain of Stamp_V (the aligned encoder's feature) over the unaligned backbone, on HEST-protocol ridge
  Pearson, ridge with alpha by inner CV and a linear probe of the study's expression clusters;
- the genes' share: the variant minus its own shuffled control, paired on the same spots;

and, over seeds, the mean, sd, min and max of each. The frozen-backbone variant needs no run: its Stamp_V is
the backbone itself (gain 0 by construction, and so is its control's).

    python benchmarks/fidelity_ablations.py --corpus stamp_st_demo/corpus_paired \\
        --gene-encoder stamp_st_demo/gene_encoder --out fidelity_runs --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the recipe before issue [fidelity] (demo_cpu.json until then), spelt out so it stays comparable
BEFORE = {"freeze_bn_stats": False, "l2sp_weight": 0.0, "hed_scale": 0.0, "hed_shift": 0.0,
          "trainer": {"lr": 1e-3, "ema_decay": None}}
# fixed before any held-out score was seen (see A_PRIORI): the standard remedies for fine-tuning that hurts
# transfer, at the literature's defaults
KEEP = {"freeze_bn_stats": True, "l2sp_weight": 0.01, "hed_scale": 0.05, "hed_shift": 0.005,
        "trainer": {"lr": 1e-3, "ema_decay": 0.99}}
A_PRIORI = (
    "The keep-pretrained recipe was fixed before any held-out score of it was computed: on sections never "
    "seen, the shuffled-gene control of the previous recipe lost -0.015 against the backbone while the genes' "
    "share was +0.034, so what must go is the image-only drift of fine-tuning. Standard remedies, at their "
    "published defaults: BatchNorm statistics frozen at ImageNet's (a few slides' stain statistics are what "
    "does not transfer), L2-SP towards the pretrained weights with weight 0.01 (Li et al. 2018), an EMA of "
    "the weights with decay 0.99 (about 100 steps of 200; it starts from the pretrained weights), and light "
    "HED stain jitter (scale 0.05 as Tellez et al.'s HED-light; shift 0.005, because skimage's HED units "
    "make their 0.05 shift half a patch's haematoxylin range) beside the dihedral flips. Learning rate and "
    "steps are the previous recipe's, so the gene signal keeps the room it had.")
KEEP_NAME = "keep-pretrained recipe (frozen BN + L2-SP + EMA + HED)"  # = demo_cpu.json, the demo's recipe
VARIANTS = {
    KEEP_NAME: KEEP,
    "before: demo recipe until [fidelity]": BEFORE,
    "before + frozen BN": {**BEFORE, "freeze_bn_stats": True},
    "before + L2-SP 0.01": {**BEFORE, "l2sp_weight": 0.01},
    "before + EMA 0.99": {**BEFORE, "trainer": {"lr": 1e-3, "ema_decay": 0.99}},
    "before + HED jitter": {**BEFORE, "hed_scale": 0.05, "hed_shift": 0.005},
}
# the two remedies not tried before, each one change to the demo's recipe, fixed before any score of
# them (LATER_CHANGES); compared with the demo's recipe seed by seed (--reference)
LATER_VARIANTS = {
    "keep-pretrained + lr 3e-4": {**KEEP, "trainer": {"lr": 3e-4, "ema_decay": 0.99}},
    "keep-pretrained, conv head only (trainable_blocks 0)": {**KEEP, "trainable_blocks": 0},
}
VARIANTS.update(LATER_VARIANTS)
LATER_CHANGES = (
    "Fixed before any score of them: the two remedies of issue [fidelity] not tried before, each as one change "
    "to the demo's recipe, at one setting chosen a priori. A lower learning rate: 3e-4, a half-decade step below "
    "the recipe's 1e-3 (the release's 1e-4 with 5,000 warmup steps over 30 epochs has no counterpart in 200 "
    "steps), so fine-tuning moves the backbone less in the same steps. Fewer trainable parameters: the "
    "EfficientNet-Lite0's conv head only (trainable_blocks 0: its 320 -> 1,280 1x1 convolution), instead of the "
    "last block and the conv head. Reported, not adopted: adopting either needs the nested selection of "
    "benchmarks/recipe_nested.py.")


def merge_results(files: list[str], out: str) -> int:
    """One result file from several (their variants side by side; each keeps its own command)."""
    from stamp_st.pipeline.ablations import summarise

    parts = [json.loads(Path(f).read_text()) for f in files]
    merged = {k: parts[0][k] for k in ("what", "a_priori_choice", "held_out")}
    merged["command"] = " && ".join(p["command"] for p in parts) + " && python " + " ".join(sys.argv)
    merged["seeds"] = sorted({s for p in parts for s in p["seeds"]})
    merged["variants"], merged["seconds"], merged["parts"] = {}, {}, []
    for f, p in zip(files, parts):
        if p["held_out"] != merged["held_out"]:
            raise SystemExit(f"{f} held out {p['held_out']}, not {merged['held_out']}")
        for name, v in p["variants"].items():  # seeds of one variant may come from several invocations
            if name in merged["variants"] and "seeds" in v:
                seen = merged["variants"][name]
                overlap = set(seen["seeds"]) & set(v["seeds"])
                if overlap:
                    raise SystemExit(f"{f}: variant {name!r} seeds {sorted(overlap)} are in another file too")
                seen["seeds"].update(v["seeds"])
                summarise(seen)
            else:
                merged["variants"][name] = v
        merged["parts"].append({"command": p["command"], "seconds": p["seconds"], "scores": p["scores"]})
    Path(out).write_text(json.dumps(merged, indent=1, default=float))
    print(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="paired corpus of the imaged sections")
    ap.add_argument("--gene-encoder", required=True, help="Stage-1 run folder")
    ap.add_argument("--out", default="fidelity_runs", help="work folder for the fold models")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="semicolon-separated variant names")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (and shuffle seeds)")
    ap.add_argument("--no-controls", action="store_true", help="skip the shuffled-gene controls")
    ap.add_argument("--reference", default=None,
                    help="a variant every other one is compared with, seed by seed, paired (gain_over_reference); "
                         "it trains no control of its own")
    ap.add_argument("--demo", default=None,
                    help="a finished `stamp-st demo` folder: its own fold models stand for the demo's recipe, seed 0")
    ap.add_argument("--controls-only", action="store_true", help="train only the shuffled-gene controls")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps per model")
    ap.add_argument("--train-only", action="store_true",
                    help="train the runs and stop (several invocations in parallel, then one that scores them all)")
    ap.add_argument("--json", default="benchmarks/results/fidelity_ablations_cpu.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only merge result files of earlier invocations (e.g. one per variant, run in parallel) "
                         "into --json")
    args = ap.parse_args()
    if args.merge:
        return merge_results(args.merge, args.json)

    from functools import partial

    from stamp_st.paths import her2st_dir
    from stamp_st.pipeline.ablations import her2st_targets, run_ablations, run_tag, summary_lines

    names = [v for v in args.variants.split(";") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.reference and args.reference not in names:
        ap.error(f"--reference {args.reference!r} is not among --variants")
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    reuse = {run_tag(KEEP_NAME, 0): Path(args.demo) / "stamp_model"} if args.demo else None
    res = run_ablations(args.corpus, args.gene_encoder, args.out, {n: VARIANTS[n] for n in names}, seeds,
                        partial(her2st_targets, her2st_dir()), controls=not args.no_controls,
                        controls_only=args.controls_only, reuse=reuse, reference=args.reference,
                        no_control=[args.reference] if args.reference else [],
                        steps=args.steps, train_only=args.train_only, progress=lambda m: print(m, flush=True))
    if args.train_only:
        return 0
    res["variants"]["frozen backbone, heads only"] = {
        "note": "not trained: with a frozen backbone Stamp_V is the unaligned backbone's feature, so its gain "
                "over the backbone and its control's are 0 by construction"}
    result = {
        "what": "Stage-2 variants on the demo's paired corpus, leave-one-section-out over B4, C2, C3, C4 (the "
                "sections the previous recipe was tuned on: tuning figures, not a test on unseen sections); "
                "gain of Stamp_V over the unaligned EfficientNet-Lite0 and the genes' share (variant minus "
                "its shuffled-gene control), paired 95% bootstrap over held-out spots, per seed, and the "
                "spread over seeds.",
        "a_priori_choice": A_PRIORI, "command": "python " + " ".join(sys.argv), **res}
    if set(names) & set(LATER_VARIANTS):
        result["a_priori_choice_later_changes"] = LATER_CHANGES
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    print(f"\nwrote {args.json}")
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
