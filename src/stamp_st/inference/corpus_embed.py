"""Embeddings of every spot of a ``paired`` corpus by several STAMP checkpoints at once, plus the unaligned
backbone: what cross-validation needs (``stamp-st align --folds`` leaves one model per held-out slide and a
final one, each to be applied to every spot).

Models fine-tuned in their last blocks share the frozen trunk of the pretrained CNN, and frozen gene
encoders are equal too, so the trunk and the gene encoder run once per spot and each model adds only its
tail and heads. Models with different trainable tails (an ablation of ``trainable_blocks``) form one group
per trunk, each trunk run once. The crops are the corpus's own, i.e. those that training saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..embedding_file import OBSM_BACKBONE, OBSM_STAMP_F, OBSM_STAMP_G, OBSM_STAMP_V, OBSM_STAMP_V_JOINT


def iter_corpus_spots(corpus: str | Path):
    """Every sample of a paired corpus once, in manifest order: (meta, patch uint8 HWC, storage tokens)."""
    from ..corpus.datasets import PairedSpotDataset
    from ..corpus.layout import META, TOKENS, read_manifest, sample_image
    from ..corpus.shards import iter_shard

    manifest, _ = read_manifest(corpus)
    if manifest.get("kind") != "paired":
        from ..errors import StampInputError

        raise StampInputError(f"needs a 'paired' corpus, this one is {manifest.get('kind')!r}", corpus)
    ds = PairedSpotDataset(corpus, split=None, shuffle=False)  # its shard list and URL resolution
    for shard in ds.shards:
        for s in iter_shard(ds.url(shard)):
            yield s[META], sample_image(s, "patch"), s[TOKENS]


def gene_corpus_tokens(corpus: str | Path, slides: list[str], split: str | None = "val"):
    """(slide ids, spot ids, storage tokens [n, context]) of every real spot of ``slides`` in a ``genes``
    corpus (its samples are spatial groups; each spot is stored once). ``split``: refuse a slide that is not
    in this split (e.g. ``val``: held out of Stage 1)."""
    from ..corpus.layout import META, SPOT_VALID, TOKENS, pad_tokens, read_manifest
    from ..corpus.shards import iter_shard
    from ..errors import StampInputError

    manifest, base = read_manifest(corpus)
    context = int(manifest.get("tokenizer", {}).get("context") or 1500)
    shards = [sh for sh in manifest.get("shards", []) if sh["slide_id"] in set(slides)]
    missing = sorted(set(slides) - {sh["slide_id"] for sh in shards})
    if missing:
        raise StampInputError(f"slides {missing} are not in the corpus", corpus)
    sid, spot, toks = [], [], []
    for sh in shards:
        if split is not None and sh["split"] != split:
            raise StampInputError(f"{sh['slide_id']} is in the corpus's {sh['split']!r} split, not {split!r}",
                                  corpus, hint="evaluate the gene encoder on slides it was not trained on")
        for s in iter_shard(str(Path(base) / sh["url"])):
            ids = s[META].get("spot_ids") or [s[META].get("spot_id")]
            tok = s[TOKENS] if s[TOKENS].ndim == 2 else s[TOKENS][None]
            valid = s.get(SPOT_VALID, np.ones(len(ids), bool))
            for j, (sp_id, ok) in enumerate(zip(ids, valid)):
                if ok and sp_id:
                    sid.append(sh["slide_id"])
                    spot.append(sp_id)
                    toks.append(pad_tokens(tok[j], context))  # samples are trimmed to their longest spot
    return np.asarray(sid), np.asarray(spot), np.stack(toks)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trunk_modules(vb) -> torch.nn.ModuleList:
    b = vb.base_model
    cut = len(b.blocks) - (vb.tail_blocks or 0)
    return torch.nn.ModuleList([b.conv_stem, b.bn1, b.blocks[:cut]])


def _trunk_groups(models: list) -> list[tuple[object, list]]:
    """(representative, members) of the models whose frozen trunks compute the same maps: the same split
    point, input transform and trunk weights. Models that cannot split run in full and are in no group."""
    from ..models.pretext import PretextConvNet

    groups: list[tuple[object, list]] = []
    for m in models:
        vb = m.visual_backbone
        if not isinstance(vb, PretextConvNet) or vb.tail_blocks is None:
            continue
        for rep, members in groups:
            rb = rep.visual_backbone
            if (rb.tail_blocks == vb.tail_blocks and rep.transform == m.transform
                    and _same_weights(_trunk_modules(rb), _trunk_modules(vb))):
                members.append(m)
                break
        else:
            groups.append((m, [m]))
    return groups


CORPUS_EMBEDDINGS = ("stamp_v", "stamp_v_joint", "stamp_g")
# the embedding file's obsm key of each of embed_corpus's results
OBSM_KEYS = {"stamp_v": OBSM_STAMP_V, "stamp_v_joint": OBSM_STAMP_V_JOINT, "stamp_g": OBSM_STAMP_G, "stamp_f": OBSM_STAMP_F,
             "backbone": OBSM_BACKBONE}


@torch.no_grad()
def embed_corpus(checkpoints: dict[str, str | Path], corpus: str | Path, backbone: str | None = None,
                 batch_size: int = 64, progress: bool = True) -> dict:
    """``checkpoints``: name -> STAMP checkpoint folder. Returns spot identities and, per name, Stamp_V (the
    aligned encoder's feature), its joint-space projection, Stamp_G and Stamp_F [n, d] (float32), plus the
    unaligned ``backbone`` feature when one is named."""
    from tqdm.auto import tqdm

    from ..corpus.layout import pad_tokens
    from ..models.backbones import create_backbone
    from ..models.pretext import PretextConvNet
    from ..models.stamp import StampModel, load_stamp

    models = {name: load_stamp(path) for name, path in checkpoints.items()}
    for m in models.values():
        tb = (m.stamp_config.get("align") or {}).get("trainable_blocks")
        vb = m.visual_backbone
        if isinstance(vb, PretextConvNet) and vb.supports_trunk_split():
            vb.set_tail_blocks(int(tb) if tb is not None else 0)
    first = next(iter(models.values()))
    base = None
    if backbone:
        base = StampModel(first.spot_backbone, create_backbone(backbone)).eval()
        base.transform = first.transform  # the same input size and normalisation as the aligned models
        if isinstance(base.visual_backbone, PretextConvNet) and base.visual_backbone.supports_trunk_split():
            base.visual_backbone.set_tail_blocks(first.visual_backbone.tail_blocks or 0)
    image_models = list(models.values()) + ([base] if base is not None else [])
    groups = _trunk_groups(image_models)
    trunk_of = {id(m): rep for rep, members in groups for m in members}
    share_genes = all(_same_weights(m.spot_backbone, first.spot_backbone) and m.pooling == first.pooling
                      for m in models.values())
    context = first.spot_backbone.config.context

    ids: dict[str, list] = {"slide_ids": [], "spot_ids": [], "xy_px": []}
    out: dict[str, dict[str, list]] = {k: {n: [] for n in models} for k in CORPUS_EMBEDDINGS}
    bb: list[torch.Tensor] = []

    def flush(patches, tokens):
        x = torch.from_numpy(np.stack(patches))
        toks = torch.from_numpy(np.stack([pad_tokens(t, context) for t in tokens]))
        trunks = {id(rep): rep.visual_backbone.trunk(rep.prepare_images(x)) for rep, _ in groups}

        def image_feature(m):
            rep = trunk_of.get(id(m))
            return (m.encode_image(x, space="backbone") if rep is None
                    else m.visual_backbone.patch_from_trunk(trunks[id(rep)]))

        feat_g = first.gene_features(toks) if share_genes else None
        for name, m in models.items():
            pf = image_feature(m)
            out["stamp_v"][name].append(pf)
            out["stamp_v_joint"][name].append(m.encode_image(patch_feat=pf))
            g = m.gene_features(toks) if feat_g is None else feat_g
            out["stamp_g"][name].append(m.encode_genes(gene_feat=g))
        if base is not None:
            bb.append(image_feature(base))

    patches, tokens = [], []
    for meta, patch, tok in tqdm(iter_corpus_spots(corpus), desc="embed corpus", unit="spot", disable=not progress):
        ids["slide_ids"].append(meta["slide_id"])
        ids["spot_ids"].append(meta["spot_id"])
        ids["xy_px"].append(meta["xy_px"])
        patches.append(patch)
        tokens.append(tok)
        if len(patches) == batch_size:
            flush(patches, tokens)
            patches, tokens = [], []
    if patches:
        flush(patches, tokens)
    in_full = len(image_models) - len(trunk_of)  # models that cannot split at a trunk
    result = {"slide_ids": np.asarray(ids["slide_ids"]), "spot_ids": np.asarray(ids["spot_ids"]),
              "xy_px": np.asarray(ids["xy_px"], dtype=np.float64),
              "shared_trunk": len(groups) == 1 and in_full == 0, "trunk_passes": len(groups) + in_full}
    for k in CORPUS_EMBEDDINGS:
        result[k] = {n: torch.cat(v).float().numpy() for n, v in out[k].items()}
    result["stamp_f"] = {n: StampModel.fuse(torch.from_numpy(result["stamp_v_joint"][n]),
                                            torch.from_numpy(result["stamp_g"][n])).numpy() for n in models}
    if base is not None:
        result["backbone"] = torch.cat(bb).float().numpy()
    return result
