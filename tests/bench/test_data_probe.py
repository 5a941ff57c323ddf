"""``python -m rankbench.bench.data`` (rankbench.bench.data.probe): input-pipeline timing and shard writing."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rankbench.bench.data import fake_imagefolder
from rankbench.bench.data.probe import main


def test_input_pipeline_probe_writes_a_jpeg_imagefolder_and_times_each_decode_path(tmp_path, capsys):
    from PIL import Image

    # the default synthetic images are real JPEGs of ImageNet-like size
    big = fake_imagefolder(tmp_path / "big", images=2, classes=1)
    (f,) = sorted((big / "train").rglob("*.JPEG"))[:1]
    with Image.open(f) as im:
        assert im.format == "JPEG" and im.size == (500, 375) and im.mode == "RGB"
    assert 5_000 < f.stat().st_size < 500_000

    where = tmp_path / "fake"
    args = ["--write", str(where), "--images", "8", "--classes", "2", "--size", "64x48", "--batch-size", "4",
            "--batches", "2", "--workers", "0", "--device", "cpu"]
    main(args)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["decode"] for r in rows] == ["pil", "torchvision"]
    for r in rows:
        assert r["images"] == 8 and r["images_per_s"] > 0 and r["skipped"] == 0 and r["root"] == str(where)
    files = sorted((where / "train").rglob("*.JPEG"))
    assert len(files) == 8 and len(list((where / "val").rglob("*.JPEG"))) == 2
    with Image.open(files[0]) as im:
        assert im.size == (64, 48)
    stamp = [p.stat().st_mtime_ns for p in files]
    main(args + ["--decode", "pil"])                     # a second probe reuses the folder as is
    assert [p.stat().st_mtime_ns for p in files] == stamp
    with pytest.raises(SystemExit):
        main(["--size", "500"])


def test_probe_times_imagefolder_and_shards_alternating_and_converts_a_root(tmp_path, capsys):
    args = ["--write", str(tmp_path / "fake"), "--images", "8", "--classes", "2", "--size", "64x48",
            "--batch-size", "4", "--batches", "1", "--workers", "0", "--device", "cpu", "--decode", "pil",
            "--layout", "imagefolder", "tar", "--rounds", "2", "--shard-size", "3"]
    main(args)
    *rows, summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["layout"] for r in rows] == ["imagefolder", "tar", "tar", "imagefolder"]        # ABBA
    assert rows[1]["root"] == str(tmp_path / "fake" / "shards") and all(r["skipped"] == 0 for r in rows)
    assert len(list((tmp_path / "fake" / "shards" / "train").glob("*.tar"))) == 3
    assert summary["tar_over_imagefolder"]["pil"] > 0 and len(summary["runs"]["tar/pil"]) == 2

    main(["--root", str(tmp_path / "fake"), "--write-shards", str(tmp_path / "mine"), "--shard-size", "5"])
    out = json.loads(capsys.readouterr().out)
    assert out["train_images"] == 8 and out["train_shards"] == 2 and out["val_shards"] == 1
    assert (tmp_path / "mine" / "classes.txt").read_text() == "n00000000\nn00000001\n"
    with tarfile.open(tmp_path / "mine" / "train" / "imagenet-train-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 10 and names[0].endswith(".cls") and names[1] == names[0][:-4] + ".jpg"
    with pytest.raises(SystemExit):
        main(["--write-shards", str(tmp_path / "x")])                  # needs --root
    assert np.isfinite(summary["median_images_per_s"]["imagefolder/pil"])


def test_python_dash_m_bench_data_runs_the_probe_command():
    out = subprocess.run([sys.executable, "-m", "rankbench.bench.data", "--help"], cwd=Path(__file__).parents[2],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m rankbench.bench.data") and "--write-shards" in out.stdout
