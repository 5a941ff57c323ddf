"""CIFAR-10 and CIFAR-100 from the official python pickles, held in memory as uint8."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .base import bad_path
from .memory import CropFlip, Splits

# Per-channel statistics of the training sets (the usual published values), so inputs
# match what pretrained weights and published recipes expect.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# What the official TRP code (cifar-TRP.py, from bearpaw/pytorch-classification) normalises
# both CIFAR-10 and CIFAR-100 with: CIFAR-10's mean, and a std that is not the training set's
# per-channel std. ``data: {normalize: official}`` selects it, so a paper spec sees the inputs
# the published numbers were trained on.
OFFICIAL_MEAN, OFFICIAL_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# data.normalize: "dataset" (default, the statistics above) or "official"
NORMALIZE = ("dataset", "official")

CIFAR_LAYOUT = {
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
PICKLE = "a CIFAR python pickle (N x 3072 uint8 data and N labels)"


def cifar_dir(name: str, root: str | os.PathLike) -> Path:
    """The folder holding the pickles: ``root`` itself or its standard sub-folder."""
    root = Path(root).expanduser()
    sub = root / CIFAR_LAYOUT[name]["folder"]
    return sub if sub.is_dir() else root


def cifar_classes(name: str, labels: str = "fine") -> int:
    """Number of classes: 10, 100, or CIFAR-100's 20 superclasses with ``labels: coarse``."""
    return 20 if name == "cifar100" and labels == "coarse" else CIFAR_LAYOUT[name]["num_classes"]


def check_cifar(name: str, root: str | os.PathLike, labels: str = "fine", read: bool = True) -> None:
    """Every pickle of the layout is present and, with ``read``, loads with the right shapes and
    label range (a truncated download is named here, before any trial starts; the whole dataset
    is under 200 MB, read in about a second)."""
    lay = CIFAR_LAYOUT[name]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise bad_path(root, "is not a folder" if root.exists() else "does not exist", lay["expected"])
    folder = cifar_dir(name, root)
    for fname in [*lay["train"], lay["test"], lay["meta"]]:
        if not (folder / fname).is_file():
            raise bad_path(folder, f"has no {fname}", lay["expected"])
    if read:
        label_key, nc = lay["label_key"], lay["num_classes"]
        if name == "cifar100" and labels == "coarse":
            label_key, nc = b"coarse_labels", 20
        for fname in [*lay["train"], lay["test"]]:
            _cifar_part(folder / fname, label_key, nc)
        _read_pickle(folder / lay["meta"])


# The only globals a CIFAR pickle names: numpy's array and dtype and their reconstructors (the
# official archive's Python 2 pickles, and numpy's own pickles at protocols 2 to 5). Everything
# else in the format (dicts, lists, bytes, numbers) needs no global. A file that names any other
# is refused before anything it names is imported, let alone called: a pickle from shared
# storage never runs code.
CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),   # a protocol-2 pickle written by Python 3 spells bytes as encode(str, "latin1")
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class _DataOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR pickle never does "
                                         "(refused unloaded: unpickling it could run code)")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _DataOnly(f, encoding="bytes").load()
    except Exception as e:  # a truncated download shows up here, name the file
        raise bad_path(path, f"not a readable CIFAR pickle ({type(e).__name__}: {str(e)[:120]})", PICKLE) from e


def _cifar_part(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    if not isinstance(d, dict):
        raise bad_path(path, f"holds a {type(d).__name__}, not a dict", PICKLE)
    if b"data" not in d or label_key not in d:
        lacks = b"data" if b"data" not in d else label_key
        raise bad_path(path, f"lacks key {lacks!r} (has {sorted(d)})", PICKLE)
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8:   # the format's pixels are bytes: a float array is another format
        raise bad_path(path, f"has data of dtype {data.dtype}", "uint8 pixels (0-255), as the official archive")
    labels = np.asarray(d[label_key])
    if labels.size and labels.dtype.kind not in "iu":
        raise bad_path(path, f"has labels of dtype {labels.dtype}", "integer labels")
    labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise bad_path(path, f"has data of shape {data.shape} and {len(labels)} labels", PICKLE)
    if not len(data):   # an empty test batch would report the accuracy of nothing
        raise bad_path(path, "holds no images", PICKLE)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise bad_path(path, "has labels outside that range", f"labels 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, opts: dict) -> Splits:
    """The official train batches and test batch (as val, in file order), with the class names
    of the meta file; randomly cropped (4 pixels of zero padding) and flipped when augmented;
    normalised with the training set's statistics, or TRP's (``normalize: official``)."""
    check_cifar(name, opts["root"], read=False)   # the parts are read (and checked) below
    lay = CIFAR_LAYOUT[name]
    folder = cifar_dir(name, opts["root"])
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
    mean, std = (OFFICIAL_MEAN, OFFICIAL_STD) if opts.get("normalize") == "official" else (lay["mean"], lay["std"])
    return Splits(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xva), torch.from_numpy(yva),
                  num_classes=len(names), class_names=names, mean=mean, std=std, scale=1.0 / 255.0,
                  augment=CropFlip(pad=4, flip=True))
