"""Every hub name we share with TRIDENT gives TRIDENT's feature for it. Each case re-types, from
mahmoodlab/TRIDENT's trident/patch_encoder_models/load.py, the encoder's ``timm.create_model`` arguments, its
``eval_transforms`` (torchvision on a PIL image, as TRIDENT applies them) and its ``forward``; a random model
(fixed seed) built that way hands its state dict to our wrapper through a weight file, and both see the same
tile. The full-size graphs are compared on the meta device (parameter names and shapes, output dimension);
the forward pass runs on a one-block version of the same arguments on both sides, to stay fast on a CPU.
CONCH is built with CONCH's own constructor (PyPI conch-fork, the code TRIDENT imports)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def _trident(name: str, **over):
    """(model, eval_transform, forward) as TRIDENT builds them for ``name`` (re-typed from load.py)."""
    import timm
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    swiglu = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
    img_size = 224

    def norm(ms):
        return transforms.Normalize(mean=ms[0], std=ms[1])

    uni_t = transforms.Compose([transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.ToTensor(),
                                norm(IMAGENET)])
    if name == "uni_v1":
        kw = {"img_size": img_size, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
        return timm.create_model("vit_large_patch16_224", **kw, **over), uni_t, lambda m, x: m(x)
    if name == "uni_v2":
        kw = {"img_size": img_size, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
              "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
              "reg_tokens": 8, "dynamic_img_size": True, **swiglu}
        return timm.create_model(model_name="vit_giant_patch14_224", pretrained=False, **{**kw, **over}), uni_t, \
            lambda m, x: m(x)
    if name == "gigapath":
        kw = {"img_size": img_size, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
              "mlp_ratio": 5.33334, "num_classes": 0, "dynamic_img_size": True}
        t = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                                transforms.CenterCrop(224), transforms.ToTensor(), norm(IMAGENET)])
        return timm.create_model("vit_giant_patch14_dinov2", pretrained=False, **{**kw, **over}), t, lambda m, x: m(x)
    if name in ("virchow", "virchow2"):
        kw = {"img_size": img_size, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
              "dynamic_img_size": True, **swiglu}
        if name == "virchow2":
            kw["reg_tokens"] = 4
        t = transforms.Compose([transforms.Resize(img_size, interpolation=InterpolationMode.BICUBIC),
                                transforms.ToTensor(), norm(IMAGENET)])
        first_patch = 5 if name == "virchow2" else 1

        def fwd(m, x):
            output = m(x)
            class_token = output[:, 0]
            patch_tokens = output[:, first_patch:]
            return torch.cat([class_token, patch_tokens.mean(1)], dim=-1)

        return timm.create_model("vit_huge_patch14_224", **{**kw, **over}), t, fwd
    if name in ("hoptimus0", "hoptimus1"):
        kw = {"num_classes": 0, "img_size": img_size, "global_pool": "token", "init_values": 1e-5,
              "dynamic_img_size": True}
        t = transforms.Compose([transforms.Resize(img_size), transforms.ToTensor(), norm(HOPTIMUS)])
        return timm.create_model("vit_giant_patch14_reg4_dinov2", **{**kw, **over}), t, lambda m, x: m(x)
    if name == "resnet50":
        kw = {"features_only": True, "out_indices": [3], "num_classes": 0}
        t = transforms.Compose([transforms.Resize(224, interpolation=InterpolationMode.BILINEAR, max_size=None,
                                                  antialias=True), transforms.CenterCrop(224),
                                transforms.ToTensor(), norm(IMAGENET)])
        pool = torch.nn.AdaptiveAvgPool2d(1)

        def fwd(m, x):
            out = m(x)
            if isinstance(out, list):
                out = out[0]
            return pool(out).squeeze(-1).squeeze(-1)

        return timm.create_model("resnet50", pretrained=False, **kw), t, fwd
    raise KeyError(name)


VIT_NAMES = ["uni_v1", "uni_v2", "gigapath", "virchow", "virchow2", "hoptimus0", "hoptimus1"]
FULL_DIM = {"uni_v1": 1024, "uni_v2": 1536, "gigapath": 1536, "virchow": 2560, "virchow2": 2560,
            "hoptimus0": 1536, "hoptimus1": 1536, "resnet50": 1024, "conch_v1": 512}


def _tiles(side_px: int, n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(side_px)
    return [Image.fromarray(rng.integers(0, 256, (side_px, side_px, 3), dtype=np.uint8)) for _ in range(n)]


def _ours(bb, tiles: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    t = bb.transform
    x = t(t.prepare_uint8(torch.from_numpy(np.stack([np.asarray(im) for im in tiles]))))
    with torch.no_grad():
        return x, bb.eval().features(x)


def test_every_shared_trident_name_is_checked_here():
    from stamp_st.models.hub import HUB_MODELS, UNSUPPORTED

    trident_names = {"conch_v1", "conch_v15", "uni_v1", "uni_v2", "ctranspath", "phikon", "phikon_v2", "resnet50",
                     "keep", "gigapath", "virchow", "virchow2", "hoptimus0", "hoptimus1", "h0-mini", "musk",
                     "openmidnight", "gpfm", "hibou_l", "kaiko-vitb8", "kaiko-vitb16", "kaiko-vits8",
                     "kaiko-vits16", "kaiko-vitl14", "lunit-vits8", "genbio-pathfm"}  # encoder_factory's list
    shared = (set(HUB_MODELS) | set(UNSUPPORTED)) & trident_names
    assert shared - set(UNSUPPORTED) == set(VIT_NAMES) | {"resnet50", "conch_v1"}


@pytest.mark.parametrize("name", VIT_NAMES + ["resnet50"])
def test_full_graph_matches_trident(name):
    """Parameter names and shapes of the full-size graph (meta device: no memory) and the feature size."""
    from stamp_st.models.backbones import create_backbone

    with torch.device("meta"):
        theirs, _, fwd = _trident(name)
        ours = create_backbone(name, pretrained=False)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.model.state_dict().items()}
    assert got == want
    assert ours.embed_dim == FULL_DIM[name]
    with torch.device("meta"):
        x = torch.empty(1, 3, 224, 224)
        assert fwd(theirs, x).shape[-1] == ours.features(x).shape[-1] == FULL_DIM[name]


@pytest.mark.parametrize("name", VIT_NAMES + ["resnet50"])
@pytest.mark.parametrize("side_px", [224, 256])
def test_same_tile_same_feature(name, side_px, tmp_path):
    """TRIDENT's preprocessing and forward vs ours on the same tiles, same weights: a tile of the model's size and
    a 256-px tile (resized and cropped by each name's own rule)."""
    from safetensors.torch import save_file

    from stamp_st.models.backbones import create_backbone

    small = {} if name == "resnet50" else {"depth": 1}
    torch.manual_seed(0)
    theirs, transform, fwd = _trident(name, **small)
    theirs.eval()
    sd = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    if name == "resnet50":  # TRIDENT loads a full ResNet-50 file (strict=False); give ours the same file
        full = __import__("timm").create_model("resnet50", num_classes=0).state_dict()
        sd = {**full, **sd}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    ours = create_backbone(name, weights=str(path), **small)
    tiles = _tiles(side_px)
    x_theirs = torch.stack([transform(im) for im in tiles])
    x_ours, f_ours = _ours(ours, tiles)
    torch.testing.assert_close(x_ours, x_theirs, atol=1e-6, rtol=0)  # preprocessing: the same tensor
    with torch.no_grad():
        f_theirs = fwd(theirs, x_theirs)
    assert f_ours.shape == f_theirs.shape
    torch.testing.assert_close(f_ours, f_theirs, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def conch_checkpoint(tmp_path_factory):
    """A random CONCH built by CONCH's own constructor (conch_ViT-B-16 config), saved as its checkpoint."""
    coca = pytest.importorskip("conch.open_clip_custom.coca_model")
    import json
    from importlib import resources

    cfg = json.loads((resources.files("conch.open_clip_custom") / "model_configs" / "conch_ViT-B-16.json")
                     .read_text())
    cfg.pop("custom_text", None)
    torch.manual_seed(0)
    model = coca.CoCa(**cfg)
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    # the image tower's tensors (CONCH's loader is strict=False: the text tower stays as built); a smaller file
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("visual.")}, path)
    return path


