"""``stamp-st reproduce``: the paper's chain at its own scale, one command, every stage resumable.

download (HEST-1k, ``download hest``; skipped when a local HEST root is given) -> gene and paired corpora
(``build-corpus`` on Dask: local worker processes or a scheduler address) -> Stage 1 (``pretrain-genes``) and
Stage 2 (``align``), each under ``torchrun`` on N processes (launched here, or by ``srun`` on every node of a
SLURM allocation) -> embed (the held-out samples, the aligned model and the unaligned backbone) -> benchmark
-> report.

Held out: the ``eval_ids`` samples (or, when none are named, a seeded ``eval_fraction`` of the groups of
``eval_group_column``, e.g. whole studies) are never trained on: Stage 1 and Stage 2 only validate on them,
and the benchmark scores only them. Every stage leaves ``OUT/stages/<stage>.json`` when it finishes
(``stamp_st.stages``, as the demo does); a re-run skips finished stages, and an interrupted corpus build or
training run resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config_types import BATCH_SIZE, SEED, WORKERS, config_from_dict, ranged
from ..errors import StampInputError
from ..io_utils import atomic_write_json
from ..stages import run_stage, stage_done
from .launch import SLURM_JOB_ID, Launch, shell_line, torchrun_argv

STAGES = ("download", "corpus-genes", "corpus-paired", "pretrain", "align", "embed", "benchmark", "report")
DEFAULT_OUTPUTS = {"downloads": ".", "corpus_genes": "corpus_genes", "corpus_paired": "corpus_paired",
                   "gene_encoder": "gene_encoder", "stamp_model": "stamp_model", "embeddings": "embeddings",
                   "benchmark": "benchmark", "report": "report", "configs": "configs"}  # downloads: DIR/hest/


@dataclass
class ReproduceConfig:
    """A pipeline config (``configs/reproduce/<name>.json`` or a JSON file): what to train on, with which stage
    configs, on how many processes, and where each stage writes (folders relative to ``--out``)."""

    hest_root: str | None = None  # a local HEST-1k root (st/, wsis/, metadata/): the download is skipped
    hest_filters: dict = field(default_factory=lambda: {"st_technology": "Visium", "species": "Homo sapiens"})
    hest_ids: list[str] = field(default_factory=list)  # samples named outright (with or instead of filters)
    eval_ids: list[str] = field(default_factory=list)  # held out of both stages, benchmarked
    eval_fraction: float = ranged(0.1, lo=0, hi=1, hi_open=True, why="fraction of groups held out")  # when no eval_ids: this fraction of the groups below, drawn with the seed
    eval_group_column: str = "dataset_title"  # a HEST metadata column (whole studies held out by default)
    pretrain: str | dict = "reference"  # Stage-1 config: a configs/pretrain name, a JSON file or the config
    align: str | dict = "paper"  # Stage-2 config: a configs/align name, a JSON file or the config
    backbone: str | None = None  # replaces the align config's backbone
    corpus: dict = field(default_factory=dict)  # build-corpus settings for both kinds (out_px, shard_size ...)
    dask_workers: int = ranged(4, WORKERS)  # local Dask worker processes
    dask_scheduler: str | None = None  # or the address of a running Dask scheduler
    nproc_per_node: int = ranged(1, lo=1, hi=1024, integer=True, why="processes per node")  # torchrun processes per node (GPUs per node) for Stage 1 and Stage 2
    nnodes: int = ranged(1, lo=1, hi=100_000, integer=True, why="nodes")
    embed_batch_size: int = ranged(64, BATCH_SIZE)
    # HEST-Benchmark's bench_data (gated: MahmoodLab/hest-bench), run with HEST's own protocol at the end; without
    # it the protocol runs on a task written in HEST-Benchmark's layout from the held-out samples
    bench_root: str | None = None
    bench_tasks: list[str] = field(default_factory=list)  # default: every task folder of bench_root
    bench_latent_dim: int = ranged(256, lo=1, hi=1 << 16, integer=True, why="PCA dimensions")  # HEST's PCA size; only a smoke run, whose folds hold fewer spots, sets less
    seed: int = ranged(0, SEED)
    outputs: dict = field(default_factory=dict)  # stage -> folder under --out (DEFAULT_OUTPUTS)

    @classmethod
    def load(cls, name_or_path: str | Path) -> ReproduceConfig:
        from ..configs import load_config_json

        d, source = load_config_json("reproduce", name_or_path)
        return cls.from_dict(d, source)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> ReproduceConfig:
        cfg = config_from_dict(cls, d, source, "reproduce setting", ignore=("description",))
        unknown = set(cfg.outputs) - set(DEFAULT_OUTPUTS)
        if unknown:
            raise StampInputError(f"unknown outputs {sorted(unknown)}", source, hint=f"allowed: {sorted(DEFAULT_OUTPUTS)}")
        return cfg

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Settings:
    out: Path
    config: ReproduceConfig
    launch: Launch
    force: tuple[str, ...] = ()
    print_commands: bool = False
    json: bool = False  # stdout holds one JSON summary: progress and the training processes' output go to stderr

    def path(self, what: str) -> Path:
        return self.out / {**DEFAULT_OUTPUTS, **self.config.outputs}[what]


_LOG = {"stream": None}  # None: stdout


def _say(msg: str) -> None:
    print(f"[reproduce] {msg}", flush=True, file=_LOG["stream"])


def _stage(s: Settings, name: str, fn) -> dict:
    return run_stage(s.out, name, fn, s.force, _say)


# ---------------------------------------------------------------------- download and sample selection
def download(s: Settings) -> Path:
    """The HEST root: the config's local one, else the samples the filters select, fetched by ``download hest``."""
    cfg = s.config

    def go():
        if cfg.hest_root:
            root = Path(cfg.hest_root)
            from ..readers.hest import is_hest_root

            if not is_hest_root(root):
                raise StampInputError("not a HEST root (no st/ with wsis/ or metadata/)", root,
                                      hint="point hest_root / --hest-root at the folder `download hest` fills")
            return {"root": str(root.resolve()), "downloaded": False}
        from ..download import download_hest

        root, ids = download_hest(ids=cfg.hest_ids or None, filters=cfg.hest_filters or None,
                                  dest=s.path("downloads"))
        return {"root": str(root), "ids": ids, "downloaded": True}

    return Path(_stage(s, "download", go)["root"])


