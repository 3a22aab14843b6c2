"""Corpus build on Dask: one task per slide, each writing its own shards and a small ``done`` record.

Why this shape: a task that writes its own output and returns a few numbers never ships arrays through the
scheduler, so the client's memory and network stay flat whatever the corpus size, and a cluster scales it out
unchanged (``--scheduler ADDRESS``; OUT must then be a folder every worker sees). Inside a task, spots are
processed in chunks of ``chunk_spots`` (tokens, crops) streamed into the shard being written, so a task's
memory is bounded by the slide's sparse counts plus one chunk, not by the slide's size.

Resume: a slide is finished iff ``<slide_id>.done.json`` exists, carries the same settings hash, and lists
shards that exist with the recorded size. It is written atomically *after* its shards, so a kill at any
moment leaves either a finished slide or one that is rebuilt from scratch (its partial shards and stray temp
files are deleted). Every random choice is seeded from (seed, slide id, shard, chunk), so a rebuilt slide is
byte-identical; ``manifest.json`` is assembled from the done records in slide-id order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config_types import (
    CONTEXT,
    IMAGE_PX,
    MAGNIFICATION,
    PATCH_UM,
    SEED,
    check_ranges,
    config_from_dict,
    ranged,
)
from ..errors import StampInputError
from ..io_utils import atomic_path, atomic_write_json
from ..readers.sample_meta import SampleMeta
from . import qc as qcmod
from .gene_means import means_accumulators, means_from_accumulators, write_gene_means
from .layout import (
    DONE_SUFFIX,
    FORMAT_VERSION,
    GENE_MEANS_NAME,
    MANIFEST_NAME,
    MEANS_SUFFIX,
    read_finished_manifest,
)
from .manifest import SampleEntry, read_manifest
from .shards import (
    IMAGE_CODECS,
    balanced_sizes,
    encode_npy,
    encode_sample,
    sha256_file,
    shard_name,
    write_shard,
)

KINDS = ("genes", "paired")
DEFAULT_SHARD_SIZE = {"genes": 2048, "paired": 512}  # ~100 MB shards either way
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    kind: str
    vocab_path: str
    context: int = ranged(1500, CONTEXT)
    rounded_means: bool = True
    patch_um: float = ranged(112.0, PATCH_UM)
    out_px: int = ranged(224, IMAGE_PX)
    region_factor: int = ranged(3, lo=1, hi=15, integer=True)
    thumb_px: int = ranged(16, lo=1, hi=1024, integer=True)
    qc: qcmod.QCConfig = field(default_factory=qcmod.QCConfig)
    seed: int = ranged(0, SEED)
    shard_size: int | None = ranged(None, lo=1, hi=10**7, integer=True, why="samples per shard")
    chunk_spots: int = ranged(256, lo=1, hi=10**7, integer=True, why="spots processed at once")
    image_codec: str = "png"
    pipeline: str = "default"  # "released": the release's tokens and crops (preprocessing.release_pipeline)
    magnification: float | None = ranged(None, MAGNIFICATION)  # released pipeline: patch side 2 x 112 x mag / 20 px

    def __post_init__(self):
        check_ranges(self, None, "corpus build setting")
        check_ranges(self.qc, None, "QC setting")
        if self.kind not in KINDS:
            raise StampInputError(f"unknown corpus kind {self.kind!r}", hint=f"use one of {KINDS}")
        if self.shard_size is None:
            object.__setattr__(self, "shard_size", DEFAULT_SHARD_SIZE[self.kind])
        if self.image_codec not in IMAGE_CODECS:
            raise StampInputError(f"unknown image codec {self.image_codec!r}", hint=f"use one of {IMAGE_CODECS}")
        if self.shard_size < 1 or self.chunk_spots < 1:
            raise StampInputError("shard_size and chunk_spots must be >= 1")
        if self.pipeline not in ("default", "released"):
            raise StampInputError(f"unknown pipeline {self.pipeline!r}", hint="use default or released")

    def geometry(self):
        from ..preprocessing.crops import CropGeometry

        return CropGeometry(self.patch_um, self.out_px, self.region_factor, self.thumb_px)

    def to_json(self) -> dict:
        d = asdict(self)
        d["qc"] = self.qc.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict, source=None) -> BuildConfig:
        d = dict(d)
        d["qc"] = config_from_dict(qcmod.QCConfig, d.get("qc", {}), source, "QC setting")
        return config_from_dict(cls, d, source, "corpus build setting")

    def settings(self, vocab_checksum: str, divisors_checksum: str | None = None) -> dict:
        """What decides the content of every shard (the vocabulary by checksum, not by path)."""
        d = self.to_json()
        d.pop("vocab_path")
        d["vocab_checksum"] = vocab_checksum
        if divisors_checksum is not None:  # the means change tokens too
            d["divisors_checksum"] = divisors_checksum
        d["format_version"] = FORMAT_VERSION
        if self.pipeline == "default":  # corpora built before the option existed keep their hash
            d.pop("pipeline")
            d.pop("magnification")
        if self.kind == "genes":
            for k in ("patch_um", "out_px", "region_factor", "thumb_px", "image_codec"):
                d.pop(k)
            d["qc"] = {k: v for k, v in d["qc"].items() if k != "max_outside_fraction"}
        return d


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def slide_settings_hash(settings: dict, entry: SampleEntry) -> str:
    """Hash of the build settings and the entry's inputs (split, organ and study are metadata only)."""
    inputs = {k: v for k, v in entry.to_json().items() if k not in ("split", "organ", "study")}
    return _sha({"settings": settings, "entry": inputs})[:24]


