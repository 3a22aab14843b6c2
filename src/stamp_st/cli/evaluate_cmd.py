"""``stamp-st evaluate``: judge embedding sources side by side on held-out slides and write
results.json + a self-contained report.html."""

from __future__ import annotations

EXAMPLES = """
stamp-st evaluate --embeddings B1.h5ad:X_stamp_v B1_uni.h5ad:X_backbone --names STAMP UNI --baseline UNI --labels her2st-cluster --out eval
stamp-st evaluate --embeddings all.h5ad:X_stamp_v --add-expression-pca --tasks probe,retrieval --out eval
"""


def register(subparsers) -> None:
    from ..config_types import SEED, Range
    from ..evaluation.registry import EVAL_TASKS
    from .options import ranged_type

    p = subparsers.add_parser(
        "evaluate", help="evaluate embeddings (probe, clustering, expression, retrieval, MIL) with intervals",
        description=__doc__)
    p.add_argument("--embeddings", nargs="+", required=True, metavar="FILE[:KEY]",
                   help="embedding files: .h5ad (optionally :OBSM_KEY, or :expr-pca for a PCA of the file's "
                        "expression) or TRIDENT-style .h5 (one per slide; consecutive .h5 files of one --names "
                        "entry are not merged: give an .h5ad for several slides)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="one display name per --embeddings entry")
    p.add_argument("--baseline", metavar="NAME", help="which name is the baseline (marked in the report)")
    p.add_argument("--add-expression-pca", action="store_true",
                   help="add a raw-expression PCA(50) source (gene-side baseline) from the first file's counts")
    p.add_argument("--labels", metavar="KIND",
                   help="spot labels: her2st-cluster, her2st-pat or obs:COLUMN of the first file")
    p.add_argument("--her2st-root", metavar="DIR", help="her2st folder for --labels her2st-* "
                   "(default: the data directory's her2st/)")
    p.add_argument("--tasks", default=",".join(n for n, t in EVAL_TASKS.items() if t.default),
                   help="comma-separated subset of " + ",".join(EVAL_TASKS))
    p.add_argument("--slide-labels", metavar="CSV", help="CSV with columns slide_id,label for the mil task")
    p.add_argument("--test-slides", nargs="+", metavar="SLIDE",
                   help="a given split: these slides are the test set (default: leave-one-slide-out)")
    p.add_argument("--impute-k", type=ranged_type(int, Range(1, 10**6, integer=True)), default=50, help="top-k reference spots for retrieval imputation")
    p.add_argument("--projection", choices=("umap", "pca"), default="umap", help="2-D projection in figures")
    p.add_argument("--seed", type=ranged_type(int, SEED), default=0, help="seed of every random choice")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for results.json, report.html")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    import pandas as pd

    from ..errors import StampInputError
    from ..evaluation.labels import load_labels
    from ..evaluation.report import write_report
    from ..evaluation.sources import expression_pca_source, read_source
    from ..evaluation.tasks import evaluate_sources

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise StampInputError("--out exists and is a file; evaluate writes a folder", args.out,
                              hint="give a folder path for results.json and report.html")
    names = args.names or []
    if names and len(names) != len(args.embeddings):
        raise StampInputError(f"{len(args.embeddings)} --embeddings but {len(names)} --names",
                              hint="give one name per embedding file, or none")
    if len(set(names)) != len(names):
        raise StampInputError("--names must be unique")
    sources = {}
    for i, spec in enumerate(args.embeddings):
        s = read_source(spec, names[i] if names else None)
        if s.name in sources:
            raise StampInputError(f"two sources are named {s.name!r}", hint="use --names")
        sources[s.name] = s
    first = next(iter(sources.values()))
    if args.add_expression_pca:
        src = expression_pca_source(first)
        sources[src.name] = src
    labels = load_labels(args.labels, first, args.her2st_root) if args.labels else None
    slide_labels = None
    if args.slide_labels:
        from ..errors import require_file

        require_file(args.slide_labels, "slide label table", hint="give a CSV with columns slide_id,label")
        try:
            df = pd.read_csv(args.slide_labels)
        except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
            raise StampInputError(f"cannot parse the slide label table ({err})", args.slide_labels,
                                  hint="give a CSV with columns slide_id,label") from err
        if not {"slide_id", "label"} <= set(df.columns):
            raise StampInputError("needs columns slide_id,label", args.slide_labels)
        slide_labels = dict(zip(df["slide_id"].astype(str), df["label"]))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.baseline and args.baseline not in sources:
        raise StampInputError(f"--baseline {args.baseline!r} is not one of {list(sources)}")
    artifacts: dict = {}
    results = evaluate_sources(sources, labels, tasks, slide_labels=slide_labels, test_slides=args.test_slides,
                               baseline=args.baseline, impute_k=args.impute_k, seed=args.seed,
                               artifacts=artifacts,
                               progress=lambda m: print(f"[evaluate] {m}", flush=True,
                                                        file=sys.stderr if args.json else sys.stdout))
    json_path, html_path = write_report(args.out, results, artifacts, projection=args.projection)
    if args.json:
        print(json.dumps({"results": str(json_path), "report": str(html_path),
                          "table": [r for r in results["table"] if "mean" in r],
                          "skipped": [r for r in results["table"] if "skipped" in r],
                          "notes": results["meta"].get("notes", [])}, default=str))
        return 0
    for r in results["table"]:
        if "mean" in r:
            print(f"{r['task']:<11} {r['metric']:<22} {r['source']:<24} {r['text']}")
        elif "skipped" in r:  # asked for but not computed: say why
            print(f"{r['task']:<11} {'(skipped)':<22} {r['source']:<24} {r['skipped']}")
    for note in results["meta"].get("notes", []):
        print(f"note: {note}")
    print(f"wrote {json_path} and {html_path}")
    return 0
