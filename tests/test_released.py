"""Released STAMP weights: our module tree has exactly the release's names and shapes; their files load
strictly (``module.`` / Lightning prefixes, the unused template layer); conversion to our format."""

from __future__ import annotations

import warnings

import pytest
import torch

from stamp_st.errors import StampInputError
from stamp_st.models.released import (
    build_released_model,
    convert_released,
    load_released,
    normalise_released_keys,
)


@pytest.fixture(scope="module")
def released_table(data_root):
    p = data_root.parent / "docs" / "released_stamp_state_dict.tsv"
    if not p.is_file():
        pytest.skip(f"released state dict table absent: {p}")
    rows = [line.rstrip("\n").split("\t") for line in p.read_text().splitlines()[1:] if line.strip()]
    return {name: (shape, dtype) for name, shape, dtype in rows}


def _shape(t: torch.Tensor) -> str:
    return "scalar" if t.ndim == 0 else "x".join(map(str, t.shape))


def test_released_architecture_has_the_release_names_and_shapes(released_table):
    sd = build_released_model(device="meta").state_dict()  # meta: no memory, names and shapes only
    expected = {k: v for k, v in released_table.items() if not k.startswith("spot_backbone.encoder_layer.")}
    assert len(released_table) - len(expected) == 12  # the unused template layer, dropped on load
    assert sorted(set(expected) - set(sd)) == []
    assert sorted(set(sd) - set(expected)) == []
    assert {k: _shape(v) for k, v in sd.items()} == {k: s for k, (s, _) in expected.items()}
    assert {str(v.dtype).removeprefix("torch.") for v in sd.values()} == {d for _, d in expected.values()}


def _tiny_released(seed=0):
    """The release's module tree at toy sizes (tiny ViT at 64 px, one-layer gene encoder)."""
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder, GeneEncoderConfig
    from stamp_st.models.stamp import StampModel

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, img_size=64)
    bb.transform.size_px = 64
    cfg = GeneEncoderConfig(name="t", vocab_size=200, d_model=32, n_layers=1, n_heads=4, d_ff=64, context=40,
                            cgr_head=False)
    return StampModel(GeneEncoder(cfg), bb, released=True)


def _as_release_file(model) -> dict:
    """A state dict laid out as the release writes it: + the template layer copy, under ``module.``."""
    sd = dict(model.state_dict())
    for k, v in list(sd.items()):
        if k.startswith("spot_backbone.encoder.layers.0."):
            sd["spot_backbone.encoder_layer." + k.split("layers.0.", 1)[1]] = v.clone()
    return {"module." + k: v.clone() for k, v in sd.items()}


def test_release_file_formats_load_strictly(tmp_path):
    src = _tiny_released(seed=1).eval()
    sd = _as_release_file(src)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    lightning = {"epoch": 3, "state_dict": {"model." + k.removeprefix("module."): v for k, v in sd.items()}}
    torch.save(lightning, tmp_path / "last.ckpt")
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    tokens = torch.randint(30, 230, (2, 30))
    with torch.no_grad():
        ref_v, ref_g = src.encode_image(x), src.encode_genes(tokens)
    for name, prefix in (("pytorch_model.bin", "module."), ("last.ckpt", "model.")):
        dst = _tiny_released(seed=2)
        model, report = load_released(tmp_path / name, model=dst)
        assert report.prefix_removed == prefix
        assert len(report.ignored) == 12 and all(k.startswith("spot_backbone.encoder_layer.") for k in report.ignored)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(x), ref_v)
            torch.testing.assert_close(model.encode_genes(tokens), ref_g)


