"""Stage-1 training step at a gene encoder config: ours against a naive implementation, side by side.

- ``naive``: what the release does: ``nn.TransformerEncoder`` layers, fp32, the 20,340-way heads computed at
  every position (IGR on all spots, CGR on every centre position), then the losses read the masked ones.
- ``ours_fp32``: our layers (``F.scaled_dot_product_attention``), logits only where a loss reads them,
  padding past the longest spot trimmed, fp32.
- ``ours``: the same under bf16 autocast (CPUs with native bf16, GPUs).

Every spot is full length (all ``context`` positions are genes), so trimming saves nothing here: the gain
measured is the heads' and the precision's. Each variant runs in its own process so that its peak RSS is its
own. Usage (2 CPU cores, about a minute per variant at the reference config with one group of 9 spots):

    python benchmarks/bench_gene_encoder.py --config reference --groups 1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("naive", "ours_fp32", "ours")


def build(variant: str, config: str, device: str):
    import torch
    from torch import nn

    from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
    from stamp_st.training.gene_objectives import GenePretrainModel

    torch.manual_seed(0)
    cfg = GeneEncoderConfig.load(config)
    enc = GeneEncoder(cfg)
    if variant == "naive":
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=0.0, batch_first=True,
                                           layer_norm_eps=cfg.layer_norm_eps)
        torch_layers = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        enc.encoder = torch_layers  # same parameter names: encoder.layers.N.*

        def encode(tokens, padding_mask=None):
            tokens = tokens[:, :cfg.context]
            pad = (tokens == 0) if padding_mask is None else padding_mask[:, :cfg.context]
            x = enc.embeddings(tokens.masked_fill(pad, 1)) + enc.positional_embedding.weight[:tokens.shape[1]]
            return torch_layers(x, src_key_padding_mask=pad)

        enc.encode = encode
        model = GenePretrainModel(enc, logits="full", trim=False)
    else:
        model = GenePretrainModel(enc, logits="gathered", trim=True)
    return model.to(device), cfg


def run_variant(variant: str, config: str, groups: int, steps: int, warmup: int, device: str,
                bf16: bool | None = None) -> dict:
    import torch

    from stamp_st.training.engine import cpu_bf16_fast

    model, cfg = build(variant, config, device)
    if bf16 is None:
        bf16 = variant == "ours" and (cpu_bf16_fast() if device == "cpu" else torch.cuda.is_bf16_supported())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(30, cfg.n_tokens, (groups, 9, cfg.context), generator=g)
    batch = {"tokens": tokens.to(device), "spot_valid": torch.ones(groups, 9, dtype=torch.bool, device=device)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device != "cpu" else {}))
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    if dev_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if dev_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev_type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    res = {"variant": variant, "config": config, "device": device, "bf16": bool(bf16), "groups": groups,
           "spots_per_step": groups * 9, "context": cfg.context, "sec_per_step": sec,
           "spots_per_s": groups * 9 / sec, "loss": float(out["loss"])}
    if dev_type == "cuda":
        res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="reference")
    ap.add_argument("--groups", type=int, default=1, help="groups of 9 spots per step")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_variant(args.child, args.config, args.groups, args.steps, args.warmup, args.device)))
        return 0
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", v, "--config", args.config, "--groups", str(args.groups),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(f"{v}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
            results.append({"variant": v, "error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"})
            continue
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"{v:10s} done: {results[-1]['spots_per_s']:.2f} spots/s", file=sys.stderr)
    print(f"\nStage-1 training step, config {args.config}, {args.groups} group(s) x 9 spots, context "
          f"{results[0].get('context')}, device {args.device}, {args.threads} threads")
    print(f"{'variant':10s} {'bf16':>5s} {'s/step':>8s} {'spots/s':>8s} {'peak RSS GiB':>13s}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:10s} error: {r['error']}")
            continue
        print(f"{r['variant']:10s} {str(r['bf16']):>5s} {r['sec_per_step']:8.2f} {r['spots_per_s']:8.2f} "
              f"{r['peak_rss_gib']:13.2f}")
    ok = {r["variant"]: r for r in results if "error" not in r}
    if "naive" in ok:
        for v in ("ours_fp32", "ours"):
            if v in ok:
                print(f"speed-up {v} / naive: {ok[v]['spots_per_s'] / ok['naive']['spots_per_s']:.2f}x; "
                      f"peak RSS {ok[v]['peak_rss_gib']:.2f} vs {ok['naive']['peak_rss_gib']:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
