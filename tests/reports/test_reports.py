"""reports/: CI math, tables in three formats, failed trials, paper diff, plots, CLI.

Result rows are fabricated as JSON files in the CONTRACTS.md schema, so these tests need no
training and run in a few seconds.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from rankbench.reports import collate, format as fmt, tables
from rows import make_row, paper_row, write_rows


# ---------------------------------------------------------------------------- CI math

def test_ci95_matches_hand_computed_case():
    # values 90.1, 90.5, 90.9: mean 90.5, sample std 0.4, t_{0.975,2} = 4.302653
    # half-width = 4.302653 * 0.4 / sqrt(3) = 0.993655
    assert collate.ci95_halfwidth([90.1, 90.5, 90.9]) == pytest.approx(0.993655, abs=1e-5)
    assert math.isnan(collate.ci95_halfwidth([90.1]))  # one seed: no spread to report
    assert math.isnan(collate.ci95_halfwidth([]))


def test_t_table_fallback_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30, 35, 50, 100, 500):
        assert collate._t975_table(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-3)
        assert collate.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-3)
    for df in (1, 2, 10, 30):  # the tabulated values are exact
        assert collate._t975_table(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-8)


def test_summary_groups_seeds_and_keeps_failures(tmp_path):
    rows = [make_row(seed=s, top1=v) for s, v in enumerate([90.1, 90.5, 90.9])]
    trp = {"scheme": "channel", "nuclear": 3e-4, "export": "value:0.05"}
    rows += [make_row(method="trp", params=trp, seed=s, top1=89.0 + s, macs=18_700_000) for s in (0, 1)]
    rows.append(make_row(method="trp", params=trp, seed=2, status="failed",
                         error="Traceback ...\nRuntimeError: CUDA out of memory"))
    write_rows(tmp_path, rows)
    df = collate.load_results(tmp_path / "quick")
    assert len(df) == 6 and (df["status"] == "failed").sum() == 1
    assert df["params.scheme"].dropna().eq("channel").all()
    assert set(df["n_factorized"]) == {1.0} and set(df["n_skipped"]) == {1.0}

    s = collate.summarize(df)
    dense = s[s["method"] == "dense"].iloc[0]
    assert dense["n"] == 3 and dense["top1_mean"] == pytest.approx(90.5)
    assert dense["top1_std"] == pytest.approx(0.4)
    assert dense["top1_ci95"] == pytest.approx(0.993655, abs=1e-5)
    t = s[s["method"] == "trp"].iloc[0]
    assert t["n"] == 2 and t["n_failed"] == 1 and t["seeds"] == [0, 1]
    assert t["macs_speedup_mean"] == pytest.approx(40.6 / 18.7)

    failed = collate.failed_trials(df)
    assert len(failed) == 1 and "out of memory" in failed.iloc[0]["error"]
    listing = tables.failed_list(df)
    assert "1 failed trial" in listing and "CUDA out of memory" in listing and "seed 2" in listing


def test_unreadable_row_is_listed_as_failed_not_dropped(tmp_path):
    write_rows(tmp_path, [make_row()])
    (tmp_path / "quick" / "trials" / "broken.json").write_text("{not json")
    (tmp_path / "quick" / "trials" / ".half.json.tmp").write_text("{")  # an atomic write in flight
    df = collate.load_results([tmp_path, tmp_path / "quick"])  # same sweep reached twice
    assert len(df) == 2
    bad = collate.failed_trials(df)
    assert list(bad["trial_id"]) == ["broken"] and "unreadable" in bad.iloc[0]["error"]


# ---------------------------------------------------------------------------- tables

def test_number_formats_follow_paper_conventions():
    assert fmt.fmt_pm(90.5, 0.2093) == "90.50 ± 0.21"
    assert fmt.fmt_pm(90.5, float("nan")) == "90.50"
    assert fmt.fmt_pm(None, 0.2) == fmt.DASH
    assert fmt.fmt_x(2.1712) == "2.17x"
    assert fmt.fmt_x(2.1712, 0.0449) == "2.17x ± 0.04" and fmt.fmt_x(2.1712, 0.001) == "2.17x"
    assert fmt.fmt_si(40_560_000) == "40.6M"
    assert fmt.fmt_si(4_089_184_256) == "4.09G"
    assert fmt.fmt_si(272_474) == "272K"
    assert fmt.fmt_si(999_700) == "1.00M"
    assert fmt.fmt_si(999_700_000) == "1.00G" and fmt.fmt_si(950) == "950"
    assert fmt.fmt_duration(5400) == "1.5 h" and fmt.fmt_duration(42) == "42 s"
    assert fmt.fmt_duration(186) == "3.1 min" and fmt.fmt_duration(float("nan")) == fmt.DASH
    assert fmt.is_missing(None) and fmt.is_missing(float("nan")) and not fmt.is_missing(0.0)


def test_cells_escape_what_would_break_a_table():
    assert fmt.markdown_cell("a|b") == "a\\|b"
    assert fmt.latex_escape("my_method & 50%") == r"my\_method \& 50\%"
    assert fmt.latex_cell("2.17x ± 0.04") == r"2.17$\times$ $\pm$ 0.04"
    assert fmt.latex_cell("x2 box 4xb") == "x2 box 4xb"      # only a number then a lone x is a factor


def test_rows_come_dense_first_then_by_method_scheme_and_speedup():
    rows = pd.DataFrame([
        {"dataset": "cifar10", "model": "resnet20", "method": "trp", "scheme": "spatial", "macs_speedup_mean": 2.0},
        {"dataset": "cifar10", "model": "resnet20", "method": "trp", "scheme": "channel", "macs_speedup_mean": 3.0},
        {"dataset": "cifar10", "model": "resnet20", "method": "trp", "scheme": "channel", "macs_speedup_mean": 1.5},
        {"dataset": "cifar10", "model": "resnet20", "method": "dense", "scheme": None, "macs_speedup_mean": 1.0},
        {"dataset": "cifar10", "model": "resnet20", "method": "arsvd", "scheme": "channel", "macs_speedup_mean": 2.5},
    ])
    s = fmt.sort_rows(rows)
    assert list(zip(s["method"], s["scheme"].fillna(""), s["macs_speedup_mean"])) == [
        ("dense", "", 1.0), ("arsvd", "channel", 2.5), ("trp", "channel", 1.5),
        ("trp", "channel", 3.0), ("trp", "spatial", 2.0)]
    assert list(rows.columns) == list(s.columns)              # the sort keys do not leak out


def _summary(tmp_path: Path) -> pd.DataFrame:
    rows = [make_row(seed=s, top1=v, top5=99.0) for s, v in enumerate([90.1, 90.5, 90.9])]
    for scheme, macs in (("channel", 18_700_000), ("spatial", 14_300_000)):
        p = {"scheme": scheme, "nuclear": 3e-4, "energy": 0.9, "export": "value:0.05"}
        rows += [make_row(method="trp", params=p, seed=s, top1=90.0 + s / 10, top5=98.5,
                          macs=macs, latency_ms=1.5) for s in range(3)]
    rows += [make_row(method="svd", params={"scheme": "channel", "rule": "speedup:2.17",
                                             "finetune_epochs": ft}, top1=85.0 + ft / 10,
                      macs=18_700_000) for ft in (0, 20)]
    write_rows(tmp_path, rows)
    return collate.summarize(collate.load_results(tmp_path))


def test_markdown_table_has_the_columns_a_reader_needs(tmp_path):
    md = tables.to_markdown(_summary(tmp_path))
    header = md.splitlines()[0]
    for col in ("Method", "Scheme", "Rank rule", "Top-1 (%)", "Top-5 (%)", "MACs", "MAC speed-up",
                "Measured speed-up (cpu, float32, batch 1)", "Params", "Wall time (CPU)", "Seeds"):
        assert col in header
    assert "90.50 ± 0.99" in md and "2.17x" in md and "40.6M" in md
    # svd rows differ only in finetune_epochs: the label must tell them apart
    assert "svd (finetune_epochs=0)" in md and "svd (finetune_epochs=20)" in md
    # trp's constant params go into a note instead of every label
    assert "trp: energy=0.9, nuclear=0.0003" in md
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert len({l.count("|") - l.count("\\|") for l in lines}) == 1  # same column count per line
    assert lines[2].split("|")[1].strip() == "dense"  # dense baseline first


def check_latex(tex: str) -> None:
    """Balanced environments and braces; every tabular row has as many cells as its spec."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} without matching \\begin"
    assert not stack, f"unclosed environments: {stack}"
    depth = 0
    for i, ch in enumerate(tex):
        if ch in "{}" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            assert depth >= 0, "closing brace without an opening one"
    assert depth == 0, "unbalanced braces"
    spec = re.search(r"\\begin\{tabular\}\{([lrc|]+)\}", tex).group(1).replace("|", "")
    body = tex.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
    rows = [r for r in body.replace(r"\midrule", "").split("\\\\") if r.strip()]
    assert rows
    for r in rows:
        cells = len(re.findall(r"(?<!\\)&", r)) + 1
        assert cells == len(spec), f"{cells} cells for a {len(spec)}-column tabular: {r!r}"
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex


