"""`stamp-st download` and the demo's first run against a local HTTP server (127.0.0.1, Range support) whose
files are laid out exactly as the real sources: almaan/her2st's tree at the pinned commit (``data/ST-cnts/``,
``data/ST-imgs/<patient>/<section>/``, ``res/ST-cluster/``, ...; served from the shared her2st files, which are
byte-identical to that tree's blobs, so they pass under the real recorded checksums) and Hanminghao/STAMP's
``src/`` vocabulary files. Hostile sources (paths out of the destination, file:// links, endless bodies, a
changed byte, HTML for a table) are refused. HEST selection runs with huggingface_hub replaced by a local
stand-in. Nothing touches the internet."""

from __future__ import annotations

import csv
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from stamp_st import download as dl
from stamp_st.cli import main
from stamp_st.errors import StampInputError

SECTIONS = ("B4", "C2")  # two sections with H&E, cluster labels and spot files in the shared copy


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    endless: set[str] = set()

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if self.path in self.endless:  # a body that never ends, without a Content-Length
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"x" * 65536)
            except OSError:
                return
        if self.path not in self.files:
            return self._send(404, b"<html>Not Found</html>")
        data = self.files[self.path]
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        return self._send(200, data)

    def _send(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pinned_rows() -> list[dict]:
    with open(dl.HER2ST_FILES_TSV, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _shared_path(her2st_root: Path, repo_path: str) -> Path:
    prefix = next(p for p in dl.HER2ST_LAYOUT if repo_path.startswith(p))
    return her2st_root / (dl.HER2ST_LAYOUT[prefix] + repo_path[len(prefix):])


def _stamp_src_files(vocab_dir: Path) -> dict[str, bytes]:
    """STAMP's three src/ files in their real formats (h5ad, npy, pickle protocol 4 of a plain dict), rebuilt
    from the shared vocabulary tables: the release files themselves are not available to CI."""
    import io

    import anndata as ad
    import pandas as pd

    v = pd.read_csv(vocab_dir / "stamp_gene_vocab.tsv", sep="\t", dtype=str, keep_default_na=False)
    s = pd.read_csv(vocab_dir / "stamp_symbol_to_ensembl.tsv", sep="\t", dtype=str, keep_default_na=False)
    a = ad.AnnData(np.zeros((1, len(v)), np.float32), obs=pd.DataFrame(index=["1_organism0"]),
                   var=pd.DataFrame(index=list(v["gene_id"])))
    npy = io.BytesIO()
    np.save(npy, np.array([float(x) for x in v["mean_nonzero_expression"]], np.float64), allow_pickle=False)
    table = dict(sorted(zip(s["symbol"], s["gene_id"]), key=lambda kv: (kv[1], kv[0])))  # not the tsv's order
    return {"adata": a, "src/Visium_mean.npy": npy.getvalue(),
            "src/gene_name_id_dict.pkl": pickle.dumps(table, protocol=4)}


@pytest.fixture
def server(her2st_root, data_root, tmp_path_factory, monkeypatch):
    """her2st's pinned tree (the rows for SECTIONS and the shared files) under /her2st/, STAMP's src/ under
    /stamp/; the pinned checksums of the three STAMP files are replaced by those of the rebuilt copies."""
    files = {}
    rows = [r for r in _pinned_rows() if dl._section_of(r["path"]) in (*SECTIONS, None)]
    for r in rows:
        p = _shared_path(her2st_root, r["path"])
        if not p.is_file():
            pytest.skip(f"shared her2st file absent: {p}")
        files["/her2st/" + r["path"]] = p.read_bytes()
    vocab_dir = data_root / "vocab"
    if not (vocab_dir / "stamp_symbol_to_ensembl.tsv").is_file():
        pytest.skip(f"released vocabulary tables absent under {vocab_dir}")
    built = _stamp_src_files(vocab_dir)
    work = tmp_path_factory.mktemp("server")
    h5 = work / "model.h5ad"
    built.pop("adata").write_h5ad(h5)
    built["src/model.h5ad"] = h5.read_bytes()
    h5.unlink()
    files.update({"/stamp/" + k: v for k, v in built.items()})
    monkeypatch.setattr(dl, "STAMP_VOCAB_FILES", {k: (_blob_id(v), len(v)) for k, v in built.items()})
    # the pinned her2st table restricted to the served sections (its rows unchanged)
    trimmed = work / "her2st_pinned.tsv"
    with open(trimmed, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "git_blob_sha1", "size_bytes"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    monkeypatch.setattr(dl, "HER2ST_FILES_TSV", trimmed)
    _Handler.files, _Handler.requests, _Handler.endless = files, [], set()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join()


# ------------------------------------------------------------------ the pinned sources
def test_pinned_her2st_table_covers_what_the_reader_and_demo_read():
    rows = _pinned_rows()
    paths = {r["path"] for r in rows}
    for sec in ("A1", "B4", "C2", "C3", "C4", "H3"):
        assert f"data/ST-cnts/{sec}.tsv.gz" in paths and f"data/ST-spotfiles/{sec}_selection.tsv" in paths
        assert f"res/ST-cluster/lbl/{sec}-cluster-annotation.tsv.gz" in paths
    assert "res/ST-cluster/motivation.csv" in paths and "data/ST-pat/lbl/B1_labeled_coordinates.tsv" in paths
    assert "data/ST-imgs/B/B4/BT10737_D2_HE.jpg" in paths
    assert all(len(r["git_blob_sha1"]) == 40 for r in rows)
    unsized = [r["path"] for r in rows if not r["size_bytes"]]
    assert all(p.startswith("data/ST-imgs/") for p in unsized)  # only images lack a recorded size (capped)
    for f in dl.her2st_files():
        dl.safe_relpath(f.local_path, "test", allow_dirs=True)


def test_shared_her2st_files_are_the_pinned_blobs(her2st_root):
    """Why the tests may serve the shared copy under the real checksums."""
    checked = 0
    for r in _pinned_rows():
        p = _shared_path(her2st_root, r["path"])
        if p.is_file():
            assert _blob_id(p.read_bytes()) == r["git_blob_sha1"], p
            checked += 1
    assert checked > 100


# ------------------------------------------------------------------ her2st, then inspect
def test_her2st_sections_download_and_inspect_reads_them(server, tmp_path, capsys):
    import json

    rc = main(["download", "her2st", "--sections", *SECTIONS, "--dest", str(tmp_path), "--base-url",
               server + "/her2st", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    root = Path(out["path"])
    assert root == tmp_path / "her2st"
    assert (root / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg").is_file()
    assert (root / "ST-cluster" / "motivation.csv").is_file()
    assert (root / "ST-cluster" / "lbl" / "C2-cluster-annotation.tsv.gz").is_file()
    assert not list(root.rglob("*.part"))
    assert main(["inspect", str(root), "--format", "her2st", "--section", "B4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_spots"] > 100 and info["n_genes"] > 10_000
    # a second run fetches nothing (every file is there and verified)
    n = len(_Handler.requests)
    assert main(["download", "her2st", "--sections", "B4", "--dest", str(tmp_path), "--base-url",
                 server + "/her2st"]) == 0
    assert len(_Handler.requests) == n


def test_one_changed_byte_fails_naming_the_file_and_keeps_nothing(server, tmp_path):
    key = "/her2st/data/ST-cnts/B4.tsv.gz"
    data = bytearray(_Handler.files[key])
    data[1000] ^= 0x01
    _Handler.files[key] = bytes(data)
    with pytest.raises(StampInputError, match="B4.tsv.gz") as err:
        dl.download_her2st(tmp_path, ["B4"], server + "/her2st")
    assert "checksum" in str(err.value)
    final = tmp_path / "her2st" / "ST-cnts" / "B4.tsv.gz"
    assert not final.exists() and not final.with_name("B4.tsv.gz.part").exists()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    f = next(f for f in dl.her2st_files(["B4"]) if f.local_path == "ST-cnts/B4.tsv.gz")
    data = _Handler.files["/her2st/" + f.repo_path]
    dest = tmp_path / "B4.tsv.gz"
    (tmp_path / "B4.tsv.gz.part").write_bytes(data[:100_000])  # what arrived before the interruption
    dl.download_file(f"{server}/her2st/{f.repo_path}", dest, f.checksum, f.size)
    assert dest.read_bytes() == data and not (tmp_path / "B4.tsv.gz.part").exists()
    assert _Handler.requests[-1][1] == "bytes=100000-"


# ------------------------------------------------------------------ the vocabulary
def test_vocab_download_equals_the_released_tables(server, data_root, tmp_path, capsys):
    """The three STAMP files are rebuilt here from the shared tables in their real formats (the release files
    are not available to CI; only their pinned checksums are monkeypatched to the rebuilt copies). The
    vocabulary built from them must equal the shared one byte for byte; checked by hand against the real
    pinned files too (same bytes)."""
    rc = main(["download", "vocab", "--dest", str(tmp_path), "--base-url", server + "/stamp"])
    assert rc == 0
    for name in ("stamp_gene_vocab.tsv", "stamp_symbol_to_ensembl.tsv"):
        assert (tmp_path / "vocab" / name).read_bytes() == (data_root / "vocab" / name).read_bytes(), name


def test_the_symbol_pickle_is_read_as_plain_data_only(tmp_path):
    import collections

    from stamp_st.io_utils import PlainDataUnpickler

    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"TP53": "ENSG00000141510", "x": ["a", 1, None]}))
    assert PlainDataUnpickler.load(ok)["TP53"] == "ENSG00000141510"
    for obj in (collections.OrderedDict(a="b"), Path("/etc/passwd")):
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps(obj))
        with pytest.raises(StampInputError, match="only plain data"):
            PlainDataUnpickler.load(bad)


# ------------------------------------------------------------------ the demo's first run
def test_demo_without_data_fetches_both_then_uses_the_cache(server, tmp_path, monkeypatch, capsys):
    import stamp_st.demo
    from stamp_st.cli.demo_cmd import ensure_her2st

    monkeypatch.setattr(stamp_st.demo, "DEMO_SECTIONS", SECTIONS)  # the served part of the pinned tree
    monkeypatch.setattr(stamp_st.demo, "IMAGED_SECTIONS", SECTIONS)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("STAMP_ST_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("STAMP_ST_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(dl.HER2ST_URL_ENV, "http://127.0.0.1:9")  # unreachable
    with pytest.raises(StampInputError) as err:
        ensure_her2st()
    assert f"stamp-st download her2st --dest {tmp_path / 'cache'}" in str(err.value)
    monkeypatch.setenv("STAMP_ST_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv(dl.HER2ST_URL_ENV, server + "/her2st")
    monkeypatch.setenv(dl.VOCAB_URL_ENV, server + "/stamp")
    ensure_her2st()
    said = capsys.readouterr().err
    assert server + "/her2st" in said and server + "/stamp" in said and " MB" in said
    cache = tmp_path / "cache"
    assert (cache / "her2st" / "ST-cnts" / "B4.tsv.gz").is_file()
    assert (cache / "vocab" / "stamp_gene_vocab.tsv").is_file()
    fetched_counts = {p for p, _ in _Handler.requests if "/ST-cnts/" in p}
    assert fetched_counts == {f"/her2st/data/ST-cnts/{s}.tsv.gz" for s in SECTIONS}  # the demo's sections only
    import os

    assert os.environ["STAMP_ST_DATA"] == str(cache)
    from stamp_st.demo import her2st_root

    assert her2st_root() == cache.resolve() / "her2st"
    # a second run (the cache is now the data directory) fetches nothing
    n = len(_Handler.requests)
    monkeypatch.delenv("STAMP_ST_DATA")
    monkeypatch.setenv("STAMP_ST_DATA", str(cache))
    ensure_her2st()
    assert len(_Handler.requests) == n


# ------------------------------------------------------------------ hostile sources
@pytest.mark.parametrize("name", ["../../../x", "/etc/passwd", "a/../../b", "..", "", "C:\\x", "a\\..\\b", "~/x"])
def test_names_that_leave_the_destination_are_refused(name):
    with pytest.raises(StampInputError, match="not a plain name"):
        dl.safe_relpath(name, "http://mirror/record", allow_dirs=True)


def test_a_folder_in_a_listed_name_needs_the_pinned_layout():
    assert str(dl.safe_relpath("ST-cnts/B4.tsv.gz", "x", allow_dirs=True)) == "ST-cnts/B4.tsv.gz"
    with pytest.raises(StampInputError, match="not a plain name"):
        dl.safe_relpath("ST-cnts/B4.tsv.gz", "x")


@pytest.mark.parametrize("url,fragment", [
    ("file:///etc/passwd", "not an http(s) URL"),
    ("ftp://127.0.0.1/x", "not an http(s) URL"),
    ("not a url", "not an http(s) URL"),
    ("http://[::1", "not a URL"),
    ("http://example.org/her2st", "plain http"),
])
def test_bad_base_urls_are_refused_naming_them(tmp_path, url, fragment):
    with pytest.raises(StampInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as err:
        dl.download_her2st(tmp_path, ["B4"], url)
    assert url in str(err.value)
    assert not (tmp_path / "her2st").exists() or not list((tmp_path / "her2st").rglob("*"))


def test_plain_http_elsewhere_needs_the_explicit_flag():
    assert dl.check_url("http://mirror.example/x", allow_http=True)
    assert dl.check_url("http://127.0.0.1:8000/x") and dl.check_url("http://localhost/x")
    assert dl.check_url("https://raw.githubusercontent.com/x")


def test_endless_body_stops_at_the_declared_size(server, tmp_path):
    _Handler.endless.add("/endless")
    with pytest.raises(StampInputError, match="more than") as err:
        dl.download_file(server + "/endless", tmp_path / "f.bin", size=200_000)
    assert server + "/endless" in str(err.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(StampInputError, match="more than"):  # unknown size: the cap of the source holds
        dl.download_file(server + "/endless", tmp_path / "g.bin", checksum="sha256:" + "0" * 64,
                         max_bytes=300_000)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kw,fragment", [
    ({}, "neither a size nor a checksum"),
    ({"size": "100"}, "not a byte count"),
    ({"size": -1}, "not a byte count"),
    ({"checksum": "crc32:abcd", "size": 10}, "unknown checksum"),
    ({"checksum": "sha256:not-hex", "size": 10}, "unknown checksum"),
    ({"checksum": "sha256:" + "0" * 64}, "size is unknown"),
])
def test_records_without_a_usable_size_or_checksum_are_refused(server, tmp_path, kw, fragment):
    with pytest.raises(StampInputError, match=fragment) as err:
        dl.download_file(server + "/her2st/res/ST-cluster/motivation.csv", tmp_path / "m.csv", **kw)
    assert server in str(err.value)
    assert not list(tmp_path.iterdir())


def test_an_html_error_page_for_a_file_is_refused(server, tmp_path):
    f = next(f for f in dl.her2st_files(["B4"]) if f.local_path == "ST-cluster/motivation.csv")
    _Handler.files["/her2st/" + f.repo_path] = b"<html><body>rate limited</body></html>"
    with pytest.raises(StampInputError, match="motivation.csv") as err:
        dl.download_her2st(tmp_path, ["B4"], server + "/her2st")
    assert "checksum" in str(err.value) or "of" in str(err.value)
    assert not (tmp_path / "her2st" / "ST-cluster" / "motivation.csv").exists()


def test_a_server_announcing_more_than_the_size_is_refused_before_writing(server, tmp_path):
    _Handler.files["/big"] = b"y" * 5000
    with pytest.raises(StampInputError, match="announces 5,000 bytes"):
        dl.download_file(server + "/big", tmp_path / "b", size=100)
    assert not list(tmp_path.iterdir())


def test_unknown_sections_are_named():
    with pytest.raises(StampInputError, match="no section Z9"):
        dl.her2st_files(["Z9"])


# ------------------------------------------------------------------ HEST
def _fake_hub(monkeypatch, calls, csv_text: str, listing: list[str]):
    import huggingface_hub

    def fake_hf_hub_download(repo, filename, repo_type=None, local_dir=None):
        calls["metadata"] = filename
        p = Path(local_dir) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(csv_text)
        return str(p)

    def fake_snapshot_download(repo, repo_type=None, local_dir=None, allow_patterns=None):
        calls["patterns"] = allow_patterns
        for rel in ("st/TENX95.h5ad", "metadata/TENX95.json", "st/NCBI1.h5ad"):
            (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / rel).write_text("x")
        return local_dir

    class FakeApi:
        def list_repo_files(self, repo, repo_type=None):
            return listing

        def get_paths_info(self, repo, paths, repo_type=None):
            calls["checked"] = sorted(paths)
            return []

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)


LISTING = ["README.md", "HEST_v1_0_2.csv", "HEST_v1_1_0.csv", "HEST_v1_10_0.csv", "st/TENX95.h5ad",
           "metadata/TENX95.json", "old/HEST_v9_0_0.csv"]


def test_hest_filter_reads_the_newest_metadata_table_and_only_the_asked_folders(tmp_path, monkeypatch):
    calls = {}
    _fake_hub(monkeypatch, calls, "id,organ,st_technology\nTENX95,Breast,Visium\nNCBI1,Brain,Visium\n"
                                  "TENX99,breast,Xenium\n", LISTING)
    root, ids = dl.download_hest(filters={"organ": "breast", "st_technology": "visium"}, folders=("st", "metadata"),
                                 dest=tmp_path)
    assert calls["metadata"] == "HEST_v1_10_0.csv"  # the newest release at the root, not a hard-coded name
    assert ids == ["TENX95"] and root == tmp_path / "hest"
    assert calls["patterns"] == ["st/TENX95[._]*", "metadata/TENX95[._]*"]
    assert calls["checked"] == ["HEST_v1_10_0.csv", "metadata/TENX95.json", "st/TENX95.h5ad"]
    with pytest.raises(StampInputError, match="no column 'tissue'"):
        dl.download_hest(filters={"tissue": "x"}, dest=tmp_path)


@pytest.mark.parametrize("csv_text,listing,fragment", [
    ("<html><body>Access to this dataset is restricted</body></html>", LISTING, "no 'id' column"),
    ("id,organ\n../../evil,Breast\n", LISTING, "not a plain name"),
    ("id,organ\nTENX95,Breast\n", ["README.md"], "no metadata table"),
])
def test_hest_hostile_metadata_is_refused(tmp_path, monkeypatch, csv_text, listing, fragment):
    _fake_hub(monkeypatch, {}, csv_text, listing)
    with pytest.raises(StampInputError, match=fragment):
        dl.download_hest(filters={"organ": "breast"}, dest=tmp_path)
    assert not (tmp_path / "hest" / "st").exists()


def test_download_help_names_the_sources(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = capsys.readouterr().out
    assert "almaan/her2st" in text and "Hanminghao/STAMP" in text and "MahmoodLab/hest" in text
    assert "--sections" in text and "--allow-http" in text


def test_a_complete_part_of_unknown_size_is_verified_not_refetched_forever(server, tmp_path):
    f = next(f for f in dl.her2st_files(["B4"]) if f.local_path.startswith("ST-cnts/"))
    data = _Handler.files["/her2st/" + f.repo_path]
    (tmp_path / "x.part").write_bytes(data)  # the whole body arrived, then the process was killed

    # a size-less record (as the pinned images): the Range request past the end is answered 416
    import urllib.error
    import urllib.request

    def fake_urlopen(req, timeout=None):
        raise urllib.error.HTTPError(req.full_url, 416, "Range Not Satisfiable", {}, None)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", fake_urlopen)
        dl.download_file(f"{server}/her2st/{f.repo_path}", tmp_path / "x", f.checksum, max_bytes=1 << 26)
    assert (tmp_path / "x").read_bytes() == data
    with pytest.raises(StampInputError, match="HTTP 404"):
        dl.download_file(f"{server}/nothing-here", tmp_path / "y", size=10)
