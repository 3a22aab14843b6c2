"""Public data users start from, fetched once into a cache folder, every file checked against a checksum
recorded here:

- her2st (Andersson et al. 2021) from the authors' GitHub repository almaan/her2st at a pinned commit: counts,
  spot files, H&E images, expression-cluster labels and names, pathologist labels, laid out as the her2st
  reader reads them (``her2st/ST-cnts/``, ``ST-spotfiles/``, ``ST-imgs/``, ``ST-cluster/``, ``ST-pat/``). The
  checksums are the git blob ids of the pinned tree (``sources/her2st_<commit>.tsv``). The study's Zenodo
  record is not used: its archives are AES-encrypted 7z with another layout and without the cluster labels.
- the raw files of the released STAMP gene vocabulary (Hanminghao/STAMP at a pinned commit: ``src/model.h5ad``,
  ``src/Visium_mean.npy``, ``src/gene_name_id_dict.pkl``); ``preprocessing.vocab`` builds the vocabulary
  tables from them.
- HEST-1k samples (the Hugging Face dataset MahmoodLab/hest, by id or by a filter on its newest metadata
  table), through huggingface_hub, checked against the hub's SHA-256 of each LFS file.

Cache folder: ``$STAMP_ST_DATA_CACHE``, default ``~/.cache/stamp_st/data``, which ``stamp_st.paths.data_dir``
also looks in. Downloads resume from a ``.part`` file (HTTP Range), stop at the expected size, and take their
final name only once verified. Names from any listing are checked to stay inside the destination.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import StampInputError

CACHE_ENV = "STAMP_ST_DATA_CACHE"
# mirrors of the pinned sources for `stamp-st demo` (a copy of the repository's files, as --base-url)
HER2ST_URL_ENV = "STAMP_ST_HER2ST_URL"
VOCAB_URL_ENV = "STAMP_ST_VOCAB_URL"
CHUNK_BYTES = 1 << 20
SOURCES_DIR = Path(__file__).parent / "sources"

# her2st: almaan/her2st at its last commit (2022-11); data/ and res/ST-cluster/ hold plain gzip/TSV/JPEG files
HER2ST_REPO = "almaan/her2st"
HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_BASE_URL = f"https://raw.githubusercontent.com/{HER2ST_REPO}/{HER2ST_COMMIT}"
HER2ST_FILES_TSV = SOURCES_DIR / "her2st_85df741.tsv"
# repository folder -> folder under her2st/ (the layout the reader reads)
HER2ST_LAYOUT = {"data/ST-cnts/": "ST-cnts/", "data/ST-spotfiles/": "ST-spotfiles/", "data/ST-imgs/": "ST-imgs/",
                 "data/ST-pat/lbl/": "ST-pat/lbl/", "res/ST-cluster/": "ST-cluster/"}
# the pinned tree's H&E images whose size this project could not read (its blob id is known): none of the
# repository's JPEGs reaches 5 MB, so a body beyond this is not the file
HER2ST_IMAGE_MAX_BYTES = 64 << 20

# the released STAMP gene vocabulary's raw files: Hanminghao/STAMP (files last changed in 300b9c1, 2026-02-27)
STAMP_REPO = "Hanminghao/STAMP"
STAMP_COMMIT = "78c4fd2f4e773248328a981040a676b94f09b022"
STAMP_BASE_URL = f"https://raw.githubusercontent.com/{STAMP_REPO}/{STAMP_COMMIT}"
STAMP_VOCAB_FILES = {  # repository path: (git blob sha1, size in bytes)
    "src/model.h5ad": ("d0ec5a0d307ca1dcd67d599a3fa30adf1992691c", 1005640),
    "src/Visium_mean.npy": ("4705dd1466351dbeea177ade0a0c0cf698f410fc", 162608),
    "src/gene_name_id_dict.pkl": ("21cdad0753c047b1e55ce69dd897c72f33293ce2", 507884),
}

HEST_REPO = "MahmoodLab/hest"
HEST_METADATA_RE = re.compile(r"^HEST_v(\d+)_(\d+)_(\d+)\.csv$")  # HEST_v1_1_0.csv, ... at the dataset's root
HEST_FOLDERS = ("st", "wsis", "metadata")  # what stamp-st reads; others (patches, cellvit_seg, ...) on request
PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
HASH_ALGOS = ("git-sha1", "sha256", "sha1", "md5")
LOOPBACK_HOSTS = ("localhost",)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stamp_st" / "data").expanduser()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ what may be fetched, and where it may go
def check_url(url: str, allow_http: bool = False, what: str = "URL") -> str:
    """``url`` if it is an absolute https URL (plain http only to this machine, or with ``allow_http``)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
    except ValueError as err:
        raise StampInputError(f"{what} is not a URL ({err})", str(url)) from err
    if parts.scheme not in ("http", "https") or not host:
        raise StampInputError(f"{what} is not an http(s) URL", str(url),
                              hint="give an address such as https://host/path (file:// and bare paths are refused)")
    if parts.scheme == "http" and not allow_http and not _is_loopback(host):
        raise StampInputError(f"{what} is plain http to another machine: its files could be changed on the way",
                              str(url), hint="use https, or pass --allow-http for a mirror you trust")
    return str(url)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_relpath(name: str, where: str, allow_dirs: bool = False) -> PurePosixPath:
    """A name from a record or listing as a relative path that stays inside the destination: no absolute path,
    no '..', no backslash; no folders at all unless ``allow_dirs`` (the pinned layouts recorded here)."""
    s = str(name)
    p = PurePosixPath(s)
    bad = (not s or "\\" in s or "\x00" in s or p.is_absolute() or ".." in p.parts or s.startswith("~")
           or any(part in ("", ".") for part in s.split("/")) or (not allow_dirs and len(p.parts) != 1)
           or re.match(r"^[A-Za-z]:", s))
    if bad:
        raise StampInputError(f"file name {s!r} from {where} is not a plain name inside the destination; "
                              "nothing was written", where)
    return p


