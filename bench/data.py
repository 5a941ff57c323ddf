"""Datasets: digits (embedded), CIFAR-10/100 (python pickles), ImageNet (ImageFolder, .tar shards), synthetic.

``build_data(cfg, seed, batch_size, augment, device) -> Data`` is the only entry point the
harness uses; ``check_data(cfg)`` validates a data config (names, options, files on disk)
without loading anything, so a spec fails before any training starts.

Small datasets (digits, CIFAR, synthetic) live as one tensor on the training device and are
batched, augmented and normalized there by ``TensorLoader``: no worker processes, no per-image
Python, no host-to-device copy per step. ImageNet streams from disk (section at the bottom):
worker processes read files (or members of WebDataset .tar shards: ``bench.shards``) and, on
the PIL path, decode and crop them; on CUDA the default path decodes whole batches with nvJPEG.
Unreadable images are skipped and counted.

Run ``python -m bench.data`` to measure the ImageNet input pipeline's images/s.
"""
from __future__ import annotations

import io
import logging
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")

# Per-channel statistics of the training sets (the usual published values), so inputs
# match what pretrained weights and published recipes expect.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_CIFAR_LAYOUT = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        expected="the CIFAR-10 python layout: data_batch_1..5, test_batch, batches.meta",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        test="test",
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        expected="the CIFAR-100 python layout: train, test, meta",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    ),
}

# Options each dataset accepts besides ``name`` (value: default). ``root`` is required for
# cifar10/cifar100/imagenet; the others accept only ``root: null``, so a spec may carry a
# uniform root key for every dataset.
_OPTIONS: dict[str, dict[str, Any]] = {
    "digits": {"root": None, "val_fraction": 0.2, "split_seed": None},
    "cifar10": {"root": None},
    "cifar100": {"root": None, "labels": "fine"},
    "imagenet": {
        "root": None,
        "layout": "auto",         # imagefolder | tar | auto (tar when root/train holds .tar files)
        "workers": None,          # DataLoader workers; None -> min(8, cpu count)
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
    },
}


