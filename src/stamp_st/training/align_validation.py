"""Stage-2 validation: the task's losses and CSP accuracy over the held-out slides, and patch -> spot
retrieval among their anchor spots, all from one pass of the task per batch."""

from __future__ import annotations

import torch

from .align_task import anchor_rows


def make_val_fn(loader, max_batches: int | None, ks: tuple[int, ...] = (1, 5, 10)):
    """Mean of every loss and of CSP accuracy over held-out slides (rank-averaged), plus patch -> spot
    retrieval recall@k among the anchor spots of each held-out slide (this rank's share of them, each spot
    once), from the image and gene joint embeddings of the same pass. ``max_batches=None``: the whole
    validation split."""

    def val_fn(model) -> dict:
        import torch.distributed as dist

        raw = getattr(model, "module", model)  # the AlignTask
        sums, n = {}, 0
        img, gene, slides, seen = [], [], [], set()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                out, feats = raw.step(batch)  # the task: losses, and the features they compared
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
                v_emb = anchor_rows(feats["image_joint"]).float().cpu()
                g_emb = anchor_rows(feats["gene_joint"]).float().cpu()
                keep = []
                for j, (sid, pair) in enumerate(zip(batch["slide_id"], batch["spot_id"])):
                    if (sid, pair[0]) not in seen:  # padded / wrapped epochs repeat spots
                        seen.add((sid, pair[0]))
                        keep.append(j)
                img.append(v_emb[keep])
                gene.append(g_emb[keep])
                slides += [batch["slide_id"][j] for j in keep]
        vec = torch.tensor([sums.get(k, 0.0) for k in sorted(sums)] + [n], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        total = float(vec[-1])
        result = {k: float(v) / total for k, v in zip(sorted(sums), vec[:-1])} if total else {}
        if img:
            result.update(retrieval_recall(torch.cat(img), torch.cat(gene), slides, ks))
        return result

    return val_fn


def retrieval_recall(img: torch.Tensor, gene: torch.Tensor, slides: list[str], ks=(1, 5, 10)) -> dict:
    """Mean over slides of patch -> spot recall@k (the true spot among the k most similar spots of the same
    slide; ties broken at random in expectation, see ``evaluation.retrieval``), with chance level beside it."""
    import numpy as np

    from ..metrics import recall_from_ranks, true_match_ranks

    out: dict[str, list[float]] = {}
    slides_arr = np.asarray(slides).astype(str)
    for sl in dict.fromkeys(slides_arr.tolist()):
        idx = np.flatnonzero(slides_arr == sl)
        if len(idx) < 2:
            continue
        ranks = true_match_ranks(img[idx].numpy(), gene[idx].numpy())
        for k, v in recall_from_ranks(ranks, ks).items():
            out.setdefault(f"recall@{k}", []).append(v)
            out.setdefault(f"chance_recall@{k}", []).append(min(k, len(idx)) / len(idx))
    return {k: sum(v) / len(v) for k, v in out.items()}