def sample_table(root: Path):
    """One row per sample of the root (its ``metadata/<id>.json``; the sample id where there is none)."""
    import pandas as pd

    from ..readers.hest import hest_sections, read_metadata

    rows = []
    for sid in hest_sections(root):
        meta, _ = read_metadata(root, sid)
        rows.append({**{k: v for k, v in meta.items() if not isinstance(v, (dict, list))}, "id": sid})
    return pd.DataFrame(rows)


def select_samples(cfg: ReproduceConfig, root: Path) -> tuple[list[str], list[str], dict]:
    """(training ids, held-out ids, table of each id's metadata) from the filters, named ids and eval split."""
    import numpy as np

    table = sample_table(root)
    if table.empty:
        raise StampInputError("the HEST root holds no sample (st/*.h5ad)", root)
    keep = np.ones(len(table), bool)
    for col, value in cfg.hest_filters.items():
        if col not in table.columns:
            raise StampInputError(f"no sample's metadata has the column {col!r}", root / "metadata",
                                  hint="fix hest_filters in the reproduce config")
        keep &= table[col].astype(str).str.lower().to_numpy() == str(value).lower()
    if cfg.hest_ids:
        missing = sorted(set(cfg.hest_ids) - set(table["id"]))
        if missing:
            raise StampInputError(f"samples {missing} are not in the HEST root", root / "st")
        keep |= table["id"].isin(cfg.hest_ids).to_numpy()
    chosen = table[keep]
    ids = chosen["id"].astype(str).tolist()
    if cfg.eval_ids:
        missing = sorted(set(cfg.eval_ids) - set(ids))
        if missing:
            raise StampInputError(f"eval_ids {missing} are not among the selected samples", root,
                                  hint="name held-out samples that the filters keep, or add them to hest_ids")
        held = list(cfg.eval_ids)
    else:
        col = cfg.eval_group_column
        groups = chosen[col].astype(str) if col in chosen.columns else chosen["id"].astype(str)
        uniq = sorted(groups.unique())
        n_eval = max(1, round(cfg.eval_fraction * len(uniq))) if cfg.eval_fraction > 0 else 0
        picked = set(np.random.default_rng(cfg.seed).permutation(uniq)[:n_eval].tolist())
        held = [i for i, g in zip(ids, groups) if g in picked]
    train = [i for i in ids if i not in set(held)]
    if not train or len(held) < 2:
        raise StampInputError(f"{len(train)} training and {len(held)} held-out samples: need at least 1 and 2 "
                              "(the benchmark fits on held-out slides and scores on another)", root,
                              hint="widen hest_filters or name eval_ids")
    organs = dict(zip(chosen["id"].astype(str), chosen.get("organ", chosen["id"]).astype(str)))
    return train, held, organs


