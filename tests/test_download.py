"""`stamp-st download` against a local HTTP server (a Zenodo-shaped record API with Range support): files
verified by MD5, an interrupted download resumed, a corrupted one refused; HEST selection by metadata filter
with huggingface_hub replaced by a local stand-in. Nothing touches the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from stamp_st.errors import StampInputError


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if self.path == "/api/records/3957257":
            base = f"http://127.0.0.1:{self.server.server_port}"
            body = json.dumps({"files": [
                {"key": k, "size": len(v), "checksum": "md5:" + hashlib.md5(v).hexdigest(),
                 "links": {"self": f"{base}/api/records/3957257/files/{k}/content"}}
                for k, v in self.files.items()]}).encode()
            return self._send(200, body)
        key = self.path.removeprefix("/api/records/3957257/files/").removesuffix("/content")
        if key not in self.files:
            return self._send(404, b"")
        data = self.files[key]
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            return self._send(206, data[start:])
        return self._send(200, data)

    def _send(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def zenodo():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ST-cnts/A1.tsv.gz", b"counts" * 1000)
        z.writestr("ST-spotfiles/A1_selection.tsv", b"x\ty\n1\t2\n")
    _Handler.files = {"ST-cnts.zip": buf.getvalue(), "README.txt": b"her2st " * 50_000}
    _Handler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_her2st_downloads_verifies_and_unpacks(zenodo, tmp_path, capsys):
    from stamp_st.cli import main

    rc = main(["download", "her2st", "--dest", str(tmp_path), "--base-url", zenodo, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    root = Path(out["path"])
    assert root == tmp_path / "her2st"
    assert (root / "ST-cnts" / "A1.tsv.gz").read_bytes() == b"counts" * 1000
    assert (root / "ST-spotfiles" / "A1_selection.tsv").is_file()
    assert (root / "_downloads" / "README.txt").read_bytes() == _Handler.files["README.txt"]
    # a second run downloads nothing again (the files are complete and verified)
    n = len(_Handler.requests)
    assert main(["download", "her2st", "--dest", str(tmp_path), "--base-url", zenodo]) == 0
    assert [p for p, _ in _Handler.requests[n:]] == ["/api/records/3957257"]


def test_interrupted_download_resumes_with_a_range_request(zenodo, tmp_path):
    from stamp_st.download import download_file, zenodo_files

    f = next(x for x in zenodo_files("3957257", zenodo) if x["key"] == "README.txt")
    dest = tmp_path / "README.txt"
    data = _Handler.files["README.txt"]
    (tmp_path / "README.txt.part").write_bytes(data[:100_000])  # what arrived before the interruption
    download_file(f["url"], dest, f["checksum"], f["size"])
    assert dest.read_bytes() == data and not (tmp_path / "README.txt.part").exists()
    assert _Handler.requests[-1][1] == "bytes=100000-"


def test_corrupted_download_is_refused(zenodo, tmp_path):
    from stamp_st.download import download_file, zenodo_files

    f = next(x for x in zenodo_files("3957257", zenodo) if x["key"] == "README.txt")
    (tmp_path / "README.txt.part").write_bytes(b"garbage" * 10)  # not a prefix of the real file
    with pytest.raises(StampInputError, match="checksum"):
        download_file(f["url"], tmp_path / "README.txt", f["checksum"], f["size"])
    assert not (tmp_path / "README.txt").exists() and not (tmp_path / "README.txt.part").exists()


def test_unreachable_zenodo_names_the_mirror_setting(tmp_path):
    from stamp_st.download import download_her2st

    with pytest.raises(StampInputError, match="STAMP_ST_ZENODO_URL"):
        download_her2st(tmp_path, base_url="http://127.0.0.1:9")


def test_hest_filter_selects_ids_and_only_the_asked_folders(tmp_path, monkeypatch):
    import huggingface_hub

    from stamp_st.download import download_hest

    calls = {}

    def fake_hf_hub_download(repo, filename, repo_type=None, local_dir=None):
        p = Path(local_dir) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("id,organ,st_technology\nTENX95,Breast,Visium\nNCBI1,Brain,Visium\nTENX99,breast,Xenium\n")
        return str(p)

    def fake_snapshot_download(repo, repo_type=None, local_dir=None, allow_patterns=None):
        calls["patterns"] = allow_patterns
        for rel in ("st/TENX95.h5ad", "metadata/TENX95.json", "st/NCBI1.h5ad"):
            (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / rel).write_text("x")
        return local_dir

    class FakeApi:
        def get_paths_info(self, repo, paths, repo_type=None):
            calls["checked"] = sorted(paths)
            return []

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    root, ids = download_hest(filters={"organ": "breast", "st_technology": "visium"}, folders=("st", "metadata"),
                              dest=tmp_path)
    assert ids == ["TENX95"] and root == tmp_path / "hest"
    assert calls["patterns"] == ["st/TENX95[._]*", "metadata/TENX95[._]*"]
    assert calls["checked"] == ["metadata/TENX95.json", "st/TENX95.h5ad"]
    with pytest.raises(StampInputError, match="no column 'tissue'"):
        download_hest(filters={"tissue": "x"}, dest=tmp_path)


def test_download_help_shows_both_sources(capsys):
    from stamp_st.cli import main

    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = capsys.readouterr().out
    assert "her2st" in text and "Zenodo record 3957257" in text and "HEST-1k" in text and "MahmoodLab/hest" in text


def test_demo_without_data_fetches_or_names_the_command(tmp_path, monkeypatch, zenodo):
    from stamp_st.cli.demo_cmd import ensure_her2st

    monkeypatch.setenv("STAMP_ST_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("STAMP_ST_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STAMP_ST_ZENODO_URL", "http://127.0.0.1:9")  # unreachable
    with pytest.raises(StampInputError) as err:
        ensure_her2st()
    assert f"stamp-st download her2st --dest {tmp_path / 'cache'}" in str(err.value)
    monkeypatch.setenv("STAMP_ST_ZENODO_URL", zenodo)  # reachable: fetched into the cache folder
    monkeypatch.setenv("STAMP_ST_DATA", str(tmp_path / "cache"))
    with pytest.raises(StampInputError, match="vocabulary"):  # the one file Zenodo does not have
        ensure_her2st()
    assert (tmp_path / "cache" / "her2st" / "ST-cnts" / "A1.tsv.gz").is_file()
