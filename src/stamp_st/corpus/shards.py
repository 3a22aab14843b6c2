"""WebDataset shards: writing (atomic, byte-reproducible) and reading (local files, URLs, ``pipe:``).

A shard is a plain POSIX tar whose members are ``<key>.<field>``; samples are read back by any WebDataset
reader. Members carry mtime 0 and no user names, so a rebuilt shard is byte-identical to the first build and
its sha256 in the corpus manifest stays valid across resumes.

Field encodings (by extension): ``.npy`` numpy arrays (tokens int32, flags); uint8 RGB images as ``.png``
(lossless, zlib level 1: ~0.6x the size of raw arrays; the format every WebDataset pipeline decodes) or
``.qoi`` (lossless QOI: about the same size, ~10x faster to encode and ~4x faster to decode, read through
imagecodecs); ``.json`` small metadata; ``.txt`` UTF-8 strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

PNG_COMPRESS_LEVEL = 1
IMAGE_CODECS = ("png", "qoi")


# ------------------------------------------------------------------ field codecs
def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_png(img: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.png_encode(np.ascontiguousarray(img, dtype=np.uint8), level=PNG_COMPRESS_LEVEL))


def decode_png(data: bytes) -> np.ndarray:
    import imagecodecs

    a = imagecodecs.png_decode(data)
    return a if a.ndim == 3 and a.shape[2] == 3 else _to_rgb(a)


def encode_qoi(img: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.qoi_encode(np.ascontiguousarray(img, dtype=np.uint8)))


def decode_qoi(data: bytes) -> np.ndarray:
    import imagecodecs

    return _to_rgb(imagecodecs.qoi_decode(data))


def _to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def encode_sample(sample: Mapping) -> dict[str, bytes | str]:
    """Encode a sample dict by field extension: ``tokens.npy`` -> npy, ``patch.png`` -> PNG, ..."""
    out: dict[str, bytes | str] = {"__key__": sample["__key__"]}
    for k, v in sample.items():
        if k == "__key__":
            continue
        ext = k.rsplit(".", 1)[-1]
        if ext == "npy":
            out[k] = encode_npy(np.asarray(v))
        elif ext == "png":
            out[k] = encode_png(v)
        elif ext == "qoi":
            out[k] = encode_qoi(v)
        elif ext == "json":
            out[k] = json.dumps(v, sort_keys=True, separators=(",", ":")).encode()
        elif ext == "txt":
            out[k] = str(v).encode()
        else:
            raise ValueError(f"no encoder for field {k!r}")
    return out


def decode_sample(raw: Mapping, fields: set[str] | None = None) -> dict:
    """Decode the raw bytes of a sample (as read from a shard) by field extension."""
    out = {}
    for k, v in raw.items():
        if k.startswith("__"):
            out[k] = v
            continue
        if fields is not None and k not in fields:
            continue
        ext = k.rsplit(".", 1)[-1]
        if ext == "npy":
            out[k] = decode_npy(v)
        elif ext == "png":
            out[k] = decode_png(v)
        elif ext == "qoi":
            out[k] = decode_qoi(v)
        elif ext == "json":
            out[k] = json.loads(v)
        elif ext == "txt":
            out[k] = v.decode()
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------ writing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def write_shard(path: str | Path, samples) -> dict:
    """Write encoded samples (an iterable of dicts with ``__key__``) into one tar, atomically.

    Members are named ``<key>.<field>`` in sorted field order, as ``webdataset.TarWriter`` writes them; the
    standard library's tarfile is used so that build workers need not import torch (webdataset does).
    Returns ``{name, n_samples, bytes, sha256}``. The file appears under its final name only when complete.
    """
    import tarfile

    from ..io_utils import atomic_path

    path = Path(path)
    n = 0
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples:
                key = s["__key__"]
                for k in sorted(s):
                    if k.startswith("_"):
                        continue
                    v = s[k]
                    data = v.encode() if isinstance(v, str) else bytes(v)
                    ti = tarfile.TarInfo(f"{key}.{k}")
                    ti.size, ti.mtime, ti.mode = len(data), 0, 0o444
                    tar.addfile(ti, io.BytesIO(data))
                n += 1
    return {"name": path.name, "n_samples": n, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def balanced_sizes(n: int, max_size: int) -> list[int]:
    """Split ``n`` samples into the fewest shards of at most ``max_size``, sizes differing by at most one
    (so no slide ends with a 1-sample shard that would have no same-slide partner)."""
    if n <= 0:
        return []
    k = -(-n // max_size)
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


# ------------------------------------------------------------------ reading
def open_url(url: str):
    """Open a shard by path, URL or ``pipe:command`` (webdataset's gopen)."""
    from webdataset import gopen

    return gopen(str(url))


def iter_shard_raw(url: str) -> Iterator[dict]:
    """Raw samples (``__key__`` + field -> bytes) of one shard, streamed in file order."""
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_expander

    from ..errors import StampInputError

    try:
        stream = open_url(url)
    except OSError as err:
        raise StampInputError(f"cannot open shard ({err})", url, hint="check that the corpus is complete") from err
    try:
        yield from group_by_keys(tar_file_expander([{"url": str(url), "stream": stream}]))
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise StampInputError(f"shard is damaged or truncated ({type(err).__name__}: {err})", url,
                              hint="copy the corpus again or re-run build-corpus") from err
    finally:
        stream.close()


# what decoding a damaged member raises (numpy's .npy reader, PIL / imagecodecs, json, a missing or odd field)
DAMAGED_MEMBER_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError, EOFError, zlib.error)


@contextlib.contextmanager
def member_errors(url: str, *raws: Mapping) -> Iterator[None]:
    """Decode (and use) shard members inside this block: a damaged member becomes a StampInputError naming the
    shard and the member, whatever the decoder raised."""
    from ..errors import StampInputError

    try:
        yield
    except StampInputError:
        raise
    except DAMAGED_MEMBER_ERRORS as err:
        keys = ", ".join(repr(r.get("__key__", "?")) for r in raws)
        raise StampInputError(f"member {keys} of the shard cannot be decoded ({type(err).__name__}: "
                              f"{str(err)[:200]})", url,
                              hint="the shard is damaged although its size matches: check it with its sha256 "
                                   "(drop --skip-sha256), copy the corpus again or re-run build-corpus") from err


def iter_shard(url: str, fields: set[str] | None = None) -> Iterator[dict]:
    for raw in iter_shard_raw(url):
        with member_errors(url, raw):
            sample = decode_sample(raw, fields)
        yield sample
