"""ImageNet: which layout a root holds (ImageFolder or WebDataset shards), its check and class
names, and the streamed train/val loaders built over either layout.

Worker processes read files (or members of shards) and, on the PIL path, decode and crop them;
the ``torchvision`` path decodes whole batches on the device (nvJPEG on CUDA).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from rankbench.bench.checks import bad

from . import shards
from .base import Data, usable_cpus
from .decode import TensorDecoder
from .imagefolder import ImageFolderSamples, check_decodable, class_dirs, imagefolder_classes, scan
from .stream import Sampling, StreamLoader

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_LAYOUTS = ("auto", "imagefolder", "tar")


def imagenet_root(opts: dict) -> tuple[Path, str]:
    """(root, layout) with ``auto`` resolved; an explicit ``imagefolder`` over shards is named
    here, where the reason is known, rather than as a missing class folder."""
    root = Path(opts["root"]).expanduser()
    layout = shards.resolve_layout(root, opts["layout"])
    train = root / "train"
    if layout == "imagefolder" and train.is_dir() and shards.tar_files(train) and not class_dirs(train):
        raise bad("data.layout", layout, f"tar or auto ({train} holds .tar shards, no class folders)")
    return root, layout


def check_imagenet(opts: dict) -> None:
    """The root's layout: folders and class names (at least 2), and one decodable image per split
    of an ImageFolder (a shard root without classes.txt is indexed, see ``shards.shard_classes``)."""
    root, layout = imagenet_root(opts)
    if layout == "tar":
        shards.check_shards(root)
    else:
        classes = imagefolder_classes(root)
        for split in ("train", "val"):
            check_decodable(root / split, classes)


def imagenet_classes(opts: dict) -> list[str]:
    """Class names, index = label, without building a loader."""
    root, layout = imagenet_root(opts)
    return shards.shard_classes(root) if layout == "tar" else imagefolder_classes(root)


def imagenet_data(opts: dict, seed: int, batch_size: int, augment: bool, device: torch.device,
                  rank: int = 0, world_size: int = 1) -> Data:
    """Streamed train/val loaders over the root's layout; ``decode: auto`` is torchvision on CUDA,
    PIL elsewhere; ``workers: null`` is min(8, the CPUs this process may use)."""
    from torchvision import transforms as T

    root, layout = imagenet_root(opts)
    samples: Callable[..., torch.utils.data.Dataset]
    if layout == "tar":
        train_s, val_s, classes = shards.load_splits(root, opts["train_per_class"], opts["val_per_class"])
        samples = shards.TarSamples
    else:
        classes = imagefolder_classes(root)
        train_s = scan(root / "train", classes, opts["train_per_class"])
        val_s = scan(root / "val", classes, opts["val_per_class"])
        samples = ImageFolderSamples
    decode = opts["decode"]
    if decode == "auto":
        decode = "torchvision" if device.type == "cuda" else "pil"
    workers = opts["workers"] if opts["workers"] is not None else min(8, usable_cpus())
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
    common = dict(workers=workers, device=device, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    shard = dict(seed=seed, rank=rank, world_size=world_size)
    train = StreamLoader(dtr, batch_size, sampling=Sampling(shuffle=True, **shard), drop_last=True,
                         decoder=dec_tr, **common)
    # val shards are disjoint and unpadded (evaluation runs outside DDP, so ranks need not take
    # equal steps): metrics summed over ranks count every val image exactly once
    val = StreamLoader(dva, batch_size, sampling=Sampling(shuffle=False, pad=False, **shard),
                       drop_last=False, decoder=dec_va, **common)
    return Data(train=train, val=val, input_shape=(3, size, size), num_classes=len(classes),
                steps_per_epoch=len(train), name="imagenet", train_size=len(train_s), val_size=len(val_s),
                class_names=classes, info={"decode": decode, "workers": workers, "layout": layout})
