"""StampLoss: exactness of the distributed loss, masking of invalid CSP targets, neighbour-aware negatives."""

from __future__ import annotations

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.nn.functional as F

from stamp_st.models.stamp import LOGIT_SCALE_MAX, scale_from_param
from stamp_st.training.losses import StampLoss

N, D, WORLD = 6, 8, 2  # spots per rank, embedding size, processes


def _inputs(seed: int = 0, n: int = N * WORLD) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "patch": torch.randn(n, D, generator=g), "region": torch.randn(n, D, generator=g),
        "spot": torch.randn(n, D, generator=g), "pretext": torch.randn(n, D, generator=g),
        "windows": torch.randn(n, 9, D, generator=g),
        "region_label": torch.randint(0, 9, (n,), generator=g),
        # uneven: rank 0 has 2 invalid spots, rank 1 has 1
        "region_valid": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)[:n],
        "xy_um": torch.rand(n, 2, generator=g) * 400.0,
        "slide_idx": torch.tensor([0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0])[:n],
    }


def _loss(inp: dict, loss_fn: StampLoss, logit_scale: torch.Tensor) -> dict:
    norm = {k: F.normalize(inp[k], dim=-1) for k in ("patch", "region", "spot", "pretext", "windows")}
    return loss_fn(**norm, region_label=inp["region_label"], region_valid=inp["region_valid"],
                   logit_scale=logit_scale, xy_um=inp["xy_um"], slide_idx=inp["slide_idx"])


GRAD_KEYS = ("patch", "region", "spot", "pretext", "windows")


def _worker(rank: int, port: int, out_dir: str, radius):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        full = _inputs()
        sl = slice(rank * N, (rank + 1) * N)
        inp = {k: (v[sl].clone().requires_grad_(k in GRAD_KEYS)) for k, v in full.items()}
        scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
        out = _loss(inp, StampLoss(gather=True, neighbour_radius_um=radius), scale)
        out["loss"].backward()
        torch.save({"out": {k: v.detach() for k, v in out.items()},
                    "grads": {k: inp[k].grad for k in GRAD_KEYS}, "scale_grad": scale.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # gloo's teardown at interpreter exit sometimes aborts ("terminate called without an active exception")
    # after the work is done and saved: leave without running C++ destructors
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("radius", [None, 150.0])
def test_two_process_gathered_loss_equals_single_process(radius):
    """Mean over ranks of the loss == single-process loss on the global batch; rank gradients / world
    (DDP averages them) == single-process gradients, for every input and for the temperature."""
    import torch.multiprocessing as mp

    full = _inputs()
    single_inp = {k: v.clone().requires_grad_(k in GRAD_KEYS) for k, v in full.items()}
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    single = _loss(single_inp, StampLoss(gather=True, neighbour_radius_um=radius), scale)
    single["loss"].backward()

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(_free_port(), tmp, radius), nprocs=WORLD, join=True,
                           start_method="spawn")
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]

    for key in ("loss", "loss_patch_spot", "loss_region_spot", "loss_patch_region", "loss_csp", "csp_acc"):
        mean = sum(r["out"][key] for r in ranks) / WORLD
        torch.testing.assert_close(mean, single[key].detach(), rtol=1e-5, atol=1e-6, msg=key)
    for key in GRAD_KEYS:
        dist_grad = torch.cat([r["grads"][key] for r in ranks]) / WORLD
        torch.testing.assert_close(dist_grad, single_inp[key].grad, rtol=1e-4, atol=1e-6, msg=key)
    scale_grad = sum(r["scale_grad"] for r in ranks) / WORLD
    torch.testing.assert_close(scale_grad, scale.grad, rtol=1e-4, atol=1e-6)


def test_symmetric_infonce_matches_reference():
    inp = _inputs()
    out = _loss(inp, StampLoss(), torch.tensor(math.log(1 / 0.07)))
    p, s = F.normalize(inp["patch"], dim=-1), F.normalize(inp["spot"], dim=-1)
    logits = (1 / 0.07) * p @ s.T
    labels = torch.arange(p.shape[0])
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(out["loss_patch_spot"], ref)