def test_latex_is_balanced_and_escaped(tmp_path):
    s = _summary(tmp_path)
    s.loc[0, "method"] = "my_method & 50%"  # must be escaped, not break the table
    tex = tables.to_latex(s)
    check_latex(tex)
    assert r"my\_method \& 50\%" in tex
    assert r"$\pm$" in tex and r"2.17$\times$" in tex and "±" not in tex


def test_check_latex_catches_a_broken_table():
    with pytest.raises(AssertionError):
        check_latex("\\begin{table}\\begin{tabular}{ll}\\toprule a & b & c \\\\ \\bottomrule\\end{tabular}\\end{table}")
    with pytest.raises(AssertionError):
        check_latex("\\begin{table}\\begin{tabular}{ll}\\toprule a & b \\\\ \\bottomrule\\end{table}")


def test_csv_keeps_raw_numbers(tmp_path):
    import io
    out = pd.read_csv(io.StringIO(tables.to_csv(_summary(tmp_path))))
    dense = out[out["method"] == "dense"].iloc[0]
    assert dense["top1_mean"] == pytest.approx(90.5) and dense["n"] == 3
    assert dense["top1_ci95"] == pytest.approx(0.993655, abs=1e-5)
    assert len(out) == 5


def test_latency_layouts_reach_the_csv_and_a_note_says_each_model_ran_on_its_fastest(tmp_path):
    import io
    note = "each on its fastest; results.csv names the winners"
    assert note not in tables.to_markdown(_summary(tmp_path / "old"))   # rows from before layouts
    rows = [make_row(seed=s, latency_layout="contiguous+jit", dense_latency_layout="contiguous+jit")
            for s in range(2)]
    rows += [make_row(method="trp", params={"scheme": "channel"}, seed=s, latency_ms=1.5,
                      latency_layout=lay, dense_latency_layout="contiguous+jit")
             for s, lay in enumerate(["contiguous+folded", "contiguous+jit"])]
    summary = collate.summarize(collate.load_results(write_rows(tmp_path / "new", rows)))
    assert note in tables.to_markdown(summary)
    out = pd.read_csv(io.StringIO(tables.to_csv(summary))).set_index("method")
    # seeds that won on different (near-equal) layouts are both named
    assert out.loc["trp", "latency_layout"] == "contiguous+folded/contiguous+jit"
    assert out.loc["dense", "dense_latency_layout"] == "contiguous+jit"


