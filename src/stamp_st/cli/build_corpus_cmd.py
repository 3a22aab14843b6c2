"""``stamp-st build-corpus``: build a sharded, resumable training corpus from a samples table."""

from __future__ import annotations

EXAMPLES = """
stamp-st build-corpus --kind genes --her2st /data/her2st corpus_genes
stamp-st build-corpus --kind paired samples.tsv corpus_paired --workers 4
"""


def register(sub) -> None:
    from ..config_types import CONTEXT, COUNT0, IMAGE_PX, PATCH_UM, SEED, WORKERS, Range
    from .options import ranged_type

    p = sub.add_parser("build-corpus", help="build WebDataset shards (Stage-1 gene groups or Stage-2 pairs) on Dask",
                       description="Build a training corpus from SAMPLES (TSV/CSV/JSON: path, format, section, "
                                   "slide_id, organ, study, um_per_px, image_path, split) into OUT. Re-running "
                                   "the same command resumes: finished slides are kept. See docs/corpus.md.")
    p.add_argument("samples", nargs="?", metavar="SAMPLES",
                   help="samples table, one row per sample (omit with --her2st)")
    p.add_argument("out", help="output folder (shards, manifest.json, gene_means.tsv)")
    p.add_argument("--kind", choices=["genes", "paired"], required=True,
                   help="genes: Stage-1 groups of 9 spots; paired: Stage-2 patch/region/tokens per spot")
    p.add_argument("--her2st", metavar="ROOT", help="build from a her2st folder instead of a samples "
                   "table (writes its samples table into OUT)")
    p.add_argument("--sections", help="her2st sections, comma-separated (default all; paired: those with images)")
    p.add_argument("--workers", type=ranged_type(int, WORKERS), default=2, help="local Dask worker processes (default 2)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. tcp://host:8786); OUT must be "
                   "a folder every worker can write")
    p.add_argument("--threads", action="store_true", help="local workers as threads in this process")
    p.add_argument("--vocab", help="gene vocabulary TSV (default: the released vocabulary in the data directory)")
    p.add_argument("--context", type=ranged_type(int, CONTEXT), default=1500, help="tokens per spot (default 1500)")
    p.add_argument("--unrounded-means", action="store_true",
                   help="divide by the vocabulary's real means (a vocabulary built from your corpus), not the "
                        "release's rounded ones")
    p.add_argument("--patch-um", type=ranged_type(float, PATCH_UM), default=112.0, help="patch side in µm (default 112)")
    p.add_argument("--out-px", type=ranged_type(int, IMAGE_PX), default=224, help="patch/region size after resizing (default 224)")
    p.add_argument("--image-codec", choices=["png", "qoi"], default="png",
                   help="lossless image encoding of paired samples: png (standard) or qoi (~10x faster to "
                        "encode, ~4x to decode; read with imagecodecs)")
    p.add_argument("--min-counts", type=ranged_type(int, COUNT0), default=100, help="minimum raw counts per spot (default 100)")
    p.add_argument("--min-genes", type=ranged_type(int, COUNT0), default=50, help="minimum vocabulary genes per spot (default 50)")
    p.add_argument("--keep-off-tissue", action="store_true", help="keep spots marked not in tissue")
    p.add_argument("--seed", type=ranged_type(int, SEED), default=0, help="seed of every random choice (default 0)")
    p.add_argument("--shard-size", type=ranged_type(int, Range(1, 10**7, integer=True)), help="max samples per shard (default genes 2048, paired 512)")
    p.add_argument("--chunk-spots", type=ranged_type(int, Range(1, 10**7, integer=True)), default=256, help="spots processed at once in a task (memory bound)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-skipped", action="store_true",
                   help="exit 0 even when samples rows gave nothing (unreadable, no spot left after QC, no image); "
                        "by default such a build writes the corpus of the good rows and exits 1 with a per-row report")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    from .options import add_pipeline_options

    add_pipeline_options(p, 'their region placement with seed 42, to continue training from the released weights')
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from ..corpus.build import BuildConfig, build_corpus
    from ..corpus.layout import INPUT_SAMPLES_NAME, MANIFEST_NAME, check_corpus_out
    from ..corpus.qc import QCConfig, format_report
    from ..corpus.samples import her2st_samples, read_samples
    from ..errors import StampInputError
    from ..paths import vocab_file

    if bool(args.samples) == bool(args.her2st):
        raise StampInputError("give either SAMPLES or --her2st ROOT", hint="see `stamp-st build-corpus --help`")
    out = Path(args.out)
    check_corpus_out(out, args.kind)  # before anything is written into it
    if args.her2st:
        sections = args.sections.split(",") if args.sections else None
        entries = her2st_samples(args.her2st, sections=sections, with_image_only=args.kind == "paired",
                                 out=out / INPUT_SAMPLES_NAME)
    else:
        entries = read_samples(args.samples)
    cfg = BuildConfig(kind=args.kind, vocab_path=str(args.vocab or vocab_file()), context=args.context,
                      rounded_means=not args.unrounded_means,
                      patch_um=args.patch_um, out_px=args.out_px,
                      qc=QCConfig(min_counts=args.min_counts, min_genes=args.min_genes,
                                  require_in_tissue=not args.keep_off_tissue),
                      seed=args.seed, shard_size=args.shard_size, chunk_spots=args.chunk_spots,
                      image_codec=args.image_codec, pipeline=args.pipeline, magnification=args.magnification)
    res = build_corpus(entries, out, cfg, workers=args.workers, scheduler=args.scheduler,
                       processes=not args.threads, progress=not args.no_progress)
    man, b = res["manifest"], res["build"]
    if args.json:
        print(json.dumps({"manifest": str(out / MANIFEST_NAME), "totals": man["totals"], "splits": man["splits"],
                          "qc": man["qc"]["total"], "skipped_slides": man["qc"]["skipped_slides"], "build": b},
                         default=str))
        return 0
    print(format_report(man["qc"]["total"], man["qc"]["skipped_slides"]))
    print(f"corpus: {man['totals']['n_slides']} slides, {man['totals']['n_shards']} shards, "
          f"{man['totals']['n_samples']} samples, {man['totals']['n_spots']} spots -> {out / MANIFEST_NAME}")
    print(f"built {b['n_slides_built']} slide(s), reused {b['n_slides_reused']} in {b['seconds']:.1f} s "
          f"({b['spots_per_s']:.1f} spots/s" + (f", {b['patches_per_s']:.1f} patches/s" if args.kind == "paired"
                                                else "") + ")")
    print(json.dumps({"splits": man["splits"]}))
    if res["bad_rows"]:
        print(f"stamp-st build-corpus: error: {len(res['bad_rows'])} samples row(s) gave nothing; the corpus holds "
              f"the other {man['totals']['n_slides']} slide(s):\n{res['row_report']}\nWhat to do: fix or remove "
              "those rows and re-run (finished slides are kept), or pass --allow-skipped to accept the corpus as is",
              file=sys.stderr)
        return 0 if args.allow_skipped else 1
    return 0
