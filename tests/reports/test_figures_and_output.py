"""Issue 23's report items on fabricated rows (no training): one colour and marker per method in
every figure, ranks named by layer, a Pareto line through its points as plotted; --format decides
what is written, the paper column preset, notes of the columns shown, --paper without results
writes nothing; --compare's default references; the paper diff's note on published spreads."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from rows import make_row, paper_row, write_rows
from test_reports import check_latex

from rankbench.reports import collate, compare, paper, plots, tables
from rankbench.reports.cli import main_report


def _rows(root: Path) -> Path:
    """dense, two SVD variants and TRP at a matched 2x; DeepTwist with SVD's exact numbers."""
    rows = [make_row(seed=s, top1=91.0 + s / 10, layers=[]) for s in range(3)]
    svd = {"scheme": "channel", "rule": "speedup:2.0"}
    rows += [make_row(method="svd", params={**svd, "finetune_epochs": 2}, seed=s, top1=89.0 + s / 10,
                      macs=20_300_000) for s in range(3)]
    rows += [make_row(method="svd", params={**svd, "finetune_epochs": 0}, seed=s, top1=80.0 + s,
                      macs=20_300_000) for s in range(3)]
    rows += [make_row(method="deeptwist", params={**svd, "finetune_epochs": 2}, seed=s, top1=89.0 + s / 10,
                      macs=20_300_000) for s in range(3)]
    rows += [make_row(method="trp", params={"scheme": "channel", "export": "speedup:2.0"}, seed=s,
                      top1=88.0 + s / 5, macs=20_200_000) for s in range(3)]
    write_rows(root, rows)
    return root


def _figure(monkeypatch, call) -> Figure:
    """The Figure a plot function saves (its artists are inspected, not its pixels)."""
    saved = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: saved.setdefault("fig", fig) and [])
    call()
    return saved["fig"]


def _series_lines(fig: Figure) -> dict[str, object]:
    """label -> the line holding a series' markers: a ranks line, or a Pareto errorbar's data line."""
    out = {}
    for ax in fig.axes:
        for c in ax.containers:             # errorbar: the label is the container's
            if c.lines[0] is not None:
                out.setdefault(c.get_label(), c.lines[0])
        for line in ax.get_lines():
            if not line.get_label().startswith("_") and line.get_marker() not in (None, "None", ""):
                out.setdefault(line.get_label(), line)
    return out


def _styles_by_label(fig: Figure) -> dict[str, tuple]:
    return {k: (ln.get_color(), ln.get_marker()) for k, ln in _series_lines(fig).items()}


# ---------------------------------------------------------------------------- figures

def test_a_method_has_one_colour_and_marker_in_the_pareto_and_the_ranks_figure(tmp_path, monkeypatch):
    df = collate.load_results(_rows(tmp_path / "r"))
    styles = plots.report_styles(df)
    pareto = _figure(monkeypatch, lambda: plots.pareto_plot(collate.summarize(df), tmp_path / "p", styles=styles))
    ranks = _figure(monkeypatch, lambda: plots.ranks_plot(df, tmp_path / "k", styles=styles))
    a, b = _styles_by_label(pareto), _styles_by_label(ranks)
    common = set(a) & set(b)
    assert len(common) == 4           # every compressing method (dense has no ranks)
    assert all(a[k] == b[k] for k in common)
    assert len({a[k] for k in a}) == len(a)          # and no two methods share one
    # without a mapping passed, each plot derives the same one from the report's labels
    alone = _figure(monkeypatch, lambda: plots.ranks_plot(df, tmp_path / "k2"))
    assert _styles_by_label(alone) == b


def test_ranks_are_named_by_layer_with_an_axis_label(tmp_path, monkeypatch):
    layers = [{"name": "features.0", "shape": [16, 1, 3, 3], "rank": None, "full_rank": None, "skipped": "first"},
              {"name": "features.3", "shape": [32, 16, 3, 3], "rank": 8, "full_rank": 16, "skipped": None},
              {"name": "features.14", "shape": [10, 64], "rank": 4, "full_rank": 10, "skipped": None}]
    write_rows(tmp_path, [make_row(method="svd", params={"scheme": "channel"}, seed=0, layers=layers)])
    fig = _figure(monkeypatch, lambda: plots.ranks_plot(collate.load_results(tmp_path), tmp_path / "k"))
    ax = fig.axes[0]
    # the shared prefix dropped; an index named by its kind
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 conv3x3 1→16", "3 conv3x3 16→32", "14 fc 64→10"]
    assert ax.get_xlabel() == "layer (in model order)"
    assert plots.layer_ticks(["model.backbone.layer1.0.conv1", "model.backbone.layer2.1.conv2"]) == [
        "layer1.0.conv1", "layer2.1.conv2"]


