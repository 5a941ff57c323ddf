"""ImageNet as an ImageFolder tree (root/train/<class>/*, root/val/<class>/*): the layout check,
the class names, the file listing and the fault-tolerant ``Dataset`` over it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .base import bad_path
from .decode import load_sample

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGEFOLDER = "an ImageFolder tree root/train/<class>/*.JPEG and root/val/<class>/*"


def class_dirs(split: Path) -> list[str]:
    """The sub-folders of ``split`` (hidden ones aside), sorted."""
    with os.scandir(split) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def imagefolder_classes(root: Path) -> list[str]:
    """Check the ImageFolder layout (folders only: listing 1.3M files is not a check) and
    return the class names, sorted, as torchvision's ImageFolder numbers them."""
    if not root.is_dir():
        raise bad_path(root, "is not a folder" if root.exists() else "does not exist", IMAGEFOLDER)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise bad_path(root, f"has no {split}/ folder", IMAGEFOLDER)
    classes = class_dirs(root / "train")
    if not classes:
        raise bad_path(root / "train", "has no class folders", IMAGEFOLDER)
    val = class_dirs(root / "val")
    if not val:
        with os.scandir(root / "val") as it:
            loose = any(e.is_file() for e in it)
        hint = (" (it holds loose images: sort the ILSVRC val images into one folder per class, "
                "e.g. with the usual valprep.sh)") if loose else ""
        raise bad_path(root / "val", f"has no class folders{hint}", IMAGEFOLDER)
    extra = sorted(set(val) - set(classes))
    if extra:
        raise bad_path(root / "val", f"has class folder {extra[0]!r} that train/ lacks ({len(extra)} such)",
                       "val classes that are train classes")
    return classes


def scan(split_dir: Path, classes: list[str], per_class: int | None) -> list[tuple[str, int]]:
    """(path, label) of the image files of one split, class by class, each class's files sorted
    by name; ``per_class`` keeps the first N of each class."""
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        d = split_dir / cls
        if not d.is_dir():
            continue            # a val/ without some train class is fine
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        samples += [(os.path.join(d, n), label) for n in names[:per_class]]
    if not samples:
        raise bad_path(split_dir, "has no image files in its class folders",
                       f"class folders of images ({', '.join(IMAGE_EXTENSIONS)})")
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
