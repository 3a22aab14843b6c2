"""The Stage-2 training task (METHOD.md §5): what the engine trains. It wraps a ``StampModel`` (which only
returns features) with the batch layout (corpus items are pairs of same-slide spots, flattened to 2B spots),
the augmentation switch and the losses (``training.losses.StampLoss``). It maps batch and cache entries onto
the model's keywords (``MODEL_INPUTS``), as open_clip's training loop does for ``CLIP.forward(image, text)``.
Checkpoints hold the model's own parameter names (``checkpoint_prefix``), so files are those of the model
alone."""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..models.stamp import StampModel
from .losses import StampLoss

# batch entry -> ``StampModel.forward`` keyword. ``gene_feat`` / ``patch_feat`` + ``region_map`` /
# ``patch_trunk`` + ``region_trunk`` are cached outputs of a frozen gene encoder / frozen CNN backbone / frozen
# CNN trunk that replace ``tokens`` / ``patch`` + ``region`` (``training.align_caches``)
MODEL_INPUTS = {"patch": "patch", "region": "region", "thumb": "thumb", "tokens": "gene_tokens",
                "gene_feat": "gene_feat", "patch_feat": "patch_feat", "region_map": "region_map",
                "patch_trunk": "patch_trunk_map", "region_trunk": "region_trunk_map"}
# cached image features are stored in fp16 (or fp32): the model computes on fp32
CACHED_IMAGE_INPUTS = ("patch_feat", "region_map", "patch_trunk", "region_trunk")
# per-spot batch entries: the model's inputs and what the losses read
SPOT_KEYS = (*MODEL_INPUTS, "region_label", "region_valid", "xy_um")
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


def anchor_rows(x: torch.Tensor) -> torch.Tensor:
    """The anchor spots' rows (index 0 of each pair) of a flattened batch's per-spot tensor."""
    return x[0::2]


class AlignTask(nn.Module):
    """``forward(batch)`` -> dict with the scalar ``loss``, the four losses, CSP accuracy and the temperature.

    ``gather``: negatives from every rank (off in released mode); ``neighbour_radius_um`` /
    ``expr_sim_threshold`` / ``neighbour_mode``: neighbour-aware negatives (``StampLoss``); ``augment``:
    ``"dihedral"`` rotates / mirrors the patch pass in training mode.

    Keeping what the pretrained image encoder knows where the genes have nothing to say: ``freeze_bn_stats``
    keeps every BatchNorm of the image backbone in eval mode (ImageNet statistics, not those of a few
    training slides' stain); ``l2sp_weight`` adds ``weight * sum((w - w_pretrained) ** 2)`` over the
    backbone's trainable weights (L2-SP, Li et al., ICML 2018: a pull towards the starting point instead of
    towards zero); ``hed_scale`` / ``hed_shift``: HED stain jitter of patch and region in training mode
    (``preprocessing.stain``; with a cached trunk the cache holds jittered copies instead)."""

    checkpoint_prefix = "model."

    def __init__(self, model: StampModel, gather: bool = True, neighbour_radius_um: float | None = None,
                 expr_sim_threshold: float | None = None, neighbour_mode: str = "mask", augment: str = "none",
                 freeze_bn_stats: bool = False, l2sp_weight: float = 0.0, hed_scale: float = 0.0,
                 hed_shift: float = 0.0):
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
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.l2sp_weight = float(l2sp_weight)
        self.hed_scale, self.hed_shift = float(hed_scale), float(hed_shift)
        # the starting point of L2-SP: the backbone's trainable weights as they are now (pretrained), kept out
        # of the state dict (a checkpoint holds the model alone)
        self._l2sp_ref: dict[str, torch.Tensor] = {}
        if self.l2sp_weight > 0:
            self._l2sp_ref = {n: p.detach().clone() for n, p in self._backbone_params() if p.requires_grad}

    def _backbone_params(self):
        return ((f"model.visual_backbone.base_model.{n}", p)
                for n, p in self.model.visual_backbone.base_model.named_parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for mod in self.model.visual_backbone.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """L2-SP replaces weight decay on the weights it pulls back to their pretrained values."""
        return {self.checkpoint_prefix + n for n in self.model.no_weight_decay()} | set(self._l2sp_ref)

    def l2sp_penalty(self) -> torch.Tensor | None:
        if not self._l2sp_ref:
            return None
        params = dict(self._backbone_params())
        total = None
        for n, ref in self._l2sp_ref.items():
            p = params[n]
            d = (p.float() - ref.to(p.device, torch.float32)).pow(2).sum()
            total = d if total is None else total + d
        return total

    def _stain_jitter(self, b: dict) -> dict:
        """HED jitter of the raw patch and region of each spot (one draw per spot, the same for both)."""
        import numpy as np

        from ..preprocessing.stain import hed_jitter, hed_jitter_params

        if b.get("patch") is None or b["patch"].dtype != torch.uint8:
            return b  # cached features: the cache holds jittered copies
        n = b["patch"].shape[0]
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # the engine reseeds torch before every step
        scale, shift = hed_jitter_params(n, self.hed_scale, self.hed_shift, np.random.default_rng(seed))
        out = dict(b)
        for k in ("patch", "region"):
            if b.get(k) is not None and b[k].dtype == torch.uint8:
                out[k] = torch.from_numpy(hed_jitter(b[k].cpu().numpy(), scale, shift)).to(b[k].device)
        return out

    def fsdp_units(self) -> list[nn.Module]:
        return self.model.fsdp_units()

    def seed_batch_noise(self, seed: int) -> None:
        """Engine hook: the step's seed, the same on every rank (augmentations drawn for the global batch)."""
        self._noise = torch.Generator()
        self._noise.manual_seed(int(seed))

    def model_inputs(self, b: dict) -> dict:
        """A flat batch's entries as ``StampModel.forward`` keywords, on the model's device."""
        dev = self.model.logit_scale.device
        out = {}
        for key, kw in MODEL_INPUTS.items():
            v = b.get(key)
            if v is not None:
                v = v.to(dev, non_blocking=True)
                out[kw] = v.float() if key in CACHED_IMAGE_INPUTS else v
        return out

    def step(self, batch: dict) -> tuple[dict, dict]:
        """(losses, the model's features) of one batch of pairs (flattened: spot ``2i`` is item ``i``'s anchor,
        ``2i + 1`` its partner); validation reads the features of the same pass (``align_validation``)."""
        b = flatten_batch(batch)
        m = self.model
        dev = m.logit_scale.device
        if self.training and (self.hed_scale > 0 or self.hed_shift > 0):
            b = self._stain_jitter(b)
        f = m(**self.model_inputs(b), augment=self.augment == "dihedral" and self.training, generator=self._noise)
        xy = b.get("xy_um")
        slide_idx = b.get("slide_idx")
        out = self.loss_fn(
            patch=f["image_joint"], region=f["region_joint"], spot=f["gene_joint"], pretext=f["pretext_joint"],
            windows=f["windows_joint"],
            region_label=b["region_label"].to(dev),
            region_valid=b["region_valid"].to(dev),
            logit_scale=m.logit_scale,
            xy_um=xy.to(dev) if xy is not None else None,
            slide_idx=slide_idx.to(dev) if slide_idx is not None else None,
            sim_emb=f["gene_feat"] if self.loss_fn.expr_sim_threshold is not None else None,
        )
        penalty = self.l2sp_penalty() if self.training else None
        if penalty is not None:
            out["l2sp"] = penalty.detach()
            out["loss"] = out["loss"] + self.l2sp_weight * penalty
        return out, f

    def forward(self, batch: dict) -> dict:
        return self.step(batch)[0]
