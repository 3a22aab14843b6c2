"""GPU check for Stage 1 (run once on a lent GPU): reference-config training step, spots/s and peak GPU memory,
ours against the naive full-vocabulary-head implementation, side by side; plus two equality checks on the
device (our SDPA layers vs ``nn.TransformerEncoder``; gathered vs full-head losses).

Needs only torch (+ numpy, scipy, pandas that stamp_st's imports pull in); imports stamp_st from this checkout's
``src/`` when it is not installed. Usage:

    python benchmarks/gpu_stage1.py                   # H100: about 2-3 minutes
    python benchmarks/gpu_stage1.py --tiny --device cpu   # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import stamp_st  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "src"))


def equality_checks(device: str) -> dict:
    import torch
    from torch import nn

    from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
    from stamp_st.training.gene_objectives import GenePretrainModel

    torch.manual_seed(0)
    cfg = GeneEncoderConfig(name="check", vocab_size=500, d_model=64, n_layers=2, n_heads=4, d_ff=128, context=96)
    enc = GeneEncoder(cfg).to(device)
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True,
                                                           layer_norm_eps=cfg.layer_norm_eps), 2,
                                enable_nested_tensor=False).to(device)
    ref.load_state_dict({k.removeprefix("encoder."): v for k, v in enc.state_dict().items()
                         if k.startswith("encoder.")})
    tok = torch.randint(30, cfg.n_tokens, (6, 96), device=device)
    for i, n in enumerate([96, 50, 10, 96, 70, 3]):
        tok[i, n:] = 0
    pad = tok == 0
    with torch.no_grad():
        ours = enc.encode(tok)
        x = enc.embeddings(tok.masked_fill(pad, 1)) + enc.positional_embedding.weight[:96]
        theirs = ref.train()(x, src_key_padding_mask=pad)
    layer_err = float((ours - theirs)[~pad].abs().max())
    groups = torch.randint(30, cfg.n_tokens, (3, 9, 96), device=device)
    groups[1, :, 60:] = 0
    batch = {"tokens": groups, "spot_valid": torch.ones(3, 9, dtype=torch.bool, device=device)}
    losses = {}
    for mode in ("gathered", "full"):
        torch.manual_seed(3)
        out = GenePretrainModel(enc, logits=mode, trim=mode == "gathered")(batch)
        losses[mode] = (float(out["igr_loss"]), float(out["cgr_loss"]))
    head_err = max(abs(a - b) for a, b in zip(losses["gathered"], losses["full"]))
    return {"layer_max_abs_err_fp32": layer_err, "gathered_vs_full_loss_abs_err": head_err,
            "ok": layer_err < 1e-3 and head_err < 1e-3}


def main(argv=None) -> int:
    import torch
    from bench_gene_encoder import run_variant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="reference")
    ap.add_argument("--groups", type=int, default=8, help="groups of 9 spots per step (halved on OOM)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config, 1 group, 1 step (smoke test)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if args.tiny:
        args.config, args.groups, args.steps, args.warmup = "tiny", 1, 1, 0
    dev = args.device
    info = {"torch": torch.__version__}
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device: use --device cpu --tiny for a smoke test", file=sys.stderr)
            return 2
        info["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(info))
    t0 = time.perf_counter()
    checks = equality_checks(dev)
    print("equality checks:", json.dumps(checks))
    variants = [("naive_fp32", "naive", False), ("naive_bf16", "naive", True), ("ours_bf16", "ours", True)]
    results = []
    for name, variant, bf16 in variants:
        groups = args.groups
        while True:
            try:
                r = run_variant(variant, args.config, groups, args.steps, args.warmup, dev, bf16=bf16)
                r["name"] = name
                results.append(r)
                break
            except torch.OutOfMemoryError:
                r = None
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
                if groups == 1:
                    results.append({"name": name, "error": "out of memory at 1 group"})
                    break
                print(f"{name}: out of memory at {groups} groups, retrying with {groups // 2}", file=sys.stderr)
                groups //= 2
            finally:
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
        print(json.dumps(results[-1]), flush=True)
    print(f"\nStage 1, config {args.config}, device {info.get('gpu', dev)}, context "
          f"{results[0].get('context', '?')}, every spot full length")
    print(f"{'variant':11s} {'spots/step':>10s} {'s/step':>8s} {'spots/s':>9s} {'peak GiB':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['name']:11s} {r['error']}")
            continue
        mem = r.get("peak_gpu_mem_gib", r["peak_rss_gib"])
        print(f"{r['name']:11s} {r['spots_per_step']:10d} {r['sec_per_step']:8.3f} {r['spots_per_s']:9.1f} "
              f"{mem:9.2f}")
    ok = {r["name"]: r for r in results if "error" not in r}
    if "ours_bf16" in ok:
        for base in ("naive_fp32", "naive_bf16"):
            if base in ok:
                print(f"ours_bf16 / {base}: {ok['ours_bf16']['spots_per_s'] / ok[base]['spots_per_s']:.2f}x "
                      "spots/s")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "checks": checks, "results": results}, indent=2))
    return 0 if checks["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
