"""Public data users start from, fetched once into a cache folder: her2st (Zenodo record 3957257) and HEST-1k
samples (the Hugging Face dataset MahmoodLab/hest, by id or by a filter on its metadata table).

Cache folder: ``$STAMP_ST_DATA_CACHE``, default ``~/.cache/stamp_st/data`` (``her2st/``, ``hest/``), which
``stamp_st.paths.data_dir`` also looks in. Zenodo downloads resume from a ``.part`` file (HTTP Range) and are
checked against the record's MD5 before they take their final name; HEST files go through huggingface_hub
(its own resume and cache) and are checked against the hub's SHA-256 of each LFS file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

from .errors import StampInputError

CACHE_ENV = "STAMP_ST_DATA_CACHE"
ZENODO_URL_ENV = "STAMP_ST_ZENODO_URL"
ZENODO_URL = "https://zenodo.org"
HER2ST_RECORD = "3957257"
# published with the record (github.com/almaan/her2st): the archives are password-protected
HER2ST_PASSWORDS = (b"zNLXkYk3Q9znUseS", b"yUx44SzG6NdB32gY")
HEST_REPO = "MahmoodLab/hest"
HEST_METADATA_CSV = "HEST_v1_1_0.csv"
HEST_FOLDERS = ("st", "wsis", "metadata")  # what stamp-st reads; others (patches, cellvit_seg, ...) on request
CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stamp_st" / "data").expanduser()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, checksum: str | None = None, size: int | None = None,
                  timeout_s: float = 60.0) -> Path:
    """``url`` -> ``dest``, resuming ``dest.part`` with an HTTP Range request; ``checksum`` = ``"md5:HEX"``
    or ``"sha256:HEX"`` is verified before the file takes its final name. A complete, verified ``dest`` is
    kept as it is."""
    algo, _, want = (checksum or "").partition(":")
    dest = Path(dest)
    if dest.is_file() and (not want or _digest(dest, algo) == want):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # not a prefix of this file: start again
        part.unlink()
        have = 0
    if size is None or have < size:
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - https/http URLs we built
                mode = "ab" if have and resp.status == 206 else "wb"
                with open(part, mode) as f:
                    for block in iter(lambda: resp.read(CHUNK_BYTES), b""):
                        f.write(block)
        except OSError as err:
            raise StampInputError(f"download failed ({err}); {part.name} keeps what arrived, run again to resume",
                                  url) from err
    if want and _digest(part, algo) != want:
        part.unlink()
        raise StampInputError(f"{dest.name}: {algo} checksum does not match the source's; the partial file was "
                              "removed, run again to fetch it anew", url)
    part.replace(dest)
    return dest


# ------------------------------------------------------------------ her2st (Zenodo)
def zenodo_files(record: str, base_url: str | None = None) -> list[dict]:
    """The record's files: ``key``, ``size``, ``checksum`` (``md5:...``), ``url``."""
    base = (base_url or os.environ.get(ZENODO_URL_ENV) or ZENODO_URL).rstrip("/")
    api = f"{base}/api/records/{record}"
    try:
        with urllib.request.urlopen(api, timeout=60) as resp:  # noqa: S310
            meta = json.load(resp)
    except OSError as err:
        raise StampInputError(f"cannot reach Zenodo ({err})", api,
                              hint=f"check the network, or set {ZENODO_URL_ENV} to a mirror") from err
    files = []
    for f in meta.get("files", []):
        links = f.get("links", {})
        url = links.get("self") or links.get("download") or f"{base}/records/{record}/files/{f['key']}"
        files.append({"key": f["key"], "size": f.get("size"), "checksum": f.get("checksum"), "url": url})
    if not files:
        raise StampInputError("the Zenodo record lists no files", api)
    return files


def _extract(archive: Path, into: Path) -> bool:
    """Unpack a .zip (password-protected with the record's published passwords, or not) into ``into``;
    False when this Python cannot (e.g. AES-encrypted 7z/zip: the caller says how to unpack it)."""
    import zipfile

    if not zipfile.is_zipfile(archive):
        return False
    with zipfile.ZipFile(archive) as z:
        for pwd in (None, *HER2ST_PASSWORDS):
            try:
                z.extractall(into, pwd=pwd)
                return True
            except RuntimeError:  # "password required" / "bad password"
                continue
            except NotImplementedError:  # an encryption zipfile does not implement
                return False
    return False


