"""The end-to-end demo on real HER2+ breast cancer ST (her2st): both corpora, Stage 1, Stage 2, embeddings,
evaluation on held-out sections and an HTML report, on 2 CPU cores; with ``seeds`` seeds of both stages and a
shuffled-gene control per Stage-2 seed, so the report gives the spread over seeds and the genes' share.

Splits: evaluation is leave-one-section-out over the four imaged sections B4, C2, C3, C4, and no training
stage sees the section it is scored on:
- gene encoder (Stage 1): the 24 sections of ``DEMO_SECTIONS`` (the 32 her2st sections the demo is defined on,
  whether read from a data directory or downloaded) that are neither imaged nor in ``GENES_ONLY_HELDOUT``,
  expression only, validated on those eight;
- alignment (Stage 2): cross-validated, one model per imaged section trained on the other three
  (``align --folds``); each section is embedded and scored with the model that never saw it;
- one final model on all four imaged sections, with the same recipe, is what a user embeds new slides with.

Every stage leaves ``OUT/stages/<stage>.json`` when it finishes; a re-run skips finished stages, and the
long stages (corpora, training) resume from their own checkpoints if they were interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StampInputError
from .stages import run_stage

IMAGED_SECTIONS = ("B4", "C2", "C3", "C4")
# the 32 her2st sections the demo is defined on (the study has 36): the same run from the project's data
# directory or from a fresh download, which fetches these only; the other four stay unseen by every stage
DEMO_SECTIONS = ("A1", "A2", "A3", "A4", "A5", "A6", "B1", "B2", "B3", "B4", "B5", "B6", "C1", "C2", "C3", "C4",
                 "D1", "D2", "D3", "D4", "D5", "D6", "E1", "E2", "E3", "F1", "F2", "F3", "G1", "G3", "H2", "H3")
# genes-only sections that no stage trains on: Stamp_G is scored against a raw-expression PCA on them
# (fixed a priori: the first section of each patient with a pathologist's annotation and no imaged section)
GENES_ONLY_HELDOUT = ("A1", "D1", "E1", "F1")
GENE_VAL_SECTIONS = IMAGED_SECTIONS + GENES_ONLY_HELDOUT
EVAL_SECTIONS = IMAGED_SECTIONS
# evaluated sources: the aligned encoder's feature (what a user runs on H&E) and its joint-space projection
STAMP_V = "STAMP_V (aligned encoder)"
STAMP_V_JOINT = "STAMP_V joint (projected)"
STAGES = ("corpus-genes", "corpus-paired", "pretrain", "align", "embed", "pretrain-seeds", "ablations", "evaluate")
DEMO_RECIPE = "the demo's recipe"  # the ablations' name for the Stage-2 config the demo trains


@dataclass
class DemoSettings:
    out: Path = Path("stamp_st_demo")
    workers: int = 2
    pretrain_config: str = "demo_cpu"  # a registered configs/pretrain/ name or a JSON file
    align_config: str = "demo_cpu"  # a registered configs/align/ name or a JSON file
    pretrain_steps: int | None = None  # None: the pretrain config's phases
    align_steps: int | None = None  # None: the align config's (demo_cpu: 200 per model)
    seed: int = 0
    seeds: int = 3  # training seeds (seed, seed + 1, ...) of both stages, for the spread over seeds
    controls: bool = True  # Stage 2 trained again on shuffled gene profiles per seed: the genes' share
    tasks: tuple[str, ...] = ("probe", "cluster", "expression", "retrieval")
    force: tuple[str, ...] = ()
    timings: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _stage(settings: DemoSettings, name: str, fn: Callable[[], dict]) -> dict:
    return run_stage(settings.out, name, fn, settings.force, _say)


def her2st_root() -> Path:
    from .paths import DATA_ENV, data_dir

    root = data_dir(required=False)
    if root is None or not (root / "her2st" / "ST-cnts").is_dir():
        raise StampInputError(
            "the her2st data was not found", root,
            hint=f"set {DATA_ENV} to a folder holding her2st/ (Andersson et al. 2021: ST-cnts, ST-spotfiles, "
                 "ST-imgs, ST-cluster) and vocab/stamp_gene_vocab.tsv; `stamp-st download her2st` and "
                 "`stamp-st download vocab` fetch them")
    return root / "her2st"


def _vocab_path() -> str:
    from .paths import vocab_file

    return str(vocab_file())


def build_corpora(settings: DemoSettings, root: Path) -> tuple[Path, Path]:
    from .corpus.build import BuildConfig, build_corpus
    from .corpus.samples import her2st_samples
    from .readers import her2st_sections

    genes_dir, paired_dir = settings.out / "corpus_genes", settings.out / "corpus_paired"

    def genes():
        present = set(her2st_sections(root))
        missing = [s for s in DEMO_SECTIONS if s not in present]
        if missing:
            raise StampInputError(f"the her2st folder lacks {len(missing)} of the demo's sections ({', '.join(missing)})",
                                  root, hint="`stamp-st download her2st` fetches them")
        entries = her2st_samples(root, sections=list(DEMO_SECTIONS), split={s: "val" for s in GENE_VAL_SECTIONS})
        res = build_corpus(entries, genes_dir, BuildConfig(kind="genes", vocab_path=_vocab_path(), seed=settings.seed),
                           workers=settings.workers)
        return {"corpus": str(genes_dir), "build": res.get("build", {})}

    def paired():  # every imaged section; the folds of Stage 2 hold each out in turn
        entries = her2st_samples(root, sections=list(IMAGED_SECTIONS), split={s: "train" for s in IMAGED_SECTIONS})
        res = build_corpus(entries, paired_dir, BuildConfig(kind="paired", vocab_path=_vocab_path(),
                                                            seed=settings.seed), workers=settings.workers)
        return {"corpus": str(paired_dir), "build": res.get("build", {})}

    _stage(settings, "corpus-genes", genes)
    _stage(settings, "corpus-paired", paired)
    return genes_dir, paired_dir


def _pretrain_run(settings: DemoSettings, genes_dir: Path, run: Path, seed: int) -> dict:
    from .training.pretrain_genes import PretrainConfig, run_pretrain

    cfg = PretrainConfig.load(settings.pretrain_config)  # its phases: IGR, then IGR + CGR
    if settings.pretrain_steps is not None:  # same proportions at another length
        n_igr = 2 * settings.pretrain_steps // 3
        cfg.phases = [{"steps": n_igr, "cgr": False}, {"steps": settings.pretrain_steps - n_igr, "cgr": True}]
        cfg.trainer = {**cfg.trainer, "max_steps": settings.pretrain_steps}
    cfg.trainer = {**cfg.trainer, "seed": seed}
    return {"run": str(run), "seed": seed, "result": _jsonable(run_pretrain(genes_dir, cfg, run))}


def pretrain(settings: DemoSettings, genes_dir: Path) -> Path:
    run = settings.out / "gene_encoder"
    _stage(settings, "pretrain", lambda: _pretrain_run(settings, genes_dir, run, settings.seed))
    return run


def seeds_of(settings: DemoSettings) -> list[int]:
    return [settings.seed + i for i in range(settings.seeds)]


def pretrain_seeds(settings: DemoSettings, genes_dir: Path, gene_run: Path) -> list[Path]:
    """The same Stage-1 recipe with the other seeds: only for the gene encoder's spread over seeds on the
    held-out genes-only sections (Stage 2 aligns with the first seed's encoder)."""
    runs = {seed: settings.out / f"gene_encoder_seed{seed}" for seed in seeds_of(settings)[1:]}

    def go():
        return {"runs": [_pretrain_run(settings, genes_dir, run, seed) for seed, run in runs.items()]}

    if runs:
        _stage(settings, "pretrain-seeds", go)
    return [gene_run, *runs.values()]


def align(settings: DemoSettings, paired_dir: Path, gene_run: Path) -> Path:
    from .training.align import AlignConfig, run_align_folds

    run = settings.out / "stamp_model"

    def go():
        # configs/align/demo_cpu.json: the last block and conv head of EfficientNet-Lite0 fine-tuned over a
        # cached frozen trunk, dihedral augmentation, frozen gene encoder (cached), warm temperature
        trainer = {"seed": settings.seed}
        if settings.align_steps is not None:
            trainer["max_steps"] = settings.align_steps
        cfg = AlignConfig.load(settings.align_config, gene_encoder=str(gene_run), trainer=trainer)
        res = run_align_folds(paired_dir, cfg, run, slides=[f"her2st_{s}" for s in IMAGED_SECTIONS],
                              progress=lambda m: _say(f"align: {m}"))
        return {"run": str(run), "result": _jsonable(res)}

    _stage(settings, "align", go)
    return run


def embed(settings: DemoSettings, root: Path, stamp_run: Path, paired_dir: Path) -> dict[str, Path]:
    """Every imaged spot by each fold model (obsm ``X_stamp_v@<held-out slide>`` ...), by the final model
    (``X_stamp_v``, ``X_stamp_v_joint``, ``X_stamp_g``, ``X_stamp_f``) and by the unaligned backbone, on the
    corpus's own crops."""
    from .embedding_file import OBSM_BACKBONE, cross_validated_key, write_embedding_h5ad
    from .inference.corpus_embed import OBSM_KEYS, embed_corpus
    from .readers import SampleMeta, read_sample
    from .training.run_folder import latest_checkpoint

    emb_dir = settings.out / "embeddings"
    files = {"stamp": emb_dir / "stamp.h5ad", "backbone": emb_dir / "backbone.h5ad"}

    def go():
        import numpy as np
        import pandas as pd
        import scipy.sparse as sp

        cks = {f"her2st_{s}": latest_checkpoint(stamp_run / "folds" / f"her2st_{s}") for s in IMAGED_SECTIONS}
        cks["final"] = latest_checkpoint(stamp_run)
        res = embed_corpus(cks, paired_dir, backbone="efficientnet_lite0")
        # slides are named by section (C2 ...) as the label tables are; corpus ids carry a "her2st_" prefix
        slides, spots = np.char.replace(res["slide_ids"].astype(str), "her2st_", ""), res["spot_ids"]
        per = {sec: read_sample(root, format="her2st", section=sec) for sec in IMAGED_SECTIONS}
        genes = sorted(set.intersection(*[set(a.var_names) for a in per.values()]))
        blocks, images = [], {}
        for sec, a in per.items():
            rows = pd.Index(a.obs_names).get_indexer(spots[slides == sec])
            blocks.append(sp.csr_matrix(a[:, genes].X)[rows])
            images[sec] = SampleMeta.of(a).image_path
        order = np.concatenate([np.flatnonzero(slides == s) for s in IMAGED_SECTIONS])
        counts = sp.vstack(blocks).tocsr()
        kinds = ("stamp_v", "stamp_v_joint", "stamp_g", "stamp_f")
        embs = {OBSM_KEYS[k]: res[k]["final"][order] for k in kinds}
        for k in kinds:
            for name, arr in res[k].items():
                if name != "final":  # the fold model that held this section out
                    embs[cross_validated_key(OBSM_KEYS[k], name.replace("her2st_", ""))] = arr[order]
        common = dict(slide_ids=slides[order], spot_ids=spots[order], xy_px=res["xy_px"][order], counts=counts,
                      gene_names=genes, image_paths=images)
        write_embedding_h5ad(files["stamp"], embs, record={"model": str(cks["final"]),
                                                           "cross_validated": {k: str(v) for k, v in cks.items()}},
                             **common)
        write_embedding_h5ad(files["backbone"], {OBSM_BACKBONE: res["backbone"][order]},
                             record={"model": "backbone:efficientnet_lite0"}, **common)
        return {k: str(v) for k, v in files.items()}

    _stage(settings, "embed", go)
    return files


def ablations(settings: DemoSettings, paired_dir: Path, gene_run: Path, stamp_run: Path, root: Path) -> dict:
    """The demo's Stage-2 recipe over ``--seeds`` seeds, each beside its shuffled-gene control, on the same
    outer folds (``pipeline.ablations``); the first seed's fold models are the demo's own."""
    from functools import partial

    from .io_utils import atomic_write_json
    from .pipeline.ablations import her2st_targets, run_ablations, run_tag

    if settings.seeds < 2 and not settings.controls:
        return {}
    path = settings.out / "ablations" / "ablations.json"

    def go():
        res = run_ablations(paired_dir, gene_run, settings.out / "ablations", {DEMO_RECIPE: {}},
                            seeds_of(settings), partial(her2st_targets, root), base_config=settings.align_config,
                            controls=settings.controls, steps=settings.align_steps,
                            reuse={run_tag(DEMO_RECIPE, settings.seed): stamp_run},
                            progress=lambda m: _say(f"ablations: {m}"))
        res = {"what": f"The demo's Stage-2 recipe ({settings.align_config}) with {settings.seeds} seed(s), "
                       "leave-one-section-out over B4, C2, C3, C4 (the fold models of the first seed are the "
                       "demo's own); gain of Stamp_V over the unaligned EfficientNet-Lite0, its shuffled-gene "
                       "control's gain (the same recipe trained on gene profiles permuted among each slide's "
                       "spots, a permutation per seed) and the genes' share (run minus its control, paired on the "
                       "same spots); paired 95% bootstrap over held-out spots per seed, and the spread over seeds.",
               **_jsonable(res)}
        atomic_write_json(path, res)
        return {"results": str(path)}

    _stage(settings, "ablations", go)
    return json.loads(path.read_text())


def genes_only_sections(corpus: Path, root: Path, sections, strict: bool = True):
    """The held-out genes-only sections of a genes corpus, aligned spot by spot: (slide ids, spot ids, storage
    tokens, counts CSR over the genes all sections share, those genes, labels {"clusters", "pathologist"}).
    ``strict=False``: a section without the pathologist's table is said and left unlabelled there."""
    import numpy as np

    from .inference.corpus_embed import gene_corpus_tokens
    from .pipeline.ablations import her2st_targets
    from .readers.labels import her2st_pathologist_labels

    sid, spot, toks = gene_corpus_tokens(corpus, [f"her2st_{s}" for s in sections], split="val")
    counts, genes, clusters = her2st_targets(root, sid.astype(str), spot)
    slides = np.char.replace(sid.astype(str), "her2st_", "")
    labels = {"clusters": clusters, "pathologist": np.full(len(sid), "", dtype=object)}
    for s in sections:
        m = np.flatnonzero(slides == s)
        try:
            labels["pathologist"][m] = her2st_pathologist_labels(root, s).reindex(spot[m]).fillna("").to_numpy()
        except StampInputError as err:
            if strict:
                raise
            print(f"{s}: no pathologist labels ({err})")
    return slides, spot, toks, counts, genes, labels


STAGE1_FEATURES = "STAMP_G encoder features (mean-pooled), Stage-1 seed"
STAMP_G_JOINT = "STAMP_G joint (X_stamp_g), final Stage-2 model"


def genes_only_heldout(settings: DemoSettings, gene_runs: list[Path], root: Path,
                       stamp_run: Path | None = None) -> dict:
    """Each Stage-1 seed's encoder, mean-pooled, on the genes-only sections held out of Stage 1
    (``GENES_ONLY_HELDOUT``), clustered per section beside a 50-component expression PCA of the same spots:
    k-means ARI against the study's clusters and the pathologist's labels, the paired gain of each seed, and
    the spread over seeds. With ``stamp_run``, also the embedding file's Stamp_G (``X_stamp_g``: the final
    model's gene head on its encoder's pooled feature), which no stage trained on these sections either."""
    import numpy as np
    import torch

    from .embedding_file import EmbeddingSet
    from .evaluation.sources import expression_pca_source
    from .evaluation.tasks import evaluate_sources
    from .pipeline.ablations import spread
    from .training.align import load_gene_encoder

    slides, spot, toks, counts, genes, by_kind = genes_only_sections(settings.out / "corpus_genes", root,
                                                                     GENES_ONLY_HELDOUT)
    labels = {"study's clusters": by_kind["clusters"], "pathologist's labels": by_kind["pathologist"]}
    t = torch.from_numpy(toks.astype(np.int64))
    sources = {}
    for seed, run in zip(seeds_of(settings), gene_runs):
        enc, _ = load_gene_encoder(str(run))
        enc.eval()
        feats = torch.cat([enc.embed(t[i:i + 64]) for i in range(0, len(t), 64)]).float().numpy()
        name = f"{STAGE1_FEATURES} {seed}"
        sources[name] = EmbeddingSet(name, feats, slides, spot, counts=counts, gene_names=np.asarray(genes))
    if stamp_run is not None:
        from .models.stamp import load_stamp
        from .training.run_folder import latest_checkpoint

        model = load_stamp(latest_checkpoint(stamp_run)).eval()
        with torch.no_grad():
            joint = torch.cat([model.encode_genes(t[i:i + 64]) for i in range(0, len(t), 64)]).float().numpy()
        sources[STAMP_G_JOINT] = EmbeddingSet(STAMP_G_JOINT, joint, slides, spot, counts=counts,
                                              gene_names=np.asarray(genes))
    pca = expression_pca_source(next(iter(sources.values())))
    sources[pca.name] = pca
    out = {"what": f"Sections {', '.join(GENES_ONLY_HELDOUT)} (no image; held out of Stage 1, which validated on "
                   "them and chose nothing on them): per section, top-50 PCs of each source, k-means with k = the "
                   "section's labels; 95% interval over sections; gain over a 50-component PCA of the same spots' "
                   "log1p CP10k expression with a paired bootstrap over spots; one row per Stage-1 seed and the "
                   "spread over seeds" + ("; and the final Stage-2 model's X_stamp_g (its gene head on the seed-"
                                          "0 encoder's pooled feature), what the embedding files hold as Stamp_G."
                                          if stamp_run is not None else "."),
           "sections": list(GENES_ONLY_HELDOUT), "n_spots": int(len(spot)), "labels": {}}
    for lab_name, lab in labels.items():
        ev = evaluate_sources(sources, lab, ["cluster"], baseline=pca.name, seed=settings.seed)
        table = [r for r in ev["table"] if r.get("metric") == "kmeans_ari"]
        gains = [r for r in ev.get("gains", []) if r["metric"] == "kmeans_ari"]
        out["labels"][lab_name] = {"table": table, "gains": gains}
        seed_gains = [g for g in gains if g["source"].startswith(STAGE1_FEATURES)]
        if len(seed_gains) > 1:
            out["labels"][lab_name]["over_seeds"] = {
                "ari": spread([r["mean"] for r in table if r["source"].startswith(STAGE1_FEATURES)]),
                "gain_over_pca": spread([g["gain"] for g in seed_gains])}
    return out


def evaluate(settings: DemoSettings, files: dict[str, Path], root: Path, gene_runs: list[Path],
             ablation: dict, stamp_run: Path | None = None) -> dict:
    from .embedding_file import OBSM_BACKBONE, OBSM_STAMP_F, OBSM_STAMP_G, OBSM_STAMP_V, OBSM_STAMP_V_JOINT
    from .evaluation.labels import load_labels
    from .evaluation.report import write_report
    from .evaluation.sources import expression_pca_source, read_source
    from .evaluation.tasks import evaluate_sources

    report_dir = settings.out / "report"

    def go():
        sources = {  # cross-validated: each section scored with the fold model that never saw it
            STAMP_V: read_source(f"{files['stamp']}:{OBSM_STAMP_V}", STAMP_V),
            STAMP_V_JOINT: read_source(f"{files['stamp']}:{OBSM_STAMP_V_JOINT}", STAMP_V_JOINT),
            "STAMP_F (fusion)": read_source(f"{files['stamp']}:{OBSM_STAMP_F}", "STAMP_F (fusion)"),
            "STAMP_G (genes)": read_source(f"{files['stamp']}:{OBSM_STAMP_G}", "STAMP_G (genes)"),
            "EfficientNet-Lite0 (unaligned)": read_source(f"{files['backbone']}:{OBSM_BACKBONE}",
                                                          "EfficientNet-Lite0 (unaligned)"),
        }
        first = sources[STAMP_V]
        pca = expression_pca_source(first)
        sources[pca.name] = pca
        labels = load_labels("her2st-cluster", first, root)
        artifacts: dict = {"training_curves": {
            "Stage 1 gene encoder (held-out B4, C2, C3, C4)": str(settings.out / "gene_encoder" / "metrics.csv"),
            **{f"Stage 2 alignment, fold {s} held out": str(settings.out / "stamp_model" / "folds" / f"her2st_{s}"
                                                            / "metrics.csv") for s in IMAGED_SECTIONS}}}
        results = evaluate_sources(sources, labels, list(settings.tasks), baseline="EfficientNet-Lite0 (unaligned)",
                                   seed=settings.seed, artifacts=artifacts, progress=lambda m: _say(f"evaluate: {m}"))
        results["meta"]["notes"] = [
            "Demo on 2 CPU cores: Stage 1 trains the tiny gene encoder for about 14 minutes; Stage 2 fine-tunes "
            "the last block and conv head of EfficientNet-Lite0 (its frozen trunk cached) with the heads, far "
            "from the paper's millions of spots.",
            "STAMP_V (aligned encoder) is the fine-tuned image encoder's pooled feature (obsm X_stamp_v), the "
            "representation for linear read-outs; STAMP_V joint (projected) is its L2-normalised projection into "
            "the space shared with STAMP_G (X_stamp_v_joint, the release's img_emb), a linear map of the former "
            "that serves retrieval and imputation.",
            "Held out: leave-one-section-out over B4, C2, C3, C4. Stage 1 trained on the other "
            f"{len(DEMO_SECTIONS) - len(GENE_VAL_SECTIONS)} sections' expression; Stage 2 is cross-validated, and each section's STAMP embeddings come from the fold "
            "model trained on the other three. Gains are paired (bootstrap over spots within held-out sections).",
            "The Stage-2 recipe before issue [fidelity] was chosen on these four sections, and the current one "
            "(frozen BatchNorm statistics, L2-SP, EMA, HED jitter) was fixed a priori and measured on them: the "
            "figures here are tuning-section figures; the check that counts is on sections nobody tuned on.",
            f"Seeds: the tables above are seed {settings.seed}'s; "
            + (f"Ablations (below) gives the spread over {settings.seeds} Stage-2 seeds"
               + (" and each seed's shuffled-gene control" if settings.controls else "")
               + ", trained by this run on the same outer folds." if ablation else
               "this run trained one seed and no shuffled-gene control (--seeds 1 --no-controls): the spread "
               "over seeds and the genes' share were not measured.")]
        _say(f"evaluate: the gene encoder on the held-out genes-only sections {', '.join(GENES_ONLY_HELDOUT)}")
        results["genes_only"] = genes_only_heldout(settings, gene_runs, root, stamp_run)
        if ablation:
            results["ablations"] = ablation
        results.setdefault("meta", {})["demo"] = {
            "gene_encoder_val_sections": GENE_VAL_SECTIONS, "align": "cross-validated over the imaged sections",
            "eval_sections": EVAL_SECTIONS,
            "note": "no training stage saw the section it is scored on",
        }
        json_path, html_path = write_report(report_dir, results, artifacts, projection="umap")
        headline = [r for r in results["table"] if "mean" in r]
        return {"report": str(html_path), "results": str(json_path), "table": headline,
                "gains": results.get("gains", []), "genes_only": results.get("genes_only", {}),
                "ablations": results.get("ablations", {})}

    return _stage(settings, "evaluate", go)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def run_demo(settings: DemoSettings) -> dict:
    t0 = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    root = her2st_root()
    _say(f"her2st data: {root}; outputs: {settings.out.resolve()}")
    genes_dir, paired_dir = build_corpora(settings, root)
    gene_run = pretrain(settings, genes_dir)
    stamp_run = align(settings, paired_dir, gene_run)
    files = embed(settings, root, stamp_run, paired_dir)
    gene_runs = pretrain_seeds(settings, genes_dir, gene_run)
    ablation = ablations(settings, paired_dir, gene_run, stamp_run, root)
    ev = evaluate(settings, files, root, gene_runs, ablation, stamp_run)
    wall = time.perf_counter() - t0
    print_summary(ev, wall)
    return ev


def print_summary(ev: dict, wall_s: float) -> None:
    from .evaluation.gains import format_gain

    print("\n=== stamp-st demo: key metrics (her2st B4, C2, C3, C4, leave-one-section-out, mean [95% CI]) ===")
    for r in ev.get("table", []):
        print(f"{r['task']:<11} {r['metric']:<24} {r['source']:<32} {r.get('text', '')}")
    gains = ev.get("gains", [])
    if gains:
        print(f"\n=== gain over {gains[0]['baseline']} (paired bootstrap over held-out spots, 95% CI) ===")
        for g in gains:
            print(f"{g['task']:<11} {g['metric']:<24} {g['source']:<32} {format_gain(g)}")
    genes_only = ev.get("genes_only") or {}
    if genes_only:
        print(f"\n=== gene encoder on the held-out genes-only sections {', '.join(genes_only['sections'])} "
              "(k-means ARI; gain over the expression PCA, paired 95% CI) ===")
        for lab, r in genes_only["labels"].items():
            for row in r["table"]:
                gain = next((g for g in r["gains"] if g["source"] == row["source"]), None)
                print(f"{lab:<22} {row['source']:<40} {row['mean']:.3f}  {format_gain(gain) if gain else '(baseline)'}")
            seeds = r.get("over_seeds")
            if seeds:
                a, g = seeds["ari"], seeds["gain_over_pca"]
                print(f"{lab:<22} {'over ' + str(a['n_seeds']) + ' Stage-1 seeds':<40} {a['mean']:.3f} ± {a['sd']:.3f}"
                      f"  gain {g['mean']:+.3f} ± {g['sd']:.3f} [{g['min']:+.3f}, {g['max']:+.3f}]")
    abl = ev.get("ablations") or {}
    if abl:
        from .pipeline.ablations import summary_lines

        print(f"\n=== Stage-2 seeds {abl.get('seeds')} on the same outer folds: gain over the backbone, the "
              "shuffled-gene control's gain and the genes' share (paired 95% CI; mean ± sd over seeds) ===")
        print("\n".join(summary_lines(abl)))
    print(f"\nreport: {ev.get('report')}\nwall time this run: {wall_s / 60:.1f} min")
