"""Data loading at scale: Stage-1 and Stage-2 loader throughput per CPU core, the memory of what corpus/ and the
Stage-2 gene cache keep at HEST-1k and 6 M spots, and what that means next to one H100.

    python benchmarks/bench_loader.py --genes-corpus DIR --paired-corpus DIR [DIR ...] [--seconds 20]
        [--corpus-json benchmarks/results/corpus_build_cpu.json] [--json benchmarks/results/loader_scale_cpu.json]

Loaders run in this process (``num_workers=0``, one torch thread), so one loader is one core: shard read
(tar), decode (tokens ``.npy``; PNG or QOI images), padding and collation, batch after batch, as the training
commands use them (Stage 1 ``GeneGroupDataset`` + ``collate_genes``, Stage 2 ``PairedSpotDataset`` +
``collate_pairs``). Crops are cut once, when the corpus is built; normalisation and the dihedral augmentation
run on the accelerator inside the model. The same two steps on CPU (were a user to move them there) are timed
separately (``cpu_normalise_augment``). Rates are given per wall second and per CPU second of this process:
the second is the per-core rate and steadier on a loaded machine.

Memory: the datasets plan from per-shard counts (nothing per spot), so the manifest is the index. A synthetic
manifest of 6 M spots (and one of HEST-1k's 697 K pairs), built from the real corpus's own shard and slide
entries at the build's default shard sizes and 4,000 spots a slide, is written, loaded and planned (8 ranks x
4 workers) under tracemalloc. Stage 2's ``GeneFeatureCache`` (frozen gene encoder) keeps one pooled feature per
spot: its bytes per spot are measured on 20,000 entries and extrapolated.

With ``--corpus-json`` (``bench_corpus.py --json``) the projection uses the corpus build's spots per worker CPU
second: hours for HEST-1k and for 6 M spots per Dask worker, and cores per GPU against the H100 rates in
``results/gpu_stage1.json`` / ``gpu_stage2.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

HEST1K_PAIRS = 697_000
SCALE_SPOTS = 6_000_000
SPOTS_PER_SLIDE = 4_000  # a Visium slide (HEST-1k's Visium sections: a few thousand spots each)
H100_SPOTS_PER_S = {"stage1": 393.0, "stage2": 215.0}  # results/gpu_stage1.json (reference, bf16), gpu_stage2.json (UNI)
RESULTS = Path(__file__).resolve().parent / "results"


def _h100_rates() -> dict:
    """The H100 spots/s of our step, read from the recorded GPU results where present."""
    rates = dict(H100_SPOTS_PER_S)
    try:
        s1 = json.loads((RESULTS / "gpu_stage1.json").read_text())
        ours = [r for r in s1["results"] if r.get("variant") == "ours" and r.get("config") == "reference"]
        if ours:
            rates["stage1"] = max(r["spots_per_s"] for r in ours)
        s2 = json.loads((RESULTS / "gpu_stage2.json").read_text())
        uni = [r for b in s2["bench"] if b["backbone"] == "uni" and not b.get("grad_ckpt") for r in b["rows"]
               if r["mode"] == "ours"]
        if uni:
            rates["stage2"] = max(r["spots_per_s"] for r in uni)
    except (OSError, KeyError, ValueError):
        pass
    return rates


def time_loader(ds, collate, batch_size: int, spots_fn, min_seconds: float, on_batch=None) -> dict:
    """Iterate epochs of ``ds`` until ``min_seconds`` of wall time; spots/s per wall and per CPU second."""
    from torch.utils.data import DataLoader

    spots = batches = epochs = 0
    extra_cpu = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < min_seconds or epochs == 0:
        ds.set_epoch(epochs)
        for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=0):
            spots += spots_fn(batch)
            batches += 1
            if on_batch is not None:
                t = time.process_time()
                on_batch(batch)
                extra_cpu += time.process_time() - t
        epochs += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0 - extra_cpu
    out = {"spots": spots, "batches": batches, "epochs": epochs, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "spots_per_wall_s": round(spots / wall, 1), "spots_per_cpu_s": round(spots / cpu, 1)}
    if on_batch is not None:
        out["cpu_normalise_augment_spots_per_cpu_s"] = round(spots / max(extra_cpu, 1e-9), 1)
    return out


def _cpu_normalise_augment(batch: dict) -> None:
    """What the model does on the accelerator, here on CPU: ImageNet normalisation of patch and region and
    the dihedral augmentation of the patch."""
    from stamp_st.models.backbones import IMAGENET_MEAN, IMAGENET_STD, normalise_images
    from stamp_st.models.pretext import dihedral_augment

    for key in ("patch", "region"):
        x = batch[key].flatten(0, 1)
        x = normalise_images(x, IMAGENET_MEAN, IMAGENET_STD, None)
        if key == "patch":
            dihedral_augment(x)


def synthetic_manifest(template: dict, n_spots: int, spots_per_slide: int, spots_per_sample: int,
                       shard_samples: int) -> dict:
    """A manifest of ``n_spots`` built from a real one's own entries: slides of ``spots_per_slide`` spots,
    shards of at most ``shard_samples`` samples per slide."""
    man = copy.deepcopy(template)
    shard0, slide0 = template["shards"][0], (template.get("slides") or [{}])[0]
    n_slides = -(-n_spots // spots_per_slide)
    per_slide_samples = spots_per_slide // spots_per_sample
    shards, slides = [], []
    for s in range(n_slides):
        sid = f"slide{s:06d}"
        if isinstance(slide0, dict):
            slides.append({**slide0, "slide_id": sid})
        left, k = per_slide_samples, 0
        while left > 0:
            take = min(left, shard_samples)
            shards.append({**shard0, "url": f"{sid}-{k:05d}.tar", "slide_id": sid, "n_samples": take,
                           "n_spots": take * spots_per_sample})
            left -= take
            k += 1
    man["shards"], man["slides"] = shards, slides
    return man


def manifest_memory(template_path: Path, n_spots: int, spots_per_sample: int, shard_samples: int) -> dict:
    from stamp_st.corpus.datasets import corpus_dataset
    from stamp_st.corpus.layout import read_manifest

    template = json.loads(template_path.read_text())
    man = synthetic_manifest(template, n_spots, SPOTS_PER_SLIDE, spots_per_sample, shard_samples)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "manifest.json"
        p.write_text(json.dumps(man))
        size = p.stat().st_size
        del man
        tracemalloc.start()
        t0 = time.perf_counter()
        loaded, _ = read_manifest(p)
        ds = corpus_dataset(loaded, split=None, base_url="", rank=0, world_size=8)
        plans = [ds.plan(0, 0, 8, w, 4) for w in range(4)]
        secs = time.perf_counter() - t0
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"spots": n_spots, "slides": -(-n_spots // SPOTS_PER_SLIDE), "shards": len(ds.shards),
            "manifest_file_mb": round(size / 2**20, 1), "held_mb": round(current / 2**20, 1),
            "peak_mb": round(peak / 2**20, 1), "load_and_plan_s": round(secs, 2),
            "plan_ranges_rank0": sum(len(x) for x in plans)}


def gene_cache_bytes_per_spot(d_model: int = 512, n: int = 20_000) -> float:
    """Python heap bytes per entry of ``GeneFeatureCache`` (key, row dict, fp32 [d_model] tensor)."""
    from stamp_st.training.align_caches import GeneFeatureCache

    cache = GeneFeatureCache()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    feats = torch.randn(n, d_model)
    for i in range(n):
        cache.features[f"slide{i // 4000:06d}\x00AAACAAGTATCTCCCA-{i}"] = {"gene_feat": feats[i].clone()}
    del feats
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # tensor storage is allocated by torch outside Python's allocator: count it explicitly
    return held / n + d_model * 4


def main(argv=None) -> int:
    from stamp_st.corpus.datasets import (
        GeneGroupDataset,
        PairedSpotDataset,
        collate_genes,
        collate_pairs,
    )
    from stamp_st.corpus.layout import read_manifest

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes-corpus", required=True)
    ap.add_argument("--paired-corpus", nargs="+", required=True, help="paired corpora (e.g. PNG and QOI)")
    ap.add_argument("--seconds", type=float, default=20.0, help="minimum wall seconds per loader")
    ap.add_argument("--corpus-json", help="bench_corpus.py results for the projection")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    loaders = {}
    ds = GeneGroupDataset(args.genes_corpus, split=None, shuffle=True, buffer_size=1000)
    loaders["stage1_genes"] = time_loader(ds, collate_genes, 16, lambda b: int(b["spot_valid"].sum()), args.seconds)
    print("stage1_genes", loaders["stage1_genes"], flush=True)
    for pc in args.paired_corpus:
        man, _ = read_manifest(pc)
        codec = man.get("settings", {}).get("image_codec", "png")
        ds = PairedSpotDataset(pc, split=None, shuffle=True, buffer_size=200)
        name = f"stage2_paired_{codec}"
        loaders[name] = time_loader(ds, collate_pairs, 16, lambda b: 2 * len(b["slide_id"]), args.seconds,
                                    on_batch=_cpu_normalise_augment)
        print(name, loaders[name], flush=True)

    genes_man = Path(args.genes_corpus) / "manifest.json"
    paired_man = Path(args.paired_corpus[0]) / "manifest.json"
    memory = {
        "stage1_manifest_6M_spots": manifest_memory(genes_man, SCALE_SPOTS, 9, 2048),
        "stage2_manifest_6M_spots": manifest_memory(paired_man, SCALE_SPOTS, 1, 512),
        "stage2_manifest_hest1k": manifest_memory(paired_man, HEST1K_PAIRS, 1, 512),
    }
    per_spot = gene_cache_bytes_per_spot()
    memory["stage2_gene_cache"] = {"bytes_per_spot": round(per_spot), "d_model": 512,
                                   "hest1k_gb": round(per_spot * HEST1K_PAIRS / 1e9, 2),
                                   "6M_spots_gb": round(per_spot * SCALE_SPOTS / 1e9, 2)}
    print(json.dumps(memory, indent=1), flush=True)

    gpu = _h100_rates()
    projection = {"h100_spots_per_s": gpu}
    s1 = loaders["stage1_genes"]["spots_per_cpu_s"]
    projection["stage1_cores_per_h100"] = round(gpu["stage1"] / s1, 2)
    for name, r in loaders.items():
        if name.startswith("stage2"):
            projection[f"{name}_cores_per_h100"] = round(gpu["stage2"] / r["spots_per_cpu_s"], 2)
            projection[f"{name}_cores_per_h100_with_cpu_augment"] = round(
                gpu["stage2"] / r["spots_per_cpu_s"] + gpu["stage2"] / r["cpu_normalise_augment_spots_per_cpu_s"], 2)
    if args.corpus_json:
        rows = json.loads(Path(args.corpus_json).read_text())["rows"]
        for r in rows:
            if r["workers"] != 1 or "spots_per_cpu_s" not in r:
                continue
            rate = r["spots_per_cpu_s"]
            n = SCALE_SPOTS if r["kind"] == "genes" else HEST1K_PAIRS
            label = "6M_spots" if r["kind"] == "genes" else "hest1k_697k_pairs"
            projection[f"build_{r['kind']}_spots_per_worker_cpu_s"] = rate
            projection[f"build_{r['kind']}_{label}_worker_hours"] = round(n / rate / 3600, 1)
            if r["kind"] != "genes":
                projection[f"build_{r['kind']}_6M_spots_worker_hours"] = round(SCALE_SPOTS / rate / 3600, 1)
    print(json.dumps(projection, indent=1))
    if args.json:
        out = {"command": "python benchmarks/bench_loader.py " + " ".join(argv),
               "machine": f"{platform.machine()}, 2 cores shared with other jobs (loaded): compare ratios, "
                          "per-CPU-second rates are the steadier figures",
               "torch": torch.__version__, "loaders": loaders, "memory": memory, "projection": projection}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