def test_write_tables_and_quick_table(tmp_path):
    s = _summary(tmp_path)
    written = tables.write_tables(s, tmp_path / "out")
    assert {p.name for p in written.values()} == {"table.md", "table.tex", "table.csv"}
    assert written["md"].read_text() == tables.to_markdown(s)
    assert written["csv"].read_text() == tables.to_csv(s)
    check_latex(written["latex"].read_text())
    assert not list((tmp_path / "out").glob(".*.tmp"))         # no temp file left behind
    write_rows(tmp_path, [make_row(method="trp", params={"scheme": "spatial"}, status="failed",
                                   error="ValueError: rank: 0 is impossible")])
    q = tables.quick_table(tmp_path / "quick")
    assert "| dense" in q and "rank: 0 is impossible" in q
    assert "no result rows" in tables.quick_table(tmp_path / "out")


def test_quick_table_of_a_spec_leaves_out_rows_of_trials_no_longer_in_it(tmp_path):
    kept = make_row(sweep="q", method="dense", top1=90.0)
    gone = make_row(sweep="q", method="svd", params={"scheme": "channel"}, top1=50.0)
    write_rows(tmp_path, [kept, gone])
    assert "| svd" in tables.quick_table(tmp_path / "q")               # a folder's report: every row
    q = tables.quick_table(tmp_path / "q", [kept["trial_id"]])          # `rankbench run`: its spec's
    assert "| dense" in q and "| svd" not in q and "50.00" not in q


