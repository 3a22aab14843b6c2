"""Rank and world size, in one place: the launcher's view (torchrun's environment, known before any process
group exists) and the process group's view (once one is initialised). torch is imported only when asked."""

from __future__ import annotations

import os


def env_rank_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when launched plainly)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def group_rank_world(default: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else ``default``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return default
