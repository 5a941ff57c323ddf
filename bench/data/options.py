"""The data section of a spec: dataset names, the options each accepts with their defaults,
and their validation (values only; the files a root holds are checked by each dataset's module)."""
from __future__ import annotations

from typing import Any

from rankbench.bench.checks import bad, check, did_you_mean, is_int, is_number, missing, unknown

from .cifar import CIFAR_LAYOUT, NORMALIZE
from .digits import split_problem
from .imagefolder import IMAGEFOLDER
from .imagenet import IMAGENET_LAYOUTS
from .synthetic import MAX_BYTES, footprint

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")

# What every in-memory dataset accepts to reshape its images (memory.adapt_splits), applied
# once at load time: ``resize`` (null, or N: every image bilinearly resized to N x N) and
# ``channels`` (null, or 1 or 3: a 1-channel image repeated to 3; a dataset's own channel count
# is accepted as a no-op). Absent from a spec they are absent from its trials' ids.
INPUT_OPTIONS: dict[str, Any] = {"resize": None, "channels": None}
CHANNELS = (1, 3)

# Options each dataset accepts besides ``name`` (value: default). ``root`` is required for
# cifar10/cifar100/imagenet; the others accept only ``root: null``, so a spec may carry a
# uniform root key for every dataset.
OPTIONS: dict[str, dict[str, Any]] = {
    "digits": {"root": None, "val_fraction": 0.2, "split_seed": None, **INPUT_OPTIONS},
    # normalize: "dataset" (the training set's per-channel statistics) or "official" (the
    # constants of the official TRP code, rankbench.bench.data.cifar.OFFICIAL_STD)
    "cifar10": {"root": None, "normalize": "dataset", **INPUT_OPTIONS},
    "cifar100": {"root": None, "labels": "fine", "normalize": "dataset", **INPUT_OPTIONS},
    # ImageNet's images come out image_size x image_size, RGB: its ``resize`` is the shorter
    # side before the center crop (torchvision's recipe), and ``channels`` takes 3 alone
    "imagenet": {
        "root": None,
        "channels": None,
        "layout": "auto",         # imagefolder | tar | auto (tar when root/train holds .tar files)
        "workers": None,          # DataLoader workers; None -> min(8, the CPUs this process may use)
        "decode": "auto",         # pil | torchvision | auto (torchvision on CUDA, else pil)
        "image_size": 224,
        "resize": 256,
        "train_per_class": None,  # keep only the first N files per class (smoke runs)
        "val_per_class": None,
    },
    "synthetic": {
        "root": None,
        "shape": [3, 32, 32],
        "num_classes": 10,
        "size": 1024,
        "val_size": None,         # None -> size // 4
        "data_seed": 0,
        **INPUT_OPTIONS,
    },
}


def _positive(v: Any) -> bool:
    return is_int(v) and v > 0


def options(cfg: dict) -> tuple[str, dict[str, Any]]:
    """Validate names and values (not files); return (name, options with defaults filled)."""
    if not isinstance(cfg, dict):
        raise bad("data", cfg, f"a mapping {{name: one of {', '.join(DATASETS)}, ...}}", "not a mapping")
    name = cfg.get("name", "digits")
    if name not in DATASETS:
        raise unknown("data.name", name, DATASETS, "unknown dataset")
    allowed = OPTIONS[name]
    extra = sorted(set(cfg) - set(allowed) - {"name"})
    if extra:
        key = extra[0]
        raise bad(f"data.{key}", cfg[key], ", ".join(sorted(allowed)) or "(none)",
                  f"unknown key for dataset {name!r}" + did_you_mean(key, allowed))
    opts = {**allowed, **{k: v for k, v in cfg.items() if k != "name"}}

    if name in ("cifar10", "cifar100", "imagenet"):
        if opts["root"] in (None, ""):
            want = CIFAR_LAYOUT[name]["expected"] if name in CIFAR_LAYOUT else (
                f"{IMAGEFOLDER}, or WebDataset shards root/train/*.tar and root/val/*.tar")
            raise missing("data.root", f"a folder with {want} (dataset {name!r} reads files)")
    elif opts["root"] is not None:
        raise bad("data.root", opts["root"], f"null (dataset {name!r} needs no files)")

    def need(key: str, ok: bool, accepted: str) -> None:
        check(f"data.{key}", opts[key], ok, accepted)

    if name == "digits":
        vf = opts["val_fraction"]
        need("val_fraction", is_number(vf) and 0 < vf < 1, "a number strictly between 0 and 1")
        problem = split_problem(vf)
        if problem:
            raise bad("data.val_fraction", vf, *problem)
        need("split_seed", opts["split_seed"] is None or is_int(opts["split_seed"]),
             "an integer or null (null: the trial's seed)")
    if name in CIFAR_LAYOUT:
        need("normalize", opts["normalize"] in NORMALIZE,
             "dataset (the training set's mean and std), official (the official TRP code's: std 0.2023, 0.1994, 0.2010)")
    if name == "cifar100":
        need("labels", opts["labels"] in ("fine", "coarse"), "fine (100 classes), coarse (20 superclasses)")
    elif name == "imagenet":
        need("layout", opts["layout"] in IMAGENET_LAYOUTS,
             "auto (tar when root/train holds .tar files), imagefolder, tar")
        need("workers", opts["workers"] is None or (is_int(opts["workers"]) and opts["workers"] >= 0),
             "an integer >= 0 or null")
        need("decode", opts["decode"] in ("auto", "pil", "torchvision"), "auto, pil, torchvision")
        for k in ("image_size", "resize"):
            need(k, _positive(opts[k]), "a positive integer")
        need("resize", opts["resize"] >= opts["image_size"], f"an integer >= image_size ({opts['image_size']})")
        for k in ("train_per_class", "val_per_class"):
            need(k, opts[k] is None or _positive(opts[k]), "a positive integer or null (all files)")
    elif name == "synthetic":
        shape = opts["shape"]
        need("shape", isinstance(shape, (list, tuple)) and bool(shape) and all(_positive(s) for s in shape),
             "a non-empty list of positive integers, e.g. [3, 32, 32] or [64]")
        opts["shape"] = [int(s) for s in shape]
        need("num_classes", is_int(opts["num_classes"]) and opts["num_classes"] >= 2, "an integer >= 2")
        need("size", _positive(opts["size"]), "a positive integer")
        need("val_size", opts["val_size"] is None or _positive(opts["val_size"]),
             "a positive integer or null (size // 4)")
        need("data_seed", is_int(opts["data_seed"]), "an integer")
        _check_synthetic_size(opts)
    _check_input_options(name, opts)
    return name, opts


