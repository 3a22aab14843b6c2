"""``--pipeline released``: the authors' own tokens and crops, for the released weights (METHOD.md §2-3).

Our default pipeline fixes what the release gets wrong (RGB, physical patch size, pinned tie order, a larger
symbol map); the released weights, though, were trained on what the release's script produces. This module
reproduces its ``tokenize_single_sample`` (tokenize_and_encode.py) step by step, with the same library calls
where the result depends on them:

Tokens
  1. gene names -> Ensembl ids with the release's symbol map only (``vocab/stamp_symbol_to_ensembl.tsv`` =
     its ``gene_name_id_dict.pkl``); a name it does not know is kept as is (an Ensembl id then still
     matches); duplicates made unique the AnnData way (``X``, ``X-1``, ...), so only the first copy of a
     gene reaches the vocabulary (no summing);
  2. counts as float32, vocabulary columns in vocabulary order (absent genes are zero), then float64 (the
     dtype its matrix has when it is normalised);
  3. ``sf_normalize``: each spot scaled to 10,000 by its total over the vocabulary genes (0 -> 1);
  4. divided by the rounded per-gene means (NaN -> 0, halves up, 0 -> 1) with scipy's sparse ``/``;
  5. per spot, ``np.argsort(-values)`` (numpy's default, unstable sort) over the stored non-zeros, first
     4,096 kept (the model reads 1,500), token = vocabulary index + 30, padding 0.

  Step 5 is the release's only non-deterministic part in principle: the order among tied values is whatever
  numpy's introsort (or its SIMD variant on the CPU at hand) gives. Running the same call on the same
  array reproduces it on the same numpy and CPU; ``tied_positions`` counts where it decides.

Crops (``release_patches``)
  The slide is read at full resolution in **BGR** (the release reads it with ``cv2.imread`` and never
  converts); the patch is ``wsi[int(y-ps):int(y+ps), int(x-ps):int(x+ps)]`` with numpy's slicing rules
  (a negative start wraps around, an end beyond the slide is cut), ``ps = 112 * magnification / 20`` px
  whatever the pixel size (112 unless HEST's metadata gives a magnification), then
  ``cv2.resize(patch, (224, 224))`` (bilinear). A spot whose slice is empty is skipped by the release
  (and its tokens then no longer line up with its images); here it gets no image embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import StampInputError
from ..readers.ensembl import read_symbol_table
from .tokenizer import STORAGE_PAD_ID, TARGET_SUM, TOKEN_OFFSET, TokenizedSpots
from .vocab import GeneMapping, GeneVocabulary

PIPELINES = ("default", "released")
RELEASE_STORED_TOKENS = 4096
RELEASE_HALF_SIDE_PX = 112  # the release's patch_size at 20x: the patch is 2 x 112 px
RELEASE_OUT_PX = 224


def release_divisors(mean_nonzero: np.ndarray) -> np.ndarray:
    """The release's ``load_tokenization_assets`` + its ``+= == 0``: NaN -> 0, halves up, 0 -> 1."""
    mean = np.nan_to_num(np.asarray(mean_nonzero, np.float64))
    rounded = np.where((mean % 1) >= 0.5, np.ceil(mean), np.floor(mean))
    mean = np.where(mean == 0, 1, rounded)
    return mean + (mean == 0)


def release_symbol_map(data_root: str | Path | None = None) -> dict[str, str]:
    """The release's symbol -> Ensembl map (``vocab/stamp_symbol_to_ensembl.tsv`` in the data directory)."""
    from ..paths import data_dir

    root = Path(data_root) if data_root else data_dir(required=True)
    path = root / "vocab" / "stamp_symbol_to_ensembl.tsv"
    if not path.is_file():
        raise StampInputError("the release's symbol map is missing", path,
                              hint="the released pipeline maps gene symbols with the release's own table: put "
                                   "stamp_symbol_to_ensembl.tsv in <data>/vocab/ (STAMP_ST_DATA)")
    return read_symbol_table(path)


def release_gene_mapping(var_names: Sequence[str], vocab: GeneVocabulary, symbol_map: dict[str, str]) -> GeneMapping:
    """Input column -> vocabulary index the release's way (its ``map_gene_ids`` + ``var_names_make_unique``
    + exact-name selection); -1 for columns it drops."""
    from anndata.utils import make_index_unique

    names = [symbol_map.get(str(s), str(s)) for s in var_names]
    index = pd.Index(names)
    if index.duplicated().any():
        index = make_index_unique(index)
    pos = {g: i for i, g in enumerate(vocab.gene_ids)}
    idx = np.array([pos.get(n, -1) for n in index], dtype=np.int64)
    how = np.where(idx >= 0, np.where(np.asarray(names) != np.asarray(var_names, dtype=object), "symbol", "gene_id"),
                   "")
    return GeneMapping(idx, len(vocab), how.astype(object))


