"""The STAMP model (METHOD.md §5): gene encoder + image backbone with the pretext token + four linear heads
+ one temperature, under the release's parameter names so its weights load unchanged
(``spot_backbone.*``, ``spot_projection``, ``visual_backbone.{base_model.*, p_visual, ref_pos_embed}``,
``patch_projection``, ``region_projection``, ``positioning_projection``, ``logit_scale``).

Embeddings:

- ``encode_image(x, space="backbone")`` -> **Stamp_V**: the aligned image encoder's pooled feature of the
  patch pass (CLS with the learnable pretext token), before any head; what users run on any H&E.
- ``encode_image(x)`` -> the **image joint** embedding: ``patch_projection`` of Stamp_V into the 512-d space
  shared with the genes, L2-normalised (the release's ``img_emb``).
- ``encode_genes`` -> **Stamp_G**, the **gene joint** embedding: ``spot_projection`` of the pooled gene-encoder
  states, L2-normalised, in the same space.
- ``fuse`` -> **Stamp_F** = ``concat(image joint, gene joint)`` (1024-d; each half unit-norm, so both
  modalities weigh the same in any Euclidean or cosine method). The paper leaves the fusion undefined; this is
  ours.

``forward`` takes tensors by keyword (raw inputs, or the cached outputs of its frozen parts) and returns the
features the Stage-2 losses compare; it knows no batch layout. The Stage-2 task
(``training.align_task.AlignTask``) maps batch and cache entries onto its keywords and owns the pairs of
spots, the augmentation switch and the losses (``training.losses``); the caches are
``training.align_caches``'.

``released=True`` reproduces the release: gene states pooled over positions 3.. with padding (its quirk),
CSP windows reshaped rather than transposed (its ``vit_grid_pooling``: ``pretext.csp_windows``), negatives
not shared across ranks, no neighbour handling, no standardisation of the pooled gene states
(``gene_norm``). Otherwise padding is excluded from the mean.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StampInputError
from .backbones import Backbone, ImageTransform, normalise_images
from .gene_encoder import GeneEncoder
from .pretext import PretextConvNet, PretextViT, csp_windows, dihedral_augment

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # the release's temperature 0.07
LOGIT_SCALE_MAX = 100.0
PROJ_DIM = 512


def scale_from_param(logit_scale: torch.Tensor) -> torch.Tensor:
    """The one place the temperature is clamped: exp(param) capped at 100 (open_clip's bound)."""
    return logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)