def source_shape(name: str, opts: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one image as the dataset stores it, before ``resize``/``channels``; known from
    the options alone (no file is read)."""
    if name == "digits":
        return (1, 8, 8)
    if name in CIFAR_LAYOUT:
        return (3, 32, 32)
    if name == "imagenet":
        return (3, opts["image_size"], opts["image_size"])
    return tuple(opts["shape"])


def input_shape(name: str, opts: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one input as the model sees it: the source shape after ``resize`` (N x N)
    and ``channels``; from the validated options alone."""
    shape = source_shape(name, opts)
    if len(shape) != 3:
        return shape
    c, h, w = shape
    side = opts.get("resize") if name != "imagenet" else None
    if side is not None:
        h = w = int(side)
    return (int(opts.get("channels") or c), h, w)


def _check_input_options(name: str, opts: dict[str, Any]) -> None:
    """``resize`` is a positive integer or null; ``channels`` 1 or 3 (or null), reachable from the
    dataset's own channels by repeating one channel (1 -> 3) or by leaving them (equal); both
    need images (C, H, W): a flat synthetic shape has no side to resize."""
    shape = source_shape(name, opts)
    image = len(shape) == 3
    if name != "imagenet" and opts["resize"] is not None:
        check("data.resize", opts["resize"], _positive(opts["resize"]),
              "a positive integer N (images resized to N x N) or null (as stored)")
        check("data.resize", opts["resize"], image, "null for inputs that are not images (C, H, W)",
              f"the data's inputs have shape {list(shape)}, no side to resize")
        _check_resized_size(name, opts)
    c = opts["channels"]
    if c is None:
        return
    own = shape[0] if image else None
    reach = "3 (the one channel repeated) or 1" if own == 1 else f"{own} (the data's own)" if own else "null"
    check("data.channels", c, is_int(c) and c in CHANNELS and own is not None and (c == own or own == 1),
          f"{reach} or null", f"the data's images have {own} channel{'s' if own != 1 else ''}; only 1 -> 3 "
          "(repeat) or the same count" if own else f"the data's inputs have shape {list(shape)}, not images")


# images an in-memory dataset holds (train + val), for the size of a resized copy
IMAGES = {"digits": 1797, "cifar10": 60_000, "cifar100": 60_000}


def _check_resized_size(name: str, opts: dict[str, Any]) -> None:
    """The resized images are held in memory (uint8, float32 for digits): refused at spec time
    when they would take more than :data:`MAX_BYTES`, not after minutes of resizing."""
    n = IMAGES.get(name) or int(opts["size"]) + int(opts["val_size"] or int(opts["size"]) // 4)
    c, h, w = input_shape(name, opts)
    need = n * c * h * w * (4 if name == "digits" else 1)
    if need > MAX_BYTES:
        side = int((MAX_BYTES / (n * c * (4 if name == "digits" else 1))) ** 0.5)
        raise bad("data.resize", opts["resize"], f"at most {side} for {name} ({_bytes(MAX_BYTES)} in memory)",
                  f"{n} images of {c}x{h}x{w} would take {_bytes(need)}")


def _check_synthetic_size(opts: dict[str, Any]) -> None:
    """Refuse synthetic data whose tensors exceed ``MAX_BYTES``, naming the bytes and the option to
    lower: the count (num_classes, size, val_size) whose default would shrink them most, or the
    shape when no value of that count makes them fit."""
    parts = footprint(opts)
    total = sum(parts.values())
    if total <= MAX_BYTES:
        return
    default = OPTIONS["synthetic"]

    def fits(key: str, value: Any) -> bool:
        return sum(footprint({**opts, key: value}).values()) <= MAX_BYTES

    key = min(("num_classes", "size", "val_size"), key=lambda k: sum(footprint({**opts, k: default[k]}).values()))
    least = 2 if key == "num_classes" else 1
    if opts[key] is None or not fits(key, least):
        key = "shape"
    accepted = f"sizes whose tensors fit in {_bytes(MAX_BYTES)}"
    if key != "shape":
        lo, hi = least, int(opts[key])
        while hi - lo > 1:   # the largest value of this option that fits, the others as given
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(key, mid) else (lo, mid)
        accepted = f"{key} up to {lo} with these options ({accepted})"
    big = sorted(parts.items(), key=lambda kv: -kv[1])
    raise bad(f"data.{key}", opts[key], accepted,
              f"the synthetic data would take {_bytes(total)} ({total:,} bytes: "
              + ", ".join(f"{k} {_bytes(v)}" for k, v in big) + ")")


def _bytes(n: int) -> str:
    """``160.0 GB``, ``513.0 MB``, ``2.4 KB``: decimal units, as memory sizes are quoted."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n} bytes"
