"""``stamp-st align``: Stage 2, align an image backbone with a pretrained gene encoder on a ``paired`` corpus
(four losses: patch<->spot, region<->spot, patch->region, cross-scale patch localisation).

Runs on one process as is, or under ``torchrun --nproc-per-node N -m stamp_st.cli align ...`` (DDP; negatives
are gathered from every process). Re-running the same command resumes from the run's latest checkpoint.
Every checkpoint is a ``stamp`` folder usable by ``stamp-st embed``."""

from __future__ import annotations

import json

# Without --config the command uses AlignConfig's defaults and these trainer settings (what ``align`` has always
# done); with --config, the config's values, and only the options given on the command line override them.
CLI_TRAINER_DEFAULTS = {"max_steps": 1000, "lr": 1e-4, "weight_decay": 1e-3, "warmup_steps": 0, "precision": "auto"}
TRAINER_OPTIONS = tuple(CLI_TRAINER_DEFAULTS)  # the trainer settings that are command-line options


EXAMPLES = """
stamp-st align corpus_paired --gene-encoder runs/genes --out runs/align
stamp-st align corpus_paired --gene-encoder runs/genes --backbone uni_v1 --lora 8 --out runs/align_uni
"""


def register(subparsers) -> None:
    from ..config_types import BATCH_SIZE, IMAGE_PX, LOADER_WORKERS, LR, STEPS, Range
    from ..configs import registered
    from ..models.registry import backbone_names, backbones_supporting, declared_capabilities
    from .options import add_set_option, device_type, ranged_type

    num = ranged_type(float)  # finite; the range is AlignConfig's, checked with the option named (check_options)

    p = subparsers.add_parser("align", help="Stage 2: align an image backbone with the gene encoder",
                              description=__doc__.splitlines()[0])
    p.add_argument("corpus", help="corpus folder (or its manifest.json) built with --kind paired")
    p.add_argument("--config", help="a named Stage-2 config (" + ", ".join(registered("align")) + ") or a JSON "
                   "file; options given here override it (without it: the defaults shown below)")
    p.add_argument("--backbone", help="a registered backbone (default efficientnet_lite0, the offline one): "
                   + ", ".join(backbone_names()))
    p.add_argument("--backbone-weights", help="local weight file of the backbone (UNI, CONCH, timm models)")
    p.add_argument("--image-px", type=ranged_type(int, IMAGE_PX), help="model input side in px (default: the backbone's: "
                   + ", ".join(sorted({f"{c.input_px} ({n})" if c.input_px != 224 else "224" for n, c in
                                       declared_capabilities().items()})) + ")")
    p.add_argument("--gene-encoder", required=True,
                   help="Stage-1 run or checkpoint folder (stamp-st pretrain-genes), or random:<config> for tests")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, tb/)")
    p.add_argument("--freeze-gene-encoder", action="store_true", default=None,
                   help="the paper's setting: gene encoder frozen, its features cached once per spot")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="train only heads, pretext token and thumbnail map")
    g.add_argument("--trainable-blocks", type=int, default=None, metavar="N",
                   help="partial fine-tuning: train only the backbone's last N blocks (and its head); on a CNN the "
                        "frozen trunk is computed once per crop and cached. Backbones: "
                        + ", ".join(backbones_supporting("trainable_blocks")) + " (`stamp-st doctor` lists N)")
    g.add_argument("--lora", type=int, metavar="R", help="LoRA of rank R on the ViT attention (qkv). Backbones: "
                   + ", ".join(backbones_supporting("lora")))
    p.add_argument("--grad-ckpt", action="store_true", default=None, help="gradient checkpointing in the ViT blocks")
    p.add_argument("--augment", choices=["none", "dihedral"],
                   help="none (default) or dihedral: random rotations / mirrorings of the patch (of its cached trunk map on a CNN)")
    p.add_argument("--temperature-init", type=num, default=None,
                   help="initial contrastive temperature (default: the release's 0.07; 1.0 suits a few thousand "
                        "spots)")
    p.add_argument("--folds", action="store_true",
                   help="cross-validation: one model per slide held out (OUT/folds/<slide>/), then one final model "
                        "on every slide (OUT/)")
    p.add_argument("--neighbour-radius-um", type=num,
                   help="mask same-slide negatives closer than this to the anchor (off by default)")
    p.add_argument("--expr-sim-threshold", type=num,
                   help="mask negatives whose gene features have cosine similarity above this")
    p.add_argument("--neighbour-mode", choices=["mask", "soft"], help="default mask")
    p.add_argument("--released-mode", action="store_true", default=None,
                   help="the release's behaviour: its gene pooling, local negatives, no neighbour handling")
    p.add_argument("--val-slides", type=lambda v: [x for x in v.split(",") if x], default=None, metavar="ID,ID",
                   help="hold out these slide ids for validation and train on every other slide of the corpus, "
                        "whatever split it gave them (cross-validation over one corpus)")
    p.add_argument("--val-max-batches", type=ranged_type(int, Range(0, 10**9, integer=True)),
                   help="validation batches per evaluation (0: every held-out spot; default 20)")
    p.add_argument("--image-cache-gb", type=num,
                   help="with --freeze-backbone or --trainable-blocks on a CNN: cache the frozen part's outputs "
                        "up to this size (0: off; default 4)")
    p.add_argument("--batch-size", type=ranged_type(int, BATCH_SIZE), help="items (2 spots each) per micro-batch and process (default 16)")
    p.add_argument("--num-workers", type=ranged_type(int, LOADER_WORKERS), help="data loader processes (default 0)")
    p.add_argument("--max-steps", type=ranged_type(int, STEPS), help="default 1000")
    p.add_argument("--lr", type=ranged_type(float, LR), help="default 1e-4")
    p.add_argument("--weight-decay", type=num, help="default 1e-3")
    p.add_argument("--warmup-steps", type=int, help="default 0")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default auto")
    p.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 ... (default: GPU when present)")
    p.add_argument("--skip-sha256", action="store_true",
                   help="do not hash every shard against manifest.json before training (sizes are still checked)")
    add_set_option(p, "ckpt_every=500")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--resume", dest="resume", action="store_const", const=True, default="auto")
    r.add_argument("--no-resume", dest="resume", action="store_const", const=False)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (the default "
                   "for align; accepted for the same flag on every command)")
    p.set_defaults(func=run)


