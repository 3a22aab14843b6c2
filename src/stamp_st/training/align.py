"""Stage 2: align an image backbone with a pretrained gene encoder on a ``paired`` corpus (METHOD.md §5),
on the shared engine (DDP / bf16 / accumulation / atomic checkpoints / exact resume).

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
from ..models.stamp import StampModel, pool_gene_states, stamp_checkpoint_config
from .align_task import AUGMENTATIONS, AlignTask
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


class SpotFeatureCache:
    """Outputs of a frozen module per spot (key: slide id + spot id), computed on first sight and reused.

    Exactly what the model would compute every step (the module is frozen and in eval mode), at a fraction
    of the cost: it runs once per spot instead of once per spot and epoch. Subclasses say which batch
    entries they read (``inputs``, [B, 2, ...]) and which they put in their place. Beyond ``max_bytes`` new
    spots are computed but not stored, so a corpus too large to cache stays correct, only slower."""

    inputs: tuple[str, ...] = ()

    def __init__(self, max_bytes: float = float("inf")):
        self.features: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0
        self.bytes, self.max_bytes = 0, max_bytes

    def compute(self, model: StampModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fill(self, batch: dict, model: StampModel, train: bool = False) -> dict:
        """``batch`` with the cached outputs in place of the inputs (fp32 features, outside any autocast).
        ``train``: a training batch (a cache of augmented copies draws one; otherwise the plain one)."""
        with torch.autocast(model.logit_scale.device.type, enabled=False):
            return self.pick(self._fill(batch, model), train)

    def pick(self, batch: dict, train: bool) -> dict:
        return batch

    def _fill(self, batch: dict, model: StampModel) -> dict:
        keys = [f"{sid}\x00{spot}" for sid, pair in zip(batch["slide_id"], batch["spot_id"]) for spot in pair]
        shape = batch[self.inputs[0]].shape[:2]
        todo = [i for i, k in enumerate(keys) if k not in self.features]
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        if todo:
            flat = {n: batch[n].reshape(len(keys), *batch[n].shape[2:])[todo] for n in self.inputs}
            with torch.no_grad():
                out = self.compute(model, flat)
            for j, i in enumerate(todo):
                row = {n: v[j].clone() for n, v in out.items()}
                fresh[i] = row
                size = sum(v.numel() * v.element_size() for v in row.values())
                if self.bytes + size <= self.max_bytes:
                    self.features[keys[i]] = row
                    self.bytes += size
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        rows = [fresh[i] if i in fresh else self.features[k] for i, k in enumerate(keys)]
        filled = {n: torch.stack([r[n] for r in rows]).reshape(*shape, *rows[0][n].shape) for n in rows[0]}
        return {**batch, **filled, **{n: None for n in self.inputs}}

    def stats(self) -> dict:
        return {"spots": len(self.features), "hits": self.hits, "misses": self.misses, "bytes": self.bytes}


class GeneFeatureCache(SpotFeatureCache):
    """Pooled features of a frozen gene encoder (``tokens`` -> ``gene_feat``)."""

    inputs = ("tokens",)

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        feat = pool_gene_states(model.spot_backbone, inputs["tokens"].to(dev), model.pooling)
        return {"gene_feat": feat.float().cpu()}


class ImageFeatureCache(SpotFeatureCache):
    """A frozen CNN backbone's patch feature and region feature map (``patch``, ``region`` ->
    ``patch_feat``, ``region_map``): the pretext query, heads and temperature still train on top. Maps are
    kept in float16 (EfficientNet-Lite0 at 224 px: 7 x 7 x 1280, 125 kB a spot)."""

    inputs = ("patch", "region")

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        vb = model.visual_backbone
        patch_f = vb.forward_patch(model.prepare_images(inputs["patch"].to(dev)))
        fmap = vb.region_map(model.prepare_images(inputs["region"].to(dev)))
        return {"patch_feat": patch_f.float().cpu(), "region_map": fmap.half().cpu()}


class TrunkFeatureCache(SpotFeatureCache):
    """Partial fine-tuning of a CNN: the frozen trunk's maps of the patch and the region (``patch``,
    ``region`` -> ``patch_trunk``, ``region_trunk``, float16); the last blocks, conv head, pretext query and
    heads train on top, so a step costs the tail's forward and backward only. Rotations / mirrorings are
    then applied to the cached patch map (``augment="dihedral"``).

    With HED stain jitter (``hed_scale`` / ``hed_shift`` > 0) the cache holds ``variants`` maps per crop:
    the plain one first, then jittered copies (one draw per spot for patch and region, from a generator
    seeded by ``seed``); a training batch takes one of them at random per spot, any other batch the plain one."""

    inputs = ("patch", "region")

    def __init__(self, max_bytes: float = float("inf"), hed_scale: float = 0.0, hed_shift: float = 0.0,
                 variants: int = 1, seed: int = 0):
        super().__init__(max_bytes)
        jitter = hed_scale > 0 or hed_shift > 0
        self.hed_scale, self.hed_shift = hed_scale, hed_shift
        self.variants = int(variants) if jitter else 1
        self._rng = None
        if jitter:
            import numpy as np

            self._rng = np.random.default_rng(seed)

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        vb = model.visual_backbone
        if self.variants == 1:
            return {"patch_trunk": vb.trunk(model.prepare_images(inputs["patch"].to(dev))).half().cpu(),
                    "region_trunk": vb.trunk(model.prepare_images(inputs["region"].to(dev))).half().cpu()}
        from ..preprocessing.stain import hed_jitter, hed_jitter_params

        out: dict[str, list[torch.Tensor]] = {"patch_trunk": [], "region_trunk": []}
        n = inputs["patch"].shape[0]
        for v in range(self.variants):
            if v:
                scale, shift = hed_jitter_params(n, self.hed_scale, self.hed_shift, self._rng)
            for k in ("patch", "region"):
                x = inputs[k]
                if v:
                    x = torch.from_numpy(hed_jitter(x.cpu().numpy(), scale, shift))
                out[f"{k}_trunk"].append(vb.trunk(model.prepare_images(x.to(dev))).half().cpu())
        return {k: torch.stack(v, dim=1) for k, v in out.items()}  # [n, variants, C, h, w]

    def pick(self, batch: dict, train: bool) -> dict:
        if self.variants == 1:
            return batch
        p = batch["patch_trunk"]  # [B, 2, variants, C, h, w]
        choice = (torch.randint(0, self.variants, p.shape[:2]) if train
                  else torch.zeros(p.shape[:2], dtype=torch.long))
        idx = choice.view(*choice.shape, 1, 1, 1, 1).expand(*p.shape[:2], 1, *p.shape[3:])
        return {**batch, **{k: batch[k].gather(2, idx).squeeze(2) for k in ("patch_trunk", "region_trunk")}}


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


class CachedBatches:
    """Wraps a loader: every batch goes through the caches; epochs pass through."""

    def __init__(self, loader, model: StampModel, caches: list[SpotFeatureCache], train: bool = False):
        self.loader, self.model, self.caches, self.train = loader, model, caches, train

    def set_epoch(self, epoch: int) -> None:
        ds = getattr(self.loader, "dataset", self.loader)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            for cache in self.caches:
                batch = cache.fill(batch, self.model, train=self.train)
            yield batch


def make_val_fn(loader, max_batches: int | None, ks: tuple[int, ...] = (1, 5, 10)):
    """Mean of every loss and of CSP accuracy over held-out slides (rank-averaged), plus patch -> spot
    retrieval recall@k among the anchor spots of each held-out slide (this rank's share of them, each spot
    once). ``max_batches=None``: the whole validation split."""

    def val_fn(model) -> dict:
        import torch.distributed as dist

        raw = getattr(model, "module", model)
        sums, n = {}, 0
        img, gene, slides, seen = [], [], [], set()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                out = raw(batch)  # the task: losses
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
                v_emb, g_emb = anchor_embeddings(raw.model, batch)
                keep = []
                for j, (sid, pair) in enumerate(zip(batch["slide_id"], batch["spot_id"])):
                    if (sid, pair[0]) not in seen:  # padded / wrapped epochs repeat spots
                        seen.add((sid, pair[0]))
                        keep.append(j)
                img.append(v_emb[keep])
                gene.append(g_emb[keep])
                slides += [batch["slide_id"][j] for j in keep]
        vec = torch.tensor([sums.get(k, 0.0) for k in sorted(sums)] + [n], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        total = float(vec[-1])
        result = {k: float(v) / total for k, v in zip(sorted(sums), vec[:-1])} if total else {}
        if img:
            result.update(retrieval_recall(torch.cat(img), torch.cat(gene), slides, ks))
        return result

    return val_fn


def anchor_embeddings(model: StampModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp_V and Stamp_G of each item's anchor spot (index 0 of the pair)."""
    dev = model.logit_scale.device
    if batch.get("patch_feat") is not None:
        v = model.encode_image(patch_feat=batch["patch_feat"][:, 0].to(dev))
    elif batch.get("patch_trunk") is not None:
        trunk = batch["patch_trunk"][:, 0].to(dev).float()
        v = model.encode_image(patch_feat=model.visual_backbone.patch_from_trunk(trunk))
    else:
        v = model.encode_image(batch["patch"][:, 0].to(dev))
    if batch.get("gene_feat") is not None:
        g = model.encode_genes(gene_feat=batch["gene_feat"][:, 0].to(dev))
    else:
        g = model.encode_genes(batch["tokens"][:, 0].to(dev))
    return v.float().cpu(), g.float().cpu()


