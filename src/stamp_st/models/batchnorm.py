"""BatchNorm over the global batch on any number of processes, on CPU (gloo) as on GPU: DDP keeps each rank's
BatchNorm statistics to its own rows, so N processes train another model than one process with the whole batch
(``StampModel.gene_norm``, the BatchNorms of a CNN's trainable tail). torch's ``SyncBatchNorm`` runs on GPUs
only and replaces modules (timm's ``BatchNormAct2d`` needs timm's own converter), so this swaps the class of
each BatchNorm in place for one whose training statistics are all-reduced (with their gradients); parameters,
buffers, checkpoints and timm's fused activation stay as they are. One process: plain BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import group_rank_world


class CrossRankBatchNorm:
    """Mixin placed before a ``_BatchNorm`` class (``cross_rank_batchnorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, world = group_rank_world()
        if not self.training or world == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = all_reduce(torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=torch.float64))
        n = n.to(x.dtype)
        mean = all_reduce(x.sum(dims)) / n
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if hasattr(self, "act"):  # timm's BatchNormAct2d: dropout, then the activation it fuses
            y = self.act(self.drop(y))
        return y


_CLASSES: dict[type, type] = {}


def cross_rank_batchnorm(model: nn.Module) -> int:
    """Give every trainable-mode BatchNorm of ``model`` global-batch statistics (in place); returns how many.
    timm's frozen BatchNorms (``FrozenBatchNorm2d``) are not BatchNorm modules and stay as they are."""
    n = 0
    for m in model.modules():
        cls = type(m)
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, (CrossRankBatchNorm,
                                                                                 nn.SyncBatchNorm)):
            continue
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"CrossRank{cls.__name__}", (CrossRankBatchNorm, cls), {})
        m.__class__ = _CLASSES[cls]
        n += 1
    return n
