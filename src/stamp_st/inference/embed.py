"""Embed spots and whole-slide tiles: Stamp_V (image), Stamp_G (genes), Stamp_F (fusion), or a plain backbone.

A model is either a STAMP checkpoint folder (``stamp-st align`` / ``convert-released`` output) or
``backbone:NAME`` (a plain image backbone: the unaligned baseline every result is set beside). Spot patches
are cut at the model's crop geometry (µm, not pixels), so slides at 20x and 40x give the same tissue area.

``pipeline="released"`` feeds a model what the authors' script feeds it instead (their tokens, BGR patches of
224 px at the slide's native resolution, OpenCV's resize: ``preprocessing.release_pipeline``), for the released
weights. Precision: ``auto`` runs the image pass under bf16 autocast on CUDA, except for a released-mode model
(fp32, as the release runs); ``fp32`` / ``bf16`` force it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..embedding_file import (
    OBS_NO_VOCAB_GENES,
    OBSM_BACKBONE,
    OBSM_STAMP_F,
    OBSM_STAMP_G,
    OBSM_STAMP_V,
    OBSM_STAMP_V_JOINT,
)
from ..errors import StampInputError
from ..preprocessing.crops import CropGeometry

BACKBONE_PREFIX = "backbone:"
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Embedder:
    """What a model can embed, behind one call per modality."""

    name: str
    geometry: CropGeometry
    image_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # uint8 NHWC -> {obsm_key: [N, d]}
    gene_fn: Callable[[torch.Tensor], torch.Tensor] | None  # storage tokens [N, L] -> Stamp_G
    tokenizer: object | None  # RankTokenizer of the model's vocabulary
    device: torch.device
    info: dict
    precision: str = "fp32"  # "fp32" or "bf16": autocast of the image pass


def resolve_precision(precision: str, device: torch.device, released: bool) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere and for released-mode models (fp32 is what the release ran)."""
    if precision not in PRECISIONS:
        raise StampInputError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and not released else "fp32"
    return precision


def embedder_autocast(embedder: Embedder):
    """bf16 autocast where the embedder runs in bf16, a no-op otherwise (one rule for every embedding path)."""
    return torch.autocast(embedder.device.type, dtype=torch.bfloat16, enabled=embedder.precision == "bf16")


def load_embedder(model: str, device: str = "auto", backbone_weights: str | None = None,
                  patch_um: float = 112.0, precision: str = "auto") -> Embedder:
    """``model`` = STAMP checkpoint folder, or ``backbone:NAME`` (with optional local weights)."""
    dev = pick_device(device)
    if model.startswith(BACKBONE_PREFIX):
        from ..models.backbones import create_backbone

        bb = create_backbone(model[len(BACKBONE_PREFIX):], weights=backbone_weights).to(dev).eval()
        t = bb.transform

        def image_fn(images):
            # the name's own resize / centre crop (PIL, as TRIDENT's eval_transforms), then normalise on device
            x = t(t.prepare_uint8(images).to(dev))
            return {OBSM_BACKBONE: bb.features(x)}

        geom = CropGeometry(patch_um=patch_um, out_px=t.size_px)
        return Embedder(model, geom, image_fn, None, None, dev, {"kind": "backbone", **bb.to_json()},
                        resolve_precision(precision, dev, released=False))

    from ..models.stamp import load_stamp
    from ..preprocessing.tokenizer import RankTokenizer
    from ..preprocessing.vocab import GeneVocabulary

    _refuse_bare_backbone_name(model)
    net = load_stamp(model, device=dev)
    cfg = net.stamp_config
    geom = CropGeometry.from_json(cfg.get("crop_geometry", {}))
    vocab = GeneVocabulary.from_json(cfg["vocabulary"]) if cfg.get("vocabulary") else None
    tok_cfg = cfg.get("tokenizer") or {}
    tokenizer = None
    if vocab is not None:
        tokenizer = RankTokenizer(vocab, context=int(tok_cfg.get("context", 1500)),
                                  rounded_means=bool(tok_cfg.get("rounded_means", True)))

    def image_fn(images):
        images = images.to(dev)
        feat = net.encode_image(images, space="backbone")
        return {OBSM_STAMP_V: feat, OBSM_STAMP_V_JOINT: net.encode_image(patch_feat=feat)}

    def gene_fn(tokens):
        return net.encode_genes(tokens.to(dev))

    return Embedder(Path(model).name, geom, image_fn, gene_fn, tokenizer, dev, {"kind": "stamp", **cfg},
                    resolve_precision(precision, dev, released=bool(net.released)))


