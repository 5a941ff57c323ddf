"""rankbench.bench.data.cifar: the official python pickles, written as the real files are."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rankbench.bench.data import CIFAR10_MEAN, CIFAR10_STD, OFFICIAL_STD, build_data, check_data


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


def test_cifar10_normalize_official_uses_the_official_trp_std(tmp_path):
    make_cifar10(tmp_path, per_batch=4, n_test=4)
    x = {}
    for norm in ("dataset", "official"):
        d = build_data({"name": "cifar10", "root": str(tmp_path), "normalize": norm}, seed=0, batch_size=4,
                       augment=False, device="cpu")
        x[norm] = next(iter(d.val))[0]
    assert OFFICIAL_STD == (0.2023, 0.1994, 0.2010)
    # same mean, another std: the normalised values scale by the ratio of the stds, per channel
    ratio = torch.tensor(CIFAR10_STD) / torch.tensor(OFFICIAL_STD)
    assert torch.allclose(x["official"], x["dataset"] * ratio.view(1, 3, 1, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"^data.normalize: 'paper'; accepted: dataset .*official "):
        check_data({"name": "cifar10", "root": str(tmp_path), "normalize": "paper"})


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
    assert str(e.value) == (f"data.root: {str(folder)!r}: has no data_batch_3; accepted: the CIFAR-10 python "
                            "layout: data_batch_1..5, test_batch, batches.meta")
    with pytest.raises(ValueError, match="data.root: .*': has no data_batch_3"):
        build_data({"name": "cifar10", "root": str(folder)}, 0, 8, False, "cpu")
    with pytest.raises(ValueError, match=r"data.root: '.*/nope': does not exist; accepted: the CIFAR-100"):
        check_data({"name": "cifar100", "root": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match=r"data.root: missing; accepted: a folder with the CIFAR-10 python layout"):
        check_data({"name": "cifar10"})


def test_a_corrupt_cifar_pickle_is_named(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")        # truncated download
    with pytest.raises(ValueError, match=r"test_batch': not a readable CIFAR pickle \(UnpicklingError"):
        build_data({"name": "cifar10", "root": str(folder)}, 0, 8, False, "cpu")
