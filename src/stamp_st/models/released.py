"""The authors' released STAMP weights: read their ``pytorch_model.bin`` (or a Lightning ``.ckpt``), load it
into ``StampModel`` in ``released`` mode (or its gene encoder alone into a ``GeneEncoder``), and convert it to
this project's checkpoint format. The one place that knows the release's key layout.

Their file holds the state dict of their ``Stamp`` module (names, shapes: docs/
released_stamp_state_dict.tsv), sometimes under a ``module.`` (DDP) or Lightning attribute prefix. It also
carries ``spot_backbone.encoder_layer.*``: the template layer ``nn.TransformerEncoder`` keeps next to its
12 copies, never used in the forward pass; it is dropped, and reported, on load. The release has no CGR
head, so the gene encoder is built with ``cgr_head: false``; every other key must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import StampInputError
from .backbones import load_state_dict_file, shape_mismatches

RELEASED_ROOTS = ("spot_backbone.", "spot_projection.", "visual_backbone.", "patch_projection.",
                  "region_projection.", "positioning_projection.", "logit_scale")
UNUSED_PREFIXES = ("spot_backbone.encoder_layer.",)


@dataclass
class ReleasedLoadReport:
    n_tensors: int
    ignored: list[str] = field(default_factory=list)
    prefix_removed: str = ""


def normalise_released_keys(sd: dict, source: str | Path | None = None) -> tuple[dict, str]:
    """Strip the wrapper prefix (``module.``, Lightning's ``model.`` or any attribute name) in front of the
    release's module names; returns (state dict, removed prefix)."""
    anchor = next((k for k in sd if k.endswith("logit_scale") or ".visual_backbone." in f".{k}"), None)
    anchor = anchor or next((k for k in sd if ".spot_backbone." in f".{k}"), None)  # the gene encoder's part alone
    if anchor is None:
        raise StampInputError("not a STAMP state dict: no logit_scale / visual_backbone.* keys", source,
                              "give the released pytorch_model.bin (or its Lightning .ckpt)")
    if anchor.endswith("logit_scale"):
        prefix = anchor[: -len("logit_scale")]
    else:
        root = ".visual_backbone." if ".visual_backbone." in f".{anchor}" else ".spot_backbone."
        prefix = anchor[: (f".{anchor}").index(root)]
    if prefix and not all(k.startswith(prefix) for k in sd if k.removeprefix(prefix).startswith(RELEASED_ROOTS)):
        prefix = ""
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return out, prefix


def read_released_state_dict(path: str | Path) -> tuple[dict, ReleasedLoadReport]:
    """Released weights from disk (``weights_only=True``), keys normalised, unused template layer dropped."""
    sd = load_state_dict_file(path)
    sd, prefix = normalise_released_keys(sd, path)
    return _drop_unused(sd, prefix)


def _drop_unused(sd: dict, prefix: str = "") -> tuple[dict, ReleasedLoadReport]:
    ignored = sorted(k for k in sd if k.startswith(UNUSED_PREFIXES))
    kept = {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}
    return kept, ReleasedLoadReport(len(kept), ignored, prefix)


def load_released_gene_encoder(encoder, state_dict: dict, strict: bool = True):
    """The release's gene encoder weights into ``encoder`` (a ``GeneEncoder``): from a full ``Stamp`` state dict
    (any wrapper prefix) its ``spot_backbone.*`` keys, or the encoder's own state dict (``module.`` stripped);
    the unused template layer is dropped. The release has no CGR head: it stays as initialised. Returns
    (missing, unexpected) as ``load_state_dict`` does."""
    if not any(".spot_backbone." in f".{k}" for k in state_dict):  # the encoder's own keys
        state_dict = {"spot_backbone." + k.removeprefix("module."): v for k, v in state_dict.items()}
    sd, prefix = normalise_released_keys(state_dict)
    sd, _ = _drop_unused(sd, prefix)
    sd = {k.removeprefix("spot_backbone."): v for k, v in sd.items() if k.startswith("spot_backbone.")}
    own = encoder.state_dict()
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if bad:
        raise StampInputError(f"released weights of another shape than the {encoder.config.name!r} config expects"
                              f"{shape_mismatches(own, sd, bad)}", hint="load released weights into the 'reference' config")
    missing, unexpected = encoder.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("cgr_head.")]
    if strict and (missing or unexpected):
        raise StampInputError(f"released state dict does not match the gene encoder: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return missing, unexpected


def released_architecture_kwargs() -> dict:
    """Gene encoder config of the release: the reference architecture without our CGR head."""
    from .gene_encoder import GeneEncoderConfig

    cfg = GeneEncoderConfig.load("reference").to_json()
    cfg.update(name="released", cgr_head=False)
    return cfg


def build_released_model(device: str | torch.device = "meta", backbone: str = "uni"):
    """An empty ``StampModel`` shaped like the release (UNI ViT-L/16, reference gene encoder, released
    pooling). ``device="meta"`` allocates nothing: for checking names and shapes."""
    from .backbones import create_backbone
    from .gene_encoder import GeneEncoder
    from .stamp import StampModel

    with torch.device(device):
        bb = create_backbone(backbone, pretrained=False)
        enc = GeneEncoder(released_architecture_kwargs())
        return StampModel(enc, bb, released=True)


def load_released(source, model=None, device: str | torch.device = "cpu"):
    """Released weights (a path or a state dict) -> ``StampModel`` in released mode, strict.

    Returns (model, report). A given ``model`` must have the release's architecture."""
    if isinstance(source, (str, Path)):
        sd, report = read_released_state_dict(source)
        where = source
    else:
        sd, prefix = normalise_released_keys(dict(source))
        sd, report = _drop_unused(sd, prefix)
        where = None
    if model is None:
        model = build_released_model(device="cpu")
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or bad:
        raise StampInputError(
            f"released state dict does not match STAMP: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(bad)} with other shapes"
            f"{shape_mismatches(own, sd, bad)}", where, "give the authors' pytorch_model.bin for the UNI backbone")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return model.to(device).eval(), report


def convert_released(in_path: str | Path, out_dir: str | Path, vocabulary=None, model=None,
                     overwrite: bool = False) -> Path:
    """Released ``pytorch_model.bin``/``.ckpt`` -> a stamp-st checkpoint folder (kind ``stamp``, released mode).

    ``vocabulary`` defaults to the released vocabulary in the data directory (the one the weights use);
    ``model`` (tests) replaces the full-size released architecture."""
    from ..preprocessing.tokenizer import RankTokenizer
    from ..preprocessing.vocab import GeneVocabulary
    from .checkpoint import check_checkpoint_target
    from .stamp import save_stamp

    check_checkpoint_target(Path(out_dir), overwrite)  # before the slow load: OUT may hold the input itself
    model, report = load_released(in_path, model=model)
    if vocabulary is None:
        try:
            vocabulary = GeneVocabulary.default()
        except StampInputError:
            vocabulary = None
    tokenizer = RankTokenizer(vocabulary, context=1500, rounded_means=True).config() if vocabulary else None
    return save_stamp(out_dir, model, overwrite=overwrite, vocabulary=vocabulary, tokenizer=tokenizer,
                      source={"released_weights": str(in_path), "ignored_keys": report.ignored,
                              "prefix_removed": report.prefix_removed})
