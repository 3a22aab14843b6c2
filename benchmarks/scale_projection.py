"""What the paper's scale costs, from measured figures: GPU-hours of Stage 1 and Stage 2 (the H100 throughputs in
benchmarks/results/gpu_stage1.json and gpu_stage2.json, the paper's corpus sizes and epochs) and the disk of
the corpora (shard bytes per spot measured here on real her2st sections with the default crop geometry, 224 px
PNG patches and regions, context 1,500). Optionally times ``stamp-st reproduce --smoke`` end to end.

    python benchmarks/scale_projection.py [--sections B4,C2] [--smoke] [--equivalence]

``--equivalence`` runs the rank-equivalence tests (tests/test_scale.py: 2 torchrun processes vs 1 with the
same global batch, Stage 1 and Stage 2, gloo on CPU) and records the differences they print.

Writes benchmarks/results/scale_projection.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {  # METHOD.md / the paper: Stage 1 on SpaVis-6M, Stage 2 on HEST-1k pairs
    "stage1_spots": 5_750_000, "stage1_epochs": 2,
    "stage2_pairs": 697_000, "stage2_epochs": 30, "gpus": 4,
}


def measured_throughput() -> dict:
    s1 = json.loads((RESULTS / "gpu_stage1.json").read_text())
    s2 = json.loads((RESULTS / "gpu_stage2.json").read_text())
    ours1 = next(r for r in s1["results"] if r["name"] == "ours_bf16")
    uni = next(b for b in s2["bench"] if b["backbone"] == "uni")
    ours2 = next(r for r in uni["rows"] if r["mode"] == "ours")
    return {"stage1_spots_per_s": ours1["spots_per_s"], "stage1_gpu": s1["info"]["gpu"],
            "stage2_spots_per_s": ours2["spots_per_s"], "stage2_items_per_step": uni["batch_items"],
            "stage2_gpu": s2["device"]}


def projection(tp: dict) -> dict:
    s1_spots = PAPER["stage1_spots"] * PAPER["stage1_epochs"]
    s2_spots = PAPER["stage2_pairs"] * PAPER["stage2_epochs"] * 2  # two spots per pair
    s1_h = s1_spots / tp["stage1_spots_per_s"] / 3600
    s2_h = s2_spots / tp["stage2_spots_per_s"] / 3600
    return {"stage1_spot_passes": s1_spots, "stage1_gpu_hours": s1_h,
            "stage2_spot_passes": s2_spots, "stage2_gpu_hours": s2_h, "total_gpu_hours": s1_h + s2_h,
            "wall_hours_on_4_gpus_linear_scaling": (s1_h + s2_h) / PAPER["gpus"]}


def shard_bytes(sections: list[str]) -> dict:
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.paths import her2st_dir, vocab_file

    out = {}
    entries = her2st_samples(her2st_dir(), sections=sections)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("genes", "paired"):
            t0 = time.perf_counter()
            build_corpus(entries, Path(tmp) / kind, BuildConfig(kind=kind, vocab_path=str(vocab_file())),
                         workers=1, processes=False, progress=False)
            man = json.loads((Path(tmp) / kind / "manifest.json").read_text())
            # genes shards hold groups of up to 9 spots, each spot in one group: bytes per spot, not per sample
            n = sum(s.get("n_spots", s["n_samples"]) for s in man["shards"])
            b = sum(s["bytes"] for s in man["shards"])
            out[kind] = {"spots": n, "samples": sum(s["n_samples"] for s in man["shards"]), "bytes": b,
                         "bytes_per_spot": b / n, "seconds": time.perf_counter() - t0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="B4,C2")
    ap.add_argument("--smoke", action="store_true", help="also time `stamp-st reproduce --smoke`")
    ap.add_argument("--equivalence", action="store_true", help="also run the 2-vs-1-process tests")
    args = ap.parse_args(argv)
    tp = measured_throughput()
    res = {"command": "python benchmarks/scale_projection.py " + " ".join(argv or sys.argv[1:]),
           "paper": PAPER, "throughput": tp, "projection": projection(tp)}
    sb = shard_bytes(args.sections.split(","))
    res["shards_her2st"] = {"sections": args.sections, **sb}
    res["disk_projection_gb"] = {
        "genes_corpus_stage1_spots": PAPER["stage1_spots"] * sb["genes"]["bytes_per_spot"] / 1e9,
        "paired_corpus_stage2_spots": PAPER["stage2_pairs"] * sb["paired"]["bytes_per_spot"] / 1e9,
        "note": "the paired corpus holds one sample per spot (pairs are drawn at load time); HEST-1k itself is "
                "more than 1 TB (its README), most of it whole-slide images"}
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stamp_st", "reproduce", "--smoke", "--out", tmp], check=True,
                           stdout=subprocess.DEVNULL)
            res["reproduce_smoke_seconds"] = time.perf_counter() - t0
    if args.equivalence:
        import ast
        import re

        tests = Path(__file__).resolve().parents[1] / "tests" / "test_scale.py"
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", str(tests), "-k", "processes"],
                             capture_output=True, text=True, check=True).stdout
        res["rank_equivalence_2_vs_1_process"] = {  # the tests print "stage N, 2 processes vs 1: {...}"
            m.group(1): ast.literal_eval(m.group(2)) for m in re.finditer(r"(stage \d), 2 processes vs 1: (\{.*?\})", out)}
    (RESULTS / "scale_projection.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
