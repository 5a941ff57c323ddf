"""rankbench.bench.models.builtin: every model builds and runs at its input shape, known parameter counts, the
layer structure methods rely on, and local-file weights with shape checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rankbench.bench.models.builtin import MODELS, CifarResNet, build_model
from rankbench.methods import lowrank as L

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "resnet18": (3, 32, 32), "resnet50": (3, 32, 32)}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_maps_a_batch_to_class_logits(name):
    shape = SHAPES.get(name, (3, 32, 32))
    model = build_model(name, 7, shape).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name,params", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6)])
def test_cifar_resnets_have_he_et_al_parameter_counts(name, params):
    model = build_model(name, 10, (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)
    # option A shortcuts: every conv is a 3x3 except none; depth = convs + fc
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) for m in convs) and len(convs) + 1 == int(name[6:])


def test_shortcut_option_b_and_the_official_trp_variant():
    b = build_model("resnet20", 10, (3, 32, 32), shortcut="B")
    assert [n for n, m in b.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)] == \
        ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    with pytest.raises(ValueError, match=r"^shortcut: 'C'; accepted: 'A' \(identity, zero-padded\) or 'B' "):
        build_model("resnet20", 10, (3, 32, 32), shortcut="C")
    with pytest.raises(ValueError, match=r"^variant: 'official'; accepted: he \(He et al. 2016"):
        build_model("resnet20", 10, (3, 32, 32), variant="official")
    # variant trp at depth 20: option B basic blocks, the same network as shortcut B
    assert str(build_model("resnet20", 10, (3, 32, 32), variant="trp")) == str(b)
    # at depth 56 the official code builds (56 - 2) / 6 = 9 bottleneck blocks per stage
    bott = build_model("resnet56", 10, (3, 32, 32), variant="trp")
    assert len(bott.layer1) == len(bott.layer2) == len(bott.layer3) == 9
    assert bott.fc.in_features == 256  # 64 planes x expansion 4
    convs = [m for m in bott.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 27 * 3 + 3  # stem, 3 per bottleneck, 3 projection shortcuts
    # TRP decomposes the 3x3 convs only: one per bottleneck block
    assert len(L.select_layers(bott)) == 27


def test_cnn_gives_trp_layers_to_train():
    model = build_model("cnn", 10, (1, 8, 8))
    chosen = L.select_layers(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and list(chosen) == convs[1:]     # every conv but the first, kept dense
    assert all(model.get_submodule(n).kernel_size == (3, 3) for n in chosen)


def test_unknown_model_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"^model: 'resnet-20': unknown \(did you mean 'resnet20'\?\); accepted: cnn, mlp, "):
        build_model("resnet-20", 10, (3, 32, 32))
    with pytest.raises(ValueError, match=r"^depth: 21; accepted: 6n\+2, n >= 1$"):
        CifarResNet(21, 10)
    with pytest.raises(ValueError, match=r"^num_classes: 0; accepted: an int >= 1$"):
        build_model("cnn", 0, (1, 8, 8))


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    src = build_model("resnet20", 10, (3, 32, 32)).eval()
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "r20.pt"
    # a DataParallel checkpoint wrapped in {"state_dict": ...}: both layers are peeled off
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = build_model("resnet20", 10, (3, 32, 32), pretrained=str(path)).eval()
    assert torch.equal(dst(x), src(x))


def test_pretrained_errors_name_the_key_or_the_file(tmp_path):
    path = tmp_path / "r20-100.pt"
    torch.save(build_model("resnet20", 100, (3, 32, 32)).state_dict(), path)
    with pytest.raises(ValueError, match=r"key 'fc.weight' has shape \(100, 64\).*expects \(10, 64\)"):
        build_model("resnet20", 10, (3, 32, 32), pretrained=str(path))
    path32 = tmp_path / "r32.pt"
    torch.save(build_model("resnet32", 10, (3, 32, 32)).state_dict(), path32)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1.3.conv1.weight'"):
        build_model("resnet20", 10, (3, 32, 32), pretrained=str(path32))
    with pytest.raises(FileNotFoundError, match="pretrained: no such file"):
        build_model("resnet20", 10, (3, 32, 32), pretrained=str(tmp_path / "missing.pt"))


def test_torchvision_resnet18_adapts_stem_and_head_and_keeps_the_rest(tmp_path):
    imagenet = build_model("resnet18", 1000, (3, 224, 224))
    path = tmp_path / "resnet18-imagenet.pt"
    torch.save(imagenet.state_dict(), path)
    # CIFAR-sized input, 10 classes: 3x3 stride-1 stem and no max-pool, fresh fc; the rest is loaded
    small = build_model("resnet18", 10, (3, 32, 32), pretrained=str(path))
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert small.fc.out_features == 10
    assert torch.equal(small.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    same = build_model("resnet18", 1000, (3, 224, 224), pretrained=str(path))
    assert torch.equal(same.conv1.weight, imagenet.conv1.weight) and torch.equal(same.fc.weight, imagenet.fc.weight)
    gray = build_model("resnet18", 10, (1, 96, 96))
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)
    with torch.no_grad():
        assert gray.eval()(torch.randn(1, 1, 96, 96)).shape == (1, 10)
