"""ImageNet as WebDataset .tar shards (rankbench.bench.data.shards): real tar files in tmp_path."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from data_files import SMALL, gradient, make_imagefolder, pixels

from rankbench.bench.data import build_data, check_data, describe, imagefolder_to_shards, write_fake_shards


def _jpeg(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    gradient(w, h, seed).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A shard written with tarfile alone (not our writer), as other WebDataset tools write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _names(loader) -> list[str]:
    """The image names one epoch of a StreamLoader's DataLoader delivers (its workers included)."""
    return [name for _, _, names, _ in loader.loader for name in names]


def _converted(tmp_path: Path) -> tuple[Path, Path]:
    """make_imagefolder's tree (good, truncated, corrupt, CMYK, grayscale, palette files) and
    its conversion to shards of 5 images (so train spans 3 shards)."""
    folder, shards = tmp_path / "folder", tmp_path / "shards"
    make_imagefolder(folder)
    counts = imagefolder_to_shards(folder, shards, per_shard=5)
    assert counts == {"train_images": 13, "train_shards": 3, "val_images": 5, "val_shards": 1}
    return folder, shards


def test_webdataset_shards_from_another_writer_are_read_with_labels_and_class_names(tmp_path):
    red = _jpeg(40, 30, 1)
    png = io.BytesIO()
    gradient(30, 40, 2).save(png, format="PNG")
    _tar(tmp_path / "train" / "imagenet-train-000000.tar", [
        ("s000.jpg", red), ("s000.cls", b"2"),                        # image before its label
        ("s001.cls", b" 0\n"), ("s001.jpeg", _jpeg(30, 30, 3)),
        ("s001.json", b'{"w": 30}'),                                  # metadata: ignored
    ])
    _tar(tmp_path / "train" / "imagenet-train-000001.tar", [
        ("dir/s002.cls", b"1"), ("dir/s002.png", png.getvalue()),       # keys with folders, PNG
        ("s003.cls", b"2"), ("s003.webp", _webp()),
    ])
    _tar(tmp_path / "val" / "imagenet-val-000000.tar", [("v0.cls", b"1"), ("v0.jpg", _jpeg(36, 36, 4))])
    (tmp_path / "classes.txt").write_text("tench\ngoldfish\nshark\n")
    cfg = {"name": "imagenet", "root": str(tmp_path), "decode": "pil", "workers": 0, **SMALL}   # layout: auto
    check_data(cfg)
    assert describe(cfg) == ((3, 32, 32), 3)
    d = build_data(cfg, seed=0, batch_size=2, augment=False, device="cpu")
    assert d.info["layout"] == "tar" and d.class_names == ["tench", "goldfish", "shark"]
    assert (d.train_size, d.val_size, d.steps_per_epoch) == (4, 1, 2)
    ds = d.train.loader.dataset
    got = {ds[i][2].split(".tar/")[1]: ds[i][1] for i in range(len(ds))}
    assert got == {"s000.jpg": 2, "s001.jpeg": 0, "dir/s002.png": 1, "s003.webp": 2}
    assert all(ds[i][0].shape == (3, 32, 32) and ds[i][3] is None for i in range(len(ds)))
    first = build_data({**cfg, "train_per_class": 1}, seed=0, batch_size=2, augment=False, device="cpu")
    assert sorted(first.train.loader.dataset.index.label.tolist()) == [0, 1, 2]     # s003 (2nd of class 2) left out
    (tmp_path / "classes.txt").unlink()                               # no names: class indices
    assert build_data(cfg, seed=0, batch_size=2, augment=False, device="cpu").class_names == ["0", "1", "2"]


def _webp() -> bytes:
    buf = io.BytesIO()
    gradient(20, 20, 5).save(buf, format="WEBP")
    return buf.getvalue()


@pytest.mark.parametrize("decode", ["pil", "torchvision"])
def test_shards_skip_corrupt_and_convert_cmyk_and_gray_as_the_imagefolder_does(tmp_path, decode, caplog):
    _, root = _converted(tmp_path)
    cfg = {"name": "imagenet", "root": str(root), "layout": "tar", "decode": decode, "workers": 0, **SMALL}
    d = build_data(cfg, seed=0, batch_size=13, augment=True, device="cpu")
    assert d.class_names == ["n01", "n02", "n03"] and (d.train_size, d.val_size) == (13, 5)
    with caplog.at_level("WARNING", logger="rankbench.bench.data"):
        (x, y), = list(d.train)                    # the truncated and the corrupt JPEG are skipped
        list(d.train)
    assert x.shape == (11, 3, 32, 32) and d.skipped == 4
    assert {Path(p).name for p in d.train.skipped_files} == {"truncated.jpg", "corrupt.jpg"}
    assert all(".tar/n0" in p for p in d.train.skipped_files)          # named as shard/member
    assert sum("skipped unreadable image" in r.message for r in caplog.records) == 2
    assert torch.bincount(y, minlength=3).tolist() == [3, 4, 4]
    xv, yv = (torch.cat(t) for t in zip(*d.val))
    assert yv.tolist() == [0, 0, 1, 2, 2]
    px = pixels(xv).mean(dim=(2, 3))
    assert torch.allclose(px[2], torch.tensor([200.0, 30.0, 60.0]), atol=6)     # CMYK converted
    assert torch.allclose(px[3], torch.tensor([128.0, 128.0, 128.0]), atol=3)   # grayscale -> RGB
    assert torch.allclose(px[4], torch.tensor([0.0, 0.0, 250.0]), atol=6)       # palette PNG