# ---------------------------------------------------------------------- corpora (Dask)
def corpora(s: Settings, root: Path, train: list[str], held: list[str], organs: dict) -> tuple[Path, Path]:
    from ..corpus.build import BuildConfig, build_corpus
    from ..corpus.samples import entries_from_records
    from ..paths import vocab_file

    cfg = s.config

    def entries(ids_splits):
        return entries_from_records([{"path": str(root), "format": "hest", "section": i, "slide_id": i,
                                      "organ": organs.get(i, ""), "study": "hest", "split": sp}
                                     for i, sp in ids_splits], source=root)

    # held-out samples only validate (the val split): no stage trains on them
    rows = [(i, "train") for i in train] + [(i, "val") for i in held]

    def build(kind: str, out: Path):
        def go():
            bc = BuildConfig.from_json({**cfg.corpus, "kind": kind, "vocab_path": str(vocab_file()),
                                        "seed": cfg.seed}, "the reproduce config's corpus settings")
            res = build_corpus(entries(rows), out, bc, workers=cfg.dask_workers, scheduler=cfg.dask_scheduler)
            return {"corpus": str(out), "build": res.get("build", {})}
        return go

    _stage(s, "corpus-genes", build("genes", s.path("corpus_genes")))
    _stage(s, "corpus-paired", build("paired", s.path("corpus_paired")))
    return s.path("corpus_genes"), s.path("corpus_paired")


# ---------------------------------------------------------------------- Stage 1 and Stage 2 (torchrun)
def stage_config_file(s: Settings, kind: str) -> Path:
    """The stage's config as one JSON file in OUT/configs/ (a registered name, a file or inline settings):
    the exact settings every process reads, kept with the run."""
    from ..configs import load_config_json

    spec = s.config.pretrain if kind == "pretrain" else s.config.align
    d = dict(spec) if isinstance(spec, dict) else load_config_json(kind, spec)[0]
    if kind == "pretrain":
        from ..training.pretrain_genes import PretrainConfig

        PretrainConfig.from_dict(d, f"the reproduce config's {kind} settings")  # fails here, not in N processes
    else:
        from ..training.align import AlignConfig

        d = {k: v for k, v in d.items() if k != "gene_encoder"}  # given on the command line: Stage 1's run
        if s.config.backbone:
            d["backbone"] = s.config.backbone
        AlignConfig.from_dict({k: v for k, v in d.items() if k != "description"},
                              f"the reproduce config's {kind} settings")
    d.setdefault("trainer", {})
    d["trainer"] = {**d["trainer"], "seed": s.config.seed}
    path = s.path("configs") / f"{kind}.json"
    atomic_write_json(path, d)
    return path


def stage_commands(s: Settings, for_shell: bool = False) -> dict[str, list[str]]:
    """The two training stages' command lines (the same settings the stages run with)."""
    cfgs = {k: s.path("configs") / f"{k}.json" for k in ("pretrain", "align")}
    job = os.environ.get("SLURM_JOB_ID") or (SLURM_JOB_ID if for_shell else "stamp_st")
    pre = ["pretrain-genes", str(s.path("corpus_genes")), "--config", str(cfgs["pretrain"]),
           "--out", str(s.path("gene_encoder"))]
    ali = ["align", str(s.path("corpus_paired")), "--config", str(cfgs["align"]),
           "--gene-encoder", str(s.path("gene_encoder")), "--out", str(s.path("stamp_model"))]
    return {"pretrain": torchrun_argv(pre, s.launch, job, for_shell=for_shell),
            "align": torchrun_argv(ali, s.launch, job, for_shell=for_shell)}


