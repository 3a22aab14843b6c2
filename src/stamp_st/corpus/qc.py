"""Spot and slide quality control with a count of what each rule dropped.

Spot rules run in a fixed order and a dropped spot is counted under the *first* rule that drops it, so the
per-rule counts add up to the number of dropped spots. Slide rules skip a whole slide with one reason
(``duplicate_path``, ``duplicate_counts``, ``no_pixel_size``, ``no_image``, ``no_spots_left``, ``read_error``;
``corpus.build``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from ..config_types import COUNT0, FRACTION, ranged

# spot rules, in the order they are applied
SPOT_RULES = ("not_in_tissue", "empty", "min_counts", "min_genes", "off_image")


@dataclass(frozen=True)
class QCConfig:
    """Thresholds. ``min_counts``: raw UMI/read count per spot over all genes; ``min_genes``: genes with a
    non-zero count *in the vocabulary*; ``max_outside_fraction``: drop a spot (paired corpora) when more than
    this fraction of its patch square lies outside the image."""

    min_counts: int = ranged(100, COUNT0)
    min_genes: int = ranged(50, COUNT0)
    require_in_tissue: bool = True
    max_outside_fraction: float = ranged(0.5, FRACTION)

    def to_json(self) -> dict:
        return asdict(self)


def empty_counts() -> dict[str, int]:
    return {r: 0 for r in SPOT_RULES}


def spot_qc(counts, vocab_counts: sp.csr_matrix, in_tissue: np.ndarray | None, config: QCConfig,
            outside_fraction: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean keep-mask over spots and the number each rule dropped.

    ``counts``: raw spots x genes (all genes); ``vocab_counts``: the same spots mapped onto the vocabulary;
    ``outside_fraction``: per spot, the fraction of the patch outside the image (None for gene corpora).
    """
    n = vocab_counts.shape[0]
    total = np.asarray(sp.csr_matrix(counts).sum(axis=1)).ravel()
    vc = sp.csr_matrix(vocab_counts, copy=True)
    vc.sum_duplicates()
    vc.eliminate_zeros()
    genes_in_vocab = np.diff(vc.indptr)
    vocab_total = np.asarray(vc.sum(axis=1)).ravel()
    fails = {
        "not_in_tissue": (~np.asarray(in_tissue, bool)) if (config.require_in_tissue and in_tissue is not None)
        else np.zeros(n, bool),
        "empty": vocab_total <= 0,
        "min_counts": total < config.min_counts,
        "min_genes": genes_in_vocab < config.min_genes,
        "off_image": (np.asarray(outside_fraction) > config.max_outside_fraction) if outside_fraction is not None
        else np.zeros(n, bool),
    }
    keep = np.ones(n, bool)
    dropped = {}
    for rule in SPOT_RULES:
        hit = keep & fails[rule]
        dropped[rule] = int(hit.sum())
        keep &= ~fails[rule]
    return keep, dropped


def patch_outside_fraction(centers_xy_px: np.ndarray, side_px: float, width_px: int, height_px: int) -> np.ndarray:
    """Fraction of each spot's square patch (side ``side_px``) that lies outside the image."""
    c = np.asarray(centers_xy_px, np.float64).reshape(-1, 2)
    half = side_px / 2.0
    x0, x1 = c[:, 0] - half, c[:, 0] + half
    y0, y1 = c[:, 1] - half, c[:, 1] + half
    ix = np.clip(np.minimum(x1, width_px) - np.maximum(x0, 0), 0, None)
    iy = np.clip(np.minimum(y1, height_px) - np.maximum(y0, 0), 0, None)
    return 1.0 - (ix * iy) / (side_px * side_px)


def counts_checksum(counts, var_names) -> str:
    """sha256 of the count matrix (CSR, canonical) and its gene names: equal checksums = duplicate slides."""
    import hashlib

    X = sp.csr_matrix(counts, copy=True)
    X.sum_duplicates()
    X.sort_indices()
    h = hashlib.sha256()
    h.update(np.asarray(X.shape, np.int64).tobytes())
    h.update(np.asarray(X.indptr, np.int64).tobytes())
    h.update(np.asarray(X.indices, np.int64).tobytes())
    h.update(np.asarray(X.data, np.float64).tobytes())
    h.update("\n".join(map(str, var_names)).encode())
    return "sha256:" + h.hexdigest()


def total_report(per_slide: list[dict]) -> dict:
    """Sum the per-slide QC dicts (``n_spots_input``, ``n_spots_kept``, ``dropped``) into corpus totals."""
    dropped = empty_counts()
    n_in = n_kept = 0
    for s in per_slide:
        n_in += s.get("n_spots_input", 0)
        n_kept += s.get("n_spots_kept", 0)
        for k, v in s.get("dropped", {}).items():
            dropped[k] = dropped.get(k, 0) + int(v)
    return {"n_spots_input": n_in, "n_spots_kept": n_kept, "dropped": dropped}


def format_report(qc_total: dict, skipped: list[dict]) -> str:
    """Human-readable QC summary, printed at the end of a build."""
    lines = [f"QC: {qc_total['n_spots_kept']} of {qc_total['n_spots_input']} spots kept"]
    for rule in SPOT_RULES:
        lines.append(f"  dropped by {rule:<14} {qc_total['dropped'].get(rule, 0)}")
    if skipped:
        lines.append(f"  slides skipped: {len(skipped)}")
        for s in skipped:
            lines.append(f"    {s['slide_id']}: {s['reason']}" + (f" ({s['detail']})" if s.get("detail") else ""))
    return "\n".join(lines)
