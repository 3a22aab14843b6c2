"""STAMP's four alignment losses with one shared, clamped temperature (METHOD.md §5), negatives gathered
from every rank, and an optional neighbour-aware treatment of negatives.

Distributed: each rank scores its *local* rows against the *gathered* columns (open_clip's
``local_loss=True, gather_with_grad=True``). ``torch.distributed.nn.functional.all_gather`` sums the
gradients of the gathered copies back onto their owner, and DDP averages parameter gradients, so the
rank-mean of the returned losses equals the single-process loss on the global batch and the gradients
equal it too (the gradient a rank sees on its own rows is ``world_size`` times the single-process one,
and DDP divides by ``world_size``). CSP and its accuracy are divided by the *global* count of valid
spots so the rank mean is exact even when ranks hold different numbers of valid region placements.

Neighbour-aware negatives (beyond the paper; off by default and in ``released`` mode): spots of the same
slide closer than ``neighbour_radius_um`` to the anchor, or whose gene embeddings have cosine similarity
above ``expr_sim_threshold``, often have near-identical expression; as plain negatives they teach the
model to separate what should match. ``neighbour_mode="mask"`` removes them from the softmax
denominator; ``"soft"`` keeps them but gives them ``soft_target`` of the target mass each (positive keeps
the rest after renormalisation). Only the image<->spot losses use it (patch->region compares images of
the same spot and has no expression notion of "near").
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum, group_rank_world
from ..models.stamp import scale_from_param


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each owner."""
    _, world = group_rank_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    _, world = group_rank_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1)


class StampLoss(nn.Module):
    """Four losses, all weight 1. Inputs are L2-normalised embeddings of the *local* spots."""

    def __init__(self, gather: bool = True, neighbour_radius_um: float | None = None,
                 expr_sim_threshold: float | None = None, neighbour_mode: str = "mask",
                 soft_target: float = 0.1):
        super().__init__()
        if neighbour_mode not in ("mask", "soft"):
            raise ValueError(f"neighbour_mode must be 'mask' or 'soft', not {neighbour_mode!r}")
        self.gather = gather
        self.neighbour_radius_um = neighbour_radius_um
        self.expr_sim_threshold = expr_sim_threshold
        self.neighbour_mode = neighbour_mode
        self.soft_target = soft_target

    @property
    def neighbour_aware(self) -> bool:
        return self.neighbour_radius_um is not None or self.expr_sim_threshold is not None

    def neighbour_matrix(self, offset: int, n_local: int, xy_um=None, slide_idx=None, sim_emb=None,
                         xy_all=None, slide_all=None, sim_all=None) -> torch.Tensor | None:
        """bool [n_local, n_global]: True where column j is a near neighbour of local row i (never the
        positive itself)."""
        if not self.neighbour_aware:
            return None
        n_all = (xy_all if xy_all is not None else sim_all).shape[0]
        near = torch.zeros(n_local, n_all, dtype=torch.bool, device=(xy_all if xy_all is not None else sim_all).device)
        if self.neighbour_radius_um is not None and xy_um is not None:
            same = slide_idx[:, None] == slide_all[None, :]
            d = torch.cdist(xy_um.float(), xy_all.float())
            near |= same & (d < self.neighbour_radius_um)
        if self.expr_sim_threshold is not None and sim_emb is not None:
            s = F.normalize(sim_emb.float(), dim=-1) @ F.normalize(sim_all.float(), dim=-1).T
            near |= s > self.expr_sim_threshold
        idx = torch.arange(n_local, device=near.device)
        near[idx, idx + offset] = False
        return near

    def _contrastive(self, q: torch.Tensor, k_all: torch.Tensor, scale: torch.Tensor, offset: int,
                     near: torch.Tensor | None) -> torch.Tensor:
        """Sum over local rows of InfoNCE(q_i vs all keys; positive = key i + offset)."""
        logits = scale * q @ k_all.T
        labels = torch.arange(q.shape[0], device=q.device) + offset
        if near is None:
            return F.cross_entropy(logits, labels, reduction="sum")
        if self.neighbour_mode == "mask":
            logits = logits.masked_fill(near, torch.finfo(logits.dtype).min)
            return F.cross_entropy(logits, labels, reduction="sum")
        targets = near.to(logits.dtype) * self.soft_target
        targets[torch.arange(q.shape[0], device=q.device), labels] = 1.0
        targets = targets / targets.sum(-1, keepdim=True)
        return _soft_ce(logits, targets).sum()

    def forward(self, patch: torch.Tensor, region: torch.Tensor, spot: torch.Tensor,
                pretext: torch.Tensor | None, windows: torch.Tensor | None, region_label: torch.Tensor,
                region_valid: torch.Tensor, logit_scale: torch.Tensor, xy_um: torch.Tensor | None = None,
                slide_idx: torch.Tensor | None = None, sim_emb: torch.Tensor | None = None) -> dict:
        """patch, region, spot: [n, d]; pretext [n, d]; windows [n, 9, d]; all L2-normalised.

        Returns the rank-local losses whose mean over ranks is the global-batch loss."""
        rank, world = group_rank_world() if self.gather else (0, 1)
        gather = gather_with_grad if world > 1 else (lambda t: t)
        n = patch.shape[0]
        n_global = n * world
        offset = rank * n
        scale = scale_from_param(logit_scale)

        patch_all, region_all, spot_all = gather(patch), gather(region), gather(spot)
        near = None
        if self.neighbour_aware:
            g = gather_no_grad if world > 1 else (lambda t: t)
            near = self.neighbour_matrix(
                offset, n, xy_um=xy_um, slide_idx=slide_idx, sim_emb=sim_emb,
                xy_all=g(xy_um) if xy_um is not None else None,
                slide_all=g(slide_idx) if slide_idx is not None else None,
                sim_all=g(sim_emb.detach()) if sim_emb is not None else None)

        # local sums divided by the global count: the rank mean equals the global mean
        denom = n_global / world
        l_ps = (self._contrastive(patch, spot_all, scale, offset, near)
                + self._contrastive(spot, patch_all, scale, offset, near)) / (2 * denom)
        l_rs = (self._contrastive(region, spot_all, scale, offset, near)
                + self._contrastive(spot, region_all, scale, offset, near)) / (2 * denom)
        l_pr = self._contrastive(patch, region_all, scale, offset, None) / denom

        if pretext is not None and windows is not None:
            valid = region_valid.bool()
            n_valid_global = all_reduce_sum(valid.sum().to(torch.float32)) if world > 1 else valid.sum().float()
            csp_logits = scale * torch.einsum("nkd,nd->nk", windows, pretext)
            labels = region_label.clamp(0, 8).long()
            ce = F.cross_entropy(csp_logits, labels, reduction="none")
            per = n_valid_global.clamp(min=1) / world
            l_csp = (ce * valid).sum() / per
            correct = ((csp_logits.argmax(-1) == labels) & valid).sum().float()
            csp_acc = (correct / per).detach()
        else:
            l_csp = patch.new_zeros(())
            csp_acc = patch.new_zeros(())

        loss = l_ps + l_rs + l_pr + l_csp
        return {"loss": loss, "loss_patch_spot": l_ps, "loss_region_spot": l_rs, "loss_patch_region": l_pr,
                "loss_csp": l_csp, "csp_acc": csp_acc, "logit_scale": scale.detach()}