@dataclass
class Data:
    """What a trial trains and evaluates on. ``train``/``val`` yield ``(x, y)`` on the device;
    each ``iter()`` over ``train`` is one new epoch (deterministic given the seed)."""

    train: Iterable[tuple[torch.Tensor, torch.Tensor]]
    val: Iterable[tuple[torch.Tensor, torch.Tensor]]
    input_shape: tuple[int, ...]
    num_classes: int
    steps_per_epoch: int
    name: str = ""
    train_size: int = 0
    val_size: int = 0
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Unreadable files skipped so far (ImageNet); 0 for in-memory datasets."""
        return int(getattr(self.train, "skipped", 0)) + int(getattr(self.val, "skipped", 0))


# --------------------------------------------------------------------------- validation


def _bad(fieldname: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"data.{fieldname}: {value!r} is not accepted; accepted: {accepted}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _options(cfg: dict) -> tuple[str, dict[str, Any]]:
    """Validate names and values (not files); return (name, options with defaults filled)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"data: {cfg!r} is not a mapping; accepted: {{name: one of {', '.join(DATASETS)}, ...}}")
    name = cfg.get("name", "digits")
    if name not in DATASETS:
        raise ValueError(f"data.name: unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    allowed = _OPTIONS[name]
    unknown = sorted(set(cfg) - set(allowed) - {"name"})
    if unknown:
        raise ValueError(
            f"data.{unknown[0]}: unknown option for dataset {name!r}; accepted: "
            f"{', '.join(sorted(allowed)) or '(none)'}"
        )
    opts = {**allowed, **{k: v for k, v in cfg.items() if k != "name"}}

    if name in ("cifar10", "cifar100", "imagenet"):
        if opts["root"] in (None, ""):
            want = _CIFAR_LAYOUT[name]["expected"] if name in _CIFAR_LAYOUT else (
                f"{_IMAGEFOLDER}, or WebDataset shards root/train/*.tar and root/val/*.tar")
            raise ValueError(f"data.root: missing; dataset {name!r} needs root: a folder with {want}")
    elif opts["root"] is not None:
        raise _bad("root", opts["root"], f"null (dataset {name!r} needs no files)")

    if name == "digits":
        vf = opts["val_fraction"]
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
            raise _bad("val_fraction", vf, "a number strictly between 0 and 1")
        if opts["split_seed"] is not None and not _is_int(opts["split_seed"]):
            raise _bad("split_seed", opts["split_seed"], "an integer or null (null: the trial's seed)")
    elif name == "cifar100":
        if opts["labels"] not in ("fine", "coarse"):
            raise _bad("labels", opts["labels"], "fine (100 classes), coarse (20 superclasses)")
    elif name == "imagenet":
        if opts["layout"] not in IMAGENET_LAYOUTS:
            raise _bad("layout", opts["layout"], "auto (tar when root/train holds .tar files), imagefolder, tar")
        if opts["workers"] is not None and not (_is_int(opts["workers"]) and opts["workers"] >= 0):
            raise _bad("workers", opts["workers"], "an integer >= 0 or null")
        if opts["decode"] not in ("auto", "pil", "torchvision"):
            raise _bad("decode", opts["decode"], "auto, pil, torchvision")
        for k in ("image_size", "resize"):
            if not (_is_int(opts[k]) and opts[k] > 0):
                raise _bad(k, opts[k], "a positive integer")
        if opts["resize"] < opts["image_size"]:
            raise _bad("resize", opts["resize"], f"an integer >= image_size ({opts['image_size']})")
        for k in ("train_per_class", "val_per_class"):
            if opts[k] is not None and not (_is_int(opts[k]) and opts[k] > 0):
                raise _bad(k, opts[k], "a positive integer or null (all files)")
    elif name == "synthetic":
        shape = opts["shape"]
        if (not isinstance(shape, (list, tuple)) or not shape
                or not all(_is_int(s) and s > 0 for s in shape)):
            raise _bad("shape", shape, "a non-empty list of positive integers, e.g. [3, 32, 32] or [64]")
        opts["shape"] = [int(s) for s in shape]
        nc = opts["num_classes"]
        if not (_is_int(nc) and nc >= 2):
            raise _bad("num_classes", nc, "an integer >= 2")
        if not (_is_int(opts["size"]) and opts["size"] > 0):
            raise _bad("size", opts["size"], "a positive integer")
        if opts["val_size"] is not None and not (_is_int(opts["val_size"]) and opts["val_size"] > 0):
            raise _bad("val_size", opts["val_size"], "a positive integer or null (size // 4)")
        if not _is_int(opts["data_seed"]):
            raise _bad("data_seed", opts["data_seed"], "an integer")
    return name, opts


def _cifar_dir(name: str, root: str | os.PathLike) -> Path:
    """The folder holding the pickles: ``root`` itself or its standard sub-folder."""
    root = Path(root).expanduser()
    sub = root / _CIFAR_LAYOUT[name]["folder"]
    return sub if sub.is_dir() else root


def check_data(cfg: dict) -> None:
    """Validate a data config and the files it points at, without loading any data.

    Raises ValueError with one line naming the field, the bad value and what is accepted
    (or the missing file and the expected layout)."""
    name, opts = _options(cfg)
    if name in _CIFAR_LAYOUT:
        lay = _CIFAR_LAYOUT[name]
        root = Path(opts["root"]).expanduser()
        if not root.is_dir():
            raise ValueError(
                f"data.root: {root} {'is not a folder' if root.exists() else 'does not exist'} "
                f"(expected {lay['expected']})")
        folder = _cifar_dir(name, root)
        for fname in [*lay["train"], lay["test"], lay["meta"]]:
            if not (folder / fname).is_file():
                raise ValueError(f"data.root: {folder} has no {fname} (expected {lay['expected']})")
    elif name == "imagenet":
        root, layout = _imagenet_root(opts)
        if layout == "tar":
            from bench import shards

            shards.check_shards(root)
        else:
            _imagenet_classes(root)


def describe(cfg: dict) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_classes) of a data config without loading any data, so a spec can
    check a pretrained file against the model its trials will build. Validates as ``check_data``."""
    check_data(cfg)
    name, opts = _options(cfg)
    if name == "digits":
        return (1, 8, 8), 10
    if name in _CIFAR_LAYOUT:
        nc = 20 if name == "cifar100" and opts["labels"] == "coarse" else _CIFAR_LAYOUT[name]["num_classes"]
        return (3, 32, 32), nc
    if name == "imagenet":
        root, layout = _imagenet_root(opts)
        if layout == "tar":
            from bench import shards

            classes = shards.shard_classes(root)
        else:
            classes = _imagenet_classes(root)
        return (3, opts["image_size"], opts["image_size"]), len(classes)
    return tuple(opts["shape"]), int(opts["num_classes"])


# --------------------------------------------------------------------------- in-memory loader


class CropFlip:
    """Batched random crop (zero padding ``pad``, same output size) and optional horizontal flip,
    done on the tensor's device with one gather, no per-image Python.

    ``sample`` draws the random parameters for a batch; ``apply`` uses them. They are separate
    so a data-parallel rank can draw for the global batch and apply its own slice, which makes
    a sharded epoch see exactly the same augmented samples as a single-process one."""

    def __init__(self, pad: int, flip: bool):
        self.pad, self.flip = int(pad), bool(flip)

    def sample(self, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        # columns: y offset, x offset, flip (0/1); all integers in one tensor
        offs = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g, device=device)
        flips = (torch.rand(n, generator=g, device=device) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool, device=device)
        return torch.cat([offs, flips.long()[:, None]], dim=1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        if p > 0:
            wp = w + 2 * p
            xp = F.pad(x, (p, p, p, p))
            rows = params[:, 0:1] + torch.arange(h, device=x.device)          # (B, H)
            cols = params[:, 1:2] + torch.arange(w, device=x.device)          # (B, W)
            idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
            x = xp.reshape(b, c, -1).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)
        if self.flip:
            x = torch.where(params[:, 2].bool()[:, None, None, None], x.flip(3), x)
        return x


class TensorLoader:
    """Re-iterable batches over tensors that already live on the training device.

    Each ``iter()`` is one epoch; the order and augmentation of epoch ``e`` depend only on
    ``(seed, e)`` (see ``set_epoch``), so a resumed trial replays the same epochs.
    ``x`` is stored raw (uint8 or float in [0, 1]); augmentation runs on the raw values (so
    crop padding is black, as in torchvision's pipeline) and normalization last.
    ``rank``/``world_size`` shard each global batch of ``batch_size * world_size`` samples."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        augment: CropFlip | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        scale: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"train.batch_size: {batch_size!r} is not accepted; accepted: an integer >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not accepted; accepted: 0 <= rank < world_size ({world_size})")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.augment, self.rank, self.world_size = augment, rank, world_size
        self.scale = scale
        n, gb = len(x), self.batch_size * world_size
        # drop the ragged last batch when training (a batch of 1 breaks batch norm), unless
        # the dataset is smaller than one batch
        self.drop_last = drop_last and n >= gb
        self.steps = n // gb if self.drop_last else math.ceil(n / gb)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape) if mean else None
        self.std = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape) if std else None
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (for resuming)."""
        self.epoch = int(epoch)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def _generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.x.device)
        g.manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return g

    def _finish(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.float()
        if self.scale != 1.0:
            xb = xb * self.scale
        if self.mean is not None:
            xb = (xb - self.mean) / self.std
        return xb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, dev = len(self.x), self.x.device
        g = self._generator(epoch)
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        gb = self.batch_size * self.world_size
        for i in range(self.steps):
            idx = order[i * gb:(i + 1) * gb]
            params = self.augment.sample(len(idx), g, dev) if self.augment is not None else None
            if self.world_size > 1:
                # contiguous chunk per rank; the last ragged global batch splits evenly-ish
                per = math.ceil(len(idx) / self.world_size)
                sl = slice(self.rank * per, (self.rank + 1) * per)
                idx = idx[sl]
                params = params[sl] if params is not None else None
                if len(idx) == 0:          # a tiny ragged last batch may leave a rank nothing
                    continue
            # index_select on the 2-D view: on CPU, gathering whole rows of the N-D uint8 tensor
            # is ~50x slower than gathering rows of its (N, C*H*W) view
            xb = self.x.reshape(n, -1).index_select(0, idx).view(len(idx), *self.x.shape[1:])
            if params is not None:
                xb = self.augment.apply(xb, params)
            yield self._finish(xb), self.y.index_select(0, idx)


# --------------------------------------------------------------------------- small datasets


def _digits(opts: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)    # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    split_seed = seed if opts["split_seed"] is None else opts["split_seed"]
    tr, va = train_test_split(
        np.arange(len(y)), test_size=opts["val_fraction"], stratify=d.target, random_state=int(split_seed) % (2**32)
    )
    return x[tr], y[tr], x[va], y[va], [str(n) for n in d.target_names]


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # a truncated download shows up here, name the file
        raise ValueError(f"data.root: {path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


def _cifar_part(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    if b"data" not in d or label_key not in d:
        raise ValueError(
            f"data.root: {path} lacks key {b'data' if b'data' not in d else label_key!r}; "
            f"has {sorted(d)} (expected a CIFAR python pickle)")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"data.root: {path} has data of shape {data.shape} and {len(labels)} labels "
            f"(expected N x 3072 uint8 and N labels)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"data.root: {path} has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(name: str, opts: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    check_data({"name": name, **opts})
    lay = _CIFAR_LAYOUT[name]
    folder = _cifar_dir(name, opts["root"])
    label_key, names_key, nc = lay["label_key"], lay["names_key"], lay["num_classes"]
    if name == "cifar100" and opts["labels"] == "coarse":
        label_key, names_key, nc = b"coarse_labels", b"coarse_label_names", 20
    parts = [_cifar_part(folder / f, label_key, nc) for f in lay["train"]]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xva, yva = _cifar_part(folder / lay["test"], label_key, nc)
    meta = _read_pickle(folder / lay["meta"])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if len(names) != nc:
        names = [str(i) for i in range(nc)]
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xva), torch.from_numpy(yva), names)


def _synthetic(opts: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs whose label is the argmax of a fixed random linear map of the input, so a
    model can learn it (accuracy above chance shows the loop works) while speed runs stay cheap.
    Image shapes (C, H, W) are stored as uint8 like real images; other shapes as float32."""
    shape, nc = tuple(opts["shape"]), opts["num_classes"]
    n_tr = opts["size"]
    n_va = opts["val_size"] or max(1, n_tr // 4)
    g = torch.Generator().manual_seed(int(opts["data_seed"]))
    n = n_tr + n_va
    if len(shape) == 3:
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        feats = x.float().div_(255.0).sub_(0.5)
    else:
        x = torch.randn((n, *shape), generator=g)
        feats = x
    # label from a low-dimensional projection (per-channel means for images) so it survives
    # crops/flips and is learnable by small models
    if len(shape) == 3:
        feats = feats.mean(dim=(2, 3))
    feats = feats.reshape(n, -1)
    w = torch.randn(feats.shape[1], nc, generator=g)
    y = (feats @ w).argmax(dim=1)
    return x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:]