def _seed_for(seed: int, slide_id: str, *more: int) -> np.random.Generator:
    sid = int.from_bytes(hashlib.sha256(slide_id.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), sid, *map(int, more)])


@functools.lru_cache(maxsize=4)
def _load_vocab(path: str):
    from ..preprocessing.vocab import GeneVocabulary

    return GeneVocabulary.from_tsv(path)


# ------------------------------------------------------------------ outputs of one slide
def _slide_files(out: Path, slide_id: str) -> list[Path]:
    pat = re.compile(rf"^{re.escape(slide_id)}-\d{{5}}\.tar$")
    files = [p for p in out.glob(f"{slide_id}-*.tar") if pat.match(p.name)]
    files += [out / f"{slide_id}{DONE_SUFFIX}", out / f"{slide_id}{MEANS_SUFFIX}"]
    return files


def remove_slide_outputs(out: Path, slide_id: str) -> None:
    # the done record first: once it is gone the slide counts as unfinished whatever else survives
    for p in sorted(_slide_files(out, slide_id), key=lambda p: not p.name.endswith(DONE_SUFFIX)):
        p.unlink(missing_ok=True)


def read_done(out: Path, slide_id: str, settings_hash: str) -> dict | None:
    """The slide's done record when it is complete and built with these settings, else None."""
    p = Path(out) / f"{slide_id}{DONE_SUFFIX}"
    if not p.is_file():
        return None
    try:
        done = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if done.get("settings_hash") != settings_hash:
        return None
    for s in done.get("shards", []):
        f = Path(out) / s["name"]
        if not f.is_file() or f.stat().st_size != s["bytes"]:
            return None
    m = done.get("means")
    if m and not (Path(out) / m["file"]).is_file():
        return None
    return done


# ------------------------------------------------------------------ reading a sample
def _read_entry(entry: SampleEntry):
    from ..readers import read_sample

    return read_sample(entry.path, format=entry.format or None, section=entry.section or None,
                       image_path=entry.image_path or None, um_per_px=entry.um_per_px)


def _trim(tokens: np.ndarray) -> np.ndarray:
    """Drop trailing all-padding columns (datasets re-pad to the manifest's context)."""
    nz = np.flatnonzero((tokens != 0).any(axis=tuple(range(tokens.ndim - 1))))
    return tokens[..., : (nz[-1] + 1 if len(nz) else 1)]