def test_cost_column_says_gpu_hours_when_a_gpu_was_used(tmp_path):
    write_rows(tmp_path, [make_row(seed=s, gpu_hours=0.5) for s in range(2)])
    md = tables.to_markdown(collate.summarize(collate.load_results(tmp_path)))
    assert "GPU-hours" in md.splitlines()[0] and "0.50" in md


# ---------------------------------------------------------------------------- paper diff

PAPERS = ("trp-cifar10-resnet20", "trp-cifar10-resnet32", "trp-cifar10-resnet56",
          "trp-imagenet-resnet18", "trp-imagenet-resnet50")


def test_published_tables_load_with_sources_and_derived_marks():
    from rankbench.reports import paper
    assert set(PAPERS) <= set(paper.available_papers())
    for name in PAPERS:
        t = paper.load_published(name)
        assert (Path(paper.__file__).parents[1] / t["spec"]).name == f"{name}.yaml"
        assert all(r["source"] in t["sources"] for r in t["rows"])
    r50 = {r["label"]: r for r in paper.load_published("trp-imagenet-resnet50")["rows"]}
    assert r50["TRP+Nu channel (2.23x)"]["top1"] == 72.69 and r50["baseline"]["top5"] == 92.80
    assert "published_only" in r50["Filter pruning (ThiNet, ICCV 2017)"]
    r18 = {r["label"]: r for r in paper.load_published("trp-imagenet-resnet18")["rows"]}
    assert set(r18["TRP+Nu spatial"]["derived"]) == {"speedup", "top1", "top5"}
    # derived speed-ups agree with the quoted FLOPs reductions
    assert 1 / (1 - 0.6855) == pytest.approx(r18["TRP+Nu spatial"]["speedup"], abs=0.005)
    with pytest.raises(ValueError, match=r"^paper: 'trp-cifar10-resnet21': unknown .*; accepted: trp-cifar10-resnet20, "):
        paper.load_published("trp-cifar10-resnet21")


def test_same_value_treats_spec_spellings_alike():
    from rankbench.reports.paper import same_value
    assert same_value(3e-4, 0.0003) and same_value("1e-4", 1e-4)
    assert same_value("speedup:2", "speedup:2.0") and not same_value("speedup:2", "energy:2")
    assert not same_value(0.0, 3e-4) and not same_value("channel", "spatial")


def _paper_rows(tmp_path: Path) -> Path:
    rows = [paper_row(seed=s, top1=v) for s, v in enumerate([91.5, 91.9, 91.7])]
    p = {"scheme": "channel", "nuclear": 3e-4}
    # conv-only counts (the paper's basis) beside the whole-model ones
    conv = {"dense_conv_macs": 40_812_544, "conv_macs": 18_800_000, "conv_macs_speedup": 40_812_544 / 18_800_000}
    rows += [paper_row("trp", params=p, seed=s, top1=v, macs=m, params_count=100_000, **conv)
             for s, v, m in ((0, 90.0, 20_000_000), (1, 90.2, 20_000_000), (2, 90.4, 20_000_000))]
    rows.append(paper_row("trp", params={**p, "scheme": "spatial"}, status="failed",
                          error="RuntimeError: boom"))
    rows.append(paper_row("svd", params={"scheme": "channel", "rule": "speedup:2.17",
                                         "finetune_epochs": 0}, top1=80.0, macs=18_700_000))
    rows.append(make_row(model="resnet32", top1=92.0))  # another table's model: not in this diff
    return write_rows(tmp_path, rows)


