"""The embedding file format, one home for both sides: ``inference`` writes it (``stamp-st embed``, the demo's and
``reproduce``'s embed stages), ``evaluation`` reads it (``stamp-st evaluate``, ``hest-benchmark``). Its obsm / obs /
uns keys, its own record, the readers and the writers of its three layouts (docs/embeddings.md):

* ``.h5ad``: one obsm matrix per embedding (``X_stamp_v`` ...), spot identity in obs, optional counts in X, the
  embedding record in ``uns["stamp_st_embedding"]`` and the sample record (``SampleMeta``) in ``uns["stamp_st"]``;
* TRIDENT-style ``.h5`` (``features`` + ``coords`` with TRIDENT's attributes; CLAM's ``pt_files/`` beside it);
* HEST's ``.h5`` (``embeddings`` + ``barcodes``, HEST-Benchmark's patch order).

One source read from a file is held as an :class:`EmbeddingSet`, so that every evaluation task accepts any source
alike (a STAMP model, a plain backbone, a raw-expression PCA). It sits just above ``readers`` (for the sample
record) and below everything that embeds or evaluates."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StampInputError, require_file
from .io_utils import atomic_path
from .readers.constants import OBSM_SPATIAL, UNS_STAMP
from .readers.sample_meta import SampleMeta

# obsm keys; the first one present is the default image-side source.
# X_stamp_v (Stamp_V): the aligned image encoder's pooled feature (before the heads), the representation for
# linear read-outs, clustering and MIL (CONCH's convention for its own pre-projection feature);
# X_stamp_v_joint: Stamp_V's L2-normalised 512-d projection into the space shared with X_stamp_g (the release's
# ``img_emb``), for cross-modal retrieval and imputation; X_stamp_f (Stamp_F) fuses X_stamp_v_joint and X_stamp_g.
OBSM_STAMP_V = "X_stamp_v"
OBSM_STAMP_V_JOINT = "X_stamp_v_joint"
OBSM_STAMP_G = "X_stamp_g"
OBSM_STAMP_F = "X_stamp_f"
OBSM_BACKBONE = "X_backbone"  # a plain (unaligned) backbone's feature
DEFAULT_KEY_ORDER = (OBSM_STAMP_V, OBSM_STAMP_V_JOINT, OBSM_STAMP_F, OBSM_BACKBONE, OBSM_STAMP_G)
NON_EMBEDDING_OBSM = {OBSM_SPATIAL, "X_umap", "X_pca", "X_tsne"}
CV_SEP = "@"  # obsm["<key>@<slide>"]: <key> of every spot by the cross-validated model that held <slide> out
OBS_SLIDE_ID = "slide_id"
OBS_SPOT_ID = "spot_id"
OBS_NO_VOCAB_GENES = "stamp_st_no_vocab_genes"  # obs flag: the spot has no count in the model's vocabulary
UNS_EMBEDDING = "stamp_st_embedding"  # the embedding record (files before it kept it in uns["stamp_st"])
UNS_PATCHES = "patches"  # optional small uint8 thumbnails per spot, in the record, for retrieval figures

MODALITY_IMAGE = "image"
MODALITY_GENE = "gene"
MODALITY_FUSED = "fused"


def cross_validated_key(key: str, slide: str) -> str:
    """The obsm key of ``key`` by the cross-validated model that held ``slide`` out."""
    return f"{key}{CV_SEP}{slide}"


def cross_validated_keys(obsm, key: str) -> dict[str, np.ndarray]:
    """Held-out slide -> embedding, from obsm entries named ``<key>@<slide>``."""
    prefix = cross_validated_key(key, "")
    return {k[len(prefix):]: np.asarray(obsm[k], dtype=np.float32) for k in obsm.keys() if k.startswith(prefix)}


def modality_of(key: str) -> str:
    """Which side of the model an obsm key embeds: Stamp_G is gene-side, Stamp_F fused, the rest image-side."""
    if key == OBSM_STAMP_G:
        return MODALITY_GENE
    if key == OBSM_STAMP_F:
        return MODALITY_FUSED
    return MODALITY_IMAGE


@dataclass
class EmbeddingSet:
    """One embedding source over a set of spots. ``gene_emb`` (same space as ``emb``) enables
    cross-modal retrieval; ``counts``/``gene_names`` give expression targets; ``patches`` (uint8
    [n, h, w, 3]) enable retrieval-example figures."""

    name: str
    emb: np.ndarray
    slide_ids: np.ndarray
    spot_ids: np.ndarray
    xy_px: np.ndarray | None = None
    modality: str = MODALITY_IMAGE
    gene_emb: np.ndarray | None = None
    counts: object | None = None  # scipy.sparse CSR or ndarray [n, g] raw counts
    gene_names: np.ndarray | None = None
    obs: pd.DataFrame | None = None
    image_paths: dict[str, str] = field(default_factory=dict)
    patches: np.ndarray | None = None
    source_path: str = ""
    # cross-validated models: held-out slide -> embedding of every spot by the model that never saw that
    # slide (and its gene side); the evaluation then scores each held-out slide with its own model
    fold_emb: dict[str, np.ndarray] | None = None
    fold_gene_emb: dict[str, np.ndarray] | None = None

    def __post_init__(self):
        self.emb = np.asarray(self.emb, dtype=np.float32)
        n = self.emb.shape[0]
        self.slide_ids = np.asarray(self.slide_ids).astype(str)
        self.spot_ids = np.asarray(self.spot_ids).astype(str)
        if self.emb.ndim != 2 or len(self.slide_ids) != n or len(self.spot_ids) != n:
            raise StampInputError(
                f"embedding source {self.name!r}: emb {self.emb.shape}, {len(self.slide_ids)} slide ids, "
                f"{len(self.spot_ids)} spot ids do not agree", self.source_path or None,
                hint=f"write one row per spot with obs['{OBS_SLIDE_ID}'] set",
            )
        if n == 0 or self.emb.shape[1] == 0:
            raise StampInputError(f"embedding source {self.name!r} is empty ({n} spots x {self.emb.shape[1]} "
                                  "dimensions)", self.source_path or None,
                                  hint="give an embedding with at least one spot and one dimension (check the "
                                       "obsm key: FILE.h5ad:KEY)")
        if self.gene_emb is not None:
            self.gene_emb = np.asarray(self.gene_emb, dtype=np.float32)
            if self.gene_emb.shape[0] != n:
                raise StampInputError(f"{self.name!r}: gene_emb has {self.gene_emb.shape[0]} rows, not {n}")
        bad = ~np.isfinite(self.emb).all(axis=1)
        if bad.any():
            ids = ", ".join(f"{a}/{b}" for a, b in zip(self.slide_ids[bad][:5], self.spot_ids[bad][:5]))
            raise StampInputError(
                f"embedding source {self.name!r}: {int(bad.sum())} of {n} spots have NaN or infinite embeddings "
                f"(e.g. {ids})", self.source_path or None,
                hint=f"spots without any vocabulary gene have no gene embedding (obs['{OBS_NO_VOCAB_GENES}']): "
                     f"evaluate the image embedding (FILE.h5ad:{OBSM_STAMP_V}), or remove those spots")
        if self.gene_emb is not None and not np.isfinite(self.gene_emb).all():
            n_bad = int((~np.isfinite(self.gene_emb).all(axis=1)).sum())
            warnings.warn(f"{self.source_path or self.name}: {n_bad} spots have no gene embedding (no vocabulary "
                          "gene): image -> gene retrieval is skipped for this source", stacklevel=2)
            self.gene_emb = None

    @property
    def keys(self) -> np.ndarray:
        """Unique spot keys ``<slide_id>/<spot_id>`` used to align sources."""
        return np.char.add(np.char.add(self.slide_ids, "/"), self.spot_ids)

    def __len__(self) -> int:
        return self.emb.shape[0]

    def subset(self, idx: np.ndarray) -> EmbeddingSet:
        def take(a):
            return None if a is None else a[idx]

        def take_folds(d):
            return None if d is None else {k: v[idx] for k, v in d.items()}

        return replace(
            self, emb=self.emb[idx], slide_ids=self.slide_ids[idx], spot_ids=self.spot_ids[idx],
            xy_px=take(self.xy_px), gene_emb=take(self.gene_emb), counts=take(self.counts),
            obs=None if self.obs is None else self.obs.iloc[idx], patches=take(self.patches),
            fold_emb=take_folds(self.fold_emb), fold_gene_emb=take_folds(self.fold_gene_emb),
        )


# ------------------------------------------------------------------ h5ad format
def embedding_record(adata) -> dict:
    """The embedding file's own record (``image_paths``, ``model``, ``pipeline``, ``notes``, ...): from
    ``uns["stamp_st_embedding"]``, or from ``uns["stamp_st"]`` in files written before that key existed."""
    rec = adata.uns.get(UNS_EMBEDDING)
    if rec is None:
        rec = adata.uns.get(UNS_STAMP)
    return dict(rec) if isinstance(rec, Mapping) else {}


def read_embedding_h5ad(path: str | Path, key: str | None = None, name: str | None = None,
                        from_counts: Callable[[object], np.ndarray] | None = None) -> EmbeddingSet:
    """Read one embedding source from an ``.h5ad`` (format in docs/embeddings.md). ``key`` picks the
    obsm matrix (default: the first of :data:`DEFAULT_KEY_ORDER` present). ``from_counts`` (counts -> [n, d])
    instead derives a gene-side source from the file's expression, named by ``key`` (evaluation's
    ``expr-pca``)."""
    import anndata as ad
    import scipy.sparse as sp

    path = require_file(path, "embedding file", hint="run `stamp-st embed` first, or check the path")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad input file
        raise StampInputError(f"not a readable .h5ad file ({err})", path) from err
    candidates = [k for k in adata.obsm.keys() if k not in NON_EMBEDDING_OBSM and CV_SEP not in k]
    if key is None:
        key = next((k for k in DEFAULT_KEY_ORDER if k in adata.obsm), None)
        if key is None and len(candidates) == 1:
            key = candidates[0]
        if key is None:
            raise StampInputError(
                f"cannot choose an embedding among obsm keys {candidates}", path,
                hint=f"name one as FILE.h5ad:KEY (e.g. {OBSM_STAMP_V})",
            )
    if OBS_SLIDE_ID not in adata.obs:
        sid = SampleMeta.of(adata).sample_id
        if not sid:
            raise StampInputError(f"obs['{OBS_SLIDE_ID}'] is missing", path,
                                  hint=f"write the slide (section) id of every spot to obs['{OBS_SLIDE_ID}']")
        slide_ids = np.full(adata.n_obs, str(sid))
    else:
        slide_ids = adata.obs[OBS_SLIDE_ID].astype(str).to_numpy()
    spot_ids = (adata.obs[OBS_SPOT_ID].astype(str).to_numpy() if OBS_SPOT_ID in adata.obs
                else adata.obs_names.astype(str).to_numpy())
    counts = None
    gene_names = None
    if adata.n_vars > 0 and adata.X is not None:
        counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
        counts = sp.csr_matrix(counts) if not sp.issparse(counts) else counts.tocsr()
        gene_names = adata.var_names.astype(str).to_numpy()
    xy = np.asarray(adata.obsm[OBSM_SPATIAL], dtype=np.float64) if OBSM_SPATIAL in adata.obsm else None
    record = embedding_record(adata)
    image_paths = {str(k): str(v) for k, v in dict(record.get("image_paths") or {}).items() if v}
    if not image_paths and record.get("image_path") and len(set(slide_ids)) == 1:
        image_paths = {str(slide_ids[0]): str(record["image_path"])}
    patches = None
    if UNS_PATCHES in record:
        patches = np.asarray(record[UNS_PATCHES], dtype=np.uint8)
    fold_gene = None
    if from_counts is not None:
        if counts is None:
            raise StampInputError(f"{key} asked for but the file has no expression (X is empty)", path)
        emb, gene_emb, fold_emb, modality = from_counts(counts), None, {}, MODALITY_GENE
    else:
        if key not in adata.obsm:
            raise StampInputError(f"obsm key {key!r} not found (have {candidates})", path,
                                  hint="name one of the keys listed as FILE.h5ad:KEY")
        emb, modality = np.asarray(adata.obsm[key]), modality_of(key)
        # the joint projection has Stamp_G in its space (cross-modal retrieval); fused rows already hold it
        gene_emb = (np.asarray(adata.obsm[OBSM_STAMP_G])
                    if key == OBSM_STAMP_V_JOINT and OBSM_STAMP_G in adata.obsm else None)
        fold_emb = cross_validated_keys(adata.obsm, key)
        if fold_emb and gene_emb is not None:
            fold_gene = cross_validated_keys(adata.obsm, OBSM_STAMP_G) or None
    return EmbeddingSet(
        name=name or f"{path.stem}:{key}", emb=emb, slide_ids=slide_ids, spot_ids=spot_ids, xy_px=xy,
        modality=modality, gene_emb=gene_emb, counts=counts, gene_names=gene_names,
        obs=adata.obs.copy(), image_paths=image_paths, patches=patches, source_path=str(path),
        fold_emb=fold_emb or None, fold_gene_emb=fold_gene,
    )


def write_embedding_h5ad(
    path: str | Path,
    embeddings: Mapping[str, np.ndarray],
    slide_ids: Sequence[str],
    spot_ids: Sequence[str],
    xy_px: np.ndarray | None = None,
    counts=None,
    gene_names: Sequence[str] | None = None,
    image_paths: Mapping[str, str] | None = None,
    record: Mapping | None = None,
    obs_columns: Mapping[str, Sequence] | None = None,
    var_columns: Mapping[str, Sequence] | None = None,
    spatial: Mapping | None = None,
    sample: SampleMeta | None = None,
) -> Path:
    """Write embeddings (obsm key -> [n, d]) plus spot identity, optional counts and image paths,
    atomically, in the format :func:`read_embedding_h5ad` reads. ``record``: further fields of the embedding
    record (``model``, ``pipeline``, ``notes``, ...); ``sample``: the record of the one sample embedded, stored
    as a sample's (``uns["stamp_st"]``). ``obs_columns`` (e.g. array_row, array_col, in_tissue),
    ``var_columns`` (gene_ids) and ``spatial`` (scanpy's ``uns["spatial"]``) make the file scanpy-ready."""
    import anndata as ad
    import scipy.sparse as sp

    slide_ids = np.asarray(slide_ids).astype(str)
    spot_ids = np.asarray(spot_ids).astype(str)
    n = len(spot_ids)
    obs = pd.DataFrame({OBS_SLIDE_ID: slide_ids, OBS_SPOT_ID: spot_ids})
    obs.index = pd.Index(np.char.add(np.char.add(slide_ids, "/"), spot_ids), dtype=str)
    if counts is not None:
        x = sp.csr_matrix(counts, dtype=np.float32)
        var = pd.DataFrame(index=pd.Index(np.asarray(gene_names).astype(str)))
    else:
        x = sp.csr_matrix((n, 0), dtype=np.float32)
        var = pd.DataFrame(index=pd.Index([], dtype=str))
    for k, v in dict(obs_columns or {}).items():
        obs[k] = np.asarray(v)
    for k, v in dict(var_columns or {}).items():
        var[k] = np.asarray(v)
    adata = ad.AnnData(X=x, obs=obs, var=var)
    if spatial:
        adata.uns["spatial"] = dict(spatial)
    for k, v in embeddings.items():
        adata.obsm[k] = np.asarray(v, dtype=np.float32)
    if xy_px is not None:
        adata.obsm[OBSM_SPATIAL] = np.asarray(xy_px, dtype=np.float64)
    rec = {"image_paths": {str(k): str(v) for k, v in (image_paths or {}).items()}}
    if image_paths and len(image_paths) == 1:
        rec["image_path"] = str(next(iter(image_paths.values())))
    rec.update(dict(record or {}))
    adata.uns[UNS_EMBEDDING] = rec
    if sample is not None:
        sample.store(adata)
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


# ------------------------------------------------------------------ TRIDENT-style HDF5
def _magnification(um_per_px: float) -> float | int:
    """TRIDENT's magnification of a pixel size: 10 / µm per px (its patcher inverts exactly this); an
    integer when it is one (0.25 µm/px -> 40), else the exact float, so that patch_size x level0 / target
    magnification gives back the level-0 tile side."""
    mag = 10.0 / float(um_per_px)
    return int(round(mag)) if abs(mag - round(mag)) < 1e-6 else mag


def trident_coords_attrs(name: str, patch_size_px: int, patch_size_level0_px: float, level0_magnification,
                         target_magnification, level0_width_px: int, level0_height_px: int,
                         overlap_px: int = 0) -> dict:
    """The attributes TRIDENT writes on (and its slide encoders and patchers read from) ``coords``:
    ``patch_size`` (px at the target magnification, i.e. the model's input side), ``patch_size_level0``
    (the same tile in level-0 px), the two magnifications, the level-0 slide size, ``overlap``
    (target-magnification px) and the slide ``name``."""
    return {
        "patch_size": int(patch_size_px),
        "patch_size_level0": int(round(float(patch_size_level0_px))),
        "level0_magnification": level0_magnification,
        "target_magnification": target_magnification,
        "level0_width": int(level0_width_px),
        "level0_height": int(level0_height_px),
        "overlap": int(overlap_px),
        "name": str(name),
    }


def spot_coords_attrs(name: str, patch_size_px: int, patch_side_level0_px: float, um_per_px: float,
                      level0_width_px: int, level0_height_px: int) -> dict:
    """:func:`trident_coords_attrs` of a spot file: the magnifications are 10 / µm per px of the slide and of
    the model input (exact, not TRIDENT's buckets: spots are cut at the model's µm, not on a tile grid)."""
    side0 = int(round(float(patch_side_level0_px)))
    return trident_coords_attrs(name, patch_size_px, side0, _magnification(um_per_px),
                                _magnification(float(um_per_px) * side0 / int(patch_size_px)), level0_width_px,
                                level0_height_px)


def write_trident_h5(path: str | Path, features: np.ndarray, coords: np.ndarray, slide_id: str,
                     spot_ids: Sequence[str] | None = None, coords_attrs: Mapping | None = None,
                     encoder: str | None = None, **attrs) -> Path:
    """TRIDENT-style HDF5 (docs/embeddings.md): ``features`` float32 [n, d] with attributes ``encoder`` and
    ``name``; ``coords`` int64 [n, 2] = (x, y) **top-left** corner of each tile in level-0 px with
    ``coords_attrs`` (:func:`trident_coords_attrs`); optional ``barcodes`` (spot ids); root attributes
    ``slide_id``, ``encoder`` and ``attrs`` (``um_per_px``, ...) for stamp-st's own reader."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        crd = f.create_dataset("coords", data=np.round(np.asarray(coords, dtype=np.float64)).astype(np.int64)
                               .reshape(-1, 2))
        for k, v in dict(coords_attrs or {}).items():
            crd.attrs[k] = v
        feats.attrs["name"] = str(slide_id)
        if encoder is not None:
            feats.attrs["encoder"] = str(encoder)
            f.attrs["encoder"] = str(encoder)
        if spot_ids is not None:
            f.create_dataset("barcodes", data=np.asarray(spot_ids).astype("S"))
        f.attrs["slide_id"] = str(slide_id)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def clam_pt_path(h5_path: str | Path) -> Path:
    """CLAM's feature directory: FEAT_DIR/h5_files/SLIDE.h5 next to FEAT_DIR/pt_files/SLIDE.pt (an .h5 outside
    an ``h5_files`` folder gets ``pt_files/`` beside it)."""
    h5_path = Path(h5_path)
    root = h5_path.parent.parent if h5_path.parent.name == "h5_files" else h5_path.parent
    return root / "pt_files" / f"{h5_path.stem}.pt"


def write_clam_pt(h5_path: str | Path, features: np.ndarray) -> Path:
    """``pt_files/<slide>.pt`` for CLAM's default MIL loader (``Generic_MIL_Dataset`` without ``use_h5``):
    ``torch.save`` of the float32 features tensor, as CLAM's extract_features_fp.py writes it."""
    import torch

    path = clam_pt_path(h5_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), tmp)
    return path