def _gene_groups(adata, kept: np.ndarray, grid: str) -> np.ndarray:
    """Groups of 9 over the kept spots (indices into ``kept``, -1 missing), plus a centre-only group for
    every kept spot that no group holds, so IGR still trains on it."""
    from ..preprocessing.groups import spatial_groups

    n = len(kept)
    obs = adata.obs
    groups = np.zeros((0, 9), np.int64)
    if n and "array_row" in obs and "array_col" in obs:
        row = obs["array_row"].to_numpy(np.float64)[kept]
        col = obs["array_col"].to_numpy(np.float64)[kept]
        ok = np.isfinite(row) & np.isfinite(col) & (row >= 0) & (col >= 0)  # readers write -1 for "no grid"
        if ok.sum() > 0:
            sub = np.flatnonzero(ok)
            g = np.asarray(spatial_groups(row[ok].astype(np.int64), col[ok].astype(np.int64), grid), np.int64)
            if g.size:
                groups = np.where(g >= 0, sub[np.clip(g, 0, None)], -1)
    covered = np.zeros(n, bool)
    covered[groups[groups >= 0]] = True
    lone = np.flatnonzero(~covered)
    singles = np.full((len(lone), 9), -1, np.int64)
    singles[:, 0] = lone
    return np.concatenate([groups, singles])


# ------------------------------------------------------------------ the task
def build_slide(entry_json: dict, config_json: dict, out_dir: str, settings_hash: str) -> dict:
    """Build one slide's shards; return a small summary (never arrays). Runs on a Dask worker."""
    t0 = time.perf_counter()
    entry = SampleEntry(**entry_json)
    cfg = BuildConfig.from_json(config_json)
    out = Path(out_dir)
    sid = entry.slide_id
    remove_slide_outputs(out, sid)
    done: dict = {"slide_id": sid, "kind": cfg.kind, "settings_hash": settings_hash, "status": "ok", "reason": "", "detail": "",
                  "shards": [], "n_samples": 0, "n_spots": 0, "n_patches": 0,
                  "qc": {"n_spots_input": 0, "n_spots_kept": 0, "dropped": qcmod.empty_counts()}}

    def finish(status="ok", reason="", detail=""):
        done.update(status=status, reason=reason, detail=detail, build_seconds=time.perf_counter() - t0)
        atomic_write_json(out / f"{sid}{DONE_SUFFIX}", done)
        return {k: v for k, v in done.items() if k != "shards"} | {"n_shards": len(done["shards"])}

    try:
        return _build_slide_body(entry, cfg, out, done, finish)
    except StampInputError as err:  # the slide's input is bad: no partial output of it is left behind
        remove_slide_outputs(out, sid)
        done.update(shards=[], n_samples=0, n_spots=0, n_patches=0)
        done.pop("means", None)
        detail = str(err).splitlines()[0] + (f"; what to do: {err.hint}" if err.hint else "")
        return finish("skipped", "read_error", detail)


