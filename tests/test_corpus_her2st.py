"""Corpus build on the real her2st data: a gene corpus from a few sections and a paired corpus from one
imaged section, each with a LocalCluster of 2 workers; then one batch from each dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("stamp_st.preprocessing.groups")
pytest.importorskip("stamp_st.preprocessing.crops")


def test_her2st_gene_corpus(her2st_root, vocab, tmp_path):
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.datasets import GeneGroupDataset
    from stamp_st.corpus.samples import her2st_samples
    from stamp_st.preprocessing.vocab import GeneVocabulary

    entries = her2st_samples(her2st_root, sections=["A1", "B1", "C1"], split={"C1": "val"})
    cfg = BuildConfig(kind="genes", vocab_path=vocab.source, shard_size=64)
    res = build_corpus(entries, tmp_path, cfg, workers=2, processes=False, progress=False)
    man = res["manifest"]
    assert man["totals"]["n_slides"] == 3 and man["vocab"]["checksum"] == vocab.checksum
    assert man["splits"]["val"]["n_slides"] == 1
    # groups of 9 cover most spots of a legacy-ST grid; the rest are centre-only groups
    assert man["totals"]["n_spots"] == man["qc"]["total"]["n_spots_kept"]
    assert man["totals"]["n_samples"] < man["totals"]["n_spots"] / 3
    means = GeneVocabulary.from_tsv(tmp_path / "gene_means.tsv")
    assert means.gene_ids == vocab.gene_ids and np.isfinite(means.mean_nonzero).sum() > 5000
    item = next(iter(GeneGroupDataset(tmp_path, split="train")))
    assert item["tokens"].shape == (9, 1500) and bool(item["spot_valid"][0])
    assert int(item["tokens"][0, 0]) >= 30


@pytest.mark.slow
def test_her2st_paired_corpus(her2st_root, vocab, tmp_path):
    from stamp_st.corpus.build import BuildConfig, build_corpus
    from stamp_st.corpus.datasets import PairedSpotDataset
    from stamp_st.corpus.samples import her2st_samples

    entries = her2st_samples(her2st_root, sections=["B4"])
    cfg = BuildConfig(kind="paired", vocab_path=vocab.source, shard_size=128)
    res = build_corpus(entries, tmp_path, cfg, workers=2, processes=False, progress=False)
    man = res["manifest"]
    assert man["totals"]["n_slides"] == 1 and man["crop_geometry"]["out_px"] == 224
    slide = man["slides"][0]
    assert slide["um_per_px_source"] == "spot_pitch" and 0.2 < slide["um_per_px"] < 2.0
    assert len(man["shards"]) >= 2
    item = next(iter(PairedSpotDataset(tmp_path)))
    assert item["patch"].shape == (2, 224, 224, 3) and item["thumb"].shape == (2, 16, 16, 3)
    assert item["spot_id"][0] != item["spot_id"][1]
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "paired"
    # H&E, not a blank page: the patch has tissue contrast
    assert float(item["patch"].float().std()) > 10
