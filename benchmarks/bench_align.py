"""Stage-2 alignment step: ours vs the release's way, side by side in one process.

- ours: gene encoder frozen (the paper), its pooled features computed once per spot and cached, so a step
  runs only the image side + heads; negatives gathered across ranks; bf16 autocast where supported.
- release: the same model with the gene encoder recomputed *and trained* every step on the full
  1,500-token context (its pooling pads to the context), local negatives.

Both use the same backbone, batch (items of 2 spots), images and precision; the timed loop is forward +
backward + AdamW step on synthetic uint8 inputs. Prints a table and the ratio; ``--json`` writes the numbers.

``--frozen-cnn`` compares instead a frozen CNN backbone recomputed every step (``frozen``) with its patch
features and region maps cached (``frozen_cached``, ``training.align_caches.ImageFeatureCache``); both with the gene
cache. What still trains: heads, pretext query, temperature.

    python benchmarks/bench_align.py --backbone timm:vit_small_patch16_224 --batch 16 --steps 10
    python benchmarks/bench_align.py --frozen-cnn --backbone efficientnet_lite0 --gene-config tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stamp_st.models.backbones import create_backbone  # noqa: E402
from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig  # noqa: E402
from stamp_st.models.stamp import StampModel, precompute_gene_embeddings  # noqa: E402
from stamp_st.training.align_caches import ImageFeatureCache  # noqa: E402
from stamp_st.training.align_task import AlignTask  # noqa: E402


def synthetic_batch(items: int, img_px: int, context: int, n_genes: int = 2000, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(items, 2, context, dtype=torch.int64)
    tokens[..., :n_genes] = torch.randint(30, 20_340, (items, 2, min(n_genes, context)), generator=g)
    return {"patch": torch.randint(0, 256, (items, 2, img_px, img_px, 3), generator=g, dtype=torch.uint8),
            "region": torch.randint(0, 256, (items, 2, img_px, img_px, 3), generator=g, dtype=torch.uint8),
            "thumb": torch.randint(0, 256, (items, 2, 16, 16, 3), generator=g, dtype=torch.uint8),
            "region_label": torch.randint(0, 9, (items, 2), generator=g),
            "region_valid": torch.ones(items, 2, dtype=torch.bool), "tokens": tokens,
            "xy_um": torch.rand(items, 2, 2, generator=g) * 5000, "slide_id": [f"s{i % 4}" for i in range(items)]}


def build(backbone: str, gene_config, img_px: int, mode: str, grad_ckpt: bool) -> StampModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"img_size": img_px} if backbone.startswith("timm:vit") else {}
        bb = create_backbone(backbone, pretrained=False, **kw)
    bb.transform.size_px = img_px
    enc = GeneEncoder(gene_config)
    if mode == "release":
        m = StampModel(enc, bb, released=True)
    else:
        m = StampModel(enc, bb, freeze_gene_encoder=True)
    if mode.startswith("frozen"):
        from stamp_st.models.backbones import freeze_backbone

        freeze_backbone(m.visual_backbone.base_model)
    if grad_ckpt:
        m.set_grad_checkpointing(True)
    return m


def run_mode(mode: str, args, device: torch.device, gene_config) -> dict:
    model = build(args.backbone, gene_config, args.img, mode, args.grad_ckpt).to(device).train()
    batch = synthetic_batch(args.batch, args.img, gene_config.context, seed=1)
    setup_s = 0.0
    if mode != "release":  # cached gene features: computed once per spot, outside the step (timed separately)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            feats = precompute_gene_embeddings(model, batch["tokens"].reshape(-1, gene_config.context), device=device)
        setup_s = time.perf_counter() - t0
        batch = dict(batch, gene_feat=feats.reshape(args.batch, 2, -1), tokens=None)
    if mode == "frozen_cached":  # the frozen CNN's outputs, once per spot
        t0 = time.perf_counter()
        batch = ImageFeatureCache().fill(dict(batch, spot_id=[(f"a{i}", f"b{i}") for i in range(args.batch)]), model)
        setup_s += time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-3)
    dev_batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    task = AlignTask(model)  # the losses

    def step(task=task, opt=opt):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = task(dev_batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    res = {"mode": mode, "step_s": dt, "spots_per_s": 2 * args.batch / dt, "loss": float(out["loss"].detach()),
           "trainable_params_m": sum(p.numel() for p in params) / 1e6, "cache_fill_s": setup_s}
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        res["process_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="timm:vit_small_patch16_224")
    ap.add_argument("--gene-config", default="reference", help="reference | small | tiny | JSON path")
    ap.add_argument("--batch", type=int, default=16, help="items (2 spots each) per step")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--frozen-cnn", action="store_true", help="frozen CNN: recomputed vs cached (see above)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"
                                             and torch.cuda.is_bf16_supported())
    gene_config = GeneEncoderConfig.load(args.gene_config)
    modes = ("frozen", "frozen_cached") if args.frozen_cnn else ("release", "ours")
    rows = [run_mode(mode, args, device, gene_config) for mode in modes]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"{args.backbone}  batch {args.batch} items ({2 * args.batch} spots)  {args.img}px  gene encoder "
          f"{gene_config.name} (context {gene_config.context})  {'bf16' if args.bf16 else 'fp32'}  on {name}")
    mem_key = "peak_mem_gib" if device.type == "cuda" else "process_max_rss_gib"
    print(f"{'mode':14s} {'step s':>8s} {'spots/s':>9s} {'trainable M':>12s} {mem_key:>20s}")
    for r in rows:
        print(f"{r['mode']:14s} {r['step_s']:8.3f} {r['spots_per_s']:9.1f} {r['trainable_params_m']:12.1f} "
              f"{r[mem_key]:20.2f}")
    ratio = rows[0]["step_s"] / rows[1]["step_s"]
    print(f"speed-up {rows[1]['mode']} vs {rows[0]['mode']}: {ratio:.2f}x")
    result = {"backbone": args.backbone, "batch_items": args.batch, "img_px": args.img, "device": name,
              "precision": "bf16" if args.bf16 else "fp32", "gene_config": gene_config.name, "rows": rows,
              "speedup": ratio, "grad_ckpt": args.grad_ckpt}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
