"""Report figures as base64 PNG strings (matplotlib's object API with the Agg canvas: no global pyplot
state, no display), so that the HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

HIGHER_IS_BETTER_EXCEPT = ("mse",)
# the range a metric can take, by a part of its name; intervals are drawn and printed inside it
METRIC_RANGES = (("mse", (0.0, np.inf)), ("pearson", (-1.0, 1.0)), ("ari", (-1.0, 1.0)),
                 ("recall", (0.0, 1.0)), ("accuracy", (0.0, 1.0)), ("f1", (0.0, 1.0)), ("auc", (0.0, 1.0)),
                 ("nmi", (0.0, 1.0)), ("chance", (0.0, 1.0)))


def metric_range(metric: str) -> tuple[float, float]:
    name = metric.lower()
    return next((r for key, r in METRIC_RANGES if key in name), (-np.inf, np.inf))


def clipped_interval(row: dict) -> tuple[float, float]:
    """(low, high) of a result row clipped to its metric's range: a t-interval over few folds can reach past
    it (recall below 0, F1 above 1), which the metric itself never does."""
    lo, hi = metric_range(row["metric"])
    return float(np.clip(row["low"], lo, hi)), float(np.clip(row["high"], lo, hi))


def interval_text(row: dict, digits: int = 3) -> str:
    mean = row.get("mean", np.nan)
    if not np.isfinite(mean):
        from .stats import NA_TEXT

        return NA_TEXT
    if not (np.isfinite(row.get("low", np.nan)) and np.isfinite(row.get("high", np.nan))):
        return f"{mean:.{digits}f}"
    lo, hi = clipped_interval(row)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def fig_to_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_thumbnail(image_path: str | Path, max_px: int = 1000) -> tuple[np.ndarray, float] | None:
    """(RGB uint8 thumbnail, thumbnail px per full-resolution px), or None when the image cannot be
    read (figures then draw spots without the H&E). JPEG/PNG through PIL draft mode (DCT-scaled decode,
    never the full image in memory); pyramidal slides through ``stamp_st.readers.slide``."""
    path = Path(image_path)
    if not path.is_file():
        return None
    try:
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            from PIL import Image

            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as im:
                    w0 = im.size[0]
                    im.draft("RGB", (max_px, max_px))
                    im = im.convert("RGB")
                    im.thumbnail((max_px, max_px))
                    return np.asarray(im), im.size[0] / w0
            finally:
                Image.MAX_IMAGE_PIXELS = old
        from PIL import Image

        from ..readers.slide import open_slide

        with open_slide(path) as slide:
            level = slide.best_level(max(slide.width_px, slide.height_px) / max_px)
            lw, lh = slide.level_dimensions[level]
            a = slide.read_level_region(level, 0, 0, lw, lh)
            im = Image.fromarray(a)
            im.thumbnail((max_px, max_px))
            return np.asarray(im), im.size[0] / slide.width_px
    except Exception:  # noqa: BLE001 - a figure without its H&E beats no report
        return None


def _spot_axes(ax, xy, thumb, title):
    if thumb is not None:
        img, scale = thumb
        ax.imshow(img)
        pts = xy * scale
        if len(pts):  # zoom to the spots: the tissue is often a small part of the scanned glass
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            pad = 0.06 * float((hi - lo).max()) + 5
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(hi[1] + pad, lo[1] - pad)
    else:
        pts = xy
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return pts


def _spot_size(pts: np.ndarray) -> float:
    """Marker area (pt^2) that keeps a few hundred spots legible and thousands from overlapping."""
    return float(np.clip(20000.0 / max(len(pts), 1), 3, 40))


def expression_maps(xy: np.ndarray, true: np.ndarray, pred: np.ndarray, genes, pearson: np.ndarray,
                    thumb=None, n_genes: int = 3, title: str = "") -> str:
    """Measured vs predicted maps of the best-predicted genes over the slide (shared colour scale)."""
    r = np.where(np.isfinite(pearson), pearson, -np.inf)
    top = np.argsort(-r)[:n_genes]
    fig = _figure(7.0, 3.0 * len(top))
    for row, g in enumerate(top):
        vmin, vmax = np.percentile(true[:, g], [1, 99])
        for col, (vals, what) in enumerate(((true[:, g], "measured"), (pred[:, g], "predicted"))):
            ax = fig.add_subplot(len(top), 2, row * 2 + col + 1)
            pts = _spot_axes(ax, xy, thumb, f"{genes[g]} {what}" + (f" (r={pearson[g]:.2f})" if col else ""))
            sc = ax.scatter(pts[:, 0], pts[:, 1], c=vals, s=_spot_size(pts), cmap="viridis", vmin=vmin,
                            vmax=vmax, alpha=0.85, linewidths=0)
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="log1p CP10k")
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return fig_to_b64(fig)


def _natural_key(c: str):
    return (0, int(c), "") if c.lstrip("-").isdigit() else (1, 0, c)


def category_palette(values) -> dict:
    """Category -> colour, fixed by the sorted set of categories, so that a label (or a cluster id) has the
    same colour in every panel and on every slide it is drawn with this palette."""
    from matplotlib import colormaps

    cats = sorted({str(c) for c in np.asarray(values).astype(str).tolist()} - {"", "-1"}, key=_natural_key)
    cmap = colormaps["tab20"]
    return {c: cmap(i % 20) for i, c in enumerate(cats)}


def _categorical_colors(values: np.ndarray, palette: dict | None = None):
    palette = palette or category_palette(values)
    present = set(values.tolist())
    cats = [c for c in palette if c in present]
    return cats, palette


def _scatter_categories(ax, pts, values, s, legend=True, palette: dict | None = None):
    values = np.asarray(values).astype(str)
    cats, colors = _categorical_colors(values, palette)
    blank = ~np.isin(values, cats)
    if blank.any():
        ax.scatter(pts[blank, 0], pts[blank, 1], s=s, c="lightgrey", linewidths=0, alpha=0.5)
    for c in cats:
        m = values == c
        ax.scatter(pts[m, 0], pts[m, 1], s=s, color=colors[c], label=c, linewidths=0, alpha=0.9)
    if legend and 0 < len(cats) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                  ncol=2)


def cluster_maps(xy: np.ndarray, labels: np.ndarray, clusters: dict[str, np.ndarray], thumb=None,
                 title: str = "", label_palette: dict | None = None) -> str:
    """Labels (coloured by ``label_palette``, shared by every slide) and each clustering over the H&E."""
    panels = [("labels", labels)] + [(m, c) for m, c in clusters.items()]
    fig = _figure(4.2 * len(panels), 4.0)
    for i, (name, vals) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pts = _spot_axes(ax, xy, thumb, name)
        _scatter_categories(ax, pts, np.asarray(vals).astype(str), _spot_size(pts), legend=(i == 0),
                            palette=label_palette if i == 0 else None)
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return fig_to_b64(fig)


def projection_2d(emb: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D projection of embeddings: UMAP (umap-learn) on the top 50 PCs, or PCA (fast fallback)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(np.asarray(emb, dtype=np.float32))
    k = int(min(50, x.shape[0] - 1, x.shape[1]))
    x = PCA(n_components=k, random_state=seed).fit_transform(x)
    if method == "pca":
        return x[:, :2]
    import umap

    return umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed, n_jobs=1).fit_transform(x)


def embedding_scatter(xy2: np.ndarray, labels: np.ndarray | None, slide_ids: np.ndarray, title: str,
                      method: str, label_palette: dict | None = None) -> str:
    panels = ([("by label", labels)] if labels is not None else []) + [("by slide", slide_ids)]
    fig = _figure(4.8 * len(panels), 4.0)
    for i, (name, vals) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _scatter_categories(ax, xy2, np.asarray(vals).astype(str), 4,
                            palette=label_palette if name == "by label" else None)
        ax.set_title(f"{title}: {method.upper()} {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig_to_b64(fig)


def retrieval_examples(patches: np.ndarray, examples: list[dict], k: int = 5, title: str = "") -> str | None:
    """Each row: the query spot's patch, then the patches of the spots whose gene embeddings it
    retrieved (green frame = the query's own spot)."""
    if patches is None or not examples:
        return None
    fig = _figure(1.6 * (k + 1), 1.7 * len(examples))
    for r, ex in enumerate(examples):
        items = [ex["query"]] + list(ex["retrieved"][:k])
        for c, idx in enumerate(items):
            ax = fig.add_subplot(len(examples), k + 1, r * (k + 1) + c + 1)
            ax.imshow(patches[idx])
            ax.set_xticks([])
            ax.set_yticks([])
            hit = c > 0 and idx == ex["query"]
            for sp in ax.spines.values():
                sp.set_edgecolor("green" if hit else "none")
                sp.set_linewidth(3)
            ax.set_title("query" if c == 0 else f"#{c}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return fig_to_b64(fig)


def metric_bars(rows: list[dict], task: str) -> str | None:
    """One small panel per metric (own scale), a bar per source with its 95% interval (clipped to the
    metric's range). A source has the same colour in every task's chart: colours follow the order of the
    sources over all rows (or ``sources``), not of those this task scores."""
    all_sources = list(dict.fromkeys(r["source"] for r in rows if r.get("source")))
    rows = [r for r in rows if r["task"] == task and "mean" in r and not r["metric"].startswith("chance")]
    if not rows:
        return None
    from matplotlib import colormaps

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    scored = {r["source"] for r in rows}
    sources = [s for s in all_sources if s in scored]
    colour_index = {s: all_sources.index(s) for s in sources}
    cmap = colormaps["tab10"]
    ncol = min(4, len(metrics))
    nrow = -(-len(metrics) // ncol)
    fig = _figure(2.6 * ncol, 2.6 * nrow + 0.4)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        for j, s in enumerate(sources):
            r = next((r for r in rows if r["metric"] == m and r["source"] == s), None)
            if r is None or not np.isfinite(r["mean"]):
                continue
            ok = np.isfinite(r["low"]) and np.isfinite(r["high"])
            lo, hi = clipped_interval(r) if ok else (np.nan, np.nan)
            err = [[max(r["mean"] - lo, 0.0)], [max(hi - r["mean"], 0.0)]] if ok else None
            ax.bar([j], [r["mean"]], color=cmap(colour_index[s] % 10), yerr=err, capsize=3, label=s)
        ax.set_xticks([])
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(m, fontsize=8)
        ax.tick_params(labelsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color=cmap(colour_index[s] % 10), label=s) for s in sources]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(sources)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{task}: mean and 95% interval over held-out slides", fontsize=9, y=1.02)
    fig.subplots_adjust(bottom=0.18)
    return fig_to_b64(fig)


def training_curves(metrics_csv: str | Path, title: str, max_panels: int = 4) -> str | None:
    """Validation curves of a training run from the engine's long-format ``metrics.csv`` (step, epoch,
    split, metric, value): one panel per metric, chance level dashed where the run logged one."""
    import pandas as pd

    p = Path(metrics_csv)
    if not p.is_file():
        return None
    df = pd.read_csv(p)
    val = df[df["split"] == "val"]
    if val.empty:
        return None
    names = [m for m in dict.fromkeys(val["metric"]) if not m.startswith("chance_") and m != "loss"]
    recall = sorted((m for m in names if m.startswith("recall@")), key=lambda m: int(m.split("@")[1]))
    names = recall + [m for m in names if not m.startswith("recall@")]
    names = names[:max_panels]
    fig = _figure(3.2 * len(names), 2.6)
    for i, m in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        d = val[val["metric"] == m].sort_values("step")
        ax.plot(d["step"], d["value"], marker="o", ms=3)
        chance = val[val["metric"] == f"chance_{m}"].sort_values("step")
        if not chance.empty:
            ax.plot(chance["step"], chance["value"], ls="--", color="grey", label="chance")
            ax.legend(fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10, y=1.04)
    return fig_to_b64(fig)