def test_mismatching_state_dict_is_refused():
    sd = _as_release_file(_tiny_released())
    sd.pop("module.patch_projection.bias")
    sd["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(StampInputError, match="1 missing.*1 unexpected"):
        load_released(sd, model=_tiny_released())
    with pytest.raises(StampInputError, match="not a STAMP state dict"):
        normalise_released_keys({"encoder.weight": torch.zeros(1)})


def test_convert_released_writes_a_loadable_checkpoint(tmp_path):
    from stamp_st.cli import main
    from stamp_st.models.stamp import load_stamp

    src = _tiny_released(seed=3).eval()
    torch.save(_as_release_file(src), tmp_path / "pytorch_model.bin")
    out = convert_released(tmp_path / "pytorch_model.bin", tmp_path / "conv", vocabulary=None, model=_tiny_released())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_stamp(out)
    assert loaded.released and loaded.pooling == "released"
    assert loaded.stamp_config["source"]["ignored_keys"]
    tokens = torch.randint(30, 230, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_genes(tokens), src.encode_genes(tokens))
    # the CLI reports a bad file as a user error (exit 2)
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    assert main(["convert-released", str(tmp_path / "junk.bin"), str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_full_size_release_state_dict_loads_and_embeds(released_table):
    """Random tensors with every name and shape of the release (+ ``module.``) load with nothing missing or
    unexpected into the full UNI + reference model, which then produces finite embeddings."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, (shape, _) in released_table.items():
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        sd["module." + name] = torch.randn(dims, generator=g) * 0.02
    sd["module.logit_scale"] = torch.tensor(4.0)
    model, report = load_released(sd)
    assert report.prefix_removed == "module." and len(report.ignored) == 12
    with torch.no_grad():
        v = model.encode_image(torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8))
        g_emb = model.encode_genes(torch.randint(30, 20_340, (1, 1500)))
    assert v.shape == g_emb.shape == (1, 512) and torch.isfinite(v).all() and torch.isfinite(g_emb).all()
    assert float(model.logit_scale.detach()) == 4.0


def _lightning():
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return __import__(name, fromlist=["Trainer"])
        except ImportError:
            continue
    pytest.skip("neither lightning nor pytorch-lightning is installed (pip install -e '.[dev]')")


def test_a_checkpoint_written_by_lightning_converts(tmp_path):
    """``Trainer.save_checkpoint`` after a few steps under the release's cosine-warmup scheduler (its learning
    rates are numpy float64: ``np.cos``) holds numpy scalars and dtypes in the optimizer and scheduler state;
    ``torch.load(weights_only=True)`` alone refuses them. The module's own names are the release's (no prefix)."""
    import numpy as np
    from torch import optim

    pl = _lightning()

    class CosineWarmup(optim.lr_scheduler.LRScheduler):  # the release's schedule, numpy maths included
        def __init__(self, optimizer, warmup, max_epochs):
            self.warmup, self.max_num_epochs = warmup, max_epochs
            super().__init__(optimizer)

        def get_lr(self):
            f = 0.5 * (1 + np.cos(np.pi * self.last_epoch / self.max_num_epochs))
            if self.last_epoch <= self.warmup:
                f *= self.last_epoch * 1.0 / self.warmup
            return [max(1e-5, b * f) for b in self.base_lrs]

    src = _tiny_released(seed=4)

    class ReleaseLike(pl.LightningModule):
        def __init__(self, lr: float = 1e-4, warmup: int = 2, max_epochs: int = 10):
            super().__init__()
            self.save_hyperparameters()
            for name, child in src.named_children():
                self.add_module(name, child)
            self.logit_scale = src.logit_scale

        def training_step(self, batch, _):
            return self.patch_projection(batch[0]).pow(2).mean() + self.logit_scale * 0

        def configure_optimizers(self):
            opt = optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.001)
            return [opt], [{"scheduler": CosineWarmup(opt, self.hparams.warmup, self.hparams.max_epochs),
                            "interval": "step"}]

    module = ReleaseLike()
    d = src.patch_projection.in_features
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, d)), batch_size=2)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    ckpt = tmp_path / "epoch=0-step=3.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert isinstance(raw["lr_schedulers"][0]["_last_lr"][0], np.floating)  # what made it fail before
    with pytest.raises(Exception, match="numpy"):
        torch.load(ckpt, map_location="cpu", weights_only=True)

    model, report = load_released(ckpt, model=_tiny_released(seed=5))
    assert report.prefix_removed == ""
    with torch.no_grad():
        for k, v in module.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    out = convert_released(ckpt, tmp_path / "conv", vocabulary=None, model=_tiny_released(seed=6))
    assert (out / "model.safetensors").is_file()


def test_a_pickle_naming_any_other_global_is_refused(tmp_path):
    import os

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    sd = _as_release_file(_tiny_released())
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "callbacks": {"x": Payload()}}, bad)
    with pytest.raises(StampInputError, match="evil.ckpt"):
        load_released(bad, model=_tiny_released())
    assert not marker.exists()


def test_a_wrong_shape_is_reported_with_expected_and_found_shapes():
    sd = _as_release_file(_tiny_released())
    w = sd["module.patch_projection.weight"]
    sd["module.patch_projection.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
    with pytest.raises(StampInputError) as err:
        load_released(sd, model=_tiny_released())
    expected = f"patch_projection.weight: expected {list(w.shape)}, found {[w.shape[0] + 1, w.shape[1]]}"
    assert expected in str(err.value)