def test_paper_diff_matches_rows_and_says_what_is_missing(tmp_path):
    from rankbench.reports import paper
    d = paper.paper_diff("trp-cifar10-resnet20", [_paper_rows(tmp_path)]).set_index("label")
    assert d.loc["baseline", "status"] == "ok"
    assert d.loc["baseline", "diff_top1"] == pytest.approx(91.7 - 91.74)
    ch = d.loc["TRP+Nu channel"]
    assert ch["n"] == 3 and ch["ours_top1"] == pytest.approx(90.2)
    assert ch["diff_top1"] == pytest.approx(90.2 - 90.50)
    assert ch["ours_top1_ci95"] == pytest.approx(collate.ci95_halfwidth([90.0, 90.2, 90.4]))
    # speed-ups compare on the paper's basis, conv layers only
    assert ch["ours_speedup_basis"] == "conv"
    assert ch["diff_speedup"] == pytest.approx(40_812_544 / 18_800_000 - 2.17)
    assert ch["ours_params_m"] == pytest.approx(0.1)
    assert d.loc["TRP+Nu spatial", "status"] == "failed (1 trial)"
    nd = d.loc["TRP+Nu network decoupling"]
    assert nd["status"] == "not run"
    assert nd["command"] == "rankbench run bench/configs/trp-cifar10-resnet20.yaml"
    assert d.loc["SVD training (Yang et al. CVPRW 2020)", "status"] == "published only"
    ours_only = d[d["status"] == "ours only"]
    assert len(ours_only) == 1 and ours_only.iloc[0]["method"] == "svd"
    assert "resnet32" not in " ".join(d.index)

    md = paper.format_paper_diff(paper.paper_diff("trp-cifar10-resnet20", [tmp_path]))
    assert "| TRP+Nu channel | ok | 90.20 ± 0.50 | 90.50 | -0.30 |" in md
    assert "not run: `rankbench run bench/configs/trp-cifar10-resnet20.yaml`" in md
    assert "2.20x*" in md and "derived, not printed by the source (speedup: 1 / (1 - 0.545)" in md
    check_latex(paper.format_paper_diff(paper.paper_diff("trp-cifar10-resnet20", [tmp_path]), "latex"))


def test_paper_diff_without_results_lists_every_row_as_not_run():
    from rankbench.reports import paper
    d = paper.paper_diff("trp-imagenet-resnet50")
    assert list(d["status"]) == ["not run"] * 3 + ["published only"] * 3
    assert set(d.loc[d["status"] == "not run", "command"]) == {
        "rankbench run bench/configs/trp-imagenet-resnet50.yaml"}


# ---------------------------------------------------------------------------- plots and CLI

def test_pareto_front_keeps_only_undominated_points():
    from rankbench.reports.plots import pareto_front
    pts = [(1.0, 91.7), (2.0, 90.0), (2.1, 90.5), (3.0, 85.0), (2.5, 84.0), (1.5, float("nan"))]
    assert pareto_front(pts) == [(1.0, 91.7), (2.1, 90.5), (3.0, 85.0)]


def test_pareto_plot_writes_png_and_svg(tmp_path):
    from rankbench.reports import paper, plots
    s = collate.summarize(collate.load_results(_paper_rows(tmp_path)))
    paths = plots.pareto_plot(s, tmp_path / "plots" / "pareto.png",
                              paper.published_points("trp-cifar10-resnet20"), title="test")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000
    svg = paths[1].read_text()
    # one legend entry per series and per published point (hollow markers)
    assert "published: TRP+Nu spatial" in svg and "trp channel" in svg and "Pareto front" in svg
    assert "Top-1 accuracy (%)" in svg and "MAC speed-up" in svg


def test_cli_report_writes_all_formats_plot_and_paper(tmp_path, capsys):
    from rankbench.reports.cli import main_report
    res = _paper_rows(tmp_path / "results")
    rc = main_report([str(res), "--paper", "trp-cifar10-resnet20", "--format", "latex",
                      "--plot", str(tmp_path / "pareto.png"), "--out", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    assert r"\begin{tabular}" in out and "failed trial" in out and "RuntimeError: boom" in out
    # --format decides what is written: LaTeX only
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["paper-trp-cifar10-resnet20.tex", "table.tex"]
    check_latex((tmp_path / "out" / "table.tex").read_text())
    assert main_report([str(res), "--paper", "trp-cifar10-resnet20", "--format", "all", "--out", str(tmp_path / "all")]) == 0
    for f in ("table.md", "table.tex", "table.csv", "paper-trp-cifar10-resnet20.md", "paper-trp-cifar10-resnet20.csv"):
        assert (tmp_path / "all" / f).stat().st_size > 0
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "pareto.svg").stat().st_size > 0

    # default output folder is the results folder itself
    assert main_report([str(res / "quick")]) == 0
    assert (res / "quick" / "table.md").is_file()
    assert main_report([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
