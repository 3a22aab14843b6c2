"""PyTorch datasets over corpus shards: Stage 1 (groups of 9 spots) and Stage 2 (a spot and a same-slide
partner).

Exactly once per epoch, across ranks x DataLoader workers: each epoch takes a seeded permutation of the
split's shards, lays their samples end to end (counts come from the manifest, so nothing is read to plan),
cuts that sequence into one contiguous range per rank and then per worker, and each worker streams only the
shards its range touches, skipping the samples outside it. Ranges differ by at most one sample, whatever
the shard sizes. DDP needs the same number of batches on every rank: ``equalize="drop"`` gives every rank
``total // world`` samples (the at most ``world - 1`` leftovers wait for another epoch's permutation),
``equalize="pad"`` gives ``ceil(total / world)`` by repeating the first few samples of the sequence; the
default ``None`` keeps exactly-once semantics.

``global_batch=G`` (the training loaders of both stages) makes the batches independent of the number of
processes: the epoch's sequence (the seeded shard permutation, then a seeded shuffle inside consecutive windows
of ``buffer_size`` samples, both rank-free) is cut into global batches of G samples (the last partial one is
dropped), and rank r of W takes the r-th block of G / W samples of each, worker j of a rank the global batches
j, j + num_workers, ... (which a DataLoader's round-robin puts back in order). One process with batch G and
W processes with batch G / W then see the same samples in every step. Each rank streams every shard (it
decodes only its own samples): W times the reading of the default ``rank`` order, whose ranks stream only
their own contiguous part.

Stage-2 partners: shards hold a single slide, so the partner of a spot is a random *other* spot of the same
shard, drawn from (seed, epoch, shard) for the whole shard at once, so it does not depend on which worker
reads the anchor. Use ``persistent_workers=False`` (the default) with ``set_epoch`` so workers see the new
epoch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..distributed import group_rank_world
from ..errors import StampInputError
from ..io_utils import read_json
from .shards import IMAGE_CODECS, decode_sample, iter_shard_raw, member_errors

SAMPLE_ORDERS = ("global", "rank")  # global_batch set, or each rank's contiguous part (module docstring)


def check_sample_order(order: str, source=None) -> None:
    """The training configs' ``sample_order`` setting."""
    if order not in SAMPLE_ORDERS:
        raise StampInputError(f"sample_order {order!r} is not one of {SAMPLE_ORDERS}", source,
                              hint="global: the same batches on any number of processes; rank: less reading")


def load_corpus_manifest(manifest: str | Path | dict) -> tuple[dict, str]:
    """(manifest dict, base URL of its shards). ``manifest`` is a path, a URL/``pipe:`` spec, or a dict.

    Remote or piped storage is the caller's explicit choice (a URL or ``pipe:`` given here, on the command
    line); the file itself is data that travels, so every shard it names must be a plain file name inside the
    corpus folder (``check_corpus_manifest``)."""
    if isinstance(manifest, dict):
        return check_corpus_manifest(manifest), ""
    spec = str(manifest)
    if "://" in spec or spec.startswith("pipe:"):
        from .shards import open_url

        try:
            with open_url(spec) as fh:
                man = json.loads(fh.read())
        except (OSError, ValueError) as err:
            raise StampInputError(f"cannot read the corpus manifest ({err})", spec) from err
        base = spec.rsplit("/", 1)[0] if "/" in spec and not spec.startswith("pipe:") else ""
        return check_corpus_manifest(man, spec), base
    p = Path(spec)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise StampInputError("corpus manifest not found", p, hint="build the corpus with `stamp-st build-corpus`")
    if p.suffix.lower() in (".tsv", ".csv", ".txt"):
        raise StampInputError("this is a sample table (the input of build-corpus), not a corpus", p,
                              hint="build the corpus first (`stamp-st build-corpus` on this file), then pass the "
                                   "corpus folder")
    man = read_json(p, "corpus manifest", hint="the file is damaged: copy the corpus again or re-run build-corpus")
    return check_corpus_manifest(man, p), str(p.parent)