def train_stage(s: Settings, name: str) -> Path:
    run_dir = s.path("gene_encoder" if name == "pretrain" else "stamp_model")

    def go():
        stage_config_file(s, name)
        argv = stage_commands(s)[name]
        _say(f"{name}: {shell_line(argv)}")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        rc = subprocess.run(argv, env=env, check=False, stdout=sys.stderr if s.json else None).returncode
        if rc != 0:
            raise StampInputError(f"{name} exited with status {rc} (its output is above)", run_dir,
                                  hint="fix what it reports and re-run the same command: finished stages are "
                                       "skipped and training resumes from its last checkpoint")
        return {"run": str(run_dir), "processes": s.launch.nproc_per_node * s.launch.nnodes}

    _stage(s, name, go)
    return run_dir


# ---------------------------------------------------------------------- embed, benchmark, report
def embed(s: Settings, root: Path, held: list[str], stamp_run: Path) -> dict[str, str]:
    """The held-out samples' spots: the aligned model (Stamp_V, its joint projection, Stamp_G, Stamp_F) and the
    unaligned backbone it started from, each into one .h5ad with the spots' counts (the benchmark's targets)."""
    out = s.path("embeddings")
    files = {"stamp": out / "stamp.h5ad", "backbone": out / "backbone.h5ad"}

    def go():
        import numpy as np
        import scipy.sparse as sp

        from ..embedding_file import write_embedding_h5ad
        from ..inference.embed import embed_sample, load_embedder
        from ..readers import SampleMeta, read_sample
        from ..training.run_folder import latest_checkpoint

        ck = latest_checkpoint(stamp_run)
        backbone = json.loads((s.path("configs") / "align.json").read_text()).get("backbone", "efficientnet_lite0")
        samples = {i: read_sample(root, format="hest", section=i) for i in held}
        genes = sorted(set.intersection(*[set(a.var_names) for a in samples.values()]))
        for key, model in (("stamp", str(ck)), ("backbone", f"backbone:{backbone}")):
            embedder = load_embedder(model, device="auto")
            per = {i: embed_sample(embedder, a, batch_size=s.config.embed_batch_size) for i, a in samples.items()}
            keys = [k for k in next(iter(per.values())) if all(k in p for p in per.values())]
            embs = {k: np.concatenate([per[i][k] for i in held]) for k in keys}
            write_embedding_h5ad(
                files[key], embs,
                slide_ids=np.concatenate([[i] * samples[i].n_obs for i in held]),
                spot_ids=np.concatenate([samples[i].obs_names.to_numpy(str) for i in held]),
                xy_px=np.concatenate([np.asarray(samples[i].obsm["spatial"]) for i in held]),
                counts=sp.vstack([sp.csr_matrix(samples[i][:, genes].X) for i in held]).tocsr(),
                gene_names=genes, image_paths={i: SampleMeta.of(a).image_path for i, a in samples.items()},
                record={"model": model})
        return {k: str(v) for k, v in files.items()}

    _stage(s, "embed", go)
    return {k: str(v) for k, v in files.items()}


STAMP_V = "STAMP_V (aligned encoder)"
STAMP_V_JOINT = "STAMP_V joint (projected)"


def benchmark_sources(files: dict[str, str], backbone: str) -> dict:
    """The aligned encoder's feature (unchanged by Stage 2 where the backbone is frozen), its projection into the
    joint space (trained in every recipe), and the unaligned backbone (the baseline)."""
    from ..embedding_file import OBSM_BACKBONE, OBSM_STAMP_V, OBSM_STAMP_V_JOINT
    from ..evaluation.sources import read_source

    base = f"{backbone} (unaligned)"
    return {STAMP_V: read_source(f"{files['stamp']}:{OBSM_STAMP_V}", STAMP_V),
            STAMP_V_JOINT: read_source(f"{files['stamp']}:{OBSM_STAMP_V_JOINT}", STAMP_V_JOINT),
            base: read_source(f"{files['backbone']}:{OBSM_BACKBONE}", base)}, base


def run_benchmark(sources: dict, baseline: str, seed: int, progress=None) -> dict:
    """The held-out samples' spots, leave-one-slide-out: the registered ``expression`` task (ridge from each
    source to the 50 most variable genes, with paired gains over the baseline) for the report."""
    from ..evaluation.tasks import evaluate_sources

    return evaluate_sources(sources, None, ["expression"], baseline=baseline, seed=seed, progress=progress)


