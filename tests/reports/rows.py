"""Result rows fabricated as JSON files in the row schema (bench/results/row.py), for the report tests."""
from __future__ import annotations

import json
from pathlib import Path


def make_row(sweep: str = "quick", method: str = "dense", seed: int = 0, *, model: str = "resnet20",
             dataset: str = "cifar10", params: dict | None = None, top1: float | None = 91.0,
             top5: float | None = None, macs: int = 40_600_000, dense_macs: int = 40_600_000,
             latency_ms: float = 2.0, dense_latency_ms: float = 2.0, status: str = "ok",
             error: str | None = None, gpu_hours: float = 0.0, wall_s: float = 120.0,
             params_count: int = 272_474, **extra) -> dict:
    """One Result row with the flat keys of docs/CONTRACTS.md."""
    params = dict(params or {})
    variant = ",".join(f"{k}={params[k]}" for k in sorted(params))
    row = {
        "trial_id": f"{method}-{abs(hash((sweep, model, method, variant, seed))) % 10**10:010d}",
        "sweep": sweep, "status": status, "error": error,
        "last_good_epoch": 3 if status == "failed" else None,
        "dataset": dataset, "model": model, "method": method, "seed": seed,
        "params": params, "variant": variant,
        "scheme": params.get("scheme"), "rule": params.get("rule", params.get("export")),
        "top1": top1 if status == "ok" else None, "top5": top5 if status == "ok" else None, "f1": None,
        "macs": macs, "dense_macs": dense_macs, "macs_speedup": dense_macs / macs,
        "params_count": params_count, "dense_params_count": 272_474,
        "latency_ms": latency_ms, "dense_latency_ms": dense_latency_ms,
        "latency_speedup": dense_latency_ms / latency_ms,
        "latency_device": "cpu", "latency_dtype": "float32", "latency_batch": 1,
        "layers": [{"name": "layer1.0.conv1", "shape": [16, 16, 3, 3], "scheme": params.get("scheme"),
                    "rank": 8, "full_rank": 16, "dense_macs": 2_359_296, "macs": 1_310_720,
                    "skipped": None},
                   {"name": "conv1", "shape": [16, 3, 3, 3], "scheme": None, "rank": None,
                    "full_rank": None, "dense_macs": 442_368, "macs": 442_368, "skipped": "first conv"}],
        "wall_s": wall_s, "gpu_hours": gpu_hours,
        "env": {"torch": "2.14.1", "cuda": None, "gpu": None, "python": "3.11", "rankbench": "0.1.0",
                "hostname": "test"},
        "spec": {"sweep": sweep, "method": method, "model": model, "seed": seed,
                 "train": {"epochs": 164}, "data": {"name": dataset, "root": "data/x"}},
    }
    row.update(extra)
    return row


def write_rows(root: Path, rows: list[dict]) -> Path:
    for r in rows:
        d = root / r["sweep"] / "trials"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{r['trial_id']}.json").write_text(json.dumps(r))
    return root


def paper_spec(method: str, seed: int = 0, paper: str = "trp-cifar10-resnet20", **params) -> dict:
    """The trial spec (``Trial.to_dict()``) the paper spec runs for ``method`` with ``params``."""
    from rankbench.reports.recipe import paper_trials, same_value
    t = next(t for t in paper_trials(f"bench/configs/{paper}.yaml") if t["method"] == method
             and all(same_value(t["params"].get(k), v) for k, v in params.items()))
    return {**t, "seed": seed}


def paper_row(method: str = "dense", seed: int = 0, params: dict | None = None, **kw) -> dict:
    """A row of a trial that ran the ResNet-20 paper spec's recipe."""
    spec = paper_spec(method, seed, **(params or {}))
    kw = {"train_images": 50_000, "val_images": 10_000, **kw}     # the full CIFAR-10 splits
    return make_row(method=method, seed=seed, params=spec["params"], spec=spec, **kw)