def test_imagefolder_and_its_shards_hold_the_same_samples_labels_andpixels(tmp_path):
    folder, root = _converted(tmp_path)
    data = {layout: build_data({"name": "imagenet", "root": str(r), "decode": "pil", "workers": 0, **SMALL},
                               seed=0, batch_size=4, augment=False, device="cpu")
            for layout, r in (("imagefolder", folder), ("tar", root))}
    assert data["tar"].info["layout"] == "tar" and data["imagefolder"].info["layout"] == "imagefolder"

    def by_key(d) -> dict[str, tuple[int, torch.Tensor | None]]:
        ds = d.train.loader.dataset                # key: class folder / file stem, in both layouts
        items = (ds[i] for i in range(len(ds)))
        return {"/".join(Path(n).parts[-2:]).rsplit(".", 1)[0]: (y, x) for x, y, n, _ in items}

    a, b = by_key(data["imagefolder"]), by_key(data["tar"])
    assert sorted(a) == sorted(b) and len(a) == 13
    for k in a:
        assert a[k][0] == b[k][0]
        assert (a[k][1] is None and b[k][1] is None) or torch.equal(a[k][1], b[k][1])
    # val is written in ImageFolder order: identical batches
    va, vb = ([torch.cat(t) for t in zip(*data[k].val)] for k in ("imagefolder", "tar"))
    assert torch.equal(va[0], vb[0]) and torch.equal(va[1], vb[1])


def test_a_train_epoch_sees_every_sample_once_over_2_ranks_x_2_workers(tmp_path):
    root = write_fake_shards(tmp_path, classes=2, per_class=8, val_per_class=3, size=(32, 24), per_shard=3)
    assert len(list((root / "train").glob("imagenet-train-*.tar"))) == 6            # 16 = 5 x 3 + 1
    cfg = {"name": "imagenet", "root": str(root), "decode": "pil", "workers": 2, **SMALL}
    ranks = [build_data(cfg, seed=7, batch_size=2, augment=True, device="cpu", rank=r, world_size=2)
             for r in (0, 1)]
    epochs = []
    for epoch in (0, 1):
        seen = []
        for d in ranks:
            d.train.sampler.set_epoch(epoch)
            seen.append(_names(d.train))
        assert len(seen[0]) == len(seen[1]) == 8 and not set(seen[0]) & set(seen[1])
        assert len(set(seen[0] + seen[1])) == 16
        epochs.append(seen)
    assert epochs[0] != epochs[1]                                  # reshuffled per epoch (seeded)
    again = build_data(cfg, seed=7, batch_size=2, augment=True, device="cpu", rank=0, world_size=2)
    assert _names(again.train) == epochs[0][0]                     # same seed, same order
    assert sum(len(y) for _, y in ranks[0].train) == 8 and ranks[0].skipped == 0


def test_val_shards_count_every_image_once_across_ranks(tmp_path):
    root = write_fake_shards(tmp_path, classes=5, per_class=1, val_per_class=1, size=(32, 24), per_shard=2)
    assert len(list((root / "val").glob("*.tar"))) == 3
    cfg = {"name": "imagenet", "root": str(root), "decode": "pil", "workers": 0, **SMALL}
    vals = [build_data(cfg, seed=0, batch_size=2, augment=False, device="cpu", rank=r, world_size=2).val
            for r in (0, 1)]
    a, b = (_names(v) for v in vals)
    assert len(a) == 3 and len(b) == 2 and not set(a) & set(b) and len(set(a + b)) == 5
    assert sum(len(y) for v in vals for _, y in v) == 5


def test_a_trial_on_shards_with_bad_files_logs_the_skip_count_and_finishes(tmp_path):
    from rankbench.bench.running.run import run_trial
    from rankbench.bench.spec.parse import parse_spec
    from rankbench.bench.results.store import Store

    _, root = _converted(tmp_path)
    spec = f"""
sweep: skips
seeds: [0]
data: {{name: imagenet, root: {root}, layout: tar, decode: pil, workers: 0, image_size: 32, resize: 36}}
model: cnn
train: {{epochs: 1, batch_size: 4}}
measure: {{latency_repeats: 1}}
methods: [dense]
"""
    (trial,) = parse_spec(spec).trials
    row = run_trial(trial, tmp_path / "results")
    assert row["status"] == "ok", row["error"]
    log = Store(tmp_path / "results", "skips").log_path(trial.id).read_text()
    assert row["skipped_images"] >= 1 and f"{row['skipped_images']} unreadable images skipped in all" in log
    named = [line for line in log.splitlines() if "[train] skipped " in line]
    assert named and all(".tar/n0" in line and ("truncated.jpg" in line or "corrupt.jpg" in line) for line in named)


