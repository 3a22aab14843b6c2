"""``stamp-st reproduce``: the paper's whole chain at its own scale, one command, every stage resumable.

HEST-1k download -> gene and paired corpora (Dask) -> Stage 1 and Stage 2 under torchrun (N processes here, or
srun + torchrun on every node of a SLURM allocation) -> embedding of the held-out samples -> benchmark ->
report. ``--smoke`` runs the same chain in minutes on 2 CPU cores, on three her2st sections written in HEST's
layout. Re-running the command skips finished stages and resumes interrupted ones."""

from __future__ import annotations

EXAMPLES = """
stamp-st reproduce --smoke --out smoke
stamp-st reproduce --config paper --hest-root /data/hest --nproc-per-node 4 --out runs/paper
stamp-st reproduce --config paper --launcher slurm --nnodes 2 --nproc-per-node 4 --print-commands
"""


def register(subparsers) -> None:
    from ..config_types import field_range
    from ..configs import registered
    from ..pipeline.launch import LAUNCHERS
    from ..pipeline.reproduce import STAGES, ReproduceConfig
    from .options import ranged_type

    p = subparsers.add_parser("reproduce", help="the paper's chain at scale (HEST-1k -> both stages -> benchmark)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None,
                   help="pipeline config: " + ", ".join(registered("reproduce")) + " or a JSON file "
                        "(default paper; smoke with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="a few minutes on 2 CPU cores: builds a small HEST root from her2st under OUT/hest_smoke")
    p.add_argument("--out", default="stamp_st_reproduce", help="output folder (re-runs reuse finished stages)")
    p.add_argument("--hest-root", help="a local HEST-1k root (st/, wsis/, metadata/): no download")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: torchrun here; slurm: srun + torchrun on every node of the allocation")
    p.add_argument("--nproc-per-node", type=ranged_type(int, field_range(ReproduceConfig, "nproc_per_node")), help="processes (GPUs) per node in both training stages")
    p.add_argument("--nnodes", type=ranged_type(int, field_range(ReproduceConfig, "nnodes")), help="nodes (with --launcher slurm)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="torchrun rendezvous (slurm default: the first node of $SLURM_JOB_NODELIST, port 29500)")
    p.add_argument("--workers", type=ranged_type(int, field_range(ReproduceConfig, "dask_workers")), help="local Dask worker processes for the corpora")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler for the corpora")
    p.add_argument("--print-commands", action="store_true",
                   help="write the stage configs and print the exact torchrun / srun lines; run nothing")
    p.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="re-run this stage even if it finished before (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object (progress and training output go to stderr)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    from pathlib import Path

    from ..pipeline.launch import Launch, head_node_endpoint
    from ..pipeline.reproduce import ReproduceConfig, Settings, print_summary, run_reproduce

    out = Path(args.out)
    cfg = ReproduceConfig.load(args.config or ("smoke" if args.smoke else "paper"))
    if args.hest_root:
        cfg.hest_root = args.hest_root
    elif args.smoke and not args.print_commands:
        import sys

        from ..pipeline.smoke_data import build_smoke_hest_root

        log = sys.stderr if args.json else sys.stdout
        cfg.hest_root = str(build_smoke_hest_root(out / "hest_smoke",
                                                  say=lambda m: print(f"[reproduce] {m}", file=log)))
    for key, value in (("nproc_per_node", args.nproc_per_node), ("nnodes", args.nnodes),
                       ("dask_workers", args.workers), ("dask_scheduler", args.scheduler)):
        if value is not None:
            setattr(cfg, key, value)
    cfg = ReproduceConfig.from_dict(cfg.to_json(), "the command line")  # re-validate the overrides
    endpoint = args.rdzv_endpoint
    if args.launcher == "slurm" and endpoint is None and not args.print_commands:
        endpoint = head_node_endpoint(os.environ.get("SLURM_JOB_NODELIST"))
    launch = Launch(args.launcher, cfg.nproc_per_node, cfg.nnodes, endpoint)
    rep = run_reproduce(Settings(out=out, config=cfg, launch=launch, force=tuple(args.force),
                                 print_commands=args.print_commands, json=args.json))
    if args.print_commands:
        return 0
    if args.json:
        import json

        print(json.dumps(rep, default=str))
    else:
        print_summary(rep)
    return 0