# a shard is a plain file of the corpus folder: no folder, URL, ``pipe:`` or ``..`` from the manifest
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_corpus_manifest(man, source: str | Path | None = None) -> dict:
    """The fields the datasets use, with their types; shard names must resolve inside the corpus folder."""
    hint = "the corpus manifest is damaged or was edited: re-run build-corpus"
    if not isinstance(man, dict):
        raise StampInputError("the corpus manifest is not a JSON object", source, hint)
    if man.get("kind") not in ("genes", "paired"):
        raise StampInputError(f"unknown corpus kind {man.get('kind')!r}", source, hint)
    shards = man.get("shards")
    if not isinstance(shards, list):
        raise StampInputError("the corpus manifest has no 'shards' list", source, hint)
    for i, sh in enumerate(shards):
        if not isinstance(sh, dict):
            raise StampInputError(f"shard {i} is not an object", source, hint)
        url = sh.get("url")
        if not isinstance(url, str) or not _SHARD_FILE.match(url) or ".." in url:
            raise StampInputError(f"shard {i} names {url!r}, not a file inside the corpus folder (paths, URLs and "
                                  "pipe: commands are never taken from a manifest)", source,
                                  hint="keep the shards beside manifest.json; give remote storage on the command "
                                       "line (the manifest's URL) instead")
        for key, typ in (("n_samples", int), ("slide_id", str), ("split", str)):
            if not isinstance(sh.get(key), typ) or isinstance(sh.get(key), bool):
                raise StampInputError(f"shard {url}: {key!r} is missing or not a {typ.__name__}", source, hint)
        if sh["n_samples"] < 0:
            raise StampInputError(f"shard {url}: negative n_samples", source, hint)
    tok = man.get("tokenizer")
    ctx = tok.get("context") if isinstance(tok, dict) else None
    if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 1:
        raise StampInputError("the corpus manifest has no valid tokenizer.context", source, hint)
    return man


def check_shards(man: dict, base: str, shards: Sequence[dict] | None = None, sha256: bool = False) -> None:
    """Check local shards against what the manifest promises: present, the recorded size (cheap, always) and,
    when ``sha256``, the recorded checksum. Remote or piped shards are not checked here."""
    if not base or "://" in base or base.startswith("pipe:") or "{shard}" in base:
        return
    from .shards import sha256_file

    hint = "the corpus was damaged or only partly copied: copy it again or re-run build-corpus"
    for sh in man["shards"] if shards is None else shards:
        p = Path(base) / sh["url"]
        if not p.is_file():
            raise StampInputError(f"shard {sh['url']} listed in manifest.json is missing", p, hint)
        want = sh.get("bytes")
        if want is not None and p.stat().st_size != int(want):
            raise StampInputError(f"shard has {p.stat().st_size} bytes, manifest.json says {want} (truncated?)",
                                  p, hint)
        if sha256 and sh.get("sha256") and sha256_file(p) != sh["sha256"]:
            raise StampInputError("shard content differs from its sha256 in manifest.json", p, hint)


def _int_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


GROUP_SIZE = 9  # a Stage-1 item: the centre spot and its 8 neighbours


def _pad(tokens: np.ndarray, context: int, rows: int | None = None) -> np.ndarray:
    """Token ids padded to ``context``; ``rows``: the group size a Stage-1 item must have (None: one spot)."""
    want = (rows,) if rows else ()
    if not isinstance(tokens, np.ndarray) or tokens.ndim != len(want) + 1 or tokens.shape[:-1] != want \
            or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens.npy is {getattr(tokens, 'dtype', type(tokens))} "
                         f"{getattr(tokens, 'shape', '')}, expected integer ids of shape {(*want, 'L')}")
    t = tokens[..., :context]
    if t.shape[-1] < context:
        t = np.concatenate([t, np.zeros(t.shape[:-1] + (context - t.shape[-1],), t.dtype)], axis=-1)
    return t.astype(np.int64)


def _valid(v) -> np.ndarray:
    v = np.asarray(v)
    if v.shape != (GROUP_SIZE,):
        raise ValueError(f"spot_valid.npy has shape {v.shape}, expected ({GROUP_SIZE},)")
    return v.astype(bool)


