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
    # with a real (tiny) release file, which the old code loaded and then deleted with the folder
    from stamp_st.models.released import convert_released

    path, tiny = _tiny_release_file(w)
    data = path.read_bytes()
    with pytest.raises(StampInputError, match="not a stamp-st checkpoint"):
        convert_released(path, w, model=tiny(), overwrite=True)
    assert path.read_bytes() == data and (w / "README.md").is_file()


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
    from stamp_st.corpus.layout import check_corpus_out, clean_stray_temps

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
    from synthetic_slides import small_build_config, synthetic_slide, synthetic_vocab

    from stamp_st.corpus.build import build_corpus

    tmp = tmp_path_factory.mktemp("genes")
    vocab = synthetic_vocab(tmp)
    row = synthetic_slide(tmp, "s1", 0, image=False)
    from stamp_st.corpus.samples import entries_from_records

    build_corpus(entries_from_records([row]), tmp / "corpus", small_build_config(vocab, "genes"), processes=False,
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
    from stamp_st.corpus.datasets import GeneGroupDataset
    from stamp_st.corpus.layout import check_shards, read_manifest

    corpus = _copy_corpus(genes_corpus, tmp_path / "c")
    man, base = read_manifest(corpus)
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


# ------------------------------------------------------------------ 11. the bad-input battery as a table
BUILD = ["--threads", "--workers", "1", "--no-progress", "--context", "32", "--min-counts", "10", "--min-genes", "3",
         "--shard-size", "20"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, genes_corpus):
    """Shared good inputs: a vocabulary, two synthetic h5ad slides (one all-zero), a genes corpus, a gene encoder
    checkpoint whose config.json disagrees with its weights."""
    import anndata as ad
    from synthetic_slides import synthetic_slide, synthetic_vocab

    from stamp_st.models.checkpoint import checkpoint_config, save_checkpoint
    from stamp_st.models.gene_encoder import GeneEncoder

    tmp = tmp_path_factory.mktemp("inputs")
    good = synthetic_slide(tmp, "good", 0)
    zero = synthetic_slide(tmp, "zero", 1, image=False)
    a = ad.read_h5ad(zero["path"])
    a.X = a.X * 0
    a.write_h5ad(zero["path"])
    enc = GeneEncoder("tiny")
    arch = {**enc.config.to_json(), "d_ff": enc.config.d_ff * 2}
    bad_ck = save_checkpoint(tmp / "bad_ck", enc.state_dict(), checkpoint_config("gene_encoder", arch))
    return {"tmp": tmp, "vocab": synthetic_vocab(tmp), "good": good, "zero": zero, "corpus": genes_corpus,
            "bad_ck": bad_ck}


def _tsv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _edit_manifest(corpus: Path, fn) -> Path:
    man = json.loads((corpus / "manifest.json").read_text())
    fn(man)
    (corpus / "manifest.json").write_text(json.dumps(man))
    return corpus


def _flip_byte(corpus: Path) -> Path:
    shard = sorted(corpus.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    return corpus


def _truncated_tiff(path: Path) -> Path:
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pretrain(corpus, out, *extra):
    return ["pretrain-genes", str(corpus), "--out", str(out), *extra]


# (id, make(ctx, tmp) -> (argv, paths that must not exist afterwards), exit code, message fragment)
CASES = [
    ("convert-in-place",
     lambda c, t: (["convert-released", str(_w(t) / "pytorch_model.bin"), str(_w(t))], []),
     2, "not a stamp-st checkpoint"),
    ("build-out-is-a-file",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [c["good"]])), str(_file(t / "out")), "--kind", "genes",
                    "--vocab", str(c["vocab"]), *BUILD], []),
     2, "not a folder"),
    ("build-out-holds-user-files",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [c["good"]])), str(_userdir(t / "out")), "--kind",
                    "genes", "--vocab", str(c["vocab"]), *BUILD], [t / "out" / "manifest.json"]),
     2, "did not write"),
    ("build-all-zero-sample",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [c["zero"]])), str(t / "out"), "--kind", "genes",
                    "--vocab", str(c["vocab"]), *BUILD], [t / "out" / "manifest.json"]),
     2, "corpus would be empty"),
    ("build-wrong-format-row",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [c["good"], {**c["good"], "slide_id": "wrongfmt",
                                                                       "format": "her2st"}])),
                    str(t / "out"), "--kind", "genes", "--vocab", str(c["vocab"]), *BUILD],
                   [t / "out" / "wrongfmt-00000.tar"]),
     1, "wrongfmt: read_error"),
    ("build-missing-section",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [{"path": str(_her2st_folder(t / "h", _raw_counts())),
                                                            "format": "her2st", "section": "Q9"}])),
                    str(t / "out"), "--kind", "genes", "--vocab", str(c["vocab"]), *BUILD],
                   [t / "out" / "manifest.json"]),
     2, "section 'Q9' does not exist"),
    ("build-truncated-tiff",
     lambda c, t: (["build-corpus", str(_tsv(t / "m.tsv", [{**c["good"], "image_path": str(_truncated_tiff(
                        t / "he.tif"))}])), str(t / "out"), "--kind", "paired", "--vocab", str(c["vocab"]),
                    "--patch-um", "20", "--out-px", "16", *BUILD],
                   [t / "out" / "manifest.json", t / "out" / "good-00000.tar"]),
     2, "truncated or damaged"),
    ("input-manifest-not-a-list",
     lambda c, t: (["build-corpus", str(_json(t / "m.json", 42)), str(t / "out"), "--kind", "genes", "--vocab",
                    str(c["vocab"]), *BUILD], [t / "out"]),
     2, "the samples table must list rows"),
    ("input-manifest-rows-not-objects",
     lambda c, t: (["build-corpus", str(_json(t / "m.json", ["a.h5ad"])), str(t / "out"), "--kind", "genes",
                    "--vocab", str(c["vocab"]), *BUILD], [t / "out"]),
     2, "row 0 is not an object"),
    ("evaluate-out-is-a-file",
     lambda c, t: (["evaluate", "--embeddings", "x.h5ad", "--out", str(_file(t / "eval"))], []),
     2, "evaluate writes a folder"),
    ("corpus-pipe-shard",
     lambda c, t: (_pretrain(_edit_manifest(_copy_corpus(c["corpus"], t / "c"), lambda m: m["shards"][0].update(
         url=f"pipe:touch {t / 'ran'}")), t / "run"), [t / "ran", t / "run"]),
     2, "not a file inside the corpus folder"),
    ("corpus-absolute-shard",
     lambda c, t: (_pretrain(_edit_manifest(_copy_corpus(c["corpus"], t / "c"), lambda m: m["shards"][0].update(
         url="/etc/passwd")), t / "run"), [t / "run"]),
     2, "not a file inside the corpus folder"),
    ("corpus-manifest-not-json",
     lambda c, t: (_pretrain(_garble(_copy_corpus(c["corpus"], t / "c") / "manifest.json").parent, t / "run"),
                   [t / "run"]),
     2, "not valid JSON"),
    ("corpus-manifest-wrong-types",
     lambda c, t: (_pretrain(_edit_manifest(_copy_corpus(c["corpus"], t / "c"), lambda m: m["shards"][0].update(
         n_samples="many")), t / "run"), [t / "run"]),
     2, "'n_samples' is missing or not a int"),
    ("corpus-shard-sha256",
     lambda c, t: (_pretrain(_flip_byte(_copy_corpus(c["corpus"], t / "c")), t / "run", "--vocab",
                             str(c["vocab"]), "--model", str(_micro_model(t))), [t / "run"]),
     2, "differs from its sha256"),
    ("set-wrong-type",
     lambda c, t: (_pretrain(c["corpus"], t / "run", "--set", "lr=abc"), [t / "run"]),
     2, "'lr' must be a number"),
    ("config-wrong-type",
     lambda c, t: (_pretrain(c["corpus"], t / "run", "--config", str(_json(t / "cfg.json", {"batch_size": "8"}))),
                   [t / "run"]),
     2, "'batch_size' must be an integer"),
    ("config-not-an-object",
     lambda c, t: (_pretrain(c["corpus"], t / "run", "--config", str(_json(t / "cfg.json", [1, 2]))), [t / "run"]),
     2, "must be a JSON object"),
    ("run-folder-holds-user-files",
     lambda c, t: (_pretrain(c["corpus"], _userdir(t / "run"), "--vocab", str(c["vocab"]), "--model",
                             str(_micro_model(t)), "--max-steps", "1"), [t / "run" / "checkpoints"]),
     2, "did not write (thesis.docx)"),
    ("checkpoint-shape-mismatch",
     lambda c, t: (["align", str(c["corpus"]), "--gene-encoder", str(c["bad_ck"]), "--out", str(t / "run")],
                   [t / "run"]),
     2, "do not fit the model"),
    ("embed-output-is-a-folder",
     lambda c, t: (["embed", "backbone:efficientnet_lite0", c["good"]["path"], "--out", str(_dir(t / "o.h5ad"))],
                   []),
     2, "the output is a folder"),
    ("embed-output-under-a-file",
     lambda c, t: (["embed", "backbone:efficientnet_lite0", c["good"]["path"], "--out",
                    str(_file(t / "f") / "o.h5ad")], [t / "f" / "o.h5ad"]),
     2, "is a file"),
]


