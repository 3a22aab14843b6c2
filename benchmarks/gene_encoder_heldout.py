"""Is the gene encoder (Stamp_G's pooled features) at least as good as a 50-component expression PCA on
genes-only sections that no training stage saw?

Reads the held-out sections' tokens from the demo's gene corpus (its ``val`` split: Stage 1 never trains on
them), pools each Stage-1 encoder's states per spot in several ways, and clusters each section with the
evaluation's protocol (per slide, top-50 PCs, k-means with k = the section's labels) against the study's
expression clusters and the pathologist's labels, beside the expression PCA (the same spots' log1p CP10k
expression), with the gain over the PCA and its paired 95% bootstrap interval over spots. Several encoders
(one per Stage-1 seed) give the spread over seeds. ``--stamp-models``: Stage-2 models too, each scored by
its ``X_stamp_g`` (its frozen encoder's pooled feature through its gene head, as ``stamp-st embed`` writes it).

    python benchmarks/gene_encoder_heldout.py --corpus stamp_st_demo/corpus_genes \\
        --encoders stamp_st_demo/gene_encoder,runs/genes_seed1,runs/genes_seed2 --sections A1,D1,E1,F1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

POOLINGS = ("mean", "rank", "top256", "embedbag")
LAYER_POOLINGS = ("mean_l1", "mean_cat")
JOINT = "X_stamp_g"  # a Stage-2 model's gene embedding in the joint space (``--stamp-models``)


def layer_means(encoder, tokens):
    """Mean over real tokens of every layer's states: [embedded input, layer 1, ..., last layer], each [N, d]."""
    import torch

    from stamp_st.preprocessing.tokenizer import STORAGE_PAD_ID

    tokens = tokens[:, :encoder.config.context]
    valid = tokens != STORAGE_PAD_ID
    n = max(int(valid.sum(-1).max()), 1)
    tokens, valid = tokens[:, :n], valid[:, :n]
    w = valid.unsqueeze(-1).float()
    with torch.no_grad():
        states = encoder.hidden_states(tokens, ~valid)
    return [(h.float() * w).sum(1) / w.sum(1).clamp_min(1.0) for h in states]


def pooled(encoder, tokens, pooling: str):
    """[N, d] per-spot features: ``mean`` over real tokens (Stamp_G's own), ``rank``: weighted by
    1 / log2(rank + 2) (the top-ranked genes count most, as in a discounted gain), ``top256``: mean over the
    256 top-ranked genes; ``embedbag``: the learned gene embeddings (input layer, no transformer) weighted as
    ``rank``; ``mean_l1``: mean of the first layer's states; ``mean_cat``: the means of every transformer
    layer's states side by side ([N, layers * d])."""
    import torch

    from stamp_st.preprocessing.tokenizer import STORAGE_PAD_ID

    if pooling == "mean":
        return encoder.embed(tokens, "mean")
    if pooling in LAYER_POOLINGS:
        means = layer_means(encoder, tokens)
        return means[1] if pooling == "mean_l1" else torch.cat(means[1:], 1)
    tokens = tokens[:, :encoder.config.context]  # what the encoder reads, as in GeneEncoder.pool
    valid = tokens != STORAGE_PAD_ID
    n = max(int(valid.sum(-1).max()), 1)
    tokens, valid = tokens[:, :n], valid[:, :n]
    with torch.no_grad():
        if pooling == "embedbag":
            from stamp_st.models.gene_encoder import MODEL_PAD_ID

            h = encoder.embeddings(tokens.masked_fill(~valid, MODEL_PAD_ID))
        else:
            h = encoder.encode(tokens)
    rank = torch.arange(n, dtype=h.dtype)
    if pooling in ("rank", "embedbag"):
        w = 1.0 / torch.log2(rank + 2.0)
    elif pooling == "top256":
        w = (rank < 256).to(h.dtype)
    else:
        raise ValueError(pooling)
    w = w.unsqueeze(0) * valid.to(h.dtype)
    return (h * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)


