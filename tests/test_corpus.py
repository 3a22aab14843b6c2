"""Corpus build (Dask, WebDataset shards, QC, resume) and the datasets over it, on synthetic slides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("webdataset")

from synthetic_slides import N_GENES, small_build_config, synthetic_slide, synthetic_vocab  # noqa: E402

from stamp_st.corpus.build import build_corpus  # noqa: E402
from stamp_st.corpus.samples import read_samples, write_samples  # noqa: E402


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slides")
    rows = [synthetic_slide(tmp, f"S{i}", seed=i) for i in range(3)]
    rows[2]["split"] = "val"
    write_samples(__import__("stamp_st.corpus.samples", fromlist=["x"]).entries_from_records(rows),
                   tmp / "samples.tsv")
    return tmp, synthetic_vocab(tmp)


def _decoded(out: Path) -> dict:
    from stamp_st.corpus.shards import iter_shard

    man = json.loads((out / "manifest.json").read_text())
    return {s["url"]: [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items() if k != "__url__"}
                       for d in iter_shard(str(out / s["url"]))] for s in man["shards"]}


def test_manifest_roundtrip_and_validation(slides, tmp_path):
    from stamp_st.corpus.samples import entries_from_records
    from stamp_st.errors import StampInputError

    tmp, _ = slides
    entries = read_samples(tmp / "samples.tsv")
    assert [e.slide_id for e in entries] == ["S0", "S1", "S2"] and entries[2].split == "val"
    write_samples(entries, tmp_path / "m.json")
    assert read_samples(tmp_path / "m.json") == entries
    with pytest.raises(StampInputError, match="split"):
        entries_from_records([{"path": str(tmp), "split": "holdout"}])
    with pytest.raises(StampInputError, match="unknown samples-table columns"):
        entries_from_records([{"path": str(tmp), "colour": "x"}])


@pytest.mark.parametrize("kind", ["genes", "paired"])
def test_build_both_kinds_with_two_workers(slides, tmp_path, kind):
    tmp, vocab = slides
    res = build_corpus(tmp / "samples.tsv", tmp_path / kind, small_build_config(vocab, kind), workers=2,
                       processes=False, progress=False)
    man = res["manifest"]
    assert man["kind"] == kind and man["totals"]["n_slides"] == 3
    qc = man["qc"]["total"]
    # 3 low-count spots and 2 off-tissue spots per slide; paired also loses the off-image spot
    assert qc["dropped"]["min_counts"] == 9 and qc["dropped"]["not_in_tissue"] == 6
    assert qc["dropped"]["off_image"] == (3 if kind == "paired" else 0)
    assert qc["n_spots_kept"] == qc["n_spots_input"] - sum(qc["dropped"].values())
    assert man["splits"]["val"]["n_slides"] == 1
    from stamp_st.corpus.shards import iter_shard, sha256_file

    n_spots = 0
    seen = set()
    for s in man["shards"]:
        assert sha256_file(tmp_path / kind / s["url"]) == s["sha256"]
        items = list(iter_shard(str(tmp_path / kind / s["url"])))
        assert len(items) == s["n_samples"] <= 20
        for it in items:
            assert it["meta.json"]["slide_id"] == s["slide_id"]
            if kind == "genes":
                valid = it["spot_valid.npy"]
                assert it["tokens.npy"].shape[0] == 9 and valid[0]
                assert not it["tokens.npy"][~valid].any()  # missing neighbours are all padding
                ids = [i for i in it["meta.json"]["spot_ids"] if i]
                n_spots += len(ids)
                seen.add(ids[0])
            else:
                assert it["patch.png"].shape == (16, 16, 3) and it["thumb.png"].shape == (4, 4, 3)
                assert it["tokens.npy"][0] >= 30  # the top-ranked gene, never padding
                m = it["meta.json"]
                assert np.allclose(m["xy_um"], np.asarray(m["xy_px"]) * m["um_per_px"])
                seen.add(m["spot_id"])
                n_spots += 1
    assert n_spots == man["totals"]["n_spots"]
    if kind == "paired":
        assert len(seen) == qc["n_spots_kept"]  # every kept spot, once
    else:
        # every kept spot is some group's member; ungrouped ones are centres of centre-only groups
        assert len(seen) <= qc["n_spots_kept"]
    assert (tmp_path / kind / "gene_means.tsv").is_file()
    assert res["build"]["n_slides_built"] == 3
    from stamp_st.corpus.layout import verify_corpus

    assert verify_corpus(tmp_path / kind) == []
    victim = tmp_path / kind / man["shards"][0]["url"]
    data = bytearray(victim.read_bytes())
    data[600] ^= 1
    victim.write_bytes(bytes(data))
    assert verify_corpus(tmp_path / kind) == [f"{victim.name}: checksum differs from the manifest"]


def test_resume_skips_done_slides_and_duplicates_are_reported(slides, tmp_path):
    from stamp_st.corpus.samples import SampleEntry

    tmp, vocab = slides
    entries = read_samples(tmp / "samples.tsv")
    # the same input listed twice, and a copy of S0 under another name (same counts)
    import shutil

    shutil.copy(entries[0].path, tmp_path / "copy.h5ad")
    entries = entries + [entries[1]] + [SampleEntry(**{**entries[0].to_json(), "path": str(tmp_path / "copy.h5ad"),
                                                      "slide_id": "S0copy"})]
    out = tmp_path / "c"
    cfg = small_build_config(vocab, "genes")
    first = build_corpus(entries, out, cfg, workers=1, processes=False, progress=False)
    reasons = {s["slide_id"]: s["reason"] for s in first["manifest"]["qc"]["skipped_slides"]}
    assert reasons == {"S1": "duplicate_path", "S0copy": "duplicate_counts"}
    assert [s["slide_id"] for s in first["manifest"]["slides"]] == ["S0", "S1", "S2"]
    again = build_corpus(entries, out, cfg, workers=1, processes=False, progress=False)
    assert again["build"]["n_slides_built"] == 0 and again["manifest"] == first["manifest"]
    # a changed setting invalidates every slide
    changed = build_corpus(entries, out, small_build_config(vocab, "genes", seed=8), workers=1, processes=False,
                           progress=False)
    assert changed["build"]["n_slides_built"] == 4


def test_gene_means_match_definition(slides, tmp_path):
    import anndata as ad

    from stamp_st.corpus.gene_means import compute_gene_means
    from stamp_st.preprocessing.vocab import GeneVocabulary

    tmp, vocab_path = slides
    out = tmp_path / "g"
    build_corpus(tmp / "samples.tsv", out, small_build_config(vocab_path, "genes"), workers=1, processes=False,
                 progress=False)
    vocab = GeneVocabulary.from_tsv(vocab_path)
    got = compute_gene_means(out, vocab)
    # oracle: explicit loops over kept spots
    sums = np.zeros(len(vocab))
    nnz = np.zeros(len(vocab))
    for e in read_samples(tmp / "samples.tsv"):
        a = ad.read_h5ad(e.path)
        X = a.X.toarray().astype(np.float64)
        keep = a.obs["in_tissue"].to_numpy() & (X.sum(1) >= 10) & ((X > 0).sum(1) >= 3)
        for x in X[keep]:
            s = x * 10_000 / x.sum()
            sums[: N_GENES] += np.where(x > 0, s, 0)
            nnz[: N_GENES] += x > 0
    want = np.where(nnz > 0, sums / np.maximum(nnz, 1), np.nan)
    np.testing.assert_allclose(got.mean_nonzero, want, rtol=1e-9)
    assert np.isnan(got.mean_nonzero[N_GENES:]).all()
    written = GeneVocabulary.from_tsv(out / "gene_means.tsv")
    np.testing.assert_allclose(written.mean_nonzero, want, rtol=1e-6)


def test_paired_skips_slide_without_pixel_size(tmp_path):
    from stamp_st.corpus.samples import entries_from_records

    rows = [synthetic_slide(tmp_path, "A", 1), synthetic_slide(tmp_path, "B", 2)]
    rows[1]["um_per_px"] = ""
    # B's h5ad has no grid-derived pixel size either: remove its array coordinates
    import anndata as ad

    a = ad.read_h5ad(rows[1]["path"])
    del a.obs["array_row"], a.obs["array_col"]
    a.write_h5ad(rows[1]["path"])
    vocab = synthetic_vocab(tmp_path)
    res = build_corpus(entries_from_records(rows), tmp_path / "out", small_build_config(vocab, "paired"),
                       workers=1, processes=False, progress=False)
    skipped = res["manifest"]["qc"]["skipped_slides"]
    assert [(s["slide_id"], s["reason"]) for s in skipped] == [("B", "no_pixel_size")]
    assert [s["slide_id"] for s in res["manifest"]["slides"]] == ["A"]
    # a gene corpus keeps B: without a grid every spot is a centre-only group
    genes = build_corpus(entries_from_records(rows), tmp_path / "genes", small_build_config(vocab, "genes"),
                         workers=1, processes=False, progress=False)["manifest"]
    by_id = {s["slide_id"]: s for s in genes["slides"]}
    assert by_id["B"]["n_samples"] == by_id["B"]["n_spots"] > 0
    assert by_id["A"]["n_samples"] < by_id["A"]["n_spots"] / 3


# ---------------------------------------------------------------- kill and resume
_BUILD_SCRIPT = textwrap.dedent("""
    import sys, time
    import stamp_st.corpus.build as b
    from stamp_st.corpus.qc import QCConfig
    slow = float(sys.argv[4])
    orig = b.write_shard
    def write_shard(path, samples):
        info = orig(path, samples)
        time.sleep(slow)  # give the test time to kill between shards and slides
        return info
    b.write_shard = write_shard
    cfg = b.BuildConfig(kind=sys.argv[3], vocab_path=sys.argv[2], context=32, patch_um=20.0, out_px=16,
                        thumb_px=4, qc=QCConfig(min_counts=10, min_genes=3), seed=7, shard_size=int(sys.argv[6]),
                        chunk_spots=8)
    b.build_corpus(sys.argv[1] + "/samples.tsv", sys.argv[5], cfg, workers=1, processes=False,
                   progress=False)
