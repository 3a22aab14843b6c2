"""Control corpora: copies of a paired corpus that break one link on purpose, to measure what a model
learns without it. ``shuffled_genes_copy`` keeps every spot's images and gives it the tokens of another spot
of the same slide: alignment trained on it can gain only from the images (augmentation, the new stain's
statistics, the image-only losses), never from the pairing with genes.

The copy is a corpus in its own right: shards written by ``shards.write_shard`` (so every shard's size and
sha256 in its ``manifest.json`` are its own), the source's gene means beside it, and a ``control`` record in
the manifest naming what was shuffled."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import StampInputError
from .layout import GENE_MEANS_NAME, MANIFEST_NAME, TOKENS, read_manifest, write_manifest
from .shards import iter_shard_raw, write_shard


def shuffled_genes_copy(src: str | Path, dst: str | Path, seed: int = 0) -> Path:
    """Write ``dst``: the paired corpus ``src`` with each slide's token arrays permuted among its spots (a
    permutation drawn per slide from ``seed``, across all of the slide's shards). Reuses ``dst`` when it is
    already a finished copy of ``src`` with this seed; refuses a ``dst`` that holds anything else."""
    src, dst = Path(src), Path(dst)
    man, _ = read_manifest(src)
    if man.get("kind") != "paired":
        raise StampInputError(f"a gene-shuffled control needs a 'paired' corpus, this one is {man.get('kind')!r}",
                              src)
    control = {"kind": "shuffled_genes_within_slide", "seed": int(seed),
               "source_settings_hash": man.get("settings_hash"),
               "source_shards_sha256": [sh["sha256"] for sh in man["shards"]]}
    if (dst / MANIFEST_NAME).is_file():
        old, _ = read_manifest(dst)
        if old.get("control") == control:
            return dst
        raise StampInputError("the output folder holds another corpus", dst,
                              hint="choose an empty folder for the shuffled copy")
    if dst.exists() and any(dst.iterdir()):
        raise StampInputError("the output folder is not empty", dst, hint="choose an empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards_by_slide: dict[str, list[dict]] = {}
    for sh in man["shards"]:
        shards_by_slide.setdefault(sh["slide_id"], []).append(sh)
    new_shards = {}
    for shards in shards_by_slide.values():
        samples = [list(iter_shard_raw(str(src / sh["url"]))) for sh in shards]
        tokens = [raw[TOKENS] for per in samples for raw in per]
        perm = rng.permutation(len(tokens))
        k = 0
        for sh, per in zip(shards, samples):
            for raw in per:
                raw[TOKENS] = tokens[perm[k]]
                k += 1
            rec = write_shard(dst / sh["url"], [{kk: v for kk, v in raw.items() if kk != "__url__"} for raw in per])
            if rec["n_samples"] != sh["n_samples"]:
                raise StampInputError(f"shard {sh['url']} has {rec['n_samples']} samples, its manifest says "
                                      f"{sh['n_samples']}", src / sh["url"], hint="rebuild the source corpus")
            new_shards[sh["url"]] = rec
    if (src / GENE_MEANS_NAME).is_file():  # the same spots, the same expression: the same means
        shutil.copyfile(src / GENE_MEANS_NAME, dst / GENE_MEANS_NAME)
    out = dict(man)
    out["shards"] = [{**sh, "bytes": new_shards[sh["url"]]["bytes"], "sha256": new_shards[sh["url"]]["sha256"]}
                     for sh in man["shards"]]
    out["control"] = control
    write_manifest(dst, out)
    return dst