def config_from_args(args):
    """The AlignConfig of a command line: ``--config`` (or the command's defaults), then the options given."""
    from ..training.align import AlignConfig
    from ..training.engine import TrainerConfig
    from .options import check_options, parse_set_overrides

    given = check_options(AlignConfig, {
        "backbone": args.backbone, "backbone_weights": args.backbone_weights,
        "image_px": args.image_px, "gene_encoder": args.gene_encoder,
        "batch_size": args.batch_size, "freeze_gene_encoder": args.freeze_gene_encoder,
        "freeze_backbone": args.freeze_backbone, "lora": args.lora, "grad_ckpt": args.grad_ckpt,
        "trainable_blocks": args.trainable_blocks, "augment": args.augment,
        "temperature_init": args.temperature_init,
        "neighbour_radius_um": args.neighbour_radius_um, "expr_sim_threshold": args.expr_sim_threshold,
        "neighbour_mode": args.neighbour_mode, "released_mode": args.released_mode,
        "num_workers": args.num_workers, "val_slides": args.val_slides,
        "val_max_batches": args.val_max_batches or None, "image_cache_gb": args.image_cache_gb})
    if args.val_max_batches == 0:
        given["val_max_batches"] = None  # every held-out spot
    trainer = check_options(TrainerConfig, {k: getattr(args, k) for k in TRAINER_OPTIONS})
    trainer.update(parse_set_overrides(args.set, "ckpt_every=500", cls=TrainerConfig))
    if not args.config:
        return AlignConfig.from_dict({**given, "trainer": {**CLI_TRAINER_DEFAULTS, **trainer}})
    if {"freeze_backbone", "trainable_blocks", "lora"} & set(given):  # the command line picks what trains
        given = {"freeze_backbone": False, "trainable_blocks": None, "lora": 0, **given}
    return AlignConfig.load(args.config, **given, trainer=trainer)


def run(args) -> int:
    from ..training.align import run_align

    cfg = config_from_args(args)
    if args.folds:
        if args.val_slides:
            from ..errors import StampInputError

            raise StampInputError("--folds holds out every slide in turn: drop --val-slides")
        from ..training.align import run_align_folds

        result = run_align_folds(args.corpus, cfg, args.out, resume=args.resume, device=args.device,
                                 verify_sha256=not args.skip_sha256,
                                 progress=lambda m: print(f"[align] {m}", flush=True))
    else:
        result = run_align(args.corpus, cfg, args.out, resume=args.resume, device=args.device,
                           verify_sha256=not args.skip_sha256)
    from ..distributed import env_rank_world

    if env_rank_world()[0] == 0:  # one summary per run, not one per process
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, default=str))
    return 0