def _refuse_bare_backbone_name(model: str) -> None:
    """A backbone name where a checkpoint folder is expected (TRIDENT's habit: ``embed uni_v1 ...``): say
    what to write instead of "checkpoint folder not found"."""
    from ..models.registry import backbone_entry

    if Path(model).exists():
        return
    try:
        backbone_entry(model)
    except StampInputError:
        return
    raise StampInputError(f"'{model}' is not a checkpoint folder; it is a backbone name: did you mean "
                          f"backbone:{model}?", None,
                          hint=f"write backbone:{model} for the plain backbone, or give a STAMP checkpoint folder")


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@torch.inference_mode()
def embed_patches(embedder: Embedder, slide, centers_xy_px: np.ndarray, um_per_px: float,
                  batch_size: int = 32, desc: str = "embed patches") -> dict[str, np.ndarray]:
    """Image embeddings of patches centred on ``centers_xy_px`` (level-0 px), read batch by batch."""
    from ..readers.pixel_size import check_patch_resolution

    g = embedder.geometry
    side_px = check_patch_resolution(g.patch_um, um_per_px, g.out_px, getattr(slide, "path", None))
    out: dict[str, list[np.ndarray]] = {}
    centers = np.asarray(centers_xy_px, np.float64).reshape(-1, 2)
    for sl in tqdm(list(_batches(len(centers), batch_size)), desc=desc, leave=False):
        imgs = np.stack([slide.read_square(c, side_px, g.out_px) for c in centers[sl]])
        with embedder_autocast(embedder):
            feats = embedder.image_fn(torch.from_numpy(imgs))
        for k, v in feats.items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}


@torch.inference_mode()
def embed_release_patches(embedder: Embedder, slide, centers_xy_px: np.ndarray, batch_size: int = 32,
                          magnification: float | None = None, desc: str = "embed patches") -> dict[str, np.ndarray]:
    """Image embeddings of the release's own patches (BGR, 2 x 112 px x mag/20 at native resolution, OpenCV
    resize); spots the release would skip (empty slice) get NaN rows."""
    from ..preprocessing.release_pipeline import release_half_side_px, release_patches

    centers = np.asarray(centers_xy_px, np.float64).reshape(-1, 2)
    ps = release_half_side_px(magnification)
    out: dict[str, list[np.ndarray]] = {}
    oks = []
    for sl in tqdm(list(_batches(len(centers), batch_size)), desc=desc, leave=False):
        imgs, ok = release_patches(slide, centers[sl], ps)
        oks.append(ok)
        with embedder_autocast(embedder):
            feats = embedder.image_fn(torch.from_numpy(imgs))
        for k, v in feats.items():
            v = v.float().cpu().numpy()
            v[~ok] = np.nan
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}