def _build_slide_body(entry: SampleEntry, cfg: BuildConfig, out: Path, done: dict, finish) -> dict:
    sid = entry.slide_id
    adata = _read_entry(entry)
    from ..preprocessing.tokenizer import RankTokenizer
    from ..preprocessing.vocab import map_sample_genes

    vocab = _load_vocab(cfg.vocab_path)
    meta = SampleMeta.of(adata)  # the entry's um_per_px, when given, was the reader's "user" pixel size
    X = sp.csr_matrix(adata.X)
    if cfg.pipeline == "released":
        from ..preprocessing.release_pipeline import ReleaseTokenizer

        tokenizer = ReleaseTokenizer(vocab, context=cfg.context)
        mapping = tokenizer.mapping(list(map(str, adata.var_names)))
    else:
        tokenizer = RankTokenizer(vocab, context=cfg.context, rounded_means=cfg.rounded_means)
        mapping = map_sample_genes(adata, vocab)  # symbol tables: cached per process
    from ..preprocessing.vocab import check_vocabulary_coverage, coverage_report

    try:
        gene_ids = adata.var["gene_ids"].astype(str).tolist() if "gene_ids" in adata.var else None
        check_vocabulary_coverage(coverage_report(X, mapping), list(map(str, adata.var_names)), gene_ids, sid)
    except StampInputError as err:
        return finish("skipped", "vocabulary_coverage", str(err))
    vc = mapping.to_vocab_counts(X)
    done["counts_checksum"] = qcmod.counts_checksum(X, adata.var_names)
    done["n_genes_input"], done["n_genes_kept"] = int(X.shape[1]), int(mapping.n_kept)
    um_per_px = meta.slide_um_per_px
    done["um_per_px"] = um_per_px
    done["um_per_px_source"] = meta.slide_um_per_px_source
    in_tissue = adata.obs["in_tissue"].to_numpy(bool) if "in_tissue" in adata.obs else None
    xy_px = np.asarray(adata.obsm["spatial"], np.float64) if "spatial" in adata.obsm else None

    slide = None
    outside = None
    if cfg.kind == "paired":
        image = meta.image_path
        if not um_per_px:
            return finish("skipped", "no_pixel_size", "paired corpora need µm/px: add um_per_px to the manifest")
        if not image:
            return finish("skipped", "no_image", "the sample has no H&E image")
        if xy_px is None:
            return finish("skipped", "no_image", "the sample has no spot pixel coordinates")
        from ..readers.slide import open_slide

        slide = open_slide(image)
        done["image_path"] = str(image)
        side_px = cfg.patch_um / float(um_per_px)
        if cfg.pipeline == "released":
            from ..preprocessing.release_pipeline import release_half_side_px

            side_px = 2 * release_half_side_px(cfg.magnification)
        outside = qcmod.patch_outside_fraction(xy_px, side_px, slide.width_px, slide.height_px)

    try:
        keep, dropped = qcmod.spot_qc(X, vc, in_tissue, cfg.qc, outside)
        kept = np.flatnonzero(keep)
        done["qc"] = {"n_spots_input": int(X.shape[0]), "n_spots_kept": int(len(kept)), "dropped": dropped}
        if len(kept) == 0:
            return finish("skipped", "no_spots_left", "every spot failed QC")
        acc = means_accumulators(vc[kept])
        with atomic_path(out / f"{sid}{MEANS_SUFFIX}") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(encode_npy(acc))
        done["means"] = {"file": f"{sid}{MEANS_SUFFIX}", "sha256": sha256_file(out / f"{sid}{MEANS_SUFFIX}")}
        spot_ids = np.asarray(adata.obs_names.astype(str))
        if cfg.kind == "genes":
            _write_gene_shards(out, sid, cfg, tokenizer, vc, kept, spot_ids, _gene_groups(adata, kept, meta.grid), done)
        else:
            _write_paired_shards(out, sid, cfg, tokenizer, vc, kept, spot_ids, xy_px, float(um_per_px), slide,
                                 done)
    finally:
        if slide is not None:
            slide.close()
    return finish()


def _write_gene_shards(out, sid, cfg, tokenizer, vc, kept, spot_ids, groups, done):
    order = _seed_for(cfg.seed, sid, 0).permutation(len(groups))
    groups = groups[order]
    start = 0
    for k, size in enumerate(balanced_sizes(len(groups), cfg.shard_size)):
        part = groups[start:start + size]
        start += size

        def samples(part=part):
            for c in range(0, len(part), cfg.chunk_spots):
                chunk = part[c:c + cfg.chunk_spots]
                uniq = np.unique(chunk[chunk >= 0])
                tok = tokenizer.tokenize_vocab_counts(vc[kept[uniq]]).tokens
                pos = {int(u): i for i, u in enumerate(uniq)}
                for g in chunk:
                    valid = g >= 0
                    t = np.zeros((9, tokenizer.context), np.int32)
                    t[valid] = tok[[pos[int(i)] for i in g[valid]]]
                    ids = [str(spot_ids[kept[i]]) if i >= 0 else "" for i in g]
                    yield encode_sample({"__key__": f"{sid}--{ids[0]}".replace(".", "_"),
                                         "tokens.npy": _trim(t), "spot_valid.npy": valid,
                                         "meta.json": {"slide_id": sid, "spot_ids": ids}})

        info = write_shard(out / shard_name(sid, k), samples())
        info["n_spots"] = int((part >= 0).sum())
        done["shards"].append(info)
    done["n_samples"] = int(len(groups))
    done["n_spots"] = int((groups >= 0).sum())


