"""Stage 2: align an image backbone with a pretrained gene encoder on a ``paired`` corpus (METHOD.md §5),
on the shared engine (DDP / bf16 / accumulation / atomic checkpoints / exact resume). This module is the entry
point (config, model and task, loaders, ``run_align``, cross-validation folds); the task is
``align_task``, the caches of frozen parts ``align_caches``, validation ``align_validation``.

Options beyond the release: a frozen gene encoder (the paper's setting) whose pooled features are computed
once per spot and cached (``GeneFeatureCache``: the encoder then costs nothing after the first epoch);
frozen backbone or LoRA on the ViT attention; gradient checkpointing; neighbour-aware negatives.
``released_mode`` reproduces the release: its gene pooling, local negatives, every parameter trained.
Every checkpoint is a kind ``stamp`` folder that ``stamp_st.models.stamp.load_stamp`` opens alone.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config_types import BATCH_SIZE, IMAGE_PX, LOADER_WORKERS, config_from_dict, ranged
from ..distributed import env_rank_world
from ..errors import StampInputError
from ..io_utils import atomic_write_json
from ..models.backbones import check_backbone_options
from ..models.pretext import PretextConvNet
from ..models.stamp import StampModel, stamp_checkpoint_config
from .align_caches import (
    CachedBatches,
    GeneFeatureCache,
    ImageFeatureCache,
    SpotFeatureCache,
    TrunkFeatureCache,
)
from .align_task import AUGMENTATIONS, AlignTask
from .align_validation import make_val_fn
from .engine import Trainer, TrainerConfig
from .run_folder import RunFolder, check_run_folder, latest_checkpoint


@dataclass
class AlignConfig:
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    image_px: int | None = ranged(None, IMAGE_PX)  # model input side; default: the backbone's own (224 for all named ones)
    gene_encoder: str = "random:tiny"  # checkpoint folder / run folder of Stage 1, or random:<config>
    batch_size: int = ranged(16, BATCH_SIZE)  # items (2 spots each) per micro-batch and process
    freeze_gene_encoder: bool = False
    cache_gene_features: bool = True  # only with a frozen gene encoder
    image_cache_gb: float = ranged(4.0, lo=0, hi=1e5, why="GB of cache; 0: off")  # frozen CNN backbone: cache patch features and region maps (0: off)
    freeze_backbone: bool = False
    trainable_blocks: int | None = ranged(None, lo=0, hi=10_000, integer=True)  # partial fine-tuning: only the backbone's last N blocks (+ head) train
    cache_trunk: bool = True  # partial fine-tuning of a CNN: compute the frozen trunk once per crop, cache it
    augment: str = "none"  # "dihedral": random rotations / mirrorings of the patch (or of its cached trunk map)
    # keeping the pretrained image features (AlignTask): BatchNorm in eval mode, L2-SP towards the pretrained
    # weights, HED stain jitter (scale / shift of each stain; with a cached trunk, ``stain_variants`` jittered
    # copies of each crop are cached, the first unjittered, and training draws one per spot and step)
    freeze_bn_stats: bool = False
    l2sp_weight: float = ranged(0.0, lo=0, hi=1e6, why="L2-SP weight, e.g. 0.01")
    hed_scale: float = ranged(0.0, lo=0, hi=1, hi_open=True, why="HED stain scale jitter below 1, e.g. 0.05")
    hed_shift: float = ranged(0.0, lo=0, hi=1, why="HED stain shift jitter, e.g. 0.005")
    stain_variants: int = ranged(4, lo=1, hi=64, integer=True, why="cached stain-jittered copies per crop")
    temperature_init: float | None = ranged(None, lo=0, hi=10, lo_open=True, why="contrastive temperature, e.g. 0.07")  # None: the release's 0.07
    lora: int = ranged(0, lo=0, hi=4096, integer=True, why="LoRA rank; 0: off")
    grad_ckpt: bool = False
    neighbour_radius_um: float | None = ranged(None, lo=0, hi=1e5, lo_open=True, why="micrometres")
    expr_sim_threshold: float | None = ranged(None, lo=-1, hi=1, why="a cosine similarity")
    neighbour_mode: str = "mask"
    released_mode: bool = False
    num_workers: int = ranged(0, LOADER_WORKERS)
    shuffle_buffer: int = ranged(500, lo=0, hi=10**8, integer=True)
    sample_order: str = "global"  # or "rank" (pretrain_genes.PretrainConfig.sample_order)
    val_max_batches: int | None = ranged(20, lo=1, hi=10**9, integer=True, why="batches; null: every held-out spot")  # None: every held-out spot
    val_slides: list[str] | None = None  # hold out these slides (any split) and train on all others
    trainer: dict = field(default_factory=lambda: {"lr": 1e-4, "weight_decay": 1e-3})

    @classmethod
    def load(cls, name_or_path: str | Path, **overrides) -> AlignConfig:
        """A registered Stage-2 config (``configs/align/<name>.json``) or a JSON file, with overrides."""
        from ..configs import load_config_json

        d, source = load_config_json("align", name_or_path)
        d = {k: v for k, v in d.items() if k != "description"}
        trainer = {**d.get("trainer", {}), **overrides.pop("trainer", {})}
        return cls.from_dict({**d, **overrides, "trainer": trainer}, source)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> AlignConfig:
        cfg = config_from_dict(cls, d, source, "align setting")
        if cfg.released_mode and (cfg.neighbour_radius_um is not None or cfg.expr_sim_threshold is not None):
            raise StampInputError("neighbour-aware negatives are off in released mode", source,
                                  "drop --neighbour-radius-um / --expr-sim-threshold or --released-mode")
        if sum([bool(cfg.freeze_backbone), bool(cfg.lora), cfg.trainable_blocks is not None]) > 1:
            raise StampInputError("choose one of --freeze-backbone, --lora, --trainable-blocks", source)
        check_backbone_options(cfg.backbone, cfg.trainable_blocks, cfg.lora, cfg.image_px, source)
        from ..corpus.datasets import check_sample_order

        check_sample_order(cfg.sample_order, source)
        if cfg.augment not in AUGMENTATIONS:
            raise StampInputError(f"unknown augmentation {cfg.augment!r}", source, f"choose one of {AUGMENTATIONS}")
        if cfg.hed_scale >= 1:
            raise StampInputError(f"hed_scale {cfg.hed_scale} would flip a stain's sign: keep it below 1", source,
                                  "the literature's light jitter is 0.05")
        TrainerConfig.from_dict(cfg.trainer, source)
        return cfg

    def stain_jitter(self) -> bool:
        return self.hed_scale > 0 or self.hed_shift > 0

    def to_json(self) -> dict:
        return asdict(self)


def load_gene_encoder(spec: str):
    """A Stage-1 checkpoint folder, a run folder (its latest checkpoint), or ``random:<config>`` (tests,
    demos). Returns (GeneEncoder, checkpoint config or None)."""
    from ..models.checkpoint import load_checkpoint, load_state_checked
    from ..models.gene_encoder import GeneEncoder, GeneEncoderConfig

    if spec.startswith("random:"):
        warnings.warn(f"gene encoder {spec}: untrained weights", stacklevel=2)
        return GeneEncoder(spec[len("random:"):]), None
    p = latest_checkpoint(Path(spec))  # a run folder: its latest checkpoint
    sd, cfg = load_checkpoint(p, expect_kind="gene_encoder")
    enc = GeneEncoder(GeneEncoderConfig.from_json(cfg["architecture"], p / "config.json"))
    missing, unexpected = load_state_checked(enc, sd, p)
    if missing or unexpected:
        raise StampInputError(f"gene encoder weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}",
                              p, "give a checkpoint written by `stamp-st pretrain-genes`")
    return enc, cfg


def build_align_task(cfg: AlignConfig, model: StampModel) -> AlignTask:
    """The Stage-2 task the engine trains: the model, its losses and the augmentation of the config."""
    return AlignTask(model, neighbour_radius_um=cfg.neighbour_radius_um, expr_sim_threshold=cfg.expr_sim_threshold,
                     neighbour_mode=cfg.neighbour_mode, augment=cfg.augment, freeze_bn_stats=cfg.freeze_bn_stats,
                     l2sp_weight=cfg.l2sp_weight, hed_scale=cfg.hed_scale, hed_shift=cfg.hed_shift)


def build_align_model(cfg: AlignConfig):
    from ..models.backbones import create_backbone

    enc, enc_cfg = load_gene_encoder(cfg.gene_encoder)
    bb = create_backbone(cfg.backbone, weights=cfg.backbone_weights)
    if cfg.image_px:
        bb.transform.size_px = int(cfg.image_px)
    model = StampModel(enc, bb, released=cfg.released_mode, freeze_gene_encoder=cfg.freeze_gene_encoder,
                       temperature_init=cfg.temperature_init)
    if cfg.freeze_backbone:
        from ..models.backbones import freeze_backbone

        freeze_backbone(model.visual_backbone.base_model)
    if cfg.trainable_blocks is not None:
        from ..models.backbones import freeze_early_layers

        freeze_early_layers(model.visual_backbone.base_model, cfg.trainable_blocks)
        if isinstance(model.visual_backbone, PretextConvNet) and model.visual_backbone.supports_trunk_split():
            model.visual_backbone.set_tail_blocks(cfg.trainable_blocks)
    if cfg.lora:
        from ..models.lora import apply_lora

        apply_lora(model, cfg.lora)
    if cfg.grad_ckpt:
        model.set_grad_checkpointing(True)
    model.ddp_find_unused_parameters = True  # e.g. the gene encoder's MLM head never takes part
    return model, enc_cfg


def image_cache_applies(cfg: AlignConfig, model: StampModel) -> bool:
    """Only a fully frozen CNN: a ViT's patch and region passes carry the trainable pretext token."""
    return (cfg.freeze_backbone and not cfg.lora and cfg.image_cache_gb > 0
            and isinstance(model.visual_backbone, PretextConvNet))


