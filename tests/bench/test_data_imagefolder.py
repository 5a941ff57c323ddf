"""rankbench.bench.data on ImageNet as an ImageFolder: real files (good, truncated, corrupt, CMYK, gray,
palette) through both decode paths, layout errors, data-parallel shares, a whole trial."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from data_files import SMALL, make_imagefolder, pixels

from rankbench.bench.data import build_data, check_data
from rankbench.bench.data.base import usable_cpus


@pytest.mark.parametrize("decode", ["pil", "torchvision"])
def test_imagefolder_skips_bad_files_converts_cmyk_and_gray(tmp_path, decode, caplog):
    special = make_imagefolder(tmp_path)
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": decode, "workers": 0, **SMALL}
    check_data(cfg)
    d = build_data(cfg, seed=0, batch_size=13, augment=True, device="cpu")
    assert d.input_shape == (3, 32, 32) and d.num_classes == 3 and d.class_names == ["n01", "n02", "n03"]
    assert (d.train_size, d.val_size) == (13, 5) and d.steps_per_epoch == 1       # README.txt ignored
    assert d.info["decode"] == decode
    with caplog.at_level("WARNING", logger="rankbench.bench.data"):
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
    px = pixels(xv).mean(dim=(2, 3))
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
        out[decode] = pixels(torch.cat([x for x, _ in d.val]))
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


def test_workers_default_to_the_cpus_this_process_may_use(tmp_path):
    make_imagefolder(tmp_path)
    d = build_data({"name": "imagenet", "root": str(tmp_path), "decode": "pil", **SMALL},
                   seed=0, batch_size=4, augment=False, device="cpu")        # no iteration: no worker starts
    assert d.info["workers"] == min(8, usable_cpus()) and 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_imagenet_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match=r"data.root: '.*/none': does not exist; accepted: an ImageFolder tree"):
        check_data({"name": "imagenet", "root": str(tmp_path / "none")})
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"data.root: '.*': has no val/ folder; accepted: an ImageFolder tree"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match=r"val': has no class folders \(it holds loose images: sort the ILSVRC val"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match=r"val': has class folder 'n99' that train/ lacks \(1 such\); accepted: val classes"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "val" / "n99").rmdir()
    (tmp_path / "val" / "n01").mkdir()
    # one class would train to 100% whatever the model does
    with pytest.raises(ValueError, match=r"train': has 1 class folder \('n01'\); accepted: at least 2 class folders"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    (tmp_path / "train" / "n02").mkdir()
    with pytest.raises(ValueError, match=r"data.root: '.*train': has no image files in its class folders; accepted:"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    with pytest.raises(ValueError, match=r"data.root: '.*train': has no image files in its class folders; accepted:"):
        build_data({"name": "imagenet", "root": str(tmp_path)}, 0, 4, False, "cpu")
    # files that are there but none decodes: named at the check, with how many were tried
    for i in range(3):
        (tmp_path / "train" / "n01" / f"{i}.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"train': none of the 3 image files tried decodes \(last: .*accepted: images"):
        check_data({"name": "imagenet", "root": str(tmp_path)})
    with pytest.raises(ValueError, match="data.decode: 'dali'; accepted: auto, pil, torchvision"):
        check_data({"name": "imagenet", "root": str(tmp_path), "decode": "dali"})
    with pytest.raises(ValueError, match=r"data.resize: 200; accepted: an integer >= image_size \(224\)"):
        check_data({"name": "imagenet", "root": str(tmp_path), "resize": 200})


def test_jpeg_header_component_count(tmp_path):
    from rankbench.bench.data.decode import jpeg_components

    special = make_imagefolder(tmp_path)
    assert jpeg_components((tmp_path / "train" / "n01" / "img_0.JPEG").read_bytes()) == 3
    assert jpeg_components(special["gray"].read_bytes()) == 1
    assert jpeg_components(special["cmyk"].read_bytes()) == 4
    assert jpeg_components((tmp_path / "val" / "n03" / "palette.png").read_bytes()) is None
    assert jpeg_components(special["corrupt"].read_bytes()) is None


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


def test_a_trial_on_an_imagefolder_with_bad_files_logs_the_skip_count_and_finishes(tmp_path):
    from rankbench.bench.running.run import run_trial
    from rankbench.bench.spec.parse import parse_spec
    from rankbench.bench.results.store import Store

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
