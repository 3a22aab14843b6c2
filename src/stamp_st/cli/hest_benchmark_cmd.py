"""``stamp-st hest-benchmark``: HEST-Benchmark (patient-level folds, 50 genes, PCA-256 + ridge, Pearson) exactly
as HEST's own benchmark code runs it, on embedding files of its tasks' patches."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..evaluation.hest_benchmark import HEST_BENCH_TASKS, HestBenchConfig

    d = HestBenchConfig()
    p = subparsers.add_parser(
        "hest-benchmark", help="HEST-Benchmark gene-expression prediction on its tasks (HEST's protocol)",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bench-root", required=True, metavar="DIR",
                   help="HEST-Benchmark data (bench_data: one folder per task with splits/, adata/, patches/, "
                        "var_50genes.json)")
    p.add_argument("--embeddings", nargs="+", required=True, metavar="PATH",
                   help="a folder of <sample_id>.h5 (embeddings or features + barcodes) or .h5ad files, also "
                        "under <TASK>/; an .h5ad[:OBSM_KEY] with obs slide_id = sample id; or one sample's .h5")
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

    from ..evaluation.hest_benchmark import HestBenchConfig, run_hest_benchmark

    cfg = HestBenchConfig(seed=args.seed, gene_list=args.gene_list, latent_dim=args.latent_dim,
                          dimreduce=None if args.no_pca else "PCA")
    res = run_hest_benchmark(args.bench_root, args.embeddings, args.tasks, cfg, args.out)
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
