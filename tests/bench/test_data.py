"""bench.data: every reader on small files in the real on-disk formats, augmentation, errors."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import CIFAR10_MEAN, CIFAR10_STD, CropFlip, TensorLoader, build_data, check_data


# --------------------------------------------------------------------------- CIFAR fixtures


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)           # the official files are protocol-2 pickles


def make_cifar10(root: Path, per_batch: int = 12, n_test: int = 10, seed: int = 0) -> Path:
    """The CIFAR-10 python layout with the real keys: bytes keys, uint8 N x 3072, list labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        })
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    data[0] = 0
    data[0, 0 * 1024 + 1 * 32 + 2] = 255          # red channel, row 1, col 2 of the first test image
    _write_pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [3] + [int(v) for v in rng.integers(0, 10, n_test - 1)],
        b"data": data,
        b"filenames": [f"t_{j}.png".encode() for j in range(n_test)],
    })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return folder


def make_cifar100(root: Path, n_train: int = 30, n_test: int = 8, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        _write_pickle(folder / split, {
            b"filenames": [f"{split}_{j}.png".encode() for j in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) // 5 for v in fine],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    _write_pickle(folder / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return folder


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


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_python_pickles(tmp_path):
    make_cifar10(tmp_path, per_batch=12, n_test=10)
    # root may be the parent folder or the cifar-10-batches-py folder itself
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        check_data({"name": "cifar10", "root": str(root)})
        d = build_data({"name": "cifar10", "root": str(root)}, seed=0, batch_size=8, augment=False, device="cpu")
        assert (d.train_size, d.val_size, d.num_classes) == (60, 10, 10)
        assert d.input_shape == (3, 32, 32) and d.steps_per_epoch == 7
        assert d.class_names[3] == "cat"
        x, y = next(iter(d.val))                   # val is the official test batch, in order
        assert y[0].item() == 3
        expect = [(v - m) / s for v, m, s in zip((0.0, 0.0, 0.0), CIFAR10_MEAN, CIFAR10_STD)]
        assert x[0, 0, 1, 2].item() == pytest.approx((1 - CIFAR10_MEAN[0]) / CIFAR10_STD[0], rel=1e-5)
        assert x[0, 0, 0, 0].item() == pytest.approx(expect[0], rel=1e-5)
        assert x[0, 1, 1, 2].item() == pytest.approx(expect[1], rel=1e-5)   # channel-major layout


def test_cifar10_train_epoch_covers_every_image_once(tmp_path):
    folder = make_cifar10(tmp_path, per_batch=8)
    raw = np.concatenate([pickle.load(open(folder / f"data_batch_{i}", "rb"), encoding="bytes")[b"data"]
                          for i in range(1, 6)])
    d = build_data({"name": "cifar10", "root": str(tmp_path)}, seed=0, batch_size=10, augment=False, device="cpu")
    xs = torch.cat([x for x, _ in d.train])
    assert len(xs) == 40
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    back = ((xs * std + mean) * 255).round().to(torch.uint8).reshape(40, 3072).numpy()
    assert sorted(map(bytes, back)) == sorted(map(bytes, raw))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    make_cifar100(tmp_path)
    fine = build_data({"name": "cifar100", "root": str(tmp_path)}, seed=0, batch_size=8, augment=True, device="cpu")
    assert fine.num_classes == 100 and fine.class_names[5] == "fine5"
    assert (fine.train_size, fine.val_size) == (30, 8)
    coarse = build_data({"name": "cifar100", "root": str(tmp_path), "labels": "coarse"}, seed=0,
                        batch_size=8, augment=False, device="cpu")
    assert coarse.num_classes == 20 and coarse.class_names[0] == "coarse0"
    yf = torch.cat([y for _, y in fine.val])
    yc = torch.cat([y for _, y in coarse.val])
    assert torch.equal(yf // 5, yc)


def test_check_data_names_the_missing_file(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError) as e:
        check_data({"name": "cifar10", "root": str(folder)})
    assert str(e.value) == (f"data.root: {folder} has no data_batch_3 (expected the CIFAR-10 python layout: "
                            "data_batch_1..5, test_batch, batches.meta)")
    with pytest.raises(ValueError, match="data.root: .* has no data_batch_3"):
        build_data({"name": "cifar10", "root": str(folder)}, 0, 8, False, "cpu")
    with pytest.raises(ValueError, match=r"data.root: .*/nope does not exist \(expected the CIFAR-100"):
        check_data({"name": "cifar100", "root": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="data.root: missing; dataset 'cifar10' needs root"):
        check_data({"name": "cifar10"})


def test_a_corrupt_cifar_pickle_is_named(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")        # truncated download
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR pickle"):
        build_data({"name": "cifar10", "root": str(folder)}, 0, 8, False, "cpu")


def test_bad_names_and_options_are_one_line_errors():
    with pytest.raises(ValueError, match="data.name: unknown dataset 'mnist'; accepted: digits, cifar10, cifar100, imagenet, synthetic"):
        check_data({"name": "mnist"})
    with pytest.raises(ValueError, match="data.vall_fraction: unknown option for dataset 'digits'; accepted: root, split_seed, val_fraction"):
        check_data({"name": "digits", "vall_fraction": 0.1})
    with pytest.raises(ValueError, match=r"data.val_fraction: 1.5 is not accepted; accepted: a number strictly between 0 and 1"):
        check_data({"name": "digits", "val_fraction": 1.5})
    with pytest.raises(ValueError, match="data.labels: 'medium'"):
        check_data({"name": "cifar100", "root": "/x", "labels": "medium"})
    with pytest.raises(ValueError, match=r"data.shape: \[3, 0\]"):
        check_data({"name": "synthetic", "shape": [3, 0]})
    with pytest.raises(ValueError, match="data.root: '/data' is not accepted; accepted: null"):
        check_data({"name": "synthetic", "root": "/data"})
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
    with pytest.raises(ValueError, match="rank/world_size: 2/2"):
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
    kw = dict(shuffle=True, drop_last=True, seed=5, augment=CropFlip(2, True), mean=(0.5,) * 3,
              std=(0.25,) * 3, scale=1 / 255)
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


# --------------------------------------------------------------------------- ImageNet (ImageFolder)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _gradient(w: int, h: int, seed: int):
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
            _gradient(w, h, 10 * k + j).save(d / f"img_{j}.JPEG", quality=95)
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
    _gradient(64, 48, 99).save(root / "val" / "n01" / "b_texture.JPEG", quality=95)
    Image.new("RGB", (45, 60), (200, 30, 60)).convert("CMYK").save(root / "val" / "n02" / "cmyk.JPEG", quality=95)
    Image.new("L", (50, 50), 128).save(root / "val" / "n03" / "gray.jpg", quality=95)
    pal = Image.new("RGB", (40, 40), (0, 0, 250)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(root / "val" / "n03" / "palette.png")
    return special


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 255] RGB from the normalized batch."""
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255


SMALL = {"image_size": 32, "resize": 36}


@pytest.mark.parametrize("decode", ["pil", "torchvision"])
def test_imagefolder_skips_bad_files_converts_cmyk_and_gray(tmp_path, decode, caplog):
    special = make_imagefolder(tmp_path)
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": decode, "workers": 0, **SMALL}
    check_data(cfg)
    d = build_data(cfg, seed=0, batch_size=13, augment=True, device="cpu")
    assert d.input_shape == (3, 32, 32) and d.num_classes == 3 and d.class_names == ["n01", "n02", "n03"]
    assert (d.train_size, d.val_size) == (13, 5) and d.steps_per_epoch == 1       # README.txt ignored
    assert d.info["decode"] == decode
    with caplog.at_level("WARNING", logger="bench.data"):
        (x, y), = list(d.train)                   # one batch of 13 files, 2 unreadable
        assert x.shape == (11, 3, 32, 32) and x.dtype == torch.float32 and len(y) == 11
        assert d.skipped == 2
        assert set(d.train.skipped_files) == {str(special["truncated"]), str(special["corrupt"])}
        list(d.train)                             # the next epoch meets them again
    assert d.skipped == 4
    assert sum("skipped unreadable image" in r.message for r in caplog.records) == 2     # logged once per file
    assert torch.bincount(y, minlength=3).tolist() == [3, 4, 4]                 # n01 lost its truncated file

    xv, yv = (torch.cat(t) for t in zip(*d.val))
    assert yv.tolist() == [0, 0, 1, 2, 2]
    px = _pixels(xv).mean(dim=(2, 3))
    assert torch.allclose(px[0], torch.tensor([10.0, 200.0, 30.0]), atol=6)      # RGB
    assert torch.allclose(px[2], torch.tensor([200.0, 30.0, 60.0]), atol=6)     # CMYK converted
    assert torch.allclose(px[3], torch.tensor([128.0, 128.0, 128.0]), atol=3)   # grayscale -> 3 channels
    assert torch.allclose(px[4], torch.tensor([0.0, 0.0, 250.0]), atol=6)       # palette PNG


def test_pil_and_torchvision_paths_agree_on_val(tmp_path):
    make_imagefolder(tmp_path)
    out = {}
    for decode in ("pil", "torchvision"):
        d = build_data({"name": "imagenet", "root": str(tmp_path), "decode": decode, "workers": 0, **SMALL},
                       seed=0, batch_size=8, augment=False, device="cpu")
        out[decode] = _pixels(torch.cat([x for x, _ in d.val]))
    # same geometry (resize shorter side to 36, center crop 32); resampling kernels differ slightly
    assert (out["pil"] - out["torchvision"]).abs().mean() < 2.0


def test_torchvision_path_augmentation_is_seeded(tmp_path):
    make_imagefolder(tmp_path)
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": "torchvision", "workers": 0, **SMALL}
    a = next(iter(build_data(cfg, seed=1, batch_size=13, augment=True, device="cpu").train))
    b = next(iter(build_data(cfg, seed=1, batch_size=13, augment=True, device="cpu").train))
    c = next(iter(build_data(cfg, seed=2, batch_size=13, augment=True, device="cpu").train))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_imagefolder_with_worker_processes_counts_skips(tmp_path):
    make_imagefolder(tmp_path)
    d = build_data({"name": "imagenet", "root": str(tmp_path), "decode": "pil", "workers": 2, **SMALL},
                   seed=0, batch_size=4, augment=True, device="cpu")
    assert d.steps_per_epoch == 3
    d.train.sampler.set_epoch(0)
    drawn = [d.train.loader.dataset.samples[i][0] for i in list(d.train.sampler)[:12]]   # drop_last: 12 of 13
    bad = sum(Path(p).name in ("truncated.JPEG", "corrupt.JPEG") for p in drawn)
    seen = sum(len(y) for _, y in d.train)        # epoch 0; skips counted in worker processes
    assert seen == 12 - bad and d.skipped == bad
    (x, y), = [b for b in d.val][:1]
    assert x.shape == (4, 3, 32, 32)


def test_imagenet_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match=r"data.root: .*/none does not exist \(expected an ImageFolder tree"):
        check_data({"name": "imagenet", "root": str(tmp_path / "none")})
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"data.root: .* has no val/ folder"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match=r"val has no class folders: it holds loose images; sort the ILSVRC val"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match=r"val has class folder 'n99' that train/ lacks"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val" / "n99").rmdir()
    (tmp_path / "val" / "n01").mkdir()
    check_data({"name": "imagenet", "root": str(tmp_path)})          # layout fine; files are not listed
    with pytest.raises(ValueError, match=r"data.root: .*train has no image files"):
        build_data({"name": "imagenet", "root": str(tmp_path)}, 0, 4, False, "cpu")
    with pytest.raises(ValueError, match="data.decode: 'dali' is not accepted; accepted: auto, pil, torchvision"):
        check_data({"name": "imagenet", "root": str(tmp_path), "decode": "dali"})
    with pytest.raises(ValueError, match="data.resize: 200 is not accepted; accepted: an integer >= image_size"):
        check_data({"name": "imagenet", "root": str(tmp_path), "resize": 200})


def test_jpeg_header_component_count(tmp_path):
    from bench.data import _jpeg_components

    special = make_imagefolder(tmp_path)
    assert _jpeg_components((tmp_path / "train" / "n01" / "img_0.JPEG").read_bytes()) == 3
    assert _jpeg_components(special["gray"].read_bytes()) == 1
    assert _jpeg_components(special["cmyk"].read_bytes()) == 4
    assert _jpeg_components((tmp_path / "val" / "n03" / "palette.png").read_bytes()) is None
    assert _jpeg_components(special["corrupt"].read_bytes()) is None


def test_imagefolder_ranks_split_each_epoch(tmp_path):
    make_imagefolder(tmp_path)
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": "pil", "workers": 0, **SMALL}
    shares = [build_data(cfg, seed=3, batch_size=4, augment=False, device="cpu", rank=r, world_size=2).train.sampler
              for r in (0, 1)]
    a, b = list(shares[0]), list(shares[1])
    assert len(a) == len(b) == 7                          # 13 files, padded by wrapping to 14
    assert set(a) | set(b) == set(range(13)) and len(set(a) & set(b)) == 1


def test_imagefolder_val_shards_count_each_image_once(tmp_path):
    # evaluation sums counts over ranks: val shares must be disjoint and cover the split exactly
    # (train shares are padded instead, so DDP ranks take the same number of steps)
    make_imagefolder(tmp_path)
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": "pil", "workers": 0, **SMALL}
    vals = [build_data(cfg, seed=3, batch_size=2, augment=False, device="cpu", rank=r, world_size=2).val
            for r in (0, 1)]
    a, b = (list(v.sampler) for v in vals)
    assert sorted(a + b) == list(range(5)) and not set(a) & set(b)
    assert [len(v.sampler) for v in vals] == [3, 2]
    assert sum(len(y) for v in vals for _, y in v) == 5


def test_input_pipeline_probe_writes_a_jpeg_imagefolder_and_times_each_decode_path(tmp_path, capsys):
    import json

    from PIL import Image

    from bench.data import _main, fake_imagefolder

    # the default synthetic images are real JPEGs of ImageNet-like size
    big = fake_imagefolder(tmp_path / "big", images=2, classes=1)
    (f,) = sorted((big / "train").rglob("*.JPEG"))[:1]
    with Image.open(f) as im:
        assert im.format == "JPEG" and im.size == (500, 375) and im.mode == "RGB"
    assert 5_000 < f.stat().st_size < 500_000

    where = tmp_path / "fake"
    args = ["--write", str(where), "--images", "8", "--classes", "2", "--size", "64x48", "--batch-size", "4",
            "--batches", "2", "--workers", "0", "--device", "cpu"]
    _main(args)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["decode"] for r in rows] == ["pil", "torchvision"]
    for r in rows:
        assert r["images"] == 8 and r["images_per_s"] > 0 and r["skipped"] == 0 and r["root"] == str(where)
    files = sorted((where / "train").rglob("*.JPEG"))
    assert len(files) == 8 and len(list((where / "val").rglob("*.JPEG"))) == 2
    with Image.open(files[0]) as im:
        assert im.size == (64, 48)
    stamp = [p.stat().st_mtime_ns for p in files]
    _main(args + ["--decode", "pil"])                     # a second probe reuses the folder as is
    assert [p.stat().st_mtime_ns for p in files] == stamp
    with pytest.raises(SystemExit):
        _main(["--size", "500"])


def test_a_trial_on_an_imagefolder_with_bad_files_logs_the_skip_count_and_finishes(tmp_path):
    from bench.run import run_trial
    from bench.spec import parse_spec
    from bench.store import Store

    special = make_imagefolder(tmp_path / "in")
    spec = f"""
sweep: skips
seeds: [0]
data: {{name: imagenet, root: {tmp_path / 'in'}, decode: pil, workers: 0, image_size: 32, resize: 36}}
model: cnn
train: {{epochs: 2, batch_size: 4}}
measure: {{latency_repeats: 1}}
methods: [dense]
"""
    (trial,) = parse_spec(spec).trials
    row = run_trial(trial, tmp_path / "results")
    assert row["status"] == "ok", row["error"]
    # 13 train files, 3 steps of 4 per epoch: the truncated and the corrupt file are met (at
    # least one of them every epoch), skipped, counted; CMYK and gray val images are converted
    assert 2 <= row["skipped_images"] <= 4
    log = Store(tmp_path / "results", "skips").log_path(trial.id).read_text()
    assert f"{row['skipped_images']} unreadable images skipped in all" in log
    assert "[train] epoch 2/2" in log and "unreadable images skipped so far" in log
    named = [line for line in log.splitlines() if "[train] skipped " in line]
    assert named and all(("truncated.JPEG" in line or "corrupt.JPEG" in line) for line in named)
    assert len(named) == len(set(named)) <= 2                        # each file named once
    assert str(special["corrupt"].parent.parent) in named[0]
