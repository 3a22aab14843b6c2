"""Backbones: the offline default carries real ImageNet weights; gated models need local files and say so."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stamp_st.errors import StampInputError
from stamp_st.models.backbones import create_backbone, efficientnet_lite0_weight_file, normalise_images

torch.set_num_threads(1)


def _grace_hopper() -> Path:
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not p.is_file():
        pytest.skip("matplotlib sample image absent")
    return p


def test_efficientnet_lite0_has_real_imagenet_weights():
    """The packaged weights load strictly and recognise a photograph: Grace Hopper in uniform is ImageNet
    class 652 'military uniform' (the classic example of the TF/Keras docs); random weights cannot do that."""
    from PIL import Image

    bb = create_backbone("efficientnet_lite0", num_classes=1000)
    bb.model.eval()
    img = np.asarray(Image.open(_grace_hopper()).convert("RGB").resize((224, 224), Image.BICUBIC)).copy()
    x = bb.transform(torch.from_numpy(img))
    with torch.no_grad():
        top5 = bb.model(x).softmax(-1).topk(5).indices[0].tolist()
    assert top5[0] == 652, top5


def test_efficientnet_lite0_headless_default_differs_from_random_init():
    bb = create_backbone("efficientnet_lite0")
    rnd = create_backbone("efficientnet_lite0", pretrained=False)
    assert bb.embed_dim == 1280 and not bb.is_vit
    assert bb.weights == str(efficientnet_lite0_weight_file())
    w, r = bb.model.conv_stem.weight, rnd.model.conv_stem.weight
    assert not torch.allclose(w, r)
    # BatchNorm statistics come from training, random init has 0/1
    assert not torch.allclose(bb.model.bn1.running_var, torch.ones_like(bb.model.bn1.running_var))
    with torch.no_grad():
        assert bb.model.eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 1280)


def test_uni_without_weights_names_the_gated_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("STAMP_ST_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("STAMP_ST_UNI_WEIGHTS", raising=False)
    with pytest.raises(StampInputError, match="MahmoodLab/UNI"):
        create_backbone("uni")
    with pytest.raises(StampInputError, match="not found|no local weights"):
        create_backbone("uni", weights=tmp_path / "missing.bin")


def test_uni_architecture_has_the_uni_arguments():
    with torch.device("meta"):
        bb = create_backbone("uni", pretrained=False)
    m = bb.model
    assert bb.is_vit and bb.embed_dim == 1024 and len(m.blocks) == 24
    assert m.num_classes == 0 and m.dynamic_img_size
    assert "blocks.0.ls1.gamma" in m.state_dict()  # init_values set -> LayerScale present
    assert bb.native_um_per_px == 0.5 and bb.transform.mean == (0.485, 0.456, 0.406)


def test_local_weight_files_load_strictly(tmp_path):
    from safetensors.torch import save_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = create_backbone("timm:vit_tiny_patch16_224", pretrained=False).model
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.bin")
    for f in ("w.safetensors", "w.bin"):
        bb = create_backbone("timm:vit_tiny_patch16_224", weights=tmp_path / f)
        for k, v in bb.model.state_dict().items():
            torch.testing.assert_close(v, sd[k])
        assert bb.is_vit and bb.weights.endswith(f)
        assert bb.transform.mean == tuple(bb.model.pretrained_cfg["mean"])
    bad = dict(sd)
    bad.pop("cls_token")
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(StampInputError, match="1 missing"):
        create_backbone("timm:vit_tiny_patch16_224", weights=tmp_path / "bad.safetensors")


def test_timm_without_weights_is_refused_unless_random_is_asked_for():
    with pytest.raises(StampInputError, match="no local weights"):
        create_backbone("timm:resnet18")
    with pytest.raises(StampInputError, match="unknown timm model"):
        create_backbone("timm:not_a_model", pretrained=False)
    with pytest.raises(StampInputError, match="unknown backbone"):
        create_backbone("resnet")


def test_normalise_images_uint8_hwc_to_normalised_nchw():
    img = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    img[..., 0] = 255
    x = normalise_images(img, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (2, 3, 8, 8)
    torch.testing.assert_close(x[:, 0], torch.full((2, 8, 8), 2.0))
    torch.testing.assert_close(x[:, 1], torch.full((2, 8, 8), -2.0))
    assert normalise_images(img, (0.5,) * 3, (0.5,) * 3, size_px=4).shape == (2, 3, 4, 4)
