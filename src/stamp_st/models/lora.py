"""LoRA on the ViT attention (``qkv``) of the STAMP image backbone, through peft: the backbone's own
weights stay frozen, low-rank adapters and everything outside the backbone (pretext token, thumbnail map,
heads, temperature) train. The rank is recorded in ``StampModel.architecture()`` so ``load_stamp`` rebuilds
the same module tree before loading the weights."""

from __future__ import annotations

from ..errors import StampInputError


def apply_lora(model, r: int, alpha: float | None = None, dropout: float = 0.0,
               targets: tuple[str, ...] = ("qkv",)) -> int:
    """Inject adapters in place; returns the number of trainable backbone (adapter) parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    from .pretext import PretextViT

    if not isinstance(model.visual_backbone, PretextViT):
        raise StampInputError("LoRA is offered for ViT backbones only", None,
                              "use --freeze-backbone, or a ViT backbone (uni, conch_vit_b16, timm:vit_*)")
    if r <= 0:
        raise StampInputError(f"LoRA rank must be positive, got {r}")
    base = model.visual_backbone.base_model
    base.requires_grad_(False)
    cfg = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else r, lora_dropout=dropout,
                     target_modules=list(targets), bias="none")
    inject_adapter_in_model(cfg, base)
    n = 0
    for name, p in base.named_parameters():
        p.requires_grad_("lora_" in name)
        n += p.numel() if p.requires_grad else 0
    model.lora = {"r": r, "alpha": cfg.lora_alpha, "dropout": dropout, "targets": list(targets)}
    return n
