"""One config loader for every config class of both stages (unknown keys and wrong types refused with the
setting's name), every registered named config loads, and the run folder's layout lives in RunFolder."""

from __future__ import annotations

import pytest

from stamp_st.configs import registered
from stamp_st.corpus.build import BuildConfig
from stamp_st.errors import StampInputError
from stamp_st.models.gene_encoder import GeneEncoderConfig
from stamp_st.pipeline.reproduce import ReproduceConfig
from stamp_st.training.align import AlignConfig
from stamp_st.training.engine import TrainerConfig
from stamp_st.training.pretrain_genes import PretrainConfig
from stamp_st.training.run_folder import RunFolder, check_run_folder, latest_checkpoint

LOADERS = {
    "trainer": lambda d: TrainerConfig.from_dict(d, "t.json"),
    "pretrain": lambda d: PretrainConfig.from_dict(d, "p.json"),
    "align": lambda d: AlignConfig.from_dict(d, "a.json"),
    "gene_encoder": lambda d: GeneEncoderConfig.from_json(d, "g.json"),
    "build": lambda d: BuildConfig.from_json({"kind": "genes", "vocab_path": "v.tsv", **d}, "b.json"),
    "build_qc": lambda d: BuildConfig.from_json({"kind": "genes", "vocab_path": "v.tsv", "qc": d}, "b.json"),
    "reproduce": lambda d: ReproduceConfig.from_dict(d, "r.json"),
}
WRONG_TYPE = {"trainer": {"lr": "3e-4"}, "pretrain": {"batch_size": "8"}, "align": {"lora": 1.5},
              "gene_encoder": {"d_model": "wide"}, "build": {"context": "long"}, "build_qc": {"min_counts": True},
              "reproduce": {"nproc_per_node": "4"}}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_unknown_keys_and_wrong_types_are_named(kind):
    with pytest.raises(StampInputError, match="unknown .*'lerning_rate'"):
        LOADERS[kind]({"lerning_rate": 1e-4})
    key = next(iter(WRONG_TYPE[kind]))
    with pytest.raises(StampInputError, match=f"'{key}' must be"):
        LOADERS[kind](WRONG_TYPE[kind])


@pytest.mark.parametrize("kind,name", [(k, n) for k in ("gene_encoder", "pretrain", "align", "reproduce")
                                       for n in registered(k)])
def test_every_registered_config_loads(kind, name):
    cls = {"gene_encoder": GeneEncoderConfig, "pretrain": PretrainConfig, "align": AlignConfig,
           "reproduce": ReproduceConfig}[kind]
    assert isinstance(cls.load(name), cls)


def _step(run: RunFolder, n: int, state: bool = True):
    p = run.checkpoints / f"step-{n:07d}"
    p.mkdir(parents=True)
    if state:
        (p / "trainer_state.pt").write_bytes(b"x")
    return p


def test_run_folder_latest_pointer_and_its_fallbacks(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.latest() is None and run.latest(resumable=True) is None
    assert latest_checkpoint(tmp_path / "ck") == tmp_path / "ck"  # not a run folder: the path itself
    a, b = _step(run, 10), _step(run, 20)
    assert run.latest() is None and run.latest(resumable=True) == b  # no pointer: the newest resumable step
    run.set_latest(a.name)
    assert run.latest() == a == latest_checkpoint(run.path)
    c = _step(run, 30, state=False)  # a kill before the trainer state was written
    run.set_latest(c.name)
    assert run.latest() == c and run.latest(resumable=True) == b
    run.prune(keep=2)
    assert sorted(p.name for p in run.checkpoints.glob("step-*")) == [b.name, c.name]


def test_run_folder_metrics_and_configs(tmp_path):
    run = RunFolder(tmp_path)
    run.append_metrics(1, 0, "train", {"loss": 2.0})
    run.append_metrics(5, 0, "val", {"loss": 1.5, "acc": 0.25})
    run.truncate_metrics(1)
    assert run.metrics_csv.read_text().splitlines() == ["step,epoch,split,metric,value", "1,0,train,loss,2"]
    run.write_config("align_config.json", {"a": 1})
    check_run_folder(run.path)  # only files a run writes
    with pytest.raises(ValueError):
        run.write_config("notes.json", {})
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StampInputError, match="did not write"):
        check_run_folder(run.path)
