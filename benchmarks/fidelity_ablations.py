"""Does alignment make the image encoder better on held-out sections, and which part of the recipe does it?

Runs Stage 2 cross-validated over the imaged sections of a paired corpus (one model per held-out section,
``run_align_folds(final=False)``) for several variants of the CPU recipe, embeds every spot with the model
that never saw its section, and reports for each variant the gain over the unaligned backbone of Stamp_V
(the aligned encoder's feature) and of its joint-space projection, on HEST-protocol ridge Pearson, ridge
with alpha by inner CV and a linear probe of the study's expression clusters, with a paired 95% bootstrap
interval over held-out spots (``stamp_st.evaluation.gains``). ``--reuse NAME=RUN`` scores fold models that
exist already (e.g. the demo's ``stamp_st_demo/stamp_model``) instead of training that variant.

Variants: the demo's recipe (last block + conv head fine-tuned over a cached trunk, dihedral augmentation,
temperature 1.0); the same with a frozen backbone (heads only); without augmentation; with the release's
temperature 0.07; with neighbour-aware negatives (250 µm); and a control, the demo's recipe on a copy of the
corpus whose gene profiles are shuffled among the spots of each slide: what fine-tuning gains without the
pairing (augmentation, batch-norm statistics of the new stain) is not gained from the genes.

    python benchmarks/fidelity_ablations.py --corpus stamp_st_demo/corpus_paired \
        --gene-encoder stamp_st_demo/gene_encoder --out fidelity_runs \
        --reuse "partial fine-tuning (demo recipe)=stamp_st_demo/stamp_model"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHUFFLED = "_shuffle_genes"  # not an AlignConfig setting: the variant trains on a shuffled copy of the corpus
VARIANTS = {
    "partial fine-tuning (demo recipe)": {},
    "frozen backbone, heads only": {"trainable_blocks": None, "freeze_backbone": True, "augment": "none"},
    "fine-tuning, no augmentation": {"augment": "none"},
    "fine-tuning, temperature 0.07": {"temperature_init": 0.07},
    "fine-tuning, neighbour-aware negatives 250 um": {"neighbour_radius_um": 250.0},
    "control: gene profiles shuffled within slides": {SHUFFLED: True},
}


def shuffled_corpus(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of a paired corpus in which each shard's spots keep their images but receive the tokens of
    another spot of the same shard (one slide per shard in the demo's corpus)."""
    import io
    import shutil
    import tarfile

    import numpy as np

    if (dst / "manifest.json").is_file():
        return dst
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tar"))
    rng = np.random.default_rng(seed)
    for tar in sorted(src.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
        tok = [i for i, (m, _) in enumerate(members) if m.name.endswith(".tokens.npy")]
        perm = rng.permutation(len(tok))
        payload = {tok[i]: members[tok[j]][1] for i, j in enumerate(perm)}
        with tarfile.open(dst / tar.name, "w") as out:
            for i, (m, data) in enumerate(members):
                data = payload.get(i, data)
                m.size = len(data)
                out.addfile(m, io.BytesIO(data))
    return dst


def evaluate_variant(run: Path, corpus: str, her2st: Path, slides: list[str], labels_root: Path) -> dict:
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from stamp_st.evaluation.embeddings_io import EmbeddingSet
    from stamp_st.evaluation.tasks import evaluate_sources
    from stamp_st.inference.corpus_embed import embed_corpus
    from stamp_st.readers import read_sample
    from stamp_st.readers.labels import her2st_cluster_labels
    from stamp_st.training.run_folder import latest_checkpoint

    cks = {sl: latest_checkpoint(run / "folds" / sl) for sl in slides}
    res = embed_corpus(cks, corpus, backbone="efficientnet_lite0", progress=False)
    sid, spot = res["slide_ids"], res["spot_ids"]
    secs = {sl: sl.split("_", 1)[1] for sl in slides}
    per = {sl: read_sample(her2st, format="her2st", section=secs[sl]) for sl in slides}
    genes = sorted(set.intersection(*[set(a.var_names) for a in per.values()]))
    counts = sp.lil_matrix((len(sid), len(genes)), dtype=np.float32)
    labels = np.full(len(sid), "", dtype=object)
    for sl, a in per.items():
        m = np.flatnonzero(sid == sl)
        rows = pd.Index(a.obs_names).get_indexer(spot[m])
        counts[m] = sp.csr_matrix(a[:, genes].X)[rows]
        lab = her2st_cluster_labels(labels_root, secs[sl])
        labels[m] = lab.reindex(spot[m]).fillna("").to_numpy()
    counts = counts.tocsr()

    def src(name, emb, folds=None):
        return EmbeddingSet(name, emb, sid, spot, counts=counts, gene_names=np.asarray(genes), fold_emb=folds)

    sources = {name: src(name, next(iter(res[k].values())), res[k])
               for name, k in (("STAMP_V", "stamp_v"), ("STAMP_V joint", "stamp_v_joint"))}
    sources["backbone"] = src("backbone", res["backbone"])
    ev = evaluate_sources(sources, labels, ["expression", "probe"], baseline="backbone")
    table = {(r["task"], r["metric"], r["source"]): r for r in ev["table"] if "mean" in r}
    return {"gains": ev["gains"],
            "scores": {f"{k[0]}/{k[1]}/{k[2]}": {"mean": v["mean"], "low": v["low"], "high": v["high"]}
                       for k, v in table.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="paired corpus of the imaged sections")
    ap.add_argument("--gene-encoder", required=True, help="Stage-1 run folder")
    ap.add_argument("--out", default="fidelity_runs", help="work folder for the fold models")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="semicolon-separated variant names")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps per model")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=RUN",
                    help="score the fold models of RUN (RUN/folds/<slide>/) as variant NAME instead of training it")
    ap.add_argument("--json", default="benchmarks/results/fidelity_ablations_cpu.json")
    args = ap.parse_args()

    from stamp_st.evaluation.gains import format_gain
    from stamp_st.paths import her2st_dir
    from stamp_st.training.align import AlignConfig, corpus_slides, run_align_folds

    slides = corpus_slides(args.corpus)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    out = {}
    for name in list(dict.fromkeys([v for v in args.variants.split(";") if v] + list(reuse))):
        t0 = time.perf_counter()
        if name in reuse:
            run = Path(reuse[name])
        else:
            trainer = {"max_steps": args.steps} if args.steps else {}
            settings = {k: v for k, v in VARIANTS[name].items() if k != SHUFFLED}
            cfg = AlignConfig.load("demo_cpu", gene_encoder=args.gene_encoder, trainer=trainer, **settings)
            run = Path(args.out) / name.split(",")[0].replace(" ", "_").replace("(", "").replace(")", "").replace(":", "")
            corpus = (shuffled_corpus(Path(args.corpus), Path(args.out) / "corpus_shuffled")
                      if VARIANTS[name].get(SHUFFLED) else args.corpus)
            run_align_folds(corpus, cfg, run, slides=slides, final=False, verify_sha256=False,
                            progress=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        out[name] = evaluate_variant(run, args.corpus, her2st_dir(), slides, her2st_dir())
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
        for g in out[name]["gains"]:
            print(f"{name:<48} {g['source']:<14} {g['task']:<10} {g['metric']:<18} gain {format_gain(g)}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"held_out": slides, "variants": out}, indent=1, default=float))
    print(f"\nwrote {args.json}")
    cols = (("expression", "ridge_pearson", "HEST ridge"), ("expression", "ridge_cv_pearson", "ridge, CV alpha"),
            ("probe", "balanced_accuracy", "probe bal. acc."))
    print(f"{'variant':<48} {'source':<14} " + " ".join(f"{c[2] + ' gain [95% CI]':<28}" for c in cols))
    for name, r in out.items():
        for source in ("STAMP_V", "STAMP_V joint"):
            g = {(x["task"], x["metric"]): x for x in r["gains"] if x["source"] == source}
            print(f"{name:<48} {source:<14} "
                  + " ".join(f"{format_gain(g[c[:2]]) if c[:2] in g else 'n/a':<28}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