def trunk_cache_applies(cfg: AlignConfig, model: StampModel) -> bool:
    """A CNN fine-tuned in its last blocks whose trunk can be split off (a ViT's pretext token enters at
    the first block, so no part of a ViT is independent of trainable parameters)."""
    vb = model.visual_backbone
    return (cfg.trainable_blocks is not None and cfg.cache_trunk and not cfg.lora and cfg.image_cache_gb > 0
            and isinstance(vb, PretextConvNet) and vb.tail_blocks is not None)


def check_val_slides(val_slides, manifest: dict, corpus) -> set[str] | None:
    if not val_slides:
        return None
    present = {sh["slide_id"] for sh in manifest.get("shards", [])}
    unknown = sorted(set(val_slides) - present)
    if unknown:
        raise StampInputError(f"--val-slides {unknown} are not in the corpus", corpus,
                              f"slides in it: {', '.join(sorted(present)[:20])}{' ...' if len(present) > 20 else ''}")
    if present <= set(val_slides):
        raise StampInputError("--val-slides holds out every slide of the corpus: nothing is left to train on",
                              corpus)
    return set(val_slides)


def run_align(corpus: str | Path | None, cfg: AlignConfig, out: str | Path, resume: str | bool = "auto",
              device: str | None = None, train_data=None, val_data=None, verify_sha256: bool = True,
              caches: dict[str, SpotFeatureCache] | None = None) -> dict:
    """Train; ``train_data``/``val_data`` replace the corpus loaders (tests, synthetic data). ``verify_sha256``:
    check every local shard against the manifest's checksum once before training (sizes are always checked).
    ``caches``: a dict shared between runs with the same frozen parts (cross-validation folds), filled on
    first use."""
    check_run_folder(out)
    rank, world, _ = env_rank_world()
    tcfg = TrainerConfig.from_dict(dict(cfg.trainer))
    torch.manual_seed(tcfg.seed)
    model, enc_cfg = build_align_model(cfg)
    task = build_align_task(cfg, model)
    crop, tokenizer, vocab = None, None, None
    if enc_cfg is not None:
        vocab, tokenizer = enc_cfg.get("vocabulary"), enc_cfg.get("tokenizer")
    if corpus is not None:
        from torch.utils.data import DataLoader

        from ..corpus.datasets import PairedSpotDataset, collate_pairs
        from ..corpus.layout import check_shards, read_manifest

        manifest, base = read_manifest(corpus)
        check_shards(manifest, base, sha256=verify_sha256)
        if manifest.get("kind") != "paired":
            raise StampInputError(f"align needs a 'paired' corpus, this one is {manifest.get('kind')!r}", corpus,
                                  "build one with `stamp-st build-corpus MANIFEST OUT --kind paired`")
        crop = manifest.get("crop_geometry")
        tokenizer = manifest.get("tokenizer", tokenizer)
        man_ck = manifest.get("vocab", {}).get("checksum")
        if vocab is not None and man_ck and vocab.get("checksum") not in (None, man_ck):
            raise StampInputError(f"corpus vocabulary {man_ck} differs from the gene encoder's "
                                  f"{vocab.get('checksum')}", corpus, "build the corpus with the same vocabulary")
        if enc_cfg is not None:
            from ..preprocessing.tokenizer import check_same_divisors, recorded_divisors_checksum

            check_same_divisors(manifest.get("tokenizer", {}).get("divisors_checksum"),
                                recorded_divisors_checksum(enc_cfg.get("tokenizer"), vocab), corpus,
                                "the corpus", "the gene encoder's training corpus")

        holdout = check_val_slides(cfg.val_slides, manifest, corpus)

        def loader(split, shuffle, equalize):
            if holdout is not None:  # cross-validation over one corpus: its own split is ignored
                sel = {"split": None, "slides": holdout} if split == "val" else {"split": None, "exclude_slides": holdout}
            else:
                sel = {"split": split}
            glob = cfg.batch_size * world if shuffle and cfg.sample_order == "global" else None
            ds = PairedSpotDataset(corpus, seed=tcfg.seed, shuffle=shuffle, buffer_size=cfg.shuffle_buffer,
                                   rank=rank, world_size=world, equalize=equalize, global_batch=glob, **sel)
            return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate_pairs,
                              drop_last=shuffle)

        train_data = loader("train", True, "drop" if world > 1 else None)
        if holdout is not None or manifest.get("splits", {}).get("val", {}).get("n_samples", 0) > 0:
            val_data = loader("val", False, "pad" if world > 1 else None)
    if train_data is None:
        raise StampInputError("no training data: give a corpus")
    shared = {} if caches is None else caches
    caches = {}  # the ones this run uses
    if cfg.freeze_gene_encoder and cfg.cache_gene_features:
        caches["gene_cache"] = shared.setdefault("gene_cache", GeneFeatureCache())
    if image_cache_applies(cfg, model):
        caches["image_cache"] = shared.setdefault("image_cache", ImageFeatureCache(cfg.image_cache_gb * 2**30))
    elif trunk_cache_applies(cfg, model):
        # the jittered copies come from a fixed generator, so runs that differ only in their seed (folds,
        # seeds of one recipe) share one bank; the seed still decides which copy each step draws. The trunk
        # ends where the trainable tail begins: runs with another tail need other maps
        key = f"trunk_cache:tail{cfg.trainable_blocks}" + (
            f":hed{cfg.hed_scale}/{cfg.hed_shift}x{cfg.stain_variants}" if cfg.stain_jitter() else "")
        caches["trunk_cache"] = shared.setdefault(key, TrunkFeatureCache(
            cfg.image_cache_gb * 2**30, cfg.hed_scale, cfg.hed_shift, cfg.stain_variants, seed=0))
    if caches:
        train_data = CachedBatches(train_data, model, list(caches.values()), train=True)
        if val_data is not None:
            val_data = CachedBatches(val_data, model, list(caches.values()))
    val_fn = make_val_fn(val_data, cfg.val_max_batches) if val_data is not None else None

    def ck_config():
        return stamp_checkpoint_config(model, vocabulary=vocab, tokenizer=tokenizer, crop_geometry=crop,
                                       align=cfg.to_json())

    if rank == 0:
        RunFolder(out).write_config("align_config.json", {**cfg.to_json(), "corpus": str(corpus)})
    trainer = Trainer(task, tcfg, out, train_data, val_fn=val_fn, checkpoint_config=ck_config, device=device)
    result = trainer.fit(resume=resume)
    result = {**result, **{name: c.stats() for name, c in caches.items()}}
    return result


