"""The corpus folder: every file in it by name, its done records and its ``manifest.json``, read and written
here only.

A corpus folder OUT holds, per slide, its shards ``<slide_id>-00000.tar``, ``-00001.tar``, ..., a done record
``<slide_id>.done.json`` (written after the shards: the slide is finished) and the slide's gene-mean
accumulators ``<slide_id>.means.npy``; for the whole corpus ``gene_means.tsv``, ``manifest.json`` (written
last: its presence means the corpus is finished) and, when build-corpus made the samples table itself
(``--her2st``), that table as ``input_manifest.tsv``. Inside a shard each sample is the members named here
(``tokens.npy``, ``meta.json``, ...). The build writes through these functions; every reader (datasets, gene
means, controls, training, inference, verification) reads through them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import StampInputError
from ..io_utils import atomic_path, atomic_write_json, read_json
from ..preprocessing.tokenizer import STORAGE_PAD_ID
from .shards import decode_npy, encode_npy, sha256_file

FORMAT_VERSION = 1
KINDS = ("genes", "paired")

# ------------------------------------------------------------------ file names
MANIFEST_NAME = "manifest.json"
GENE_MEANS_NAME = "gene_means.tsv"
INPUT_SAMPLES_NAME = "input_manifest.tsv"  # a samples table; the name corpora have always carried
_SLIDE_ID = r"[A-Za-z0-9_\-]+"  # the characters of a slide id (samples.safe_slide_id)
_DONE_SUFFIX = ".done.json"
_MEANS_SUFFIX = ".means.npy"


def shard_name(slide_id: str, k: int) -> str:
    """The k-th shard of a slide (a shard holds one slide's samples only)."""
    return f"{slide_id}-{k:05d}.tar"


def done_name(slide_id: str) -> str:
    return f"{slide_id}{_DONE_SUFFIX}"


def means_name(slide_id: str) -> str:
    return f"{slide_id}{_MEANS_SUFFIX}"


def _shard_pattern(slide_id: str) -> str:
    return rf"{slide_id}-\d{{5}}\.tar"


# every name build-corpus writes into OUT, and io_utils' temp files of them (``.<name>.<random>.tmp``)
_OWN_FILE = re.compile(rf"^(?:{_shard_pattern(_SLIDE_ID)}|{_SLIDE_ID}{re.escape(_DONE_SUFFIX)}"
                       rf"|{_SLIDE_ID}{re.escape(_MEANS_SUFFIX)}|{re.escape(MANIFEST_NAME)}"
                       rf"|{re.escape(GENE_MEANS_NAME)}|{re.escape(INPUT_SAMPLES_NAME)})$")
_OWN_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")

# ------------------------------------------------------------------ the members of one shard sample
# (a new per-spot array: a name here and in sample_members, FORMAT_VERSION + 1 so that a resumed build rebuilds
# older slides, written by build, served by datasets; ``.npy`` members are at least 1-d, so a per-spot scalar
# comes back as shape (1,): read it with ``.item()``)
TOKENS = "tokens.npy"  # int32 token ids with trailing storage padding trimmed (pad_tokens re-pads them)
SPOT_VALID = "spot_valid.npy"  # genes corpora: bool [9], centre first
META = "meta.json"  # slide id, spot id(s); paired: coordinates, region label
IMAGES = ("patch", "region", "thumb")  # paired corpora: uint8 RGB, one member per image codec extension


def image_member(name: str, codec: str) -> str:
    return f"{name}.{codec}"


def sample_members(kind: str, codec: str = "png") -> list[str]:
    """The members of every sample of a corpus of this kind (the manifest's ``fields``)."""
    if kind == "genes":
        return [TOKENS, SPOT_VALID, META]
    return [image_member(n, codec) for n in IMAGES] + [TOKENS, META]


def sample_key(slide_id: str, spot_id: str) -> str:
    """A sample's WebDataset key (no dots: WebDataset splits member names at the first one)."""
    return f"{slide_id}--{spot_id}".replace(".", "_")


def sample_image(sample: dict, name: str) -> np.ndarray:
    """The decoded image ``name`` (patch, region, thumb) of a sample, whatever codec it was stored with."""
    from .shards import IMAGE_CODECS

    for codec in IMAGE_CODECS:
        if image_member(name, codec) in sample:
            return sample[image_member(name, codec)]
    raise KeyError(f"sample {sample.get('__key__')} has no {name} image")


def trim_tokens(tokens: np.ndarray) -> np.ndarray:
    """Drop trailing all-padding columns (at least one column stays); ``pad_tokens`` undoes it."""
    nz = np.flatnonzero((tokens != STORAGE_PAD_ID).any(axis=tuple(range(tokens.ndim - 1))))
    return tokens[..., : (nz[-1] + 1 if len(nz) else 1)]


def pad_tokens(tokens: np.ndarray, context: int, rows: int | None = None) -> np.ndarray:
    """A ``tokens.npy`` member padded (or cut) to ``context``, int64; ``rows``: the group size a Stage-1 sample
    must have (None: one spot)."""
    want = (rows,) if rows else ()
    if not isinstance(tokens, np.ndarray) or tokens.ndim != len(want) + 1 or tokens.shape[:-1] != want \
            or tokens.dtype.kind not in "iu":
        raise ValueError(f"{TOKENS} is {getattr(tokens, 'dtype', type(tokens))} "
                         f"{getattr(tokens, 'shape', '')}, expected integer ids of shape {(*want, 'L')}")
    t = tokens[..., :context]
    if t.shape[-1] < context:
        t = np.concatenate([t, np.full(t.shape[:-1] + (context - t.shape[-1],), STORAGE_PAD_ID, t.dtype)], axis=-1)
    return t.astype(np.int64)


# ------------------------------------------------------------------ one slide's outputs
def _slide_files(out: Path, slide_id: str) -> list[Path]:
    pat = re.compile(rf"^{_shard_pattern(re.escape(slide_id))}$")
    files = [p for p in out.glob(f"{slide_id}-*.tar") if pat.match(p.name)]
    return files + [out / done_name(slide_id), out / means_name(slide_id)]


def remove_slide_outputs(out: str | Path, slide_id: str) -> None:
    """Delete a slide's shards, done record and means (the done record first: once it is gone the slide counts
    as unfinished whatever else survives)."""
    for p in sorted(_slide_files(Path(out), slide_id), key=lambda p: p.name != done_name(slide_id)):
        p.unlink(missing_ok=True)


def write_done(out: str | Path, done: dict) -> None:
    """The slide's done record, atomically, after its shards and means."""
    atomic_write_json(Path(out) / done_name(done["slide_id"]), done)


def _json_or_none(p: Path):
    """A JSON file that may be anything (a user's file, damaged): its content, or None."""
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None


def load_done(out: str | Path, slide_id: str) -> dict | None:
    """The slide's done record as written, or None (missing or damaged)."""
    done = _json_or_none(Path(out) / done_name(slide_id))
    return done if isinstance(done, dict) else None


def read_done(out: str | Path, slide_id: str, settings_hash: str) -> dict | None:
    """The slide's done record when it is complete (the shards and means it lists exist, shards with the recorded
    size) and built with these settings; else None (the slide is to be built)."""
    out = Path(out)
    done = load_done(out, slide_id)
    if done is None or done.get("settings_hash") != settings_hash:
        return None
    for s in done.get("shards", []):
        f = out / s["name"]
        if not f.is_file() or f.stat().st_size != s["bytes"]:
            return None
    m = done.get("means")
    if m and not (out / m["file"]).is_file():
        return None
    return done


def write_slide_means(out: str | Path, slide_id: str, accumulators: np.ndarray) -> dict:
    """The slide's gene-mean accumulators (``gene_means.means_accumulators``); returns the done record's entry."""
    path = Path(out) / means_name(slide_id)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(encode_npy(accumulators))
    return {"file": path.name, "sha256": sha256_file(path)}


def read_slide_means(out: str | Path, done: dict) -> np.ndarray:
    """The gene-mean accumulators a done record names."""
    return decode_npy((Path(out) / done["means"]["file"]).read_bytes())


# ------------------------------------------------------------------ what OUT may hold
def _is_own_file(p: Path) -> bool:
    m = _OWN_TEMP.match(p.name)
    name = m.group("name") if m else p.name
    return p.is_file() and not p.is_symlink() and bool(_OWN_FILE.match(name))


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
        content = _json_or_none(man)
        if not (isinstance(content, dict) and "settings_hash" in content):
            raise StampInputError("the corpus output folder holds a manifest.json that build-corpus did not write",
                                  out, hint="give a new or empty folder as OUT (the samples table goes elsewhere)")
    if kind is not None:
        for p in [man, *sorted(out.glob(f"*{_DONE_SUFFIX}"))]:
            content = _json_or_none(p)
            other = content.get("kind") if isinstance(content, dict) else None
            if other is not None and other != kind:
                raise StampInputError(f"the corpus output folder holds a {other!r} corpus ({p.name}); this build "
                                      f"is --kind {kind} and would replace it", out,
                                      hint=f"give another OUT folder for the {kind} corpus")


def clean_stray_temps(out: str | Path) -> int:
    """Delete temp files of an interrupted build (io_utils writes ``.<name>.<random>.tmp``), only those that
    carry the name of a file build-corpus writes."""
    n = 0
    for p in Path(out).glob(".*.tmp"):
        if _OWN_TEMP.match(p.name) and _is_own_file(p):
            p.unlink(missing_ok=True)
            n += 1
    return n


# ------------------------------------------------------------------ manifest.json
def write_manifest(out: str | Path, manifest: dict) -> Path:
    """``OUT/manifest.json``, atomically: the last file a build writes."""
    path = Path(out) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest(corpus: str | Path | dict) -> tuple[dict, str]:
    """(manifest, base URL of its shards) of a finished corpus: a corpus folder or its ``manifest.json``, a
    URL / ``pipe:`` spec of one, or an already loaded dict (base ""). The one reader of ``manifest.json``.

    Remote or piped storage is the caller's explicit choice (a URL or ``pipe:`` given here, on the command
    line); the file itself is data that travels, so every shard it names must be a plain file name inside the
    corpus folder (``check_manifest``)."""
    if isinstance(corpus, dict):
        return check_manifest(corpus), ""
    spec = str(corpus)
    if "://" in spec or spec.startswith("pipe:"):
        from .shards import open_url

        try:
            with open_url(spec) as fh:
                man = json.loads(fh.read())
        except (OSError, ValueError) as err:
            raise StampInputError(f"cannot read the corpus manifest ({err})", spec) from err
        base = spec.rsplit("/", 1)[0] if "/" in spec and not spec.startswith("pipe:") else ""
        return check_manifest(man, spec), base
    p = Path(spec)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise StampInputError(f"no {MANIFEST_NAME}: not a finished corpus", p,
                              hint="run `stamp-st build-corpus` (again) to finish it")
    if p.suffix.lower() in (".tsv", ".csv", ".txt"):
        raise StampInputError("this is a samples table (the input of build-corpus), not a corpus", p,
                              hint="build the corpus first (`stamp-st build-corpus` on this file), then pass the "
                                   "corpus folder")
    man = read_json(p, "corpus manifest", hint="the file is damaged: copy the corpus again or re-run build-corpus")
    return check_manifest(man, p), str(p.parent)


# a shard is a plain file of the corpus folder: no folder, URL, ``pipe:`` or ``..`` from the manifest
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_manifest(man, source: str | Path | None = None) -> dict:
    """The fields readers use, with their types; shard names must resolve inside the corpus folder."""
    hint = "the corpus manifest is damaged or was edited: re-run build-corpus"
    if not isinstance(man, dict):
        raise StampInputError("the corpus manifest is not a JSON object", source, hint)
    if man.get("kind") not in KINDS:
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


def _shard_problems(man: dict, base: str, shards: Sequence[dict] | None,
                    sha256: bool) -> Iterator[tuple[dict, Path, str, int]]:
    """(shard, path, "missing" | "size" | "sha256", size on disk) for each local shard that differs from what
    the manifest promises (sha256 checked only when asked)."""
    for sh in man["shards"] if shards is None else shards:
        p = Path(base) / sh["url"]
        if not p.is_file():
            yield sh, p, "missing", 0
            continue
        size, want = p.stat().st_size, sh.get("bytes")
        if want is not None and size != int(want):
            yield sh, p, "size", size
        elif sha256 and sh.get("sha256") and sha256_file(p) != sh["sha256"]:
            yield sh, p, "sha256", size


def check_shards(man: dict, base: str, shards: Sequence[dict] | None = None, sha256: bool = False) -> None:
    """Raise on the first local shard that differs from the manifest: present, the recorded size (cheap, always)
    and, when ``sha256``, the recorded checksum. Remote or piped shards are not checked here."""
    if not base or "://" in base or base.startswith("pipe:") or "{shard}" in base:
        return
    hint = "the corpus was damaged or only partly copied: copy it again or re-run build-corpus"
    for sh, p, what, size in _shard_problems(man, base, shards, sha256):
        if what == "missing":
            raise StampInputError(f"shard {sh['url']} listed in manifest.json is missing", p, hint)
        if what == "size":
            raise StampInputError(f"shard has {size} bytes, manifest.json says {sh['bytes']} (truncated?)", p, hint)
        raise StampInputError("shard content differs from its sha256 in manifest.json", p, hint)


def verify_corpus(corpus_dir: str | Path) -> list[str]:
    """Problems found when checking every shard of a finished corpus against ``manifest.json`` (size and
    sha256); empty when the corpus is intact (e.g. after copying it to another disk)."""
    man, base = read_manifest(Path(corpus_dir))
    says = {"missing": lambda sh, size: "missing",
            "size": lambda sh, size: f"{size} bytes, manifest says {sh['bytes']}",
            "sha256": lambda sh, size: "checksum differs from the manifest"}
    return [f"{sh['url']}: {says[what](sh, size)}" for sh, _, what, size in _shard_problems(man, base, None, True)]
