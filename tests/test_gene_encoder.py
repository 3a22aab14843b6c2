"""Gene encoder: equality with nn.TransformerEncoder, released parameter names, objectives, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stamp_st.errors import StampInputError
from stamp_st.models.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from stamp_st.models.gene_encoder import (
    REGISTERED_CONFIGS,
    GeneEncoder,
    GeneEncoderConfig,
)
from stamp_st.models.released import load_released_gene_encoder
from stamp_st.training.gene_objectives import GenePretrainModel, mask_tokens

torch.set_num_threads(1)
SMALL = GeneEncoderConfig(name="unit", vocab_size=120, d_model=32, n_layers=2, n_heads=4, d_ff=64, context=48)


def _tokens(n: int, L: int, lengths, vocab=SMALL.vocab_size, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(30, 30 + vocab, (n, L), generator=g)
    for i, ln in enumerate(lengths):
        t[i, ln:] = 0
    return t


def _reference_encoder(cfg: GeneEncoderConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=0.0, batch_first=True,
                                       layer_norm_eps=cfg.layer_norm_eps, norm_first=False)
    return nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)


@pytest.mark.parametrize("train_mode", [True, False])
def test_layers_equal_torch_transformer_encoder(train_mode):
    torch.manual_seed(0)
    m = GeneEncoder(SMALL)
    ref = _reference_encoder(SMALL)
    sd = {k.removeprefix("encoder."): v for k, v in m.state_dict().items() if k.startswith("encoder.")}
    ref.load_state_dict(sd)  # identical names: strict load
    tokens = _tokens(4, 40, [40, 25, 7, 33])
    pad = tokens == 0
    x = m.embeddings(tokens.masked_fill(pad, 1)) + m.positional_embedding.weight[:40]
    m.train(train_mode)
    ref.train(train_mode)
    with torch.no_grad():
        ours = m.encode(tokens)
        theirs = ref(x, src_key_padding_mask=pad)
    keep = ~pad
    torch.testing.assert_close(ours[keep], theirs[keep], atol=2e-5, rtol=1e-4)


def test_padding_does_not_change_real_positions_and_context_truncates():
    torch.manual_seed(0)
    m = GeneEncoder(SMALL).eval()
    t = _tokens(2, 20, [20, 12])
    longer = torch.cat([t, torch.zeros(2, 15, dtype=torch.long)], 1)
    with torch.no_grad():
        a, b = m.encode(t), m.encode(longer)
        torch.testing.assert_close(a[0], b[0, :20], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1, :12], b[1, :12], atol=1e-5, rtol=1e-5)
        assert m.encode(_tokens(1, 100, [100])).shape[1] == SMALL.context
        # an all-padding row must not poison the batch with NaN
        assert torch.isfinite(m.encode(torch.cat([t, torch.zeros(1, 20, dtype=torch.long)]))).all()


def test_embed_pooling_modes():
    torch.manual_seed(0)
    m = GeneEncoder(SMALL).eval()
    t = _tokens(3, 30, [30, 10, 5])
    mean = m.embed(t, "mean")
    h = m.encode(t)
    torch.testing.assert_close(mean[1], h[1, :10].mean(0), atol=1e-5, rtol=1e-5)
    rel = m.embed(t, "released")
    full = torch.nn.functional.pad(t, (0, SMALL.context - 30))
    torch.testing.assert_close(rel, m.encode(full)[:, 3:].mean(1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rel, mean)
    with pytest.raises(StampInputError):
        m.embed(t, "max")


def test_registered_configs_and_reference_size():
    cfgs = {n: GeneEncoderConfig.load(n) for n in REGISTERED_CONFIGS}
    ref = cfgs["reference"]
    assert (ref.n_layers, ref.d_model, ref.n_heads, ref.d_ff, ref.context) == (12, 512, 16, 1024, 1500)
    assert ref.n_tokens == 20_340
    with torch.device("meta"):
        m = GeneEncoder(ref)
    n = sum(p.numel() for p in m.parameters())
    n_cgr = sum(p.numel() for p in m.cgr_head.parameters())
    stray = sum(p.numel() for p in m.encoder.layers[0].parameters())  # the release's encoder_layer copy
    # METHOD.md: 49 M parameters, 59 M with the CGR head (the release's count includes the stray copy)
    assert 48.5e6 < n - n_cgr + stray < 49.5e6 and 58.5e6 < n + stray < 59.5e6
    with pytest.raises(StampInputError):
        GeneEncoderConfig.load("huge")
    with pytest.raises(StampInputError):
        GeneEncoderConfig.from_json({"d_model": 30, "n_heads": 4})


def _released_spot_backbone_state(data_root) -> dict:
    tsv = data_root.parent / "docs" / "released_stamp_state_dict.tsv"
    if not tsv.is_file():
        pytest.skip(f"released state dict listing absent: {tsv}")
    sd = {}
    for line in tsv.read_text().splitlines()[1:]:
        name, shape, _ = line.split("\t")
        if name.startswith("spot_backbone."):
            dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
            sd["module." + name] = torch.randn(dims) if len(dims) < 2 else torch.empty(dims).normal_(0, 0.02)
    return sd


def test_released_state_dict_loads_without_missing_or_unexpected(data_root):
    released = _released_spot_backbone_state(data_root)
    assert any(".encoder_layer." in k for k in released)  # the stray template copy is there
    m = GeneEncoder("reference")
    missing, unexpected = load_released_gene_encoder(m, released)
    assert missing == [] and unexpected == []
    w = released["module.spot_backbone.encoder.layers.11.linear2.weight"]
    assert torch.equal(m.encoder.layers[11].linear2.weight, w)
    assert torch.equal(m.classifier_head.bias, released["module.spot_backbone.classifier_head.bias"])
    # our encoder's own keys, except the CGR head, are exactly the release's (minus encoder_layer.*)
    rel_names = {k.removeprefix("module.spot_backbone.") for k in released if ".encoder_layer." not in k}
    ours = {k for k in m.state_dict() if not k.startswith("cgr_head.")}
    assert ours == rel_names
    # a wrong-size config is refused with a clear error
    with pytest.raises(StampInputError, match="shape"):
        load_released_gene_encoder(GeneEncoder("tiny"), released)


def test_mask_tokens_rates():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(30, 150, (200, 100), generator=g)
    pad = torch.zeros_like(t, dtype=torch.bool)
    pad[:, 80:] = True
    out, sel = mask_tokens(t, pad, 150, 0.15, generator=g)
    assert not sel[pad].any()
    rate = sel.float().sum() / (~pad).sum()
    assert 0.13 < rate < 0.17
    masked = (out == 0) & sel
    assert 0.75 < masked.sum() / sel.sum() < 0.85
    assert torch.equal(out[~sel], t[~sel])
    assert (out[sel] >= 0).all() and (out[sel] < 150).all()


def test_gathered_logits_equal_full_head():
    torch.manual_seed(0)
    enc = GeneEncoder(SMALL)
    tokens = torch.stack([_tokens(9, 40, [40, 30, 20, 10, 40, 5, 1, 40, 39], seed=s) for s in range(3)])
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 1:] = False  # a centre without neighbours: no CGR target
    batch = {"tokens": tokens, "spot_valid": valid}
    outs = {}
    for mode in ("gathered", "full"):
        torch.manual_seed(5)
        outs[mode] = GenePretrainModel(enc, logits=mode, trim=mode == "gathered")(batch)
    for k in ("igr_loss", "cgr_loss", "igr_acc", "cgr_acc", "igr_tokens"):
        torch.testing.assert_close(outs["gathered"][k], outs["full"][k], atol=1e-5, rtol=1e-5)
    assert outs["full"]["cgr_tokens"] == 40 + 40  # centres of groups 0 and 1 only
    assert outs["full"]["spots"] == 9 + 4 + 1


def test_cgr_uses_only_valid_neighbours():
    torch.manual_seed(0)
    enc = GeneEncoder(SMALL)
    tokens = torch.stack([_tokens(9, 20, [20] * 9, seed=3)])
    valid = torch.ones(1, 9, dtype=torch.bool)
    valid[0, 5:] = False
    model = GenePretrainModel(enc, mask_prob=0.0)
    a = model({"tokens": tokens, "spot_valid": valid})["cgr_loss"]
    changed = tokens.clone()
    changed[0, 6] = torch.randint(30, 150, (20,))  # an invalid neighbour's content must not matter
    b = model({"tokens": changed, "spot_valid": valid})["cgr_loss"]
    torch.testing.assert_close(a, b)
    changed[0, 2] = torch.randint(30, 150, (20,))
    c = model({"tokens": changed, "spot_valid": valid})["cgr_loss"]
    assert not torch.allclose(a, c)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = GeneEncoder(SMALL)
    cfg = checkpoint_config("gene_encoder", SMALL.to_json(), vocabulary={"gene_ids": ["a"], "checksum": "x"},
                            tokenizer={"context": 48}, crop={"patch_um": 112.0})
    out = save_checkpoint(tmp_path / "ck", m.state_dict(), cfg)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    sd, cfg2 = load_checkpoint(out, expect_kind="gene_encoder")
    assert cfg2["vocab_checksum"] == "x" and cfg2["crop"] == {"patch_um": 112.0}
    m2 = GeneEncoder(GeneEncoderConfig.from_json(cfg2["architecture"]))
    m2.load_state_dict(sd)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    save_checkpoint(out, {"w": torch.zeros(2)}, cfg, overwrite=True)  # replaces atomically
    assert list(load_checkpoint(out)[0]) == ["w"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(StampInputError, match="expected"):
        load_checkpoint(out, expect_kind="stamp")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(StampInputError, match="cannot read"):
        load_checkpoint(out)
    with pytest.raises(StampInputError):
        load_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_head_loss_matches_the_logits_path(bf16):
    """head_ce_and_acc (chunked, no [N x vocabulary] logits kept) = cross-entropy of head(h): loss, accuracy and
    the gradients of h, the weight and the bias; fp32 and under bf16 autocast."""
    from stamp_st.training import gene_objectives as ge

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300)
    h = torch.randn(70, 16)
    target = torch.randint(0, 300, (70,))
    target[:5] = head(h[:5]).argmax(-1)  # some right answers: the accuracy is not trivially 0
    res = {}
    for name in ("logits", "fused"):
        hh = h.clone().requires_grad_(True)
        head.zero_grad()
        old = ge.HEAD_CE_CHUNK_ROWS
        ge.HEAD_CE_CHUNK_ROWS = 32  # several chunks, the last one partial
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if name == "logits":
                    loss, acc = ge._ce_and_acc(head(hh), target, hh)
                else:
                    loss, acc = ge.head_ce_and_acc(head, hh, target, hh)
            (loss * 0.5).backward()
        finally:
            ge.HEAD_CE_CHUNK_ROWS = old
        res[name] = (loss.detach(), acc, hh.grad, head.weight.grad.clone(), head.bias.grad.clone())
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-6, "rtol": 1e-5}
    for a, b in zip(res["logits"], res["fused"]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), **tol)
    assert res["fused"][1] > 0
