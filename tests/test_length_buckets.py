"""Length bucketing in Stage 1 is exact: on the same batch, with the masking RNG fixed, encoding the spots in
groups of similar length, each trimmed, gives the losses, hidden states and gradients of the batch padded to
the full context (float tolerance: only the shapes of the reductions differ)."""

from __future__ import annotations

import copy

import pytest
import torch

from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
from stamp_st.training.gene_objectives import GenePretrainModel

CTX = 64
CFG = GeneEncoderConfig(name="t", vocab_size=200, d_model=32, n_layers=2, n_heads=4, d_ff=64, context=CTX)


def _batch(seed: int = 0, B: int = 4, G: int = 9) -> dict:
    """Groups of 9 rank-ordered spots with lengths from 1 to the context; centres longer than some neighbours
    and shorter than others; a few invalid (empty) neighbours."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, CTX + 1, (B, G), generator=g)
    lens[0, 0] = CTX  # the longest spot fills the context: trimming to the batch maximum changes nothing
    lens[1, 0] = 5  # a short centre among long neighbours
    lens[2, 0] = 60  # a long centre among short neighbours (CGR reads their padding positions)
    lens[2, 1:] = torch.randint(1, 10, (G - 1,), generator=g)
    tokens = torch.randint(30, CFG.n_tokens, (B, G, CTX), generator=g)
    tokens[torch.arange(CTX)[None, None, :] >= lens[..., None]] = 0
    tokens[3, 4] = 0  # an empty neighbour
    valid = torch.ones(B, G, dtype=torch.bool)
    valid[1, 7] = False
    return {"tokens": tokens, "spot_valid": valid}


def _run(model: GenePretrainModel, batch: dict, seed: int = 123):
    model.zero_grad()
    torch.manual_seed(seed)  # the masks come from the global RNG, drawn on [N, L] before encoding
    out = model(batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("cgr", [False, True])
def test_bucketed_equals_padded_to_context(cgr):
    torch.manual_seed(0)
    base = GenePretrainModel(GeneEncoder(CFG), cgr=cgr, trim=False, length_buckets=1)  # the release's padding
    bucketed = copy.deepcopy(base)
    bucketed.trim, bucketed.length_buckets = True, 4
    batch = _batch()
    ref, g_ref = _run(base, batch)
    got, g_got = _run(bucketed, batch)
    for k in ("igr_loss", "igr_acc", "igr_tokens") + (("cgr_loss", "cgr_acc", "cgr_tokens") if cgr else ()):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert g_got.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_got[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_per_spot_hidden_states_equal_where_read():
    torch.manual_seed(1)
    enc = GeneEncoder(CFG).eval()
    tokens = _batch(2)["tokens"].reshape(-1, CTX)
    tokens = tokens[(tokens != 0).any(1)]
    lens = (tokens != 0).sum(1)
    with torch.no_grad():
        full = enc.encode(tokens)
        for buckets in (2, 3, 7):
            got = enc.encode_bucketed(tokens, buckets=buckets)
            for i, n in enumerate(lens.tolist()):
                torch.testing.assert_close(got[i, :n], full[i, :n], rtol=1e-5, atol=1e-5)
        need = torch.full_like(lens, CTX)
        torch.testing.assert_close(enc.encode_bucketed(tokens, need=need, buckets=3), full, rtol=1e-5, atol=1e-5)


def test_cgr_neighbours_are_computed_up_to_the_centre_length():
    """The guard that makes CGR exact: neighbours computed only up to their own length would change the CGR
    loss (it averages their padding positions too), so the comparison above can fail."""
    torch.manual_seed(0)
    model = GenePretrainModel(GeneEncoder(CFG), cgr=True, trim=True, length_buckets=4)
    batch = _batch()
    ref, _ = _run(model, batch)
    own_length = model.encoder.encode_bucketed

    def naive(tokens, pad, need, buckets):
        return own_length(tokens, pad, None, buckets)

    model.encoder.encode_bucketed = naive
    got, _ = _run(model, batch)
    torch.testing.assert_close(got["igr_loss"], ref["igr_loss"], rtol=1e-5, atol=1e-6)
    assert abs(got["cgr_loss"].item() - ref["cgr_loss"].item()) > 1e-3


def test_length_groups_is_the_least_cost_cut():
    """The grouping is the cheapest cut into at most k contiguous groups (checked against every cut), and one
    group where splitting saves little."""
    import itertools

    import numpy as np

    from stamp_st.models.gene_encoder import length_groups

    def cost(need, bounds):
        return sum((b - a) * (3.0 * need[b - 1] + 0.01 * need[b - 1] ** 2) for a, b in bounds)

    rng = np.random.default_rng(0)
    for _ in range(200):
        need = np.sort(rng.choice([8, 16, 24, 40, 64, 128, 1500], int(rng.integers(1, 11))))
        k = int(rng.integers(1, 5))
        got = length_groups(need, k, 3.0, 0.01, min_saving=0.0)
        n = len(need)
        assert got[0][0] == 0 and got[-1][1] == n and len(got) <= k
        assert all(got[i][1] == got[i + 1][0] for i in range(len(got) - 1))
        best = min(cost(need, list(zip((0,) + c, c + (n,))))
                   for g in range(1, k + 1) for c in itertools.combinations(range(1, n), g - 1))
        assert cost(need, got) == pytest.approx(best)
    assert length_groups(np.full(20, 1500), 4, 3.0, 0.01) == [(0, 20)]
    assert length_groups(np.array([100] * 3 + [1500] * 20), 4, 3.0, 0.01) == [(0, 3), (3, 23)]
