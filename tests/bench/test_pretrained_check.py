"""Pretrained baselines from files are checked by key and shape when the spec is read, before Ray
starts; the ImageNet TRP recipe specs validate in full against a real ImageFolder and weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from rankbench.bench.data import write_fake_imagefolder
from rankbench.bench.models.builtin import build_model
from rankbench.bench.spec.parse import SpecError, load_spec, parse_spec

CONFIGS = Path(__file__).parents[2] / "bench" / "configs"


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    # 1000 class folders would be the real thing; the check only counts folders, so 3 do
    return write_fake_imagefolder(tmp_path_factory.mktemp("in") / "imagenet", classes=3, per_class=1,
                                  val_per_class=1, size=(40, 30))


def _spec(root: Path, arch: str, weights: Path) -> str:
    return (f"sweep: p\ndata: {{name: imagenet, root: {root}}}\n"
            f"model: {{name: {arch}, pretrained: {weights}}}\nmethods: [dense]\n")


def test_a_wrong_pretrained_file_is_refused_at_spec_time_naming_key_and_shapes(tmp_path):
    weights = tmp_path / "r20-100.pt"
    torch.save(build_model("resnet20", 100, (3, 32, 32)).state_dict(), weights)
    spec = f"sweep: p\ndata: {{name: synthetic}}\nmodel: {{name: resnet20, pretrained: {weights}}}\nmethods: [dense]\n"
    with pytest.raises(SpecError) as ei:
        parse_spec(spec)
    msg = str(ei.value)
    assert msg.startswith(f"model.pretrained: '{weights}': key 'fc.weight' has shape (100, 64)"), msg
    assert "the model expects (10, 64)" in msg and msg.endswith("for 10 classes and inputs (3, 32, 32)")
    # the same file for the data it was made for passes, and without check nothing is read
    ok = spec.replace("{name: synthetic}", "{name: synthetic, num_classes: 100}")
    assert parse_spec(ok).trials[0].model_cfg["pretrained"] == str(weights)
    parse_spec(spec, check=False)


def test_resnet18_weights_for_a_resnet50_spec_fail_before_training(tmp_path, imagefolder):
    weights = tmp_path / "resnet18.pth"
    torch.save(build_model("resnet18", 1000, (3, 224, 224)).state_dict(), weights)
    with pytest.raises(SpecError, match=r"^model.pretrained: .*does not match the model: missing keys "
                                        r"\['layer1.0.conv3.weight'"):
        parse_spec(_spec(imagefolder, "resnet50", weights))
    # ImageNet weights (1000 classes) on a 3-class folder: only the fc differs, and it is adapted
    parse_spec(_spec(imagefolder, "resnet18", weights))


@pytest.mark.parametrize("name,arch", [("trp-imagenet-resnet18", "resnet18"), ("trp-imagenet-resnet50", "resnet50")])
def test_the_imagenet_trp_recipe_spec_validates_in_full(tmp_path, imagefolder, name, arch):
    spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    weights = tmp_path / f"{arch}.pth"
    torch.save(build_model(arch, 1000, (3, 224, 224)).state_dict(), weights)
    spec["data"]["root"] = str(imagefolder)
    spec["model"]["pretrained"] = str(weights)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_spec(path)              # check=True: data root, methods, pretrained shapes
    trp = [t for t in sweep.trials if t.method == "trp"]
    assert trp and all((t.train_cfg["epochs"], t.train_cfg["lr"]) == (10, 1e-4) for t in trp)
    assert all(t.model_cfg["pretrained"] == str(weights) for t in sweep.trials)
