"""The backbone registry: name -> builder + the facts the CLI help, ``doctor`` and the tests read.

Light on purpose (no torch import): the CLI builds its help from it without loading a model library.
Builders are named as ``"module:function"`` under ``stamp_st.models`` and imported when a backbone is built
(``backbones.create_backbone``); a builder is called as ``build(name, weights, pretrained, **args,
**timm_kwargs)``. Adding a backbone is adding one entry below (a plain timm architecture needs no new code:
``builder="backbones:timm_architecture", args={"arch": ...}``), or one builder function and its entry.

Every entry states what it supports (``Capabilities``: input side, partial fine-tuning, LoRA);
``backbones.check_backbone_options`` refuses an unsupported option when a config is read, before a run starts, and
tests/test_registries.py checks each declaration against the model the entry builds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import StampInputError
from . import hub


@dataclass(frozen=True)
class Capabilities:
    """What a backbone supports beyond plain embedding and full fine-tuning."""

    input_px: int = 224  # the side its transform feeds it (``--image-px`` defaults to it)
    any_input_px: bool = True  # other ``--image-px`` sides work (a CNN; a timm ViT built with dynamic_img_size)
    blocks: int = 0  # timm ``blocks`` that ``--trainable-blocks`` counts from (0: no partial fine-tuning)
    lora: bool = False  # ``--lora``: adapters on the attention of a timm VisionTransformer
    # the name to align instead, where this name's feature pools the trunk's tokens otherwise than STAMP's
    # pretext token does (``conch_v1``, ``virchow``): such a name embeds but is not aligned, so none of the above
    align_as: str | None = None

    def supports(self, option: str) -> bool:
        """Whether an option (a config key of ``CAPABILITY_OPTIONS``) may be asked of this backbone in alignment."""
        return not self.align_as and {"trainable_blocks": self.blocks > 0, "lora": self.lora,
                                      "image_px": self.any_input_px}[option]

    def describe(self) -> str:
        """One line for ``doctor`` and the help: what the options may ask of this backbone."""
        if self.align_as:
            return f"{self.input_px} px; embedding only: align on {self.align_as}"
        return ", ".join([f"{self.input_px} px" + (" (any --image-px)" if self.any_input_px else " only"),
                          f"--trainable-blocks 0..{self.blocks}" if self.blocks else "no --trainable-blocks",
                          "--lora" if self.lora else "no --lora"])


def vit(blocks: int, input_px: int = 224) -> Capabilities:
    """A timm VisionTransformer built with dynamic_img_size: any side, partial fine-tuning, LoRA."""
    return Capabilities(input_px, True, blocks, True)


def cnn(blocks: int = 0, input_px: int = 224) -> Capabilities:
    """A CNN: any side; partial fine-tuning only where timm gives it ``blocks`` (EfficientNet, not ResNet)."""
    return Capabilities(input_px, True, blocks, False)


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
    # None only where the name decides (a prefix entry) or nothing is built (unsupported): then measured on
    # the meta device when an option asks (backbones.measure_capabilities)
    capabilities: Capabilities | None = None

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
                  offline=True, aliases=("default",), test_kwargs={}, capabilities=cnn(blocks=7)),
    BackboneEntry("uni", "backbones:uni", "UNI ViT-L/16 (Chen et al. 2024); gated weights from a local file",
                  weights_key="uni", capabilities=vit(24)),
    BackboneEntry("conch_vit_b16", "backbones:conch_vit_b16",
                  "CONCH ViT-B/16 visual trunk (Lu et al. 2024); gated weights from a local file",
                  weights_key="conch", aliases=("conch",), capabilities=vit(12)),
    BackboneEntry("resnet18", "backbones:timm_architecture", "ResNet-18 (timm); weights from --backbone-weights",
                  args={"arch": "resnet18"}, test_kwargs={}, capabilities=cnn()),
    BackboneEntry("timm:", "backbones:timm_any", "any timm model; pretrained weights only from a local file",
                  prefix=True),
    BackboneEntry(hub.TIMM_HUB_PREFIX, "backbones:timm_hub", "a timm model on the Hugging Face hub (its config.json)",
                  prefix=True),
    *(BackboneEntry(n, "backbones:hub_model", f"{s.card} (hub: {s.repo})", weights_key=s.weights_key or n,
                    capabilities=Capabilities(s.size_px, align_as=s.trunk_name) if s.trunk_name
                    else vit(s.blocks, s.size_px) if s.blocks else cnn(0, s.size_px))
      for n, s in hub.HUB_MODELS.items()),  # TRIDENT's names, from the hub catalogue
    *(BackboneEntry(n, "backbones:unsupported", "not supported: " + why) for n, why in hub.UNSUPPORTED.items()),
):
    register_backbone(_entry)


# ------------------------------------------------------------------------------------ capabilities
# the alignment options a backbone may not support: config key -> command-line option
CAPABILITY_OPTIONS = {"trainable_blocks": "--trainable-blocks", "lora": "--lora", "image_px": "--image-px"}


def backbones_supporting(option: str) -> list[str]:
    """The registered names that support ``option`` (a key of ``CAPABILITY_OPTIONS``), as the help and errors list them;
    a prefix entry as ``prefix<name>`` (the model named decides)."""
    out: list[str] = []
    for e in {e.name: e for e in BACKBONES.values()}.values():
        if e.prefix:
            out.append(f"{e.name}<name> where the model allows")
        elif e.capabilities is not None and e.capabilities.supports(option):
            out.append(e.name)
    return out


def declared_capabilities() -> dict[str, Capabilities]:
    """The declared capabilities by registered name (aliases and undeclared entries aside)."""
    return {e.name: e.capabilities for e in BACKBONES.values() if e.capabilities is not None}
