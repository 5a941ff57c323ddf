"""Synthetic ImageNet-like data in the real on-disk layouts (JPEG ImageFolder, WebDataset
shards), for the input-pipeline probe and for tests that need real files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .shards import imagefolder_to_shards


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


def write_fake_shards(root: str | os.PathLike, classes: int = 4, per_class: int = 16, val_per_class: int = 4,
                      size: tuple[int, int] = (500, 375), per_shard: int = 1000, seed: int = 0) -> Path:
    """Shards of the synthetic JPEGs ``write_fake_imagefolder`` writes (same arguments), through
    the ImageFolder conversion users run on their own data."""
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_imagefolder(tmp, classes, per_class, val_per_class, size, seed=seed)
        imagefolder_to_shards(tmp, root, per_shard=per_shard, seed=seed)
    return Path(root)
