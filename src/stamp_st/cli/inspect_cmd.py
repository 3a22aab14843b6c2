"""``stamp-st inspect``: read a sample and say what the rest of the pipeline will see (spots, genes, vocabulary
coverage, pixel size and where it came from, image size) before anything is computed on it."""

from __future__ import annotations

import argparse
import json
import sys


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by every command that reads one sample."""
    from ..config_types import UM_PER_PX
    from ..readers import FORMATS, INPUT_FORMATS
    from .options import ranged_type

    p.add_argument("sample", help="sample path: Space Ranger outs/, HEST root or st/<id>.h5ad, her2st root, .h5ad")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detect): "
                   + "; ".join(f"{f.name}: {f.layout}" for f in INPUT_FORMATS.values()))
    p.add_argument("--section", default=None, help="section / sample id inside a her2st or HEST root")
    p.add_argument("--image", default=None, help="full-resolution H&E image the spot pixels refer to")
    p.add_argument("--um-per-px", type=ranged_type(float, UM_PER_PX), default=None, help="pixel size in µm (default: metadata or "
                   "inferred from the spot grid)")
    p.add_argument("--vocab", default=None, help="gene vocabulary TSV (default: the released vocabulary in "
                   "the data directory)")
    p.add_argument("--confirm-um-per-px", action="store_true", help="use --um-per-px even where it is over 1.5x "
                   "off what the sample's spot grid implies (default: refused as a likely unit slip)")
    p.add_argument("--allow-coarse-image", action="store_true", help="embed an image whose patch is under 64 px "
                   "(default: refused; e.g. a CytAssist overview instead of the H&E)")


EXAMPLES = """
stamp-st inspect /data/her2st --section B1
stamp-st inspect outs/ --json
stamp-st inspect sample.h5ad --image he.tif --um-per-px 0.5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show spots, genes, vocabulary coverage, pixel size of a sample",
                              description=__doc__.splitlines()[0])
    add_sample_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def apply_confirmations(args) -> None:
    """--confirm-um-per-px / --allow-coarse-image hold for the whole command (reading, cropping, embedding, and
    worker processes): they set the variables ``readers.pixel_size`` reads."""
    import os

    from ..readers.pixel_size import ALLOW_COARSE_IMAGE_ENV, CONFIRM_UM_PER_PX_ENV

    if getattr(args, "confirm_um_per_px", False):
        os.environ[CONFIRM_UM_PER_PX_ENV] = "1"
    if getattr(args, "allow_coarse_image", False):
        os.environ[ALLOW_COARSE_IMAGE_ENV] = "1"


def read_sample_from_args(args):
    from ..readers import read_sample

    apply_confirmations(args)

    return read_sample(args.sample, format=args.format, section=args.section, image_path=args.image,
                       um_per_px=args.um_per_px)


def load_vocab(path):
    from ..preprocessing.vocab import GeneVocabulary

    return GeneVocabulary.from_tsv(path) if path else GeneVocabulary.default()


def gene_mapping(adata, vocab):
    """Map the sample's genes onto ``vocab`` (``preprocessing.vocab.map_sample_genes``)."""
    from ..preprocessing.vocab import map_sample_genes

    return map_sample_genes(adata, vocab)


def inspect_sample(adata, vocab) -> dict:
    """The facts ``inspect`` prints, as a JSON-ready dict."""
    from ..errors import StampInputError
    from ..preprocessing.vocab import check_vocabulary_coverage, coverage_report
    from ..readers.sample_meta import SampleMeta

    meta = SampleMeta.of(adata)
    mapping = gene_mapping(adata, vocab)
    cov = coverage_report(adata.X, mapping, adata.obs_names)
    try:  # inspect reports what tokenize, build-corpus and embed would refuse
        check_vocabulary_coverage(cov, list(map(str, adata.var_names)),
                                  adata.var["gene_ids"].astype(str).tolist() if "gene_ids" in adata.var else None)
        cov["problem"] = ""
    except StampInputError as err:
        cov["problem"] = str(err).splitlines()[0]
    cov.pop("per_spot")
    return {
        "sample_id": meta.sample_id,
        "format": meta.technology,
        "source_path": meta.source_path,
        "n_spots": int(adata.n_obs),
        "n_spots_in_tissue": int(adata.obs["in_tissue"].sum()),
        "n_genes": int(adata.n_vars),
        "total_counts": float(adata.X.sum()),
        "vocabulary": {"path": vocab.source, "checksum": vocab.checksum, **cov},
        "um_per_px": meta.slide_um_per_px,
        "um_per_px_source": meta.slide_um_per_px_source,
        "grid": meta.grid,
        "image_path": meta.image_path,
        "image_size_px": list(meta.image_size_px) if meta.image_size_px else None,
        "qc": meta.qc,
    }


def format_report(r: dict) -> str:
    v = r["vocabulary"]
    ump = "unknown (pass --um-per-px)" if r["um_per_px"] is None else f"{r['um_per_px']:.4f}"
    img = (f"{r['image_path']} ({r['image_size_px'][0]} x {r['image_size_px'][1]} px)" if r["image_path"]
           else "none (pass --image for crops)")
    lines = [
        f"sample       {r['sample_id']} ({r['format']})  {r['source_path']}",
        f"spots        {r['n_spots']} ({r['n_spots_in_tissue']} in tissue), grid {r['grid']}",
        f"genes        {r['n_genes']}",
        f"vocabulary   {v['checksum']} ({v['n_vocab']} genes, {v['path']})",
        f"  kept       {v['n_genes_kept']} of {v['n_genes_input']} genes (by id {v['n_genes_by_id']}, by symbol "
        f"{v['n_genes_by_symbol']}); {100 * v['fraction_counts_kept']:.1f} % of counts "
        f"(median spot {100 * v['median_spot_fraction_counts_kept']:.1f} %)",
        f"  empty      {v['n_empty_spots']} spots with no count in the vocabulary",
        *([f"  PROBLEM    {v['problem']} (tokenize, build-corpus and embed refuse it)"] if v.get("problem") else []),
        f"µm/px        {ump} (source: {r['um_per_px_source']})",
        f"image        {img}",
    ]
    qc = {k: val for k, val in r["qc"].items() if k != "notes"}
    if qc:
        lines.append("qc           " + ", ".join(f"{k}={_short(val)}" for k, val in qc.items()))
    lines += [f"note         {n}" for n in r["qc"].get("notes", [])]
    return "\n".join(lines)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def run(args) -> int:
    adata = read_sample_from_args(args)
    vocab = load_vocab(args.vocab)
    report = inspect_sample(adata, vocab)
    if args.json:
        from ..io_utils import json_default

        json.dump(report, sys.stdout, indent=2, default=json_default)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0
