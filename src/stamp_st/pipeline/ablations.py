"""Stage-2 ablations on outer folds: what alignment gains over the unaligned backbone, over several seeds, and
how much of it comes from the genes.

For each Stage-2 variant (overrides of one base config) and each seed, the variant is trained
cross-validated over the imaged slides of a paired corpus (one model per held-out slide,
``run_align_folds(final=False)``) and, as its control, on a copy of the corpus whose gene profiles are shuffled
among each slide's spots (``corpus.controls.shuffled_genes_copy``, a permutation per seed): what fine-tuning
gains without the pairing (augmentation, the new stain's statistics, the image-only losses) is not gained
from the genes. Every spot is embedded by the model that never saw its slide (one pass of the shared frozen
trunk for all models) and scored, with paired 95% bootstrap intervals over held-out spots
(``evaluation.gains``):

- the gain of Stamp_V (the aligned encoder's own feature) over the unaligned backbone;
- its control's gain over the backbone;
- the genes' share: the variant minus its own control, paired on the same spots;

and, over seeds, the mean, sd, min and max of each (``summary``). Used by ``stamp-st demo`` (the demo's recipe,
``--seeds``) and by ``benchmarks/fidelity_ablations.py`` (more variants).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from pathlib import Path

# read-outs summarised over seeds: (task, metric, column title)
READOUTS = (("expression", "ridge_pearson", "HEST ridge"), ("expression", "ridge_cv_pearson", "ridge, CV alpha"),
            ("probe", "balanced_accuracy", "probe bal. acc."))
GAIN_KINDS = ("gain_over_backbone", "control_gain_over_backbone", "genes_share", "gain_over_reference")
BACKBONE_SOURCE = "backbone"
# (corpus slide ids, spot ids) -> (counts CSR spots x genes, gene names, class labels ("" = none)) of those spots
Targets = Callable[..., tuple]


def run_name(variant: str) -> str:
    """A folder name for a variant's runs."""
    return "".join(c if c.isalnum() else "_" for c in variant.split(":")[0].split("(")[0].strip()).strip("_")


def run_tag(variant: str, seed: int, control: bool = False) -> str:
    """The name a (variant, seed, arm) run goes by: ``reuse`` keys, score sources, the results' train seconds."""
    return f"{variant} | seed {seed}" + (" | control" if control else "")


def seed_folder(seed: int, control: bool = False) -> str:
    """The folder of a (seed, arm) run under its variant's folder (``run_name``)."""
    return f"control_seed{seed}" if control else f"seed{seed}"


def spread(values: list[float]) -> dict:
    """Mean, sd (ddof 1; NaN for one value), min, max over seeds."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "min": float(v.min()), "max": float(v.max()), "n_seeds": len(v), "values": [float(x) for x in v]}


def summarise(entry: dict) -> dict:
    """``entry["summary"]``: the spread over seeds of each read-out's gain, control gain and genes' share."""
    entry["summary"] = {}
    for key in GAIN_KINDS:
        for task, metric, _ in READOUTS:
            vals = [g["gain"] for s in entry["seeds"].values() for g in s.get(key, [])
                    if g["task"] == task and g["metric"] == metric]
            if vals:
                entry["summary"].setdefault(key, {})[f"{task}/{metric}"] = spread(vals)
    return entry


def her2st_targets(her2st_root: Path, slide_ids, spot_ids):
    """Counts (CSR over the genes every slide shares), gene names and the study's cluster labels of corpus
    spots from her2st sections (corpus slide ids ``her2st_<section>``)."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from ..readers import read_sample
    from ..readers.labels import her2st_cluster_labels

    slides = list(dict.fromkeys(slide_ids))
    secs = {sl: sl.split("_", 1)[1] for sl in slides}
    per = {sl: read_sample(her2st_root, format="her2st", section=secs[sl]) for sl in slides}
    genes = sorted(set.intersection(*[set(a.var_names) for a in per.values()]))
    counts = sp.lil_matrix((len(slide_ids), len(genes)), dtype=np.float32)
    labels = np.full(len(slide_ids), "", dtype=object)
    for sl, a in per.items():
        m = np.flatnonzero(slide_ids == sl)
        rows = pd.Index(a.obs_names).get_indexer(spot_ids[m])
        counts[m] = sp.csr_matrix(a[:, genes].X)[rows]
        labels[m] = her2st_cluster_labels(her2st_root, secs[sl]).reindex(spot_ids[m]).fillna("").to_numpy()
    return counts.tocsr(), np.asarray(genes), labels


