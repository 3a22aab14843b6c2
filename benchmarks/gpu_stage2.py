"""Stage-2 GPU check, one short script for a lent device (about 3-5 minutes on one H100):

1. bf16 vs fp32 loss of the same UNI-shaped STAMP model on the same batch (numerics of the GPU path);
2. alignment step throughput and peak memory, ours vs the release's way (benchmarks/bench_align.py), for
   ViT-S/16 and ViT-L/16 (UNI's architecture, random weights) at batch 16 items (32 spots).

Needs torch (CUDA), timm and safetensors; runs from the repository root without installing stamp-st.
Results: printed, and written as JSON to ``$OUT/gpu_stage2.json`` (or ``--out``).

    python benchmarks/gpu_stage2.py                  # on the GPU machine
    python benchmarks/gpu_stage2.py --tiny           # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def numerics(device, tiny: bool) -> dict:
    import torch
    from bench_align import build, synthetic_batch

    from stamp_st.models.gene_encoder import GeneEncoderConfig

    gcfg = GeneEncoderConfig.load("tiny" if tiny else "reference")
    backbone, img = ("timm:vit_tiny_patch16_224", 64) if tiny else ("uni", 224)
    from stamp_st.training.align_task import AlignTask

    model = AlignTask(build(backbone, gcfg, img, "ours", grad_ckpt=False)).to(device).eval()
    batch = synthetic_batch(4, img, gcfg.context, seed=3)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    with torch.no_grad():
        fp32 = model(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            bf16 = model(batch)
    out = {k: (float(fp32[k]), float(bf16[k])) for k in ("loss", "loss_patch_spot", "loss_csp")}
    out["max_rel_diff"] = max(abs(a - b) / max(abs(a), 1e-6) for a, b in out.values())
    del model
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)

    import torch
    from bench_align import main as bench

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(report))
    t0 = time.perf_counter()
    try:
        report["numerics_bf16_vs_fp32"] = numerics(device, args.tiny)
        print("numerics:", report["numerics_bf16_vs_fp32"])
    except Exception:  # noqa: BLE001 - keep going: the benchmark is still worth having
        report["numerics_error"] = traceback.format_exc()
        print(report["numerics_error"])

    if args.tiny:
        cases = [("timm:vit_tiny_patch16_224", "tiny", 2, 64, [])]
        steps = ["--steps", "2", "--warmup", "1"]
    else:
        cases = [("timm:vit_small_patch16_224", "reference", 16, 224, []),
                 ("uni", "reference", 16, 224, []),
                 ("uni", "reference", 16, 224, ["--grad-ckpt"])]
        steps = ["--steps", str(args.steps), "--warmup", "3"]
    report["bench"] = []
    for backbone, gcfg, batch, img, extra in cases:
        try:
            r = bench(["--backbone", backbone, "--gene-config", gcfg, "--batch", str(batch), "--img", str(img),
                       *steps, *extra])
            report["bench"].append(r)
        except Exception:  # noqa: BLE001 - e.g. out of memory in one case
            report["bench"].append({"backbone": backbone, "extra": extra, "error": traceback.format_exc()})
            print(report["bench"][-1]["error"])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_stage2.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_stage2.json'} after {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