# --------------------------------------------------------------------------- entry point


def build_data(cfg: dict, seed: int, batch_size: int, augment: bool, device: str | torch.device = "cpu",
               *, rank: int = 0, world_size: int = 1) -> Data:
    """Load the dataset named by ``cfg["name"]`` and return train/val iterables on ``device``.

    ``seed`` fixes the train order and augmentation (and the digits split unless
    ``split_seed`` is given); ``augment`` turns on the dataset's standard augmentation.
    For data-parallel training, ``rank``/``world_size`` give each rank its share of every
    global batch of ``batch_size * world_size`` (``batch_size`` is per rank); on the in-memory
    datasets the shares together are exactly the single-process batch, augmentation included."""
    name, opts = _options(cfg)
    device = torch.device(device)
    if not (_is_int(world_size) and world_size >= 1 and _is_int(rank) and 0 <= rank < world_size):
        raise ValueError(f"rank/world_size: {rank}/{world_size} is not accepted; accepted: 0 <= rank < world_size")
    if name == "imagenet":
        return _imagenet_data(opts, seed, batch_size, augment, device, rank, world_size)

    names: list[str] | None = None
    mean = std = None
    scale = 1.0
    aug: CropFlip | None = None
    if name == "digits":
        xtr, ytr, xva, yva, names = _digits(opts, seed)
        # scalar statistics of the training split: digits are one channel
        mean, std = (float(xtr.mean()),), (float(xtr.std()),)
        aug = CropFlip(pad=1, flip=False)           # shifts only: a mirrored digit is another glyph
        nc = 10
    elif name in _CIFAR_LAYOUT:
        xtr, ytr, xva, yva, names = _cifar(name, opts)
        lay = _CIFAR_LAYOUT[name]
        mean, std, scale = lay["mean"], lay["std"], 1.0 / 255.0
        aug = CropFlip(pad=4, flip=True)
        nc = len(names)
    else:  # synthetic
        xtr, ytr, xva, yva = _synthetic(opts)
        nc = opts["num_classes"]
        if xtr.dim() == 4:
            c = xtr.shape[1]
            mean, std, scale = (0.5,) * c, (0.2887,) * c, 1.0 / 255.0   # uniform [0,1]: std 1/sqrt(12)
            aug = CropFlip(pad=max(1, xtr.shape[2] // 8), flip=True)
        else:
            aug = None                              # no spatial structure to augment

    xtr, ytr, xva, yva = (t.to(device) for t in (xtr, ytr, xva, yva))
    shard = dict(rank=rank, world_size=world_size)
    train = TensorLoader(xtr, ytr, batch_size, shuffle=True, drop_last=True, seed=seed,
                         augment=aug if augment else None, mean=mean, std=std, scale=scale, **shard)
    # val shards are contiguous slices without padding: gathered metrics count each image once
    val = TensorLoader(xva, yva, batch_size, shuffle=False, drop_last=False, seed=seed,
                       mean=mean, std=std, scale=scale, **shard)
    return Data(train=train, val=val, input_shape=tuple(xtr.shape[1:]), num_classes=nc,
                steps_per_epoch=len(train), name=name, train_size=len(xtr), val_size=len(xva),
                class_names=names)


# --------------------------------------------------------------------------- ImageNet

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_LAYOUTS = ("auto", "imagefolder", "tar")
_IMAGEFOLDER = "an ImageFolder tree root/train/<class>/*.JPEG and root/val/<class>/*"


def _imagenet_root(opts: dict) -> tuple[Path, str]:
    """(root, layout) with ``auto`` resolved; an explicit ``imagefolder`` over shards is named
    here, where the reason is known, rather than as a missing class folder."""
    from bench import shards

    root = Path(opts["root"]).expanduser()
    layout = shards.resolve_layout(root, opts["layout"])
    train = root / "train"
    if layout == "imagefolder" and train.is_dir() and shards.tar_files(train) and not _class_dirs(train):
        raise _bad("layout", layout, f"tar or auto ({train} holds .tar shards, no class folders)")
    return root, layout


def _class_dirs(split: Path) -> list[str]:
    with os.scandir(split) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _imagenet_classes(root: Path) -> list[str]:
    """Check the ImageFolder layout (folders only: listing 1.3M files is not a check) and
    return the class names, sorted, as torchvision's ImageFolder numbers them."""
    if not root.is_dir():
        raise ValueError(f"data.root: {root} {'is not a folder' if root.exists() else 'does not exist'} "
                         f"(expected {_IMAGEFOLDER})")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"data.root: {root} has no {split}/ folder (expected {_IMAGEFOLDER})")
    classes = _class_dirs(root / "train")
    if not classes:
        raise ValueError(f"data.root: {root / 'train'} has no class folders (expected {_IMAGEFOLDER})")
    val = _class_dirs(root / "val")
    if not val:
        with os.scandir(root / "val") as it:
            loose = any(e.is_file() for e in it)
        hint = (": it holds loose images; sort the ILSVRC val images into one folder per class "
                "(e.g. with the usual valprep.sh)") if loose else ""
        raise ValueError(f"data.root: {root / 'val'} has no class folders{hint} (expected {_IMAGEFOLDER})")
    extra = sorted(set(val) - set(classes))
    if extra:
        raise ValueError(f"data.root: {root / 'val'} has class folder {extra[0]!r} that train/ lacks "
                         f"({len(extra)} such; val classes must be train classes)")
    return classes


def _scan(split_dir: Path, classes: list[str], per_class: int | None) -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        d = split_dir / cls
        if not d.is_dir():
            continue            # a val/ without some train class is fine
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        samples += [(os.path.join(d, n), label) for n in names[:per_class]]
    if not samples:
        raise ValueError(f"data.root: {split_dir} has no image files in its class folders "
                         f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return samples


class ImageFolderSamples(torch.utils.data.Dataset):
    """A fault-tolerant ImageFolder. Each item is ``(payload, label, path, error)``:

    * ``raw_bytes=False``: the image decoded by PIL, converted to RGB (CMYK, grayscale,
      palette and alpha images all become 3-channel) and passed through ``transform``
      (which returns a uint8 CHW tensor);
    * ``raw_bytes=True``: the file's bytes as a uint8 tensor, decoded later in batches.

    An unreadable file (truncated, corrupt, not an image) gives ``payload=None`` and the error
    text instead of an exception, so one bad file never kills an epoch; ``collate_samples``
    drops it and the loader counts it."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable | None = None, raw_bytes: bool = False):
        if not raw_bytes and transform is None:
            raise ValueError("ImageFolderSamples: transform is required unless raw_bytes=True")
        self.samples, self.transform, self.raw_bytes = samples, transform, raw_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str, str | None]:
        path, label = self.samples[i]
        return load_sample(Path(path).read_bytes, label, path, None if self.raw_bytes else self.transform)


def load_sample(read: Callable[[], bytes], label: int, name: str,
                transform: Callable | None) -> tuple[torch.Tensor | None, int, str, str | None]:
    """One ImageNet item, ``(payload, label, name, error)``, from a file's bytes (an ImageFolder
    file or a shard member: one code path, so both layouts convert and skip alike).
    ``transform=None``: the bytes as a uint8 tensor, decoded later in batches; else PIL's
    decode converted to RGB and passed through ``transform``. Any failure, reading included,
    gives ``payload=None`` and the error text."""
    from PIL import Image

    try:
        data = read()
        if not data:
            raise OSError("empty file")
        if transform is None:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, name, None
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")              # forces the full decode: truncation raises here
        return transform(rgb), label, name, None
    except Exception as e:                       # PIL raises OSError, SyntaxError, ValueError, ...
        return None, label, name, f"{type(e).__name__}: {e}"


def collate_samples(batch: list) -> tuple[Any, torch.Tensor, list[str], list[tuple[str, str]]]:
    """(payload, labels, paths, bad): payload is a stacked uint8 batch for decoded images or a
    list of byte tensors for ``raw_bytes``; ``bad`` lists (path, error) of skipped files."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[3]) for b in batch if b[0] is None]
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    items = [b[0] for b in good]
    payload: Any = items
    if items and items[0].dim() == 3:
        payload = torch.stack(items)
    elif not items:
        payload = torch.empty(0, dtype=torch.uint8)
    return payload, labels, [b[2] for b in good], bad


class EpochSampler(torch.utils.data.Sampler[int]):
    """Index order of epoch ``e`` depends only on (seed, e); optionally one rank's share.

    ``pad``: every rank gets the same number of indices, the last ones wrapping around (as
    DistributedSampler does), which training needs (DDP steps in lockstep). Evaluation does not:
    with ``pad=False`` the shares are disjoint and cover every index once, so metrics summed over
    ranks count each image exactly once."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1 and self.pad:   # wrap so every rank gets the same number of steps
            total = len(self) * self.world_size
            order = torch.cat([order, order[: total - self.n]])[self.rank::self.world_size]
        elif self.world_size > 1:
            order = order[self.rank::self.world_size]
        return iter(order.tolist())


def _jpeg_components(data: bytes) -> int | None:
    """Number of colour components in a JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK/YCCK),
    or None when ``data`` is not a JPEG or the header is not within the given bytes."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[i + 9] if i + 9 < n else None      # SOFn: len(2) P(1) Y(2) X(2) Nf(1)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


