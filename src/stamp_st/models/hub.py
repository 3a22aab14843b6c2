"""Pathology foundation models from the Hugging Face hub, under TRIDENT's names, and ``timm:hf-hub:ORG/NAME``.

Weights come, in order, from: an explicit local file (``--backbone-weights``), ``STAMP_ST_<KEY>_WEIGHTS`` or
``~/.cache/stamp_st/weights/<key>/`` (``stamp_st.weights``), then the hub through timm's ``hf-hub:`` loader
(huggingface_hub: the hub cache ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` are honoured, a
token from ``hf auth login`` or ``HF_TOKEN`` is used for gated repositories). Each entry carries the timm
arguments and the normalisation of its model card; ``pretrained=False`` (rebuilding a STAMP checkpoint that
carries the weights) never touches the network for a registry name.

Each name gives TRIDENT's feature for it (trident/patch_encoder_models/load.py): the same timm graph, input
side, resize + centre crop, interpolation and normalisation, and the same pooling: the class token, except
``virchow`` / ``virchow2`` (class token + mean patch token, 2,560-d) and ``conch_v1`` (CONCH's attention-pooled
512-d feature at 448 px). Other outputs have their own names: ``virchow_cls`` / ``virchow2_cls`` (the 1,280-d
class token) and ``conch_vit_b16`` (CONCH's trunk class token, 768-d at 224 px), which STAMP alignment uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StampInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
TIMM_HUB_PREFIX = "timm:hf-hub:"


def _swiglu_args() -> dict:
    """timm arguments that are classes, not JSON: built when a model is built."""
    import timm.layers
    import torch

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


@dataclass(frozen=True)
class HubModel:
    """One hub backbone: its repository, the timm graph that holds its weights, TRIDENT's preprocessing and
    pooling for its name."""

    repo: str
    arch: str  # timm architecture for a local file / random init (the hub's config.json names it otherwise)
    timm_args: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_px: int = 224
    native_um_per_px: float = 0.5  # model input µm/px: 20x, the magnification all of these were trained at
    weights_key: str = ""  # stamp_st.weights lookup key (default: the name)
    extra_args: Callable[[], dict] | None = None
    card: str = ""
    interpolation: str = "bilinear"  # torchvision Resize's default, which TRIDENT uses unless it names one
    resize_px: int | None = None  # Resize(resize_px) before CenterCrop(size_px); None: size_px
    pooling: str = "token"  # "token": model(x); "cls+mean": class + mean patch token; "conch": CONCH's attention
    # pool; "layer3": a ResNet cut after layer 3 (CLAM's truncated ResNet-50)
    trunk_name: str | None = None  # the name whose feature is the trunk's class token (for alignment)
    blocks: int = 0  # the timm ViT's transformer blocks (--trainable-blocks, --lora); 0: a CNN (neither)


_VIRCHOW_ARGS = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
                 "global_pool": "token", "dynamic_img_size": True}
_HOPTIMUS_ARGS = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
                  "dynamic_img_size": True}

HUB_MODELS: dict[str, HubModel] = {
    "uni_v1": HubModel(
        "MahmoodLab/UNI", "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        IMAGENET_MEAN, IMAGENET_STD, weights_key="uni", blocks=24, card="UNI ViT-L/16 (Chen et al. 2024)"),
    "uni_v2": HubModel(
        "MahmoodLab/UNI2-h", "vit_giant_patch14_224",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
         "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True, "reg_tokens": 8,
         "dynamic_img_size": True},
        IMAGENET_MEAN, IMAGENET_STD, extra_args=_swiglu_args, blocks=24, card="UNI2-h ViT-H/14"),
    "conch_v1": HubModel(
        "MahmoodLab/CONCH", "vit_base_patch16_224", {"img_size": 448, "num_classes": 0, "dynamic_img_size": True},
        OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, size_px=448, weights_key="conch", interpolation="bicubic",
        pooling="conch", trunk_name="conch_vit_b16",
        blocks=12, card="CONCH (Lu et al. 2024): attention-pooled 512-d image feature at 448 px; its pytorch_model.bin"),
    "virchow": HubModel(
        "paige-ai/Virchow", "vit_huge_patch14_224", _VIRCHOW_ARGS, IMAGENET_MEAN, IMAGENET_STD,
        extra_args=_swiglu_args, interpolation="bicubic", pooling="cls+mean", trunk_name="virchow_cls",
        blocks=32, card="Virchow ViT-H/14 (Vorontsov et al. 2024): class + mean patch token, 2,560-d"),
    "virchow_cls": HubModel(
        "paige-ai/Virchow", "vit_huge_patch14_224", _VIRCHOW_ARGS, IMAGENET_MEAN, IMAGENET_STD,
        weights_key="virchow", extra_args=_swiglu_args, interpolation="bicubic",
        blocks=32, card="Virchow ViT-H/14, class token only (1,280-d; TRIDENT's return_cls=True)"),
    "virchow2": HubModel(
        "paige-ai/Virchow2", "vit_huge_patch14_224", {**_VIRCHOW_ARGS, "reg_tokens": 4}, IMAGENET_MEAN,
        IMAGENET_STD, extra_args=_swiglu_args, interpolation="bicubic", pooling="cls+mean", trunk_name="virchow2_cls",
        blocks=32, card="Virchow2 ViT-H/14 (Zimmermann et al. 2024): class + mean patch token, 2,560-d"),
    "virchow2_cls": HubModel(
        "paige-ai/Virchow2", "vit_huge_patch14_224", {**_VIRCHOW_ARGS, "reg_tokens": 4}, IMAGENET_MEAN,
        IMAGENET_STD, weights_key="virchow2", extra_args=_swiglu_args, interpolation="bicubic",
        blocks=32, card="Virchow2 ViT-H/14, class token only (1,280-d; TRIDENT's return_cls=True)"),
    "hoptimus0": HubModel(
        "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", _HOPTIMUS_ARGS,
        HOPTIMUS_MEAN, HOPTIMUS_STD, blocks=40, card="H-optimus-0 ViT-g/14"),
    "hoptimus1": HubModel(
        "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", _HOPTIMUS_ARGS,
        HOPTIMUS_MEAN, HOPTIMUS_STD, blocks=40, card="H-optimus-1 ViT-g/14"),
    "gigapath": HubModel(
        "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
        {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
         "mlp_ratio": 5.33334, "num_classes": 0, "dynamic_img_size": True},
        IMAGENET_MEAN, IMAGENET_STD, interpolation="bicubic", resize_px=256,
        blocks=40, card="Prov-GigaPath tile encoder ViT-g/14 (Xu et al. 2024)"),
    "resnet50": HubModel(
        "timm/resnet50.tv_in1k", "resnet50", {"num_classes": 0}, IMAGENET_MEAN, IMAGENET_STD, native_um_per_px=None,
        pooling="layer3", card="ResNet-50 (torchvision ImageNet weights) to layer 3, average-pooled, 1,024-d "
        "(CLAM's and TRIDENT's truncated ResNet-50)"),
}
# TRIDENT's names for models stamp-st does not build (a different graph than a timm ViT's)
UNSUPPORTED = {
    "conch_v15": "CONCH v1.5 pools its ViT-L tokens with CONCH's own attention head, which stamp-st does not "
                 "implement; use conch_v1, uni_v2, or a timm-loadable model as timm:hf-hub:ORG/NAME",
}
def _hub_error(repo: str, err: Exception, weights_key: str | None) -> StampInputError:
    """What went wrong with the hub, and the two ways out: access, or a local file."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    local = ("download its weights and pass --backbone-weights FILE"
             + (f" (or set STAMP_ST_{weights_key.upper()}_WEIGHTS)" if weights_key else ""))
    if isinstance(err, GatedRepoError):
        what = (f"{repo} is gated on the Hugging Face hub and this machine has no access: request it at "
                f"https://huggingface.co/{repo}, then log in with a token (`hf auth login` or HF_TOKEN)")
    elif isinstance(err, RepositoryNotFoundError):
        what = (f"{repo} was not found on the Hugging Face hub (or is gated and no token was given): check the "
                f"name at https://huggingface.co/{repo} and log in (`hf auth login` or HF_TOKEN)")
    else:
        mode = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub is unreachable"
        what = (f"{repo} is not in the hub cache ({constants.HF_HUB_CACHE}) and {mode} "
                f"({type(err).__name__}): fetch it once where the network works (same HF_HOME)")
    return StampInputError(f"{what}; or {local}", None,
                           hint="stamp-st never needs the hub when a local weight file is given")


def fetch_from_hub(repo: str, weights_key: str | None, fn):
    """Run ``fn``, a call that touches the Hugging Face hub (a download, timm's ``hf-hub:`` loader): hub and network
    failures become one clear StampInputError naming ``repo`` and the local-file way out (``weights_key``)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as err:
        if isinstance(err, FileNotFoundError) and not isinstance(err, LocalEntryNotFoundError):
            raise
        raise _hub_error(repo, err, weights_key) from err