@torch.inference_mode()
def embed_tokens(embedder: Embedder, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = []
    for sl in tqdm(list(_batches(len(tokens), batch_size)), desc="embed genes", leave=False):
        out.append(embedder.gene_fn(torch.from_numpy(tokens[sl].astype(np.int64))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 512), np.float32)


def embed_sample(embedder: Embedder, adata, batch_size: int = 32, with_genes: bool = True,
                 pipeline: str = "default", magnification: float | None = None,
                 notes: list | None = None) -> dict[str, np.ndarray]:
    """Per-spot embeddings of one sample (AnnData contract of ``stamp_st.readers``): obsm key -> [n, d].
    Stamp_G and Stamp_F are computed for spots with counts in the vocabulary; the others get NaN rows, a
    warning and ``adata.obs[OBS_NO_VOCAB_GENES]`` (set on the given AnnData). A sample with no
    vocabulary gene at all gets no Stamp_G / Stamp_F (an error when there is no image either).
    ``pipeline="released"``: the release's tokens and patches (module docstring). ``notes``: a list that
    receives each such message, for the output file and the command's summary."""
    released = pipeline == "released"
    from ..readers.sample_meta import SampleMeta
    from ..readers.slide import open_slide

    meta = SampleMeta.of(adata)
    image_path = meta.image_path
    um = meta.slide_um_per_px
    result: dict[str, np.ndarray] = {}
    if image_path and released:
        with open_slide(image_path) as slide:
            result.update(embed_release_patches(embedder, slide, np.asarray(adata.obsm["spatial"]), batch_size,
                                                magnification, desc=f"{meta.sample_id or 'sample'} patches"))
    elif image_path:
        if not um:
            raise StampInputError("sample has an image but no pixel size", image_path,
                                  hint="pass --um-per-px, or give spot pitch/diameter so it can be inferred")
        with open_slide(image_path) as slide:
            result.update(embed_patches(embedder, slide, np.asarray(adata.obsm["spatial"]), float(um),
                                        batch_size, desc=f"{meta.sample_id or 'sample'} patches"))
    if with_genes and embedder.gene_fn is not None and embedder.tokenizer is not None:
        from ..preprocessing.vocab import map_sample_genes

        if released:
            from ..preprocessing.release_pipeline import ReleaseTokenizer

            rt = ReleaseTokenizer(embedder.tokenizer.vocab, context=embedder.tokenizer.context)
            tok, mapping = rt.tokenize_sample(adata.X, list(adata.var_names))
        else:
            mapping = map_sample_genes(adata, embedder.tokenizer.vocab)
            tok = embedder.tokenizer.tokenize(adata.X, mapping)
        empty = np.asarray(tok.empty, bool)
        adata.obs[OBS_NO_VOCAB_GENES] = empty  # the flag travels with the embeddings (embed writes it to obs)
        ok = ~empty
        where = meta.source_path or meta.sample_id or "sample"
        from ..preprocessing.vocab import check_vocabulary_coverage, coverage_report

        try:
            check_vocabulary_coverage(coverage_report(adata.X, mapping), list(map(str, adata.var_names)),
                                      adata.var["gene_ids"].astype(str).tolist() if "gene_ids" in adata.var
                                      else None, where)
        except StampInputError as err:
            if OBSM_STAMP_V not in result:
                raise
            first, _, rest = str(err).partition("\n")
            msg = f"{first}: {OBSM_STAMP_G} and {OBSM_STAMP_F} are not written, only the image embedding"
            warnings.warn(f"{msg}\n{rest}", stacklevel=2)
            if notes is not None:
                notes.append(msg)
            return result
        if not ok.any():
            msg = (f"{where}: no spot has a count for any gene of the model's vocabulary ({mapping.n_kept} of "
                   f"{adata.n_vars} genes map to it)")
            if OBSM_STAMP_V not in result:
                raise StampInputError(msg, hint="check the gene names / var['gene_ids'] (human symbols or Ensembl "
                                                "ids) and that the sample holds counts")
            msg += f": {OBSM_STAMP_G} and {OBSM_STAMP_F} are not written, only the image embedding"
            warnings.warn(msg, stacklevel=2)
            if notes is not None:
                notes.append(msg)
            return result
        emb = embed_tokens(embedder, tok.tokens[ok])
        g = np.full((adata.n_obs, emb.shape[1]), np.nan, np.float32)
        g[ok] = emb
        if empty.any():
            ids = ", ".join(map(str, np.asarray(adata.obs_names)[empty][:5]))
            msg = (f"{where}: {int(empty.sum())} of {adata.n_obs} spots have no count in the model's vocabulary "
                   f"(e.g. {ids}): their {OBSM_STAMP_G} / {OBSM_STAMP_F} rows are NaN, and obs['{OBS_NO_VOCAB_GENES}'] "
                   "marks them")
            warnings.warn(msg, stacklevel=2)
            if notes is not None:
                notes.append(msg)
        result[OBSM_STAMP_G] = g
        if OBSM_STAMP_V_JOINT in result:
            from ..models.stamp import StampModel

            result[OBSM_STAMP_F] = StampModel.fuse(torch.from_numpy(result[OBSM_STAMP_V_JOINT]),
                                                  torch.from_numpy(g)).numpy()
    if not result:
        raise StampInputError("nothing to embed: the sample has no image and the model has no gene encoder",
                              meta.source_path or None, hint="give --image, or use a STAMP model for Stamp_G")
    return result


def embed_slide_tiles(embedder: Embedder, slide, um_per_px: float, batch_size: int = 32,
                      min_tissue_fraction: float = 0.5):
    """Whole-slide tile embeddings for slide-level tasks: tissue detection, TRIDENT's grid of tiles of the
    model's patch size (``tiling.TileGrid``: integer magnifications, whole-pixel reads at a pyramid level),
    image embeddings. Returns (features [n, d], top-left coords [n, 2] int64 level-0 px, the grid).
    A slide where no tile passes the tissue mask is refused: an empty feature file would only fail later,
    in a slide encoder or a MIL loader, far from its cause."""
    from .tiling import TileGrid, read_tile, tile_corners, tissue_mask

    grid = TileGrid.for_slide(slide, um_per_px, embedder.geometry.patch_um)
    coords = tile_corners(slide, grid.patch_size_level0_px, tissue_mask(slide), min_tissue_fraction)
    if len(coords) == 0:
        raise StampInputError(
            f"no {embedder.geometry.patch_um:g} µm tile of the slide ({slide.width_px} x {slide.height_px} px at "
            f"{um_per_px:g} µm/px) is at least {min_tissue_fraction:.0%} tissue", getattr(slide, "path", None),
            hint="check the pixel size (--um-per-px), that the image is an H&E with tissue on it, or lower "
                 "--min-tissue-fraction")
    out: list[np.ndarray] = []
    key = None
    with torch.inference_mode():
        for sl in tqdm(list(_batches(len(coords), batch_size)), desc="embed tiles", leave=False):
            imgs = np.stack([read_tile(slide, grid, x, y) for x, y in coords[sl]])
            with embedder_autocast(embedder):
                feats = embedder.image_fn(torch.from_numpy(imgs))
            key = key or (OBSM_STAMP_V if OBSM_STAMP_V in feats else OBSM_BACKBONE)
            out.append(feats[key].float().cpu().numpy())
    return np.concatenate(out), coords, grid
