"""Stage 1 end to end: corpus shards -> pretrain-genes -> checkpoint; held-out losses fall; exact resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from stamp_st.errors import StampInputError
from stamp_st.models.checkpoint import load_checkpoint
from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
from stamp_st.preprocessing.vocab import GeneVocabulary
from stamp_st.training.gene_objectives import GenePretrainModel
from stamp_st.training.pretrain_genes import PretrainConfig, SyntheticGeneGroups, run_pretrain

torch.set_num_threads(1)
V = 200
MICRO = {"name": "micro", "vocab_size": V, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "context": 32}


def _vocab(n=V) -> GeneVocabulary:
    return GeneVocabulary(tuple(f"ENSG{i:011d}" for i in range(n)), np.ones(n), source="synthetic")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A genes corpus in the build-corpus layout: 3 slides (2 train, 1 val), shards + manifest.json."""
    from stamp_st.corpus.shards import encode_sample, write_shard

    out = tmp_path_factory.mktemp("corpus")
    data = SyntheticGeneGroups(n_groups=72, vocab_size=V, context=32, n_programs=4, seed=3)
    shards, splits = [], {}
    for s in range(3):
        sid, split = f"slide{s}", ("val" if s == 2 else "train")
        items = [it for g, it in enumerate(data.items) if g % 3 == s]
        samples = (encode_sample({"__key__": f"{sid}--{i}", "tokens.npy": it["tokens"].numpy().astype(np.int32),
                                  "spot_valid.npy": it["spot_valid"].numpy(),
                                  "meta.json": {"slide_id": sid, "spot_ids": [f"s{i}-{k}" for k in range(9)]}})
                   for i, it in enumerate(items))
        name = f"{sid}-000000.tar"
        info = write_shard(out / name, samples)
        shards.append({"url": name, "slide_id": sid, "split": split, "n_samples": len(items),
                       "n_spots": 9 * len(items), "bytes": info.get("bytes"), "sha256": info.get("sha256")})
        t = splits.setdefault(split, {"n_slides": 0, "n_samples": 0, "n_spots": 0})
        t["n_slides"] += 1
        t["n_samples"] += len(items)
    man = {"format_version": 1, "kind": "genes", "settings_hash": "synthetic",
           "vocab": {"checksum": _vocab().checksum, "n_genes": V, "source": "synthetic"},
           "tokenizer": {"context": 32, "rounded_means": True, "storage_pad_id": 0, "token_offset": 30},
           "splits": splits, "shards": shards}
    (out / "manifest.json").write_text(json.dumps(man))
    return out


def _config(**trainer) -> PretrainConfig:
    t = {"lr": 3e-3, "warmup_steps": 2, "log_every": 2, "val_every": 6, "val_at_start": True, "ckpt_every": 4,
         "precision": "fp32", "progress": False, "tensorboard": False, "seed": 1}
    t.update(trainer)
    return PretrainConfig.from_dict({"model": MICRO, "batch_size": 4, "epochs": 4, "shuffle_buffer": 8,
                                     "phases": [{"epochs": 1, "cgr": False}, {"cgr": True}], "trainer": t})


def _val_curve(run) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    curve: dict = {}
    for r in rows:
        if r["split"] == "val":
            curve.setdefault(r["metric"], []).append((int(r["step"]), float(r["value"])))
    return curve


def test_pretrain_both_losses_fall_on_held_out_slides(corpus, tmp_path):
    run = tmp_path / "run"
    res = run_pretrain(corpus, _config(), run, vocab=_vocab())
    assert res["step"] == 4 * (48 // 4)  # 48 train groups, 4 per batch, 4 epochs
    curve = _val_curve(run)
    for k in ("igr_loss", "cgr_loss"):
        first, last = curve[k][0][1], curve[k][-1][1]
        assert curve[k][0][0] == 0 and last < first - 0.3, (k, curve[k])
    assert curve["igr_acc"][-1][1] > curve["igr_acc"][0][1]
    # the checkpoint carries what is needed to rebuild and use the encoder
    sd, cfg = load_checkpoint(run / "checkpoints" / (run / "checkpoints/latest").read_text().strip(),
                              expect_kind="gene_encoder")
    assert cfg["vocab_checksum"] == _vocab().checksum and cfg["tokenizer"]["context"] == 32
    assert GeneVocabulary.from_json(cfg["vocabulary"]).checksum == _vocab().checksum
    enc = GeneEncoder(GeneEncoderConfig.from_json(cfg["architecture"]))
    enc.load_state_dict(sd)  # strict: the encoder's own names, no wrapper prefix
    train_rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["split"] == "train"]
    cgr_steps = sorted({int(r["step"]) for r in train_rows if r["metric"] == "cgr_loss"})
    assert cgr_steps and min(cgr_steps) > 12  # phase 1 (epoch 0 = 12 steps) is IGR only