def token_bag(tokens, first_n: int):
    """[N, 50]: the 50-component PCA of the 0/1 bag of genes among each spot's first ``first_n`` storage
    tokens (reduced as the expression PCA is, before the protocol z-scores dimensions). A reference for what
    the encoder's input itself tells k-means, with no training: an encoder reading ``first_n`` tokens that
    clusters below it has not yet learned to use its own input."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    from stamp_st.preprocessing.tokenizer import STORAGE_PAD_ID

    t = np.asarray(tokens)[:, :first_n]
    rows, cols = np.nonzero(t != STORAGE_PAD_ID)
    bag = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, t[rows, cols])),
                        shape=(len(t), int(t.max()) + 1))
    dense = bag[:, np.unique(bag.indices)].toarray()
    return PCA(n_components=min(50, *dense.shape), random_state=0).fit_transform(dense)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="the demo's gene corpus (held-out sections in its val split)")
    ap.add_argument("--encoders", required=True, help="comma-separated Stage-1 run folders (one per seed)")
    ap.add_argument("--sections", default="A1,D1,E1,F1", help="held-out genes-only her2st sections")
    ap.add_argument("--poolings", default=",".join(POOLINGS))
    ap.add_argument("--stamp-models", default="",
                    help="comma-separated Stage-2 run or checkpoint folders: also score each one's X_stamp_g")
    ap.add_argument("--input-bags", default="",
                    help="comma-separated token counts N: also cluster the 0/1 bag of each spot's first N tokens")
    ap.add_argument("--json", default="benchmarks/results/gene_encoder_heldout_cpu.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from stamp_st.demo import genes_only_sections
    from stamp_st.embedding_file import EmbeddingSet
    from stamp_st.evaluation.sources import expression_pca_source
    from stamp_st.evaluation.tasks import evaluate_sources
    from stamp_st.models.stamp import load_stamp
    from stamp_st.paths import her2st_dir
    from stamp_st.training.align import load_gene_encoder
    from stamp_st.training.run_folder import latest_checkpoint

    torch.set_grad_enabled(False)
    root = her2st_dir()
    sections = [s for s in args.sections.split(",") if s]
    slides, spot, toks, counts, genes, by_kind = genes_only_sections(args.corpus, root, sections, strict=False)
    labels = {"study clusters": by_kind["clusters"], "pathologist": by_kind["pathologist"]}

    def src(name, emb):
        return EmbeddingSet(name, np.asarray(emb, np.float32), slides, spot, counts=counts,
                            gene_names=np.asarray(genes))

    sources = {}
    t = torch.from_numpy(toks.astype(np.int64))
    for i, run in enumerate(e for e in args.encoders.split(",") if e):
        enc, _ = load_gene_encoder(run)
        enc.eval()
        for pooling in args.poolings.split(","):
            feats = torch.cat([pooled(enc, t[j:j + 64], pooling) for j in range(0, len(t), 64)]).float().numpy()
            sources[f"Stamp_G {pooling} | encoder {i}"] = src(f"Stamp_G {pooling} | encoder {i}", feats)
    stamp_models = [m for m in args.stamp_models.split(",") if m]
    for i, run in enumerate(stamp_models):
        model = load_stamp(latest_checkpoint(Path(run)) if (Path(run) / "checkpoints").is_dir() else run).eval()
        feats = torch.cat([model.encode_genes(t[j:j + 64]) for j in range(0, len(t), 64)]).float().numpy()
        sources[f"Stamp_G {JOINT} | encoder {i}"] = src(f"Stamp_G {JOINT} | encoder {i}", feats)
    for n in (int(b) for b in args.input_bags.split(",") if b):
        sources[f"input bag, first {n} tokens"] = src(f"input bag, first {n} tokens", token_bag(toks, n))
    pca = expression_pca_source(next(iter(sources.values())))
    sources[pca.name] = pca
    out = {"sections": sections, "n_spots": int(len(spot)), "encoders": args.encoders.split(","),
           "stamp_models": stamp_models,
           "command": "python " + " ".join(sys.argv), "labels": {}}
    for lab_name, lab in labels.items():
        if not (lab != "").any():
            continue
        ev = evaluate_sources(sources, lab, ["cluster"], baseline=pca.name)
        ari = {r["source"]: r for r in ev["table"] if r["metric"] == "kmeans_ari" and "mean" in r}
        gains = {g["source"]: g for g in ev["gains"] if g["metric"] == "kmeans_ari"}
        summary = {}
        for pooling in args.poolings.split(",") + ([JOINT] if stamp_models else []):
            names = [n for n in sources if n.startswith(f"Stamp_G {pooling} |")]
            vals = [ari[n]["mean"] for n in names if n in ari]
            gv = [gains[n]["gain"] for n in names if n in gains]
            summary[pooling] = {"ari_per_encoder": vals, "ari_mean": float(np.mean(vals)),
                                "ari_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                                "gain_over_pca_per_encoder": gv,
                                "gain_over_pca_intervals": [[gains[n]["low"], gains[n]["high"]] for n in names
                                                            if n in gains]}
        bags = {n: {"ari": ari[n]["mean"], "gain_over_pca": gains[n]["gain"],
                    "gain_interval": [gains[n]["low"], gains[n]["high"]]}
                for n in sources if n.startswith("input bag") and n in ari and n in gains}
        # the same clustering with feature dimensions only centred, not z-scored (z-scoring whitens the PCA's
        # components): how much the protocol itself moves each source (no interval)
        from gene_encoder_selection import kmeans_ari

        centred = {n: kmeans_ari(s.emb, np.asarray(lab, dtype=object), np.asarray(slides).astype(str),
                                 "centre")["ari"] for n, s in sources.items()}
        out["labels"][lab_name] = {"pca_ari": ari[pca.name]["mean"], "summary": summary, "input_bags": bags,
                                   "ari_dimensions_centred_not_zscored": centred,
                                   "table": {k: {x: v[x] for x in ("mean", "low", "high")} for k, v in ari.items()},
                                   "per_slide_pca": ari[pca.name].get("per_fold")}
        print(f"\n{lab_name}: expression PCA k-means ARI {ari[pca.name]['mean']:.3f}")
        for pooling, s in summary.items():
            print(f"  Stamp_G {pooling:<7} ARI {s['ari_mean']:.3f} ± {s['ari_sd'] or 0:.3f} over encoders "
                  f"{[round(v, 3) for v in s['ari_per_encoder']]}; gain over PCA per encoder "
                  f"{[f'{g:+.3f} [{lo:+.3f}, {hi:+.3f}]' for g, (lo, hi) in zip(s['gain_over_pca_per_encoder'], s['gain_over_pca_intervals'])]}")
        for n, b in bags.items():
            print(f"  {n:<28} ARI {b['ari']:.3f}; gain over PCA {b['gain_over_pca']:+.3f} "
                  f"[{b['gain_interval'][0]:+.3f}, {b['gain_interval'][1]:+.3f}]")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