""")


@pytest.mark.parametrize("kind", ["genes", "paired"])
def test_killed_build_resumes_to_the_same_corpus(slides, tmp_path, kind):
    tmp, vocab = slides
    script = tmp_path / "build.py"
    script.write_text(_BUILD_SCRIPT)
    ref = tmp_path / "ref"
    shard_size, pause_s = (5, "0.4") if kind == "genes" else (12, "0.25")
    cfg = small_build_config(vocab, kind, shard_size=shard_size)
    build_corpus(tmp / "samples.tsv", ref, cfg, workers=2, processes=False, progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp), str(vocab), kind, pause_s, str(out), str(shard_size)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    # kill once the first slide is done and the second has written some of its shards
    while time.time() < deadline and proc.poll() is None:
        done = {p.name.split(".")[0] for p in out.glob("*.done.json")}
        partial = {p.name.rsplit("-", 1)[0] for p in out.glob("*.tar")} - done
        if done and partial:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(out.glob("*.done.json")))
    assert 1 <= n_done < 3 and not (out / "manifest.json").exists()

    res = build_corpus(tmp / "samples.tsv", out, cfg, workers=2, processes=False, progress=False)
    assert res["build"]["n_slides_built"] == 3 - n_done  # finished slides were not redone
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert _decoded(out) == _decoded(ref)
    assert not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in ref.glob("*.tar"))


# ---------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def built(slides, tmp_path_factory):
    tmp, vocab = slides
    outs = {}
    for kind in ("genes", "paired"):
        out = tmp_path_factory.mktemp(kind)
        build_corpus(tmp / "samples.tsv", out, small_build_config(vocab, kind, shard_size=3 if kind == "genes" else 7),
                     workers=1, processes=False, progress=False)
        outs[kind] = out
    return outs


def _epoch_ids(ds_factory, world: int, workers: int, epoch: int) -> list[str]:
    from torch.utils.data import DataLoader

    from stamp_st.corpus.datasets import collate_genes

    ids = []
    for rank in range(world):
        ds = ds_factory(rank, world)
        ds.set_epoch(epoch)
        dl = DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate_genes)
        for batch in dl:
            ids += [s if isinstance(s, str) else s[0] for s in batch["spot_id"]]
    return ids


@pytest.mark.parametrize("kind", ["genes", "paired"])
def test_each_sample_once_per_epoch_across_2_ranks_x_2_workers(built, kind):
    from stamp_st.corpus.datasets import corpus_dataset

    man = json.loads((built[kind] / "manifest.json").read_text())
    n_train = man["splits"]["train"]["n_samples"]
    assert len(man["shards"]) > 4  # several shards, of unequal sizes

    def factory(rank, world):
        return corpus_dataset(built[kind] / "manifest.json", split="train", seed=3, rank=rank, world_size=world,
                              buffer_size=16)

    ids = _epoch_ids(factory, 2, 2, epoch=0)
    counts = Counter(ids)
    assert len(ids) == n_train and max(counts.values()) == 1
    # the val slide is held out
    assert not any(i.startswith("S2_") for i in ids)
    # balanced ranks: lengths differ by at most one
    lens = [len(factory(r, 2)) for r in range(2)]
    assert sum(lens) == n_train and abs(lens[0] - lens[1]) <= 1


def test_equalize_gives_equal_rank_lengths(built):
    from stamp_st.corpus.datasets import GeneGroupDataset

    for mode in ("drop", "pad"):
        lens = [len(GeneGroupDataset(built["genes"], rank=r, world_size=3, equalize=mode)) for r in range(3)]
        assert len(set(lens)) == 1
        ds = GeneGroupDataset(built["genes"], rank=2, world_size=3, equalize=mode)
        assert len(list(ds)) == lens[0]


def test_datasets_deterministic_for_a_seed(built):
    from stamp_st.corpus.datasets import GeneGroupDataset, PairedSpotDataset

    def run(cls, kind, seed, epoch):
        ds = cls(built[kind], seed=seed, buffer_size=8)
        ds.set_epoch(epoch)
        items = list(ds)
        return [(it["spot_id"] if isinstance(it["spot_id"], str) else tuple(it["spot_id"]),
                 int(it["tokens"].sum())) for it in items]

    for cls, kind in ((GeneGroupDataset, "genes"), (PairedSpotDataset, "paired")):
        a = run(cls, kind, 1, 0)
        assert a == run(cls, kind, 1, 0)
        assert a != run(cls, kind, 1, 1) and a != run(cls, kind, 2, 0)


def test_paired_items_and_partners(built):
    import torch
    from torch.utils.data import DataLoader

    from stamp_st.corpus.datasets import PairedSpotDataset, collate_pairs

    ds = PairedSpotDataset(built["paired"], split=None, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_pairs)))
    assert batch["patch"].shape == (4, 2, 16, 16, 3) and batch["patch"].dtype == torch.uint8
    assert batch["tokens"].shape == (4, 2, 32) and batch["tokens"].dtype == torch.int64
    assert batch["xy_um"].shape == (4, 2, 2) and batch["region_label"].shape == (4, 2)
    for (a, b), slide in zip(batch["spot_id"], batch["slide_id"]):
        assert a != b and a.startswith(slide + "_") and b.startswith(slide + "_")
    # partners: a different spot, spread over the shard
    p = ds.partners(0, 7, epoch=0)
    assert (p != np.arange(7)).all() and p.min() >= 0 and p.max() < 7


def test_png_and_qoi_shards_hold_the_same_pixels(slides, tmp_path):
    from stamp_st.corpus.shards import iter_shard

    tmp, vocab = slides
    outs = {}
    for codec in ("png", "qoi"):
        outs[codec] = tmp_path / codec
        build_corpus(tmp / "samples.tsv", outs[codec], small_build_config(vocab, "paired", image_codec=codec),
                     workers=1, processes=False, progress=False)
    man = json.loads((outs["png"] / "manifest.json").read_text())
    name = man["shards"][0]["url"]
    a, b = list(iter_shard(str(outs["png"] / name))), list(iter_shard(str(outs["qoi"] / name)))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for f in ("patch", "region", "thumb"):
            assert np.array_equal(x[f"{f}.png"], y[f"{f}.qoi"])


def test_slide_selection_holds_out_slides_whatever_their_split(built):
    """Cross-validation over one corpus: ``slides`` / ``exclude_slides`` partition it by slide id."""
    from stamp_st.corpus.datasets import PairedSpotDataset
    from stamp_st.errors import StampInputError

    every = {s["slide_id"] for s in PairedSpotDataset(built["paired"], split=None).shards}
    held = sorted(every)[0]  # a train-split slide
    val = PairedSpotDataset(built["paired"], split=None, slides=[held], shuffle=False)
    train = PairedSpotDataset(built["paired"], split=None, exclude_slides=[held], shuffle=False)
    val_ids = {it["slide_id"] for it in val}
    train_ids = {it["slide_id"] for it in train}
    assert val_ids == {held} and train_ids == every - {held}
    assert len(val) + len(train) == PairedSpotDataset(built["paired"], split=None).total()
    with pytest.raises(StampInputError, match="among slides"):
        PairedSpotDataset(built["paired"], split=None, slides=["no_such_slide"])