BENCH_SOURCES = (("STAMP_V", "stamp", "X_stamp_v"), ("STAMP_V_joint", "stamp", "X_stamp_v_joint"),
                 ("backbone", "backbone", None))


def write_heldout_bench(s: Settings, root: Path, held: list[str]) -> Path:
    """A HEST-Benchmark task (``bench_data/HELDOUT``: splits, adata, 224-px patches of 112 µm, 50 genes) from the
    held-out samples, one fold per sample (train on the others): HEST's protocol on the samples no stage saw."""
    import numpy as np

    from ..evaluation.hest_benchmark import write_bench_task
    from ..inference.bench_patches import HEST_PATCH_UM
    from ..readers import SampleMeta, read_sample
    from ..readers.slide import open_slide

    bench = s.path("benchmark") / "bench_data"
    task = bench / "HELDOUT"
    samples = {}
    for sid in held:
        a = read_sample(root, format="hest", section=sid)
        meta = SampleMeta.of(a)
        slide = open_slide(meta.image_path)
        side_px = HEST_PATCH_UM / float(meta.slide_um_per_px)
        imgs = np.stack([slide.read_square(c, side_px, 224) for c in np.asarray(a.obsm["spatial"], np.float64)])
        samples[sid] = (a, imgs, a.obs_names.to_numpy(str))
    folds = [([o for o in held if o != sid], [sid]) for sid in held]
    write_bench_task(task, samples, folds)
    return bench


def hest_benchmark(s: Settings, root: Path, held: list[str], stamp_run: Path) -> dict:
    """HEST-Benchmark exactly as HEST's code runs it (``evaluation.hest_benchmark``) on the aligned model's
    Stamp_V, its joint projection and the unaligned backbone: on ``bench_root`` when the config names it, else on
    a task written from the held-out samples."""
    from ..evaluation.hest_benchmark import HestBenchConfig, bench_samples, run_hest_benchmark
    from ..inference.bench_patches import embed_bench_tasks
    from ..training.run_folder import latest_checkpoint

    out = s.path("benchmark")
    bench = Path(s.config.bench_root) if s.config.bench_root else write_heldout_bench(s, root, held)
    tasks = s.config.bench_tasks or None
    samples = bench_samples(bench, tasks)
    backbone = json.loads((s.path("configs") / "align.json").read_text()).get("backbone", "efficientnet_lite0")
    models = {"stamp": str(latest_checkpoint(stamp_run)), "backbone": f"backbone:{backbone}"}
    res = {}
    for name, model, key in BENCH_SOURCES:
        emb_dir = embed_bench_tasks(models[model], samples, out / "hest_embeddings" / name, key,
                                    batch_size=s.config.embed_batch_size, say=_say)
        r = run_hest_benchmark(bench, [emb_dir], tasks, HestBenchConfig(latent_dim=s.config.bench_latent_dim),
                               out_dir=out / "hest_benchmark" / name)
        res[name] = {"average": r["average"], "tasks": {t: {"pearson_mean": v["pearson_mean"],
                                                             "pearson_std": v["pearson_std"]}
                                                         for t, v in r["tasks"].items()}}
    return {"protocol": "HEST-Benchmark (hest/bench @ afd42c3)" + (
                "" if s.config.bench_latent_dim == 256 else f", PCA to {s.config.bench_latent_dim} (not HEST's 256)"),
            "bench_root": str(bench),
            "written_from_held_out_samples": not s.config.bench_root, "sources": res}


def benchmark(s: Settings, files: dict[str, str], root: Path, held: list[str], stamp_run: Path) -> Path:
    out = s.path("benchmark") / "results.json"

    def go():
        from ..evaluation.report import json_clean

        backbone = json.loads((s.path("configs") / "align.json").read_text()).get("backbone", "efficientnet_lite0")
        sources, base = benchmark_sources(files, backbone)
        results = run_benchmark(sources, base, s.config.seed, progress=lambda m: _say(f"benchmark: {m}"))
        results.setdefault("meta", {})["hest_benchmark"] = hest_benchmark(s, root, held, stamp_run)
        atomic_write_json(out, json_clean(results))
        return {"results": str(out), "table": [r for r in results.get("table", []) if "mean" in r],
                "hest_benchmark": results["meta"]["hest_benchmark"]}

    _stage(s, "benchmark", go)
    return out


