"""The one check of a ``--device`` value, run before any work: a name torch knows and a device this machine has
(``--device cuda`` on a machine without a GPU used to fail deep inside training with a traceback)."""

from __future__ import annotations

import re

from .errors import StampInputError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def check_device(spec: str | None) -> str | None:
    """``spec`` unchanged when this machine has it (``auto``/None always pass); else a StampInputError."""
    if spec is None or spec == "auto":
        return spec
    m = _DEVICE.match(spec.strip().lower())
    if not m or (m.group(1) in ("auto", "cpu") and m.group(2)):
        raise StampInputError(f"--device {spec!r} is not a device name",
                              hint="use auto, cpu, cuda, cuda:N (N: the GPU's index) or mps")
    kind, index = m.group(1), int(m.group(3)) if m.group(3) else None
    if kind == "cpu":
        return "cpu"
    import torch

    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise StampInputError(f"--device {spec}: this machine has no usable CUDA GPU (torch "
                                  f"{torch.__version__}, torch.cuda.is_available() is False)",
                                  hint="use --device cpu (or auto), or install a CUDA build of torch")
        if index is not None and index >= n:
            raise StampInputError(f"--device {spec}: this machine has {n} CUDA GPU(s), numbered 0..{n - 1}",
                                  hint=f"use --device cuda:0 .. cuda:{n - 1}")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StampInputError(f"--device {spec}: Apple's MPS backend is not available here",
                              hint="use --device cpu (or auto)")
    return spec.strip().lower()
