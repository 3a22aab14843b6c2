"""Does alignment transfer? Patch -> spot retrieval on held-out her2st dev sections, before and after.

A quality check, not a speed benchmark. For each imaged her2st section (B4, C2, C3, C4) in turn, ``run_align``
trains on the other three and validates on the held-out one, every spot of it once: recall@k with the
untrained heads (step 0) beside recall@k after training, and chance (k / spots). The offline default
backbone (ImageNet EfficientNet-Lite0) is frozen and its features cached, the gene encoder is frozen and its
features cached (the paper's setting), so a fold takes about two minutes on 2 CPU cores.

    python benchmarks/align_heldout_recall.py --gene-encoder stamp_st_demo/gene_encoder \
        --corpus stamp_st_demo/corpus_paired --steps 200 --json heldout.json

Without ``--corpus`` the paired corpus of the four sections is built under ``--work`` first. Without
``--gene-encoder`` a randomly initialised tiny encoder is used (prints a warning).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

DEV_SECTIONS = ("B4", "C2", "C3", "C4")
KS = (1, 5, 10)


def build_dev_corpus(work: Path) -> Path:
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.demo import her2st_root
    from stamp_st.paths import vocab_file

    out = work / "corpus_paired_dev"
    entries = her2st_samples(her2st_root(), sections=list(DEV_SECTIONS))
    build_corpus(entries, out, BuildConfig(kind="paired", vocab_path=str(vocab_file())), workers=2)
    return out


def slide_ids(corpus: Path) -> list[str]:
    from stamp_st.corpus.layout import read_manifest

    man, _ = read_manifest(corpus)
    return sorted({s["slide_id"] for s in man["shards"]})


def run_fold(corpus: Path, slide: str, args, out: Path) -> dict:
    from stamp_st.training.align import AlignConfig, run_align

    cfg = AlignConfig(backbone="efficientnet_lite0", gene_encoder=args.gene_encoder, batch_size=args.batch,
                      freeze_gene_encoder=True, freeze_backbone=True, val_slides=[slide], val_max_batches=None,
                      neighbour_radius_um=args.neighbour_radius_um, expr_sim_threshold=args.expr_sim_threshold,
                      trainer={"lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": 10,
                               "max_steps": args.steps, "seed": args.seed, "val_every": args.steps,
                               "val_at_start": True, "ckpt_every": args.steps, "log_every": 25,
                               "progress": False, "tensorboard": False})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_align(corpus, cfg, out, resume=False)
    import pandas as pd

    val = pd.read_csv(out / "metrics.csv").query("split == 'val'")  # the engine's long format
    by_step = val.pivot_table(index="step", columns="metric", values="value")
    first, last = by_step.iloc[0], by_step.iloc[-1]
    return {"slide": slide, "seconds": round(time.perf_counter() - t0, 1), "steps": int(by_step.index[-1]),
            **{f"untrained_R@{k}": float(first[f"recall@{k}"]) for k in KS},
            **{f"aligned_R@{k}": float(last[f"recall@{k}"]) for k in KS},
            **{f"chance_R@{k}": float(last[f"chance_recall@{k}"]) for k in KS}}


def tag(args) -> str:
    return "".join(f"_{k}{v}" for k, v in (("nb", args.neighbour_radius_um), ("sim", args.expr_sim_threshold))
                   if v is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="paired corpus holding the dev sections (built if absent)")
    ap.add_argument("--gene-encoder", default="random:tiny", help="Stage-1 run or checkpoint folder")
    ap.add_argument("--work", type=Path, default=Path("heldout_recall_runs"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neighbour-radius-um", type=float, help="ablation: neighbour-aware negatives (µm)")
    ap.add_argument("--expr-sim-threshold", type=float, help="ablation: expression-similarity-aware negatives")
    ap.add_argument("--slides", help="comma-separated slide ids to hold out (default: every slide in turn)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np

    corpus = args.corpus or build_dev_corpus(args.work)
    folds = args.slides.split(",") if args.slides else slide_ids(corpus)
    results = []
    for slide in folds:
        r = run_fold(corpus, slide, args, args.work / f"holdout_{slide}_seed{args.seed}{tag(args)}")
        results.append(r)
        print(f"{slide:12s} " + "  ".join(f"R@{k} {r[f'untrained_R@{k}']:.3f} -> {r[f'aligned_R@{k}']:.3f} "
                                          f"(chance {r[f'chance_R@{k}']:.3f})" for k in KS)
              + f"  [{r['seconds']:.0f} s]", flush=True)
    mean = {m: float(np.mean([r[m] for r in results])) for m in results[0] if m not in ("slide", "seconds", "steps")}
    print("mean         " + "  ".join(f"R@{k} {mean[f'untrained_R@{k}']:.3f} -> {mean[f'aligned_R@{k}']:.3f} "
                                      f"(chance {mean[f'chance_R@{k}']:.3f})" for k in KS))
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                         "folds": results, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
