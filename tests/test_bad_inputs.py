"""Hostile-but-plausible input (issue 12): lose no data, run no code, never answer a mistake with a traceback
or a wrong result. The table at the end runs each bad input through the CLI and checks the exit code, a
fragment of the message, that no traceback is printed and that no partial output is left behind."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stamp_st.cli import main
from stamp_st.errors import StampInputError


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------ 1. no data loss in checkpoint folders
def _tiny_release_file(tmp_path: Path) -> tuple[Path, object]:
    from test_released import _as_release_file, _tiny_released

    src = _tiny_released(seed=1).eval()
    path = tmp_path / "pytorch_model.bin"
    torch.save(_as_release_file(src), path)
    return path, _tiny_released


def test_convert_released_in_place_keeps_the_downloaded_weights(tmp_path, capsys):
    w = tmp_path / "W"
    w.mkdir()
    (w / "pytorch_model.bin").write_bytes(b"the user's only copy")
    (w / "README.md").write_text("gated weights")
    for extra in ([], ["--overwrite"]):
        assert main(["convert-released", str(w / "pytorch_model.bin"), str(w), *extra]) == 2
        err = capsys.readouterr().err
        assert "not a stamp-st checkpoint" in err and "Traceback" not in err
        assert (w / "pytorch_model.bin").read_bytes() == b"the user's only copy"
        assert sorted(p.name for p in w.iterdir()) == ["README.md", "pytorch_model.bin"]


def test_convert_released_replaces_its_own_checkpoint_only_with_overwrite(tmp_path):
    from stamp_st.models.released import convert_released

    path, tiny = _tiny_release_file(tmp_path)
    out = tmp_path / "conv"
    old_umask = os.umask(0o022)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert_released(path, out, model=tiny())
            with pytest.raises(StampInputError, match="--overwrite"):
                convert_released(path, out, model=tiny())
            convert_released(path, out, model=tiny(), overwrite=True)
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()} == {"config.json": 0o644, "model.safetensors": 0o644}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_checkpoint_refuses_a_file_and_a_foreign_folder(tmp_path):
    from stamp_st.models.checkpoint import save_checkpoint

    cfg = {"kind": "gene_encoder", "architecture": {}}
    (tmp_path / "f").write_text("x")
    with pytest.raises(StampInputError, match="not a folder"):
        save_checkpoint(tmp_path / "f", {"w": torch.zeros(1)}, cfg, overwrite=True)
    mine = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(1)}, cfg)
    (mine / "notes.txt").write_text("mine")  # a user file inside an old checkpoint: never deleted
    with pytest.raises(StampInputError, match="notes.txt"):
        save_checkpoint(mine, {"w": torch.ones(1)}, cfg, overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine"


def test_build_corpus_refuses_a_foreign_out_and_removes_only_its_own_temps(tmp_path):
    from stamp_st.corpus.build import check_corpus_out, clean_stray_temps

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("[]")  # the user's input manifest, not ours
    with pytest.raises(StampInputError, match="did not write"):
        check_corpus_out(out)
    (out / "manifest.json").unlink()
    (out / "notes.tmp").write_text("mine")
    (out / ".thesis.docx.abcd1234.tmp").write_text("mine")  # looks like a temp file, but not one of ours
    (out / ".s1-00000.tar.abcd1234.tmp").write_text("ours")
    assert clean_stray_temps(out) == 1
    assert sorted(p.name for p in out.iterdir()) == [".thesis.docx.abcd1234.tmp", "notes.tmp"]
    with pytest.raises(StampInputError, match="notes.tmp"):
        check_corpus_out(out)


# ------------------------------------------------------------------ 2-3. a corpus manifest is data
@pytest.fixture(scope="module")
def genes_corpus(tmp_path_factory):
    pytest.importorskip("distributed")
    from test_corpus import _config, _slide, _vocab

    from stamp_st.corpus.build import build_corpus

    tmp = tmp_path_factory.mktemp("genes")
    vocab = _vocab(tmp)
    row = _slide(tmp, "s1", 0, image=False)
    from stamp_st.corpus.manifest import entries_from_records

    build_corpus(entries_from_records([row]), tmp / "corpus", _config(vocab, "genes"), processes=False,
                 progress=False)
    return tmp / "corpus"


def _copy_corpus(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("url", ["pipe:touch {marker}", "/etc/passwd", "../outside.tar", "sub/../../x.tar",
                                 "https://example.org/x.tar", "..", "a/b.tar"])
def test_manifest_shard_names_stay_inside_the_corpus(genes_corpus, tmp_path, url):
    from stamp_st.corpus.datasets import GeneGroupDataset

    corpus = _copy_corpus(genes_corpus, tmp_path / "c")
    marker = tmp_path / "ran"
    man = json.loads((corpus / "manifest.json").read_text())
    man["shards"][0]["url"] = url.format(marker=marker)
    (corpus / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StampInputError, match="not a file inside the corpus folder"):
        ds = GeneGroupDataset(corpus, split=None)
        next(iter(ds))
    assert not marker.exists()


def test_shard_size_and_checksum_are_checked_and_the_shard_named(genes_corpus, tmp_path):
    from stamp_st.corpus.datasets import GeneGroupDataset, check_shards, load_corpus_manifest

    corpus = _copy_corpus(genes_corpus, tmp_path / "c")
    man, base = load_corpus_manifest(corpus)
    shard = corpus / man["shards"][0]["url"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, other content
    shard.write_bytes(bytes(data))
    check_shards(man, base)  # sizes only: passes
    with pytest.raises(StampInputError, match=f"{shard.name}.*sha256"):
        check_shards(man, base, sha256=True)
    shard.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(StampInputError, match=f"{shard.name}.*truncated"):
        GeneGroupDataset(corpus, split=None)
    shard.unlink()
    with pytest.raises(StampInputError, match="missing"):
        GeneGroupDataset(corpus, split=None)


def test_a_damaged_shard_read_anyway_names_the_shard(genes_corpus, tmp_path):
    from stamp_st.corpus.shards import iter_shard_raw

    corpus = _copy_corpus(genes_corpus, tmp_path / "c")
    shard = sorted(corpus.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])  # mid-member (tar blocks are 512 bytes)
    with pytest.raises(StampInputError, match=shard.name):
        list(iter_shard_raw(str(shard)))


# ------------------------------------------------------------------ 4. counts are validated by every reader
def _her2st_folder(root: Path, counts: np.ndarray, section: str = "Z1") -> Path:
    """A minimal her2st-layout folder: ST-cnts/<section>.tsv.gz and ST-spotfiles/<section>_selection.tsv."""
    import gzip

    (root / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (root / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
    n, g = counts.shape
    xs = [(2 + i % 5, 3 + i // 5) for i in range(n)]
    lines = ["\t" + "\t".join(f"GENE{j}" for j in range(g))]
    lines += [f"{x}x{y}\t" + "\t".join(repr(float(v)) if not float(v).is_integer() else str(int(v)) if np.isfinite(v)
                                        else str(v) for v in row) for (x, y), row in zip(xs, counts)]
    with gzip.open(root / "ST-cnts" / f"{section}.tsv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    spots = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
    spots += [f"{x}\t{y}\t{x}\t{y}\t{x * 200.0}\t{y * 200.0}\t1" for x, y in xs]
    (root / "ST-spotfiles" / f"{section}_selection.tsv").write_text("\n".join(spots) + "\n")
    return root


def _raw_counts(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, size=(20, 12)).astype(np.float64)


@pytest.mark.parametrize("name,transform", [
    ("log1p", np.log1p), ("scaled", lambda x: x / 7.0), ("negative", lambda x: x - 1.0),
    ("nan", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)),
    ("inf", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)),
])
def test_her2st_reader_refuses_what_is_not_raw_counts(tmp_path, name, transform):
    from stamp_st.readers import read_sample

    ok = _her2st_folder(tmp_path / "ok", _raw_counts())
    assert read_sample(ok, format="her2st", section="Z1").n_obs == 20
    bad = _her2st_folder(tmp_path / "bad", transform(_raw_counts()))
    with pytest.raises(StampInputError, match="not raw integer counts") as err:
        read_sample(bad, format="her2st", section="Z1")
    assert "Z1.tsv.gz" in str(err.value)


def test_h5ad_and_her2st_share_one_counts_check():
    from stamp_st.readers.common import counts_problem

    assert counts_problem(_raw_counts()) is None
    assert "non-integer" in counts_problem(np.log1p(_raw_counts()))
    assert "negative" in counts_problem(np.array([[1, -2]], np.int32))
    assert "NaN" in counts_problem(np.array([[1.0, np.nan]]))
