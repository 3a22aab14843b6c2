"""Where local model weights are found. Pathology foundation models (UNI, CONCH) and the released STAMP
weights are gated downloads: users fetch them once and point stamp-st at the files.

Lookup order for a name: an explicit path; the environment variable ``STAMP_ST_<NAME>_WEIGHTS``; then
``$STAMP_ST_WEIGHTS_DIR/<name>/`` (default ``~/.cache/stamp_st/weights/<name>/``) holding one weight file.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")

# name -> (what it is, where users get it)
KNOWN_WEIGHTS = {
    "uni": ("UNI ViT-L/16 (Chen et al. 2024)", "gated on the Hugging Face hub: MahmoodLab/UNI"),
    "conch": ("CONCH ViT-B/16 (Lu et al. 2024)", "gated on the Hugging Face hub: MahmoodLab/CONCH"),
    "stamp_released": ("released STAMP weights (Han et al. 2026)", "the authors' public release (pytorch_model.bin)"),
}


def weights_dir() -> Path:
    return Path(os.environ.get("STAMP_ST_WEIGHTS_DIR", Path.home() / ".cache" / "stamp_st" / "weights"))


def find_weights(name: str, explicit: str | Path | None = None) -> Path | None:
    """A local weight file for ``name`` or None; never touches the network."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(f"STAMP_ST_{name.upper()}_WEIGHTS")
    if env:
        return Path(env)
    folder = weights_dir() / name
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if files:
            return files[0]
    return None