def test_invalid_region_spots_are_masked_out_of_csp_only():
    inp = _inputs()
    base = _loss(inp, StampLoss(), torch.tensor(2.0))
    changed = dict(inp, region_label=inp["region_label"].clone(), windows=inp["windows"].clone())
    invalid = ~inp["region_valid"]
    changed["region_label"][invalid] = (changed["region_label"][invalid] + 4) % 9
    changed["windows"][invalid] = torch.randn_like(changed["windows"][invalid])
    other = _loss(changed, StampLoss(), torch.tensor(2.0))
    torch.testing.assert_close(base["loss_csp"], other["loss_csp"])  # invalid spots do not count
    # ... but they still count in the contrastive losses
    flipped = dict(inp, patch=inp["patch"].clone())
    flipped["patch"][invalid] = torch.randn_like(flipped["patch"][invalid])
    assert not torch.allclose(_loss(flipped, StampLoss(), torch.tensor(2.0))["loss_patch_spot"],
                              base["loss_patch_spot"])
    none_valid = dict(inp, region_valid=torch.zeros_like(inp["region_valid"]))
    assert float(_loss(none_valid, StampLoss(), torch.tensor(2.0))["loss_csp"]) == 0.0


def test_temperature_is_clamped_at_100():
    assert float(scale_from_param(torch.tensor(10.0))) == LOGIT_SCALE_MAX
    assert math.isclose(float(scale_from_param(torch.tensor(math.log(1 / 0.07)))), 1 / 0.07, rel_tol=1e-6)


def test_neighbour_mask_removes_near_same_slide_negatives():
    loss = StampLoss(neighbour_radius_um=100.0)
    xy = torch.tensor([[0.0, 0.0], [50.0, 0.0], [50.0, 0.0], [500.0, 0.0]])
    slide = torch.tensor([0, 0, 1, 0])
    near = loss.neighbour_matrix(0, 4, xy_um=xy, slide_idx=slide, xy_all=xy, slide_all=slide)
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(near, expected)  # other slide and far spot stay negatives; never the positive
    # a masked negative cannot change the anchor's loss; without the mask it does
    q = F.normalize(torch.randn(1, D), dim=-1)
    keys = F.normalize(torch.randn(4, D), dim=-1)
    moved = keys.clone()
    moved[1] = q[0]  # near neighbour 1 becomes a perfect match for anchor 0
    scale = torch.tensor(10.0)
    masked = [loss._contrastive(q, k, scale, 0, near[:1]) for k in (keys, moved)]
    plain = [StampLoss()._contrastive(q, k, scale, 0, None) for k in (keys, moved)]
    torch.testing.assert_close(masked[0], masked[1])
    assert float(plain[1]) > float(plain[0]) + 0.5
    moved_far = keys.clone()
    moved_far[3] = q[0]  # the far spot is still a negative under the mask
    assert float(loss._contrastive(q, moved_far, scale, 0, near[:1])) > float(masked[0]) + 0.5


def test_expression_similarity_threshold_and_soft_mode():
    g = torch.randn(4, 16)
    sim = g.clone()
    sim[1] = g[0] * 2  # cosine 1 with spot 0
    loss = StampLoss(expr_sim_threshold=0.95, neighbour_mode="soft", soft_target=0.5)
    near = loss.neighbour_matrix(0, 4, sim_emb=sim, sim_all=sim)
    assert near[0, 1] and near[1, 0] and int(near.sum()) == 2
    inp = {k: F.normalize(torch.randn(4, D), dim=-1) for k in ("patch", "region", "spot", "pretext")}
    out = loss(**inp, windows=F.normalize(torch.randn(4, 9, D), dim=-1), region_label=torch.zeros(4, dtype=torch.long),
               region_valid=torch.ones(4, dtype=torch.bool), logit_scale=torch.tensor(2.0), sim_emb=sim)
    hard = StampLoss()(**inp, windows=F.normalize(torch.randn(4, 9, D), dim=-1),
                       region_label=torch.zeros(4, dtype=torch.long), region_valid=torch.ones(4, dtype=torch.bool),
                       logit_scale=torch.tensor(2.0))
    assert not torch.allclose(out["loss_patch_spot"], hard["loss_patch_spot"])
    with pytest.raises(ValueError):
        StampLoss(neighbour_mode="ignore")
