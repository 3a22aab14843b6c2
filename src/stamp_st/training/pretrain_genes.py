"""Stage 1: pretrain the gene encoder (IGR, then IGR + CGR) on a ``genes`` corpus with the shared engine.

Settings live in a pretraining config (``configs/pretrain/<name>.json`` or a file): the gene encoder config
(``model``), groups per micro-batch, epochs or steps, phases, and the engine's ``trainer`` settings. Validation
runs on the corpus manifest's ``val`` split (held-out slides) with fixed masks, and always reports both losses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config_types import BATCH_SIZE, LOADER_WORKERS, STEPS, config_from_dict, ranged
from ..distributed import env_rank_world
from ..errors import StampInputError
from ..models.checkpoint import checkpoint_config, load_config
from ..models.gene_encoder import GeneEncoder, GeneEncoderConfig
from .engine import Trainer, TrainerConfig
from .gene_objectives import GenePretrainModel
from .run_folder import RunFolder, check_run_folder
from .schedule import validate_phases


@dataclass
class PretrainConfig:
    model: str | dict = "tiny"  # registered gene encoder config name, JSON path, or inline dict
    batch_size: int = ranged(8, BATCH_SIZE)  # groups of 9 spots per micro-batch and process
    epochs: int | None = ranged(None, STEPS)  # when set, trainer.max_steps is derived from the corpus size
    mask_prob: float = ranged(0.15, lo=0, hi=1, lo_open=True, hi_open=True, why="fraction of tokens masked")
    phases: list[dict] | None = None  # e.g. [{"epochs": 1, "cgr": false}, {"epochs": 1, "cgr": true}]
    num_workers: int = ranged(0, LOADER_WORKERS)
    shuffle_buffer: int = ranged(1000, lo=0, hi=10**8, integer=True)
    # "global": the same batches on any number of processes (corpus.datasets, global_batch); "rank": each process
    # streams only its own contiguous part of the corpus (less reading, batches depend on the process count)
    sample_order: str = "global"
    val_batch_size: int | None = ranged(None, BATCH_SIZE)
    val_max_batches: int = ranged(50, lo=0, hi=10**9, integer=True)
    # encode each micro-batch's spots in this many groups of similar length, each trimmed (exact: the same
    # losses as one batch padded to the longest spot; GenePretrainModel); 1 = one group
    length_buckets: int = ranged(4, lo=1, hi=64, integer=True)
    trainer: dict = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str | Path) -> PretrainConfig:
        """A registered Stage-1 config (``configs/pretrain/<name>.json``) or a JSON file."""
        from ..configs import load_config_json

        d, source = load_config_json("pretrain", name_or_path)
        return cls.from_dict(d, source)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> PretrainConfig:
        cfg = config_from_dict(cls, d, source, "pretraining setting", ignore=("description",))
        if cfg.phases is not None:
            cfg.phases = validate_phases(cfg.phases)
        from ..corpus.datasets import check_sample_order

        check_sample_order(cfg.sample_order, source)
        TrainerConfig.from_dict({k: v for k, v in cfg.trainer.items()}, source)  # validate early
        return cfg

    def encoder_config(self) -> GeneEncoderConfig:
        if isinstance(self.model, dict):
            return GeneEncoderConfig.from_json(self.model)
        return GeneEncoderConfig.load(self.model)

    def to_json(self) -> dict:
        return asdict(self)


def micro_batches_per_epoch(n_rank_samples: int, batch_size: int, num_workers: int) -> int:
    """Micro-batches one process gets per epoch: each DataLoader worker drops its own last partial batch."""
    nw = max(num_workers, 1)
    return sum((((w + 1) * n_rank_samples // nw) - (w * n_rank_samples // nw)) // batch_size for w in range(nw))


def _gene_loader(corpus, split, cfg: PretrainConfig, seed: int, shuffle: bool, batch_size: int, equalize=None,
                 global_order: bool = False):
    from torch.utils.data import DataLoader

    from ..corpus.datasets import GeneGroupDataset, collate_genes

    rank, world, _ = env_rank_world()
    ds = GeneGroupDataset(corpus, split=split, seed=seed, shuffle=shuffle, buffer_size=cfg.shuffle_buffer,
                          rank=rank, world_size=world, equalize=equalize,
                          global_batch=batch_size * world if global_order else None)
    return DataLoader(ds, batch_size=batch_size, num_workers=cfg.num_workers, collate_fn=collate_genes,
                      drop_last=shuffle, persistent_workers=False)


def make_val_fn(loader, max_batches: int):
    """Token-weighted IGR/CGR loss and accuracy over (at most ``max_batches`` of) the held-out slides."""

    def val_fn(model) -> dict:
        import torch.distributed as dist

        raw = getattr(model, "module", model)
        old = raw.cgr
        raw.cgr = True  # report both losses in every phase
        dev = next(raw.parameters()).device
        sums = torch.zeros(6, dtype=torch.float64, device=dev)
        try:
            loader.dataset.set_epoch(0)
            for i, batch in enumerate(loader):
                if i >= max_batches:
                    break
                batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                out = raw(batch)
                ni, nc = out["igr_tokens"].double(), out.get("cgr_tokens", torch.zeros((), device=dev)).double()
                sums += torch.stack([out["igr_loss"].double() * ni, out["igr_acc"].double() * ni,
                                     out.get("cgr_loss", torch.zeros((), device=dev)).double() * nc,
                                     out.get("cgr_acc", torch.zeros((), device=dev)).double() * nc, ni, nc])
        finally:
            raw.cgr = old
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        s = sums.tolist()
        res = {}
        if s[4] > 0:
            res.update(igr_loss=s[0] / s[4], igr_acc=s[1] / s[4])
        if s[5] > 0:
            res.update(cgr_loss=s[2] / s[5], cgr_acc=s[3] / s[5])
        if res:
            res["loss"] = res.get("igr_loss", 0.0) + res.get("cgr_loss", 0.0)
        return res

    return val_fn


def check_vocabulary(manifest: dict, enc_cfg: GeneEncoderConfig, vocab, corpus_path) -> None:
    """Refuse a model, vocabulary and corpus that do not agree (their token ids would mean other genes)."""
    man_vocab = manifest.get("vocab", {})
    checksum = man_vocab.get("checksum")
    if vocab is not None and checksum and vocab.checksum != checksum:
        raise StampInputError(f"vocabulary checksum {vocab.checksum} differs from the corpus's {checksum}",
                              corpus_path, hint="pass --vocab with the vocabulary the corpus was built with")
    if vocab is not None:
        from ..preprocessing.tokenizer import check_same_divisors

        tok = manifest.get("tokenizer", {})
        check_same_divisors(tok.get("divisors_checksum"), vocab.divisors_checksum(bool(tok.get("rounded_means", True))),
                            corpus_path, "the corpus", f"vocabulary {vocab.source or vocab.checksum}")
    n = man_vocab.get("n_genes")
    if n is not None and int(n) != enc_cfg.vocab_size:
        raise StampInputError(f"gene encoder config {enc_cfg.name!r} has vocab_size {enc_cfg.vocab_size}, the "
                              f"corpus vocabulary has {n} genes", corpus_path,
                              hint="use a model config whose vocab_size equals the corpus vocabulary size")


def run_pretrain(corpus: str | Path, config: PretrainConfig, out: str | Path, resume: str | bool = "auto",
                 vocab=None, device: str | None = None, verify_sha256: bool = True) -> dict:
    """Train; returns ``{"step", "epoch", "val"}``. ``vocab``: a ``GeneVocabulary`` (default: the released one
    from the data directory), stored in every checkpoint. ``verify_sha256``: check every local shard against
    the manifest's checksum once before training (sizes are always checked)."""
    from ..corpus.layout import check_shards, read_manifest
    from ..preprocessing.vocab import GeneVocabulary

    check_run_folder(out)
    corpus = Path(corpus)
    manifest, base = read_manifest(corpus)
    check_shards(manifest, base, sha256=verify_sha256)
    if manifest.get("kind") != "genes":
        raise StampInputError(f"pretrain-genes needs a 'genes' corpus, this one is {manifest.get('kind')!r}",
                              corpus, hint="build one with `stamp-st build-corpus MANIFEST OUT --kind genes`")
    enc_cfg = config.encoder_config()
    if vocab is None:
        vocab = GeneVocabulary.default()
    check_vocabulary(manifest, enc_cfg, vocab, corpus)
    tcfg = TrainerConfig.from_dict(config.trainer)
    rank, world, _ = env_rank_world()

    out = Path(out)
    _check_run_matches(out, enc_cfg, vocab.checksum, resume)
    train = _gene_loader(corpus, "train", config, tcfg.seed, True, config.batch_size,
                         equalize="drop" if world > 1 else None, global_order=config.sample_order == "global")
    if config.epochs is not None:
        micro = (len(train.dataset) // config.batch_size if train.dataset.global_batch is not None
                 else micro_batches_per_epoch(len(train.dataset), config.batch_size, config.num_workers))
        if micro < tcfg.grad_accum:
            raise StampInputError(f"the corpus gives {micro} micro-batches per epoch and process, fewer than "
                                  f"grad_accum {tcfg.grad_accum}", corpus, hint="lower batch_size or grad_accum")
        tcfg.max_steps = config.epochs * micro // tcfg.grad_accum
        tcfg.max_epochs = None
    val_fn = None
    if manifest.get("splits", {}).get("val", {}).get("n_samples", 0) > 0:
        val = _gene_loader(corpus, "val", config, tcfg.seed, False, config.val_batch_size or config.batch_size,
                           equalize="pad" if world > 1 else None)
        val_fn = make_val_fn(val, config.val_max_batches)
    elif rank == 0:
        print(f"warning: {corpus} has no 'val' split: no validation on held-out slides")

    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    from ..devices import check_fits

    check_fits(enc_cfg.training_bytes(config.batch_size * 9), device,
               f"the gene encoder {enc_cfg.name!r} ({enc_cfg.n_parameters() / 1e6:.0f} M parameters, context "
               f"{enc_cfg.context}) with --batch-size {config.batch_size}",
               hint="use a smaller model (--model tiny/small, or smaller d_model, n_layers, context in its JSON) or "
                    "a smaller --batch-size, or a machine with more memory")
    encoder = GeneEncoder(enc_cfg)
    first_cgr = True if not config.phases else bool(config.phases[0].get("cgr", True))
    model = GenePretrainModel(encoder, mask_prob=config.mask_prob, cgr=first_cgr, phases=config.phases,
                              length_buckets=config.length_buckets)
    tokenizer = {**manifest.get("tokenizer", {}), "vocab_checksum": vocab.checksum,
                 "divisors_checksum": vocab.divisors_checksum(bool(manifest.get("tokenizer", {}).get("rounded_means",
                                                                                                     True)))}
    ck_cfg = checkpoint_config("gene_encoder", enc_cfg.to_json(), vocabulary=vocab.to_json(), tokenizer=tokenizer,
                               corpus={"path": str(corpus.resolve()), "settings_hash": manifest.get("settings_hash"),
                                       "splits": manifest.get("splits")},
                               pretrain=config.to_json())
    if rank == 0:
        RunFolder(out).write_config("pretrain_config.json", {**config.to_json(), "trainer": tcfg.to_json(),
                                                             "corpus": str(corpus.resolve())})
    trainer = Trainer(model, tcfg, out, train, val_fn=val_fn, checkpoint_config=ck_cfg, device=device)
    return trainer.fit(resume=resume)