def _w(t: Path) -> Path:
    w = t / "W"
    w.mkdir(exist_ok=True)
    (w / "pytorch_model.bin").write_bytes(b"weights")
    return w


def _file(p: Path) -> Path:
    p.write_text("user data")
    return p


def _dir(p: Path) -> Path:
    p.mkdir()
    return p


def _userdir(p: Path) -> Path:
    p.mkdir()
    (p / "thesis.docx").write_text("user data")
    return p


def _garble(p: Path) -> Path:
    p.write_text(p.read_text()[:-40])
    return p


def _json(p: Path, obj) -> Path:
    p.write_text(json.dumps(obj))
    return p


def _micro_model(t: Path) -> Path:
    from synthetic_slides import N_GENES

    return _json(t / "micro.json", {"name": "micro", "vocab_size": N_GENES + 10, "d_model": 16, "n_layers": 1,
                                    "n_heads": 2, "d_ff": 32, "context": 32})


@pytest.mark.parametrize("make,rc,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_battery(inputs, tmp_path, capsys, make, rc, fragment):
    argv, absent = make(inputs, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = main(argv)
    cap = capsys.readouterr()
    assert got == rc, cap.err[-2000:]
    assert fragment in cap.err, cap.err[-2000:]
    assert "Traceback" not in cap.err + cap.out
    for p in absent:
        assert not p.exists(), f"partial output left behind: {p}"
    for p, data in before.items():  # nothing the user had was changed or deleted
        assert p.is_file() and p.read_bytes() == data, f"input changed: {p}"


# ------------------------------------------------------------------ 10. ids that become paths
@pytest.mark.parametrize("section", ["../../evil", "/etc/passwd", "a/b", "..", ".hidden", "B1\x00"])
def test_section_ids_that_become_paths_are_plain(tmp_path, section):
    import gzip

    from stamp_st.readers import read_sample
    from stamp_st.readers.labels import her2st_cluster_labels

    root = _her2st_folder(tmp_path / "her2st", _raw_counts())
    with gzip.open(tmp_path / "evil-cluster-annotation.tsv.gz", "wt") as fh:  # planted outside the folder
        fh.write("x\ty\tlabel\n2\t3\t1\n")
    (root / "ST-cluster" / "lbl").mkdir(parents=True)
    with pytest.raises(StampInputError, match="not a plain id"):
        her2st_cluster_labels(root, section)
    with pytest.raises(StampInputError, match="not a plain id"):
        read_sample(root, format="her2st", section=section)
    hest = tmp_path / "hest"
    (hest / "st").mkdir(parents=True)
    (hest / "metadata").mkdir()
    with pytest.raises(StampInputError, match="not a plain id"):
        read_sample(hest, format="hest", section=section)


# ------------------------------------------------------------------ 5. no silent NaN embeddings
from test_embed import _sample, toy_checkpoint  # noqa: E402,F401 - the fixture is used below


def test_embed_flags_spots_without_vocabulary_genes(toy_checkpoint, tmp_path):  # noqa: F811
    from stamp_st.embedding_file import OBS_NO_VOCAB_GENES
    from stamp_st.inference.embed import embed_sample, load_embedder

    path, vocab = toy_checkpoint
    embedder = load_embedder(str(path), device="cpu")
    adata = _sample(tmp_path, vocab)  # its last spot has no count
    with pytest.warns(UserWarning, match="1 of 6 spots have no count in the model's vocabulary.*s5"):
        out = embed_sample(embedder, adata, batch_size=8)
    assert adata.obs[OBS_NO_VOCAB_GENES].tolist() == [False] * 5 + [True]
    assert np.isnan(out["X_stamp_g"][-1]).all()

    foreign = _sample(tmp_path, vocab)
    foreign.var["gene_ids"] = [f"ENSMUSG{i:011d}" for i in range(foreign.n_vars)]  # no gene of the vocabulary
    foreign.var_names = [f"Mouse{i}" for i in range(foreign.n_vars)]
    notes: list = []
    with pytest.warns(UserWarning, match="keeps almost nothing.*ENSMUSG.*only the image embedding"):
        out = embed_sample(embedder, foreign, batch_size=8, notes=notes)
    assert "X_stamp_g" not in out and "X_stamp_f" not in out and "X_stamp_v" in out
    assert len(notes) == 1 and "X_stamp_g and X_stamp_f are not written" in notes[0]  # for uns and the summary
    foreign.uns["stamp_st"]["image_path"] = ""
    with pytest.raises(StampInputError, match="keeps almost nothing.*mouse"):
        embed_sample(embedder, foreign, batch_size=8)


def test_evaluate_names_the_file_and_spots_with_nan_embeddings(tmp_path, capsys):
    from stamp_st.embedding_file import write_embedding_h5ad

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb[7] = np.nan
    slides = ["a"] * 20 + ["b"] * 20
    f = write_embedding_h5ad(tmp_path / "e.h5ad", {"X_stamp_g": emb}, slides, [f"s{i}" for i in range(40)])
    rc = main(["evaluate", "--embeddings", f"{f}:X_stamp_g", "--tasks", "cluster", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(f) in err and "a/s7" in err and "1 of 40 spots" in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 6. the recorded tokenizer covers the means
def test_a_corpus_tokenized_with_other_means_is_refused(genes_corpus):
    from stamp_st.corpus.layout import read_manifest
    from stamp_st.models.gene_encoder import GeneEncoderConfig
    from stamp_st.preprocessing.tokenizer import (
        RankTokenizer,
        check_same_divisors,
        recorded_divisors_checksum,
    )
    from stamp_st.preprocessing.vocab import GeneVocabulary
    from stamp_st.training.pretrain_genes import check_vocabulary

    built = GeneVocabulary.from_tsv(genes_corpus.parent / "vocab.tsv")
    other = GeneVocabulary(built.gene_ids, built.mean_nonzero * 3.0, built.symbols)  # same ids, other means
    assert other.checksum == built.checksum  # the id checksum alone cannot tell them apart
    man, _ = read_manifest(genes_corpus)
    enc = GeneEncoderConfig(name="m", vocab_size=len(built), d_model=16, n_layers=1, n_heads=2, d_ff=32, context=32)
    check_vocabulary(man, enc, built, genes_corpus)
    with pytest.raises(StampInputError, match="other gene means"):
        check_vocabulary(man, enc, other, genes_corpus)
    # align: a gene encoder whose checkpoint records the other means (old checkpoints: from its vocabulary)
    for tok, voc in ((RankTokenizer(other).config(), None), ({"rounded_means": True}, other.to_json())):
        with pytest.raises(StampInputError, match="other gene means"):
            check_same_divisors(man["tokenizer"]["divisors_checksum"], recorded_divisors_checksum(tok, voc),
                                genes_corpus, "the corpus", "the gene encoder's training corpus")


# ------------------------------------------------------------------ 9. the decoded-image cache is bounded
def test_decoded_image_cache_has_a_size_limit_and_evicts_lru(tmp_path, monkeypatch):
    from PIL import Image

    from stamp_st.readers.slide import cache_files, open_slide

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "notes.npy").write_bytes(b"not ours")  # never evicted: not a cache file name
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    one = 200 * 300 * 3 + 128
    monkeypatch.setenv("STAMP_ST_CACHE_GB", str(2.5 * one / 1e9))  # room for two decoded images
    for p in paths:
        with open_slide(p, cache=cache, max_in_memory_px=1000) as s:
            s.read_region(0, 0, 10, 10)
    files = cache_files(cache)
    assert len(files) == 2 and sum(f.stat().st_size for f in files) <= 2.5 * one
    assert (cache / "notes.npy").read_bytes() == b"not ours"
    monkeypatch.setenv("STAMP_ST_CACHE_GB", str(0.5 * one / 1e9))  # one image is over the limit: not cached
    with open_slide(paths[0], cache=cache, max_in_memory_px=1000) as s, \
            pytest.warns(UserWarning, match="over the cache limit"):
        region = s.read_region(0, 0, 300, 200)
    np.testing.assert_array_equal(region, np.asarray(Image.open(paths[0]).convert("RGB")))
    monkeypatch.setenv("STAMP_ST_CACHE_GB", "lots")
    with open_slide(paths[1], cache=tmp_path / "c2", max_in_memory_px=1000) as s, \
            pytest.raises(StampInputError, match="STAMP_ST_CACHE_GB"):
        s.read_region(0, 0, 10, 10)


# ------------------------------------------------------------------ 7. the CLI answers file-system errors
@pytest.mark.parametrize("err,fragment", [
    (PermissionError(13, "Permission denied", "/data/out.h5ad"), "check the permissions"),
    (IsADirectoryError(21, "Is a directory", "/data/out.h5ad"), "this is a folder"),
    (FileExistsError(17, "File exists", "/data/eval"), "remove it or choose another name"),
    (OSError(28, "No space left on device", "/data/out.h5ad"), "free disk space"),
])
def test_cli_reports_file_system_errors_without_a_traceback(monkeypatch, capsys, err, fragment):
    from stamp_st.cli import inspect_cmd

    def boom(args):
        raise err

    monkeypatch.setattr(inspect_cmd, "run", boom)
    assert main(["inspect", "x"]) == 2
    out = capsys.readouterr().err
    assert err.filename in out and fragment in out and "Traceback" not in out


# ------------------------------------------------------------------ first-run inputs (issue 21, 24)
def _mouse_visium(visium_dir: Path, out: Path) -> Path:
    """The real Space Ranger fixture as a mouse sample would look: symbols written 'Actb', ids ENSMUSG."""
    import shutil

    import h5py

    shutil.copytree(visium_dir, out)
    with h5py.File(out / "filtered_feature_bc_matrix.h5", "r+") as f:
        feats = f["matrix"]["features"]
        names = [n.decode() for n in feats["name"][:]]
        del feats["name"]
        feats.create_dataset("name", data=[(n[:1] + n[1:].lower()).encode() for n in names])
        ids = [i.decode() for i in feats["id"][:]]
        del feats["id"]
        feats.create_dataset("id", data=[i.replace("ENSG", "ENSMUSG").encode() for i in ids])
    return out


def test_a_mouse_sample_on_the_human_vocabulary_stops_naming_the_species(visium_dir, vocab, tmp_path, capsys):
    sample = _mouse_visium(visium_dir, tmp_path / "mouse")
    rc = main(["tokenize", str(sample), "--out", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "keeps almost nothing" in err and "mouse" in err and "Traceback" not in err
    assert not (tmp_path / "t.npz").exists()
    assert main(["inspect", str(sample)]) == 0  # inspect reports it
    assert "PROBLEM" in capsys.readouterr().out
    assert main(["tokenize", str(visium_dir), "--out", str(tmp_path / "h.npz")]) == 0  # the human original passes


def test_likely_cause_of_a_missed_vocabulary():
    from stamp_st.preprocessing.vocab import likely_namespace_problem

    assert "mouse" in likely_namespace_problem(["Actb", "Gapdh", "Malat1", "mt-Co1"])
    assert "ENSMUSG" in likely_namespace_problem(["a", "b"], ["ENSMUSG00000029580", "ENSMUSG00000057666"])
    assert "Entrez" in likely_namespace_problem(["7157", "60", "2597"])
    assert "another namespace" in likely_namespace_problem(["ACTB", "GAPDH"])


@pytest.mark.parametrize("extra,fragment", [
    (["--um-per-px", "500"], "off the"),  # a unit slip: refused
    (["--um-per-px", "4.7", "--confirm-um-per-px"], "too coarse"),  # confirmed, but a 24 px patch
])
def test_embed_refuses_a_wrong_or_coarse_pixel_size(her2st_root, tmp_path, capsys, extra, fragment):
    """her2st B4: the spot grid says 0.69 µm/px."""
    out = tmp_path / "e.h5ad"
    rc = main(["embed", "backbone:efficientnet_lite0", str(her2st_root), "--format", "her2st", "--section", "B4",
               "--out", str(out), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err, err[-2000:]
    assert not out.exists()


def test_pixel_size_estimates_that_disagree_warn_and_a_far_one_needs_confirmation():
    from stamp_st.readers.pixel_size import check_patch_resolution, resolve_um_per_px

    with pytest.raises(StampInputError, match="off the"):
        resolve_um_per_px(user=500, spot_pitch=0.69, confirmed=False)
    with pytest.raises(StampInputError, match="off the"):
        resolve_um_per_px(user=1e30, spot_diameter=0.69, confirmed=False)
    with pytest.warns(UserWarning, match="differ by 12 %"):  # a 1.12x downscaled image: said, not refused
        assert resolve_um_per_px(user=0.69 * 1.12, spot_pitch=0.69, confirmed=False)[1] == "user"
    with pytest.warns(UserWarning, match="spot_pitch .* spot_diameter"):  # 27 % apart (the CytAssist sample)
        resolve_um_per_px(spot_pitch=0.65, spot_diameter=0.65 * 1.27)
    assert resolve_um_per_px(user=500, spot_pitch=0.69, confirmed=True)[0] == 500
    with pytest.raises(StampInputError, match="too coarse"):
        check_patch_resolution(112, 4.7, allow=False)
    assert round(check_patch_resolution(112, 4.7, allow=True)) == 24
    assert check_patch_resolution(112, 0.5, allow=False) == 224
    assert check_patch_resolution(20, 1.0, out_px=16, allow=False) == 20  # tiny models: scaled to their input
