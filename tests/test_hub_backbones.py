"""Hub backbones load from a locally built Hugging Face cache with HF_HUB_OFFLINE=1 (no network anywhere):
a TRIDENT-style name (uni_v1) and timm:hf-hub:ORG/NAME, the local-file override, and the messages for a
model that is not cached or is gated. huggingface_hub reads HF_HOME / HF_HUB_OFFLINE when imported, so the
loads run in a fresh interpreter with that environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
SRC = str(Path(__file__).resolve().parents[1] / "src")
UNI_ARGS = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0}


def _cache_model(hf_home: Path, repo: str, **args) -> torch.nn.Module:
    """A tiny timm ViT saved in the hub cache layout (refs/main -> snapshots/<sha>/config.json + weights)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, **args).eval()
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True)
    save_for_hf(model, str(snap), safe_serialization=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    return model


def _run(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": SRC,
           "STAMP_ST_WEIGHTS_DIR": str(hf_home / "no_local_weights"), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("STAMP_ST_UNI_WEIGHTS", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


LOAD = """
import json, sys, torch, numpy as np
torch.set_num_threads(1)
from stamp_st.models.backbones import create_backbone
from stamp_st.errors import StampInputError
x = torch.from_numpy(np.load(sys.argv[1] if len(sys.argv) > 1 else "{x}"))
out = {{}}
for name, weights in {cases}:
    try:
        bb = create_backbone(name, weights=weights)
    except StampInputError as err:
        out[name + "|" + str(weights)] = {{"error": str(err)}}
        continue
    with torch.no_grad():
        f = bb.model.eval()(bb.transform(x))
    out[name + "|" + str(weights)] = {{"dim": bb.embed_dim, "weights": bb.weights, "mean": list(bb.transform.mean),
                       "feat": f.numpy().tolist()}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    uni = _cache_model(home, "MahmoodLab/UNI", **UNI_ARGS)
    other = _cache_model(home, "someone/tiny-vit", num_classes=0)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8))
    np.save(home / "x.npy", x.numpy())
    return home, uni, other, x


def test_hub_names_load_from_the_local_cache_offline(hub_home, tmp_path):
    from safetensors.torch import save_file

    from stamp_st.models.backbones import IMAGENET_MEAN, IMAGENET_STD, normalise_images

    home, uni, other, x = hub_home
    local = tmp_path / "other.safetensors"
    perturbed = {k: v + 1.0 if k == "norm.bias" else v for k, v in other.state_dict().items()}
    save_file(perturbed, str(local))
    cases = [("uni_v1", None), ("timm:hf-hub:someone/tiny-vit", None), ("timm:hf-hub:someone/tiny-vit", str(local)),
             ("uni_v2", None)]
    r = _run(home, LOAD.format(x=home / "x.npy", cases=repr(cases)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want_uni = uni(normalise_images(x, IMAGENET_MEAN, IMAGENET_STD, 224)).numpy()
    got = out["uni_v1|None"]
    assert got["weights"] == "hf-hub:MahmoodLab/UNI" and got["dim"] == uni.num_features
    assert got["mean"] == list(IMAGENET_MEAN)  # UNI's card: ImageNet normalisation
    np.testing.assert_allclose(np.array(got["feat"]), want_uni, atol=1e-4)
    # timm:hf-hub: preprocessing from the repository's own config
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=other)
    with torch.no_grad():
        want_other = other(normalise_images(x, cfg["mean"], cfg["std"], cfg["input_size"][-1])).numpy()
    np.testing.assert_allclose(np.array(out["timm:hf-hub:someone/tiny-vit|None"]["feat"]), want_other, atol=1e-4)
    # a local file wins over the hub's weights
    over = out[f"timm:hf-hub:someone/tiny-vit|{local}"]
    assert over["weights"] == str(local)
    assert not np.allclose(np.array(over["feat"]), want_other, atol=1e-3)
    # a model that is not cached, offline: says why and both ways out
    err = out["uni_v2|None"]["error"]
    assert "MahmoodLab/UNI2-h" in err and "HF_HUB_OFFLINE" in err and "--backbone-weights" in err


def test_gated_message_says_how_to_get_access():
    from huggingface_hub.errors import GatedRepoError

    from stamp_st.models.hub import _hub_error

    gated = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants an HTTP response object
    Exception.__init__(gated, "403 gated")
    err = _hub_error("MahmoodLab/UNI", gated, "uni")
    text = str(err)
    assert "https://huggingface.co/MahmoodLab/UNI" in text and "HF_TOKEN" in text
    assert "--backbone-weights" in text and "STAMP_ST_UNI_WEIGHTS" in text


def test_unsupported_and_old_names():
    from stamp_st.errors import StampInputError
    from stamp_st.models.backbones import create_backbone
    from stamp_st.models.hub import HUB_MODELS, TIMM_HUB_PREFIX, UNSUPPORTED

    def is_hub_name(name: str) -> bool:  # a name models/hub.py builds (TRIDENT-style names, timm:hf-hub:...)
        return name in HUB_MODELS or name in UNSUPPORTED or name.startswith(TIMM_HUB_PREFIX)

    with pytest.raises(StampInputError, match="conch_v15"):
        create_backbone("conch_v15")
    assert {"uni_v1", "uni_v2", "conch_v1", "virchow2", "hoptimus0", "hoptimus1", "gigapath"} <= set(HUB_MODELS)
    assert not any(is_hub_name(n) for n in ("uni", "conch_vit_b16", "efficientnet_lite0", "timm:resnet18"))
