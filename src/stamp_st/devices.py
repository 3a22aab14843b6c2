"""The one check of a ``--device`` value, run before any work: a name torch knows and a device this machine has
(``--device cuda`` on a machine without a GPU used to fail deep inside training with a traceback)."""

from __future__ import annotations

import re

from .errors import StampInputError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def memory_bytes(device: str | None = None) -> int | None:
    """Total memory of ``device``: the CUDA GPU's where training would run on one (``cuda[:N]``, or
    None/``auto`` on a machine with a GPU), else this machine's RAM; None when unknown."""
    import os

    if device is None or device == "auto" or str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(device).index if str(device).startswith("cuda") else None
                return int(torch.cuda.get_device_properties(index or 0).total_memory)
        except Exception:  # noqa: BLE001 - an unknown size only skips the check
            return None
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need_bytes: float, device: str | None, what: str, hint: str) -> None:
    """Refuse, before anything is allocated, sizes whose estimated memory exceeds the device's total: the
    allocation would fail later with a MemoryError (or the kernel would kill the process)."""
    have = memory_bytes(device)
    if have is not None and need_bytes > have:
        raise StampInputError(f"{what} needs about {need_bytes / 2**30:.1f} GiB, more than the "
                              f"{have / 2**30:.1f} GiB of {'this GPU' if str(device or '').startswith('cuda') else 'memory'}",
                              hint=hint)


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