class ReleaseTokenizer:
    """Tokens exactly as the release's ``tokenize_single_sample`` computes them (module docstring)."""

    pipeline = "released"

    def __init__(self, vocab: GeneVocabulary, symbol_map: dict[str, str] | None = None, context: int = 1500):
        self.vocab = vocab
        self.symbol_map = release_symbol_map() if symbol_map is None else symbol_map
        self.context = int(context)
        self.divisors = release_divisors(vocab.mean_nonzero)

    def config(self) -> dict:
        return {"pipeline": "released", "context": self.context, "rounded_means": True, "target_sum": TARGET_SUM,
                "token_offset": TOKEN_OFFSET, "vocab_checksum": self.vocab.checksum}

    def mapping(self, var_names: Sequence[str]) -> GeneMapping:
        return release_gene_mapping(var_names, self.vocab, self.symbol_map)

    def normalised(self, counts, mapping: GeneMapping) -> sp.csr_matrix:
        """The values whose order gives the tokens (steps 2-4), as the release's CSR rows hold them."""
        return self.normalise_vocab_counts(mapping.to_vocab_counts(counts))

    def normalise_vocab_counts(self, vocab_counts: sp.csr_matrix) -> sp.csr_matrix:
        """Steps 3-4 on vocabulary-aligned counts (``GeneMapping.to_vocab_counts`` of a release mapping: each
        vocabulary id has at most one column, so that is a column permutation, no sums)."""
        # the release's matrix reaches sf_normalize as float64 (its concat with the float64 template; the
        # float32 cast lands on a view; np.nan_to_num leaves a sparse matrix as it is). sf_normalize: totals,
        # 0 -> 1, 10000 / total, rows scaled in place (sklearn's row scale). Totals of counts are exact.
        x = sp.csr_matrix(vocab_counts, dtype=np.float64, copy=True)
        x.eliminate_zeros()
        x.sort_indices()
        totals = np.array(x.sum(axis=1))
        totals += totals == 0.0
        scale = TARGET_SUM / totals
        x.data *= np.repeat(scale.ravel(), np.diff(x.indptr))
        out = x / self.divisors.reshape((1, -1))
        if isinstance(out, np.matrix):  # older scipy divides densely
            out = sp.csr_matrix(out)
        return out.tocsr()

    def tokenize_vocab_counts(self, vocab_counts) -> TokenizedSpots:
        """Step 5: per spot, numpy's argsort of the negated values in the release's storage order."""
        x = self.normalise_vocab_counts(vocab_counts)
        n = x.shape[0]
        keep_n = min(self.context, RELEASE_STORED_TOKENS)
        tokens = np.full((n, self.context), STORAGE_PAD_ID, dtype=np.int32)
        nnz = np.diff(x.indptr)
        for i in np.flatnonzero(nnz):
            a, b = x.indptr[i], x.indptr[i + 1]
            top = np.argsort(-x.data[a:b])[:RELEASE_STORED_TOKENS][:keep_n]
            tokens[i, :len(top)] = (x.indices[a:b][top] + TOKEN_OFFSET).astype(np.int32)
        return TokenizedSpots(tokens, nnz.astype(np.int32), nnz == 0)

    def tokenize(self, counts, mapping: GeneMapping) -> TokenizedSpots:
        return self.tokenize_vocab_counts(mapping.to_vocab_counts(counts))

    def tokenize_sample(self, counts, var_names: Sequence[str]) -> tuple[TokenizedSpots, GeneMapping]:
        mapping = self.mapping(var_names)
        return self.tokenize(counts, mapping), mapping


def tied_positions(values_desc: np.ndarray, context: int) -> int:
    """How many of the first ``context`` ranks hold a value equal to a neighbour's (the release's order
    there is its sort's choice, not the data's)."""
    v = np.asarray(values_desc)
    if len(v) < 2:
        return 0
    eq = v[1:] == v[:-1]
    tied = np.zeros(len(v), bool)
    tied[1:] |= eq
    tied[:-1] |= eq
    return int(tied[:context].sum())


# ------------------------------------------------------------------------------------------------ crops
def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise StampInputError("the released pipeline resizes crops with OpenCV, which is not installed",
                              hint="pip install 'stamp-st[release]' (opencv-python-headless)") from err
    return cv2


def release_half_side_px(magnification: float | None = None) -> float:
    """The release's ``compute_patch_size``: 112 px at 20x (or without metadata), scaled by mag / 20."""
    return RELEASE_HALF_SIDE_PX if magnification is None else RELEASE_HALF_SIDE_PX * float(magnification) / 20


