"""rankbench.bench.data: the option checks, the in-memory datasets (digits, synthetic) and their loader."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rankbench.bench.data import CropFlip, TensorLoader, build_data, check_data
from rankbench.bench.data.memory import Normalization


# --------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_disjoint_and_fixed_by_seed():
    d0 = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False, device="cpu")
    assert d0.input_shape == (1, 8, 8) and d0.num_classes == 10
    assert (d0.train_size, d0.val_size) == (1437, 360)
    assert d0.steps_per_epoch == 1437 // 64 == len(list(d0.train))
    xs = torch.cat([x for x, _ in d0.train])
    assert abs(xs.mean().item()) < 0.05 and abs(xs.std().item() - 1) < 0.05   # normalized
    yv = torch.cat([y for _, y in d0.val])
    assert len(yv) == 360 and torch.bincount(yv, minlength=10).min() >= 34     # stratified: ~36 each

    def val_set(seed):
        d = build_data({"name": "digits"}, seed=seed, batch_size=1000, augment=False, device="cpu")
        return torch.cat([x for x, _ in d.val]).flatten(1)

    a, b, c = val_set(0), val_set(0), val_set(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # val_fraction and split_seed are honoured
    d = build_data({"name": "digits", "val_fraction": 0.5, "split_seed": 7}, seed=0, batch_size=8,
                   augment=False, device="cpu")
    assert d.train_size + d.val_size == 1797 and abs(d.train_size - d.val_size) <= 1


def test_digits_augmentation_shifts_without_flipping_and_depends_on_seed():
    def first(seed, augment):
        d = build_data({"name": "digits"}, seed=seed, batch_size=32, augment=augment, device="cpu")
        return next(iter(d.train))

    (xa, ya), (xb, yb) = first(3, True), first(3, True)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xn, yn = first(3, False)
    assert torch.equal(ya, yn)                    # same order, different pixels
    assert not torch.equal(xa, xn)
    assert not torch.equal(first(4, True)[1], ya)

# --------------------------------------------------------------------------- options


def test_bad_names_and_options_are_one_line_errors():
    with pytest.raises(ValueError, match="data.name: 'mnist': unknown dataset; accepted: digits, cifar10, cifar100, "
                                         "imagenet, synthetic"):
        check_data({"name": "mnist"})
    with pytest.raises(ValueError, match=r"data.vall_fraction: 0.1: unknown key for dataset 'digits' \(did you mean "
                                         r"'val_fraction'\?\); accepted: channels, resize, root, split_seed, "
                                         r"val_fraction"):
        check_data({"name": "digits", "vall_fraction": 0.1})
    with pytest.raises(ValueError, match=r"data.val_fraction: 1.5; accepted: a number strictly between 0 and 1"):
        check_data({"name": "digits", "val_fraction": 1.5})
    with pytest.raises(ValueError, match="data.split_seed: True; accepted: an integer or null"):
        check_data({"name": "digits", "split_seed": True})               # a bool is not an integer
    with pytest.raises(ValueError, match="data.labels: 'medium'"):
        check_data({"name": "cifar100", "root": "/x", "labels": "medium"})
    with pytest.raises(ValueError, match=r"data.shape: \[3, 0\]"):
        check_data({"name": "synthetic", "shape": [3, 0]})
    with pytest.raises(ValueError, match="data.root: '/data'; accepted: null"):
        check_data({"name": "synthetic", "root": "/data"})
    with pytest.raises(ValueError, match=r"data: \['digits'\]: not a mapping; accepted: a mapping \{name: one of"):
        check_data(["digits"])
    check_data({"name": "digits", "root": None})

# --------------------------------------------------------------------------- synthetic


def test_synthetic_any_shape_learnable_labels():
    d = build_data({"name": "synthetic", "shape": [16], "num_classes": 4, "size": 400, "val_size": 200},
                   seed=0, batch_size=50, augment=True, device="cpu")
    assert d.input_shape == (16,) and d.num_classes == 4 and d.steps_per_epoch == 8
    batches = list(d.train)                       # one epoch (each iter() is a new shuffle)
    xtr, ytr = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    # labels are a linear function of the inputs: least squares on one-hot targets beats chance
    w = torch.linalg.lstsq(xtr, F.one_hot(ytr, 4).float()).solution
    xv, yv = (torch.cat(t) for t in zip(*d.val))
    assert ((xv @ w).argmax(1) == yv).float().mean() > 0.6

    img = build_data({"name": "synthetic", "shape": [3, 16, 16], "size": 64}, seed=0, batch_size=16,
                     augment=True, device="cpu")
    x, y = next(iter(img.train))
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert img.val_size == 16

# --------------------------------------------------------------------------- the batched loader


def test_build_data_shards_for_data_parallel_ranks():
    cfg = {"name": "digits"}
    one = build_data(cfg, seed=0, batch_size=64, augment=True, device="cpu")
    ranks = [build_data(cfg, seed=0, batch_size=32, augment=True, device="cpu", rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == one.steps_per_epoch == 22
    for (xf, yf), (x0, y0), (x1, y1) in zip(one.train, ranks[0].train, ranks[1].train):
        assert torch.equal(torch.cat([x0, x1]), xf) and torch.equal(torch.cat([y0, y1]), yf)
    val = torch.cat([y for r in ranks for _, y in r.val])
    assert len(val) == 360 and torch.equal(val.sort().values, torch.cat([y for _, y in one.val]).sort().values)
    with pytest.raises(ValueError, match="rank/world_size: '2/2'; accepted: 0 <= rank < world_size"):
        build_data(cfg, 0, 8, False, "cpu", rank=2, world_size=2)


def _reference_crop_flip(x, params, pad):
    out = []
    for img, (oy, ox, fl) in zip(x, params.tolist()):
        p = F.pad(img, (pad, pad, pad, pad))[:, oy:oy + x.shape[2], ox:ox + x.shape[3]]
        out.append(p.flip(2) if fl else p)
    return torch.stack(out)


def test_crop_flip_equals_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 10, 12), generator=g, dtype=torch.uint8)
    aug = CropFlip(pad=4, flip=True)
    params = aug.sample(64, g, x.device)
    assert params[:, :2].min() >= 0 and params[:, :2].max() <= 8
    assert 0 < params[:, 2].sum() < 64 and len(set(map(tuple, params[:, :2].tolist()))) > 10
    assert torch.equal(aug.apply(x, params), _reference_crop_flip(x, params, 4))


def test_loader_epochs_differ_replay_by_set_epoch_and_shard_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(50)
    kw = dict(shuffle=True, drop_last=True, seed=5, augment=CropFlip(2, True),
              normalize=Normalization(mean=(0.5,) * 3, std=(0.25,) * 3, scale=1 / 255))
    full = TensorLoader(x, y, 8, **kw)
    e0, e1 = list(full), list(full)
    assert len(e0) == len(full) == 6
    assert not torch.equal(e0[0][1], e1[0][1])
    again = TensorLoader(x, y, 8, **kw)
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, e1))
    # two ranks with batch 4 each see exactly the single-process batch of 8, augmentation included
    r0 = list(TensorLoader(x, y, 4, rank=0, world_size=2, **kw))
    r1 = list(TensorLoader(x, y, 4, rank=1, world_size=2, **kw))
    for (xa, ya), (xb, yb), (xf, yf) in zip(r0, r1, e0):
        assert torch.equal(torch.cat([ya, yb]), yf) and torch.equal(torch.cat([xa, xb]), xf)