def test_bad_layouts_and_shards_are_one_line_errors_that_name_the_field(tmp_path):
    folder, root = _converted(tmp_path)
    with pytest.raises(ValueError, match=r"data.layout: 'zip'; accepted: auto \(tar when "
                                         r"root/train holds .tar files\), imagefolder, tar"):
        check_data({"name": "imagenet", "root": str(root), "layout": "zip"})
    with pytest.raises(ValueError, match=r"data.root: '.*folder/train': has no .tar shards \(data.layout: tar\); "
                                         r"accepted: WebDataset shards"):
        check_data({"name": "imagenet", "root": str(folder), "layout": "tar"})
    with pytest.raises(ValueError, match=r"data.layout: 'imagefolder'; accepted: tar or auto "
                                         r"\(.*shards/train holds .tar shards, no class folders\)"):
        check_data({"name": "imagenet", "root": str(root), "layout": "imagefolder"})
    # ImageNet's per-class train archives left beside their extracted folders: still an ImageFolder
    (folder / "train" / "n01.tar").write_bytes(b"")
    assert build_data({"name": "imagenet", "root": str(folder), **SMALL}, 0, 4, False).info["layout"] == "imagefolder"
    with pytest.raises(ValueError, match=r"dst \(--write-shards\): '.*shards': train/ already holds .tar shards; "
                                         r"accepted: a folder without .tar shards"):
        imagefolder_to_shards(folder, root)

    (root / "classes.txt").write_text("n01\nn02\n")
    with pytest.raises(ValueError, match=r"data.root: '.*\.tar/n03/.*': has class 2, but .*classes.txt names 2 "
                                         r"classes; accepted: 0..1"):
        build_data({"name": "imagenet", "root": str(root)}, 0, 4, False)
    (root / "classes.txt").write_text("n01\n\nn03\n")
    with pytest.raises(ValueError, match=r"classes.txt': line 2 is empty; accepted: one distinct class name a line"):
        check_data({"name": "imagenet", "root": str(root)})
    (root / "classes.txt").unlink()
    assert describe({"name": "imagenet", "root": str(root)})[1] == 3                # from the .cls labels

    bad = tmp_path / "bad"
    _tar(bad / "val" / "v.tar", [("a.cls", b"0"), ("a.jpg", _jpeg(8, 8, 0))])
    _tar(bad / "train" / "t.tar", [("a.cls", b"zero"), ("a.jpg", _jpeg(8, 8, 0))])
    with pytest.raises(ValueError, match=r"data.root: '.*t.tar/a.cls': b'zero' is not a class index; accepted: "
                                         r"a non-negative integer as ASCII text"):
        build_data({"name": "imagenet", "root": str(bad)}, 0, 4, False)
    _tar(bad / "train" / "t.tar", [("a.jpg", _jpeg(8, 8, 0)), ("b.cls", b"0"), ("b.jpg", _jpeg(8, 8, 0))])
    with pytest.raises(ValueError, match=r"data.root: '.*t.tar/a.jpg': has no a.cls member; accepted: WebDataset"):
        build_data({"name": "imagenet", "root": str(bad)}, 0, 4, False)
    (bad / "train" / "t.tar").write_bytes(b"not a tar" * 100)
    _tar(bad / "train" / "u.tar", [("a.cls", b"0"), ("a.jpg", _jpeg(8, 8, 0))])     # 2 shards: 2 processes
    with pytest.raises(ValueError, match=r"data.root: '.*t.tar': not a readable tar"):
        build_data({"name": "imagenet", "root": str(bad)}, 0, 4, False)


def test_a_truncated_shard_skips_its_lost_images_instead_of_failing(tmp_path, caplog):
    root = write_fake_shards(tmp_path, classes=2, per_class=2, val_per_class=1, size=(32, 24), per_shard=2)
    shard = sorted((root / "train").glob("*.tar"))[-1]
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    # a copy cut short: the last image loses its tail (a tar ends in zero padding: cut inside the image)
    shard.write_bytes(shard.read_bytes()[: last.offset_data + last.size // 2])
    with caplog.at_level("WARNING", logger="rankbench.bench.data.shards"):
        d = build_data({"name": "imagenet", "root": str(root), "decode": "pil", "workers": 0, **SMALL}, 0, 4, False)
    assert any("is truncated" in r.message and shard.name in r.message for r in caplog.records)
    assert sum(len(y) for _, y in d.train) == 3 and d.skipped == 1
    assert "truncated shard" in next(iter(d.train.skipped_files.values()))