def test_identical_rank_lines_are_drawn_apart_and_keep_their_values(tmp_path, monkeypatch):
    df = collate.load_results(_rows(tmp_path))
    fig = _figure(monkeypatch, lambda: plots.ranks_plot(df, tmp_path / "k"))
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    svd, twist = lines["svd channel (finetune_epochs=2)"], lines["deeptwist channel (finetune_epochs=2)"]
    assert list(svd.get_ydata()) == list(twist.get_ydata())          # the same ranks, as the data says
    sx = svd.get_transform().transform(np.c_[svd.get_xdata(), svd.get_ydata()])
    tx = twist.get_transform().transform(np.c_[twist.get_xdata(), twist.get_ydata()])
    assert np.all(np.abs(sx[:, 0] - tx[:, 0]) > 1) and np.allclose(sx[:, 1], tx[:, 1])   # apart on screen


def test_the_pareto_line_passes_through_its_markers_at_the_tables_values(tmp_path, monkeypatch):
    s = collate.summarize(collate.load_results(_rows(tmp_path)))
    fig = _figure(monkeypatch, lambda: plots.pareto_plot(s, tmp_path / "p"))
    ax = fig.axes[0]     # the MAC panel
    (front,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front (ours)"]
    vertices = set(zip(front.get_xdata(), front.get_ydata()))
    table = set(zip(s["macs_speedup_mean"], s["top1_mean"]))
    assert vertices <= table            # the front's values are the table's, exactly
    drawn = set()
    series = {k: ln for k, ln in _series_lines(fig).items() if ln.axes is ax and not k.startswith("Pareto")}
    for ln in series.values():
        xy = np.c_[ln.get_xdata(), ln.get_ydata()]
        assert set(map(tuple, xy)) <= table           # every plotted value is a table value
        if np.allclose(ln.get_transform().transform(xy), ax.transData.transform(xy)):
            drawn |= set(map(tuple, xy))              # drawn where its value is
    assert vertices <= drawn            # every front vertex has a marker exactly there
    # svd (ft 2) and deeptwist coincide: both stay visible, one of them drawn a marker aside
    pts = {k: series[k].get_transform().transform([[2.0, 89.1]])[0] for k in series
           if k.endswith("(finetune_epochs=2)")}
    (a, b) = pts.values()
    assert abs(a[0] - b[0]) > 5 and a[1] == pytest.approx(b[1])


# ---------------------------------------------------------------------------- output

def test_format_decides_what_is_written(tmp_path, capsys):
    res = _rows(tmp_path / "r")
    assert main_report([str(res), "--out", str(tmp_path / "md")]) == 0
    assert sorted(p.name for p in (tmp_path / "md").iterdir()) == ["table.md"]
    assert main_report([str(res), "--format", "latex,csv", "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert r"\begin{tabular}" in out            # the first one named is printed
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["table.csv", "table.tex"]
    assert main_report([str(res), "--format", "pdf"]) == 2
    assert capsys.readouterr().err.startswith("error: --format: 'pdf'")


def test_the_paper_preset_is_narrow_with_the_best_in_bold_a_caption_and_its_own_notes(tmp_path):
    s = collate.summarize(collate.load_results(_rows(tmp_path)))
    tex = tables.to_latex(s, columns=tables.parse_columns("paper"), bold_best=True)
    check_latex(tex)
    head = tex.split(r"\toprule")[1].split(r"\\")[0]
    assert head.count("&") + 1 <= 6 and "Seeds" not in head and "Scheme" not in head
    assert re.search(r"\\caption\{[^}]*resnet20 on cifar10", tex)
    # best top-1 of the compressed methods: svd (ft 2) and deeptwist tie at 89.10; dense never bold
    bold = re.findall(r"\\textbf\{([^}]*)\}", tex)
    assert sum("89.10" in b for b in bold) == 2 and not any("91.10" in b for b in bold)
    notes = tex.split(r"\bottomrule")[1]
    assert "Seeds column" not in notes and "n = 3 seeds" in notes and "Compression cost" not in notes
    assert "Bold: the best value" in notes
    # the full table still speaks of its Seeds and cost columns
    full = tables.to_markdown(s)
    assert "Seeds column" in full and "Compression cost" in full and "**" not in full


def test_report_paper_without_results_prints_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main_report(["--paper", "trp-cifar10-resnet20"]) == 0
    out = capsys.readouterr().out
    assert "published vs ours" in out and "nothing written" in out
    assert list(tmp_path.iterdir()) == []                  # no results/ created
    assert main_report(["--paper", "trp-cifar10-resnet20", "--out", "o"]) == 0
    assert (tmp_path / "o" / "paper-trp-cifar10-resnet20.md").is_file()


# ---------------------------------------------------------------------------- comparisons

def test_compare_without_a_reference_uses_dense_and_the_best_baseline_at_each_speedup(tmp_path, capsys):
    df = collate.load_results(_rows(tmp_path / "r"))
    t = compare.paired(df, None)
    vs_dense = t[t["ref"] == "dense"]
    assert len(vs_dense) == 4 and (vs_dense["at"] == "").all()
    best = t[t["at"] == "2x"]
    # the best non-TRP method at 2x: svd ft 2 (89.10) ties with deeptwist; the first by name wins
    assert set(best["ref"]) == {"deeptwist[finetune_epochs=2,rule=speedup:2.0,scheme=channel]"}
    trp = best[best["group"].str.startswith("trp")].iloc[0]
    assert trp["diff"] == pytest.approx(88.2 - 89.1) and trp["n"] == 3
    # from the command line: a bare --compare, also given before the results folder
    assert main_report(["--compare", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "paired comparison with the default references" in out and "(best baseline at 2x)" in out
    assert (tmp_path / "o" / "compare.md").is_file()
    assert main_report([str(tmp_path / "r"), "--compare", "svd[finetune_epochs=0,rule=speedup:2.0,scheme=channel]",
                        "--out", str(tmp_path / "o")]) == 0      # an explicit REF still works


def test_the_paper_diff_says_when_the_published_table_gives_no_spread(tmp_path):
    rows = [paper_row("dense", s, top1=91.0 + s) for s in range(3)]
    diff = paper.paper_diff("trp-cifar10-resnet20", write_rows(tmp_path, rows))
    _, _, notes = paper.diff_cells(diff)
    assert any(n.startswith("Δ has no interval: the published table gives no standard deviation") for n in notes)
    lo, hi = paper.welch_interval(91.0, 1.0, 3, 91.74, 0.2, 5)
    assert lo < 91.0 - 91.74 < hi and not math.isnan(lo)


def test_a_published_spread_gives_the_difference_an_interval(tmp_path, monkeypatch):
    import yaml

    pub = tmp_path / "published"
    pub.mkdir()
    table = yaml.safe_load((paper.PUBLISHED_DIR / "trp-cifar10-resnet20.yaml").read_text())
    table["rows"][0].update(top1_std=0.2, top1_n=5)
    (pub / "trp-cifar10-resnet20.yaml").write_text(yaml.safe_dump(table))
    monkeypatch.setattr(paper, "PUBLISHED_DIR", pub)
    diff = paper.paper_diff("trp-cifar10-resnet20", write_rows(tmp_path / "r", [paper_row("dense", s, top1=91.0 + s)
                                                                                for s in range(3)]))
    base = diff[diff["label"] == "baseline"].iloc[0]
    assert base["diff_top1_lo"] < base["diff_top1"] < base["diff_top1_hi"]
    header, rows, notes = paper.diff_cells(diff)
    cell = rows[0][header.index("Δ Top-1")]
    assert re.fullmatch(r"\+0\.26 \[-\d+\.\d\d, \+\d+\.\d\d\]", cell) and any("Welch" in n for n in notes)
    assert isinstance(pd.DataFrame(diff), pd.DataFrame)
