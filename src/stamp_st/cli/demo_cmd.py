"""``stamp-st demo``: the whole pipeline on real HER2+ data (her2st), ending in report.html."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from ..config_types import STEPS, WORKERS
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
    p.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="re-run this stage even if it finished before (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DemoSettings, run_demo

    ensure_her2st()
    s = DemoSettings(out=Path(args.out), workers=args.workers, force=tuple(args.force),
                     pretrain_config=args.pretrain_config, align_config=args.align_config)
    if args.pretrain_steps:
        s.pretrain_steps = args.pretrain_steps
    if args.align_steps:
        s.align_steps = args.align_steps
    run_demo(s)
    return 0


def ensure_her2st() -> None:
    """No her2st in any data directory: fetch it from Zenodo into the download cache (saying what and where),
    and where that fails stop with the exact command and folder."""
    from ..download import cache_dir, download_her2st
    from ..errors import StampInputError
    from ..paths import DATA_ENV, data_dir

    root = data_dir(required=False)
    if root is not None and (root / "her2st" / "ST-cnts").is_dir():
        return _require_vocab(root)
    dest = cache_dir()
    print(f"demo: no her2st data found (STAMP_ST_DATA, ../shared/data, {dest}); fetching Zenodo record 3957257 "
          f"into {dest / 'her2st'}", file=sys.stderr)
    try:
        download_her2st(dest)
    except StampInputError as err:
        raise StampInputError(
            f"the her2st data is missing and could not be fetched ({err})", dest / "her2st",
            hint=f"where the network works run `stamp-st download her2st --dest {dest}` (copy {dest} here "
                 f"if needed), or set {DATA_ENV} to a folder holding her2st/ and vocab/") from err
    _require_vocab(data_dir(required=False) or dest)


def _require_vocab(root) -> None:
    """The released gene vocabulary is not on Zenodo: say where it must go."""
    from ..errors import StampInputError

    vocab = root / "vocab" / "stamp_gene_vocab.tsv"
    if not vocab.is_file():
        raise StampInputError("the released STAMP gene vocabulary is missing", vocab,
                              hint="copy stamp_gene_vocab.tsv from the STAMP release into that folder")
