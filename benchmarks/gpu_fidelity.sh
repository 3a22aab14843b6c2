#!/usr/bin/env bash
# Issue [fidelity], on a lent GPU (a few minutes): the demo's pipeline and held-out evaluation with the
# `small` gene encoder (configs/pretrain/her2st_small_gpu.json) and a longer partial fine-tuning
# (configs/align/her2st_gpu.json); writes benchmarks/results/gpu_fidelity.json with the same held-out table
# and paired gains as the CPU demo. Usage: bash benchmarks/gpu_fidelity.sh [OUT]
set -euo pipefail
OUT="${1:-gpu_fidelity}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
time stamp-st demo --out "$OUT" --workers 8 --pretrain-config her2st_small_gpu --align-config her2st_gpu
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
r = json.loads((out / "report" / "results.json").read_text())
stages = {p.stem: json.loads(p.read_text()).get("seconds") for p in (out / "stages").glob("*.json")}
res = {"what": "stamp-st demo with her2st_small_gpu + her2st_gpu on one GPU", "stage_seconds": stages,
       "gains": r["gains"], "table": [t for t in r["table"] if "mean" in t]}
pathlib.Path("benchmarks/results/gpu_fidelity.json").write_text(json.dumps(res, indent=1, default=float))
print("wrote benchmarks/results/gpu_fidelity.json")
PY
