"""HEST-Benchmark (Jaume et al. 2024) as HEST's own benchmark code runs it, on any embedding files.

The benchmark data (gated, ``MahmoodLab/hest-bench``) has its own layout, one folder per task::

    bench_data/<TASK>/splits/train_<i>.csv, test_<i>.csv   patient-level folds; columns sample_id,
                                                            patches_path, expr_path (relative to <TASK>/)
    bench_data/<TASK>/patches/<sample_id>.h5                 224 px patches + 'barcode' per spot
    bench_data/<TASK>/adata/<sample_id>.h5ad                 raw expression
    bench_data/<TASK>/var_50genes.json                       {"genes": [...]}: the 50 targets

so it is its own command (``stamp-st hest-benchmark``), not an :class:`EvalTask` over our sources.
Per fold, as ``hest/bench/benchmark.py`` + ``trainer.py`` do it (github:mahmoodlab/HEST @ afd42c3):

* the spots of a sample are the barcodes of its embedding file, in that order (HEST embeds
  ``patches/<id>.h5``; where that file is present its barcodes fix the spots and their order here, and the
  embedding file may hold more spots); targets are ``adata[barcodes][:, genes]`` with ``log1p`` only
  (``normalize=True``: no per-spot scaling), in float64; the samples of a split are stacked in CSV order;
* features: ``StandardScaler`` then ``PCA(256, random_state=seed)``, both fit on the training split only,
  the result rounded to float32 (HEST wraps it in ``torch.Tensor``) and then, as scikit-learn's input
  check does to a torch tensor (it has no numpy dtype), fit and predicted in float64; lsqr stops at
  ``tol=1e-4``, so that precision path moves Pearson in the third decimal and is kept;
* ``Ridge(solver='lsqr', alpha=100 / (n_features * n_targets), fit_intercept=False, max_iter=1000,
  random_state=seed)`` with ``seed=1`` (HEST's default). Without an intercept on centred features the
  predictions miss each gene's mean, so HEST's ``l2_errors`` / ``r2_scores`` (kept here as it computes
  them) are poor by construction; its headline metric, Pearson, is unaffected;
* metrics: ``scipy.stats.pearsonr`` per gene, its mean and std over genes per fold; over folds, each
  gene's mean/std and ``pearson_mean`` / ``pearson_std`` = mean / population std of the fold means; a
  benchmark's average is the mean of the tasks' ``pearson_mean``.

The numbers depend on scikit-learn's version as HEST's do (PCA's randomised solver on large inputs). Only
HEST's ridge read-out (its published table) is implemented, not its random-forest (cuML) or XGBoost ones.
API for pipelines: ``run_hest_benchmark(bench_root, BenchEmbeddings([...]), tasks=None)`` -> a dict;
``write_bench_task`` writes a task in this layout from our own data (a smoke test of the whole chain).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..embedding_file import decode_barcodes, read_barcoded_h5
from ..errors import DataNotFoundError, StampInputError

# HEST's task folders (bench_config.yaml); the README's table names CCRCC "ccRCC" and LUNG "LUAD"
HEST_BENCH_TASKS = ("IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "HCC", "LUNG", "LYMPH_IDC")
GENE_LIST_DEFAULT = "var_50genes.json"


@dataclass(frozen=True)
class HestBenchConfig:
    """HEST's ``BenchmarkConfig`` defaults for the regression path (embedding settings do not apply)."""

    seed: int = 1
    gene_list: str = GENE_LIST_DEFAULT
    normalize: bool = True  # log1p of the targets
    dimreduce: str | None = "PCA"  # "PCA" (StandardScaler + PCA) or None (raw embeddings)
    latent_dim: int = 256
    max_iter: int = 1000