def _write_paired_shards(out, sid, cfg, tokenizer, vc, kept, spot_ids, xy_px, um_per_px, slide, done):
    from ..preprocessing.crops import extract_spot_crops

    geometry = cfg.geometry()

    def crop(idx, k, j):
        return extract_spot_crops(slide, xy_px[idx], um_per_px, geometry, _seed_for(cfg.seed, sid, 1, k, j))

    if cfg.pipeline == "released":
        from ..preprocessing import release_pipeline as rp

        ps = rp.release_half_side_px(cfg.magnification)
        labels = rp.release_region_labels(xy_px, ps, slide.width_px, slide.height_px)  # every spot, input order

        def crop(idx, k, j):  # noqa: F811 - the release's crops replace ours
            return rp.release_spot_crops(slide, xy_px[idx], labels[idx], ps, cfg.out_px, cfg.thumb_px)[0]
    ext = cfg.image_codec
    order = kept[_seed_for(cfg.seed, sid, 0).permutation(len(kept))]
    start = 0
    for k, size in enumerate(balanced_sizes(len(order), cfg.shard_size)):
        part = order[start:start + size]
        start += size

        def samples(part=part, k=k):
            for j, c in enumerate(range(0, len(part), cfg.chunk_spots)):
                idx = part[c:c + cfg.chunk_spots]
                crops = crop(idx, k, j)
                tok = tokenizer.tokenize_vocab_counts(vc[idx]).tokens
                for i, s in enumerate(idx):
                    xy = xy_px[s]
                    yield encode_sample({
                        "__key__": f"{sid}--{spot_ids[s]}".replace(".", "_"),
                        f"patch.{ext}": crops.patch[i], f"region.{ext}": crops.region[i],
                        f"thumb.{ext}": crops.thumb[i],
                        "tokens.npy": _trim(tok[i]),
                        "meta.json": {"slide_id": sid, "spot_id": str(spot_ids[s]),
                                      "xy_px": [float(xy[0]), float(xy[1])],
                                      "xy_um": [float(xy[0] * um_per_px), float(xy[1] * um_per_px)],
                                      "um_per_px": um_per_px, "region_label": int(crops.region_label[i]),
                                      "region_valid": bool(np.asarray(crops.region_valid)[i])}})

        info = write_shard(out / shard_name(sid, k), samples())
        info["n_spots"] = info["n_samples"]
        done["shards"].append(info)
    done["n_samples"] = done["n_spots"] = done["n_patches"] = int(len(order))


# ------------------------------------------------------------------ the driver
def _dedupe_paths(entries: list[SampleEntry]) -> tuple[list[SampleEntry], list[dict]]:
    seen: dict = {}
    ids: dict[str, SampleEntry] = {}
    kept, skipped = [], []
    for e in entries:
        key = e.source_key()
        if key in seen:
            skipped.append({"slide_id": e.slide_id, "reason": "duplicate_path",
                            "detail": f"same input as {seen[key]}"})
            continue
        if e.slide_id in ids:
            raise StampInputError(f"slide_id {e.slide_id!r} names two different samples", e.path,
                                  hint="give each row a unique slide_id column")
        seen[key] = e.slide_id
        ids[e.slide_id] = e
        kept.append(e)
    return kept, skipped


# names build-corpus writes into OUT (shards, done records, means, the manifests) and io_utils' temp files
_OWN_FILE = re.compile(r"^(?:[A-Za-z0-9_\-]+-\d{5}\.tar|[A-Za-z0-9_\-]+\.done\.json|[A-Za-z0-9_\-]+\.means\.npy"
                       r"|manifest\.json|gene_means\.tsv|input_manifest\.tsv)$")
