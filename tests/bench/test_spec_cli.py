"""Specs from the command line: dotted overrides, shipped specs by name, previews of specs whose
data is not there yet."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.spec.parse import load_spec, parse_spec, resolve_spec, shipped_specs

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
sweep: o
seeds: [0, 1]
data: digits
model: cnn
train: {epochs: 2, batch_size: 64}
methods:
  - dense
  - {name: svd, scheme: channel, rule: "speedup:2.0"}
"""


def ids(sweep):
    return sorted(t.id for t in sweep.trials)


def test_overrides_give_the_trials_of_the_spec_written_with_those_values():
    over = parse_spec(SPEC, overrides=["train.epochs=3", "seeds=[0]", "resources.gpus=0.5",
                                       "methods.1.rule=energy:0.8", "train.weight_decay=5e-4"])
    written = parse_spec(SPEC.replace("epochs: 2", "epochs: 3").replace("[0, 1]", "[0]")
                         .replace('"speedup:2.0"', "energy:0.8").replace("batch_size: 64", "batch_size: 64, weight_decay: 5.0e-4")
                         + "resources: {gpus: 0.5}\n")
    assert ids(over) == ids(written)                 # the effective spec is what is hashed
    t = next(t for t in over.trials if t.method == "svd")
    assert t.train_cfg["epochs"] == 3 and t.params_dict["rule"] == "energy:0.8" and t.seed == 0
    assert t.resources_cfg["gpus"] == 0.5 and t.train_cfg["weight_decay"] == 5e-4
    # a string where a mapping is descended into is that mapping's name (`data: digits`)
    d = parse_spec(SPEC, overrides=["data.name=synthetic"])
    assert {t.data_cfg["name"] for t in d.trials} == {"synthetic"}


def test_a_bad_override_gets_the_same_one_line_error_as_the_yaml():
    with pytest.raises(UserError) as from_yaml:
        parse_spec(SPEC.replace("epochs: 2", "epochs: abc"))
    with pytest.raises(UserError) as from_override:
        parse_spec(SPEC, overrides=["train.epochs=abc"])
    assert str(from_override.value) == str(from_yaml.value) == "train.epochs: 'abc'; accepted: an integer >= 0"
    with pytest.raises(UserError, match=r"^train\.epoch: 3: unknown key \(did you mean 'epochs'\?\)"):
        parse_spec(SPEC, overrides=["train.epoch=3"])
    with pytest.raises(UserError, match=r"^override: 'train\.epochs'; accepted: KEY=VALUE"):
        parse_spec(SPEC, overrides=["train.epochs"])
    with pytest.raises(UserError, match=r"^methods\.7: '7': in override 'methods\.7\.rule=x'; accepted: a list index 0\.\.1"):
        parse_spec(SPEC, overrides=["methods.7.rule=x"])


def test_shipped_specs_load_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    names = shipped_specs()
    assert {"quick", "trp-cifar10-resnet20"} <= set(names)
    assert resolve_spec("quick") == resolve_spec("quick.yaml") == names["quick"] == resolve_spec(None)
    assert resolve_spec("bench/configs/trp-cifar10-resnet20.yaml") == names["trp-cifar10-resnet20"]
    assert load_spec("quick").name == "quick"
    (tmp_path / "quick").write_text("a local file wins over a shipped name\n")
    assert resolve_spec("quick") == Path("quick")
    with pytest.raises(UserError, match=r"^spec: 'nope': no such file; accepted: a path to a YAML spec or a shipped "
                                        r"spec \(.*\bquick, trp-cifar10-resnet20, "):
        load_spec("nope")
    assert main(["specs"]) == 0
    out = capsys.readouterr().out
    assert all(any(line.startswith(n + " ") for line in out.splitlines()) for n in names)


def test_show_previews_a_spec_whose_data_is_not_there_and_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "trp-cifar10-resnet20", "seeds=[0]", "--results", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sweep trp-cifar10-resnet20") and " todo " in out and " cifar10 " in out
    assert "warning: data.root: 'data/cifar-10-batches-py': does not exist" in err
    assert f"resolve against the current directory ({tmp_path})" in err
    # run still refuses it, with one line, before any folder or Ray start
    assert main(["run", "trp-cifar10-resnet20", "--results", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("error: data.root: 'data/cifar-10-batches-py': does not exist")
    assert not (tmp_path / "r").exists()


def test_run_quick_with_overrides_from_an_empty_directory(tmp_path):
    """`rankbench run quick train.epochs=1 seeds=[0]` in a fresh folder: the shipped spec is found by
    name, the overrides reach every trial, and the results land in ./results."""
    env = dict(os.environ, PYTHONPATH="", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([sys.executable, "-m", "rankbench.bench", "run", "quick", "train.epochs=1", "seeds=[0]"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "8 trials: 8 ok, 0 failed" in r.stdout
    import json

    rows = [json.loads(p.read_text()) for p in (tmp_path / "results" / "quick" / "trials").glob("*.json")]
    assert len(rows) == 8 and all(r["spec"]["seed"] == 0 for r in rows)
    assert all(r["spec"]["train"]["epochs"] == 1 for r in rows)
    assert all((tmp_path / "results" / "quick" / "trials" / r["compressed_model"]).is_file() for r in rows)
    tb = tmp_path / "results" / "quick" / "tensorboard"       # and per-epoch scalars for every trial
    assert all(any(tb.glob(f"*/*/*/seed0-{r['trial_id']}/events.out.tfevents.*")) for r in rows)


def test_show_and_the_failed_list_name_a_method_by_its_label_too(tmp_path, capsys):
    from rankbench.bench.cli import failed_line
    from rankbench.bench.spec.parse import parse_spec

    spec = tmp_path / "s.yaml"
    spec.write_text("""sweep: s
data: {name: digits}
model: cnn
train: {epochs: 1}
seeds: [0]
methods:
  - {name: dense}
  - {name: trp, scheme: channel, label: "TRP+Nu"}
""")
    assert main(["show", str(spec), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert " trp (TRP+Nu) " in out and " dense " in out and "dense (" not in out
    trp = next(t for t in parse_spec(spec.read_text()).trials if t.method == "trp")
    row = {"method": "trp", "label": "TRP+Nu", "variant": trp.variant, "seed": 0, "error": "RuntimeError: boom"}
    assert failed_line(trp.id, row, trp, tmp_path) == \
        f"failed {trp.id} trp (TRP+Nu) [{trp.variant}] seed 0: RuntimeError: boom"
    line = failed_line(trp.id, None, trp, tmp_path)
    assert line.startswith(f"failed {trp.id} trp (TRP+Nu)[") and "seed=0: no result written (see" in line
