"""``stamp-st embed MODEL SAMPLE --out FILE``: Stamp_V (and its joint-space projection) / Stamp_G / Stamp_F (or a
plain backbone) per spot into .h5ad (obsm keys) or a TRIDENT-style .h5; ``--tiles`` embeds a whole slide's tissue tiles instead."""

from __future__ import annotations

import sys

EXAMPLES = """
stamp-st embed runs/align /data/her2st --section B1 --out B1.h5ad
stamp-st embed backbone:uni_v1 /data/her2st --section B1 --out B1_uni.h5ad
stamp-st embed backbone:conch_v1 slide.svs --tiles --pt --out feats/h5_files/slide.h5
"""


def register(subparsers) -> None:
    from ..config_types import BATCH_SIZE, FRACTION, PATCH_UM
    from ..models.registry import backbone_names
    from .inspect_cmd import add_sample_arguments
    from .options import device_type, ranged_type

    p = subparsers.add_parser("embed", help="embed a sample's spots (or a whole slide's tiles)",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="STAMP checkpoint folder, or backbone:NAME for a plain backbone ("
                   + ", ".join(backbone_names()) + ")")
    add_sample_arguments(p)
    p.add_argument("--out", required=True, help="output .h5ad (per-spot obsm keys) or .h5 (TRIDENT-style)")
    p.add_argument("--backbone-weights", default=None, help="local weight file for backbone:NAME (wins "
                   "over the hub)")
    p.add_argument("--patch-um", type=ranged_type(float, PATCH_UM), default=112.0, help="patch side in µm for backbone:NAME")
    p.add_argument("--tiles", action="store_true", help="embed tissue tiles of the whole slide instead of spots "
                   "(SAMPLE: a slide file, a HEST root with --section, or any sample with an image); writes "
                   "TRIDENT's .h5 layout")
    p.add_argument("--pt", action="store_true", help="with --tiles: also write CLAM's pt_files/SLIDE.pt (FEAT_DIR/pt_files/ "
                   "when OUT is FEAT_DIR/h5_files/SLIDE.h5, else pt_files/ beside OUT)")
    p.add_argument("--min-tissue-fraction", type=ranged_type(float, FRACTION), default=0.5,
                   help="with --tiles: keep tiles at least this fraction tissue (default 0.5)")
    p.add_argument("--batch-size", type=ranged_type(int, BATCH_SIZE), default=32, help="spots per batch")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.add_argument("--device", type=device_type, default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="image pass: auto = bf16 autocast on CUDA except for released-mode models (fp32)")
    from .options import add_pipeline_options

    add_pipeline_options(p, "for the released weights (README: Differences from the authors' release)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..embedding_file import (
        OBS_NO_VOCAB_GENES,
        OBSM_BACKBONE,
        OBSM_STAMP_G,
        OBSM_STAMP_V,
        write_clam_pt,
        write_embedding_h5ad,
        write_trident_h5,
    )
    from ..errors import StampInputError
    from ..inference.embed import embed_sample, embed_slide_tiles, load_embedder
    from ..io_utils import check_output_file
    from ..readers.sample_meta import SampleMeta
    from .inspect_cmd import apply_confirmations

    apply_confirmations(args)
    out = Path(args.out)
    if out.suffix not in (".h5ad", ".h5"):
        raise StampInputError("output must end in .h5ad or .h5", out)
    if args.pt and not (args.tiles and out.suffix == ".h5"):
        raise StampInputError("--pt writes CLAM's bag of tile features: it needs --tiles and an .h5 output", out,
                              hint="add --tiles and write FEAT_DIR/h5_files/SLIDE.h5")
    check_output_file(out)
    embedder = load_embedder(args.model, device=args.device, backbone_weights=args.backbone_weights,
                             patch_um=args.patch_um, precision=args.precision)
    if args.tiles:
        from ..readers.constants import UM_PER_PX_METADATA
        from ..readers.pixel_size import resolve_um_per_px
        from ..readers.slide import open_slide

        if args.pipeline == "released":
            raise StampInputError("--pipeline released embeds spots (the release has no tiling)",
                                  hint="drop --tiles, or use the default pipeline for tiles")

        slide_path, meta_um, meta_source, slide_id = tile_source(args)
        with open_slide(slide_path) as slide:
            # the one rule: --um-per-px > the sample's metadata > the slide file's tag
            um, um_source = resolve_um_per_px(user=args.um_per_px, metadata=meta_um, slide=slide.um_per_px)
            um_source = meta_source if um_source == UM_PER_PX_METADATA else um_source
            if not um:
                raise StampInputError("no pixel size: neither the sample's metadata nor the slide carry one",
                                      slide_path, hint="pass --um-per-px")
            print(f"{slide_id}: {um:g} µm/px (from {um_source})", file=sys.stderr)
            feats, coords, grid = embed_slide_tiles(embedder, slide, um, args.batch_size,
                                                    min_tissue_fraction=args.min_tissue_fraction)
            attrs = grid.coords_attrs(slide_id, slide)
        if not grid.clam_readable:
            print(f"{slide_id}: tiles are read as {grid.patch_size_level_px} px at level {grid.read_level} and "
                  f"resized to {grid.patch_size_px} px, which CLAM's patch reader cannot repeat: coords carry no "
                  "patch_level", file=sys.stderr)
        g = embedder.geometry
        write_trident_h5(out, feats, coords, slide_id=slide_id, coords_attrs=attrs, encoder=embedder.name,
                         kind="tiles", um_per_px=um, um_per_px_source=um_source, patch_um=g.patch_um)
        pt = write_clam_pt(out, feats) if args.pt else None
        _summary(args, {"out": str(out), "kind": "tiles", "n_tiles": int(len(feats)),
                        "dim": int(feats.shape[1]), "um_per_px": um, "um_per_px_source": um_source,
                        "level0_magnification": grid.level0_magnification, **({"pt": str(pt)} if pt else {})},
                 f"{len(feats)} tiles -> {out}" + (f" and {pt}" if pt else ""))
        return 0

    from .inspect_cmd import read_sample_from_args

    adata = read_sample_from_args(args)
    notes: list[str] = []  # what was left out (Stamp_G / Stamp_F of spots or samples without vocabulary genes)
    embs = embed_sample(embedder, adata, batch_size=args.batch_size, pipeline=args.pipeline,
                        magnification=args.magnification, notes=notes)
    meta = SampleMeta.of(adata)
    sid = meta.sample_id or "sample"
    if out.suffix == ".h5":
        from ..embedding_file import spot_coords_attrs

        key = next(k for k in (OBSM_STAMP_V, OBSM_BACKBONE, OBSM_STAMP_G) if k in embs)
        um = meta.slide_um_per_px or 0.0
        g = embedder.geometry
        size_px = meta.image_size_px or (0, 0)
        side0 = g.patch_side_px(um) if um else 0.0
        attrs = spot_coords_attrs(sid, g.out_px, side0, um, *size_px) if um else None
        # TRIDENT's convention: coords are the top-left corner of the patch the feature was computed on
        corners = np.asarray(adata.obsm["spatial"], np.float64) - side0 / 2
        write_trident_h5(out, embs[key], corners, slide_id=sid, spot_ids=list(adata.obs_names),
                         coords_attrs=attrs, encoder=embedder.name, kind="spots", obsm_key=key, um_per_px=um)
    else:
        from ..inference.scanpy_uns import spatial_uns

        obs_cols = {k: adata.obs[k].to_numpy() for k in ("array_row", "array_col", "in_tissue",
                                                           OBS_NO_VOCAB_GENES) if k in adata.obs}
        var_cols = {"gene_ids": adata.var["gene_ids"].astype(str).to_numpy()} if "gene_ids" in adata.var else None
        write_embedding_h5ad(out, embs, [sid] * adata.n_obs, list(adata.obs_names), xy_px=adata.obsm["spatial"],
                             counts=adata.X, gene_names=list(adata.var_names),
                             image_paths={sid: meta.image_path} if meta.image_path else None,
                             record={"model": embedder.name, "um_per_px": meta.slide_um_per_px or 0.0,
                                     "pipeline": args.pipeline, "precision": embedder.precision,
                                     **({"notes": notes} if notes else {})},
                             obs_columns=obs_cols, var_columns=var_cols, spatial=spatial_uns(adata, sid), sample=meta)
    _summary(args, {"out": str(out), "kind": "spots", "n_spots": int(adata.n_obs),
                    "keys": {k: int(v.shape[1]) for k, v in embs.items()},
                    **({"notes": notes} if notes else {})},
             f"{adata.n_obs} spots, {', '.join(f'{k} {v.shape[1]}-d' for k, v in embs.items())} -> {out}"
             + "".join(f"\nnote: {n}" for n in notes))
    return 0


