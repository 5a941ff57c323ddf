"""A paper row is diffed only against trials that ran the paper spec's recipe.

The end-to-end test trains the ResNet-20 paper spec (its dense baseline and TRP+Nu channel) on a
fake CIFAR-10 written in the real python-pickle layout, with the epochs cut to one, and checks
that the paper diff says "recipe differs: epochs 1 vs 164" and shows no delta. The other tests
use fabricated rows.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from rankbench.reports import paper, recipe
from rankbench.reports.cli import main_report
from test_reports import check_latex

PAPER = "trp-cifar10-resnet20"


def write_fake_cifar10(root: Path, per_batch: int = 16, n_test: int = 20, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` as the official archive unpacks: protocol-2 pickles with bytes
    keys, uint8 N x 3072 images (channel-major), list labels, and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(),
                                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]})
    dump("test_batch", {b"batch_label": b"testing batch 1 of 1",
                        b"labels": [int(v) for v in rng.integers(0, 10, n_test)],
                        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                        b"filenames": [f"t_{j}.png".encode() for j in range(n_test)]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump("batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return folder


def cut_paper_spec(data_root: Path) -> str:
    """The ResNet-20 paper spec with its epochs cut to 1, one seed, its dense baseline and TRP+Nu
    channel only, and latency timed on the CPU in one fixed layout: a run of a few seconds."""
    spec = yaml.safe_load((recipe.repo_root() / "bench" / "configs" / f"{PAPER}.yaml").read_text())
    spec["sweep"] = "cut"
    spec["seeds"] = [0]
    spec["data"]["root"] = str(data_root)
    spec["train"]["epochs"] = 1
    spec["resources"] = {"cpus": 1, "gpus": 0}
    spec["measure"] = {"latency_device": "cpu", "latency_batch": 2, "latency_repeats": 2,
                       "latency_layout": "contiguous"}
    methods = []
    for m in spec["methods"]:
        schemes = m.get("scheme") if isinstance(m.get("scheme"), list) else [m.get("scheme")]
        if m["name"] == "dense" or (m["name"] == "trp" and "channel" in schemes):
            methods.append({**m, "scheme": "channel"} if m["name"] == "trp" else m)
    spec["methods"] = methods
    return yaml.safe_dump(spec, sort_keys=False)


def test_cut_paper_spec_on_fake_cifar_marks_the_recipe_mismatch_not_a_delta(tmp_path, capsys):
    from rankbench.bench.running.run import run_trial
    from rankbench.bench.spec.parse import parse_spec

    root = write_fake_cifar10(tmp_path / "data")
    sweep = parse_spec(cut_paper_spec(root))
    assert {t.method for t in sweep.trials} == {"dense", "trp"}
    for t in sweep.trials:                      # the dense baseline first
        row = run_trial(t, tmp_path / "results")
        assert row["status"] == "ok", row["error"]

    d = paper.paper_diff(PAPER, [tmp_path / "results"]).set_index("label")
    for label in ("baseline", "TRP+Nu channel"):
        status = d.loc[label, "status"]
        # the training recipe differs (epochs); where and how latency was timed does not count
        assert status.startswith("recipe differs: epochs 1 vs 164"), status
        assert "train images 80 vs 50000" in status and "val images 20 vs 10000" in status
        assert "latency" not in status and "root" not in status and "resources" not in status
        assert math.isnan(d.loc[label, "diff_top1"]) and math.isnan(d.loc[label, "diff_speedup"])
        assert not math.isnan(d.loc[label, "ours_top1"])      # ours is still shown
    md = paper.format_paper_diff(paper.paper_diff(PAPER, [tmp_path / "results"]))
    line = next(l for l in md.splitlines() if l.startswith("| TRP+Nu channel |"))
    assert "recipe differs: epochs 1 vs 164" in line
    assert line.split(" | ")[4] == "-"                  # the Δ Top-1 cell: no delta

    check_latex(paper.format_paper_diff(paper.paper_diff(PAPER, [tmp_path / "results"]), "latex"))

    plot = tmp_path / "pareto.png"
    assert main_report([str(tmp_path / "results" / "cut"), "--paper", PAPER, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "recipe differs: epochs 1 vs 164" in out
    assert "ours ran another recipe than the paper spec" in plot.with_suffix(".svg").read_text()
    # the latency note says what was done: one layout fixed by the spec, not "each on its fastest"
    assert "both on the layout the spec fixed (contiguous)" in out and "each on its fastest" not in out


# ---------------------------------------------------------------------------- recipe rules

def _trp_channel() -> dict:
    return next(t for t in recipe.paper_trials(f"bench/configs/{PAPER}.yaml")
                if t["method"] == "trp" and t["params"]["scheme"] == "channel")


def test_recipe_compares_filled_in_defaults_and_ignores_where_a_trial_ran():
    t = _trp_channel()
    sel = {"method": "trp", "params": {"scheme": "channel", "nuclear": 3e-4}}
    assert recipe.recipe_differences([t], recipe.paper_trials(f"bench/configs/{PAPER}.yaml"), sel) == []
    same = {**t, "data": {**t["data"], "root": "/elsewhere"}, "sweep": "other", "seed": 7,
            "train": {**t["train"], "channels_last": True}, "measure": {"latency_device": "cpu"}}
    assert recipe.recipe_differences([same], [t], sel) == []
    # a default spelled out or left out is the same recipe
    spelled = {**t, "params": {**t["params"], "solver": "auto"}}
    assert recipe.recipe_differences([spelled], [t], sel) == []
    other = {**t, "train": {**t["train"], "batch_size": 32, "milestones": [1]},
             "params": {**t["params"], "export": "speedup:2.0"}}
    assert recipe.recipe_differences([other], [t], sel) == [
        "milestones [1] vs [81, 122]", "batch_size 32 vs 128", "export speedup:2.0 vs value:0.05"]
    assert recipe.recipe_differences([t], [t], {"method": "svd"}) is None   # no trial to compare with


def test_paper_on_results_of_another_dataset_says_so_in_one_line(tmp_path, capsys):
    from rows import make_row, write_rows
    write_rows(tmp_path, [make_row(sweep="quick", dataset="digits", model="cnn", seed=s) for s in range(2)])
    rc = main_report([str(tmp_path / "quick"), "--paper", PAPER, "--plot", str(tmp_path / "p.png")])
    assert rc == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"paper: {PAPER}: these results hold digits/cnn")
    assert "cifar10/resnet20" in lines[0]
    assert not (tmp_path / "p.png").exists() and not list((tmp_path / "quick").glob("paper-*"))


def test_a_run_on_part_of_the_dataset_is_another_recipe_and_rows_without_sizes_are_not_diffed(tmp_path):
    from rows import paper_row, write_rows
    write_rows(tmp_path / "part", [paper_row(seed=s, train_images=320, val_images=10_000) for s in range(2)])
    d = paper.paper_diff(PAPER, [tmp_path / "part"]).set_index("label")
    assert d.loc["baseline", "status"] == "recipe differs: train images 320 vs 50000"
    assert math.isnan(d.loc["baseline", "diff_top1"])
    write_rows(tmp_path / "old", [paper_row(seed=s, train_images=None, val_images=None) for s in range(2)])
    d = paper.paper_diff(PAPER, [tmp_path / "old"]).set_index("label")
    assert d.loc["baseline", "status"].startswith("recipe unknown: the rows do not record how many images")
    assert math.isnan(d.loc["baseline", "diff_top1"])
    write_rows(tmp_path / "full", [paper_row(seed=s) for s in range(2)])
    d = paper.paper_diff(PAPER, [tmp_path / "full"]).set_index("label")
    assert d.loc["baseline", "status"] == "ok" and not math.isnan(d.loc["baseline", "diff_top1"])


def test_uncompressed_row_is_marked_and_not_diffed(tmp_path):
    from rankbench.reports import collate, tables
    from rows import paper_row, write_rows
    rows = [paper_row(seed=s, top1=91.0) for s in range(2)]
    # a TRP run whose export kept every rank: the deployed model is the dense one
    rows += [paper_row("trp", params={"scheme": "channel", "nuclear": 3e-4}, seed=s, top1=91.0,
                       macs=40_600_000, dense_macs=40_600_000) for s in range(2)]
    write_rows(tmp_path, rows)
    md = tables.to_markdown(collate.summarize(collate.load_results(tmp_path)))
    assert "| trp [not compressed]" in md and "[not compressed]: the deployed model is the dense one" in md
    assert "| dense [not compressed]" not in md
    d = paper.paper_diff(PAPER, [tmp_path]).set_index("label")
    assert d.loc["TRP+Nu channel", "status"] == "not compressed: the deployed model is the dense one"
    assert math.isnan(d.loc["TRP+Nu channel", "diff_top1"])


def test_derived_numbers_are_marked_in_every_printed_format():
    for fmt in ("md", "latex"):
        text = paper.format_paper_diff(paper.paper_diff("trp-imagenet-resnet18"), fmt)
        assert "65.39*" in text and ("2.23x*" in text or "2.23$\\times$*" in text)
        assert "derived, not printed by the source" in text
    csv = paper.format_paper_diff(paper.paper_diff("trp-imagenet-resnet18"), "csv")
    assert "69.64 + ALDS's delta" in csv
    # sources are pinned: the README commit, the quoting papers by title, venue and arXiv id
    r50 = paper.format_paper_diff(paper.paper_diff("trp-imagenet-resnet50"))
    assert "README at commit 8cc7470" in r50 and "4217ebf" in r50 and "73.97 / 91.98" in r50
    r56 = paper.format_paper_diff(paper.paper_diff("trp-cifar10-resnet56"))
    assert "arXiv 2204.05566" in r56 and "IJCAI 2020" in r56 and "arXiv 2004.09031" in r56
    assert "arXiv 2107.11442" in paper.format_paper_diff(paper.paper_diff("trp-imagenet-resnet18"))


@pytest.mark.parametrize("top1, expect", [
    ([71.0, 99.0], "85.00 [0.00, 100.00]†"),          # n = 2: 12.7 standard errors, clipped both ways
    ([90.0, 90.2, 90.4], "90.20 ± 0.50"),            # inside [0, 100]: the usual ± form
])
def test_intervals_are_clipped_to_what_a_percentage_can_take(tmp_path, top1, expect):
    from rankbench.reports import collate, tables
    from rows import make_row, write_rows
    write_rows(tmp_path, [make_row(seed=s, top1=v) for s, v in enumerate(top1)])
    s = collate.summarize(collate.load_results(tmp_path))
    md = tables.to_markdown(s)
    assert expect in md
    clipped = "†" in expect
    assert ("† The 95% interval reaches past what the metric can take" in md) == clipped
    assert ("With n = 2 seeds a 95% t interval is 12.7 standard errors wide" in md) == (len(top1) == 2)
    assert bool(s.loc[0, "top1_clipped"]) == clipped
    assert 0.0 <= s.loc[0, "top1_lo"] <= s.loc[0, "top1_hi"] <= 100.0
    check_tex = tables.to_latex(s)
    assert "†" not in check_tex and (r"$^{\dagger}$" in check_tex) == clipped


def test_every_published_row_that_selects_trials_has_a_trial_in_its_paper_spec():
    # otherwise its status could only ever be "recipe unknown"
    for name in paper.available_papers():
        table = paper.load_published(name)
        trials = recipe.paper_trials(table["spec"])
        for row in table["rows"]:
            if "match" in row:
                assert recipe.recipe_differences([], trials, row["match"]) is not None, (name, row["label"])


def test_cost_of_a_method_that_reuses_the_baseline_is_shown_with_and_without_its_training(tmp_path):
    from rankbench.reports import collate, tables
    from rows import make_row, write_rows
    dense = [make_row(seed=s, wall_s=100.0) for s in range(2)]
    svd = [make_row(method="svd", params={"scheme": "channel"}, seed=s, wall_s=10.0, macs=20_000_000,
                    baseline_id=dense[s]["trial_id"]) for s in range(2)]
    trp = [make_row(method="trp", params={"scheme": "channel"}, seed=s, wall_s=150.0, macs=20_000_000)
           for s in range(2)]
    write_rows(tmp_path, dense + svd + trp)
    s = collate.summarize(collate.load_results(tmp_path)).set_index("method")
    assert s.loc["svd", "wall_s_mean"] == 10.0 and s.loc["svd", "wall_s_total_mean"] == 110.0
    assert s.loc["trp", "wall_s_total_mean"] == 150.0            # trains from scratch: nothing added
    md = tables.to_markdown(collate.summarize(collate.load_results(tmp_path)))
    header = md.splitlines()[0]
    assert "Wall time (CPU), own" in header and "Wall time (CPU), incl. baseline" in header
    svd_line = next(l for l in md.splitlines() if l.startswith("| svd"))
    assert "10 s" in svd_line and "1.8 min" in svd_line


def test_decoupling_is_diffed_on_the_papers_formula_with_the_built_models_count_beside_it(tmp_path):
    from rows import paper_row, write_rows
    # official network decoupling: its formula counts the factorized stride-2 convs as dense
    counts = {"dense_conv_macs": 40_812_544, "conv_macs": 22_000_000, "conv_macs_speedup": 40_812_544 / 22_000_000,
              "claimed_conv_macs": 20_000_000, "claimed_conv_speedup": 40_812_544 / 20_000_000}
    write_rows(tmp_path, [paper_row("trp", params={"scheme": "decoupling"}, seed=s, top1=90.0, macs=22_100_000,
                                    **counts) for s in range(2)])
    d = paper.paper_diff(PAPER, [tmp_path]).set_index("label")
    nd = d.loc["TRP+Nu network decoupling"]
    assert nd["status"] == "ok"
    assert nd["diff_speedup"] == pytest.approx(40_812_544 / 20_000_000 - 2.04)
    assert nd["ours_built_speedup"] == pytest.approx(40_812_544 / 22_000_000)
    md = paper.format_paper_diff(paper.paper_diff(PAPER, [tmp_path]))
    assert "2.04x (built: 1.86x)" in md and "(built: X): our speed-up is counted as the method's paper" in md
