"""The pretext token (METHOD.md §5) and cross-scale patch localisation (CSP) pooling.

ViT (``PretextViT``, parameter names as in the release: ``base_model.*``, ``p_visual``, ``ref_pos_embed``):
one extra token is inserted right after the prefix tokens (CLS, and registers where a model has them),
without a positional embedding.

- patch pass: the token is the learnable ``p_visual``; the CLS output is the patch feature.
- region pass: the token is ``ref_pos_embed(patch_embed(thumb))``, the patch-embedding of the 16 x 16 px
  thumbnail of the *patch* mapped by a Linear D -> D; outputs the region feature (CLS), the pretext
  output and the region token grid, whose size comes from the actual input (224 px / 16 = 14 x 14).
  A thumbnail whose side differs from the model's patch size is resized to it first.

Non-ViT (``PretextConvNet``), the documented equivalent: a CNN has no token sequence to extend, so the
pretext query is built from the thumbnail by a small MLP (``thumb_mlp``) and lets one cross-attention
layer (``pretext_attn``) read the region's feature map, as the pretext token reads the region tokens
through self-attention in a ViT; the feature map itself plays the role of the token grid and the
globally pooled map the role of CLS. ``p_visual`` has no counterpart: the patch pass is the plain CNN.

CSP windows (``csp_windows``): the release pools its 14 x 14 token map with 6 x 6 windows at stride 4
(windows start at 0, 4, 8). Generalised per axis from the actual grid g: stride s = max(1, ceil(g/3) - 1)
and window w = g - 2s, so three windows tile the axis exactly, overlap symmetrically and reproduce
(6, 4) at g = 14 (g = 12: (6, 3); g = 16: (6, 5); g = 7: (3, 2)). Window k = row*3 + col, the label order.

The window *means* are the release's; how they become nine D-vectors is not. The release's
``vit_grid_pooling`` ends with ``.view(B, -1, D)`` on its [B, D, 3, 3] means: a reshape, not a transpose,
so each of its nine "windows" is a run of D consecutive numbers of the channel-major block (mixing channels
and windows). Our default is the intended transpose; ``released=True`` (a model in released mode) reproduces
the reshape literally, because the released weights were trained with it (METHOD.md §5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def csp_window_geometry(grid: int) -> tuple[int, int]:
    """(window, stride) in tokens for one axis of a ``grid``-long token map; see the module docstring."""
    if grid < 3:
        raise ValueError(f"a token grid of {grid} cannot be split into 3 x 3 windows")
    stride = max(1, math.ceil(grid / 3) - 1)
    return grid - 2 * stride, stride


def csp_windows(token_map: torch.Tensor, released: bool = False) -> torch.Tensor:
    """[N, D, gh, gw] -> [N, 9, D]: mean of each of the 3 x 3 windows, row-major (label = row*3 + col).

    ``released=True``: the release's arithmetic (unfold, mean over the window) and its final reshape of the
    channel-major [N, D, 3, 3] block into [N, 9, D] (see the module docstring)."""
    n, d, gh, gw = token_map.shape
    (wh, sh), (ww, sw) = csp_window_geometry(gh), csp_window_geometry(gw)
    if released:
        patches = token_map.unfold(2, wh, sh).unfold(3, ww, sw)  # [N, D, 3, 3, wh, ww]
        pooled = patches.contiguous().view(n, d, 3, 3, -1).mean(dim=-1)
        return pooled.view(n, -1, d)
    pooled = F.avg_pool2d(token_map, kernel_size=(wh, ww), stride=(sh, sw))
    assert pooled.shape[-2:] == (3, 3), pooled.shape
    return pooled.flatten(2).transpose(1, 2)


class PretextViT(nn.Module):
    """A timm VisionTransformer with the pretext token; ``base_model`` is the unmodified timm model."""

    def __init__(self, base_model: nn.Module):
        super().__init__()
        self.base_model = base_model
        dim = base_model.embed_dim
        self.p_visual = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.p_visual, std=0.02)
        self.ref_pos_embed = nn.Linear(dim, dim)
        self.embed_dim = dim

    @property
    def patch_px(self) -> int:
        return int(self.base_model.patch_embed.patch_size[0])

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed + positional embedding; returns tokens [N, prefix + gh*gw, D] and the grid."""
        base = self.base_model
        t = base.patch_embed(x)
        if t.ndim == 4:  # dynamic_img_size: NHWC
            grid = (t.shape[1], t.shape[2])
        else:
            grid = tuple(base.patch_embed.grid_size)
        return base._pos_embed(t), grid

    def _run(self, tokens: torch.Tensor, pretext: torch.Tensor) -> torch.Tensor:
        base = self.base_model
        npt = base.num_prefix_tokens
        x = torch.cat([tokens[:, :npt], pretext.to(tokens.dtype), tokens[:, npt:]], dim=1)
        x = base.patch_drop(x)
        x = base.norm_pre(x)
        if getattr(base, "grad_checkpointing", False) and self.training:
            from timm.models._manipulate import checkpoint_seq

            x = checkpoint_seq(base.blocks, x)
        else:
            x = base.blocks(x)
        return base.norm(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Image feature: CLS (UNI's ``global_pool='token'``) or the mean of the grid tokens otherwise."""
        base = self.base_model
        npt = base.num_prefix_tokens
        if base.global_pool == "token" or not base.global_pool:
            f = x[:, 0]
        else:
            f = x[:, npt + 1:].mean(dim=1)
        return base.fc_norm(f)

    def forward_patch(self, images: torch.Tensor) -> torch.Tensor:
        tokens, _ = self._tokens(images)
        x = self._run(tokens, self.p_visual.expand(tokens.shape[0], -1, -1))
        return self._pool(x)

    def embed_thumb(self, thumbs: torch.Tensor) -> torch.Tensor:
        """[N, 3, t, t] normalised thumbnails -> pretext tokens [N, 1, D]."""
        p = self.patch_px
        if thumbs.shape[-1] != p or thumbs.shape[-2] != p:
            thumbs = F.interpolate(thumbs, size=(p, p), mode="bilinear", antialias=True, align_corners=False)
        pe = self.base_model.patch_embed
        t = pe.norm(pe.proj(thumbs).flatten(2).transpose(1, 2))  # [N, 1, D], the patch_embed of the thumbnail
        return self.ref_pos_embed(t)

    def forward_region(self, images: torch.Tensor, thumbs: torch.Tensor):
        """-> region feature [N, D], pretext output [N, D], token map [N, D, gh, gw]."""
        tokens, (gh, gw) = self._tokens(images)
        x = self._run(tokens, self.embed_thumb(thumbs))
        npt = self.base_model.num_prefix_tokens
        grid = x[:, npt + 1:]
        token_map = grid.transpose(1, 2).reshape(x.shape[0], x.shape[-1], gh, gw)
        return self._pool(x), x[:, npt], token_map


DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))  # the 8 rotations / mirrorings


