"""``stamp-st demo``: the whole pipeline on real HER2+ data (her2st), ending in report.html."""

from __future__ import annotations


def register(subparsers) -> None:
    from ..demo import STAGES

    p = subparsers.add_parser("demo", help="run the whole pipeline on real HER2+ data and write a report",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="stamp_st_demo", help="output folder (re-runs reuse finished stages)")
    p.add_argument("--workers", type=int, default=2, help="Dask workers for the corpus builds")
    p.add_argument("--pretrain-steps", type=int, default=None, help="Stage-1 optimizer steps")
    p.add_argument("--align-steps", type=int, default=None, help="Stage-2 optimizer steps")
    p.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="re-run this stage even if it finished before (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..demo import DemoSettings, run_demo

    s = DemoSettings(out=Path(args.out), workers=args.workers, force=tuple(args.force))
    if args.pretrain_steps:
        s.pretrain_steps = args.pretrain_steps
    if args.align_steps:
        s.align_steps = args.align_steps
    run_demo(s)
    return 0