def _parse_checksum(checksum: str | None, url: str) -> tuple[str, str]:
    algo, _, want = (checksum or "").partition(":")
    if not checksum:
        return "", ""
    if not isinstance(checksum, str) or algo not in HASH_ALGOS or not re.fullmatch(r"[0-9a-fA-F]+", want or ""):
        raise StampInputError(f"unknown checksum {checksum!r} (expected one of {', '.join(HASH_ALGOS)}:HEX)", url)
    return algo, want.lower()


def _digest(path: Path, algo: str) -> str:
    if algo == "git-sha1":  # git's blob id: sha1 of "blob <size>\0" + content
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, checksum: str | None = None, size: int | None = None,
                  max_bytes: int | None = None, timeout_s: float = 60.0, allow_http: bool = False) -> Path:
    """``url`` -> ``dest``, resuming ``dest.part`` with an HTTP Range request. ``checksum`` = ``ALGO:HEX``
    (git-sha1, sha256, sha1, md5) is verified before the file takes its final name; the body is cut off at
    ``size`` (or ``max_bytes`` where the size is unknown). Refused when neither size nor checksum is known.
    A complete, verified ``dest`` is kept as it is."""
    check_url(url, allow_http)
    algo, want = _parse_checksum(checksum, url)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise StampInputError(f"declared size {size!r} is not a byte count", url)
    if not want and size is None:
        raise StampInputError("neither a size nor a checksum is known for this file: refusing to fetch it", url,
                              hint="a source must state at least one of them")
    limit = size if size is not None else max_bytes
    if limit is None:
        raise StampInputError("the file's size is unknown and no limit was set: refusing to fetch it", url)
    dest = Path(dest)
    if dest.is_file() and (not want or _digest(dest, algo) == want) and (size is None or
                                                                          dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > limit:  # not a prefix of this file: start again
        part.unlink()
        have = 0
    if size is None or have < size:
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - checked http(s) URL
                if not resp.geturl().startswith(("https://", "http://")):
                    raise StampInputError("redirected to a non-http(s) address", url)
                check_url(resp.geturl(), allow_http, what="redirect target")
                mode = "ab" if have and resp.status == 206 else "wb"
                got = have if mode == "ab" else 0
                declared = resp.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and got + int(declared) > limit:
                    raise StampInputError(f"{dest.name}: the server announces {got + int(declared):,} bytes, more "
                                          f"than the {limit:,} expected; nothing was kept", url)
                with open(part, mode) as f:
                    for block in iter(lambda: resp.read(CHUNK_BYTES), b""):
                        got += len(block)
                        if got > limit:
                            f.close()
                            part.unlink()
                            raise StampInputError(f"{dest.name}: the server sent more than the {limit:,} bytes "
                                                  "expected; the download was stopped and nothing was kept", url)
                        f.write(block)
        except StampInputError:
            raise
        except urllib.error.HTTPError as err:
            if not (err.code == 416 and have):  # 416 after a complete .part: nothing left to send, verify it
                raise StampInputError(f"{dest.name}: the server answered HTTP {err.code} ({err.reason})", url,
                                      hint="check the address; run again to retry") from err
        except (OSError, ValueError) as err:
            raise StampInputError(f"{dest.name}: download failed ({err}); {part.name} keeps what arrived, run "
                                  "again to resume", url) from err
    if size is not None and part.stat().st_size < size:
        raise StampInputError(f"{dest.name}: {part.stat().st_size:,} of {size:,} bytes arrived; run again to "
                              "resume", url)
    if want and _digest(part, algo) != want:
        part.unlink()
        raise StampInputError(f"{dest.name}: {algo} checksum does not match the one recorded for this file; the "
                              "partial file was removed and nothing kept under its name", url,
                              hint="run again to fetch it anew; if it fails again the source changed")
    part.replace(dest)
    return dest


@dataclass(frozen=True)
class SourceFile:
    """One file of a pinned source: its path in the repository, where it goes, and how it is checked."""

    repo_path: str
    local_path: str
    checksum: str
    size: int | None
    max_bytes: int | None = None


def _fetch_all(files: list[SourceFile], base_url: str, root: Path, label: str, allow_http: bool) -> None:
    known = sum(f.size or 0 for f in files)
    unknown = sum(f.size is None for f in files)
    _say(f"{label}: {len(files)} files ({known / 1e6:.1f} MB" + (f" + {unknown} images of a few MB each"
                                                                 if unknown else "") + f") from {base_url} -> {root}")
    for f in files:
        rel = safe_relpath(f.local_path, base_url, allow_dirs=True)
        url = f"{base_url}/{urllib.parse.quote(f.repo_path)}"
        download_file(url, root / rel, f.checksum, f.size, max_bytes=f.max_bytes, allow_http=allow_http)


def _base(base_url: str | None, default: str, allow_http: bool) -> str:
    return check_url((base_url or default).rstrip("/"), allow_http, what="--base-url")


# ------------------------------------------------------------------ her2st (GitHub almaan/her2st, pinned)
def her2st_files(sections: list[str] | None = None, images_for: list[str] | None = None) -> list[SourceFile]:
    """The pinned tree's files the reader and the demo use, for ``sections`` (all when None); images only for
    ``images_for`` when given. Files shared by all sections (cluster names, the label README) always come."""
    import csv

    with open(HER2ST_FILES_TSV, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    all_sections = sorted({_section_of(r["path"]) for r in rows} - {None})
    want = set(sections) if sections else None
    if want and want - set(all_sections):
        raise StampInputError(f"her2st has no section {', '.join(sorted(want - set(all_sections)))}",
                              HER2ST_FILES_TSV.name, hint=f"sections: {', '.join(all_sections)}")
    out = []
    for r in rows:
        path, sec = r["path"], _section_of(r["path"])
        if sec is not None and want is not None and sec not in want:
            continue
        if images_for is not None and path.startswith("data/ST-imgs/") and sec not in images_for:
            continue
        prefix = next(p for p in HER2ST_LAYOUT if path.startswith(p))
        size = int(r["size_bytes"]) if r["size_bytes"] else None
        out.append(SourceFile(path, HER2ST_LAYOUT[prefix] + path[len(prefix):], "git-sha1:" + r["git_blob_sha1"],
                              size, None if size is not None else HER2ST_IMAGE_MAX_BYTES))
    return out


def _section_of(path: str) -> str | None:
    name = PurePosixPath(path).name
    if path.startswith("data/ST-imgs/"):
        return PurePosixPath(path).parts[-2]
    m = re.match(r"^([A-Z]\d+)(\.tsv\.gz|_selection\.tsv|-cluster-annotation\.tsv\.gz|_labeled_coordinates\.tsv)$",
                 name)
    return m.group(1) if m else None


def download_her2st(dest: Path | None = None, sections: list[str] | None = None, base_url: str | None = None,
                    allow_http: bool = False, images_for: list[str] | None = None) -> Path:
    """her2st into ``dest/her2st`` in the reader's layout, from almaan/her2st at the pinned commit (or a copy of
    its files at ``base_url``), every file checked against its git blob id."""
    root = Path(dest or cache_dir()) / "her2st"
    base = _base(base_url, HER2ST_BASE_URL, allow_http)
    _fetch_all(her2st_files(sections, images_for), base, root, f"her2st ({HER2ST_REPO}@{HER2ST_COMMIT[:7]})",
               allow_http)
    _say(f"her2st: {root}")
    return root


# ------------------------------------------------------------------ STAMP gene vocabulary (raw release files)
def download_stamp_vocab_files(dest: Path | None = None, base_url: str | None = None,
                               allow_http: bool = False) -> dict[str, Path]:
    """The three release files into ``dest/vocab/stamp_release/`` (checked against their git blob ids):
    {'model.h5ad': path, 'Visium_mean.npy': path, 'gene_name_id_dict.pkl': path}."""
    root = Path(dest or cache_dir()) / "vocab" / "stamp_release"
    base = _base(base_url, STAMP_BASE_URL, allow_http)
    files = [SourceFile(p, PurePosixPath(p).name, "git-sha1:" + sha, size)
             for p, (sha, size) in STAMP_VOCAB_FILES.items()]
    _fetch_all(files, base, root, f"STAMP vocabulary ({STAMP_REPO}@{STAMP_COMMIT[:7]})", allow_http)
    return {f.local_path: root / f.local_path for f in files}


# ------------------------------------------------------------------ HEST-1k (Hugging Face dataset)
def hest_ids(filters: dict[str, str], metadata_csv: Path) -> list[str]:
    """Sample ids of HEST's metadata table whose columns equal the given values (case-insensitive)."""
    import pandas as pd

    try:
        meta = pd.read_csv(metadata_csv)
    except Exception as err:  # noqa: BLE001 - any parse failure is the source's file
        raise StampInputError(f"cannot parse the HEST metadata table ({err})", metadata_csv) from err
    if "id" not in meta.columns:
        raise StampInputError("the HEST metadata table has no 'id' column", metadata_csv)
    for col, value in filters.items():
        if col not in meta.columns:
            raise StampInputError(f"HEST metadata has no column '{col}'", metadata_csv,
                                  hint=f"columns: {', '.join(map(str, meta.columns[:40]))}")
        meta = meta[meta[col].astype(str).str.lower() == str(value).lower()]
    return meta["id"].astype(str).tolist()


def hest_metadata_name(repo_files: list[str]) -> str:
    """The newest release's metadata table among the dataset's root files (HEST_v<major>_<minor>_<patch>.csv)."""
    found = [(tuple(int(x) for x in m.groups()), f) for f in repo_files if (m := HEST_METADATA_RE.match(str(f)))]
    if not found:
        raise StampInputError("the HEST dataset lists no metadata table (HEST_v*_*_*.csv at its root)",
                              f"https://huggingface.co/datasets/{HEST_REPO}",
                              hint="give sample ids with --ids instead of --filter")
    return max(found)[1]


def _hub(call, what: str):
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return call()
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise StampInputError(
            f"{what}: {type(err).__name__}: {err}", f"https://huggingface.co/datasets/{HEST_REPO}",
            hint="HEST-1k is gated: accept its terms on that page and log in (`hf auth login` or HF_TOKEN); "
                 "where the network is unreachable, copy the files into the cache folder by hand") from err


def download_hest(ids: list[str] | None = None, filters: dict[str, str] | None = None,
                  folders: tuple[str, ...] = HEST_FOLDERS, dest: Path | None = None) -> tuple[Path, list[str]]:
    """HEST-1k samples into ``dest/hest`` (a HEST root stamp-st reads with ``--section ID``): only the
    ``folders`` of the ids given or selected by ``filters`` on the newest metadata table. Returns (root, ids)."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    root = Path(dest or cache_dir()) / "hest"
    where = f"https://huggingface.co/datasets/{HEST_REPO}"
    for folder in folders:
        safe_relpath(folder, "--folders")
    ids = list(ids or [])
    got: list[str] = []
    if filters:
        listing = _hub(lambda: HfApi().list_repo_files(HEST_REPO, repo_type="dataset"), "HEST file list")
        name = str(safe_relpath(hest_metadata_name(list(listing)), where))
        _say(f"hest: metadata table {name}")
        csv = _hub(lambda: hf_hub_download(HEST_REPO, name, repo_type="dataset", local_dir=root),
                   "HEST metadata table")
        got.append(name)
        ids += [i for i in hest_ids(filters, Path(csv)) if i not in ids]
    if not ids:
        raise StampInputError("no HEST sample selected", None, hint="give --ids ID ... or --filter COLUMN=VALUE")
    for i in ids:
        if not PLAIN_NAME_RE.match(i) or ".." in i:
            raise StampInputError(f"HEST sample id {i!r} is not a plain name", where)
    patterns = [f"{folder}/{i}[._]*" for i in ids for folder in folders]
    _say(f"hest: {len(ids)} samples ({', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}), "
         f"{', '.join(folders)} -> {root}")
    _hub(lambda: snapshot_download(HEST_REPO, repo_type="dataset", local_dir=root, allow_patterns=patterns),
         "HEST download")
    got += [p.relative_to(root).as_posix() for folder in folders if (root / folder).is_dir()
            for p in (root / folder).iterdir() if any(fnmatch.fnmatch(p.relative_to(root).as_posix(), pat)
                                                      for pat in patterns)]
    infos = _hub(lambda: HfApi().get_paths_info(HEST_REPO, got, repo_type="dataset"), "HEST checksums") if got else []
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if lfs is not None and _digest(root / info.path, "sha256") != lfs.sha256:
            raise StampInputError(f"{info.path}: SHA-256 differs from the hub's", root / info.path,
                                  hint="delete the file and run the download again")
    return root, ids