def corpus_slides(corpus) -> list[str]:
    from ..corpus.layout import read_manifest

    manifest, _ = read_manifest(corpus)
    return list(dict.fromkeys(sh["slide_id"] for sh in manifest.get("shards", [])))


def run_align_folds(corpus: str | Path, cfg: AlignConfig, out: str | Path, slides: list[str] | None = None,
                    resume: str | bool = "auto", device: str | None = None, final: bool = True,
                    verify_sha256: bool = True, progress=None,
                    caches: dict[str, SpotFeatureCache] | None = None) -> dict:
    """Cross-validation over the slides of one paired corpus: one model per held-out slide
    (``OUT/folds/<slide>/``, trained on every other slide and validated on the held-out one, so each slide
    has a model that never saw it), then, with ``final``, one model on every slide with the same recipe
    (``OUT/``), the one to embed new slides with. The frozen parts' caches are shared between runs (and
    with the caller's ``caches``: only between runs on corpora with the same crops and tokens)."""
    slides = list(slides) if slides else corpus_slides(corpus)
    if len(slides) < 2:
        raise StampInputError(f"folds need at least 2 slides, the corpus has {len(slides)}", corpus)
    out = Path(out)
    caches = {} if caches is None else caches
    say = progress or (lambda msg: None)
    folds: dict = {}
    for sl in slides:
        say(f"fold: {sl} held out")
        fold_cfg = AlignConfig.from_dict({**cfg.to_json(), "val_slides": [sl]})
        res = run_align(corpus, fold_cfg, out / "folds" / sl, resume=resume, device=device, caches=caches,
                        verify_sha256=verify_sha256 and not folds)  # the shards are hashed once
        folds[sl] = {"run": str(out / "folds" / sl), "result": res}
    result = {"folds": folds, "slides": slides}
    if final:
        say("final model: every slide")
        final_cfg = AlignConfig.from_dict({**cfg.to_json(), "val_slides": None})
        result["final"] = {"run": str(out), "result": run_align(corpus, final_cfg, out, resume=resume,
                                                               device=device, caches=caches, verify_sha256=False)}
    atomic_write_json(out / "folds.json", {"held_out": {sl: f"folds/{sl}" for sl in slides},
                                           "final": "." if final else None})
    return result
