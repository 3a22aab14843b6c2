"""Write the evaluation results as ``results.json`` and a self-contained ``report.html`` (inline CSS,
figures as base64 PNG, no external assets): one table of every metric with its 95% interval, each
embedding source side by side, then the figures per task."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_utils import atomic_write_json, atomic_write_text
from . import figures as F
from .registry import EVAL_TASKS
from .stats import interval_text

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.35em .7em;
text-align:left}th{background:#f4f5f7}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:600;background:#eef7ee}td.skip{color:#888;text-align:center}
table.metrics{font-size:.82em;width:100%;table-layout:auto}table.metrics th{font-size:.95em;vertical-align:bottom}
table.metrics td{padding:.25em .45em}span.ci{color:#666;font-size:.88em}ul.note{margin-top:.2em}
.meta{color:#555;font-size:.9em}.note{color:#555;font-size:.85em}figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
code{background:#f4f5f7;padding:0 .25em;border-radius:3px}
"""

def _esc(x) -> str:
    return html.escape(str(x))


NOT_RUN = "n/a (this metric does not apply to this source)"


def _lower_is_better(metric: str) -> bool:
    return any(s in metric for s in F.HIGHER_IS_BETTER_EXCEPT)


def metric_table_html(results: dict) -> str:
    """One compact table: a row per (task, metric), a column per source, each cell the mean over an interval
    (clipped to the metric's range); the best mean per row in bold. What a metric means is said once, under
    the table, and why a source is not scored once per reason (a footnote mark in its cells)."""
    sources = list(results["sources"])
    baseline = results["meta"].get("baseline")
    rows = results["table"]
    head = "".join(f"<th>{_esc(s)}{' (baseline)' if s == baseline else ''}</th>" for s in sources)
    out = [f"<table class='metrics'><thead><tr><th>task</th><th>metric</th>{head}</tr></thead><tbody>"]
    reasons: dict[str, str] = {}  # skip reason -> footnote mark

    def skip_cell(reason: str | None) -> str:
        reason = reason or NOT_RUN
        mark = reasons.setdefault(reason, "*" * (len(reasons) + 1) if len(reasons) < 3 else str(len(reasons) + 1))
        return f"<td class='skip' title='{_esc(reason)}'>—<sup>{_esc(mark)}</sup></td>"

    used_metrics = []  # (task, metric)
    for task in results["tasks"]:
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task and r.get("metric")))
        skipped = {r["source"]: r["skipped"] for r in rows if r["task"] == task and "skipped" in r}
        if not metrics:
            cells = "".join(skip_cell(skipped.get(s)) for s in sources)
            out.append(f"<tr><td>{_esc(task)}</td><td>—</td>{cells}</tr>")
            continue
        for m in metrics:
            used_metrics.append((task, m))
            by_src = {r["source"]: r for r in rows if r["task"] == task and r.get("metric") == m}
            means = {s: r["mean"] for s, r in by_src.items() if r["mean"] is not None and np.isfinite(r["mean"])}
            best = None
            if len(means) > 1 and not m.startswith("chance"):
                best = (min if _lower_is_better(m) else max)(means, key=means.get)
            cells = []
            for s in sources:
                if s in by_src:
                    r = by_src[s]
                    cls = "num best" if s == best else "num"
                    text = interval_text(r)
                    mean, _, ci = text.partition(" ")
                    cells.append(f"<td class='{cls}' title='n={r['n']} ({_esc(r['method'])})'>{_esc(mean)}"
                                 + (f"<br><span class='ci'>{_esc(ci)}</span>" if ci else "") + "</td>")
                else:
                    cells.append(skip_cell(skipped.get(s)))
            out.append(f"<tr><td>{_esc(task)}</td><td>{_esc(m)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    by_note: dict[str, list[str]] = {}  # one line per meaning, listing the metrics it covers
    for task, m in used_metrics:
        note = metric_note(m, task)
        if note and m not in by_note.get(note, []):
            by_note.setdefault(note, []).append(m)
    notes = [f"<li>{', '.join(f'<code>{_esc(m)}</code>' for m in ms)}: {_esc(note)}</li>"
             for note, ms in by_note.items()]
    notes += [f"<li>—<sup>{_esc(mark)}</sup> not scored: {_esc(reason)}</li>" for reason, mark in reasons.items()]
    if notes:
        out.append(f"<ul class='note'>{''.join(notes)}</ul>")
    return "\n".join(out)


def task_title(task: str) -> str:
    """The report's heading of a task: its registry title (the name of a task no longer registered)."""
    return EVAL_TASKS[task].title if task in EVAL_TASKS else task


def metric_note(metric: str, task: str | None = None) -> str:
    """What a metric is: the note of ``task``'s registry entry, else of the first entry that names it."""
    entries = ([EVAL_TASKS[task]] if task in EVAL_TASKS else []) + list(EVAL_TASKS.values())
    note = next((n for e in entries if (n := e.metric_note(metric)) is not None), "")
    if _lower_is_better(metric):
        note = (note + "; " if note else "") + "lower is better"
    return note


def gains_table_html(results: dict) -> str:
    """Gain of each source over the baseline, paired 95% interval; green where the interval is above 0,
    red where it is below (lower-is-better metrics are not listed)."""
    from .gains import format_gain

    rows = results.get("gains") or []
    if not rows:
        return ""
    out = [f"<h2>Gain over {_esc(rows[0]['baseline'])}</h2><p class='note'>Source minus baseline on the same "
           "held-out spots, mean over held-out slides; 95% interval from a paired bootstrap over spots within "
           "each held-out slide. Green: the interval lies above zero; red: below.</p>",
           "<table><thead><tr><th>task</th><th>metric</th><th>source</th><th>gain [95% CI]</th>"
           "<th>per held-out slide</th></tr></thead><tbody>"]
    for r in rows:
        if r.get("gain") is None or not np.isfinite(r["gain"]):
            continue  # not measured (e.g. no labels for probe / cluster)
        colour = "#e3f4e3" if r["low"] > 0 else "#f8e0e0" if r["high"] < 0 else "transparent"
        per = ", ".join(f"{v:+.3f}" for v in r.get("per_slide", []))
        out.append(f"<tr><td>{_esc(r['task'])}</td><td>{_esc(r['metric'])}</td><td>{_esc(r['source'])}</td>"
                   f"<td class='num' style='background:{colour}'>{_esc(format_gain(r))}</td>"
                   f"<td class='num'>{_esc(per)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def ablations_table_html(results: dict) -> str:
    """Stage-2 ablations (``pipeline.ablations``: the demo's seeds, or ``benchmarks/fidelity_ablations.py``): per
    variant, the gain of Stamp_V over the unaligned backbone, its shuffled-gene control's gain and the genes'
    share (variant minus control), each as the mean ± sd over seeds with the range, and each seed's paired
    interval."""
    from .gains import format_gain

    abl = results.get("ablations") or {}
    variants = abl.get("variants") or {}
    if not variants:
        return ""
    titles = {"gain_over_backbone": "Stamp_V gain over the backbone",
              "control_gain_over_backbone": "shuffled-gene control's gain over the backbone",
              "genes_share": "genes' share (variant minus its control, paired)"}
    if abl.get("reference"):
        titles["gain_over_reference"] = f"gain over '{abl['reference']}' (same seed, paired)"
    out = [f"<h2>Ablations</h2><p class='note'>{_esc(abl.get('what', ''))} "
           f"{_esc(abl.get('a_priori_choice', ''))} Command: <code>{_esc(abl.get('command', ''))}</code></p>",
           "<table><thead><tr><th>variant</th><th>read-out</th><th>task / metric</th>"
           "<th>mean ± sd over seeds [min, max]</th><th>each seed: gain [paired 95% CI]</th></tr></thead><tbody>"]
    for name, v in variants.items():
        if "summary" not in v and v.get("gains"):  # one run (a results file written before seeds were kept)
            for g in v["gains"]:
                colour = "#e3f4e3" if g["low"] > 0 else "#f8e0e0" if g["high"] < 0 else "transparent"
                out.append(f"<tr><td>{_esc(name)}</td><td>{_esc(titles['gain_over_backbone'])}</td>"
                           f"<td>{_esc(g['task'])}/{_esc(g['metric'])}</td><td class='num' style='background:"
                           f"{colour}'>{g['gain']:+.3f} (n=1)</td><td class='num'>{_esc(format_gain(g))}</td></tr>")
            continue
        if "summary" not in v:
            out.append(f"<tr><td>{_esc(name)}</td><td colspan='4' class='note'>{_esc(v.get('note', ''))}</td></tr>")
            continue
        for key, per_metric in v["summary"].items():
            for metric, sm in per_metric.items():
                task, met = metric.split("/", 1)
                rows = [g for seed in v.get("seeds", {}).values() for g in seed.get(key, [])
                        if g["task"] == task and g["metric"] == met]
                every_above = rows and all(g["low"] > 0 for g in rows)
                every_below = rows and all(g["high"] < 0 for g in rows)
                colour = "#e3f4e3" if every_above else "#f8e0e0" if every_below else "transparent"
                sd = "" if sm.get("sd") is None or not np.isfinite(sm["sd"]) else f" ± {sm['sd']:.3f}"
                out.append(f"<tr><td>{_esc(name)}</td><td>{_esc(titles.get(key, key))}</td><td>{_esc(metric)}</td>"
                           f"<td class='num' style='background:{colour}'>{sm['mean']:+.3f}{sd} "
                           f"[{sm['min']:+.3f}, {sm['max']:+.3f}] (n={sm['n_seeds']})</td>"
                           f"<td class='num'>{_esc('; '.join(format_gain(g) for g in rows))}</td></tr>")
    out.append("</tbody></table><p class='note'>Green: every seed's paired interval lies above zero; red: every "
               "seed's lies below.</p>")
    return "".join(out)


def genes_only_table_html(results: dict) -> str:
    """The gene encoder on genes-only sections that no stage trained on: k-means ARI of Stamp_G beside a
    50-component expression PCA, and the paired gain."""
    from .gains import format_gain

    g = results.get("genes_only") or {}
    if not g:
        return ""
    out = [f"<h2>Gene encoder on held-out genes-only sections</h2><p class='note'>{_esc(g.get('what', ''))}</p>",
           "<table><thead><tr><th>labels</th><th>source</th><th>k-means ARI [95% CI over sections]</th>"
           "<th>gain over the expression PCA [paired 95% CI]</th></tr></thead><tbody>"]
    for lab, r in g.get("labels", {}).items():
        gains = {x["source"]: x for x in r.get("gains", [])}
        for row in r.get("table", []):
            gain = gains.get(row["source"])
            colour = ("transparent" if gain is None else "#e3f4e3" if gain["low"] > 0
                      else "#f8e0e0" if gain["high"] < 0 else "transparent")
            out.append(f"<tr><td>{_esc(lab)}</td><td>{_esc(row['source'])}</td>"
                       f"<td class='num'>{_esc(interval_text(row))}</td><td class='num' style='background:"
                       f"{colour}'>{_esc(format_gain(gain) if gain else '(baseline)')}</td></tr>")
        seeds = r.get("over_seeds")
        if seeds:  # one row per Stage-1 seed above; their spread
            a, g = seeds["ari"], seeds["gain_over_pca"]
            out.append(f"<tr><td>{_esc(lab)}</td><td>over {a['n_seeds']} Stage-1 seeds: mean ± sd [min, max]</td>"
                       f"<td class='num'>{a['mean']:.3f} ± {a['sd']:.3f} [{a['min']:.3f}, {a['max']:.3f}]</td>"
                       f"<td class='num'>{g['mean']:+.3f} ± {g['sd']:.3f} [{g['min']:+.3f}, {g['max']:+.3f}]</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(b64: str | None, caption: str) -> str:
    if not b64:
        return ""
    return (f"<figure><img alt='{_esc(caption)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def build_figures(results: dict, artifacts: dict, projection: str = "umap", max_slides: int | None = None,
                  seed: int = 0) -> dict[str, list[str]]:
    """HTML snippets of figures per section; every figure is optional and omitted when its inputs are
    absent (no H&E path, task skipped). Maps are drawn for every held-out slide (``max_slides``: a cap)."""
    out: dict[str, list[str]] = {"overview": [], "embeddings": [], "training": []}
    for title, csv in (artifacts.get("training_curves") or {}).items():
        out["training"].append(_img(F.training_curves(csv, title), f"{title}: every logged training step (line) "
                                                                    "and each validation on held-out slides (dots)"))
    sources = artifacts.get("sources") or {}
    preds = artifacts.get("predictions") or {}
    labels = artifacts.get("labels")
    for task in results["tasks"]:
        out.setdefault(task, [])
        out[task].append(_img(F.metric_bars(results["table"], task), f"{task}: every source, 95% interval"))
    if not sources:
        return out
    first = next(iter(sources.values()))
    slides = list(dict.fromkeys(first.slide_ids.tolist()))[:max_slides]
    palette = F.category_palette(labels) if labels is not None else None  # one colour per label everywhere
    thumbs = {}
    for sl in slides:
        p = next((s.image_paths.get(sl) for s in sources.values() if s.image_paths.get(sl)), None)
        thumbs[sl] = F.load_thumbnail(p) if p else None
    page = FigurePage(sources, labels, first, slides, thumbs, palette)
    for task in results["tasks"]:
        draw = EVAL_TASKS[task].load("figures") if task in EVAL_TASKS and EVAL_TASKS[task].figures else None
        for name, p in (preds.get(task) or {}).items() if draw else ():
            if p is not None:
                out[task].extend(draw(name, p, page))
    # UMAP by label and by slide
    n = len(first)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(n, size=min(n, 5000), replace=False))
    for name, s in sources.items():
        xy2 = F.projection_2d(s.emb[sub], projection, seed)
        out["embeddings"].append(_img(
            F.embedding_scatter(xy2, None if labels is None else labels[sub], s.slide_ids[sub], name, projection,
                                label_palette=palette),
            f"{name}: {projection.upper()} of the embeddings coloured by label and by slide"))
    return out


@dataclass
class FigurePage:
    """What a task's figure function (``EvalTask.figures``: ``draw(source name, predictions, page)`` -> HTML
    snippets) may draw on: the aligned sources, spot labels, the first source (spot positions, slide ids), the
    slides to draw, their H&E thumbnails and the label colours."""

    sources: dict
    labels: np.ndarray | None
    first: object
    slides: list[str]
    thumbs: dict
    palette: dict | None


def expression_figures(name: str, p: dict, page: FigurePage) -> list[str]:
    """Measured vs ridge-predicted expression maps of each held-out slide."""
    xy, out = page.first.xy_px, []
    if xy is None:
        return out
    for fold in p["ridge"]:
        if fold["fold"] not in page.slides:
            continue
        idx = fold["test_idx"]
        out.append(_img(
            F.expression_maps(xy[idx], fold["true"], fold["pred"], fold["genes"], fold["pearson"],
                              page.thumbs.get(fold["fold"]), title=f"{name}, held-out slide {fold['fold']}"),
            f"{name}: measured vs ridge-predicted expression of the best-predicted genes, slide {fold['fold']}"))
    return out


def cluster_figures(name: str, cl: dict, page: FigurePage) -> list[str]:
    """Labels and clusters over the H&E, per slide."""
    xy, labels, out = page.first.xy_px, page.labels, []
    if xy is None or labels is None:
        return out
    for sl in page.slides:
        idx = np.flatnonzero((page.first.slide_ids == sl) & (labels != ""))
        if len(idx) == 0:
            continue
        out.append(_img(
            F.cluster_maps(xy[idx], labels[idx], {m: c[idx] for m, c in cl.items()}, page.thumbs.get(sl),
                           title=f"{name}, slide {sl}", label_palette=page.palette),
            f"{name}: labels and clusters over the H&E, slide {sl}"))
    return out


def retrieval_figures(name: str, ex: list, page: FigurePage) -> list[str]:
    """A few image->gene retrieval examples with their patches."""
    ex = ex[:4]
    patches, how = page.sources[name].patches, "the embedding file's patches"
    if patches is None:
        patches, how = _patches_from_he(page.sources[name], ex), "cut from the H&E, one spot pitch wide"
    b64 = F.retrieval_examples(patches, ex, title=name) if patches is not None else None
    if b64:
        return [_img(b64, f"{name}: image->gene retrieval; first column is the query's patch, "
                          f"then the patches of the retrieved spots (green = own spot; {how})")]
    return ["<p class='note'>Retrieval examples omitted: the embedding file carries no "
            "patches and no readable H&E for these slides.</p>"]


def _patches_from_he(source, examples: list[dict], out_px: int = 96) -> dict | None:
    """{spot index: uint8 patch} for the spots of ``examples``, cut from each slide's H&E around the spot,
    one spot pitch (median nearest-neighbour distance) wide; None when a slide's image is not at hand."""
    from scipy.spatial import cKDTree

    from ..readers.slide import open_slide

    if source.xy_px is None or not examples:
        return None
    out = {}
    for slide_id in dict.fromkeys(e.get("slide", source.slide_ids[e["query"]]) for e in examples):
        path = source.image_paths.get(slide_id)
        if not path or not Path(path).is_file():
            return None
        on_slide = np.flatnonzero(source.slide_ids == slide_id)
        xy = source.xy_px[on_slide]
        if len(xy) < 2:
            return None
        side = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
        want = {i for e in examples if e.get("slide", source.slide_ids[e["query"]]) == slide_id
                for i in [e["query"], *e["retrieved"]]}
        try:
            with open_slide(path) as slide:
                for i in want:
                    out[i] = slide.read_square(source.xy_px[i], side, out_px)
        except Exception:  # noqa: BLE001 - a report without examples beats no report
            return None
    return out


def render_html(results: dict, figs: dict[str, list[str]] | None = None, title: str = "stamp-st evaluation") -> str:
    figs = figs or {}
    meta = results["meta"]
    src_rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(v['modality'])}</td><td class='num'>{v['dim']}</td>"
        f"<td>{'yes' if v['has_gene_embedding'] else 'no'}</td><td>{_esc(v.get('path', ''))}</td></tr>"
        for k, v in results["sources"].items())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='meta'>{meta['n_spots']} spots on {len(meta['slides'])} slides "
        f"({_esc(', '.join(meta['slides']))}); split: {_esc(meta['split'])}; "
        f"{'' if meta['n_labelled'] is None else str(meta['n_labelled']) + ' labelled spots; '}"
        f"intervals: {_esc(meta['interval'])}; stamp-st {_esc(meta['stamp_st_version'])}, seed {meta['seed']}.</p>",
        "<h2>Embedding sources</h2><table><thead><tr><th>name</th><th>modality</th><th>dim</th>"
        f"<th>gene embedding</th><th>file</th></tr></thead><tbody>{src_rows}</tbody></table>",
        "<h2>All metrics</h2>",
        "<p class='note'>Mean over held-out slides (folds) with a 95% Student-t interval in brackets (clipped to "
        "the metric's range, as everywhere in this report and the console); hover a cell for the number of folds. Bold: best mean of the row.</p>",
        metric_table_html(results),
    ]
    for note in meta.get("notes", []):
        parts.insert(-3, f"<p class='note'>{_esc(note)}</p>")
    parts.append(gains_table_html(results))
    parts.append(genes_only_table_html(results))
    parts.append(ablations_table_html(results))
    if any(figs.get("training", [])):
        parts.append("<h2>Training</h2>")
        parts.extend(figs["training"])
    for task in results["tasks"]:
        parts.append(f"<h2>{_esc(task_title(task))}</h2>")
        parts.extend(figs.get(task, []))
    if figs.get("embeddings"):
        parts.append("<h2>Embeddings</h2>")
        parts.extend(figs["embeddings"])
    protocols = [EVAL_TASKS[t].protocol for t in results["tasks"] if t in EVAL_TASKS and EVAL_TASKS[t].protocol]
    if protocols:
        parts.append("<h2>Protocols</h2><ul class='note'>" + "".join(f"<li>{_esc(p)}</li>" for p in protocols)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def json_clean(obj):
    """NaN/inf -> None (strict JSON), numpy scalars/arrays -> Python; fails early on anything else."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_report(out_dir: str | Path, results: dict, artifacts: dict | None = None, projection: str = "umap",
                 title: str = "stamp-st evaluation") -> tuple[Path, Path]:
    """Write ``report.html`` and ``results.json`` into ``out_dir``, each atomically. ``results.json`` is the
    completion marker: an earlier run's is removed first and the new one is written last, so a killed run
    leaves both files of one run or no ``results.json`` (its report, if any, is then incomplete work)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = json_clean(results)  # before anything is touched: an unserialisable result fails here
    figs = build_figures(results, artifacts or {}, projection=projection,
                         seed=int(results["meta"].get("seed", 0)))
    html = render_html(results, figs, title)
    (out_dir / "results.json").unlink(missing_ok=True)
    atomic_write_text(out_dir / "report.html", html)
    atomic_write_json(out_dir / "results.json", clean)
    return out_dir / "results.json", out_dir / "report.html"