class _ShardDataset(IterableDataset):
    """Planning, rank/worker split and buffer shuffling shared by both stages."""

    def __init__(self, manifest: str | Path | dict, split: str | Sequence[str] | None = "train", seed: int = 0,
                 shuffle: bool = True, buffer_size: int = 1000, rank: int | None = None,
                 world_size: int | None = None, equalize: str | None = None, base_url: str | None = None,
                 context: int | None = None, slides: Collection[str] | None = None,
                 exclude_slides: Collection[str] = (), global_batch: int | None = None):
        """``split`` (None: all), then ``slides`` (only these slide ids) and ``exclude_slides`` select shards,
        e.g. to hold out slides for cross-validation whatever split the corpus gave them. ``global_batch``:
        samples per optimizer micro-step over all processes, for batches that do not depend on the number of
        processes (module docstring)."""
        man, base = load_corpus_manifest(manifest)
        self.kind = man["kind"]
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        keep, drop = (None if slides is None else set(slides)), set(exclude_slides)
        self.shards = [s for s in man["shards"] if (splits is None or s["split"] in splits)
                       and (keep is None or s["slide_id"] in keep) and s["slide_id"] not in drop]
        if not self.shards:
            raise StampInputError(f"the corpus has no shards in split {split!r}"
                                  + (f" among slides {sorted(keep)}" if keep is not None else "")
                                  + (f" outside slides {sorted(drop)}" if drop else ""),
                                  hint=f"splits present: {sorted(man.get('splits', {}))}")
        if base_url is None:
            check_shards(man, base, self.shards)  # sizes: a truncated or missing shard fails here, by name
        self.base_url = base_url if base_url is not None else base
        self.context = int(context or man["tokenizer"]["context"])
        self.seed, self.shuffle, self.buffer_size = int(seed), bool(shuffle), int(buffer_size)
        if equalize not in (None, "drop", "pad"):
            raise ValueError("equalize must be None, 'drop' or 'pad'")
        self.equalize = equalize
        self._rank, self._world = rank, world_size
        self.global_batch = None if global_batch is None else int(global_batch)
        if self.global_batch is not None and self.global_batch < 1:
            raise ValueError("global_batch must be >= 1")
        self.epoch = 0

    # ---------------------------------------------------------- planning
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def url(self, shard: dict) -> str:
        name = shard["url"]  # a plain file name (check_corpus_manifest)
        if "{shard}" in self.base_url:  # e.g. "pipe:aws s3 cp s3://bucket/corpus/{shard} -"
            return self.base_url.replace("{shard}", name)
        return f"{self.base_url}/{name}" if self.base_url else name

    def rank_world(self) -> tuple[int, int]:
        return group_rank_world(default=(int(self._rank or 0), int(self._world or 1)))

    def shard_order(self, epoch: int) -> np.ndarray:
        n = len(self.shards)
        return np.random.default_rng([self.seed, epoch, 0]).permutation(n) if self.shuffle else np.arange(n)

    def total(self) -> int:
        return int(sum(s["n_samples"] for s in self.shards))

    def rank_range(self, rank: int, world: int) -> tuple[int, int]:
        """Positions [start, stop) of this rank in the epoch's sample sequence (may exceed total: wraps)."""
        t = self.total()
        if self.equalize == "drop":
            per = t // world
            return rank * per, (rank + 1) * per
        if self.equalize == "pad":
            per = -(-t // world)
            return rank * per, (rank + 1) * per
        return rank * t // world, (rank + 1) * t // world

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        if self.global_batch is not None:
            return (self.total() // self.global_batch) * self.rank_batch(self.rank_world()[1])
        a, b = self.rank_range(*self.rank_world())
        return b - a

    # ---------------------------------------------------------- global-batch order (any number of processes)
    def rank_batch(self, world: int) -> int:
        """Samples per micro-batch of one rank: the global batch split evenly over the ranks."""
        if self.global_batch % world:
            raise StampInputError(f"the global batch of {self.global_batch} samples does not split over {world} "
                                  "processes", hint="choose a batch size and process count whose product is it")
        return self.global_batch // world

    def global_order(self, epoch: int) -> np.ndarray:
        """Positions of the epoch's sequence in the order they are consumed, the same for any world size: the
        shard permutation laid end to end, shuffled inside consecutive windows of ``buffer_size`` samples."""
        t = self.total()
        if not self.shuffle or self.buffer_size <= 1:
            return np.arange(t)
        keys = np.random.default_rng([self.seed, epoch, 3]).random(t)
        return np.lexsort((keys, np.arange(t) // self.buffer_size))

    def global_positions(self, epoch: int, rank: int, world: int, worker: int, num_workers: int) -> np.ndarray:
        """This consumer's positions, in the order it yields them (whole micro-batches)."""
        b = self.rank_batch(world)
        n = self.total() // self.global_batch
        blocks = self.global_order(epoch)[: n * self.global_batch].reshape(n, world, b)[:, rank]
        return blocks[worker::num_workers].reshape(-1)

    def _global_items(self, positions: np.ndarray):
        """Stream the shards in sequence order, decode only ``positions`` and yield them in their order (at
        most about one window of decoded samples is held)."""
        order = self.shard_order(self.epoch)
        counts = np.array([self.shards[i]["n_samples"] for i in order], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        mine = np.zeros(int(starts[-1]), bool)
        mine[positions] = True

        def stream():
            for j, si in enumerate(order):
                local = np.flatnonzero(mine[starts[j]:starts[j + 1]])
                if len(local):
                    for i, item in self._shard_items(int(si), local):
                        yield int(starts[j]) + i, item

        items, held = stream(), {}
        for p in positions.tolist():
            while p not in held:
                q, item = next(items)
                held[q] = item
            yield held.pop(p)

    def plan(self, epoch: int, rank: int, world: int, worker: int, num_workers: int) -> list[tuple[int, int, int]]:
        """(shard index, first, stop) sample ranges this consumer reads, in order."""
        a, b = self.rank_range(rank, world)
        n = b - a
        lo, hi = a + worker * n // num_workers, a + (worker + 1) * n // num_workers
        order = self.shard_order(epoch)
        counts = np.array([self.shards[i]["n_samples"] for i in order], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        t = int(starts[-1])
        out = []
        pos = lo
        while pos < hi and t > 0:
            p = pos % t
            j = int(np.searchsorted(starts, p, side="right") - 1)
            first = p - int(starts[j])
            take = min(int(counts[j]) - first, hi - pos)
            out.append((int(order[j]), first, first + take))
            pos += take
        return out

    def consumer(self) -> tuple[int, int, int, int]:
        rank, world = self.rank_world()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, num_workers

    # ---------------------------------------------------------- iteration
    def _shuffled(self, items: Iterator, rng: np.random.Generator) -> Iterator:
        if not self.shuffle or self.buffer_size <= 1:
            yield from items
            return
        buf = []
        for it in items:
            if len(buf) < self.buffer_size:
                buf.append(it)
                continue
            k = int(rng.integers(len(buf)))
            buf[k], it = it, buf[k]
            yield it
        rng.shuffle(buf)
        yield from buf

    def __iter__(self):
        rank, world, worker, num_workers = self.consumer()
        if self.global_batch is not None:
            return self._global_items(self.global_positions(self.epoch, rank, world, worker, num_workers))
        plan = self.plan(self.epoch, rank, world, worker, num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, 1, rank, worker])
        return self._shuffled(self._items(plan), rng)

    def _items(self, plan):
        for si, first, stop in plan:
            for _, item in self._shard_items(si, np.arange(first, stop)):
                yield item

    def _shard_items(self, si: int, indices: np.ndarray):  # pragma: no cover - abstract
        """(index, item) for the given increasing sample indices of shard ``si``."""
        raise NotImplementedError


class GeneGroupDataset(_ShardDataset):
    """Stage 1: items ``tokens`` int64 [9, L] (storage ids, centre first), ``spot_valid`` bool [9],
    ``slide_id`` str, ``spot_id`` str (the centre)."""

    def _shard_items(self, si: int, indices: np.ndarray):
        if not len(indices):
            return
        want, last = set(indices.tolist()), int(indices[-1])
        url = self.url(self.shards[si])
        for i, raw in enumerate(iter_shard_raw(url)):
            if i > last:
                break
            if i not in want:
                continue
            with member_errors(url, raw):
                s = decode_sample(raw)
                item = {"tokens": torch.from_numpy(_pad(s["tokens.npy"], self.context, GROUP_SIZE)),
                        "spot_valid": torch.from_numpy(_valid(s["spot_valid.npy"])),
                        "slide_id": s["meta.json"]["slide_id"], "spot_id": s["meta.json"]["spot_ids"][0]}
            yield i, item


class PairedSpotDataset(_ShardDataset):
    """Stage 2: items of two spots of one slide (anchor, partner): ``patch`` uint8 [2, H, W, 3], ``region``
    uint8 [2, H, W, 3], ``region_label`` int64 [2], ``region_valid`` bool [2], ``thumb`` uint8 [2, t, t, 3],
    ``tokens`` int64 [2, L], ``xy_um`` float32 [2, 2], ``slide_id`` str, ``spot_id`` [anchor, partner].
    Memory: one shard's encoded bytes per worker (the partner pool)."""

    def partners(self, shard_index: int, n: int, epoch: int) -> np.ndarray:
        """Partner index of every sample of a shard: a uniformly random other sample (itself when alone)."""
        if n <= 1:
            return np.zeros(n, np.int64)
        rng = np.random.default_rng([self.seed, epoch, 2, _int_hash(self.shards[shard_index]["url"])])
        return (np.arange(n) + 1 + rng.integers(0, n - 1, size=n)) % n

    def _shard_items(self, si: int, indices: np.ndarray):
        if not len(indices):
            return
        url = self.url(self.shards[si])
        raws = list(iter_shard_raw(url))
        part = self.partners(si, len(raws), self.epoch)
        for i in indices.tolist():
            ra, rb = raws[i], raws[int(part[i])]
            with member_errors(url, ra):
                a = decode_sample(ra)
            with member_errors(url, rb):
                b = decode_sample(rb)
            with member_errors(url, ra, rb):
                item = self._pair(a, b)
            yield i, item

    def _pair(self, a: dict, b: dict) -> dict:
        ma, mb = a["meta.json"], b["meta.json"]

        def two(name):
            return torch.from_numpy(np.stack([_image(a, name), _image(b, name)]))

        return {"patch": two("patch"), "region": two("region"),
                "region_label": torch.tensor([ma["region_label"], mb["region_label"]], dtype=torch.int64),
                "region_valid": torch.tensor([ma["region_valid"], mb["region_valid"]], dtype=torch.bool),
                "thumb": two("thumb"),
                "tokens": torch.from_numpy(np.stack([_pad(a["tokens.npy"], self.context),
                                                     _pad(b["tokens.npy"], self.context)])),
                "xy_um": torch.tensor([ma["xy_um"], mb["xy_um"]], dtype=torch.float32),
                "slide_id": ma["slide_id"], "spot_id": [ma["spot_id"], mb["spot_id"]]}


def _image(sample: dict, name: str) -> np.ndarray:
    for ext in IMAGE_CODECS:
        if f"{name}.{ext}" in sample:
            return sample[f"{name}.{ext}"]
    raise KeyError(f"sample {sample.get('__key__')} has no {name} image")


def _collate(batch: list[dict], str_keys: tuple[str, ...]) -> dict:
    out = {}
    for k in batch[0]:
        out[k] = [b[k] for b in batch] if k in str_keys else torch.stack([b[k] for b in batch])
    return out


def collate_genes(batch: list[dict]) -> dict:
    """Stage-1 batch: tokens [B, 9, L], spot_valid [B, 9]; slide_id, spot_id as lists."""
    return _collate(batch, ("slide_id", "spot_id"))


def collate_pairs(batch: list[dict]) -> dict:
    """Stage-2 batch: every tensor [B, 2, ...] (the model flattens to 2B spots); slide_id [B], spot_id
    [B][2] as lists."""
    return _collate(batch, ("slide_id", "spot_id"))


def corpus_dataset(manifest: str | Path | dict, **kwargs) -> _ShardDataset:
    """The dataset class that fits the corpus kind."""
    man, _ = load_corpus_manifest(manifest)
    cls = GeneGroupDataset if man["kind"] == "genes" else PairedSpotDataset
    return cls(manifest, **kwargs)