def decode_barcodes(values) -> np.ndarray:
    """Spot ids (barcodes) as HDF5 stores them (bytes, [n] or [n, 1]) -> str [n]."""
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(values)])


def read_trident_h5(path: str | Path, name: str | None = None, slide_id: str | None = None) -> EmbeddingSet:
    """Read a TRIDENT-style ``features`` + ``coords`` HDF5 (one slide) as an image-side source. With
    ``coords.attrs['patch_size_level0']`` (TRIDENT's and stamp-st's files) coords are top-left corners and
    ``xy_px`` is the tile centre; without it coords are taken as centres (older stamp-st spot files)."""
    import h5py

    path = require_file(path, "embedding file", hint="check the path")
    with h5py.File(path, "r") as f:
        if "features" not in f or "coords" not in f:
            raise StampInputError(f"HDF5 lacks 'features' or 'coords' (has {list(f.keys())})", path,
                                  hint="write TRIDENT-style features + coords datasets")
        feats = np.asarray(f["features"])
        coords = np.asarray(f["coords"], dtype=np.float64)
        side0 = f["coords"].attrs.get("patch_size_level0")
        if feats.ndim == 3 and feats.shape[0] == 1:  # some tools store [1, n, d]
            feats = feats[0]
        if coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        sid = slide_id or f.attrs.get("slide_id") or f["coords"].attrs.get("name") or path.stem
        sid = sid.decode() if isinstance(sid, bytes) else str(sid)
        if "barcodes" in f:
            spots = decode_barcodes(f["barcodes"])
        else:
            spots = np.array([f"{int(round(x))}x{int(round(y))}" for x, y in coords[:, :2]])
    xy = coords[:, :2] + (float(side0) / 2 if side0 is not None else 0.0)
    return EmbeddingSet(name=name or path.stem, emb=feats, slide_ids=np.full(len(feats), sid), spot_ids=spots,
                        xy_px=xy, source_path=str(path))


