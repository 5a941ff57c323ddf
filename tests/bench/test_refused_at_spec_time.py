"""What used to be refused only after Ray started (exit 1, no field named), or not at all, is
refused when the spec is read: ``rankbench run`` exits 2 with one ``error:`` line naming the
field, before Ray or a trial starts. Also: the calibration batches a row records are the ones
read, report tables stay one row per line, and a results folder's FORMAT problem says which.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.spec.parse import parse_spec

BASE: dict[str, Any] = {"sweep": "x", "seeds": [0], "data": {"name": "digits"}, "model": "cnn",
                        "train": {"epochs": 1}, "methods": [{"name": "dense"}]}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def refused(tmp_path: Path, capsys, **edit: Any) -> str:
    """The one ``error:`` line of ``rankbench run`` on the base spec with ``edit``; exit 2."""
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({**BASE, **edit}))
    rc = main(["run", str(f), "--results", str(tmp_path / "res")])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 2, (rc, cap.out, cap.err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in cap.err, cap.err
    assert not (tmp_path / "res").exists()
    return lines[0]


def timm_or_skip() -> None:
    pytest.importorskip("timm", reason="timm is the optional extra rankbench[timm]")


# --------------------------------------------------------------------- A(a) options the harness sets

@pytest.mark.parametrize("model, key", [
    ({"name": "torchvision:resnet18", "num_classes": 5}, "num_classes"),
    ({"name": "torchvision:mobilenet_v2", "weights": "DEFAULT"}, "weights"),
    ({"name": "resnet34", "input_shape": [3, 8, 8]}, "input_shape"),
    ({"name": "timm:resnet18", "num_classes": 5}, "num_classes"),
    ({"name": "timm:resnet18", "in_chans": 3}, "in_chans"),
])
def test_a_model_option_the_harness_passes_itself_is_refused_naming_it(model, key, tmp_path, capsys, no_run):
    if model["name"].startswith("timm:"):
        timm_or_skip()
    line = refused(tmp_path, capsys, model=model)
    assert line.startswith(f"error: model.{key}: "), line
    assert "the harness passes" in line and "accepted:" in line, line


def test_with_a_pretrained_file_the_option_is_named_not_the_file(tmp_path, capsys, no_run):
    from rankbench.bench.models.builtin import build_model

    f = tmp_path / "r18.pt"
    torch.save(build_model("torchvision:resnet18", 10, (3, 32, 32)).state_dict(), f)
    line = refused(tmp_path, capsys, data={"name": "synthetic"},
                   model={"name": "torchvision:resnet18", "num_classes": 5, "pretrained": str(f)})
    assert line.startswith("error: model.num_classes: 5: the harness passes num_classes itself"), line


# --------------------------------------------------------------------- A(b) options that make no sense

@pytest.mark.parametrize("model, key", [
    ({"name": "timm:resnet18", "drop_rate": -5}, "drop_rate"),
    ({"name": "timm:resnet18", "drop_path_rate": -0.1}, "drop_path_rate"),      # timm ignores it silently
    ({"name": "timm:resnet18", "drop_rate": 1.0}, "drop_rate"),
    ({"name": "torchvision:mobilenet_v2", "dropout": 2}, "dropout"),
    ({"name": "torchvision:efficientnet_b0", "stochastic_depth_prob": -1}, "stochastic_depth_prob"),
    ({"name": "torchvision:mobilenet_v2", "dropout": "half"}, "dropout"),
])
def test_a_rate_outside_0_1_is_refused_naming_the_option(model, key, tmp_path, capsys, no_run):
    if model["name"].startswith("timm:"):
        timm_or_skip()
    line = refused(tmp_path, capsys, model=model, data={"name": "synthetic", "shape": [3, 32, 32]})
    assert line.startswith(f"error: model.{key}: "), line
    assert "[0, 1)" in line, line


def test_sensible_rates_are_accepted():
    timm_or_skip()
    sweep = parse_spec(yaml.safe_dump({**BASE, "data": {"name": "synthetic", "shape": [3, 32, 32]},
                                       "model": {"name": "timm:resnet18", "drop_rate": 0.2, "drop_path_rate": 0.0}}))
    assert sweep.trials[0].model_cfg == {"drop_rate": 0.2, "drop_path_rate": 0.0}


# --------------------------------------------------------------------- A(c) a stem that does not fit

@pytest.mark.parametrize("name", ["torchvision:inception_v3", "torchvision:alexnet", "torchvision:vit_b_16"])
def test_a_model_whose_smallest_input_exceeds_the_data_is_refused_naming_model_shape_and_fix(
        name, tmp_path, capsys, no_run):
    line = refused(tmp_path, capsys, model=name)
    assert line.startswith("error: model: "), line
    assert name in line and "(1, 8, 8)" in line, line
    assert "smallest input" in line and "cnn" in line, line      # the fix: bigger images or a small-input model


def test_the_refusal_names_the_model_field_of_the_method_entry(tmp_path, capsys, no_run):
    line = refused(tmp_path, capsys, methods=[{"name": "dense", "model": "torchvision:inception_v3"}])
    assert line.startswith("error: methods[0](dense).model: "), line


def test_a_model_that_fits_its_data_still_passes():
    sweep = parse_spec(yaml.safe_dump({**BASE, "data": {"name": "synthetic", "shape": [3, 32, 32]},
                                       "model": {"name": "torchvision:mobilenet_v2", "width_mult": 0.5}}))
    assert len(sweep.trials) == 1


# --------------------------------------------------------------------- A(d) an unreachable cp rule

def test_cp_at_an_unreachable_speedup_is_refused_like_svd(tmp_path, capsys, no_run):
    line = refused(tmp_path, capsys, methods=[{"name": "cp", "rule": "speedup:1000"}])
    assert line.startswith("error: methods[0](cp).rule: 'speedup:1000.0': not reachable"), line
    assert "speedup up to" in line, line
    assert len(parse_spec(yaml.safe_dump({**BASE, "methods": [{"name": "cp", "rule": "speedup:1.5"}]})).trials) == 2


# --------------------------------------------------------------------- A(e) synthetic sizes

@pytest.mark.parametrize("data, key", [
    ({"name": "synthetic", "num_classes": 100000}, "num_classes"),
    ({"name": "synthetic", "size": 10**9}, "size"),
    ({"name": "synthetic", "val_size": 10**9}, "val_size"),
    ({"name": "synthetic", "shape": [3, 100000, 100000]}, "shape"),
])
def test_synthetic_data_too_big_for_memory_is_refused_naming_the_bytes(data, key, tmp_path, capsys, no_run):
    line = refused(tmp_path, capsys, data=data, model="mlp")
    assert line.startswith(f"error: data.{key}: "), line
    assert "GB" in line, line


def test_synthetic_data_of_a_sane_size_is_accepted():
    sweep = parse_spec(yaml.safe_dump({**BASE, "model": "mlp",
                                       "data": {"name": "synthetic", "num_classes": 1000, "size": 4096}}))
    assert len(sweep.trials) == 1


# --------------------------------------------------------------------- A(f) digits split

@pytest.mark.parametrize("vf", [0.999, 0.0001, 0.995, 0.005])
def test_a_digits_split_that_empties_a_class_is_refused(vf, tmp_path, capsys, no_run):
    line = refused(tmp_path, capsys, data={"name": "digits", "val_fraction": vf})
    assert line.startswith(f"error: data.val_fraction: {vf}: "), line
    assert "each class" in line, line


@pytest.mark.parametrize("vf", [0.006, 0.99])
def test_a_digits_split_at_the_edges_loads_with_every_class_on_both_sides(vf):
    from rankbench.bench.data import build_data

    parse_spec(yaml.safe_dump({**BASE, "data": {"name": "digits", "val_fraction": vf}}))
    data = build_data({"name": "digits", "val_fraction": vf}, seed=0, batch_size=4096, augment=False)
    for loader in (data.train, data.val):
        ys = torch.cat([y for _, y in loader])
        assert set(ys.tolist()) == set(range(10))


# --------------------------------------------------------------------- B. calibration batches read

def test_the_row_records_the_calibration_batches_actually_read():
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods.api import registry
    from rankbench.methods.api.base import Context

    shape, available, asked = (1, 8, 8), 3, []

    def batches(n: int):                    # like the harness: at most one epoch of the training split
        asked.append(n)
        g = torch.Generator().manual_seed(0)
        return [(torch.randn((16, *shape), generator=g), torch.zeros(16, dtype=torch.long))
                for _ in range(min(n, available))]

    torch.manual_seed(0)
    model = build_model("cnn", 10, shape).eval()
    for name in ("zhang", "jaderberg"):
        m = registry.build(name, {"rule": "speedup:1.5", "calibration": 1000000})
        m.ctx = Context(input_shape=shape, num_classes=10, steps_per_epoch=3, epochs=0, train_batches=batches)
        m.attach(model, m.ctx)
        m.compress(model)
        assert m.report().info["calibration_batches"] == available, name
    assert asked == [1000000, 1000000]


# --------------------------------------------------------------------- C. report tables

def _rows_module():
    path = Path(__file__).parents[1] / "reports" / "rows.py"
    spec = importlib.util.spec_from_file_location("report_rows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(tmp_path: Path, label: str) -> Path:
    rows = _rows_module()
    made = [rows.make_row(method="dense", seed=s) for s in (0, 1)]
    made += [rows.make_row(method="svd", seed=s, label=label, macs=20_000_000,
                           params={"scheme": "channel", "rule": "energy:0.9"}) for s in (0, 1)]
    rows.write_rows(tmp_path, made)
    return tmp_path / "quick"


def test_a_column_selection_that_leaves_no_column_is_refused(tmp_path, capsys):
    res = _results(tmp_path, "SVD")
    rc = main(["report", str(res), "--columns", "dataset"])       # one dataset: no Dataset column
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 2, (rc, cap.out, cap.err)
    assert len(lines) == 1 and lines[0].startswith("error: --columns: 'dataset': "), cap.err
    assert "method" in lines[0], lines[0]                          # what this table has
    assert not (res / "table.md").exists()


@pytest.mark.parametrize("label", ["odd|label", "two\nlines", "back\\|slash", "cr\r\nlf\u2028sep"])
def test_a_label_with_a_newline_or_pipe_keeps_the_table_one_row_per_line(label, tmp_path, capsys):
    from rankbench.reports import tables

    res = _results(tmp_path, label)
    assert main(["report", str(res), "--format", "md,latex"]) == 0
    capsys.readouterr()
    text = (res / "table.md").read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(table) == 4, text                                   # header, rule, dense, the labelled row
    cells = [_split_cells(ln) for ln in table]
    assert {len(c) for c in cells} == {len(cells[0])}, cells
    assert all(len(ln) == len(table[0]) for ln in table), table    # aligned on the escaped text
    assert not any(ln.startswith("|") for ln in text.splitlines()[len(table):])
    tex = (res / "table.tex").read_text()
    assert "\n\n" not in tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    assert tables.column_key("Method") == "method"


def _split_cells(line: str) -> list[str]:
    """The cells of a GitHub-flavoured Markdown table row: a ``|`` preceded by a backslash is text."""
    cells, cur, i = [], "", 1
    while i < len(line) - 1:
        if line[i] == "\\" and line[i + 1] == "|":
            cur, i = cur + "\\|", i + 2
            continue
        if line[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += line[i]
        i += 1
    return cells + [cur]


# --------------------------------------------------------------------- D. FORMAT file

@pytest.mark.parametrize("content, needles, not_needles", [
    (b"\x00\xffgarbage", ["not a FORMAT file rankbench writes"], ["another rankbench version"]),
    (b"hello", ["not a FORMAT file rankbench writes"], ["another rankbench version"]),
    (b'{"fmt": 1}', ["no format number"], ["another rankbench version"]),
    (b'{"format": 99}', ["format 99", "written by another rankbench version"], ["not a FORMAT file"]),
])
def test_a_results_folder_format_problem_says_which(content, needles, not_needles, tmp_path):
    from rankbench.bench.results.store import Store

    (tmp_path / "s" / "trials").mkdir(parents=True)
    (tmp_path / "s" / "FORMAT").write_bytes(content)
    with pytest.raises(UserError) as e:
        Store(tmp_path, "s").ensure()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("results: ")
    assert [n for n in needles if n not in msg] == [], msg
    assert [n for n in not_needles if n in msg] == [], msg
    assert (tmp_path / "s" / "FORMAT").read_bytes() == content
    json.dumps(msg)
