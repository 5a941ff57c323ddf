"""``python -m rankbench.bench.data``: the ImageNet input pipeline's images/s per decode path and layout
(on a given root or on synthetic JPEGs), and the ImageFolder -> WebDataset shards conversion."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .build import build_data
from .fake import fake_imagefolder
from .shards import imagefolder_to_shards, tar_files


def input_throughput(cfg: dict, device: str | torch.device = "cpu", batch_size: int = 64, batches: int = 20,
                     augment: bool = True, seed: int = 0) -> dict[str, Any]:
    """Images per second the training input pipeline delivers on ``device`` (decoded, cropped,
    normalized, on the device), timed after one warm-up batch, epochs repeated as needed."""
    import time

    data = build_data(cfg, seed=seed, batch_size=batch_size, augment=augment, device=device)
    device = torch.device(device)
    it = iter(data.train)
    n, t0 = 0, None
    for b in range(batches + 1):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(data.train)
            x, _ = next(it)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if b == 0:
            t0 = time.perf_counter()           # the first batch pays worker start-up
        else:
            n += len(x)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "images": n, "seconds": dt, "decode": data.info.get("decode"),
            "workers": data.info.get("workers"), "layout": data.info.get("layout"), "batch": batch_size,
            "device": str(device),
            "skipped": data.skipped}


def _size(text: str) -> tuple[int, int]:
    import argparse

    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: accepted: WIDTHxHEIGHT, e.g. 500x375")


def _synthetic_roots(a: Any, base: Path) -> dict[str, str]:
    """layout -> root of the synthetic JPEGs in each layout the probe times; the shards are a
    conversion of the same ImageFolder, so both layouts hold the very same files."""
    folder = fake_imagefolder(base, a.images, a.classes, a.size)
    roots = {}
    for layout in a.layout or ["imagefolder"]:
        if layout == "tar":
            if not ((base / "shards" / "train").is_dir() and tar_files(base / "shards" / "train")):
                imagefolder_to_shards(folder, base / "shards", a.shard_size)
            roots["tar"] = str(base / "shards")
        else:
            roots["imagefolder"] = str(folder)
    return roots


def _probe_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median images/s per (layout, decode) over the rounds, and tar / imagefolder per decode."""
    runs: dict[str, list[float]] = {}
    for r in rows:
        runs.setdefault(f"{r['layout']}/{r['decode']}", []).append(round(r["images_per_s"], 1))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    ratio = {k.split("/")[1]: round(v / med[f"imagefolder/{k.split('/')[1]}"], 3) for k, v in med.items()
             if k.startswith("tar/") and f"imagefolder/{k.split('/')[1]}" in med}
    return {"median_images_per_s": med, "runs": runs, "tar_over_imagefolder": ratio}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(prog="python -m rankbench.bench.data",
                                description="Measure ImageNet input-pipeline throughput (images/s): one JSON "
                                            "line per decode path (and per --step-model).")
    p.add_argument("--root", help="an existing ImageFolder root (train/<class>/*); default: a synthetic one "
                                  "of real JPEGs (see --write)")
    p.add_argument("--write", metavar="DIR",
                   help="write the synthetic ImageFolder here (reused when DIR already holds one) instead "
                        "of a temporary folder deleted at exit")
    p.add_argument("--images", type=int, default=1024,
                   help="train images in the synthetic ImageFolder, over --classes classes (default 1024)")
    p.add_argument("--classes", type=int, default=8, help="classes in the synthetic ImageFolder (default 8)")
    p.add_argument("--size", type=_size, default=(500, 375), metavar="WxH",
                   help="synthetic JPEG size, width x height (default 500x375, ImageNet-like)")
    p.add_argument("--decode", nargs="+", default=["pil", "torchvision"], choices=["pil", "torchvision"],
                   help="decode paths to time (default both): pil = PIL in the DataLoader workers; "
                        "torchvision = batched torchvision.io.decode_jpeg on --device (nvJPEG on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=20, help="timed batches, after one warm-up batch")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default min(8, the CPUs this process may use))")
    p.add_argument("--step-model", default=None, choices=["resnet18", "resnet50"],
                   help="also time that model's bf16 training step (images/s the pipeline must match)")
    p.add_argument("--layout", nargs="+", default=None, choices=["imagefolder", "tar"],
                   help="layouts to time: imagefolder, tar (WebDataset shards). The synthetic data is written "
                        "in each (shards under DIR/shards; default imagefolder); --root is timed in its own "
                        "layout (auto-detected unless one --layout is given)")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every (layout, decode) pair this many rounds, alternating, then print the medians "
                        "and the tar / imagefolder ratio (default 1)")
    p.add_argument("--write-shards", metavar="DIR",
                   help="convert the ImageFolder at --root into WebDataset shards in DIR (train/, val/, "
                        "classes.txt) and exit without timing")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per shard when writing shards (default 1000)")
    a = p.parse_args(argv)
    if a.write_shards:
        if not a.root:
            p.error("--write-shards needs --root, the ImageFolder to convert")
        try:
            counts = imagefolder_to_shards(a.root, a.write_shards, a.shard_size)
        except ValueError as e:               # a bad root or shard size: one line, no traceback
            p.error(str(e))
        print(json.dumps({"shards": a.write_shards, **counts}))
        return
    if a.root and a.layout and len(a.layout) > 1:
        p.error("--root holds one layout; to compare, convert it with --write-shards and time each root")
    with tempfile.TemporaryDirectory() as tmp:
        if a.root:
            roots = {a.layout[0] if a.layout else "auto": a.root}
        else:
            roots = _synthetic_roots(a, Path(a.write or tmp))
        rows = []
        for r in range(a.rounds):
            # ABBA order: a drift in machine load during the rounds biases neither layout
            for layout, root in (roots.items() if r % 2 == 0 else reversed(roots.items())):
                for decode in a.decode:
                    cfg = {"name": "imagenet", "root": root, "layout": layout, "decode": decode,
                           "workers": a.workers}
                    rows.append({"root": root, **input_throughput(cfg, a.device, a.batch_size, a.batches)})
                    print(json.dumps(rows[-1]), flush=True)
        if a.rounds > 1 or len(roots) > 1:
            print(json.dumps(_probe_summary(rows)), flush=True)
    if a.step_model:
        import torchvision

        from rankbench.bench.measure.metrics import train_step_throughput

        model = getattr(torchvision.models, a.step_model)(num_classes=1000)
        r = train_step_throughput(model, (3, 224, 224), batch=a.batch_size, device=a.device,
                                  steps=a.batches, warmup=min(5, a.batches))
        print(json.dumps({"step_model": a.step_model, **r}))
