"""Generated data of any shape with learnable labels, for smoke and speed runs that need no files."""
from __future__ import annotations

import math

import torch

from .memory import CropFlip, Splits

MAX_BYTES = 16 * 10**9   # what synthetic data may take at its peak (spec-time bound, data.* options)


def footprint(opts: dict) -> dict[str, int]:
    """Bytes of what :func:`load_synthetic` makes with ``opts`` (validated values) and what its
    evaluation holds, by what they are: the inputs (uint8 images and their float copy while the
    labels are drawn; float32 otherwise), the labelling map and its logits, and the
    ``num_classes``-squared int64 confusion matrix of ``rankbench.bench.measure.metrics`` (and
    bincount's copy of it)."""
    shape, nc = tuple(opts["shape"]), int(opts["num_classes"])
    n = int(opts["size"]) + int(opts["val_size"] or max(1, int(opts["size"]) // 4))
    per = math.prod(shape)
    image = len(shape) == 3
    feats = shape[0] if image else per
    return {"inputs": n * per * (1 + 4 if image else 4),
            "labelling": (n + feats) * nc * 4,
            "confusion matrix": 2 * nc * nc * 8}


def load_synthetic(opts: dict) -> Splits:
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
    s = Splits(x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:], num_classes=nc)
    if len(shape) == 3:
        c = shape[0]
        s.mean, s.std, s.scale = (0.5,) * c, (0.2887,) * c, 1.0 / 255.0   # uniform [0,1]: std 1/sqrt(12)
        s.augment = CropFlip(pad=max(1, shape[1] // 8), flip=True)
    return s                                  # other shapes: no spatial structure to augment
