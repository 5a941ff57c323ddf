"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package): a stratified
train/val split, normalized by the training split's statistics, shifted but never mirrored."""
from __future__ import annotations

import math

import numpy as np
import torch

from .memory import CropFlip, Splits

IMAGES, CLASSES = 1797, 10     # scikit-learn's digits: 174 to 183 images of each class


def split_sizes(val_fraction: float) -> tuple[int, int]:
    """(train, val) image counts of the split, as scikit-learn's ``train_test_split`` makes them."""
    n_val = math.ceil(val_fraction * IMAGES)
    return IMAGES - n_val, n_val


def split_problem(val_fraction: float) -> tuple[str, str] | None:
    """(accepted, problem) when the stratified split at ``val_fraction`` (a number in (0, 1))
    would leave a class without an image in the train or the val split: each split needs at
    least one image per class (scikit-learn refuses fewer than ``CLASSES`` images; with at least
    that many, every class gets one). None when the split is fine."""
    n_train, n_val = split_sizes(val_fraction)
    if min(n_train, n_val) >= CLASSES:
        return None
    lo = math.ceil((CLASSES - 1) / IMAGES * 1e5 + 1e-9) / 1e5     # both ends accepted, as printed
    hi = math.floor((IMAGES - CLASSES) / IMAGES * 1e5) / 1e5
    side = "train" if n_train < CLASSES else "val"
    return (f"a number from {lo:.5f} to {hi:.5f}: at least one image of each class ({CLASSES} images of "
            f"{IMAGES}) in both the train and the val split",
            f"leaves only {min(n_train, n_val)} image{'s' if min(n_train, n_val) != 1 else ''} in the {side} "
            f"split for {CLASSES} classes")


def load_digits(opts: dict, seed: int) -> Splits:
    """The split is fixed by ``split_seed`` (the trial's ``seed`` when null) and ``val_fraction``."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    d = sklearn_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)    # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    split_seed = seed if opts["split_seed"] is None else opts["split_seed"]
    tr, va = train_test_split(
        np.arange(len(y)), test_size=opts["val_fraction"], stratify=d.target, random_state=int(split_seed) % (2**32)
    )
    xtr = x[tr]
    # scalar statistics of the training split: digits are one channel
    return Splits(xtr, y[tr], x[va], y[va], num_classes=10, class_names=[str(n) for n in d.target_names],
                  mean=(float(xtr.mean()),), std=(float(xtr.std()),),
                  augment=CropFlip(pad=1, flip=False))     # shifts only: a mirrored digit is another glyph