def retrieval_recall(img: torch.Tensor, gene: torch.Tensor, slides: list[str], ks=(1, 5, 10)) -> dict:
    """Mean over slides of patch -> spot recall@k (the true spot among the k most similar spots of the same
    slide; ties broken at random in expectation, see ``evaluation.retrieval``), with chance level beside it."""
    import numpy as np

    from ..metrics import recall_from_ranks, true_match_ranks

    out: dict[str, list[float]] = {}
    slides_arr = np.asarray(slides).astype(str)
    for sl in dict.fromkeys(slides_arr.tolist()):
        idx = np.flatnonzero(slides_arr == sl)
        if len(idx) < 2:
            continue
        ranks = true_match_ranks(img[idx].numpy(), gene[idx].numpy())
        for k, v in recall_from_ranks(ranks, ks).items():
            out.setdefault(f"recall@{k}", []).append(v)
            out.setdefault(f"chance_recall@{k}", []).append(min(k, len(idx)) / len(idx))
    return {k: sum(v) / len(v) for k, v in out.items()}


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

        from ..corpus.datasets import PairedSpotDataset, check_shards, collate_pairs, load_corpus_manifest

        manifest, base = load_corpus_manifest(corpus)
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
        # seeds of one recipe) share one bank; the seed still decides which copy each step draws
        key = "trunk_cache" if not cfg.stain_jitter() else \
            f"trunk_cache:hed{cfg.hed_scale}/{cfg.hed_shift}x{cfg.stain_variants}"
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
    from ..corpus.datasets import load_corpus_manifest

    manifest, _ = load_corpus_manifest(corpus)
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


