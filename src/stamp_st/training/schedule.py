"""Learning-rate schedule (linear warmup, cosine decay, by optimizer step) and training phases."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import StampInputError


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based: the step about to be taken).

    Linear from 1/(warmup+1) to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio`` at
    ``total_steps``; constant ``min_ratio`` after.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / decay, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """Picklable callable for ``torch.optim.lr_scheduler.LambdaLR`` (its state dict then holds these fields)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)


def validate_phases(phases: Sequence[dict]) -> list[dict]:
    """Phases: ``[{"steps": N, ...flags}, ...]`` or ``[{"epochs": N, ...}, ...]`` (one unit for all); the last
    phase may omit its length (runs to the end). Returns normalised copies."""
    out, units = [], set()
    for i, ph in enumerate(phases):
        ph = dict(ph)
        has = [k for k in ("steps", "epochs") if ph.get(k) is not None]
        if len(has) > 1:
            raise StampInputError(f"phase {i} gives both steps and epochs: give one")
        if not has and i != len(phases) - 1:
            raise StampInputError(f"phase {i} has no length ('steps' or 'epochs'); only the last phase may omit it")
        units.update(has)
        out.append(ph)
    if len(units) > 1:
        raise StampInputError("phases mix 'steps' and 'epochs': measure all phases in one unit")
    return out


def phase_at(phases: Sequence[dict], step: int, epoch: int) -> tuple[int, dict]:
    """Index and settings of the phase active at (optimizer step, epoch); lengths accumulate in order."""
    end = 0
    for i, ph in enumerate(phases):
        if ph.get("steps") is not None:
            end += int(ph["steps"])
            if step < end:
                return i, ph
        elif ph.get("epochs") is not None:
            end += int(ph["epochs"])
            if epoch < end:
                return i, ph
        else:
            return i, ph
    return len(phases) - 1, phases[-1]
