"""Hostile-but-plausible input, per command (issue 24): slips a user makes (swapped arguments, units, signs,
empty or damaged files, the wrong file type under a familiar name, devices and folders where files belong,
numbers that cannot be right). Each case runs the CLI in-process and checks: exit code 2, no traceback, a
message naming the option or file, and nothing harmful left (no checkpoint, no partial output, inputs intact)."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import _her2st_folder, _micro_model, _raw_counts, genes_corpus, inputs  # noqa: F401

from stamp_st.cli import main
from stamp_st.errors import StampInputError


# ------------------------------------------------------------------ makers of bad files
def _write(p: Path, data: bytes | str) -> Path:
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _json(p: Path, obj) -> Path:
    return _write(p, json.dumps(obj))


def _nested_json(p: Path, depth: int = 100_000) -> Path:
    return _write(p, "[" * depth + "]" * depth)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(p: Path, side: int = 100_000) -> Path:
    """A PNG header claiming side x side px with no pixel data (what a decompression bomb looks like)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return _write(p, b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))


def _truncated_png(p: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    return _write(p, data[: len(data) // 2])


def _truncated_jpeg(p: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(p, quality=90)
    data = p.read_bytes()
    return _write(p, data[: len(data) // 2])


def _truncated_tiff(p: Path) -> Path:
    from test_bad_inputs import _truncated_tiff as make

    return make(p)


def _tsv_of(c, t: Path) -> Path:
    from test_bad_inputs import _tsv

    return _tsv(t / "m.tsv", [c["good"]])


def _hdf5_named_jpg(p: Path) -> Path:
    import h5py

    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(4)
    return p


def _vocab_with(t: Path, vocab: Path, row: int, value: str) -> Path:
    lines = vocab.read_text().splitlines()
    cells = lines[row + 1].split("\t")
    cells[-1] = value
    lines[row + 1] = "\t".join(cells)
    return _write(t / "bad_vocab.tsv", "\n".join(lines) + "\n")


def _spot_table_edit(t: Path, fn) -> Path:
    root = _her2st_folder(t / "her2st", _raw_counts())
    p = root / "ST-spotfiles" / "Z1_selection.tsv"
    lines = p.read_text().splitlines()
    _write(p, "\n".join(fn(lines)) + "\n")
    return root


def _decimal_comma(lines):
    cells = lines[3].split("\t")
    cells[4] = "12,5"  # pixel_x written with a decimal comma
    return [*lines[:3], "\t".join(cells), *lines[4:]]


def _ragged(lines):
    return [*lines[:3], "\t".join(lines[3].split("\t")[:4]), *lines[4:]]  # a short row


def _checkpoint_config(t: Path, c, edit) -> Path:
    ck = t / "ck"
    shutil.copytree(c["bad_ck"], ck)
    cfg = json.loads((ck / "config.json").read_text())
    _json(ck / "config.json", edit(cfg))
    return ck


def _no_arch(cfg):
    cfg.pop("architecture")
    return cfg


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _damaged_member(corpus: Path) -> Path:
    """Every member's .npy header destroyed in place: same size, manifest intact (only sha256 would see it); every
    member, since a short run reads only the members its global batches pick."""
    for shard in sorted(corpus.glob("*.tar")):
        shard.write_bytes(shard.read_bytes().replace(b"\x93NUMPY", b"GARBAG"))
    return corpus


def _zero_dim_embedding(t: Path) -> Path:
    from stamp_st.embedding_file import write_embedding_h5ad

    return write_embedding_h5ad(t / "zero.h5ad", {"X_stamp_v": np.zeros((40, 0), np.float32)},
                                ["A1"] * 20 + ["B1"] * 20, [f"s{i}" for i in range(40)])


def _embedding(t: Path) -> Path:
    from stamp_st.embedding_file import write_embedding_h5ad

    emb = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    return write_embedding_h5ad(t / "e.h5ad", {"X_stamp_v": emb}, ["A1"] * 20 + ["B1"] * 20,
                                [f"s{i}" for i in range(40)])


def _huge_model(t: Path) -> Path:
    from synthetic_slides import N_GENES

    return _json(t / "huge.json", {"name": "huge", "vocab_size": N_GENES + 10, "d_model": 65_536, "n_layers": 1024,
                                   "n_heads": 16, "d_ff": 262_144, "context": 32})


def _resumed_with_empty_state(c, t: Path) -> list[str]:
    argv = ["pretrain-genes", str(c["corpus"]), "--out", str(t / "run"), "--vocab", str(c["vocab"]), "--model",
            str(_micro_model(t)), "--max-steps", "1", "--set", "tensorboard=false", "--set", "progress=false"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    (t / "run" / "checkpoints" / "step-0000001" / "trainer_state.pt").write_bytes(b"")
    return [*argv[:-5], "2", *argv[-4:]]


def _pre(c, t, *extra, model: bool = True):
    return ["pretrain-genes", str(c["corpus"]), "--out", str(t / "run"), "--vocab", str(c["vocab"]),
            *(["--model", str(_micro_model(t))] if model else []), *extra]


def _align(c, t, *extra, ck=None):
    return ["align", str(c["corpus"]), "--gene-encoder", str(ck or c["bad_ck"]), "--out", str(t / "run"), *extra]


def _build(c, t, *extra, manifest=None, out=None, kind="genes"):
    from test_bad_inputs import BUILD, _tsv

    m = manifest or _tsv(t / "m.tsv", [c["good"]])
    return ["build-corpus", str(m), str(out or t / "out"), "--kind", kind, "--vocab", str(c["vocab"]), *BUILD,
            *extra]


def _inspect(c, t, *extra, sample=None):
    return ["inspect", str(sample or c["good"]["path"]), "--vocab", str(c["vocab"]), *extra]


def _embed(c, t, *extra):
    return ["embed", "backbone:efficientnet_lite0", c["good"]["path"], "--out", str(t / "o.h5ad"), *extra]


# (id, make(ctx, tmp) -> (argv, paths that must not exist afterwards), message fragments)
CASES = [
    # ---- pretrain-genes: numbers that cannot be right, devices, damaged run state, model files
    ("pre-lr-inf", lambda c, t: (_pre(c, t, "--set", "lr=1e999"), [t / "run"]), ["'lr'", "not a finite"]),
    ("pre-lr-negative", lambda c, t: (_pre(c, t, "--set", "lr=-1"), [t / "run"]), ["'lr'", "out of range"]),
    ("pre-lr-nan", lambda c, t: (_pre(c, t, "--set", "lr=NaN"), [t / "run"]), ["'lr'", "not a finite"]),
    ("pre-seed-negative", lambda c, t: (_pre(c, t, "--set", "seed=-1"), [t / "run"]), ["'seed'", "--set"]),
    ("pre-betas", lambda c, t: (_pre(c, t, "--set", "betas=[0.9, 2]"), [t / "run"]), ["'betas'"]),
    ("pre-grad-accum-0", lambda c, t: (_pre(c, t, "--set", "grad_accum=0"), [t / "run"]), ["'grad_accum'"]),
    ("pre-batch-size-0", lambda c, t: (_pre(c, t, "--batch-size", "0"), [t / "run"]), ["--batch-size", ">= 1"]),
    ("pre-batch-size-text", lambda c, t: (_pre(c, t, "--batch-size", "eight"), [t / "run"]), ["--batch-size"]),
    ("pre-max-steps-0", lambda c, t: (_pre(c, t, "--max-steps", "0"), [t / "run"]), ["--max-steps"]),
    ("pre-epochs-negative", lambda c, t: (_pre(c, t, "--epochs", "-3"), [t / "run"]), ["--epochs"]),
    ("pre-device-tpu", lambda c, t: (_pre(c, t, "--device", "tpu9"), [t / "run"]), ["--device", "tpu9"]),
    ("pre-device-cuda-index", lambda c, t: (_pre(c, t, "--device", "cuda:99"), [t / "run"]), ["--device", "cuda"]),
    ("pre-config-mask-prob", lambda c, t: (_pre(c, t, "--config", str(_json(t / "cfg.json", {"mask_prob": 1.5}))),
                                           [t / "run"]), ["'mask_prob'", "cfg.json"]),
    ("pre-config-nested", lambda c, t: (_pre(c, t, "--config", str(_nested_json(t / "cfg.json"))), [t / "run"]),
     ["cfg.json", "nested too deeply"]),
    ("pre-config-is-a-folder", lambda c, t: (_pre(c, t, "--config", str(t)), [t / "run"]), ["a folder"]),
    ("pre-model-a-list", lambda c, t: (_pre(c, t, "--model", str(_json(t / "m.json", [1, 2])), model=False),
                                       [t / "run"]), ["m.json", "JSON object"]),
    ("pre-model-zero-layers", lambda c, t: (_pre(c, t, "--model", str(_json(t / "m.json", {"n_layers": 0})),
                                                 model=False), [t / "run"]), ["'n_layers'"]),
    ("pre-model-too-big", lambda c, t: (_pre(c, t, "--model", str(_huge_model(t)), model=False),
                                        [t / "run" / "checkpoints"]), ["GiB", "smaller model"]),
    ("pre-corpus-is-a-vocab", lambda c, t: (["pretrain-genes", str(c["vocab"]), "--out", str(t / "run")],
                                            [t / "run"]), ["vocab.tsv", "not a corpus"]),
    ("pre-damaged-member", lambda c, t: (["pretrain-genes", str(_damaged_member(_copy(c["corpus"], t / "c"))),
                                          "--out", str(t / "run"), "--vocab", str(c["vocab"]), "--model",
                                          str(_micro_model(t)), "--skip-sha256", "--max-steps", "2"],
                                         [t / "run" / "checkpoints"]), ["cannot be decoded", ".tar", "member"]),
    ("pre-empty-trainer-state", lambda c, t: (_resumed_with_empty_state(c, t),
                                              [t / "run" / "checkpoints" / "step-0000002"]),
     ["trainer_state.pt", "damaged"]),
    # ---- align
    ("align-lora-negative", lambda c, t: (_align(c, t, "--lora", "-1"), [t / "run"]), ["--lora"]),
    ("align-lr-zero", lambda c, t: (_align(c, t, "--lr", "0"), [t / "run"]), ["--lr"]),
    ("align-image-px-0", lambda c, t: (_align(c, t, "--image-px", "0"), [t / "run"]), ["--image-px"]),
    ("align-temperature-0", lambda c, t: (_align(c, t, "--temperature-init", "0"), [t / "run"]),
     ["--temperature-init"]),
    ("align-radius-inf", lambda c, t: (_align(c, t, "--neighbour-radius-um", "inf"), [t / "run"]),
     ["--neighbour-radius-um"]),
    ("align-workers-negative", lambda c, t: (_align(c, t, "--num-workers", "-1"), [t / "run"]), ["--num-workers"]),
    ("align-device-cuda7", lambda c, t: (_align(c, t, "--device", "cuda:7"), [t / "run"]), ["--device"]),
    ("align-set-ckpt-every", lambda c, t: (_align(c, t, "--set", "ckpt_every=-5"), [t / "run"]),
     ["'ckpt_every'", "--set"]),
    ("align-checkpoint-without-architecture",
     lambda c, t: (_align(c, t, ck=_checkpoint_config(t, c, _no_arch)), [t / "run"]), ["'architecture'"]),
    ("align-checkpoint-config-a-list",
     lambda c, t: (_align(c, t, ck=_checkpoint_config(t, c, lambda cfg: [cfg])), [t / "run"]),
     ["config.json", "JSON object"]),
    # ---- build-corpus
    ("build-workers-0", lambda c, t: (_build(c, t, "--workers", "0"), [t / "out"]), ["--workers"]),
    ("build-context-0", lambda c, t: (_build(c, t, "--context", "0"), [t / "out"]), ["--context"]),
    ("build-context-huge", lambda c, t: (_build(c, t, "--context", "10000000"), [t / "out"]), ["--context"]),
    ("build-patch-um-0", lambda c, t: (_build(c, t, "--patch-um", "0", kind="paired"), [t / "out"]), ["--patch-um"]),
    ("build-patch-um-nan", lambda c, t: (_build(c, t, "--patch-um", "nan", kind="paired"), [t / "out"]),
     ["--patch-um"]),
    ("build-seed-negative", lambda c, t: (_build(c, t, "--seed", "-1"), [t / "out"]), ["--seed"]),
    ("build-min-counts-negative", lambda c, t: (_build(c, t, "--min-counts", "-10"), [t / "out"]), ["--min-counts"]),
    ("build-out-holds-the-other-kind",
     lambda c, t: (_build(c, t, out=_copy(c["corpus"], t / "genes_corpus"), kind="paired"),
                   [t / "genes_corpus" / "good.done.json"]), ["'genes' corpus", "--kind paired"]),
    ("build-manifest-nested", lambda c, t: (_build(c, t, manifest=_nested_json(t / "m.json")), [t / "out"]),
     ["m.json", "nested too deeply"]),
    ("build-manifest-dev-null", lambda c, t: (_build(c, t, manifest=Path("/dev/null")), [t / "out"]),
     ["/dev/null", "a device"]),
    ("build-manifest-a-folder", lambda c, t: (_build(c, t, manifest=_dir(t / "mdir")), [t / "out"]),
     ["mdir", "a folder"]),
    # ---- tokenize / inspect: vocabularies, images, spot tables, devices
    ("tokenize-context-0", lambda c, t: (["tokenize", c["good"]["path"], "--out", str(t / "x.npz"), "--context",
                                          "0"], [t / "x.npz"]), ["--context"]),
    ("tokenize-vocab-negative-mean",
     lambda c, t: (["tokenize", c["good"]["path"], "--out", str(t / "x.npz"), "--vocab",
                    str(_vocab_with(t, c["vocab"], 3, "-2.5"))], [t / "x.npz"]),
     ["bad_vocab.tsv", "positive and finite", "row 3"]),
    ("tokenize-vocab-inf-mean",
     lambda c, t: (["tokenize", c["good"]["path"], "--out", str(t / "x.npz"), "--vocab",
                    str(_vocab_with(t, c["vocab"], 0, "inf"))], [t / "x.npz"]), ["positive and finite"]),
    ("tokenize-vocab-empty",
     lambda c, t: (["tokenize", c["good"]["path"], "--out", str(t / "x.npz"), "--vocab",
                    str(_write(t / "v.tsv", "index\tgene_id\tsymbols\tmean_nonzero_expression\n"))], [t / "x.npz"]),
     ["v.tsv", "holds no gene"]),
    ("inspect-dev-zero", lambda c, t: (_inspect(c, t, sample="/dev/zero"), []), ["/dev/zero", "a device"]),
    ("inspect-vocab-dev-zero", lambda c, t: (["inspect", c["good"]["path"], "--vocab", "/dev/zero"], []),
     ["/dev/zero", "a device"]),
    ("inspect-vocab-folder", lambda c, t: (["inspect", c["good"]["path"], "--vocab", str(t)], []), ["a folder"]),
    ("inspect-um-per-px-0", lambda c, t: (_inspect(c, t, "--um-per-px", "0"), []), ["--um-per-px"]),
    ("inspect-um-per-px-nan", lambda c, t: (_inspect(c, t, "--um-per-px", "nan"), []), ["--um-per-px"]),
    ("inspect-hdf5-named-jpg", lambda c, t: (_inspect(c, t, "--image", str(_hdf5_named_jpg(t / "he.jpg"))), []),
     ["he.jpg", "HDF5"]),
    ("inspect-truncated-png", lambda c, t: (_inspect(c, t, "--image", str(_truncated_png(t / "he.png"))), []),
     ["he.png", "truncated"]),
    ("inspect-decompression-bomb", lambda c, t: (_inspect(c, t, "--image", str(_bomb_png(t / "he.png"))), []),
     ["he.png", "decompression bomb"]),
    ("inspect-spot-table-decimal-comma",
     lambda c, t: (_inspect(c, t, "--format", "her2st", "--section", "Z1",
                            sample=_spot_table_edit(t, _decimal_comma)), []),
     ["Z1_selection.tsv", "'12,5'", "dot"]),
    ("inspect-spot-table-ragged",
     lambda c, t: (_inspect(c, t, "--format", "her2st", "--section", "Z1", sample=_spot_table_edit(t, _ragged)),
                   []), ["Z1_selection.tsv", "row"]),
    # ---- embed
    ("embed-device-tpu", lambda c, t: (_embed(c, t, "--device", "tpu9"), [t / "o.h5ad"]), ["--device"]),
    ("embed-patch-um-0", lambda c, t: (_embed(c, t, "--patch-um", "0"), [t / "o.h5ad"]), ["--patch-um"]),
    ("embed-batch-size-0", lambda c, t: (_embed(c, t, "--batch-size", "0"), [t / "o.h5ad"]), ["--batch-size"]),
    ("embed-tissue-fraction-2", lambda c, t: (_embed(c, t, "--tiles", "--min-tissue-fraction", "2"),
                                              [t / "o.h5ad"]), ["--min-tissue-fraction"]),
    ("embed-weights-not-safetensors",
     lambda c, t: (_embed(c, t, "--backbone-weights", str(_write(t / "w.safetensors", b"<html>404</html>"))),
                   [t / "o.h5ad"]), ["w.safetensors", "safetensors"]),
    ("embed-sample-is-a-folder-of-nothing", lambda c, t: (_embed(c, t)[:2] + [str(_dir(t / "empty")), "--out",
                                                                             str(t / "o.h5ad")], [t / "o.h5ad"]),
     ["empty", "no known input layout"]),
    # ---- evaluate, convert-released, demo
    ("evaluate-zero-dim", lambda c, t: (["evaluate", "--embeddings", str(_zero_dim_embedding(t)), "--out",
                                         str(t / "ev")], [t / "ev" / "results.json"]), ["zero.h5ad", "empty"]),
    ("evaluate-label-root-missing",
     lambda c, t: (["evaluate", "--embeddings", str(_embedding(t)), "--labels", "her2st-cluster", "--her2st-root",
                    str(t / "nowhere"), "--out", str(t / "ev")], [t / "ev" / "results.json"]),
     ["nowhere", "--her2st-root"]),
    ("evaluate-seed-negative", lambda c, t: (["evaluate", "--embeddings", "x.h5ad", "--seed", "-1", "--out",
                                              str(t / "ev")], [t / "ev"]), ["--seed"]),
    ("evaluate-impute-k-0", lambda c, t: (["evaluate", "--embeddings", "x.h5ad", "--impute-k", "0", "--out",
                                           str(t / "ev")], [t / "ev"]), ["--impute-k"]),
    ("evaluate-embedding-dev-zero", lambda c, t: (["evaluate", "--embeddings", "/dev/zero", "--out", str(t / "ev")],
                                                  [t / "ev" / "results.json"]), ["/dev/zero", "a device"]),
    ("convert-not-safetensors",
     lambda c, t: (["convert-released", str(_write(t / "p.safetensors", b"\x00" * 64)), str(t / "conv")],
                   [t / "conv"]), ["p.safetensors", "safetensors"]),
    # ---- swapped arguments, wrong kinds of path
    ("embed-model-and-sample-swapped", lambda c, t: (["embed", c["good"]["path"], "backbone:efficientnet_lite0",
                                                      "--out", str(t / "o.h5ad")], [t / "o.h5ad"]),
     ["good.h5ad", "swapped"]),
    ("build-manifest-and-out-swapped",
     lambda c, t: (_build(c, t, manifest=t / "out_dir", out=_tsv_of(c, t)), [t / "out_dir"]),
     ["m.tsv", "not a folder"]),
    ("tokenize-out-is-a-folder", lambda c, t: (["tokenize", c["good"]["path"], "--out", str(_dir(t / "o.npz"))],
                                               []), ["o.npz", "folder"]),
    ("evaluate-slide-labels-empty",
     lambda c, t: (["evaluate", "--embeddings", str(_embedding(t)), "--tasks", "mil", "--slide-labels",
                    str(_write(t / "labels.csv", b"")), "--out", str(t / "ev")], [t / "ev" / "results.json"]),
     ["labels.csv"]),
    ("inspect-truncated-jpeg", lambda c, t: (_inspect(c, t, "--image", str(_truncated_jpeg(t / "he.jpg"))), []),
     ["he.jpg", "truncated"]),
    ("inspect-truncated-tiff", lambda c, t: (_inspect(c, t, "--image", str(_truncated_tiff(t / "he.tif"))), []),
     ["he.tif", "truncated"]),
    ("demo-workers-0", lambda c, t: (["demo", "--workers", "0", "--out", str(t / "demo")], [t / "demo"]),
     ["--workers"]),
]


RUN_RECORDS = {"pretrain_config.json", "align_config.json", "trainer_config.json"}


def _dir(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize("make,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_battery(inputs, tmp_path, capsys, monkeypatch, make, fragments):  # noqa: F811
    monkeypatch.setenv("STAMP_ST_CACHE", str(tmp_path / "slide_cache"))
    if any("cuda" in str(f) for f in fragments) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the case is about a machine without one")
    argv, absent = make(inputs, tmp_path)
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = main(argv)
    cap = capsys.readouterr()
    assert got == 2, cap.err[-2000:]
    assert "Traceback" not in cap.err + cap.out
    for fragment in fragments:
        assert fragment in cap.err, f"{fragment!r} not in: {cap.err[-2000:]}"
    for p in absent:
        assert not p.exists(), f"partial output left behind: {p}"
    for p, data in before.items():  # nothing the user had was changed or deleted (a run's own record of its
        if p.name in RUN_RECORDS:  # settings may be rewritten by the re-run that then stops)
            continue
        assert p.is_file() and p.read_bytes() == data, f"input changed: {p}"
    assert not list(tmp_path.rglob("*.safetensors")) or all(
        torch.isfinite(t).all() for f in tmp_path.rglob("model.safetensors")
        for t in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(f)).values())


# ------------------------------------------------------------------ units behind the battery
def test_one_range_serves_configs_and_options():
    import argparse

    from stamp_st.cli.options import ranged_type
    from stamp_st.config_types import BATCH_SIZE, Range, field_range
    from stamp_st.training.pretrain_genes import PretrainConfig

    assert field_range(PretrainConfig, "batch_size") is BATCH_SIZE
    parse = ranged_type(int, BATCH_SIZE)
    assert parse("8") == 8
    for bad in ("0", "-1", "2e3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert Range(0, 1, lo_open=True).problem(0) and Range(0, 1, lo_open=True).problem(1) is None
    assert "finite" in Range().problem(float("inf"))
    with pytest.raises(StampInputError, match="'batch_size'"):
        PretrainConfig.from_dict({"batch_size": 0}, "cfg.json")


def test_check_device():
    from stamp_st.devices import check_device

    assert check_device("cpu") == "cpu" and check_device("auto") == "auto" and check_device(None) is None
    for bad in ("tpu9", "cpu:1", "cuda:x", "gpu"):
        with pytest.raises(StampInputError, match="not a device name"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(StampInputError, match="no usable CUDA"):
            check_device("cuda")


def test_evaluate_writes_results_json_last(tmp_path, monkeypatch):
    """results.json is the completion marker: an earlier run's is removed before the new report is written,
    so a kill while writing never leaves a new report beside an old results.json (or results without report)."""
    from stamp_st.evaluation import report

    out = tmp_path / "ev"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "report.html").write_text("old")
    results = {"meta": {"seed": 0}, "sources": {}, "tasks": {}, "table": []}
    monkeypatch.setattr(report, "build_figures", lambda *a, **k: {})
    monkeypatch.setattr(report, "render_html", lambda *a, **k: "new")

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(out, results)
    assert not (out / "results.json").exists()  # neither: no completion marker


def test_sources_cut_to_common_spots_are_reported():
    from stamp_st.embedding_file import EmbeddingSet
    from stamp_st.evaluation.sources import align_sources

    rng = np.random.default_rng(0)
    a = EmbeddingSet("a", rng.normal(size=(10, 3)), ["s"] * 10, [f"p{i}" for i in range(10)])
    b = EmbeddingSet("b", rng.normal(size=(7, 3)), ["s"] * 7, [f"p{i}" for i in range(7)])
    notes: list = []
    with pytest.warns(UserWarning, match="3 of 10 spots"):
        out = align_sources({"a": a, "b": b}, notes)
    assert len(out["a"]) == 7 and len(notes) == 1 and "'a'" in notes[0]


def test_a_cache_path_that_is_a_file_is_blamed_on_the_cache(tmp_path):
    from PIL import Image

    from stamp_st.readers.slide import CACHE_ENV, open_slide

    img = tmp_path / "he.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    cache = _write(tmp_path / "cache", "a file where the cache folder should be")
    with open_slide(img, cache=cache, max_in_memory_px=100) as s, \
            pytest.raises(StampInputError, match=f"(?s)decoded-image cache is a file.*{CACHE_ENV}") as err:
        s.read_region(0, 0, 8, 8)
    assert "he.png" not in str(err.value).splitlines()[0]
    assert cache.read_text().startswith("a file")


def test_evaluate_says_which_tasks_were_skipped_and_why(tmp_path, capsys):
    e = _embedding(tmp_path)
    assert main(["evaluate", "--embeddings", str(e), "--tasks", "probe", "--projection", "pca", "--out",
                 str(tmp_path / "ev")]) == 0
    assert "(skipped)" in capsys.readouterr().out and (tmp_path / "ev" / "report.html").is_file()
