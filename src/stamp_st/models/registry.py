"""The backbone registry: name -> builder + the facts the CLI help, ``doctor`` and the tests read.

Light on purpose (no torch import): the CLI builds its help from it without loading a model library.
Builders are named as ``"module:function"`` under ``stamp_st.models`` and imported when a backbone is built
(``backbones.create_backbone``); a builder is called as ``build(name, weights, pretrained, **args,
**timm_kwargs)``. Adding a backbone is adding one entry below (a plain timm architecture needs no new code:
``builder="backbones:timm_architecture", args={"arch": ...}``), or one builder function and its entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import StampInputError
from . import hub


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    builder: str  # "module:function" under stamp_st.models
    description: str
    weights_key: str | None = None  # stamp_st.weights lookup key of its local weight file
    offline: bool = False  # pretrained weights without any download or gated file
    aliases: tuple[str, ...] = ()
    prefix: bool = False  # builds every name that starts with ``name`` (``timm:<any timm name>``)
    args: dict = field(default_factory=dict)  # fixed keyword arguments of the builder
    test_kwargs: dict | None = None  # built (random init) by the tests with these timm arguments; None: too big

    def load_builder(self) -> Callable:
        module, func = self.builder.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), func)


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    for key in (entry.name, *entry.aliases):
        if key in BACKBONES:
            raise ValueError(f"backbone {key!r} is registered twice")
        BACKBONES[key] = entry
    return entry


def backbone_names() -> list[str]:
    """Registered names (aliases aside; a prefix shown as ``prefix<name>``): what the CLI help lists."""
    out: list[str] = []
    for e in BACKBONES.values():
        shown = f"{e.name}<name>" if e.prefix else e.name
        if shown not in out:
            out.append(shown)
    return out


def backbone_entry(name: str) -> BackboneEntry:
    """The entry that builds ``name``: an exact name or alias, else the longest matching prefix."""
    if name in BACKBONES and not BACKBONES[name].prefix:
        return BACKBONES[name]
    prefixes = [e for k, e in BACKBONES.items() if e.prefix and name.startswith(k)]
    if prefixes:
        return max(prefixes, key=lambda e: len(e.name))
    raise StampInputError(f"unknown backbone '{name}'", None, f"choose one of {', '.join(backbone_names())}")


for _entry in (
    BackboneEntry("efficientnet_lite0", "backbones:efficientnet_lite0", "ImageNet EfficientNet-Lite0 (offline default)",
                  offline=True, aliases=("default",), test_kwargs={}),
    BackboneEntry("uni", "backbones:uni", "UNI ViT-L/16 (Chen et al. 2024); gated weights from a local file",
                  weights_key="uni"),
    BackboneEntry("conch_vit_b16", "backbones:conch_vit_b16",
                  "CONCH ViT-B/16 visual trunk (Lu et al. 2024); gated weights from a local file",
                  weights_key="conch", aliases=("conch",)),
    BackboneEntry("resnet18", "backbones:timm_architecture", "ResNet-18 (timm); weights from --backbone-weights",
                  args={"arch": "resnet18"}, test_kwargs={}),
    BackboneEntry("timm:", "backbones:timm_any", "any timm model; pretrained weights only from a local file",
                  prefix=True),
    BackboneEntry(hub.TIMM_HUB_PREFIX, "backbones:timm_hub", "a timm model on the Hugging Face hub (its config.json)",
                  prefix=True),
    *(BackboneEntry(n, "backbones:hub_model", f"{s.card} (hub: {s.repo})", weights_key=s.weights_key or n)
      for n, s in hub.HUB_MODELS.items()),  # TRIDENT's names, from the hub catalogue
    *(BackboneEntry(n, "backbones:unsupported", "not supported: " + why) for n, why in hub.UNSUPPORTED.items()),
):
    register_backbone(_entry)