def test_killed_pretraining_resumes_identically(corpus, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_pretrain(corpus, _config(val_every=0, val_at_start=False), straight, vocab=_vocab())

    killed = tmp_path / "killed"
    orig = GenePretrainModel.on_train_step

    def kill_at_15(self, step, epoch):
        if step == 15:
            raise KeyboardInterrupt("simulated kill")
        orig(self, step, epoch)

    monkeypatch.setattr(GenePretrainModel, "on_train_step", kill_at_15)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(corpus, _config(val_every=0, val_at_start=False), killed, vocab=_vocab())
    monkeypatch.setattr(GenePretrainModel, "on_train_step", orig)
    assert (killed / "checkpoints/latest").read_text().strip() == "step-0000012"
    run_pretrain(corpus, _config(val_every=0, val_at_start=False), killed, vocab=_vocab())
    a, _ = load_checkpoint(straight / "checkpoints/step-0000048")
    b, _ = load_checkpoint(killed / "checkpoints/step-0000048")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_mismatches_are_refused(corpus, tmp_path):
    with pytest.raises(StampInputError, match="vocab_size"):
        run_pretrain(corpus, PretrainConfig.from_dict({"model": {**MICRO, "vocab_size": V + 1}}), tmp_path / "a",
                     vocab=_vocab())
    with pytest.raises(StampInputError, match="checksum"):
        run_pretrain(corpus, _config(), tmp_path / "b", vocab=_vocab(V + 1))
    with pytest.raises(StampInputError, match="unknown"):
        PretrainConfig.from_dict({"modle": "tiny"})
    # resuming a run folder with another architecture is refused
    run = tmp_path / "d"
    cfg = _config()
    cfg.epochs = None
    cfg.trainer["max_steps"] = 2
    run_pretrain(corpus, cfg, run, vocab=_vocab())
    other = _config()
    other.model = {**MICRO, "d_model": 64}
    with pytest.raises(StampInputError, match="started with gene encoder"):
        run_pretrain(corpus, other, run, vocab=_vocab())


def test_cli_runs_and_reports_errors(corpus, tmp_path, capsys):
    from stamp_st.cli import main

    vocab_tsv = tmp_path / "vocab.tsv"
    _vocab().write_tsv(vocab_tsv)
    cfg = _config().to_json()
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    rc = main(["pretrain-genes", str(corpus), "--config", str(cfg_path), "--out", str(tmp_path / "run"),
               "--vocab", str(vocab_tsv), "--max-steps", "3", "--set", "val_every=0"])
    assert rc == 0
    assert (tmp_path / "run/checkpoints/step-0000003/model.safetensors").is_file()
    assert "held-out slides" in capsys.readouterr().out
    rc = main(["pretrain-genes", str(corpus), "--config", str(cfg_path), "--out", str(tmp_path / "r2"),
               "--vocab", str(vocab_tsv), "--model", "tiny"])
    assert rc == 2
    assert "vocab_size" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_like_model_on_real_her2st_corpus(her2st_root, vocab, tmp_path):
    """Real data: two her2st sections for training, one held out; both held-out losses fall."""
    from stamp_st.corpus.build import BuildConfig, build_corpus

    (tmp_path / "m.tsv").write_text("path\tformat\tsection\tsplit\n" + "".join(
        f"{her2st_root}\ther2st\t{s}\t{sp}\n" for s, sp in (("A1", "train"), ("B1", "train"), ("C1", "val"))))
    build_corpus(tmp_path / "m.tsv", tmp_path / "corpus", BuildConfig(kind="genes", vocab_path=vocab.source,
                                                                      context=64),
                 workers=1, processes=False, progress=False)
    model = {**MICRO, "vocab_size": len(vocab), "context": 64}
    cfg = PretrainConfig.from_dict({"model": model, "batch_size": 4, "epochs": 3,
                                    "phases": [{"epochs": 1, "cgr": False}, {"cgr": True}],
                                    "trainer": {"lr": 3e-3, "warmup_steps": 3, "val_every": 20, "val_at_start": True,
                                                "progress": False, "tensorboard": False}})
    run_pretrain(tmp_path / "corpus", cfg, tmp_path / "run", vocab=vocab)
    curve = _val_curve(tmp_path / "run")
    for k in ("igr_loss", "cgr_loss"):
        assert curve[k][-1][1] < curve[k][0][1], (k, curve[k])
