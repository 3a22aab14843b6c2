"""The gene-encoder benchmarks' own pieces: the per-layer poolings read the same states as the encoder, and
the selection's two clustering protocols separate well-separated clusters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
torch.set_num_threads(1)
SMALL = GeneEncoderConfig(name="unit", vocab_size=120, d_model=32, n_layers=2, n_heads=4, d_ff=64, context=48)


def test_layer_poolings_match_the_encoder():
    from gene_encoder_heldout import layer_means, pooled

    torch.manual_seed(0)
    m = GeneEncoder(SMALL).eval()
    t = torch.randint(30, 150, (3, 60))
    t[1, 10:] = 0
    t[2, 5:] = 0
    means = layer_means(m, t)
    assert len(means) == SMALL.n_layers + 1
    torch.testing.assert_close(means[-1], m.embed(t, "mean"), atol=1e-5, rtol=1e-5)
    cat = pooled(m, t, "mean_cat")
    assert cat.shape == (3, SMALL.n_layers * SMALL.d_model)
    torch.testing.assert_close(cat[:, -SMALL.d_model:], means[-1])
    torch.testing.assert_close(pooled(m, t, "mean_l1"), means[1])


def test_selection_protocols_find_separated_clusters():
    from gene_encoder_selection import kmeans_ari

    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"], dtype=object), 40)
    centres = rng.normal(0, 10, (3, 8))
    x = centres[np.repeat(np.arange(3), 40)] + rng.normal(0, 1, (120, 8))
    slides = np.array(["s1", "s2"] * 60)
    for protocol in ("z", "centre"):
        r = kmeans_ari(x, y, slides, protocol)
        assert set(r["per_section"]) == {"s1", "s2"} and r["ari"] > 0.9
    noise = rng.normal(0, 1, (120, 8))
    assert kmeans_ari(noise, y, slides, "centre")["ari"] < 0.3
