"""Inputs a model sees: ``data.resize`` and ``data.channels`` reshape any in-memory dataset's images
once at load time (exactly ``F.interpolate``'s bilinear resize, a channel repeated), the input
shape follows them, and a spec's ids stay as they were without them. A model whose smallest input
exceeds the data's is refused when the spec is read, previewed or run (exit 2, one line naming
the model, the data's shape and ``data.resize``); one built for much larger images is warned
about. The shipped ``vit-tiny`` spec (DeiT-Tiny on digits resized to 32x32 RGB) parses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.data import build_data, data_shape, describe
from rankbench.bench.data.memory import CropFlip, Splits, adapt_splits, repeat_channels, resize_images
from rankbench.bench.spec.parse import load_spec, parse_spec

DEIT = "timm:deit_tiny_patch16_224"
BASE: dict[str, Any] = {"sweep": "x", "seeds": [0], "data": {"name": "digits"}, "model": "cnn",
                        "train": {"epochs": 1}, "methods": [{"name": "dense"}]}
# `rankbench show quick` before data.resize/channels existed
QUICK_IDS = {
    "0e067aa65462", "2aa6c2d8fb87", "9e2125cf42a7", "be4cbbdf35e3", "01fcc5417a1f", "c760c7e406cd", "f7ffed36d2f1",
    "c568e165fc98", "b2ce6e0f4d5d", "148328ad82ac", "a24f0ff005c6", "a4f18c794b62", "1c93fc14200d", "27f19c0ef6d6",
    "64d061fe7448", "00485a54b60c", "a8f861a49bdb", "95b1a5d0d9c4", "b79d9479cb13", "3b68f05189a5", "3d89b2b03128",
    "9b0d86b6ab6b", "a2a673284c59", "c287b1c14e2c"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent")


def timm_or_skip() -> None:
    pytest.importorskip("timm", reason="timm is the optional extra rankbench[timm]")


def show(tmp_path: Path, capsys, **edit: Any) -> tuple[int, list[str], list[str]]:
    """``rankbench show`` of the base spec with ``edit``: (exit status, stdout lines, stderr lines)."""
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump({**BASE, **edit}))
    rc = main(["show", str(f), "--results", str(tmp_path / "res")])
    cap = capsys.readouterr()
    return rc, cap.out.strip().splitlines(), cap.err.strip().splitlines()


# --------------------------------------------------------------------- resize and channels

def test_resize_is_bilinear_interpolate_for_float_and_uint8_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 1, 8, 8), generator=g)
    for side in (32, 5, 8):
        want = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        assert torch.equal(resize_images(x, side), want) if side != 8 else resize_images(x, 8) is x
    u = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    got = resize_images(u, 12)
    want = F.interpolate(u.float(), size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    assert got.dtype == torch.uint8 and torch.equal(got, want.round().clamp(0, 255).to(torch.uint8))


def test_channels_repeat_one_channel_and_keep_an_equal_count():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = repeat_channels(x, 3)
    assert y.shape == (2, 3, 4, 4) and all(torch.equal(y[:, c], x[:, 0]) for c in range(3))
    assert repeat_channels(y, 3) is y
    with pytest.raises(UserError, match=r"^data.channels: 1: "):
        repeat_channels(y, 1)


def test_adapt_splits_repeats_statistics_per_channel_and_scales_the_crop_padding():
    s = Splits(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), torch.rand(2, 1, 8, 8),
               torch.zeros(2, dtype=torch.long), num_classes=2, mean=(0.3,), std=(0.2,), augment=CropFlip(1, False))
    a = adapt_splits(s, 32, 3, torch.device("cpu"))
    assert a.xtr.shape == (4, 3, 32, 32) and a.xva.shape == (2, 3, 32, 32)
    assert a.mean == (0.3,) * 3 and a.std == (0.2,) * 3 and a.augment.pad == 4 and not a.augment.flip
    assert adapt_splits(s, None, None, torch.device("cpu")) is s


def test_digits_resized_to_32_rgb_are_the_interpolated_images_and_the_shape_follows():
    plain = build_data({"name": "digits"}, 0, 64, False)
    big = build_data({"name": "digits", "resize": 32, "channels": 3}, 0, 64, False)
    assert big.input_shape == (3, 32, 32) and plain.input_shape == (1, 8, 8)
    assert describe({"name": "digits", "resize": 32, "channels": 3}) == ((3, 32, 32), 10)
    assert data_shape({"name": "cifar10", "root": "/nowhere", "resize": 64}) == (3, 64, 64)    # no file read
    x, y = next(iter(plain.val))
    xb, yb = next(iter(big.val))
    # normalization is affine per channel and bilinear weights sum to 1: the order does not matter
    want = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).expand(-1, 3, -1, -1)
    assert torch.equal(y, yb) and torch.allclose(xb, want, atol=1e-5)
    assert big.train_size == plain.train_size and big.steps_per_epoch == plain.steps_per_epoch


@pytest.mark.parametrize("data, field", [
    ({"name": "digits", "resize": 0}, "data.resize"),
    ({"name": "digits", "resize": True}, "data.resize"),
    ({"name": "digits", "channels": 2}, "data.channels"),
    ({"name": "cifar10", "root": "/nowhere", "channels": 1}, "data.channels"),
    ({"name": "imagenet", "root": "/nowhere", "channels": 1}, "data.channels"),
    ({"name": "synthetic", "shape": [64], "resize": 8}, "data.resize"),
    ({"name": "synthetic", "shape": [64], "channels": 3}, "data.channels"),
    ({"name": "cifar10", "root": "/nowhere", "resize": 1024}, "data.resize"),     # 189 GB in memory
])
def test_impossible_resize_or_channels_are_refused_naming_the_field(data, field):
    with pytest.raises(UserError, match=rf"^{field}: .*; accepted: "):
        data_shape(data)


def test_ids_are_unchanged_without_the_new_options():
    assert {t.id for t in load_spec("quick", check=False).trials} == QUICK_IDS
    plain = parse_spec(yaml.safe_dump(BASE), check=False).trials[0].id
    resized = parse_spec(yaml.safe_dump({**BASE, "data": {"name": "digits", "resize": 16}}), check=False).trials[0].id
    assert resized != plain


# --------------------------------------------------------------------- a model that does not fit

def test_deit_on_8x8_digits_is_refused_by_show_with_one_line_naming_model_shape_and_fix(tmp_path, capsys):
    timm_or_skip()
    rc, out, err = show(tmp_path, capsys, model=DEIT)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: model: "), err
    assert DEIT in err[0] and "(1, 8, 8)" in err[0] and "data.resize: 16" in err[0] and "patch_size" in err[0], err
    assert not out


def test_deit_with_resized_data_and_a_matching_patch_size_is_accepted_without_warning(tmp_path, capsys):
    timm_or_skip()
    edit = dict(data={"name": "digits", "resize": 32, "channels": 3},
                model={"name": DEIT, "img_size": 32, "patch_size": 4})
    rc, out, err = show(tmp_path, capsys, **edit)
    assert rc == 0 and not err and out[0].startswith("sweep x"), (out, err)
    sweep = parse_spec(yaml.safe_dump({**BASE, **edit}))          # the run's checks, files included
    assert sweep.trials[0].data_cfg == {"name": "digits", "resize": 32, "channels": 3}
    assert not capsys.readouterr().err


def test_a_model_built_for_far_larger_images_is_warned_about_in_one_line(tmp_path, capsys):
    rc, out, err = show(tmp_path, capsys, model="torchvision:mobilenet_v2")
    assert rc == 0 and len(err) == 1 and err[0].startswith("warning: model: torchvision:mobilenet_v2 "), err
    assert "224x224" in err[0] and "8x8" in err[0] and "data.resize: 224" in err[0], err
    rc, out, err = show(tmp_path, capsys, model="torchvision:mobilenet_v2", data={"name": "digits", "resize": 64})
    assert rc == 0 and not err, err                                  # 64 >= 224 / 4


# --------------------------------------------------------------------- the shipped vit-tiny spec

def test_vit_tiny_spec_parses_with_resized_digits_and_the_linear_scheme():
    timm_or_skip()
    sweep = load_spec("vit-tiny", overrides=["seeds=[0]"])
    by = {t.method: t for t in sweep.trials}
    assert set(by) == {"dense", "svd", "trp", "svd-training", "arsvd"} and len(sweep.trials) == 6
    dense = by["dense"]
    assert dense.model == DEIT and dense.model_cfg == {"img_size": 32, "patch_size": 4}
    assert dense.data_cfg == {"name": "digits", "resize": 32, "channels": 3}
    assert all(t.params_dict.get("scheme") == "linear" for t in sweep.trials if not t.is_baseline)
    assert dict(dense.train)["optimizer"] == "adamw"
