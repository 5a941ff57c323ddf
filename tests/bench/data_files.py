"""Files in the real on-disk formats for the ImageNet tests (ImageFolder, shards, probe)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def gradient(w: int, h: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    img = np.stack([(base[c] + (xx * (c + 1) + yy * (3 - c)) * 1.5) % 256 for c in range(3)], -1)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def make_imagefolder(root: Path) -> dict[str, Path]:
    """Real files written by PIL: RGB JPEGs of several sizes, a CMYK JPEG, a grayscale JPEG,
    a palette PNG, a truncated JPEG, a file of junk bytes named .JPEG, and a non-image file."""
    from PIL import Image

    special: dict[str, Path] = {}
    for k, cls in enumerate(("n01", "n02", "n03")):
        for j, (w, h) in enumerate([(80, 60), (60, 90), (100, 100)]):
            d = root / "train" / cls
            d.mkdir(parents=True, exist_ok=True)
            gradient(w, h, 10 * k + j).save(d / f"img_{j}.JPEG", quality=95)
    tr = root / "train"
    Image.new("RGB", (70, 50), (200, 30, 60)).convert("CMYK").save(tr / "n02" / "cmyk.JPEG", quality=95)
    special["cmyk"] = tr / "n02" / "cmyk.JPEG"
    Image.new("L", (50, 70), 128).save(tr / "n03" / "gray.JPEG", quality=95)
    special["gray"] = tr / "n03" / "gray.JPEG"
    full = (tr / "n01" / "img_0.JPEG").read_bytes()
    (tr / "n01" / "truncated.JPEG").write_bytes(full[: len(full) // 2])
    special["truncated"] = tr / "n01" / "truncated.JPEG"
    (tr / "n03" / "corrupt.JPEG").write_bytes(np.random.default_rng(0).bytes(3000))
    special["corrupt"] = tr / "n03" / "corrupt.JPEG"
    (tr / "n01" / "README.txt").write_text("not an image")
    # val: one image per class with a known colour (after resize + center crop), in class order
    for cls in ("n01", "n02", "n03"):
        (root / "val" / cls).mkdir(parents=True)
    Image.new("RGB", (60, 45), (10, 200, 30)).save(root / "val" / "n01" / "a_rgb.JPEG", quality=95)
    gradient(64, 48, 99).save(root / "val" / "n01" / "b_texture.JPEG", quality=95)
    Image.new("RGB", (45, 60), (200, 30, 60)).convert("CMYK").save(root / "val" / "n02" / "cmyk.JPEG", quality=95)
    Image.new("L", (50, 50), 128).save(root / "val" / "n03" / "gray.jpg", quality=95)
    pal = Image.new("RGB", (40, 40), (0, 0, 250)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(root / "val" / "n03" / "palette.png")
    return special


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 255] RGB from the normalized batch."""
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255


SMALL = {"image_size": 32, "resize": 36}
