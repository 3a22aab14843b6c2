"""Do our tile features equal TRIDENT's extraction with the same encoder? A fidelity check, not a speed one.

``embed --tiles`` on CMU-1-Small-Region.svs with ``backbone:resnet50`` (TRIDENT's truncated ResNet-50, random
weights with a fixed seed given as a weight file: no hub), then TRIDENT's read path re-typed (OpenSlide
``read_region`` at TRIDENT's level, PIL resize to ``patch_size``, its ResNet50InferenceEncoder transforms and
pooling) on every one of our coordinates. The earlier read (a 112 µm square, 224.45 px at 0.499 µm/px,
resampled to 224 px, centred on the same tile) is measured beside it for reference.

    python benchmarks/trident_tile_agreement.py --json benchmarks/results/trident_tile_agreement_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=os.path.join(os.environ.get("STAMP_ST_DATA", "."), "wsi",
                                                    "CMU-1-Small-Region.svs"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import h5py
    import numpy as np
    import openslide
    import timm
    import torch
    from safetensors.torch import save_file
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    from stamp_st.cli import main as cli
    from stamp_st.readers.slide import open_slide

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    full = timm.create_model("resnet50", pretrained=False, num_classes=0)
    save_file(full.state_dict(), str(tmp / "w.safetensors"))
    out = tmp / "h5_files" / "slide.h5"
    out.parent.mkdir()
    assert cli(["embed", "backbone:resnet50", args.slide, "--tiles", "--backbone-weights", str(tmp / "w.safetensors"),
                "--out", str(out), "--device", "cpu"]) == 0
    with h5py.File(out, "r") as f:
        attrs, coords, ours = dict(f["coords"].attrs), f["coords"][:], f["features"][:]
    model = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3], num_classes=0)
    model.load_state_dict(full.state_dict(), strict=False)
    model.eval()
    tf = transforms.Compose([transforms.Resize(224, interpolation=InterpolationMode.BILINEAR, antialias=True),
                             transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    wsi = openslide.OpenSlide(args.slide)
    ps, side0 = int(attrs["patch_size"]), int(attrs["patch_size_level0"])

    def embed(images):
        with torch.no_grad():
            x = torch.stack([tf(im) for im in images])
            return torch.nn.AdaptiveAvgPool2d(1)(model(x)[0]).flatten(1).numpy()

    from PIL import Image

    trident = np.concatenate([embed([wsi.read_region((int(x), int(y)), 0, (side0, side0)).convert("RGB")
                                     .resize((ps, ps)) for x, y in coords[i:i + 16]])
                              for i in range(0, len(coords), 16)])
    with open_slide(args.slide) as slide:  # the earlier read: 112 µm at the exact µm/px, resampled to 224 px
        side = 112.0 / slide.um_per_px
        old = np.concatenate([embed([Image.fromarray(slide.read_square((x + side0 / 2, y + side0 / 2), side, 224))
                                     for x, y in coords[i:i + 16]]) for i in range(0, len(coords), 16)])

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    result = {
        "what": "embed --tiles vs TRIDENT's extraction (re-typed) with the same encoder, CMU-1-Small-Region.svs",
        "command": "python benchmarks/trident_tile_agreement.py --json benchmarks/results/trident_tile_agreement_cpu.json",
        "encoder": "resnet50 (TRIDENT's truncated ResNet-50), random weights, seed 0",
        "n_tiles": int(len(coords)),
        "coords_attrs": {k: np.asarray(v).tolist() if not isinstance(v, str) else v for k, v in attrs.items()},
        "now": {"max_abs_diff": float(np.abs(ours - trident).max()), "cosine_min": float(cos(ours, trident).min()),
                "cosine_mean": float(cos(ours, trident).mean())},
        "earlier_read": {"max_abs_diff": float(np.abs(old - trident).max()),
                         "cosine_min": float(cos(old, trident).min()), "cosine_mean": float(cos(old, trident).mean())},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