def dihedral_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each map of ``x`` [N, C, H, W] under one of the 8 rotations / mirrorings, drawn per sample.

    H&E has no preferred orientation, so these are label-preserving; applied to images or to cached
    feature maps of a frozen trunk (where they stand in for rotating the image, which the cache forbids).
    ``generator`` (seeded alike on every rank): the choices are drawn for the global batch and cut to this rank's
    rows (``distributed.rank_rows``), so N processes augment as one process with the whole batch does."""
    if generator is None:
        choice = torch.randint(0, len(DIHEDRAL), (x.shape[0],)).tolist()
    else:
        from ..distributed import rank_rows

        rows, total = rank_rows(x.shape[0])
        choice = torch.randint(0, len(DIHEDRAL), (total,), generator=generator)[rows].tolist()
    out = torch.empty_like(x) if x.shape[-1] == x.shape[-2] else None
    if out is None:  # non-square maps: mirrorings only
        flip = torch.tensor([c % 2 == 1 for c in choice], device=x.device)
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    for c in set(choice):
        idx = [i for i, ci in enumerate(choice) if ci == c]
        k, flip = DIHEDRAL[c]
        y = torch.rot90(x[idx], k, (-2, -1))
        out[idx] = y.flip(-1) if flip else y
    return out


class PretextConvNet(nn.Module):
    """The non-ViT equivalent (see the module docstring); ``base_model`` is a timm CNN with no head.

    Partial fine-tuning splits the CNN into a frozen ``trunk`` (stem + first blocks) and a trainable
    ``tail`` (last ``tail_blocks`` blocks + conv head): ``_map = tail(trunk(x))``, so a frozen trunk's
    output can be computed once per crop and cached (``training.align_caches.TrunkFeatureCache``)."""

    def __init__(self, base_model: nn.Module, thumb_px: int = 16, heads: int = 4):
        super().__init__()
        self.base_model = base_model
        self.tail_blocks: int | None = None  # set by set_tail_blocks for partial fine-tuning
        dim = base_model.num_features
        self.embed_dim = dim
        self.thumb_px = thumb_px
        self.thumb_mlp = nn.Sequential(nn.Linear(3 * thumb_px * thumb_px, dim), nn.GELU(), nn.Linear(dim, dim))
        heads = heads if dim % heads == 0 else 1
        self.pretext_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.pretext_norm = nn.LayerNorm(dim)

    def _map(self, images: torch.Tensor) -> torch.Tensor:
        return self.base_model.forward_features(images)  # [N, C, h, w]

    def supports_trunk_split(self) -> bool:
        """timm's EfficientNet family: forward_features = conv_stem, bn1, blocks, conv_head, bn2."""
        b = self.base_model
        return all(hasattr(b, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))

    def set_tail_blocks(self, n: int) -> None:
        if not self.supports_trunk_split():
            raise ValueError(f"{type(self.base_model).__name__} cannot be split into a trunk and a tail")
        if not 0 <= n <= len(self.base_model.blocks):
            raise ValueError(f"tail_blocks must be within 0..{len(self.base_model.blocks)}")
        self.tail_blocks = n

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Stem and the frozen blocks: everything that a cache may replace."""
        b = self.base_model
        x = b.bn1(b.conv_stem(images))
        cut = len(b.blocks) - (self.tail_blocks or 0)
        return b.blocks[:cut](x)

    def tail(self, trunk_map: torch.Tensor) -> torch.Tensor:
        """The trainable last blocks and conv head: trunk map -> feature map [N, C, h, w]."""
        b = self.base_model
        cut = len(b.blocks) - (self.tail_blocks or 0)
        return b.bn2(b.conv_head(b.blocks[cut:](trunk_map)))

    def patch_from_trunk(self, trunk_map: torch.Tensor) -> torch.Tensor:
        return self.tail(trunk_map).mean(dim=(2, 3))

    def region_map_from_trunk(self, trunk_map: torch.Tensor) -> torch.Tensor:
        return self._at_least_3x3(self.tail(trunk_map))

    def forward_patch(self, images: torch.Tensor) -> torch.Tensor:
        return self._map(images).mean(dim=(2, 3))

    @staticmethod
    def _at_least_3x3(fmap: torch.Tensor) -> torch.Tensor:
        if fmap.shape[-1] < 3 or fmap.shape[-2] < 3:  # small inputs: upsample so 3 x 3 windows exist
            fmap = F.interpolate(fmap, size=(max(3, fmap.shape[-2]), max(3, fmap.shape[-1])), mode="nearest")
        return fmap

    def region_map(self, images: torch.Tensor) -> torch.Tensor:
        """The region's feature map [N, C, h, w] (at least 3 x 3): all of the region pass that does not
        depend on trainable pretext parameters, so a frozen CNN's maps can be computed once and cached."""
        return self._at_least_3x3(self._map(images))

    def region_from_map(self, fmap: torch.Tensor, thumbs: torch.Tensor):
        """-> region feature [N, C], pretext output [N, C], the map itself (the token grid)."""
        if thumbs.shape[-1] != self.thumb_px:
            thumbs = F.interpolate(thumbs, size=(self.thumb_px, self.thumb_px), mode="bilinear",
                                   antialias=True, align_corners=False)
        q = self.thumb_mlp(thumbs.flatten(1)).unsqueeze(1)  # [N, 1, C]
        kv = fmap.flatten(2).transpose(1, 2)  # [N, hw, C]
        attended, _ = self.pretext_attn(q, kv, kv, need_weights=False)
        pretext = self.pretext_norm(q + attended)[:, 0]
        return fmap.mean(dim=(2, 3)), pretext, fmap

    def forward_region(self, images: torch.Tensor, thumbs: torch.Tensor):
        return self.region_from_map(self.region_map(images), thumbs)