class SyntheticPairs(torch.utils.data.IterableDataset):
    """In-memory Stage-2 batches with the corpus contract, where image colour encodes the spot's gene
    program, so alignment is learnable (tests, demos). Order is a pure function of (seed, epoch)."""

    def __init__(self, n_items: int = 32, img_px: int = 64, context: int = 32, vocab_size: int = 200,
                 batch_size: int = 4, seed: int = 0):
        import numpy as np

        self.n_items, self.batch_size, self.seed, self.epoch = n_items, batch_size, seed, 0
        rng = np.random.default_rng(seed)
        programs = np.stack([rng.permutation(vocab_size) for _ in range(4)])
        colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], np.uint8)
        self.items = []
        for i in range(n_items):
            pair = {}
            progs = [rng.integers(0, 4), rng.integers(0, 4)]
            toks = np.zeros((2, context), np.int64)
            for s, p in enumerate(progs):
                toks[s] = programs[p][np.argsort(np.arange(vocab_size) + rng.normal(0, 3, vocab_size))][:context] + 30
            img = np.stack([np.broadcast_to(colours[p], (img_px, img_px, 3)) for p in progs]).copy()
            img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            pair["patch"] = torch.from_numpy(img)
            pair["region"] = torch.from_numpy(img.copy())
            pair["thumb"] = torch.from_numpy(img[:, :16, :16].copy())
            pair["region_label"] = torch.from_numpy(rng.integers(0, 9, 2))
            pair["region_valid"] = torch.tensor([True, bool(i % 3)])
            pair["tokens"] = torch.from_numpy(toks)
            pair["xy_um"] = torch.from_numpy(rng.uniform(0, 3000, (2, 2)).astype(np.float32))
            pair["slide_id"] = f"syn{i % 2}"
            pair["spot_id"] = [f"a{i}", f"b{i}"]
            self.items.append(pair)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import numpy as np

        from ..corpus.datasets import collate_pairs

        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        for i in range(0, self.n_items - self.batch_size + 1, self.batch_size):
            yield collate_pairs([self.items[int(j)] for j in order[i:i + self.batch_size]])
