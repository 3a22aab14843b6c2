"""Choose the gene encoder's recipe (Stage-1 settings, pooling of Stamp_G) on selection sections, never on the
sections that are reported.

The selection sections default to B4, C2, C3, C4: the demo's imaged sections, which Stage 1 never trains on
(the demo's gene corpus holds them in its ``val`` split) and which carry the study's expression clusters (no
pathologist labels). Each variant is one or more Stage-1 run folders (one per seed); every pooling of each
encoder is clustered per section with the evaluation's protocol (``evaluation.clustering.cluster_slides``:
z-scored feature dimensions, top-50 PCs, k-means with k = the section's labels) and, to show how much the
protocol itself matters, with the dimensions only centred (``centre``); the 50-component expression PCA of the
same spots goes through the same two protocols. Mean k-means ARI over the sections, per encoder, and mean and
sd over a variant's seeds.

    python benchmarks/gene_encoder_selection.py --corpus stamp_st_demo/corpus_genes \\
        --variant demo=stamp_st_demo/gene_encoder,runs/genes_s1,runs/genes_s2 --variant lr3e-3=runs/lr3e3_s0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROTOCOLS = ("z", "centre")


def kmeans_ari(emb, labels, slides, protocol: str, seed: int = 0) -> dict:
    """Per-section k-means ARI (labelled spots): ``z`` is the evaluation's own protocol; ``centre`` skips the
    z-scoring of feature dimensions (which, for an expression PCA, whitens its components)."""
    import numpy as np

    from stamp_st.evaluation.clustering import cluster_slides, kmeans_clusters

    if protocol == "z":
        r = cluster_slides(emb, labels, slides, methods=("kmeans",), seed=seed)
        per = {f["slide"]: f["kmeans_ari"] for f in r["per_fold"] if "kmeans_ari" in f}
    elif protocol == "centre":
        from sklearn.decomposition import PCA
        from sklearn.metrics import adjusted_rand_score

        per = {}
        for sl in dict.fromkeys(slides.tolist()):
            idx = np.flatnonzero((slides == sl) & (labels != ""))
            y = labels[idx].astype(str)
            x = np.asarray(emb[idx], np.float64)
            x = x - x.mean(0)
            k = int(min(50, x.shape[0] - 1, x.shape[1]))
            if k < x.shape[1]:
                x = PCA(n_components=k, random_state=seed).fit_transform(x)
            per[sl] = float(adjusted_rand_score(y, kmeans_clusters(x, len(np.unique(y)), seed)))
    else:
        raise ValueError(protocol)
    return {"ari": float(np.mean(list(per.values()))), "per_section": per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="the demo's gene corpus (selection sections in its val split)")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=RUN[,RUN...]: a Stage-1 recipe and its run folders (one per seed); repeatable")
    ap.add_argument("--sections", default="B4,C2,C3,C4", help="selection sections (never the reported ones)")
    ap.add_argument("--poolings", default="mean,mean_l1,mean_cat,rank,embedbag")
    ap.add_argument("--json", default="benchmarks/results/gene_encoder_selection_cpu.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gene_encoder_heldout import pooled

    from stamp_st.demo import genes_only_sections
    from stamp_st.evaluation.sources import raw_expression_pca
    from stamp_st.paths import her2st_dir
    from stamp_st.training.align import load_gene_encoder

    torch.set_grad_enabled(False)
    sections = [s for s in args.sections.split(",") if s]
    slides, spot, toks, counts, _, by_kind = genes_only_sections(args.corpus, her2st_dir(), sections, strict=False)
    labels = np.asarray(by_kind["clusters"], dtype=object)
    slides = np.asarray(slides).astype(str)
    poolings = [p for p in args.poolings.split(",") if p]
    out = {"sections": sections, "n_spots": int(len(spot)), "labels": "study clusters",
           "command": "python " + " ".join(sys.argv), "expression_pca": {}, "variants": {}}
    pca = raw_expression_pca(counts)
    for prot in PROTOCOLS:
        out["expression_pca"][prot] = kmeans_ari(pca, labels, slides, prot)
        print(f"expression PCA            {prot:<6} ARI {out['expression_pca'][prot]['ari']:.3f}", flush=True)
    t = torch.from_numpy(toks.astype(np.int64))
    for spec in args.variant:
        name, _, runs = spec.partition("=")
        runs = [r for r in runs.split(",") if r]
        rows = {p: {prot: [] for prot in PROTOCOLS} for p in poolings}
        for run in runs:
            enc, _ = load_gene_encoder(run)
            enc.eval()
            for p in poolings:
                feats = torch.cat([pooled(enc, t[j:j + 64], p) for j in range(0, len(t), 64)]).float().numpy()
                for prot in PROTOCOLS:
                    rows[p][prot].append(kmeans_ari(feats, labels, slides, prot))
        summary = {p: {prot: {"ari_per_seed": [r["ari"] for r in v],
                              "ari_mean": float(np.mean([r["ari"] for r in v])),
                              "ari_sd": float(np.std([r["ari"] for r in v], ddof=1)) if len(v) > 1 else None,
                              "per_section_per_seed": [r["per_section"] for r in v]}
                       for prot, v in d.items()} for p, d in rows.items()}
        out["variants"][name] = {"runs": runs, "poolings": summary}
        for p, d in summary.items():
            print(f"{name:<12} {p:<9} " + "  ".join(
                f"{prot}: {s['ari_mean']:.3f} ± {s['ari_sd'] or 0:.3f} {[round(v, 3) for v in s['ari_per_seed']]}"
                for prot, s in d.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