def report(s: Settings, results_path: Path, train: list[str], held: list[str]) -> dict:
    def go():
        from ..evaluation.report import write_report

        results = json.loads(results_path.read_text())
        results.setdefault("meta", {})["reproduce"] = {
            "train_samples": train, "held_out_samples": held,
            "processes": s.launch.nproc_per_node * s.launch.nnodes,
            "note": "no training stage saw the held-out samples; Stage 1 and Stage 2 validated on them"}
        artifacts = {"training_curves": {"Stage 1 gene encoder": str(s.path("gene_encoder") / "metrics.csv"),
                                         "Stage 2 alignment": str(s.path("stamp_model") / "metrics.csv")}}
        json_path, html_path = write_report(s.path("report"), results, artifacts, projection="pca",
                                            title="stamp-st reproduce")
        return {"report": str(html_path), "results": str(json_path),
                "table": [r for r in results.get("table", []) if "mean" in r]}

    return _stage(s, "report", go)


# ---------------------------------------------------------------------- the chain
def print_commands(s: Settings) -> None:
    """The training stages' exact lines (each stage's config is written first, so the lines run as printed)."""
    for name in ("pretrain", "align"):
        stage_config_file(s, name)
    lines = stage_commands(s, for_shell=True)
    print(f"# Stage 1 and Stage 2 on {s.launch.nnodes} node(s) x {s.launch.nproc_per_node} process(es); their "
          f"configs are in {s.path('configs')}; run after the corpora exist (`stamp-st reproduce` builds them)")
    for argv in lines.values():
        print(shell_line(argv))
    if s.launch.launcher == "slurm":
        print("# the whole chain as one batch job: sbatch --nodes="
              f"{s.launch.nnodes} --gpus-per-node={s.launch.nproc_per_node} examples/slurm/reproduce.sbatch")


def run_reproduce(s: Settings) -> dict:
    """The chain; returns the report stage's result (report, results, headline table) and each stage's seconds."""
    _LOG["stream"] = sys.stderr if s.json else None
    s.out.mkdir(parents=True, exist_ok=True)
    _say(f"outputs: {s.out.resolve()}; {s.launch.nnodes} node(s) x {s.launch.nproc_per_node} process(es), "
         f"launcher {s.launch.launcher}")
    if s.print_commands:
        print_commands(s)
        return {}
    root = download(s)
    train, held, organs = select_samples(s.config, root)
    _say(f"{len(train)} training samples, {len(held)} held out ({', '.join(held[:8])}"
         f"{' ...' if len(held) > 8 else ''})")
    corpora(s, root, train, held, organs)
    train_stage(s, "pretrain")
    stamp_run = train_stage(s, "align")
    files = embed(s, root, held, stamp_run)
    results = benchmark(s, files, root, held, stamp_run)
    rep = report(s, results, train, held)
    rep["hest_benchmark"] = json.loads(results.read_text()).get("meta", {}).get("hest_benchmark")
    rep["stage_seconds"] = {n: json.loads((s.out / "stages" / f"{n}.json").read_text()).get("seconds")
                            for n in STAGES if stage_done(s.out, n)}
    return rep


def print_summary(rep: dict) -> None:
    print("\n=== stamp-st reproduce: HEST ridge on the held-out samples (mean [95% CI] over slides) ===")
    for r in rep.get("table", []):
        print(f"{r['task']:<11} {r['metric']:<24} {r['source']:<36} {r.get('text', '')}")
    hb = rep.get("hest_benchmark") or {}
    if hb:
        where = "a task written from the held-out samples" if hb.get("written_from_held_out_samples") else hb["bench_root"]
        print(f"=== {hb['protocol']} on {where}: average Pearson over tasks ===")
        for name, r in hb["sources"].items():
            print(f"{name:<16} {r['average']:.4f}  " + ", ".join(f"{t} {v['pearson_mean']:.4f} ± {v['pearson_std']:.4f}"
                                                            for t, v in r["tasks"].items()))
    print("stage seconds: " + ", ".join(f"{n} {t}" for n, t in rep.get("stage_seconds", {}).items()))
    print(f"report: {rep.get('report')}")