def evaluate_runs(runs: dict[str, Path], corpus: str | Path, targets: Targets, slides: list[str],
                  backbone: str = "efficientnet_lite0") -> dict:
    """``runs``: tag -> run folder with ``folds/<slide>/``. Every tag's Stamp_V (each slide by the fold model
    that held it out) beside the backbone on expression and probe; the genes' share needs the gains between
    runs, so the predictions come back too (``artifacts``)."""
    from ..embedding_file import EmbeddingSet
    from ..evaluation.tasks import evaluate_sources
    from ..inference.corpus_embed import embed_corpus
    from ..training.run_folder import latest_checkpoint

    cks = {f"{tag}@{sl}": latest_checkpoint(run / "folds" / sl) for tag, run in runs.items() for sl in slides}
    res = embed_corpus(cks, corpus, backbone=backbone, progress=False)
    sid, spot = res["slide_ids"], res["spot_ids"]
    counts, genes, labels = targets(sid, spot)

    def source(name, emb, folds=None):
        return EmbeddingSet(name, emb, sid, spot, counts=counts, gene_names=genes, fold_emb=folds)

    sources = {tag: source(tag, res["stamp_v"][f"{tag}@{slides[0]}"],
                           {sl: res["stamp_v"][f"{tag}@{sl}"] for sl in slides}) for tag in runs}
    sources[BACKBONE_SOURCE] = source(BACKBONE_SOURCE, res["backbone"])
    artifacts: dict = {}
    ev = evaluate_sources(sources, labels, ["expression", "probe"], baseline=BACKBONE_SOURCE, artifacts=artifacts)
    return {"ev": ev, "artifacts": artifacts}


