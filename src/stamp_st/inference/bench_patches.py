"""Embed the ready-cut patches of a HEST-format patch file (HEST-1k's ``patches/<id>.h5`` and HEST-Benchmark's
``bench_data/<TASK>/patches/<id>.h5``: ``img`` uint8 [n, 224, 224, 3] at 0.5 µm/px, i.e. 112 µm, with
``barcode`` [n, 1] and ``coords``) and write them as HEST writes its embeddings (``embeddings`` + ``barcodes``,
patch order), which ``stamp-st hest-benchmark`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..embedding_file import decode_barcodes, write_hest_embeddings
from ..errors import DataNotFoundError, StampInputError

HEST_PATCH_UM = 112.0  # 224 px at 0.5 µm/px


@torch.inference_mode()
def embed_patch_file(embedder, path: str | Path, key: str | None = None,
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, embeddings [n, d] float32) of every patch of a HEST patch file, read batch by batch;
    ``key`` picks the embedder's output (default: its first, Stamp_V for a STAMP model)."""
    import h5py

    from .embed import embedder_autocast

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError("patch file not found", path)
    with h5py.File(path, "r") as f:
        bkey = "barcode" if "barcode" in f else "barcodes" if "barcodes" in f else None
        if "img" not in f or bkey is None:
            raise StampInputError(f"not a HEST patch file: needs 'img' and 'barcode' (has {list(f.keys())})", path)
        imgs, barcodes = f["img"], decode_barcodes(f[bkey][:])
        if imgs.ndim != 4 or imgs.shape[-1] != 3 or len(imgs) != len(barcodes):
            raise StampInputError(f"img {imgs.shape} and {len(barcodes)} barcodes do not agree", path)
        out = []
        for i in range(0, len(barcodes), batch_size):
            with embedder_autocast(embedder):
                feats = embedder.image_fn(torch.from_numpy(np.ascontiguousarray(imgs[i:i + batch_size])))
            name = key or next(iter(feats))
            if name not in feats:
                raise StampInputError(f"the model gives {sorted(feats)}, not {name!r}", hint="choose one of those")
            out.append(feats[name].float().cpu().numpy())
    d = out[0].shape[1] if out else 0
    return barcodes, (np.concatenate(out) if out else np.zeros((0, d), np.float32))


def embed_bench_tasks(model: str, samples: list[tuple[str, str, Path]], embed_dir: str | Path, key: str | None = None,
                      device: str = "auto", backbone_weights: str | None = None, precision: str = "auto",
                      batch_size: int = 64, say=print) -> Path:
    """Embed the patch files of HEST-Benchmark samples (``evaluation.hest_benchmark.bench_samples``: task, sample
    id, patch file) into ``embed_dir/<TASK>/<sample_id>.h5``; files already there from the same model and key are
    kept, so a re-run resumes, and a folder holding another model's embeddings is refused."""
    import json

    from ..io_utils import atomic_write_json
    from .embed import load_embedder

    embed_dir = Path(embed_dir)
    record = {"model": str(model), "key": key}
    rec_path = embed_dir / "stamp_st_embeddings.json"
    if rec_path.is_file() and json.loads(rec_path.read_text()) != record:
        raise StampInputError(f"holds embeddings of another model ({rec_path.read_text().strip()})", embed_dir,
                              hint="give a new embedding folder for this model")
    todo = [(t, s, p) for t, s, p in samples if not (embed_dir / t / f"{s}.h5").is_file()]
    if todo:
        embedder = load_embedder(model, device, backbone_weights, patch_um=HEST_PATCH_UM, precision=precision)
        if abs(embedder.geometry.patch_um - HEST_PATCH_UM) > 1e-6:
            say(f"note: the model was trained on {embedder.geometry.patch_um:g} µm patches; HEST-Benchmark's "
                f"are {HEST_PATCH_UM:g} µm")
        embed_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rec_path, record)
        for task, sid, patches in todo:
            barcodes, emb = embed_patch_file(embedder, patches, key, batch_size)
            write_hest_embeddings(embed_dir / task / f"{sid}.h5", barcodes, emb)
    return embed_dir
