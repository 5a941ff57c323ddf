"""Output a researcher pastes into a paper: display names from the spec, LaTeX with its own label
and notes apart from the caption, selectable columns, readable plots (dodged points, clipped
error bars marked) and the per-layer rank plot. Rows are fabricated, so no training runs."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from rows import make_row, write_rows
from test_reports import check_latex

from rankbench.reports import collate, plots, tables
from rankbench.reports.cli import main_report


def _rows(tmp_path: Path, seeds: int = 2) -> Path:
    rows = [make_row(seed=s, top1=91.0 + s / 10, layers=[]) for s in range(seeds)]   # dense reports no layers
    for i, scheme in enumerate(("channel", "spatial")):
        p = {"scheme": scheme, "nuclear": 3e-4, "export": "speedup:2.0"}
        rows += [make_row(method="trp", params=p, seed=s, top1=90.0 + s / 10 + i, macs=20_300_000,
                          label="TRP+Nu") for s in range(seeds)]
    for ft in (0, 2):
        p = {"scheme": "channel", "rule": "speedup:2.0", "finetune_epochs": ft}
        rows += [make_row(method="svd", params=p, seed=s, top1=80.0 + ft + s, macs=20_300_000,
                          label="SVD+FT" if ft else "SVD") for s in range(seeds)]
    write_rows(tmp_path, rows)
    return tmp_path


def _summary(tmp_path: Path, seeds: int = 2) -> pd.DataFrame:
    return collate.summarize(collate.load_results(_rows(tmp_path, seeds)))


def _method_cells(md: str) -> list[str]:
    return [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:]


# ---------------------------------------------------------------------------- display names

def test_a_spec_label_names_the_method_everywhere_and_leaves_the_trial_id_alone():
    from rankbench.bench.results.row import empty_row, problems
    from rankbench.bench.spec.parse import parse_spec
    from rankbench.bench.trial import Trial

    base = ("sweep: s\nseeds: [0]\ndata: {name: digits}\nmodel: cnn\nmethods:\n"
            "  - {name: trp, scheme: channel, export: 'speedup:2.0'%s}\n")
    plain = parse_spec(base % "", check=False).trials
    named = parse_spec(base % ", label: 'TRP+Nu'", check=False).trials
    assert [t.id for t in plain] == [t.id for t in named]          # a label never changes an id
    t = named[0]
    assert t.display_label == "TRP+Nu" and plain[0].display_label == ""
    assert Trial.from_dict(t.to_dict()).display_label == "TRP+Nu"   # it crosses to a Ray worker
    assert t.to_dict()["label"] == "TRP+Nu" and "label" not in plain[0].to_dict()
    row = {**empty_row(t, env={}), "status": "ok"}
    assert row["label"] == "TRP+Nu" and row["spec"]["label"] == "TRP+Nu" and problems(row) == []
    assert empty_row(plain[0], env={})["label"] is None
    with pytest.raises(ValueError, match=r"^methods\[0\]\(trp\)\.label: ''; accepted: a non-empty display name"):
        parse_spec(base % ", label: ''", check=False)


def test_tables_use_the_display_names_and_name_variants_within_one_label(tmp_path):
    md = tables.to_markdown(_summary(tmp_path))
    assert _method_cells(md) == ["dense", "SVD", "SVD+FT", "TRP+Nu", "TRP+Nu"]
    # each label holds one finetune_epochs: nothing to add to its name; TRP's constant params go to a note
    assert "- TRP+Nu: nuclear=0.0003" in md and "trp:" not in md
    tex = tables.to_latex(_summary(tmp_path / "b"))
    assert "TRP+Nu" in tex and "SVD+FT" in tex


def test_rows_without_a_label_keep_the_method_name(tmp_path):
    write_rows(tmp_path, [make_row(method="trp", params={"scheme": "channel"}, seed=s, macs=20_300_000)
                          for s in (0, 1)])
    md = tables.to_markdown(collate.summarize(collate.load_results(tmp_path)))
    assert _method_cells(md) == ["trp"]


# ---------------------------------------------------------------------------- LaTeX

def test_latex_has_booktabs_a_one_sentence_caption_notes_below_and_a_unique_label(tmp_path):
    s = _summary(tmp_path)
    tex = tables.to_latex(s)
    check_latex(tex)
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
    # one sentence naming the model and the data; the notes are not in the caption
    assert caption == "Accuracy versus speed-up of low-rank compression: resnet20 on cifar10."
    after = tex.split(r"\bottomrule", 1)[1]
    assert r"\footnotesize" in after and "95\\% CI" in after and "MACs per image" in after
    label = re.search(r"\\label\{([^}]*)\}", tex).group(1)
    assert label.startswith("tab:rankbench-cifar10-resnet20-")
    # another table (other rows or other columns) gets another label; the same table the same one
    other = tables.to_latex(s[s["method"] != "svd"])
    assert re.search(r"\\label\{([^}]*)\}", other).group(1) != label
    assert re.search(r"\\label\{([^}]*)\}", tables.to_latex(s, columns=tables.COLUMN_SETS["paper"])).group(1) != label
    assert re.search(r"\\label\{([^}]*)\}", tables.to_latex(s)).group(1) == label
    assert tables.to_latex(s, label="tab:mine").count(r"\label{tab:mine}") == 1


# ---------------------------------------------------------------------------- columns

def test_the_full_table_has_13_columns_and_sets_or_keys_select_them(tmp_path):
    rows = [make_row(seed=s, model=m, top5=99.0) for s in (0, 1) for m in ("resnet20", "resnet32")]
    write_rows(tmp_path, rows)
    s = collate.summarize(collate.load_results(tmp_path))
    header, _, _ = tables.table_cells(s)
    # no row reused a trained baseline here, so no second cost column
    assert len(header) == 13 and [tables.column_key(h) for h in header] == [
        k for k in tables.COLUMN_KEYS if k != "cost_total"]
    md = tables.to_markdown(s, columns=tables.parse_columns("paper"))
    assert md.splitlines()[0].split("|")[1:-1] and [c.strip() for c in md.splitlines()[0].split("|")[1:-1]] == [
        "Dataset", "Model", "Method", "Top-1 (%)", "Top-5 (%)", "MAC speed-up",
        "Measured speed-up (cpu, float32, batch 1)", "Params"]
    # without the Scheme column, TRP's two schemes would be two rows of one name: the name says it
    trp = tables.to_markdown(_summary(tmp_path / "trp"), columns=tables.parse_columns("compact"))
    assert _method_cells(trp) == ["dense", "SVD", "SVD+FT", "TRP+Nu (channel)", "TRP+Nu (spatial)"]
    keys = tables.parse_columns("method,macs_speedup,top1")
    md = tables.to_markdown(s, columns=keys)
    assert [c.strip() for c in md.splitlines()[0].split("|")[1:-1]] == ["Method", "MAC speed-up", "Top-1 (%)"]
    check_latex(tables.to_latex(s, columns=keys))
    with pytest.raises(ValueError, match=r"^--columns: 'top-1': unknown \(did you mean 'top1'\?\); accepted: all, paper, compact, dataset, "):
        tables.parse_columns("method,top-1")


def test_cli_columns_and_a_bad_column_in_one_line(tmp_path, capsys):
    _rows(tmp_path / "res")
    assert main_report([str(tmp_path / "res"), "--columns", "compact", "--format", "md,latex",
                        "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split("|")[1].strip() == "Method" and "Scheme" not in out.splitlines()[0]
    assert "Scheme" not in (tmp_path / "o" / "table.tex").read_text().split(r"\toprule")[1].split(r"\\")[0]
    assert main_report([str(tmp_path / "res"), "--columns", "acc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --columns: 'acc'") and "accepted: all, paper, compact, dataset" in err
    assert "\n" not in err


# ---------------------------------------------------------------------------- one thread

def test_one_thread_is_singular_in_the_latency_setting(tmp_path, monkeypatch):
    import torch

    from rankbench.bench.measure.metrics import device_name

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_name("cpu").endswith(", 1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert device_name("cpu").endswith(", 4 threads)")
    # rows written before the fix read right too
    write_rows(tmp_path, [make_row(seed=s, latency_device="cpu (Xeon, 1 threads)") for s in (0, 1)])
    md = tables.to_markdown(collate.summarize(collate.load_results(tmp_path)))
    assert "1 thread)" in md and "1 threads" not in md


# ---------------------------------------------------------------------------- plots

def test_series_that_meet_at_one_speedup_get_slots_and_the_front_stays_in_place():
    xs = [1.0, 2.0, 2.0, 2.001, 2.0, 3.0]
    ys = [91.0, 90.0, 85.0, 84.0, 90.0, 86.0]
    series = ["dense", "a", "b", "c", "d", "a"]
    slots = plots.series_slots(xs, ys, series, 0.1)
    # dense and a hold the front (a's (2.0, 90.0) before d's identical point): in place
    assert slots["dense"] == 0 and slots["a"] == 0
    assert (slots["b"], slots["c"], slots["d"]) == (1, -1, 2)   # the others: +1, -1, +2 marker widths
    assert len({slots[s] for s in "abcd"}) == 4          # four series at 2.00x: four places


def test_pareto_plot_uses_labels_dodges_and_marks_clipped_error_bars(tmp_path):
    # two seeds far apart near 100%: the t factor (12.7) sends the CI bar past the axis
    rows = [make_row(seed=s, top1=v) for s, v in enumerate((99.0, 96.0))]
    for name, label in (("trp", "TRP+Nu"), ("svd", "SVD"), ("deeptwist", "DeepTwist"), ("lrd", None)):
        rows += [make_row(method=name, params={"scheme": "channel"}, seed=s, top1=90.0 + s, macs=20_300_000,
                          **({"label": label} if label else {})) for s in (0, 1)]
    write_rows(tmp_path, rows)
    s = collate.summarize(collate.load_results(tmp_path))
    png, svg = plots.pareto_plot(s, tmp_path / "pareto")
    text = svg.read_text()
    assert png.stat().st_size > 0
    for name in ("TRP+Nu channel", "SVD channel", "DeepTwist channel", "lrd channel"):
        assert name in text
    assert "drawn about a marker's width apart" in text and "A triangle at an error bar" in text


def test_rank_plot_draws_each_variants_kept_fraction_per_layer(tmp_path, capsys):
    _rows(tmp_path / "res")
    df = collate.load_results(tmp_path / "res")
    series = plots.rank_series(df)
    lines = series[("cifar10", "resnet20")]
    # one TRP+Nu label holds two variants: its lines name what differs; dense rows have no layers
    assert set(lines) == {"SVD channel (finetune_epochs=0)", "SVD+FT channel (finetune_epochs=2)",
                          "TRP+Nu channel (nuclear=0.0003)", "TRP+Nu spatial (nuclear=0.0003)"}
    svd = lines["SVD channel (finetune_epochs=0)"]
    assert svd["layer1.0.conv1"] == (0.5, False)        # rank 8 of 16
    assert svd["conv1"] == (1.0, True)                  # skipped: kept dense
    assert plots.kept_fraction({"rank": [2, 4], "full_rank": [4, 8], "skipped": None}) == (0.5, False)
    rc = main_report([str(tmp_path / "res"), "--ranks", str(tmp_path / "ranks"), "--out", str(tmp_path / "o")])
    assert rc == 0 and "ranks plot written" in capsys.readouterr().out
    svg = (tmp_path / "ranks.svg").read_text()
    assert (tmp_path / "ranks.png").stat().st_size > 0
    assert "layer1.0.conv1" in svg and "SVD+FT" in svg and "kept rank / full rank" in svg


def test_rank_plot_of_dense_rows_only_is_refused_in_one_line(tmp_path, capsys):
    write_rows(tmp_path, [make_row(seed=0, layers=[])])
    assert main_report([str(tmp_path), "--ranks", str(tmp_path / "r")]) == 2
    assert "no successful trial reports per-layer ranks" in capsys.readouterr().err


def test_a_label_changed_after_the_run_reaches_the_finished_rows_without_a_rerun(tmp_path):
    from rankbench.bench.results.row import empty_row
    from rankbench.bench.spec.parse import parse_spec
    from rankbench.bench.results.store import Store
    from rankbench.bench.running.sweep import relabel

    base = ("sweep: s\nseeds: [0]\ndata: {name: digits}\nmodel: cnn\nmethods:\n"
            "  - {name: trp, scheme: channel, export: 'speedup:2.0'%s}\n")
    (old,) = parse_spec(base % "", check=False).trials
    (new,) = parse_spec(base % ", label: 'TRP+Nu'", check=False).trials
    store = Store(tmp_path, "s")
    store.write_result({**empty_row(old, env={}), "status": "ok"})
    assert relabel(store, [new]) == 1 and relabel(store, [new]) == 0    # once; then nothing to do
    row = store.read_result(new.id)
    assert row["label"] == "TRP+Nu" and row["spec"]["label"] == "TRP+Nu" and row["status"] == "ok"
    assert relabel(store, [old]) == 1 and store.read_result(old.id)["label"] is None
    assert "label" not in store.read_result(old.id)["spec"]