# ------------------------------------------------------------------ HEST's embedding HDF5
def write_hest_embeddings(path: str | Path, barcodes, embeddings: np.ndarray) -> Path:
    """HEST's embedding file: ``embeddings`` float32 [n, d] and ``barcodes`` bytes [n, 1], written atomically."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=np.asarray(embeddings, np.float32))
        f.create_dataset("barcodes", data=np.asarray(barcodes).astype("S").reshape(-1, 1))
    return path


def read_barcoded_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, embeddings) of one sample's HDF5: HEST's ``embeddings`` + ``barcodes`` or TRIDENT-style
    ``features`` + ``barcodes`` (what ``stamp-st embed`` writes to ``.h5``). The dtype is kept as stored."""
    import h5py

    with h5py.File(path, "r") as f:
        key = "embeddings" if "embeddings" in f else "features" if "features" in f else None
        if key is None or "barcodes" not in f:
            raise StampInputError(f"HDF5 needs 'embeddings' (or 'features') and 'barcodes' (has {list(f.keys())})",
                                  path, hint="write one row per spot with the spot's barcode")
        emb = np.asarray(f[key])
        barcodes = decode_barcodes(f["barcodes"][:])
    if emb.ndim == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 2 or len(emb) != len(barcodes):
        raise StampInputError(f"{key} {emb.shape} and {len(barcodes)} barcodes do not agree", path)
    return barcodes, emb
