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


def rank_rows(n_local: int) -> tuple[slice, int]:
    """(this rank's rows, global rows) of a global batch made of every rank's ``n_local`` rows, rank 0 first:
    random draws for the global batch from a generator seeded alike on every rank, cut to these rows, are what
    one process with the whole batch draws (the training loaders' ``global_batch`` order lays batches so)."""
    rank, world = group_rank_world()
    return slice(rank * n_local, (rank + 1) * n_local), world * n_local


def all_reduce_sum(x):
    """Sum over ranks without gradient (a copy; ``x`` itself when there is one process)."""
    import torch.distributed as dist

    if group_rank_world()[1] == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x
