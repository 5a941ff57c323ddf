"""The paper specs in bench/configs/: each expands, covers every row of its published table,
and every trial it holds runs (one iteration) on small stand-in data of the right format.

Stand-in data: CIFAR-10 python pickles with a few images, an ImageFolder tree with a few PNGs
(and a pretrained state dict saved from the same architecture). Epochs, sizes, seeds, latency
and resources are overridden; methods, schemes, rank rules and models are the spec's own.
"""
from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rankbench.bench.spec.parse import load_spec, parse_spec
from rankbench.reports import paper

CONFIGS = Path(__file__).parents[2] / "bench" / "configs"
CIFAR = ("trp-cifar10-resnet20", "trp-cifar10-resnet32", "trp-cifar10-resnet56")
IMAGENET = ("trp-imagenet-resnet18", "trp-imagenet-resnet50")

@pytest.mark.parametrize("name", CIFAR + IMAGENET)
def test_spec_expands_and_covers_its_published_table(name):
    sweep = load_spec(CONFIGS / f"{name}.yaml", check=False)  # data roots are the user's
    assert sweep.name == name
    table = paper.load_published(name)
    assert table["spec"] == f"bench/configs/{name}.yaml"
    groups = pd.DataFrame([{"method": t.method, "model": t.model, "dataset": t.data_cfg["name"],
                            "params": t.params_dict, "seed": t.seed} for t in sweep.trials])
    for row in table["rows"]:
        if "match" not in row:
            continue
        hits = [g for _, g in groups.iterrows() if paper.matches(g, row["match"], table)]
        assert hits, f"{name}: no trial in the spec produces published row {row['label']!r}"
        if name in CIFAR:
            assert sorted({g["seed"] for g in hits}) == [0, 1, 2]  # 3 seeds, as the issue asks
    tc = sweep.trials[0].train_cfg
    if name in CIFAR:
        assert (tc["epochs"], tc["batch_size"], tc["lr"], tc["milestones"], tc["weight_decay"]) == \
            (164, 128, 0.1, [81, 122], 1e-4)
        assert tc["augment"] and tc["schedule"] == "step" and tc["gamma"] == 0.1
    else:  # ImageNet: TRP fine-tunes the pretrained model 10 epochs at lr 1e-4; dense is evaluated as is
        assert all(t.model_cfg.get("pretrained") for t in sweep.trials)
        for t in sweep.trials:
            epochs = {"dense": 0, "trp": 10, "svd": 0, "zhang": 0, "jaderberg": 0}[t.method]
            assert (t.train_cfg["epochs"], t.train_cfg["lr"]) == (epochs, 1e-4), t.label


# ---------------------------------------------------------------------------- stand-in data

def _tiny_cifar(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def part(n: int) -> dict:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(i % 10) for i in range(n)]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(part(n_train // 5 + (i <= n_train % 5))))
    (folder / "test_batch").write_bytes(pickle.dumps(part(n_val)))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return folder


def _tiny_imagefolder(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 1)):
        for c in range(classes):
            d = root / split / f"n0000000{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (120, 140, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return root


def _shrink(spec: dict, data: dict, batch: int) -> dict:
    """One seed, one epoch of one step, CPU latency with one repeat on one layout (building the
    whole layout menu costs ~2 s per ResNet trial); everything else as shipped."""
    s = copy.deepcopy(spec)
    s["seeds"] = [0]
    s["data"] = data
    s["train"].update(batch_size=batch, epochs=min(1, s["train"]["epochs"]))
    s["resources"] = {"cpus": 1, "gpus": 0}
    s["measure"] = {"latency_device": "cpu", "latency_dtype": "float32", "latency_batch": 1,
                    "latency_repeats": 1, "latency_layout": "contiguous"}
    for entry in s["methods"]:
        if "train" in entry and "epochs" in entry["train"]:
            entry["train"]["epochs"] = min(1, entry["train"]["epochs"])
        if isinstance(entry.get("finetune_epochs"), list):  # keep the grid, shorten the epochs
            entry["finetune_epochs"] = [min(1, e) for e in entry["finetune_epochs"]]
    return s


def _run_all(sweep, results: Path) -> list[dict]:
    from rankbench.bench.running.run import run_trial

    rows = [run_trial(t, results) for t in sweep.trials]  # baselines come first in a Sweep
    bad = [(r["method"], r["variant"], r["error"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    return rows


# ResNet-32 and -56 run the same specs' code as ResNet-20 with more blocks: by default only the
# ResNet-20 spec runs (seconds); `pytest -m slow` runs the deeper two (half a minute more)
@pytest.mark.parametrize("name", [n if n.endswith("resnet20") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CIFAR])
def test_cifar_spec_trials_run_on_tiny_cifar(name, tmp_path):
    spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    folder = _tiny_cifar(tmp_path / "data")
    small = _shrink(spec, {"name": "cifar10", "root": str(folder)}, batch=8)
    sweep = parse_spec(yaml.safe_dump(small), source=f"{name} (shrunk)")
    rows = _run_all(sweep, tmp_path / "results")
    assert {r["method"] for r in rows} == {"dense", "trp", "svd"}
    # the report regenerates the paper table from these rows: no published row is "not run"
    diff = paper.paper_diff(name, [tmp_path / "results" / name])
    assert "not run" not in set(diff["status"])
    # the shrunk recipe is not the paper's: the row says so instead of giving a delta
    base = diff.loc[diff["label"] == "baseline"].iloc[0]
    assert base["status"].startswith("recipe differs: epochs 1 vs 164") and math.isnan(base["diff_top1"])


# The ImageNet trials keep their full-size ResNet-18/50 weights: TRP's projection and the
# speed-up bisection run CPU SVDs of every layer, about 4 minutes per spec on 2 cores (both
# passed when last run). Too slow for every commit: marked slow, run with `pytest -m slow`.
@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_spec_trials_run_on_tiny_imagefolder(name, tmp_path):
    import torch
    from rankbench.bench.models.builtin import build_model

    spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    root = _tiny_imagefolder(tmp_path / "imagenet")
    arch = spec["model"]["name"] if isinstance(spec["model"], dict) else spec["model"]
    weights = tmp_path / f"{arch}.pth"
    torch.save(build_model(arch, 1000, (3, 224, 224)).state_dict(), weights)
    small = _shrink(spec, {"name": "imagenet", "root": str(root), "image_size": 96, "resize": 112,
                           "workers": 0}, batch=4)
    small["model"] = {"name": arch, "pretrained": str(weights)}
    sweep = parse_spec(yaml.safe_dump(small), source=f"{name} (shrunk)")
    _run_all(sweep, tmp_path / "results")
    diff = paper.paper_diff(name, [tmp_path / "results" / name])
    assert "not run" not in set(diff["status"])