class StampModel(nn.Module):
    def __init__(self, gene_encoder: GeneEncoder, backbone: Backbone, proj_dim: int = PROJ_DIM,
                 released: bool = False, freeze_gene_encoder: bool = False, temperature_init: float | None = None):
        super().__init__()
        if backbone.head is not None:
            raise StampInputError(
                f"backbone '{backbone.name}' gives a pooled feature ({backbone.embed_dim}-d) that is not its trunk's "
                "own token, which STAMP's pretext token builds on",
                hint=f"align on '{backbone.trunk_name}' (the same weights, the trunk's class token)")
        self.spot_backbone = gene_encoder
        self.visual_backbone = PretextViT(backbone.model) if backbone.is_vit else PretextConvNet(backbone.model)
        d_img, d_gene = backbone.embed_dim, gene_encoder.config.d_model
        # Pooled gene states share one dominant direction (cosine ~0.9999 between spots for a briefly
        # trained encoder), which leaves the contrastive heads almost no spot-to-spot signal to learn from;
        # standardising each feature over the batch (running statistics at inference) restores it. Off in
        # released mode, whose weights were trained without it.
        self.gene_norm = nn.Identity() if released else nn.BatchNorm1d(d_gene, affine=False)
        self.spot_projection = nn.Linear(d_gene, proj_dim)
        self.patch_projection = nn.Linear(d_img, proj_dim)
        self.region_projection = nn.Linear(d_img, proj_dim)
        self.positioning_projection = nn.Linear(d_img, proj_dim)
        # the release's 0.07; a few thousand spots overfit that sharp a softmax, and a warmer start
        # (e.g. 1.0, closer to regression onto the gene features) transfers better to unseen sections
        init = LOGIT_SCALE_INIT if temperature_init is None else float(-torch.log(torch.tensor(temperature_init)))
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.backbone_name = backbone.name
        self.backbone_kwargs = dict(backbone.create_kwargs)
        self.transform: ImageTransform = backbone.transform
        self.native_um_per_px = backbone.native_um_per_px
        self.released = released
        self.pooling = "released" if released else "mean"
        self.freeze_gene_encoder = False
        self.lora: dict | None = None  # set by models.lora.apply_lora
        if freeze_gene_encoder:
            self.set_gene_encoder_frozen(True)

    # ------------------------------------------------------------------ configuration
    def set_gene_encoder_frozen(self, frozen: bool = True) -> None:
        """Frozen (the paper): no gradients, eval mode, and cached gene features may replace the encoder."""
        self.freeze_gene_encoder = frozen
        self.spot_backbone.requires_grad_(not frozen)
        if frozen:
            self.spot_backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_gene_encoder:
            self.spot_backbone.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        base = self.visual_backbone.base_model
        if hasattr(base, "set_grad_checkpointing"):
            base.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ inputs
    def prepare_images(self, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float NCHW on the images' device; float NCHW is taken as
        already normalised."""
        if images.dtype != torch.uint8:
            return images
        t = self.transform
        return normalise_images(images, t.mean, t.std, t.size_px if resize else None, t.interpolation)

    # ------------------------------------------------------------------ features
    def gene_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled, unprojected gene feature [N, d_gene] (what ``precompute_gene_embeddings`` caches)."""
        ctx = torch.no_grad() if self.freeze_gene_encoder else nullcontext()
        with ctx:
            return self.spot_backbone.pool(tokens, self.pooling)

    def encode_image(self, images: torch.Tensor | None = None, space: str = "joint",
                     patch_feat: torch.Tensor | None = None) -> torch.Tensor:
        """The image joint embedding ([N, 512] L2-normalised ``patch_projection``, the release's ``img_emb``),
        from images or Stamp_V (``patch_feat``: cached, or computed once for both outputs);
        ``space="backbone"``: Stamp_V itself, the image encoder's pooled feature before the head.
        (``space="shared"``, the earlier name of the joint space, is accepted.)"""
        if patch_feat is None:
            patch_feat = self.visual_backbone.forward_patch(self.prepare_images(images))
        if space == "backbone":
            return patch_feat
        return F.normalize(self.patch_projection(patch_feat), dim=-1)

    def encode_genes(self, tokens: torch.Tensor | None = None, gene_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Stamp_G, the gene joint embedding: [N, 512] L2-normalised, from storage tokens or a cached pooled
        feature."""
        if gene_feat is None:
            gene_feat = self.gene_features(tokens)
        gene_feat = self.gene_norm(gene_feat.to(self.spot_projection.weight.dtype))
        return F.normalize(self.spot_projection(gene_feat), dim=-1)

    @staticmethod
    def fuse(image_joint: torch.Tensor, gene_joint: torch.Tensor) -> torch.Tensor:
        """Stamp_F = concat(L2norm(image joint), L2norm(gene joint)), [N, 1024]: both sides of the shared space."""
        return torch.cat([F.normalize(image_joint, dim=-1), F.normalize(gene_joint, dim=-1)], dim=-1)

    # ------------------------------------------------------------------ the features training aligns
    def forward(self, *, thumb: torch.Tensor, patch: torch.Tensor | None = None,
                region: torch.Tensor | None = None, patch_feat: torch.Tensor | None = None,
                patch_trunk_map: torch.Tensor | None = None, region_map: torch.Tensor | None = None,
                region_trunk_map: torch.Tensor | None = None, gene_tokens: torch.Tensor | None = None,
                gene_feat: torch.Tensor | None = None, augment: bool = False,
                generator: torch.Generator | None = None) -> dict:
        """Every embedding the Stage-2 losses compare, for N spots, on the model's device.

        Image side, one of each pair: ``patch`` (uint8 [N, H, W, 3] or normalised float NCHW) or Stamp_V
        (``patch_feat``, a frozen backbone's) or the frozen trunk's map of the patch (``patch_trunk_map``);
        ``region`` or the backbone's map of it (``region_map``) or the trunk's (``region_trunk_map``);
        ``thumb`` uint8 [N, 16, 16, 3] (the pretext token's input). Gene side: storage ``gene_tokens`` [N, L]
        or the pooled states of a frozen encoder (``gene_feat``). ``augment``: random rotations / mirrorings
        of the patch pass (or of its trunk map); the region pass is left as is (its 3 x 3 label would move);
        ``generator``: drawn for the global batch (``pretext.dihedral_augment``).

        Returns ``image_joint``, ``region_joint``, ``gene_joint``, ``pretext_joint`` [N, 512],
        ``windows_joint`` [N, 9, 512] (all L2-normalised) and ``gene_feat`` (pooled gene states)."""
        t = self.transform
        vb = self.visual_backbone
        thumb = normalise_images(thumb, t.mean, t.std, None)
        if patch_feat is not None:
            patch_f = patch_feat
        elif patch_trunk_map is not None:
            patch_f = vb.patch_from_trunk(dihedral_augment(patch_trunk_map, generator) if augment else patch_trunk_map)
        else:
            images = self.prepare_images(patch)
            patch_f = vb.forward_patch(dihedral_augment(images, generator) if augment else images)
        if region_map is None and region_trunk_map is not None:
            region_map = vb.region_map_from_trunk(region_trunk_map)
        if region_map is not None:
            region_f, pretext_f, token_map = vb.region_from_map(region_map, thumb)
        else:
            region_f, pretext_f, token_map = vb.forward_region(self.prepare_images(region), thumb)
        windows = csp_windows(token_map, released=self.released)
        if gene_feat is None:
            gene_feat = self.gene_features(gene_tokens)
        proj = self.positioning_projection
        return {"image_joint": self.encode_image(patch_feat=patch_f),
                "region_joint": F.normalize(self.region_projection(region_f), dim=-1),
                "gene_joint": self.encode_genes(gene_feat=gene_feat),
                "pretext_joint": F.normalize(proj(pretext_f), dim=-1),
                "windows_joint": F.normalize(proj(windows), dim=-1),
                "gene_feat": gene_feat}

    def no_weight_decay(self) -> set[str]:
        names = {"logit_scale", "visual_backbone.p_visual"}
        base = self.visual_backbone.base_model
        for n in ("cls_token", "pos_embed", "reg_token"):
            if getattr(base, n, None) is not None:
                names.add(f"visual_backbone.base_model.{n}")
        names |= {"spot_backbone." + n for n in self.spot_backbone.no_weight_decay()}
        return names

    def fsdp_units(self) -> list[nn.Module]:
        base = self.visual_backbone.base_model
        units = list(getattr(base, "blocks", []))
        return units + list(self.spot_backbone.encoder.layers)

    # ------------------------------------------------------------------ description
    def architecture(self) -> dict:
        """Everything ``build_stamp_model`` needs to rebuild this model (weights aside)."""
        return {"gene_encoder": self.spot_backbone.config.to_json(), "backbone": self.backbone_name,
                "backbone_kwargs": self.backbone_kwargs,
                "proj_dim": self.patch_projection.out_features, "released": self.released,
                "transform": self.transform.to_json(), "native_um_per_px": self.native_um_per_px,
                "pretext": "vit" if isinstance(self.visual_backbone, PretextViT) else "convnet",
                "lora": self.lora}


def build_stamp_model(architecture: dict, **kwargs) -> StampModel:
    """Rebuild an (untrained) StampModel from ``StampModel.architecture()``; weights are loaded after."""
    from .backbones import create_backbone

    name = architecture["backbone"]
    backbone = create_backbone(name, pretrained=False, **architecture.get("backbone_kwargs", {}))
    if backbone.head is not None:  # saved before conch_v1 / virchow2 gave TRIDENT's pooled feature: their trunk
        backbone = create_backbone(backbone.trunk_name, pretrained=False, **architecture.get("backbone_kwargs", {}))
        backbone.name = name
    backbone.transform = ImageTransform.from_json(architecture["transform"])
    backbone.native_um_per_px = architecture.get("native_um_per_px")
    enc = GeneEncoder(architecture["gene_encoder"])
    model = StampModel(enc, backbone, proj_dim=architecture.get("proj_dim", PROJ_DIM),
                       released=architecture.get("released", False), **kwargs)
    if architecture.get("lora"):
        from .lora import apply_lora

        lo = architecture["lora"]
        apply_lora(model, lo["r"], lo["alpha"], lo["dropout"], tuple(lo["targets"]))
    return model


@torch.no_grad()
def precompute_gene_embeddings(model: StampModel, tokens: torch.Tensor, batch_size: int = 256,
                               device: str | torch.device | None = None) -> torch.Tensor:
    """Pooled gene features [N, d_gene] for a frozen gene encoder, computed once per spot (float32, CPU)."""
    enc = model.spot_backbone
    device = device or next(enc.parameters()).device
    was_training = enc.training
    enc.eval()
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        out.append(enc.pool(tokens[i:i + batch_size].to(device), model.pooling).float().cpu())
    enc.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, enc.config.d_model)



# ---------------------------------------------------------------------- checkpoints (kind "stamp")


def stamp_checkpoint_config(model: StampModel, vocabulary=None, tokenizer: dict | None = None,
                            crop_geometry: dict | None = None, **extra) -> dict:
    """``config.json`` of a STAMP checkpoint: architecture, image size, mean/std, µm/px, crop geometry,
    vocabulary and tokenizer, so that ``load_stamp`` needs nothing else."""
    from .checkpoint import checkpoint_config

    if crop_geometry is None:
        from ..preprocessing.crops import CropGeometry

        crop_geometry = CropGeometry().to_json()
    arch = model.architecture()
    vocab_json = vocabulary.to_json() if hasattr(vocabulary, "to_json") else vocabulary
    return checkpoint_config(
        "stamp", arch, vocabulary=vocab_json, tokenizer=tokenizer,
        backbone=arch["backbone"], image_size_px=arch["transform"]["size_px"],
        mean=list(arch["transform"]["mean"]), std=list(arch["transform"]["std"]),
        input_um_per_px=(crop_geometry["patch_um"] / crop_geometry["out_px"]), crop_geometry=crop_geometry,
        gene_pooling=model.pooling, embeddings={"stamp_v": "pooled feature of the patch pass, before the heads [d_image]",
                                                "stamp_v_joint": "L2norm(patch_projection(stamp_v)) [512]",
                                                "stamp_g": "L2norm(spot_projection(pooled genes)) [512]",
                                                "stamp_f": "concat(stamp_v_joint, stamp_g) [1024]"}, **extra)


def save_stamp(directory, model: StampModel, overwrite: bool = False, **config_kwargs):
    from .checkpoint import save_checkpoint

    return save_checkpoint(directory, model.state_dict(), stamp_checkpoint_config(model, **config_kwargs),
                           overwrite=overwrite)


def load_stamp(path, device: str | torch.device = "cpu", **model_kwargs) -> StampModel:
    """A STAMP checkpoint folder -> StampModel in eval mode (config and weights from the folder only)."""
    from ..errors import StampInputError
    from .checkpoint import load_checkpoint, load_state_checked

    sd, cfg = load_checkpoint(path, device="cpu", expect_kind="stamp")
    try:
        model = build_stamp_model(cfg["architecture"], **model_kwargs)
    except (KeyError, TypeError, AttributeError) as err:  # a hand-edited or damaged config.json
        raise StampInputError(f"config.json does not describe a STAMP model ({type(err).__name__}: {err})", path,
                              "the checkpoint's config.json is damaged: use an intact checkpoint") from err
    missing, unexpected = load_state_checked(model, sd, path)
    # BatchNorm layers frozen during training (partial fine-tuning) carry no batch counter
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise StampInputError(f"checkpoint does not fit its architecture: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}", path, "the checkpoint is damaged or from another version")
    model.stamp_config = cfg
    return model.to(device).eval()
