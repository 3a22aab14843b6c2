"""``stamp-st embed MODEL SAMPLE --out FILE``: Stamp_V / Stamp_G / Stamp_F (or a plain backbone) per spot into
.h5ad (obsm keys) or a TRIDENT-style .h5; ``--tiles`` embeds a whole slide's tissue tiles instead."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from .inspect_cmd import add_sample_arguments

    p = subparsers.add_parser("embed", help="embed a sample's spots (or a whole slide's tiles)",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="STAMP checkpoint folder, or backbone:NAME for a plain backbone "
                   "(efficientnet_lite0, uni, conch_vit_b16, timm:<name>)")
    add_sample_arguments(p)
    p.add_argument("--out", required=True, help="output .h5ad (per-spot obsm keys) or .h5 (TRIDENT-style)")
    p.add_argument("--backbone-weights", default=None, help="local weight file for backbone:NAME")
    p.add_argument("--patch-um", type=float, default=112.0, help="patch side in µm for backbone:NAME")
    p.add_argument("--tiles", action="store_true", help="embed tissue tiles of the whole slide (SAMPLE may be a "
                   "slide file) instead of spots")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="image pass: auto = bf16 autocast on CUDA except for released-mode models (fp32)")
    p.add_argument("--pipeline", choices=["default", "released"], default="default",
                   help="released: the authors' tokens and crops (BGR, 224 px at native resolution), for the "
                        "released weights (README: Differences from the authors' release)")
    p.add_argument("--magnification", type=float, default=None,
                   help="--pipeline released: the slide's magnification as in HEST's metadata (patch side "
                        "2 x 112 x mag / 20 px; default 112 px, the release's default)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import StampInputError
    from ..evaluation.embeddings_io import write_embedding_h5ad, write_trident_h5
    from ..inference.embed import embed_sample, embed_slide_tiles, load_embedder

    out = Path(args.out)
    if out.suffix not in (".h5ad", ".h5"):
        raise StampInputError("output must end in .h5ad or .h5", out)
    embedder = load_embedder(args.model, device=args.device, backbone_weights=args.backbone_weights,
                             patch_um=args.patch_um, precision=args.precision)
    if args.tiles:
        from ..readers.slide import open_slide

        if args.pipeline == "released":
            raise StampInputError("--pipeline released embeds spots (the release has no tiling)",
                                  hint="drop --tiles, or use the default pipeline for tiles")

        slide_path = args.image or args.sample
        with open_slide(slide_path) as slide:
            um = args.um_per_px or slide.um_per_px
            if not um:
                raise StampInputError("slide has no pixel size in its metadata", slide_path,
                                      hint="pass --um-per-px")
            feats, coords = embed_slide_tiles(embedder, slide, float(um), args.batch_size)
        side = round(embedder.geometry.patch_side_px(float(um)))
        write_trident_h5(out, feats, coords, slide_id=Path(slide_path).stem, encoder=embedder.name,
                         patch_size_level0=side, um_per_px=float(um), patch_um=embedder.geometry.patch_um)
        print(f"{len(feats)} tiles -> {out}", file=sys.stderr)
        return 0

    from .inspect_cmd import read_sample_from_args

    adata = read_sample_from_args(args)
    embs = embed_sample(embedder, adata, batch_size=args.batch_size, pipeline=args.pipeline,
                        magnification=args.magnification)
    meta = adata.uns["stamp_st"]
    sid = str(meta.get("sample_id", "sample"))
    if out.suffix == ".h5":
        key = next(k for k in ("X_stamp_v", "X_backbone", "X_stamp_g") if k in embs)
        write_trident_h5(out, embs[key], adata.obsm["spatial"], slide_id=sid, spot_ids=list(adata.obs_names),
                         encoder=embedder.name, obsm_key=key, um_per_px=float(meta.get("um_per_px") or 0))
    else:
        write_embedding_h5ad(out, embs, [sid] * adata.n_obs, list(adata.obs_names), xy_px=adata.obsm["spatial"],
                             counts=adata.X, gene_names=list(adata.var_names),
                             image_paths={sid: meta.get("image_path", "")} if meta.get("image_path") else None,
                             extra_uns={"model": embedder.name, "um_per_px": float(meta.get("um_per_px") or 0),
                                        "pipeline": args.pipeline, "precision": embedder.precision})
    print(f"{adata.n_obs} spots, {', '.join(f'{k} {v.shape[1]}-d' for k, v in embs.items())} -> {out}",
          file=sys.stderr)
    return 0
