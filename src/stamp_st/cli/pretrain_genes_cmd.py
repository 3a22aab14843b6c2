"""``stamp-st pretrain-genes``: Stage 1, train the gene encoder (IGR, then IGR + CGR) on a ``genes`` corpus.

Runs on one process as is, or on several under ``torchrun --nproc-per-node N -m stamp_st.cli pretrain-genes
...`` (DDP; ``"strategy": "fsdp"`` in the trainer settings shards large models). Re-running the same command
resumes from the run folder's latest checkpoint and continues exactly where the run stopped."""

from __future__ import annotations

EXAMPLES = """
stamp-st pretrain-genes corpus_genes --out runs/genes
torchrun --nproc-per-node 4 -m stamp_st.cli pretrain-genes corpus_genes --config reference --out runs/genes
"""


def register(subparsers) -> None:
    from ..config_types import BATCH_SIZE, STEPS
    from ..configs import registered
    from .options import add_set_option, device_type, ranged_type

    p = subparsers.add_parser("pretrain-genes", help="Stage 1: pretrain the gene encoder on a genes corpus",
                              description=__doc__.splitlines()[0])
    p.add_argument("corpus", help="corpus folder (or its manifest.json) built with --kind genes")
    p.add_argument("--config", default="demo_cpu",
                   help="pretraining config: " + ", ".join(registered("pretrain")) + ", or a JSON file (default %(default)s)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, tb/)")
    p.add_argument("--model", help="override the gene encoder config: tiny, small, reference or a JSON file")
    p.add_argument("--vocab", help="gene vocabulary TSV the corpus was built with (default: the released one)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default="auto",
                   help="require a checkpoint to resume from (default: resume when the run folder has one)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="refuse to touch a run folder that already holds checkpoints")
    p.add_argument("--epochs", type=ranged_type(int, STEPS), help="override the number of epochs")
    p.add_argument("--max-steps", type=ranged_type(int, STEPS),
                   help="train this many optimizer steps (replaces epochs)")
    p.add_argument("--batch-size", type=ranged_type(int, BATCH_SIZE),
                   help="groups of 9 spots per micro-batch and process")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="override the precision")
    p.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 ... (default: GPU when present)")
    p.add_argument("--skip-sha256", action="store_true",
                   help="do not hash every shard against manifest.json before training (sizes are still checked)")
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:

    from ..distributed import env_rank_world
    from ..preprocessing.vocab import GeneVocabulary
    from ..training.engine import TrainerConfig
    from ..training.pretrain_genes import PretrainConfig, run_pretrain
    from .options import parse_set_overrides

    overrides = parse_set_overrides(args.set, cls=TrainerConfig)  # checked before the config file is read
    cfg = PretrainConfig.load(args.config)
    if args.model:
        cfg.model = args.model
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.max_steps is not None:
        cfg.epochs = None
        cfg.trainer["max_steps"] = args.max_steps
        if cfg.phases and any("epochs" in ph for ph in cfg.phases) and env_rank_world()[0] == 0:
            print("note: --max-steps with epoch-measured phases: the phases still switch at epoch boundaries")
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    if args.precision:
        cfg.trainer["precision"] = args.precision
    cfg.trainer.update(overrides)
    cfg = PretrainConfig.from_dict(cfg.to_json(), args.config)  # re-validate the overrides
    vocab = GeneVocabulary.from_tsv(args.vocab) if args.vocab else None
    result = run_pretrain(args.corpus, cfg, args.out, resume=args.resume, vocab=vocab, device=args.device,
                          verify_sha256=not args.skip_sha256)
    if env_rank_world()[0] != 0:
        return 0
    if args.json:
        import json

        print(json.dumps({"step": result["step"], "epoch": result["epoch"], "val": result.get("val", {}),
                          "checkpoints": f"{args.out}/checkpoints"}, default=str))
        return 0
    val = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.get("val", {}).items()))
    print(f"done: step {result['step']}, epoch {result['epoch']}" + (f"; held-out slides: {val}" if val else ""))
    print(f"checkpoints in {args.out}/checkpoints (latest: {args.out}/checkpoints/latest)")
    return 0