def download_her2st(dest: Path | None = None, patterns: list[str] | None = None,
                    base_url: str | None = None) -> Path:
    """her2st (Andersson et al. 2021) into ``dest/her2st``: the record's archives, verified, then unpacked."""
    root = Path(dest or cache_dir()) / "her2st"
    files = zenodo_files(HER2ST_RECORD, base_url)
    if patterns:
        files = [f for f in files if any(fnmatch.fnmatch(f["key"], p) for p in patterns)]
        if not files:
            raise StampInputError(f"no file of Zenodo record {HER2ST_RECORD} matches {patterns}")
    archives = root / "_downloads"
    for f in files:
        _say(f"her2st: {f['key']} ({(f['size'] or 0) / 1e6:.1f} MB) -> {archives}")
        path = download_file(f["url"], archives / f["key"], f["checksum"], f["size"])
        if path.suffix in (".zip", ".7z"):
            if not _extract(path, root):
                _say(f"her2st: cannot unpack {path.name} here; unpack it into {root} with 7-Zip "
                     f"(7z x {path} -o{root}; passwords in the her2st repository README)")
    _say(f"her2st: {root}")
    return root


# ------------------------------------------------------------------ HEST-1k (Hugging Face dataset)
def hest_ids(filters: dict[str, str], metadata_csv: Path) -> list[str]:
    """Sample ids of HEST's metadata table whose columns equal the given values (case-insensitive)."""
    import pandas as pd

    meta = pd.read_csv(metadata_csv)
    for col, value in filters.items():
        if col not in meta.columns:
            raise StampInputError(f"HEST metadata has no column '{col}'", metadata_csv,
                                  hint=f"columns: {', '.join(map(str, meta.columns[:40]))}")
        meta = meta[meta[col].astype(str).str.lower() == str(value).lower()]
    return meta["id"].astype(str).tolist()


def _hub(call, what: str):
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return call()
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise StampInputError(
            f"{what}: {type(err).__name__}: {err}", f"https://huggingface.co/datasets/{HEST_REPO}",
            hint="HEST-1k is gated: accept its terms on that page and log in (`hf auth login` or HF_TOKEN); "
                 "where the network is unreachable, copy the files into the cache folder by hand") from err


def download_hest(ids: list[str] | None = None, filters: dict[str, str] | None = None,
                  folders: tuple[str, ...] = HEST_FOLDERS, dest: Path | None = None) -> tuple[Path, list[str]]:
    """HEST-1k samples into ``dest/hest`` (a HEST root stamp-st reads with ``--section ID``): only the
    ``folders`` of the ids given or selected by ``filters`` on the metadata table. Returns (root, ids)."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    root = Path(dest or cache_dir()) / "hest"
    ids = list(ids or [])
    if filters:
        csv = _hub(lambda: hf_hub_download(HEST_REPO, HEST_METADATA_CSV, repo_type="dataset", local_dir=root),
                   "HEST metadata table")
        ids += [i for i in hest_ids(filters, Path(csv)) if i not in ids]
    if not ids:
        raise StampInputError("no HEST sample selected", None, hint="give --ids ID ... or --filter COLUMN=VALUE")
    patterns = [f"{folder}/{i}[._]*" for i in ids for folder in folders]
    _say(f"hest: {len(ids)} samples ({', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}), "
         f"{', '.join(folders)} -> {root}")
    _hub(lambda: snapshot_download(HEST_REPO, repo_type="dataset", local_dir=root, allow_patterns=patterns),
         "HEST download")
    got = [p.relative_to(root).as_posix() for folder in folders if (root / folder).is_dir()
           for p in (root / folder).iterdir() if any(fnmatch.fnmatch(p.relative_to(root).as_posix(), pat)
                                                     for pat in patterns)]
    infos = _hub(lambda: HfApi().get_paths_info(HEST_REPO, got, repo_type="dataset"), "HEST checksums") if got else []
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if lfs is not None and _digest(root / info.path, "sha256") != lfs.sha256:
            raise StampInputError(f"{info.path}: SHA-256 differs from the hub's", root / info.path,
                                  hint="delete the file and run the download again")
    return root, ids