# ------------------------------------------------------------------ embeddings
class BenchEmbeddings:
    """Where the embedding of each benchmark sample comes from. Each entry of ``specs`` is

    * a folder holding ``<sample_id>.h5`` / ``.h5ad``, directly, under ``<TASK>/`` or, like HEST's
      ``embed_dataroot``, under ``<TASK>/<encoder>/`` (one encoder: several are ambiguous), or
    * an ``.h5ad[:OBSM_KEY]`` of many samples (``obs['slide_id']`` = sample id, spot ids = barcodes), or
    * one sample's ``.h5`` (HEST or TRIDENT style), its sample id being the file name.
    """

    def __init__(self, specs):
        self.dirs: list[Path] = []
        self.table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for spec in [specs] if isinstance(specs, (str, Path)) else list(specs):
            text, path = str(spec), Path(str(spec))
            if path.is_dir():
                self.dirs.append(path)
            elif ".h5ad" in text:  # FILE.h5ad or FILE.h5ad:OBSM_KEY
                self._add_h5ad(text)
            elif path.suffix in (".h5", ".hdf5") and path.is_file():
                self.table[path.stem] = read_barcoded_h5(path)
            else:
                raise DataNotFoundError("embedding folder or file not found", path,
                                        hint="give a folder of <sample_id>.h5 files, an .h5ad, or an .h5")

    def _add_h5ad(self, spec: str, sample_id: str | None = None) -> None:
        from .sources import read_source

        src = read_source(spec)
        for sid in (np.unique(src.slide_ids) if sample_id is None else [sample_id]):
            rows = np.arange(len(src)) if sample_id is not None else np.flatnonzero(src.slide_ids == sid)
            self.table[str(sid)] = (src.spot_ids[rows], src.emb[rows])

    def get(self, task: str, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(barcodes, embeddings) of one sample."""
        if sample_id in self.table:
            return self.table[sample_id]
        names = [f"{sample_id}{ext}" for ext in (".h5", ".hdf5", ".h5ad")]
        for d in self.dirs:
            hits = [d / n for n in names] + [d / task / n for n in names]
            hits = [p for p in hits if p.is_file()] or sorted(p for n in names for p in d.glob(f"{task}/*/{n}"))
            if len(hits) > 1:
                raise StampInputError(f"several embeddings of sample {sample_id!r}: "
                                      f"{[str(p.relative_to(d)) for p in hits]}", d,
                                      hint="give the one encoder's folder (e.g. DIR/<TASK>/<encoder>)")
            if hits:
                if hits[0].suffix == ".h5ad":
                    self._add_h5ad(str(hits[0]), sample_id)
                else:
                    self.table[sample_id] = read_barcoded_h5(hits[0])
                return self.table[sample_id]
        raise DataNotFoundError(f"no embedding for sample {sample_id!r} of task {task}",
                                self.dirs[0] if self.dirs else None,
                                hint=f"embed the task's patches (patches/{sample_id}.h5) and write "
                                     f"{sample_id}.h5 (embeddings + barcodes) or an .h5ad with that slide_id")


# ------------------------------------------------------------------ one task's data
def task_folds(task_dir: Path) -> list[tuple[Path, Path]]:
    """HEST's folds: ``len(os.listdir(splits)) // 2`` pairs ``train_i.csv`` / ``test_i.csv``."""
    split_dir = task_dir / "splits"
    if not split_dir.is_dir():
        raise DataNotFoundError("no splits/ folder (not a HEST-Benchmark task folder)", task_dir,
                                hint="point --bench-root at the folder holding IDC/, PRAD/, ... (bench_data)")
    n = len(os.listdir(split_dir)) // 2
    folds = [(split_dir / f"train_{i}.csv", split_dir / f"test_{i}.csv") for i in range(n)]
    for pair in folds:
        for p in pair:
            if not p.is_file():
                raise DataNotFoundError("split file missing", p, hint="splits/ holds train_i.csv and test_i.csv")
    if not folds:
        raise DataNotFoundError("splits/ is empty", split_dir)
    return folds


def task_genes(task_dir: Path, gene_list: str = GENE_LIST_DEFAULT) -> list[str]:
    path = task_dir / gene_list
    if not path.is_file():
        raise DataNotFoundError("gene list not found", path, hint="the task folder holds var_50genes.json")
    genes = json.loads(path.read_text()).get("genes")
    if not genes:
        raise StampInputError("gene list has no 'genes'", path)
    return [str(g) for g in genes]


def _patch_barcodes(task_dir: Path, patches_path: str) -> np.ndarray | None:
    import h5py

    path = task_dir / str(patches_path)
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        key = "barcode" if "barcode" in f else "barcodes" if "barcodes" in f else None
        return None if key is None else decode_barcodes(f[key][:])


def sample_targets(expr_path: Path, genes: list[str], barcodes: np.ndarray, normalize: bool = True) -> np.ndarray:
    """HEST's ``load_adata``: ``adata[barcodes][:, genes]``, float64, ``log1p`` when ``normalize``."""
    import anndata as ad
    import scipy.sparse as sp

    if not expr_path.is_file():
        raise DataNotFoundError("expression file not found", expr_path)
    adata = ad.read_h5ad(expr_path)
    pos = adata.obs_names.get_indexer(barcodes)
    gpos = adata.var_names.get_indexer(genes)
    if (pos < 0).any():
        raise StampInputError(f"{int((pos < 0).sum())} embedding barcodes are not spots of this sample "
                              f"(e.g. {barcodes[pos < 0][:3].tolist()})", expr_path)
    if (gpos < 0).any():
        raise StampInputError(f"genes of the gene list are missing: {np.asarray(genes)[gpos < 0][:5].tolist()}",
                              expr_path)
    x = adata.X[pos][:, gpos]
    x = (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)
    return np.log1p(x) if normalize else x


def load_split(task_dir: Path, csv: Path, genes: list[str], embeddings: BenchEmbeddings,
               normalize: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, Y, sample ids) of one split CSV: the samples stacked in CSV order."""
    import pandas as pd

    df = pd.read_csv(csv)
    for col in ("sample_id", "expr_path"):
        if col not in df.columns:
            raise StampInputError(f"split CSV lacks column {col!r} (has {list(df.columns)})", csv)
    xs, ys = [], []
    task = task_dir.name
    for _, row in df.iterrows():
        sid = str(row["sample_id"])
        barcodes, emb = embeddings.get(task, sid)
        ref = _patch_barcodes(task_dir, row["patches_path"]) if "patches_path" in df.columns else None
        if ref is not None and not np.array_equal(ref, barcodes):
            where = {b: i for i, b in enumerate(barcodes)}
            missing = [b for b in ref if b not in where]
            if missing:
                raise StampInputError(f"sample {sid}: {len(missing)} of the {len(ref)} benchmark patches have no "
                                      f"embedding (e.g. {missing[:3]})", task_dir / str(row["patches_path"]),
                                      hint="embed every patch of the task's patches/ file")
            emb = emb[np.fromiter((where[b] for b in ref), dtype=np.int64, count=len(ref))]
            barcodes = ref
        xs.append(emb)
        ys.append(sample_targets(task_dir / str(row["expr_path"]), genes, barcodes, normalize))
    return np.concatenate(xs, axis=0), np.concatenate(ys, axis=0), df["sample_id"].astype(str).tolist()


# ------------------------------------------------------------------ regression and metrics
def reduce_features(x_train: np.ndarray, x_test: np.ndarray, config: HestBenchConfig = HestBenchConfig()):
    """StandardScaler + PCA(latent_dim) fit on train only; float32 values in float64 (see module docstring)."""
    if config.dimreduce is None:
        return x_train, x_test
    if config.dimreduce != "PCA":
        raise StampInputError(f"dimreduce must be 'PCA' or None, not {config.dimreduce!r}")
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if min(x_train.shape) < config.latent_dim:
        raise StampInputError(
            f"HEST's PCA to {config.latent_dim} dims needs at least that many training spots and embedding "
            f"dimensions (have {x_train.shape[0]} spots x {x_train.shape[1]} dims)",
            hint="use a wider embedding (e.g. X_stamp_v) or --latent-dim / --no-pca (then not HEST's protocol)")
    pipe = Pipeline([("scaler", StandardScaler()),
                     ("PCA", PCA(n_components=config.latent_dim, random_state=config.seed))])
    as_hest = lambda x: x.astype(np.float32).astype(np.float64)  # noqa: E731 - torch.Tensor, then sklearn
    return as_hest(pipe.fit_transform(x_train)), as_hest(pipe.transform(x_test))


def ridge_fold(x_train, x_test, y_train, y_test, genes: list[str], config: HestBenchConfig = HestBenchConfig()):
    """HEST's ridge + per-gene metrics on one fold -> (results, predictions)."""
    from scipy.stats import pearsonr
    from sklearn.linear_model import Ridge

    alpha = 100 / (x_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=config.seed, fit_intercept=False, max_iter=config.max_iter)
    reg.fit(x_train, y_train)
    pred = reg.predict(x_test)
    err = ((pred - y_test) ** 2).mean(axis=0)
    resid = ((y_test - pred) ** 2).sum(axis=0)
    total = ((y_test - y_test.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a gene constant on the test split: NaN, as in HEST
        r2 = 1 - resid / total
        pear = np.array([pearsonr(y_test[:, g], pred[:, g])[0] for g in range(y_test.shape[1])], dtype=np.float64)
    errors, r2 = [float(e) for e in err], [float(v) for v in r2]
    res = {
        "l2_errors": errors, "r2_scores": r2,
        "pearson_corrs": [{"name": g, "pearson_corr": float(p)} for g, p in zip(genes, pear)],
        "pearson_mean": float(np.mean(pear)), "pearson_std": float(np.std(pear)),
        "l2_error_q1": float(np.percentile(errors, 25)), "l2_error_q2": float(np.median(errors)),
        "l2_error_q3": float(np.percentile(errors, 75)), "r2_score_q1": float(np.percentile(r2, 25)),
        "r2_score_q2": float(np.median(r2)), "r2_score_q3": float(np.percentile(r2, 75)),
        "alpha": float(alpha),
    }
    return res, pred


def merge_folds(fold_results: list[dict]) -> dict:
    """Per gene: its Pearson per fold, mean and (population) std; overall: mean / std of the fold means."""
    per_gene: dict[str, list[float]] = {}
    for fr in fold_results:
        for item in fr["pearson_corrs"]:
            per_gene.setdefault(item["name"], []).append(item["pearson_corr"])
    genes = [{"name": g, "pearson_corrs": v, "mean": float(np.mean(v)), "std": float(np.std(v))}
             for g, v in per_gene.items()]
    means = [fr["pearson_mean"] for fr in fold_results]
    return {"pearson_corrs": sorted(genes, key=lambda d: d["mean"], reverse=True),
            "pearson_mean": float(np.mean(means)), "pearson_std": float(np.std(means)), "mean_per_split": means}


def run_task(task_dir: str | Path, embeddings: BenchEmbeddings, config: HestBenchConfig = HestBenchConfig()) -> dict:
    """All folds of one task -> HEST's ``results_kfold`` dict plus each fold's results under ``"folds"``."""
    task_dir = Path(task_dir)
    genes = task_genes(task_dir, config.gene_list)
    folds = []
    for i, (train_csv, test_csv) in enumerate(task_folds(task_dir)):
        x_tr, y_tr, s_tr = load_split(task_dir, train_csv, genes, embeddings, config.normalize)
        x_te, y_te, s_te = load_split(task_dir, test_csv, genes, embeddings, config.normalize)
        if x_tr.shape[1] != x_te.shape[1]:
            raise StampInputError(f"split {i}: train and test embeddings differ in width "
                                  f"({x_tr.shape[1]} vs {x_te.shape[1]})", task_dir)
        x_tr, x_te = reduce_features(x_tr, x_te, config)
        res, _ = ridge_fold(x_tr, x_te, y_tr, y_te, genes, config)
        res.update({"split": i, "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
                    "train_samples": s_tr, "test_samples": s_te})
        folds.append(res)
    out = merge_folds(folds)
    out["folds"] = folds
    return out


def find_tasks(bench_root: Path) -> list[str]:
    """Task folders under ``bench_root`` (those with ``splits/``), HEST's order first."""
    found = sorted(p.name for p in bench_root.iterdir() if (p / "splits").is_dir())
    return [t for t in HEST_BENCH_TASKS if t in found] + [t for t in found if t not in HEST_BENCH_TASKS]


def bench_samples(bench_root: str | Path, tasks: list[str] | None = None) -> list[tuple[str, str, Path]]:
    """(task, sample id, patch file) of every sample the tasks' split CSVs name, each once, in CSV order."""
    import pandas as pd

    bench_root = Path(bench_root)
    if not bench_root.is_dir():
        raise DataNotFoundError("HEST-Benchmark root not found", bench_root)
    out, seen = [], set()
    for task in tasks or find_tasks(bench_root):
        for pair in task_folds(bench_root / task):
            for csv in pair:
                df = pd.read_csv(csv)
                if "patches_path" not in df.columns or "sample_id" not in df.columns:
                    raise StampInputError("split CSV lacks sample_id or patches_path", csv)
                for sid, pp in zip(df["sample_id"].astype(str), df["patches_path"].astype(str)):
                    if (task, sid) not in seen:
                        seen.add((task, sid))
                        out.append((task, sid, bench_root / task / pp))
    return out


def write_bench_task(task_dir: str | Path, samples: dict, folds: list[tuple[list[str], list[str]]],
                     genes: list[str] | None = None, n_genes: int = 50) -> Path:
    """Write one task in HEST-Benchmark's layout from our own data (e.g. a smoke test of the whole chain):
    ``samples`` maps sample id -> (AnnData of raw counts, uint8 patches [n, H, W, 3], barcodes [n]);
    ``folds`` lists (train ids, test ids); ``genes`` default to the ``n_genes`` of highest log1p variance over
    all spots (HEST's lists are its own choice: for the real tasks use theirs)."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    task_dir = Path(task_dir)
    for sub in ("splits", "adata", "patches"):
        (task_dir / sub).mkdir(parents=True, exist_ok=True)
    expr = []
    for sid, (adata, imgs, barcodes) in samples.items():
        barcodes = np.asarray(barcodes).astype(str)
        if len(imgs) != len(barcodes):
            raise StampInputError(f"sample {sid}: {len(imgs)} patches but {len(barcodes)} barcodes")
        adata.write_h5ad(task_dir / "adata" / f"{sid}.h5ad")
        with h5py.File(task_dir / "patches" / f"{sid}.h5", "w") as f:
            f.create_dataset("img", data=np.asarray(imgs, np.uint8))
            f.create_dataset("barcode", data=barcodes.astype("S").reshape(-1, 1))
        x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        expr.append(pd.DataFrame(np.log1p(x.astype(np.float64)), columns=adata.var_names.astype(str)))
    if genes is None:
        var = pd.concat(expr, join="inner").var(axis=0, ddof=0)
        genes = var.sort_values(ascending=False, kind="stable").index[:n_genes].tolist()
    (task_dir / GENE_LIST_DEFAULT).write_text(json.dumps({"genes": list(genes)}))
    for i, (train, test) in enumerate(folds):
        for name, ids in (("train", train), ("test", test)):
            pd.DataFrame({"sample_id": ids, "patches_path": [f"patches/{s}.h5" for s in ids],
                          "expr_path": [f"adata/{s}.h5ad" for s in ids]}).to_csv(
                task_dir / "splits" / f"{name}_{i}.csv", index=False)
    return task_dir


def run_hest_benchmark(bench_root: str | Path, embeddings, tasks: list[str] | None = None,
                       config: HestBenchConfig = HestBenchConfig(), out_dir: str | Path | None = None) -> dict:
    """Run HEST-Benchmark on ``embeddings`` (a :class:`BenchEmbeddings` or its specs) for ``tasks`` (default:
    every task folder under ``bench_root``). Returns ``{"tasks": {TASK: results}, "average": mean of the
    tasks' pearson_mean, "config": ...}``; with ``out_dir`` also writes it as ``hest_benchmark.json``."""
    bench_root = Path(bench_root)
    if not bench_root.is_dir():
        raise DataNotFoundError("HEST-Benchmark root not found", bench_root,
                                hint="download MahmoodLab/hest-bench (gated) and give its bench_data folder")
    emb = embeddings if isinstance(embeddings, BenchEmbeddings) else BenchEmbeddings(embeddings)
    tasks = list(tasks) if tasks else find_tasks(bench_root)
    if not tasks:
        raise DataNotFoundError("no task folders (with splits/) here", bench_root,
                                hint="point at bench_data, which holds IDC/, PRAD/, ...")
    results = {t: run_task(bench_root / t, emb, config) for t in tasks}
    out = {"protocol": "HEST-Benchmark (hest/bench @ afd42c3)", "config": asdict(config),
           "tasks": results, "average": float(np.mean([r["pearson_mean"] for r in results.values()]))}
    if out_dir is not None:
        from ..io_utils import atomic_write_json

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out_dir) / "hest_benchmark.json", out)
    return out