def tile_source(args) -> tuple[str, float | None, str, str]:
    """(slide path, the pixel size the sample's metadata gives or None, where it came from, slide name) for
    ``--tiles``; ``resolve_um_per_px`` then ranks it between ``--um-per-px`` and the slide's TIFF tag (HEST's
    WSIs, written with current libvips, carry a resolution tag 10x off)."""
    from pathlib import Path

    from ..errors import StampInputError
    from ..readers.constants import HEST_WSI_DIR
    from ..readers.sample_meta import SampleMeta

    p = Path(args.sample)
    if p.is_file() and p.suffix.lower() != ".h5ad":  # a slide file
        return str(args.image or p), None, "", (Path(args.image) if args.image else p).stem
    if p.is_dir() and (p / HEST_WSI_DIR).is_dir() and args.format in (None, "hest"):
        from ..readers.hest import hest_sections, metadata_pixel_size, read_metadata, wsi_path

        wsis = sorted(q.name.split(".")[0] for q in (p / HEST_WSI_DIR).iterdir() if q.is_file())
        if not args.section or (not args.image and wsi_path(p, args.section) is None):
            what = "no --section given" if not args.section else f"no slide for '{args.section}'"
            known = sorted(set(wsis) | set(hest_sections(p) if (p / "st").is_dir() else []))
            raise StampInputError(f"HEST root: {what}; slides in {HEST_WSI_DIR}/: {', '.join(known[:30]) or 'none'}",
                                  p, hint="pass --section ID")
        meta, meta_path = read_metadata(p, args.section)
        um = metadata_pixel_size(meta, meta_path)
        return (str(args.image or wsi_path(p, args.section)), um, f"metadata {meta_path.name}" if um else "",
                str(args.section))
    from .inspect_cmd import read_sample_from_args

    meta = SampleMeta.of(read_sample_from_args(args))
    image = args.image or meta.image_path
    if not image:
        raise StampInputError("the sample has no image to tile", p, hint="pass --image SLIDE")
    return (str(image), meta.slide_um_per_px, f"sample ({meta.slide_um_per_px_source})", meta.sample_id
            or Path(image).stem)


def _summary(args, summary: dict, text: str) -> None:
    if args.json:
        import json

        print(json.dumps(summary))
    else:
        print(text, file=sys.stderr)