def release_patch_window(center_xy_px, half_side_px: float, width_px: int, height_px: int):
    """(x0, y0, x1, y1) that ``wsi[int(y-ps):int(y+ps), int(x-ps):int(x+ps)]`` selects, or None if empty."""
    x, y = float(center_xy_px[0]), float(center_xy_px[1])
    ys = range(height_px)[int(y - half_side_px):int(y + half_side_px)]
    xs = range(width_px)[int(x - half_side_px):int(x + half_side_px)]
    if len(ys) == 0 or len(xs) == 0:
        return None
    return xs.start, ys.start, xs.stop, ys.stop


def release_patches(slide, centers_xy_px, half_side_px: float = RELEASE_HALF_SIDE_PX,
                    out_px: int = RELEASE_OUT_PX) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 patches [n, out, out, 3] cut and resized as the release does, and a bool [n] of spots that
    have one (the others are left black)."""
    cv2 = _cv2()
    centers = np.asarray(centers_xy_px, np.float64).reshape(-1, 2)
    out = np.zeros((len(centers), out_px, out_px, 3), np.uint8)
    ok = np.zeros(len(centers), bool)
    for i, c in enumerate(centers):
        win = release_patch_window(c, half_side_px, slide.width_px, slide.height_px)
        if win is None:
            continue
        x0, y0, x1, y1 = win
        bgr = np.ascontiguousarray(slide.read_region(x0, y0, x1 - x0, y1 - y0)[..., ::-1])
        out[i] = cv2.resize(bgr, (out_px, out_px))
        ok[i] = True
    return out, ok


RELEASE_SEED = 42  # the release's set_seed(42): Python's random, one choice per spot in input order


def release_region_labels(centers_xy_px, half_side_px: float, width_px: int, height_px: int,
                          seed: int = RELEASE_SEED) -> np.ndarray:
    """The release's ``get_safe_region`` cell per spot (-1 where no 6ps x 6ps region fits inside the slide):
    ``random.choice`` among the valid cells, from ``random.seed(seed)``, over the spots in input order (the
    release calls it for every spot, those it later skips included)."""
    import random

    rng = random.Random(seed)
    ps = float(half_side_px)
    labels = np.full(len(centers_xy_px), -1, np.int64)
    for i, (x, y) in enumerate(np.asarray(centers_xy_px, np.float64).reshape(-1, 2)):
        valid = [g for g in range(9)
                 if x - (g % 3 * 2 + 1) * ps >= 0 and y - (g // 3 * 2 + 1) * ps >= 0
                 and x - (g % 3 * 2 + 1) * ps + 6 * ps <= width_px and y - (g // 3 * 2 + 1) * ps + 6 * ps <= height_px]
        if valid:
            labels[i] = rng.choice(valid)
    return labels


def release_spot_crops(slide, centers_xy_px, region_labels: np.ndarray, half_side_px: float = RELEASE_HALF_SIDE_PX,
                       out_px: int = RELEASE_OUT_PX, thumb_px: int = 16):
    """Stage-2 crops the release's way (BGR): its patch, its region ``wsi[int(y1):int(y1 + 6ps),
    int(x1):int(x1 + 6ps)]`` for the given cell, both through ``cv2.resize``. Spots without a cell (-1; the
    release crashes on them) get a white region and ``region_valid`` False; spots without a patch (the
    release skips them) are flagged in the second return value. The thumbnail (the release's ``ref_processor``
    is not in its code) is our resize of the patch."""
    from .crops import WHITE, SpotCrops, resize_batch

    cv2 = _cv2()
    centers = np.asarray(centers_xy_px, np.float64).reshape(-1, 2)
    patch, has_patch = release_patches(slide, centers, half_side_px, out_px)
    labels = np.asarray(region_labels, np.int64)
    region = np.full((len(centers), out_px, out_px, 3), WHITE, np.uint8)
    ps = float(half_side_px)
    for i, ((x, y), g) in enumerate(zip(centers, labels)):
        if g < 0:
            continue
        x1, y1 = x - (g % 3 * 2 + 1) * ps, y - (g // 3 * 2 + 1) * ps
        x0, y0, x2, y2 = int(x1), int(y1), int(x1 + 6 * ps), int(y1 + 6 * ps)
        bgr = np.ascontiguousarray(slide.read_region(x0, y0, x2 - x0, y2 - y0)[..., ::-1])
        region[i] = cv2.resize(bgr, (out_px, out_px))
    crops = SpotCrops(patch=patch, region=region, region_label=np.maximum(labels, 0), region_valid=labels >= 0,
                      thumb=resize_batch(patch, thumb_px))
    return crops, has_patch