_OWN_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def check_corpus_out(out: str | Path, kind: str | None = None) -> None:
    """Refuse an OUT folder that holds files build-corpus did not write (it would overwrite or delete them), or
    (``kind`` given) a corpus of the other kind, finished or not (its manifest and shards would be replaced)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise StampInputError("the corpus output exists and is not a folder", out, hint="give a new folder name")
    foreign = sorted(p.name for p in out.iterdir() if not _is_own_file(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise StampInputError(f"the corpus output folder holds files stamp-st did not write ({shown})", out,
                              hint="give a new or empty folder (or one an earlier build-corpus wrote) as OUT")
    man = out / MANIFEST_NAME
    if man.is_file():
        try:
            ours = "settings_hash" in json.loads(man.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise StampInputError("the corpus output folder holds a manifest.json that build-corpus did not write",
                                  out, hint="give a new or empty folder as OUT (the input manifest goes elsewhere)")
    if kind is not None:
        for p in [man, *sorted(out.glob(f"*{DONE_SUFFIX}"))]:
            try:
                other = json.loads(p.read_text()).get("kind") if p.is_file() else None
            except (OSError, ValueError, AttributeError):
                other = None
            if other is not None and other != kind:
                raise StampInputError(f"the corpus output folder holds a {other!r} corpus ({p.name}); this build "
                                      f"is --kind {kind} and would replace it", out,
                                      hint=f"give another OUT folder for the {kind} corpus")


def _is_own_file(p: Path) -> bool:
    m = _OWN_TEMP.match(p.name)
    name = m.group("name") if m else p.name
    return p.is_file() and not p.is_symlink() and bool(_OWN_FILE.match(name))


def clean_stray_temps(out: Path) -> int:
    """Delete temp files of an interrupted build (io_utils writes ``.<name>.<random>.tmp``), only those that
    carry the name of a file build-corpus writes."""
    n = 0
    for p in Path(out).glob(".*.tmp"):
        if _OWN_TEMP.match(p.name) and _is_own_file(p):
            p.unlink(missing_ok=True)
            n += 1
    return n


def build_corpus(manifest: str | Path | list[SampleEntry], out_dir: str | Path, config: BuildConfig,
                 workers: int = 2, scheduler: str | None = None, processes: bool = True,
                 progress: bool = True, client=None) -> dict:
    """Build (or resume) a corpus. Returns ``{"manifest": ..., "build": timing and counts}``.

    ``scheduler``: address of a running Dask scheduler (scale out); else a LocalCluster of ``workers``
    single-threaded workers (``processes=False``: threads in this process, for tests and tiny builds).
    """
    entries = read_manifest(manifest) if not isinstance(manifest, list) else list(manifest)
    out = Path(out_dir)
    check_corpus_out(out, config.kind)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _load_vocab(str(config.vocab_path))
    settings = config.settings(vocab.checksum, vocab.divisors_checksum(config.rounded_means))
    entries, path_dups = _dedupe_paths(entries)
    clean_stray_temps(out)
    hashes = {e.slide_id: slide_settings_hash(settings, e) for e in entries}
    todo = [e for e in entries if read_done(out, e.slide_id, hashes[e.slide_id]) is None]
    t0 = time.perf_counter()
    failures: list[dict] = []
    summaries: list[dict] = []
    if todo:
        summaries, failures = _run_tasks(todo, config, out, hashes, workers, scheduler, processes, progress,
                                         client)
    seconds = time.perf_counter() - t0
    by_id = {e.slide_id: e for e in entries}
    if failures:
        raise StampInputError(
            f"{len(failures)} of {len(entries)} slide(s) failed; no manifest.json was written:\n"
            + row_report([{**f, "reason": "error", "detail": f["error"]} for f in failures], by_id),
            out, hint="fix those rows (or remove them from the manifest) and re-run the same command: finished "
                      "slides are kept")
    man = assemble_manifest(out, entries, config, vocab, path_dups)
    bad = [r for r in man["qc"]["skipped_slides"] if r["reason"] in ROW_ERRORS]
    n_spots = sum(s.get("n_spots", 0) for s in summaries)
    n_patches = sum(s.get("n_patches", 0) for s in summaries)
    build = {"seconds": seconds, "n_slides_built": len(todo), "n_slides_reused": len(entries) - len(todo),
             "n_spots_built": n_spots, "n_patches_built": n_patches,
             "spots_per_s": n_spots / seconds if seconds > 0 else 0.0,
             "patches_per_s": n_patches / seconds if seconds > 0 else 0.0,
             "workers": workers if scheduler is None and client is None else None}
    return {"manifest": man, "build": build, "bad_rows": bad, "row_report": row_report(bad, by_id)}


# reasons for which a manifest row gave nothing: the user's data or manifest is at fault (duplicates are not)
ROW_ERRORS = ("read_error", "no_spots_left", "no_image", "no_pixel_size")


def row_report(rows: list[dict], by_id: dict[str, SampleEntry]) -> str:
    """One line per manifest row that gave nothing: slide id, path, section, reason."""
    lines = []
    for r in rows:
        e = by_id.get(r["slide_id"])
        where = f"{e.path}" + (f" section {e.section}" if e.section else "") if e else ""
        lines.append(f"  {r['slide_id']}: {r['reason']}: {r.get('detail', '')}" + (f" [{where}]" if where else ""))
    return "\n".join(lines)


def _run_tasks(todo, config, out, hashes, workers, scheduler, processes, progress, client):
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    cluster = None
    own_client = client is None
    if client is None:
        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=processes,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
    summaries, failures = [], []
    try:
        cfg_json = config.to_json()
        # largest first would balance better, but size is unknown before reading; manifest order is kept
        futures = [client.submit(build_slide, e.to_json(), cfg_json, str(out), hashes[e.slide_id],
                                 key=f"corpus-{e.slide_id}-{hashes[e.slide_id]}", pure=False) for e in todo]
        sid_of = {f.key: e.slide_id for f, e in zip(futures, todo)}
        bar = tqdm(total=len(futures), desc="slides", unit="slide", disable=not progress)
        n_spots = 0
        for fut in as_completed(futures):
            try:
                s = fut.result()
                summaries.append(s)
                n_spots += s.get("n_spots", 0)
                bar.set_postfix(spots=n_spots, refresh=False)
            except Exception as err:  # noqa: BLE001 - one broken slide must not lose the others' work
                failures.append({"slide_id": sid_of[fut.key], "error": f"{type(err).__name__}: {err}"})
            bar.update(1)
        bar.close()
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    return summaries, failures


def assemble_manifest(out: Path, entries: list[SampleEntry], config: BuildConfig, vocab,
                      path_dups: list[dict] | None = None) -> dict:
    """Write ``manifest.json`` and ``gene_means.tsv`` from the done records (slide-id order)."""

    out = Path(out)
    settings = config.settings(vocab.checksum, vocab.divisors_checksum(config.rounded_means))
    by_id = {e.slide_id: e for e in entries}
    dones = {}
    for e in entries:
        d = read_done(out, e.slide_id, slide_settings_hash(settings, e))
        if d is None:
            raise StampInputError(f"slide {e.slide_id} is not finished", out, hint="re-run the build to finish it")
        dones[e.slide_id] = d
    skipped = list(path_dups or [])
    first_by_checksum: dict[str, str] = {}
    ok_ids = []
    for e in entries:  # duplicates by content: the first listed wins
        d = dones[e.slide_id]
        if d["status"] != "ok":
            skipped.append({"slide_id": e.slide_id, "reason": d["reason"], "detail": d["detail"]})
            continue
        cs = d.get("counts_checksum")
        if cs in first_by_checksum:
            skipped.append({"slide_id": e.slide_id, "reason": "duplicate_counts",
                            "detail": f"same counts as {first_by_checksum[cs]}"})
            continue
        first_by_checksum[cs] = e.slide_id
        ok_ids.append(e.slide_id)
    ok_ids.sort()
    skipped.sort(key=lambda s: s["slide_id"])
    slides, shards, accs = [], [], []
    for sid in ok_ids:
        d, e = dones[sid], by_id[sid]
        slides.append({"slide_id": sid, "split": e.split, "organ": e.organ, "study": e.study,
                       "n_samples": d["n_samples"], "n_spots": d["n_spots"], "um_per_px": d.get("um_per_px"),
                       "um_per_px_source": d.get("um_per_px_source"), "counts_checksum": d["counts_checksum"],
                       "n_genes_input": d["n_genes_input"], "n_genes_kept": d["n_genes_kept"], "qc": d["qc"],
                       "shards": [s["name"] for s in d["shards"]]})
        for s in d["shards"]:
            shards.append({"url": s["name"], "slide_id": sid, "split": e.split, "n_samples": s["n_samples"],
                           "n_spots": s["n_spots"], "bytes": s["bytes"], "sha256": s["sha256"]})
        from .shards import decode_npy

        accs.append(decode_npy((out / d["means"]["file"]).read_bytes()))
    if not ok_ids:
        raise StampInputError("no slide gave any spot: the corpus would be empty, no manifest.json was written:\n"
                              + row_report(skipped, by_id), out,
                              hint="check the manifest rows (format, section, paths) and the QC thresholds")
    qc_slides = [dones[sid]["qc"] for sid in ok_ids]
    qc_slides += [dones[s["slide_id"]]["qc"] for s in skipped if s["slide_id"] in dones
                  and s["reason"] not in ("duplicate_counts", "duplicate_path")]
    qc_total = qcmod.total_report(qc_slides)
    means = means_from_accumulators(accs, len(vocab))
    means_path = write_gene_means(vocab, means, out / GENE_MEANS_NAME)
    splits = {}
    for s in slides:
        t = splits.setdefault(s["split"], {"n_slides": 0, "n_samples": 0, "n_spots": 0})
        t["n_slides"] += 1
        t["n_samples"] += s["n_samples"]
        t["n_spots"] += s["n_spots"]
    from .. import __version__

    man = {
        "format_version": FORMAT_VERSION, "kind": config.kind, "stamp_st_version": __version__,
        "settings": settings, "settings_hash": _sha(settings)[:24],
        "vocab": {"checksum": vocab.checksum, "n_genes": len(vocab), "source": Path(config.vocab_path).name},
        "tokenizer": {"context": config.context, "rounded_means": config.rounded_means, "storage_pad_id": 0,
                      "token_offset": 30, "trimmed": True,
                      "divisors_checksum": vocab.divisors_checksum(config.rounded_means)},
        "crop_geometry": config.geometry().to_json() if config.kind == "paired" else None,
        "qc": {"config": config.qc.to_json(), "total": qc_total, "skipped_slides": skipped},
        "fields": (["tokens.npy", "spot_valid.npy", "meta.json"] if config.kind == "genes" else
                   [f"{f}.{config.image_codec}" for f in ("patch", "region", "thumb")] + ["tokens.npy", "meta.json"]),
        "gene_means": {"file": GENE_MEANS_NAME, "sha256": sha256_file(means_path)},
        "totals": {"n_slides": len(slides), "n_shards": len(shards),
                   "n_samples": sum(s["n_samples"] for s in slides), "n_spots": sum(s["n_spots"] for s in slides)},
        "splits": splits, "slides": slides, "shards": shards,
    }
    atomic_write_json(out / MANIFEST_NAME, man)
    return man


def with_overrides(config: BuildConfig, **kw) -> BuildConfig:
    return replace(config, **kw)


def verify_corpus(corpus_dir: str | Path) -> list[str]:
    """Problems found when checking every shard of a finished corpus against ``manifest.json`` (size and
    sha256); empty when the corpus is intact (e.g. after copying it to another disk)."""
    corpus_dir = Path(corpus_dir)
    man = read_finished_manifest(corpus_dir)
    problems = []
    for s in man["shards"]:
        p = corpus_dir / s["url"]
        if not p.is_file():
            problems.append(f"{s['url']}: missing")
        elif p.stat().st_size != s["bytes"]:
            problems.append(f"{s['url']}: {p.stat().st_size} bytes, manifest says {s['bytes']}")
        elif sha256_file(p) != s["sha256"]:
            problems.append(f"{s['url']}: checksum differs from the manifest")
    return problems
