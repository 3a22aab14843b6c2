"""``stamp-st hest-benchmark``: HEST-Benchmark (patient-level folds, 50 genes, PCA-256 + ridge, Pearson) exactly
as HEST's own benchmark code runs it, on embedding files of its tasks' patches."""

from __future__ import annotations

EXAMPLES = """
stamp-st hest-benchmark --bench-root bench_data --model backbone:uni_v1 --backbone-weights uni.bin --out bench
stamp-st hest-benchmark --bench-root bench_data --embeddings embeddings/ --tasks IDC PRAD --json
"""


def register(subparsers) -> None:
    from ..evaluation.hest_benchmark import HEST_BENCH_TASKS, HestBenchConfig

    d = HestBenchConfig()
    p = subparsers.add_parser(
        "hest-benchmark", help="HEST-Benchmark gene-expression prediction on its tasks (HEST's protocol)")
    p.add_argument("--bench-root", required=True, metavar="DIR",
                   help="HEST-Benchmark data (bench_data: one folder per task with splits/, adata/, patches/, "
                        "var_50genes.json)")
    p.add_argument("--embeddings", nargs="+", metavar="PATH",
                   help="a folder of <sample_id>.h5 (embeddings or features + barcodes) or .h5ad files, also "
                        "under <TASK>/; an .h5ad[:OBSM_KEY] with obs slide_id = sample id; or one sample's .h5")
    p.add_argument("--model", help="embed the tasks' patches first with this STAMP checkpoint folder or "
                                   "backbone:NAME (instead of --embeddings)")
    p.add_argument("--key", help="which output of --model (default: its first; X_stamp_v for STAMP)")
    p.add_argument("--embed-dir", metavar="DIR",
                   help="where --model's embeddings go, <TASK>/<sample_id>.h5, kept and reused on a re-run "
                        "(default: OUT/embeddings)")
    p.add_argument("--backbone-weights", help="local weight file for backbone:NAME")
    p.add_argument("--batch-size", type=int, default=64, help="patches per forward pass of --model")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="image pass precision")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="tasks to run (default: every task folder found; HEST's are " + ", ".join(HEST_BENCH_TASKS)
                        + ")")
    p.add_argument("--seed", type=int, default=d.seed, help="PCA and ridge random_state (HEST's default)")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="PCA dimensions (HEST: 256)")
    p.add_argument("--no-pca", action="store_true", help="ridge on the raw embeddings (not HEST's protocol)")
    p.add_argument("--gene-list", default=d.gene_list, help="gene list file inside each task folder")
    p.add_argument("--out", metavar="DIR", help="write hest_benchmark.json here")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..errors import StampInputError
    from ..evaluation.hest_benchmark import HestBenchConfig, run_hest_benchmark

    if bool(args.model) == bool(args.embeddings):
        raise StampInputError("give either --embeddings (files of embeddings) or --model (embed the patches)")
    embeddings = args.embeddings
    if args.model:
        embeddings = [str(embed_bench(args))]
    cfg = HestBenchConfig(seed=args.seed, gene_list=args.gene_list, latent_dim=args.latent_dim,
                          dimreduce=None if args.no_pca else "PCA")
    res = run_hest_benchmark(args.bench_root, embeddings, args.tasks, cfg, args.out)
    summary = {"average_pearson": res["average"],
               "tasks": {t: {"pearson_mean": r["pearson_mean"], "pearson_std": r["pearson_std"],
                             "n_splits": len(r["folds"])} for t, r in res["tasks"].items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'task':<12}{'splits':>7}{'pearson':>10}{'std':>8}")
    for t, r in summary["tasks"].items():
        print(f"{t:<12}{r['n_splits']:>7}{r['pearson_mean']:>10.4f}{r['pearson_std']:>8.4f}")
    print(f"{'average':<12}{'':>7}{res['average']:>10.4f}")
    return 0


def embed_bench(args):
    """Embed every patch file the tasks' splits name into EMBED_DIR/<TASK>/<sample_id>.h5 (HEST's format);
    files already there from the same model are kept, so a re-run resumes."""
    from pathlib import Path

    from ..errors import StampInputError
    from ..evaluation.hest_benchmark import bench_samples
    from ..inference.bench_patches import embed_bench_tasks

    if not args.embed_dir and not args.out:
        raise StampInputError("--model needs --out or --embed-dir for its embeddings")
    embed_dir = Path(args.embed_dir or Path(args.out) / "embeddings")
    return embed_bench_tasks(args.model, bench_samples(args.bench_root, args.tasks), embed_dir, args.key,
                             args.device, args.backbone_weights, args.precision, args.batch_size)
