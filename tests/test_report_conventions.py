"""Report conventions: a label has one colour on every slide and figure, a source one colour in every task's
chart, and intervals stay inside the metric's range."""

from __future__ import annotations

import numpy as np
import pytest


def _row(task, metric, source, mean, low, high):
    return {"task": task, "metric": metric, "source": source, "mean": mean, "low": low, "high": high, "n": 3,
            "method": "t", "text": ""}


def test_intervals_are_clipped_to_the_metric_range():
    from stamp_st.evaluation.stats import interval_text

    assert interval_text(_row("retrieval", "img2gene_recall@10", "a", 0.05, -0.02, 0.12)) == "0.050 [0.000, 0.120]"
    assert interval_text(_row("probe", "macro_f1", "a", 0.9, 0.7, 1.2)) == "0.900 [0.700, 1.000]"
    assert interval_text(_row("expression", "ridge_mse", "a", 0.2, -0.1, 0.5)) == "0.200 [0.000, 0.500]"
    assert interval_text(_row("expression", "ridge_pearson", "a", 0.2, -0.1, 0.5)) == "0.200 [-0.100, 0.500]"
    assert interval_text(_row("expression", "ridge_pearson", "a", 0.9, 0.7, 1.3)) == "0.900 [0.700, 1.000]"
    assert interval_text(_row("retrieval", "image_to_gene_R@10", "a", 0.552, 0.083, 1.02)) == "0.552 [0.083, 1.000]"
    assert interval_text(_row("cluster", "kmeans_ari", "a", 0.1, -0.7, 0.4)) == "0.100 [-0.500, 0.400]"
    assert interval_text(_row("probe", "balanced_accuracy", "a", 0.28, -0.007, 0.58)) == "0.280 [0.000, 0.580]"


def test_console_table_and_html_print_the_same_clipped_interval():
    """The flattened table (what evaluate and demo print) and the HTML cell come from one clipping."""
    from stamp_st.evaluation.report import metric_table_html
    from stamp_st.evaluation.tasks import metric_table

    iv = {"mean": 0.552, "low": 0.083, "high": 1.020, "n": 3, "method": "t", "confidence": 0.95, "values": []}
    mse = {**iv, "mean": 2.321, "low": -2.071, "high": 6.714}
    results = {"tasks": {"retrieval": {"a": {"metrics": {"image_to_gene_R@10": iv}}},
                         "expression": {"a": {"metrics": {"ridge_mse": mse}}}}}
    rows = metric_table(results)
    assert [r["text"] for r in rows] == ["0.552 [0.083, 1.000]", "2.321 [0.000, 6.714]"]
    assert all(r["low"] >= 0 and r["high"] <= (1 if "R@" in r["metric"] else np.inf) for r in rows)
    html = metric_table_html({"sources": {"a": {}}, "meta": {}, "table": rows,
                              "tasks": ["retrieval", "expression"]})
    assert "0.552<br><span class='ci'>[0.083, 1.000]</span>" in html  # the mean over its interval
    assert "2.321<br><span class='ci'>[0.000, 6.714]</span>" in html


def _capture(monkeypatch):
    import stamp_st.evaluation.figures as F

    figs = []
    monkeypatch.setattr(F, "fig_to_b64", lambda fig: figs.append(fig) or "x")
    return F, figs


def test_a_source_keeps_its_colour_across_tasks(monkeypatch):
    F, figs = _capture(monkeypatch)
    rows = [_row("probe", "macro_f1", "STAMP", 0.6, 0.5, 0.7), _row("probe", "macro_f1", "expr", 0.7, 0.6, 0.8),
            _row("probe", "macro_f1", "UNI", 0.5, 0.4, 0.6),
            _row("expression", "ridge_pearson", "STAMP", 0.3, 0.2, 0.4),
            _row("expression", "ridge_pearson", "UNI", 0.2, 0.1, 0.3)]  # expr (gene side) is not scored here
    F.metric_bars(rows, "probe")
    F.metric_bars(rows, "expression")

    def colours(fig):
        return {h.get_label(): h.get_facecolor() for h in fig.legends[0].legend_handles}

    probe, expression = colours(figs[0]), colours(figs[1])
    assert set(expression) == {"STAMP", "UNI"}
    for s in expression:
        assert expression[s] == probe[s]


def test_a_label_keeps_its_colour_on_every_slide():
    from matplotlib.figure import Figure

    from stamp_st.evaluation.figures import _scatter_categories, category_palette

    labels = np.array(["tumour", "stroma", "immune", "tumour", "adipose"])
    palette = category_palette(labels)
    slide1 = np.array(["stroma", "tumour", "tumour"])  # different labels, in different first-seen order
    slide2 = np.array(["adipose", "immune", "tumour"])
    seen = []
    for vals in (slide1, slide2):
        ax = Figure().add_subplot()
        _scatter_categories(ax, np.zeros((len(vals), 2)), vals, 5, palette=palette)
        seen.append({c.get_label(): tuple(c.get_facecolor()[0]) for c in ax.collections})
    assert seen[0]["tumour"] == seen[1]["tumour"]
    assert len({seen[0]["stroma"], seen[1]["adipose"], seen[1]["immune"], seen[0]["tumour"]}) == 4


@pytest.mark.parametrize("values", [np.array(["3", "1", "10", "2"])])
def test_cluster_ids_in_natural_order(values):
    from stamp_st.evaluation.figures import category_palette

    assert list(category_palette(values)) == ["1", "2", "3", "10"]


def test_metric_table_says_each_note_once():
    """A reason a source is not scored, and what a metric means, appear once under the table, not per cell."""
    from stamp_st.evaluation.report import metric_table_html

    iv = {"mean": 0.3, "low": 0.2, "high": 0.4, "n": 3, "method": "t", "text": ""}
    why = "gene-side embedding is computed from the expression it would predict"
    rows = [{"task": "expression", "metric": m, "source": "img", **iv} for m in ("ridge_pearson", "ridge_mse",
                                                                              "impute_pearson", "impute_mse")]
    rows.append({"task": "expression", "metric": "", "source": "genes", "skipped": why})
    html = metric_table_html({"sources": {"img": {}, "genes": {}}, "meta": {}, "table": rows,
                              "tasks": ["expression"]})
    assert html.count(f"not scored: {why}") == 1
    assert html.count("log1p CP10k, same genes") == 1  # ridge_mse and impute_mse share one line
    assert html.count("<td class='skip'") == 4 and "class='note'" not in html.split("</table>")[0]
