"""``stamp-st demo``: the whole pipeline on real HER2+ data (her2st), ending in report.html."""

from __future__ import annotations

import sys

EXAMPLES = """
stamp-st demo --out stamp_st_demo
stamp-st demo --out quick_demo --seeds 1 --no-controls
stamp-st demo --out stamp_st_demo --force evaluate
"""


def register(subparsers) -> None:
    from ..config_types import STEPS, WORKERS, Range

    seeds_range = Range(1, 10, integer=True, why="training seeds")
    from ..demo import STAGES
    from .options import ranged_type

    p = subparsers.add_parser("demo", help="run the whole pipeline on real HER2+ data and write a report",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="stamp_st_demo", help="output folder (re-runs reuse finished stages)")
    p.add_argument("--workers", type=ranged_type(int, WORKERS), default=2, help="Dask workers for the corpus builds")
    p.add_argument("--pretrain-config", default="demo_cpu",
                   help="Stage-1 config: demo_cpu, her2st_small_gpu, or a JSON file (default demo_cpu)")
    p.add_argument("--align-config", default="demo_cpu",
                   help="Stage-2 config: demo_cpu, her2st_gpu, or a JSON file (default demo_cpu)")
    p.add_argument("--pretrain-steps", type=ranged_type(int, STEPS), default=None, help="Stage-1 optimizer steps")
    p.add_argument("--align-steps", type=ranged_type(int, STEPS), default=None, help="Stage-2 optimizer steps")
    p.add_argument("--seeds", type=ranged_type(int, seeds_range), default=3,
                   help="training seeds of both stages: the report gives the spread over them (default 3; "
                        "1 trains each stage once)")
    p.add_argument("--no-controls", action="store_true",
                   help="skip the shuffled-gene controls (Stage 2 trained again per seed on gene profiles "
                        "permuted among each slide's spots), which measure the genes' share of the gain")
    p.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="re-run this stage even if it finished before (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DemoSettings, run_demo

    ensure_her2st()
    s = DemoSettings(out=Path(args.out), workers=args.workers, force=tuple(args.force),
                     pretrain_config=args.pretrain_config, align_config=args.align_config, seeds=args.seeds,
                     controls=not args.no_controls)
    if args.pretrain_steps:
        s.pretrain_steps = args.pretrain_steps
    if args.align_steps:
        s.align_steps = args.align_steps
    run_demo(s)
    return 0


def ensure_her2st() -> None:
    """The demo's data: her2st and the released gene vocabulary from the data directory where it holds both;
    else fetched from their pinned public sources into the download cache (saying what, from where and how
    much; a second run finds them there), and this process reads from that folder. Where fetching fails, stop
    with the exact command and folder."""
    import os

    from ..demo import DEMO_SECTIONS, IMAGED_SECTIONS
    from ..download import (
        HER2ST_BASE_URL,
        HER2ST_URL_ENV,
        STAMP_BASE_URL,
        VOCAB_URL_ENV,
        cache_dir,
        download_her2st,
    )
    from ..errors import StampInputError
    from ..paths import DATA_ENV, data_dir
    from .download_cmd import fetch_vocabulary

    root = data_dir(required=False)
    if root is not None and _has_her2st(root) and _has_vocab(root):
        return
    dest = cache_dir()
    os.environ[DATA_ENV] = str(dest)  # every stage (and worker process) reads the fetched copy
    what = "her2st data" if root is None or not _has_her2st(root) else "gene vocabulary"
    print(f"demo: no complete data directory ({what} missing in {root or 'STAMP_ST_DATA, ../shared/data'}); "
          f"using the download cache {dest}", file=sys.stderr)
    her2st_url = os.environ.get(HER2ST_URL_ENV) or HER2ST_BASE_URL
    vocab_url = os.environ.get(VOCAB_URL_ENV) or STAMP_BASE_URL
    try:
        # the demo's sections' expression and labels, H&E of the imaged sections only (what the demo reads); files
        # already there and verified are not fetched again, so an interrupted fetch completes here
        download_her2st(dest, sections=list(DEMO_SECTIONS), base_url=her2st_url, images_for=list(IMAGED_SECTIONS))
        if not _has_vocab(dest):
            fetch_vocabulary(dest, vocab_url)
    except StampInputError as err:
        raise StampInputError(
            f"the demo's data is missing and could not be fetched ({err})", dest,
            hint=f"where the network works run `stamp-st download her2st --dest {dest}` and `stamp-st download "
                 f"vocab --dest {dest}` (copy {dest} here if needed), or set {DATA_ENV} to a folder holding "
                 f"her2st/ and vocab/ ({HER2ST_URL_ENV} / {VOCAB_URL_ENV} point at mirrors)") from err


def _has_her2st(root) -> bool:
    return (root / "her2st" / "ST-cnts").is_dir()


def _has_vocab(root) -> bool:
    return (root / "vocab" / "stamp_gene_vocab.tsv").is_file()