def _check_run_matches(out: Path, enc_cfg: GeneEncoderConfig, checksum: str, resume) -> None:
    """A run folder resumed with another model or vocabulary would silently train something else: refuse."""
    if resume is False:
        return
    ck = RunFolder(out).latest()
    if ck is None or not ck.is_dir():
        return
    cfg = load_config(ck)
    if cfg.get("vocab_checksum") not in (None, checksum):
        raise StampInputError(f"the run was started with vocabulary {cfg.get('vocab_checksum')}, this corpus "
                              f"uses {checksum}", out, hint="choose a new --out folder")
    if cfg.get("architecture") != enc_cfg.to_json():
        raise StampInputError(f"the run was started with gene encoder {cfg.get('architecture')}, not "
                              f"{enc_cfg.to_json()}", out, hint="use the same --config, or a new --out folder")


# ---------------------------------------------------------------------- synthetic data (tests, benchmarks)
class SyntheticGeneGroups(torch.utils.data.IterableDataset):
    """In-memory Stage-1 items with the corpus contract (``tokens`` int64 [9, L], ``spot_valid`` bool [9],
    ``slide_id``): each group draws its spots' rankings from one of ``n_programs`` gene programs, so IGR and
    CGR are learnable. Order is a pure function of (seed, epoch)."""

    def __init__(self, n_groups: int = 64, vocab_size: int = 200, context: int = 32, n_programs: int = 4,
                 seed: int = 0, full_length: bool = False):
        self.n_groups, self.vocab_size, self.context = n_groups, vocab_size, context
        self.seed, self.epoch = seed, 0
        from ..preprocessing.tokenizer import STORAGE_PAD_ID, TOKEN_OFFSET

        rng = np.random.default_rng(seed)
        programs = np.stack([rng.permutation(vocab_size) for _ in range(n_programs)])
        self.items = []
        for g in range(n_groups):
            prog = programs[g % n_programs]
            toks = np.full((9, context), STORAGE_PAD_ID, np.int64)
            for s in range(9):
                n = context if full_length else int(rng.integers(context // 2, context + 1))
                noise = rng.normal(0, 3.0, vocab_size)
                order = prog[np.argsort(np.arange(vocab_size) + noise, kind="stable")]
                toks[s, :n] = order[:n] + TOKEN_OFFSET
            valid = np.ones(9, bool)
            if g % 5 == 4:
                valid[rng.integers(1, 9, size=3)] = False
                toks[~valid] = STORAGE_PAD_ID
            self.items.append({"tokens": torch.from_numpy(toks), "spot_valid": torch.from_numpy(valid),
                               "slide_id": f"synthetic{g % 3}"})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_groups

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_groups)
        for i in order:
            yield self.items[int(i)]