def run_ablations(corpus: str | Path, gene_encoder: str | Path, out: str | Path, variants: dict[str, dict],
                  seeds: list[int], targets: Targets, *, base_config: str = "demo_cpu", controls: bool = True,
                  controls_only: bool = False, steps: int | None = None, reuse: dict[str, Path] | None = None,
                  reference: str | None = None, no_control: Collection[str] = (), train_only: bool = False,
                  progress: Callable[[str], None] = print) -> dict:
    """Train every (variant, seed) and its control cross-validated, then score them (see the module's text).

    ``variants``: name -> overrides of ``base_config`` (``{}`` is the base recipe itself; a ``trainer`` key
    merges into the config's trainer settings). ``reuse``: run tags (``"<variant> | seed <s>"``) already trained
    elsewhere with the same recipe and seed (e.g. the demo's own fold models), used instead of training again.
    Finished runs under ``out`` are reused too, so an interrupted call resumes. ``reference``: a variant every
    other one is compared with, seed by seed and paired on the same spots (``gain_over_reference``: what a change
    to that recipe does). ``no_control``: variants trained without a control (e.g. a reference whose control is
    measured elsewhere). ``targets``: the held-out spots'
    expression and labels the read-outs predict (``her2st_targets`` bound to a her2st folder for her2st). Returns ``{"held_out", "seeds",
    "variants", "scores", "seconds"}``; ``train_only``: only ``{"runs", "seconds"}``."""
    from ..corpus.controls import shuffled_genes_copy
    from ..evaluation.gains import task_gains
    from ..training.align import AlignConfig, corpus_slides, run_align_folds

    slides = corpus_slides(corpus)
    out = Path(out)
    reuse = dict(reuse or {})
    trunk_caches: dict = {}  # the frozen trunk's maps: the same crops in the real and the shuffled corpus
    gene_caches: dict = {}  # per corpus: the shuffled copy's tokens differ
    runs: dict[str, Path] = {}
    meta: dict[str, dict] = {}
    seconds: dict[str, float | None] = {}
    arms = [True] if controls_only else [False, True] if controls else [False]
    if reference is not None and reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of the variants {list(variants)}")
    for name, overrides in variants.items():
        for seed in seeds:
            for control in ([False] if name in no_control and not controls_only else arms):
                tag = run_tag(name, seed, control)
                run = out / run_name(name) / seed_folder(seed, control)
                timing = run / "train_seconds.json"
                if tag in reuse:
                    run = Path(reuse[tag])
                    seconds[tag] = None
                elif (run / "folds.json").is_file():  # finished before (an interrupted or parallel call)
                    progress(f"[{tag}] reusing {run}")
                    seconds[tag] = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
                else:
                    data = (shuffled_genes_copy(corpus, out / f"corpus_shuffled_seed{seed}", seed=seed)
                            if control else Path(corpus))
                    trainer = {**overrides.get("trainer", {}), "seed": seed, "progress": False}
                    if steps:
                        trainer["max_steps"] = steps
                    settings = {k: x for k, x in overrides.items() if k != "trainer"}
                    cfg = AlignConfig.load(base_config, gene_encoder=str(gene_encoder), trainer=trainer, **settings)
                    caches = gene_caches.setdefault(str(data), {})
                    caches.update({k: c for k, c in trunk_caches.items() if k not in caches})
                    t0 = time.perf_counter()
                    run_align_folds(data, cfg, run, slides=slides, final=False, caches=caches,
                                    progress=lambda m, t=tag: progress(f"[{t}] {m}"))
                    seconds[tag] = round(time.perf_counter() - t0, 1)
                    timing.write_text(json.dumps({"seconds": seconds[tag]}))
                    progress(f"[{tag}] trained in {seconds[tag]:.0f} s")
                    trunk_caches.update({k: c for k, c in caches.items() if k.startswith("trunk_cache")})
                runs[tag] = run
                meta[tag] = {"variant": name, "seed": seed, "control": control}
    if train_only:
        return {"runs": {k: str(v) for k, v in runs.items()}, "seconds": {"train": seconds}}

    t0 = time.perf_counter()
    progress(f"scoring {len(runs)} runs x {len(slides)} folds")
    r = evaluate_runs(runs, corpus, targets, slides)
    ev, art = r["ev"], r["artifacts"]
    share = []  # each run minus its own shuffled control, paired on the same held-out spots
    for tag, m in meta.items():
        ctl = run_tag(m["variant"], m["seed"], control=True)
        if not m["control"] and ctl in meta:
            for g in task_gains(ev, art["predictions"], art["labels"], art["folds"], baseline=ctl, sources=[tag]):
                share.append({**g, "source": tag, "baseline": ctl})
    versus = []  # each run minus the reference variant's run of the same seed, paired on the same spots
    for tag, m in meta.items():
        ref = run_tag(reference, m["seed"]) if reference else None
        if not m["control"] and m["variant"] != reference and ref in meta:
            for g in task_gains(ev, art["predictions"], art["labels"], art["folds"], baseline=ref, sources=[tag]):
                versus.append({**g, "source": tag, "baseline": ref})

    def rows_of(rows, tag):
        return [g for g in rows if g["source"] == tag]

    out_variants: dict = {}
    for name, overrides in variants.items():
        entry: dict = {"settings": overrides, "seeds": {}}
        for seed in seeds:
            tag, ctl = run_tag(name, seed), run_tag(name, seed, control=True)
            entry["seeds"][str(seed)] = {
                "gain_over_backbone": rows_of(ev["gains"], tag),
                "control_gain_over_backbone": rows_of(ev["gains"], ctl),
                "genes_share": rows_of(share, tag),
                **({"gain_over_reference": rows_of(versus, tag)} if reference and name != reference else {}),
                "train_seconds": seconds.get(tag), "control_train_seconds": seconds.get(ctl)}
        out_variants[name] = summarise(entry)
    scores = {f"{x['task']}/{x['metric']}/{x['source']}": {"mean": x["mean"], "low": x["low"], "high": x["high"]}
              for x in ev["table"] if "mean" in x}
    return {"held_out": slides, "seeds": list(seeds), "variants": out_variants, "scores": scores,
            **({"reference": reference} if reference else {}),
            "seconds": {"train": seconds, "evaluate": round(time.perf_counter() - t0, 1)}}


def summary_lines(result: dict) -> list[str]:
    """Plain-text rows: per variant and read-out kind, mean ± sd over seeds of each read-out."""
    from ..evaluation.gains import format_gain

    lines = []
    for name, v in result.get("variants", {}).items():
        for seed, s in v.get("seeds", {}).items():
            for kind in GAIN_KINDS:
                rows = {(g["task"], g["metric"]): g for g in s.get(kind, [])}
                if rows:
                    lines.append(f"{name[:48]:<48} s{seed} {kind:<27} " + "  ".join(
                        f"{c[2]}: {format_gain(rows[c[:2]])}" for c in READOUTS if c[:2] in rows))
        if len(v.get("seeds", {})) < 2:
            continue  # one seed has no spread: its rows above say it all
        for kind, sm in v.get("summary", {}).items():
            lines.append(f"{name[:48]:<48} {'all':<2} {kind:<27} " + "  ".join(
                f"{c[2]}: {sm[f'{c[0]}/{c[1]}']['mean']:+.3f} ± {sm[f'{c[0]}/{c[1]}']['sd']:.3f}"
                for c in READOUTS if f"{c[0]}/{c[1]}" in sm))
    return lines