class TensorDecoder:
    """Batched ``torchvision.io`` decoding and ImageNet crops on ``device``.

    On CUDA the JPEGs of a batch go to nvJPEG in one ``decode_jpeg(list, device="cuda")``
    call; what nvJPEG should not or cannot take (CMYK/YCCK JPEGs, PNGs and other formats, a
    batch that fails) is decoded one by one on the CPU by libjpeg/libpng, then PIL, and an
    image nothing can decode is reported as bad. Crops and resizes (antialiased bilinear, as
    torchvision's RandomResizedCrop / Resize do on tensors) run per image on the device.
    Returns images with values in [0, 255] (uint8 on CPU, float on CUDA); normalization is
    the loader's job."""

    def __init__(self, device: torch.device, train: bool, size: int = 224, resize: int = 256, seed: int = 0):
        import random

        self.device, self.train, self.size, self.resize = torch.device(device), train, size, resize
        self.rng = random.Random(seed)          # crop boxes are scalar draws: Python's RNG is cheapest
        self.batch_failures = 0

    def _decode_cpu(self, data: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image

        try:
            return decode_image(data, mode=ImageReadMode.RGB)
        except Exception:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
                arr = np.asarray(im.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def decode(self, datas: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        # torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec and warns
        # on every call; the functions still work, so keep the log readable
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            return self._decode(datas)

    def _decode(self, datas: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | None] = [None] * len(datas)
        errors: dict[int, str] = {}
        plain = [i for i, d in enumerate(datas) if _jpeg_components(d[:262144].numpy().tobytes()) in (1, 3)]
        rest = sorted(set(range(len(datas))) - set(plain))
        if plain:
            try:
                dec = decode_jpeg([datas[i] for i in plain], mode=ImageReadMode.RGB, device=self.device)
                for i, t in zip(plain, dec):
                    out[i] = t
            except Exception as e:               # one bad file fails the whole batched call
                self.batch_failures += 1
                if self.batch_failures == 1:
                    log.warning("imagenet: batched decode_jpeg on %s failed (%s); decoding that batch "
                                "image by image on the CPU", self.device, e)
                rest = sorted(rest + plain)
        for i in rest:
            try:
                out[i] = self._decode_cpu(datas[i]).to(self.device, non_blocking=True)
            except Exception as e:
                errors[i] = f"{type(e).__name__}: {e}"
        return out, errors

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params (scale 0.08..1, ratio 3/4..4/3)."""
        area = h * w
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        for _ in range(10):
            target = area * self.rng.uniform(0.08, 1.0)
            aspect = math.exp(self.rng.uniform(lo, hi))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return self.rng.randint(0, h - ch), self.rng.randint(0, w - cw), ch, cw
        ratio = w / h
        if ratio < 3 / 4:
            cw, ch = w, int(round(w / (3 / 4)))
        elif ratio > 4 / 3:
            ch, cw = h, int(round(h * (4 / 3)))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # CPU has a fast uint8 antialiased bilinear kernel (~4x the float one, and the same
        # rounding as torchvision's uint8 path); CUDA implements the antialiased kernel for
        # floating types only
        if x.device.type != "cpu":
            x = x.float()
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def transform(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        s = self.size
        if self.train:
            i, j, ch, cw = self._crop_box(h, w)
            x = self._resize(img[None, :, i:i + ch, j:j + cw], (s, s))
            if self.rng.random() < 0.5:
                x = x.flip(-1)
            return x[0]
        # Resize(shorter side = resize) then CenterCrop(size), as torchvision computes them
        if h <= w:
            nh, nw = self.resize, int(self.resize * w / h)
        else:
            nh, nw = int(self.resize * h / w), self.resize
        x = self._resize(img[None], (nh, nw))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return x[0, :, top:top + s, left:left + s]

    def __call__(self, datas: list[torch.Tensor]) -> tuple[torch.Tensor, list[int], dict[int, str]]:
        imgs, errors = self.decode(datas)
        keep = [i for i, im in enumerate(imgs) if im is not None]
        if not keep:
            return torch.empty(0, 3, self.size, self.size, device=self.device), keep, errors
        return torch.stack([self.transform(imgs[i]) for i in keep]), keep, errors


class StreamLoader:
    """Re-iterable ImageNet batches on ``device``: a DataLoader with persistent workers that
    read (and, on the PIL path, decode and crop) files, an optional batched ``TensorDecoder``
    in the main process, then uint8 -> float and normalization on the device.

    ``skipped`` counts images dropped because they could not be read (each occurrence);
    ``skipped_files`` maps each such path to its error, logged once per file."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,     # ImageFolderSamples or shards.TarSamples
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        workers: int,
        device: torch.device,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        decoder: TensorDecoder | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        self.device, self.decoder = torch.device(device), decoder
        self.sampler = EpochSampler(len(dataset), shuffle, seed, rank, world_size, pad=pad)
        drop_last = drop_last and len(self.sampler) >= batch_size
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate_samples, drop_last=drop_last,
            pin_memory=self.device.type == "cuda" and decoder is None,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),     # seeds the workers' augmentation RNG
        )
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.epoch = 0
        self.skipped = 0
        self.skipped_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _skip(self, path: str, err: str) -> None:
        self.skipped += 1
        if path not in self.skipped_files:
            self.skipped_files[path] = err
            log.warning("imagenet: skipped unreadable image %s (%s); %d skipped so far", path, err, self.skipped)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for payload, y, paths, bad in self.loader:
            for path, err in bad:
                self._skip(path, err)
            if self.decoder is not None and len(y):
                payload, keep, errors = self.decoder(payload)
                for i, err in errors.items():
                    self._skip(paths[i], err)
                y = y[keep]
            if len(y) == 0:
                continue
            x = payload.to(self.device, non_blocking=True).float().mul_(1.0 / 255.0)
            yield (x - self.mean) / self.std, y.to(self.device, non_blocking=True)


def _imagenet_data(opts: dict, seed: int, batch_size: int, augment: bool, device: torch.device,
                   rank: int = 0, world_size: int = 1) -> Data:
    from torchvision import transforms as T

    root, layout = _imagenet_root(opts)
    samples: Callable[..., torch.utils.data.Dataset]
    if layout == "tar":
        from bench import shards

        train_s, val_s, classes = shards.load_splits(root, opts["train_per_class"], opts["val_per_class"])
        samples = shards.TarSamples
    else:
        classes = _imagenet_classes(root)
        train_s = _scan(root / "train", classes, opts["train_per_class"])
        val_s = _scan(root / "val", classes, opts["val_per_class"])
        samples = ImageFolderSamples
    decode = opts["decode"]
    if decode == "auto":
        decode = "torchvision" if device.type == "cuda" else "pil"
    workers = opts["workers"] if opts["workers"] is not None else min(8, os.cpu_count() or 1)
    size, resize = opts["image_size"], opts["resize"]
    if decode == "pil":
        val_t = T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])
        train_t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()]) if augment else val_t
        dtr, dva = samples(train_s, train_t), samples(val_s, val_t)
        dec_tr = dec_va = None
    else:
        dtr, dva = samples(train_s, raw_bytes=True), samples(val_s, raw_bytes=True)
        dec_tr = TensorDecoder(device, train=augment, size=size, resize=resize, seed=seed)
        dec_va = TensorDecoder(device, train=False, size=size, resize=resize, seed=seed)
    common = dict(seed=seed, workers=workers, device=device, rank=rank, world_size=world_size)
    train = StreamLoader(dtr, batch_size, shuffle=True, drop_last=True, decoder=dec_tr, **common)
    # val shards are disjoint and unpadded (evaluation runs outside DDP, so ranks need not take
    # equal steps): metrics summed over ranks count every val image exactly once
    val = StreamLoader(dva, batch_size, shuffle=False, drop_last=False, decoder=dec_va, pad=False, **common)
    return Data(train=train, val=val, input_shape=(3, size, size), num_classes=len(classes),
                steps_per_epoch=len(train), name="imagenet", train_size=len(train_s), val_size=len(val_s),
                class_names=classes, info={"decode": decode, "workers": workers, "layout": layout})


