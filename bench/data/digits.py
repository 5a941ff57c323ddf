"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package): a stratified
train/val split, normalized by the training split's statistics, shifted but never mirrored."""
from __future__ import annotations

import numpy as np
import torch

from .memory import CropFlip, Splits


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