@pytest.mark.slow
def test_conch_v1_is_tridents_conch(conch_checkpoint):
    """TRIDENT's Conchv1InferenceEncoder: create_model_from_pretrained('conch_ViT-B-16', checkpoint_path=...),
    then encode_image(x, proj_contrast=False, normalize=False): 512-d, 448 px, OpenAI-CLIP normalisation."""
    from conch.open_clip_custom import create_model_from_pretrained

    from stamp_st.models.backbones import create_backbone

    model, eval_transform = create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=str(conch_checkpoint))
    model.eval()
    ours = create_backbone("conch_v1", weights=str(conch_checkpoint))
    sd = torch.load(conch_checkpoint, map_location="cpu", weights_only=True)
    assert tuple(sd["visual.trunk.pos_embed"].shape) == (1, 785, 768)  # CONCH's own 448-px graph loads as it is
    assert ours.embed_dim == 512 and ours.transform.size_px == 448
    for side_px in (224, 512):  # upsampled to 448 (TRIDENT's 224-px tiles), and downsampled
        tiles = _tiles(side_px, n=1)
        x_theirs = torch.stack([eval_transform(im) for im in tiles])
        x_ours, f_ours = _ours(ours, tiles)
        torch.testing.assert_close(x_ours, x_theirs, atol=1e-6, rtol=0)
        with torch.no_grad():
            f_theirs = model.encode_image(x_theirs, proj_contrast=False, normalize=False)
        assert f_theirs.shape == (1, 512)
        torch.testing.assert_close(f_ours, f_theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_conch_trunk_has_its_own_name_and_loads_the_448_checkpoint(conch_checkpoint):
    """conch_vit_b16: the trunk's 768-d class token at 224 px, from the same checkpoint (position embedding
    resampled to 14 x 14 as CONCH's loader does for another size); alignment refuses conch_v1 and names it."""
    from stamp_st.errors import StampInputError
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.gene_encoder import GeneEncoder
    from stamp_st.models.stamp import StampModel

    trunk = create_backbone("conch_vit_b16", weights=str(conch_checkpoint))
    assert trunk.embed_dim == 768 and trunk.transform.size_px == 224 and trunk.head is None
    sd = torch.load(conch_checkpoint, map_location="cpu", weights_only=True)
    torch.testing.assert_close(trunk.model.blocks[0].attn.qkv.weight, sd["visual.trunk.blocks.0.attn.qkv.weight"])
    with pytest.raises(StampInputError, match="conch_vit_b16"):
        StampModel(GeneEncoder("tiny"), create_backbone("conch_v1", pretrained=False))


def test_conch_v1_refuses_a_bare_trunk(tmp_path):
    from safetensors.torch import save_file

    from stamp_st.errors import StampInputError
    from stamp_st.models.backbones import create_backbone

    path = tmp_path / "trunk.safetensors"
    save_file({"pos_embed": torch.zeros(1, 197, 768)}, str(path))  # a bare timm trunk's keys, no visual.* prefix
    with pytest.raises(StampInputError, match="not a CONCH checkpoint"):
        create_backbone("conch_v1", weights=str(path))
