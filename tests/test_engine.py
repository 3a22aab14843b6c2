"""Training engine: exact resume after a kill, gradient accumulation, schedule, checkpoints, metrics."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from stamp_st.errors import StampInputError
from stamp_st.models.checkpoint import load_checkpoint
from stamp_st.training.engine import Trainer, TrainerConfig, resolve_precision
from stamp_st.training.schedule import phase_at, validate_phases, warmup_cosine

torch.set_num_threads(1)


class ToyData:
    """Regression batches whose order is a pure function of (seed, epoch)."""

    def __init__(self, n=48, batch=4, seed=0, fail_after=None):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.batch, self.seed, self.epoch = batch, seed, 0
        self.fail_after = fail_after  # simulate a kill: raise after this many batches in total
        self.served = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for i in range(0, len(order) - self.batch + 1, self.batch):
            if self.fail_after is not None and self.served >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.served += 1
            idx = order[i:i + self.batch]
            yield {"x": self.x[idx], "y": self.y[idx], "name": "toy"}


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.phases = []

    def on_train_step(self, step, epoch):
        self.phases.append((step, epoch))

    def forward(self, batch):
        pred = self.net(batch["x"])
        loss = nn.functional.mse_loss(pred, batch["y"])
        return {"loss": loss, "abs_err": (pred - batch["y"]).abs().mean()}


def _cfg(**kw):
    base = dict(max_steps=14, lr=1e-2, warmup_steps=3, grad_accum=2, precision="fp32", log_every=2,
                ckpt_every=4, val_every=5, progress=False, tensorboard=False, keep_checkpoints=2)
    base.update(kw)
    return TrainerConfig.from_dict(base)


def _val(model):
    data = ToyData(n=16, batch=16)
    batch = next(iter(data))
    return {"loss": model(batch)["loss"]}


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_killed_run_resumes_identically(tmp_path):
    # 48 items / 4 = 12 micro-batches per epoch = 6 steps: 14 steps cross two epoch boundaries
    straight = ToyModel()
    Trainer(straight, _cfg(), tmp_path / "a", ToyData(), val_fn=_val).fit()

    killed = ToyModel()
    with pytest.raises(KeyboardInterrupt):  # killed after 19 micro-batches: step 9, last checkpoint at 8
        Trainer(killed, _cfg(), tmp_path / "b", ToyData(fail_after=19), val_fn=_val).fit()
    assert (tmp_path / "b/checkpoints/latest").read_text().strip() == "step-0000008"
    resumed = ToyModel()
    result = Trainer(resumed, _cfg(), tmp_path / "b", ToyData(), val_fn=_val).fit()
    assert result["step"] == 14
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.phases[0] == (8, 1)  # resumed mid-epoch 1
    # the metrics file of the resumed run equals the straight one (rows after the checkpoint were re-logged)
    rows_a = list(csv.reader(open(tmp_path / "a/metrics.csv")))
    rows_b = list(csv.reader(open(tmp_path / "b/metrics.csv")))
    drop = {"steps_per_s"}
    assert [r for r in rows_a if r[3] not in drop] == [r for r in rows_b if r[3] not in drop]


def test_resume_continues_where_a_finished_run_stopped(tmp_path):
    m1 = ToyModel()
    Trainer(m1, _cfg(max_steps=6), tmp_path / "r", ToyData()).fit()
    m2 = ToyModel()
    # a finished run has nothing left to do: resuming is a no-op that returns the same weights
    assert Trainer(m2, _cfg(max_steps=6), tmp_path / "r", ToyData()).fit()["step"] == 6
    for k, v in _params(m1).items():
        assert torch.equal(v, _params(m2)[k])
    with pytest.raises(StampInputError, match="already holds"):
        Trainer(ToyModel(), _cfg(max_steps=6), tmp_path / "r", ToyData()).fit(resume=False)
    with pytest.raises(StampInputError, match="nothing to resume"):
        Trainer(ToyModel(), _cfg(max_steps=6), tmp_path / "new", ToyData()).fit(resume=True)


def test_checkpoint_layout_and_pruning(tmp_path):
    model = ToyModel()
    tr = Trainer(model, _cfg(), tmp_path, ToyData(), checkpoint_config={"kind": "toy", "architecture": {"w": 16}})
    tr.fit()
    ck = tmp_path / "checkpoints"
    steps = sorted(p.name for p in ck.glob("step-*"))
    assert steps == ["step-0000012", "step-0000014"]  # keep_checkpoints=2
    last = ck / "step-0000014"
    assert sorted(p.name for p in last.iterdir()) == ["config.json", "model.safetensors", "trainer_state.pt"]
    sd, cfg = load_checkpoint(last, expect_kind="toy")
    assert cfg["architecture"] == {"w": 16} and cfg["training"]["step"] == 14
    assert set(sd) == set(model.state_dict())
    state = torch.load(last / "trainer_state.pt", weights_only=True)
    assert state["step"] == 14 and state["epoch"] == 2 and state["batch_in_epoch"] == 4
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    class NoDropout(ToyModel):
        def __init__(self):
            super().__init__()
            self.net[2].p = 0.0

    a, b = NoDropout(), NoDropout()
    Trainer(a, _cfg(max_steps=3, grad_accum=2, ckpt_every=0, val_every=0), tmp_path / "a",
            ToyData(batch=4)).fit()
    Trainer(b, _cfg(max_steps=3, grad_accum=1, ckpt_every=0, val_every=0), tmp_path / "b",
            ToyData(batch=8)).fit()
    for k, v in _params(a).items():
        torch.testing.assert_close(v, _params(b)[k], atol=1e-6, rtol=1e-5)


def test_metrics_logged_and_lr_follows_schedule(tmp_path):
    Trainer(ToyModel(), _cfg(max_steps=8, warmup_steps=2, min_lr_ratio=0.1), tmp_path, ToyData(),
            val_fn=_val).fit()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    names = {(r["split"], r["metric"]) for r in rows}
    assert {("train", "loss"), ("train", "abs_err"), ("train", "grad_norm"), ("train", "lr"),
            ("val", "loss")} <= names
    lrs = {int(r["step"]): float(r["value"]) for r in rows if r["metric"] == "lr"}
    for step, lr in lrs.items():  # the lr logged after step s is the one for step s (0-based)
        assert math.isclose(lr, 1e-2 * warmup_cosine(step, 2, 8, 0.1), rel_tol=1e-4)
    assert float([r for r in rows if r["split"] == "val"][-1]["value"]) < \
        float([r for r in rows if r["split"] == "val"][0]["value"])


def test_schedule_and_phases():
    assert warmup_cosine(0, 4, 100) == pytest.approx(0.2)
    assert warmup_cosine(4, 4, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(52, 4, 100) == pytest.approx(0.5)
    ph = validate_phases([{"epochs": 1, "cgr": False}, {"epochs": 1, "cgr": True}])
    assert phase_at(ph, 500, 0)[1]["cgr"] is False and phase_at(ph, 0, 1)[1]["cgr"] is True
    assert phase_at(ph, 0, 5)[0] == 1
    ph = validate_phases([{"steps": 10, "cgr": False}, {"cgr": True}])
    assert phase_at(ph, 9, 3)[0] == 0 and phase_at(ph, 10, 0)[0] == 1
    with pytest.raises(StampInputError):
        validate_phases([{"steps": 1}, {"epochs": 1}])
    with pytest.raises(StampInputError):
        validate_phases([{"cgr": False}, {"steps": 1}])


def test_config_validation_and_precision():
    with pytest.raises(StampInputError, match="unknown"):
        TrainerConfig.from_dict({"max_step": 3})
    with pytest.raises(StampInputError):
        TrainerConfig.from_dict({"precision": "fp8"})
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_bf16_autocast_trains(tmp_path):
    model = ToyModel()
    before = _params(model)
    Trainer(model, _cfg(max_steps=2, precision="bf16", ckpt_every=0, val_every=0), tmp_path, ToyData()).fit()
    after = _params(model)
    assert all(v.dtype == torch.float32 for v in after.values())  # master weights stay fp32
    assert any(not torch.equal(before[k], after[k]) for k in before)


class NaNAfter(ToyModel):
    """A model whose loss turns NaN from optimizer step ``bad`` on (as a diverging run's would)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.step = bad, 0

    def on_train_step(self, step, epoch):
        self.step = step

    def forward(self, batch):
        out = super().forward(batch)
        if self.step >= self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


@pytest.mark.parametrize("bad", [0, 5])
def test_a_non_finite_loss_stops_training_and_saves_no_checkpoint_of_it(tmp_path, bad):
    with pytest.raises(StampInputError, match=f"the loss became nan at optimizer step {bad + 1}") as err:
        Trainer(NaNAfter(bad), _cfg(val_every=0), tmp_path, ToyData()).fit()
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert steps == ([] if bad == 0 else ["step-0000004"])  # only the checkpoint before the NaN
    for s in steps:
        sd, _ = load_checkpoint(tmp_path / "checkpoints" / s)
        assert all(torch.isfinite(v).all() for v in sd.values())
    assert ("the last good checkpoint" in str(err.value)) == bool(steps)


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_a_damaged_trainer_state_is_named_on_resume(tmp_path, content):
    Trainer(ToyModel(), _cfg(max_steps=4, val_every=0), tmp_path, ToyData()).fit()
    state = tmp_path / "checkpoints" / "step-0000004" / "trainer_state.pt"
    if content is None:
        torch.save({"step": 4}, state)  # readable, but not a trainer state
    else:
        state.write_bytes(content)
    with pytest.raises(StampInputError, match="trainer state") as err:
        Trainer(ToyModel(), _cfg(max_steps=8, val_every=0), tmp_path, ToyData()).fit()
    assert "trainer_state.pt" in str(err.value) and "step-0000004" in str(err.value)


def test_trainer_settings_out_of_range_are_refused():
    for bad in ({"lr": float("inf")}, {"lr": -1}, {"lr": float("nan")}, {"seed": -1}, {"grad_accum": 0},
                {"betas": [0.9, 1.0]}, {"warmup_steps": -5}, {"max_steps": 0}):
        with pytest.raises(StampInputError, match=f"'{next(iter(bad))}'"):
            TrainerConfig.from_dict(bad)


def test_resume_with_other_model_settings_names_them(tmp_path):
    arch = {"kind": "toy", "architecture": {"backbone": "efficientnet_lite0", "width": 16}}
    Trainer(ToyModel(), _cfg(max_steps=2, val_every=0), tmp_path, ToyData(), checkpoint_config=arch).fit()
    other = {"kind": "toy", "architecture": {"backbone": "resnet18", "width": 16}}
    with pytest.raises(StampInputError, match="other model settings.*backbone: 'efficientnet_lite0' in the run, "
                                              "'resnet18' now") as err:
        Trainer(ToyModel(), _cfg(max_steps=4, val_every=0), tmp_path, ToyData(), checkpoint_config=other).fit()
    assert "intact" not in str(err.value)