# --------------------------------------------------------------------------- input-pipeline benchmark


def write_fake_imagefolder(root: str | os.PathLike, classes: int = 4, per_class: int = 16, val_per_class: int = 4,
                           size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> Path:
    """Write an ImageFolder tree of real JPEGs of ImageNet-like size and file size (smooth
    random content, so files compress to ~tens of KB like photos, not like white noise)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                low = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
                img = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
                img = np.clip(img + rng.integers(-8, 9, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img_{k:05d}.JPEG", quality=quality)
    return root


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


def fake_imagefolder(root: str | os.PathLike, images: int, classes: int = 8,
                     size: tuple[int, int] = (500, 375)) -> Path:
    """``root`` as an ImageFolder of ``images`` train JPEGs (``size`` = width x height) over
    ``classes`` classes and one val image per class, written unless ``root`` already holds a
    train/ tree (so repeated probes reuse one set of files)."""
    root = Path(root)
    if (root / "train").is_dir() and any((root / "train").iterdir()):
        return root
    return write_fake_imagefolder(root, classes=classes, per_class=max(1, images // classes), val_per_class=1,
                                  size=size)


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
            from bench.shards import imagefolder_to_shards, tar_files

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


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench.data",
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
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(8, cpus))")
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
        from bench.shards import imagefolder_to_shards

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
            # ABBA order: a drift in machine load (2 shared cores) biases neither layout
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

        from bench.measure import train_step_throughput

        model = getattr(torchvision.models, a.step_model)(num_classes=1000)
        r = train_step_throughput(model, (3, 224, 224), batch=a.batch_size, device=a.device,
                                  steps=a.batches, warmup=min(5, a.batches))
        print(json.dumps({"step_model": a.step_model, **r}))


if __name__ == "__main__":
    _main()
