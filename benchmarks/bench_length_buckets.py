"""Stage-1 length bucketing: tokens/s of a training step (forward + backward, IGR + CGR) on real her2st batches,
padded to the context (the release), trimmed to the batch's longest spot (one group), and in k length groups
(``length_buckets``), side by side on the same batches with the same masks; prints the ratios (of CPU seconds
on CPU, the steadier measure on a shared machine; wall seconds are recorded too) and the largest loss
difference (exactness).

    python benchmarks/bench_length_buckets.py --corpus DIR [--sections A1,B1,...] [--model small]
        [--batch-size 8] [--steps 6] [--buckets 1,4] [--json benchmarks/results/length_buckets_cpu.json]

``--corpus`` is a ``genes`` corpus (``stamp-st build-corpus --kind genes``); without it one is built from
``--sections`` of the data directory's her2st into a temporary folder. Variants run interleaved, batch by batch
and in rotating order, so that a shared machine's load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _corpus(args, tmp: str) -> Path:
    if args.corpus:
        return Path(args.corpus)
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.paths import her2st_dir, vocab_file

    entries = her2st_samples(her2st_dir(), sections=args.sections.split(","))
    build_corpus(entries, Path(tmp), BuildConfig(kind="genes", vocab_path=str(vocab_file())), progress=False)
    return Path(tmp)


def step_flops(tokens: torch.Tensor, valid: torch.Tensor, cfg, buckets: int, trim: bool = True,
               cgr: bool = True) -> float:
    """Forward FLOPs of the encoder layers for one Stage-1 batch (IGR + CGR needs), per ``encode_bucketed``'s
    grouping: per layer and spot of length L, 2 L (4 d^2 + 2 d d_ff) in the linear layers + 4 L^2 d in
    attention. Machine-independent: what bucketing saves on any device whose kernels scale with the work."""
    d, f, ctx = cfg.d_model, cfg.d_ff, cfg.context
    tok = tokens[..., :ctx]
    pad = tok == 0
    valid = valid & ~pad.all(-1)
    lens = (~pad).sum(-1)
    L = int(lens.max()) if trim else ctx
    need = lens.clone()
    if cgr:
        need[:, 1:] = torch.maximum(lens[:, 1:], lens[:, :1])
    need = need[valid]
    if buckets <= 1:
        groups = [(len(need), L)]
    else:
        from stamp_st.models.gene_encoder import length_groups

        need = torch.sort(((need + 7) // 8 * 8).clamp_max(L)).values.numpy()
        bounds = length_groups(need, buckets, 2.0 * (4 * d * d + 2 * d * f), 4.0 * d)
        groups = [(b - a, int(need[b - 1])) for a, b in bounds]
    return float(cfg.n_layers * sum(n * (2 * m * (4 * d * d + 2 * d * f) + 4 * m * m * d) for n, m in groups))


def main(argv=None) -> int:
    from torch.utils.data import DataLoader

    from stamp_st.corpus.datasets import GeneGroupDataset, collate_genes
    from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
    from stamp_st.training.gene_objectives import GenePretrainModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="a genes corpus folder (default: build one from --sections)")
    ap.add_argument("--sections", default="A1,B1,C1,D1,E1,F1")
    ap.add_argument("--model", default="reference", help="gene encoder config (1,500-token context)")
    ap.add_argument("--layers", type=int, default=1,
                    help="keep this many of its layers (the cost per layer, hence the ratio, is the model's)")
    ap.add_argument("--batch-size", type=int, default=2, help="groups of 9 spots per step")
    ap.add_argument("--steps", type=int, default=6, help="timed batches per variant")
    ap.add_argument("--buckets", default="4", help="length_buckets values to compare with the baselines")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (per-core figures with 1)")
    ap.add_argument("--skip-padded", action="store_true",
                    help="leave out the padded-to-context variant (costs about what trimmed costs on real batches)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast, the GPU path)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tmpdir = tempfile.TemporaryDirectory()  # a corpus built here lives until the end
    tmp = tmpdir.name
    corpus = _corpus(args, tmp)
    ds = GeneGroupDataset(corpus, split=None, seed=args.seed, shuffle=True, buffer_size=1000)
    loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_genes, drop_last=True)
    batches = [b for _, b in zip(range(args.steps + 1), loader)]
    per_slide: dict[str, list[int]] = {}
    for item in GeneGroupDataset(corpus, split=None, shuffle=False):
        n = (item["tokens"] != 0).sum(-1)[item["spot_valid"]].tolist()
        per_slide.setdefault(item["slide_id"], []).extend(n)
    full_cfg = GeneEncoderConfig.load(args.model)
    ctx_len = full_cfg.context
    lengths_by_slide = {k: {"spots": len(v), "median_tokens": float(np.median(v)),
                            "share_at_context": round(float(np.mean(np.asarray(v) >= ctx_len)), 3)}
                        for k, v in sorted(per_slide.items())}
    flops = {}
    for bs, cgr in itertools.product(sorted({args.batch_size, 16}), (False, True)):
        tot = {"padded": 0.0, "trimmed": 0.0, **{f"buckets_{k}": 0.0 for k in map(int, args.buckets.split(","))}}
        n_batches = 0
        for epoch in range(3):
            ds.set_epoch(epoch)
            for b in DataLoader(ds, batch_size=bs, collate_fn=collate_genes, drop_last=True):
                n_batches += 1
                tot["padded"] += step_flops(b["tokens"], b["spot_valid"], full_cfg, 1, trim=False, cgr=cgr)
                tot["trimmed"] += step_flops(b["tokens"], b["spot_valid"], full_cfg, 1, cgr=cgr)
                for k in map(int, args.buckets.split(",")):
                    tot[f"buckets_{k}"] += step_flops(b["tokens"], b["spot_valid"], full_cfg, k, cgr=cgr)
        flops[f"batch_{bs}_groups_{'igr_cgr' if cgr else 'igr_only'}"] = {"batches": n_batches, "encoder_tflops": {k: round(v / 1e12, 2)
                                                                                for k, v in tot.items()},
                                       "saving_vs_trimmed": {k: round(tot["trimmed"] / v, 3) for k, v in tot.items()}}
    for sid in sorted(per_slide):  # one slide's own length mix (batch 16 groups, or the slide when smaller)
        one = GeneGroupDataset(corpus, split=None, shuffle=False, slides=[sid])
        row = {}
        for cgr in (False, True):
            tot = {"trimmed": 0.0, "buckets_4": 0.0}
            for b in DataLoader(one, batch_size=16, collate_fn=collate_genes):
                tot["trimmed"] += step_flops(b["tokens"], b["spot_valid"], full_cfg, 1, cgr=cgr)
                tot["buckets_4"] += step_flops(b["tokens"], b["spot_valid"], full_cfg, 4, cgr=cgr)
            row["igr_cgr" if cgr else "igr_only"] = round(tot["trimmed"] / tot["buckets_4"], 3)
        flops.setdefault("per_slide_batch_16_saving_buckets_4", {})[sid] = row
    print(json.dumps(flops, indent=1), flush=True)
    tmpdir.cleanup()
    meta = {"benchmark": "stage1_length_buckets", "model": args.model, "layers": args.layers,
            "batch_groups": args.batch_size, "corpus_lengths_by_slide": lengths_by_slide,
            "flop_model_reference_config": flops,
            "command": "python benchmarks/bench_length_buckets.py " + " ".join(argv or [])}
    if args.json:  # the machine-independent part first: a loaded machine may never finish the timing
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**meta, "results": "timing not finished"}, indent=2) + "\n")
    torch.manual_seed(args.seed)
    enc_cfg = dataclasses.replace(GeneEncoderConfig.load(args.model), n_layers=args.layers)
    base = GenePretrainModel(GeneEncoder(enc_cfg), cgr=True, trim=False, length_buckets=1)
    trimmed = copy.deepcopy(base)
    trimmed.trim = True
    variants = {"trimmed_to_batch_max": trimmed} if args.skip_padded else {"padded_to_context": base,
                                                                            "trimmed_to_batch_max": trimmed}
    for k in map(int, args.buckets.split(",")):
        m = copy.deepcopy(base)
        m.trim, m.length_buckets = True, k
        variants[f"buckets_{k}"] = m
    dev = torch.device(args.device)
    for m in variants.values():
        m.to(dev)
    batches = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    names = list(variants)
    secs = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    losses = {n: [] for n in names}
    tokens = spots = 0
    for step, batch in enumerate(batches):
        ctx = variants[names[0]].encoder.config.context
        tok = batch["tokens"][..., :ctx]
        valid = batch["spot_valid"] & (tok != 0).any(-1)
        timed = step > 0  # the first batch warms the allocator and kernels
        if timed:
            tokens += int((tok != 0)[valid].sum())
            spots += int(valid.sum())
        for j in range(len(names)):
            name = names[(step + j) % len(names)]
            model = variants[name]
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1000 + step)  # same masks for every variant
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            with autocast:
                out = model(batch)
            out["loss"].backward()
            sync()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if timed:
                secs[name] += dt
                cpu[name] += dc
                losses[name].append(float(out["loss"].detach()))
    ref = np.array(losses["trimmed_to_batch_max"])
    basis = cpu if dev.type == "cpu" else secs  # on a GPU the CPU time says nothing
    rows = []
    for n in names:
        rows.append({"variant": n, "wall_s": round(secs[n], 3), "cpu_s": round(cpu[n], 3),
                     "tokens_per_wall_s": round(tokens / secs[n], 1), "tokens_per_cpu_s": round(tokens / cpu[n], 1),
                     "spots_per_cpu_s": round(spots / cpu[n], 2),
                     "speedup_vs_trimmed": round(basis["trimmed_to_batch_max"] / basis[n], 3),
                     "wall_speedup_vs_trimmed": round(secs["trimmed_to_batch_max"] / secs[n], 3),
                     "max_abs_loss_diff_vs_trimmed": float(np.abs(np.array(losses[n]) - ref).max())})
        if "padded_to_context" in basis:
            rows[-1]["speedup_vs_padded"] = round(basis["padded_to_context"] / basis[n], 3)
    lengths = (torch.cat([(b["tokens"] != 0).sum(-1)[b["spot_valid"]].cpu() for b in batches[1:]]).numpy()
               if len(batches) > 1 else np.zeros(0))
    result = {**meta, "timed_steps": len(batches) - 1, "non_pad_tokens": tokens, "spots": spots,
              "mean_tokens_per_spot": round(tokens / max(spots, 1), 1), "torch_threads": args.threads,
              "device": str(dev), "sections": None if args.corpus else args.sections,
              "timed_batch_lengths": np.sort(lengths).tolist(),
              "machine": f"{platform.processor() or platform.machine()}, shared and loaded (2 cores, 6 users)",
              "torch": torch.__version__, "results": rows}
    for r in rows:
        print(f"{r['variant']:<22} {r['tokens_per_cpu_s']:>9.1f} tokens/CPU-s  {r['spots_per_cpu_s']:>7.2f} spots/CPU-s  "
              f"x{r['speedup_vs_trimmed']:.2f} vs trimmed  "
              f"loss diff {r['max_abs_loss_diff_vs_trimmed']:.1e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
