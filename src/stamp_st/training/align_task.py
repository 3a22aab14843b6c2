"""The Stage-2 training task (METHOD.md §5): what the engine trains. It wraps a ``StampModel`` (which only
returns features) with the batch layout (corpus items are pairs of same-slide spots, flattened to 2B spots),
the augmentation switch and the losses (``training.losses.StampLoss``). Checkpoints hold the model's own
parameter names (``checkpoint_prefix``), so files are those of the model alone."""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..models.stamp import StampModel
from .losses import StampLoss

# per-spot batch entries; ``gene_feat`` / ``patch_feat`` + ``region_map`` / ``patch_trunk`` + ``region_trunk``
# are cached outputs of a frozen gene encoder / frozen CNN backbone / frozen CNN trunk that replace
# ``tokens`` / ``patch`` + ``region`` (training.align)
SPOT_KEYS = ("patch", "region", "region_label", "region_valid", "thumb", "tokens", "xy_um", "gene_feat",
             "patch_feat", "region_map", "patch_trunk", "region_trunk")
AUGMENTATIONS = ("none", "dihedral")


def slide_index(slide_ids) -> torch.Tensor:
    """Slide id strings -> int64 (CRC32), equal on every rank without any communication."""
    return torch.tensor([zlib.crc32(str(s).encode()) for s in slide_ids], dtype=torch.int64)


def flatten_batch(batch: dict) -> dict:
    """Corpus items hold two same-slide spots: [B, 2, ...] -> [2B, ...]; slide ids repeated per spot."""
    out = dict(batch)
    paired = batch["thumb"].ndim == 5  # thumbnails are never replaced by cached features
    for k in SPOT_KEYS:
        if k in batch and batch[k] is not None and paired:
            v = batch[k]
            out[k] = v.reshape(v.shape[0] * v.shape[1], *v.shape[2:])
    sid = batch.get("slide_id")
    if sid is not None and not torch.is_tensor(sid):
        sid = list(sid)
        if paired:
            sid = [s for s in sid for _ in range(2)]
        out["slide_idx"] = slide_index(sid)
    return out


class AlignTask(nn.Module):
    """``forward(batch)`` -> dict with the scalar ``loss``, the four losses, CSP accuracy and the temperature.

    ``gather``: negatives from every rank (off in released mode); ``neighbour_radius_um`` /
    ``expr_sim_threshold`` / ``neighbour_mode``: neighbour-aware negatives (``StampLoss``); ``augment``:
    ``"dihedral"`` rotates / mirrors the patch pass in training mode."""

    checkpoint_prefix = "model."

    def __init__(self, model: StampModel, gather: bool = True, neighbour_radius_um: float | None = None,
                 expr_sim_threshold: float | None = None, neighbour_mode: str = "mask", augment: str = "none"):
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        if model.released and (neighbour_radius_um is not None or expr_sim_threshold is not None):
            raise ValueError("neighbour-aware negatives are not part of the release: off in released mode")
        self.model = model
        self.augment = augment
        self._noise: torch.Generator | None = None  # set by the engine each step (augmentations)
        self.loss_fn = StampLoss(gather=gather and not model.released, neighbour_radius_um=neighbour_radius_um,
                                 expr_sim_threshold=expr_sim_threshold, neighbour_mode=neighbour_mode)

    def no_weight_decay(self) -> set[str]:
        return {self.checkpoint_prefix + n for n in self.model.no_weight_decay()}

    def fsdp_units(self) -> list[nn.Module]:
        return self.model.fsdp_units()

    def seed_batch_noise(self, seed: int) -> None:
        """Engine hook: the step's seed, the same on every rank (augmentations drawn for the global batch)."""
        self._noise = torch.Generator()
        self._noise.manual_seed(int(seed))

    def forward(self, batch: dict) -> dict:
        b = flatten_batch(batch)
        m = self.model
        dev = m.logit_scale.device
        f = m(b, augment=self.augment == "dihedral" and self.training, generator=self._noise)
        xy = b.get("xy_um")
        slide_idx = b.get("slide_idx")
        return self.loss_fn(
            patch=f["patch"], region=f["region"], spot=f["spot"], pretext=f["pretext"], windows=f["windows"],
            region_label=b["region_label"].to(dev),
            region_valid=b["region_valid"].to(dev),
            logit_scale=m.logit_scale,
            xy_um=xy.to(dev) if xy is not None else None,
            slide_idx=slide_idx.to(dev) if slide_idx is not None else None,
            sim_emb=f["gene_feat"] if self.loss_fn.expr_sim_threshold is not None else None,
        )
