"""The networks rankbench compresses, built by name: ``build_model(name, num_classes, input_shape)``.

- ``mlp``: Flatten -> Linear -> ReLU -> Linear -> ReLU -> Linear (ARSVD's setting; any input shape).
- ``cnn``: a small conv net for digits (1x8x8): a first 3x3 conv, then three more 3x3 convs (one
  with stride 2) so TRP has layers to train, global average pooling, a Linear head.
- ``resnet20`` / ``resnet32`` / ``resnet56``: CIFAR ResNets (16/32/64 planes, three stages), in
  one of two variants (model option ``variant``):

  - ``he`` (default): He et al. 2016, section 4.2: (depth-2)/6 basic blocks per stage, shortcut
    **option A** (identity, strided subsampling and zero-padded channels: no parameters).
  - ``trp``: the network the official TRP code builds (``models/cifar/resnet.py``, from
    bearpaw/pytorch-classification), which its published numbers came from: **option B**
    shortcuts (1x1 conv + BN where the shape changes; ResNet-20 has 272,474 parameters, the
    paper's 0.27M), and from depth 44 on *bottleneck* blocks (1x1, 3x3, 1x1, expansion 4) with
    (depth-2)/6 of them per stage, as that code counts them (so its "ResNet-56" has 9 bottleneck
    blocks per stage, 869,530 parameters), with no ReLU between its 3x3 conv's BN and the last 1x1
    conv (the official block has that ReLU commented out).

  ``shortcut: A|B`` overrides the variant's shortcut. Example: ``model: {name: resnet20, variant: trp}``.
- ``resnet18`` / ``resnet50``: torchvision's ImageNet ResNets. Weights come only from a local
  file (``pretrained=path``), never from the internet. Inputs of 64 px or less get a 3x3 stride-1
  ``conv1`` and no max-pool (the usual CIFAR adaptation); other input channel counts get a fresh
  ``conv1``; other class counts a fresh ``fc``. Those adapted layers are not loaded from the file.
- ``torchvision:NAME`` / ``timm:NAME``: any classification model of torchvision or timm
  (``rankbench.bench.models.zoo``); a bare torchvision name that is none of the above (``resnet34``,
  ``mobilenet_v2``) means ``torchvision:NAME``.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rankbench.bench.checks import bad, unknown


# --------------------------------------------------------------------------- small models


def mlp(num_classes: int, input_shape: Sequence[int], hidden: Sequence[int] = (256, 128)) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def cnn(num_classes: int, input_shape: Sequence[int], width: int = 16) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        *_conv_bn(c, width),                  # first conv: kept dense by the official layer choice
        *_conv_bn(width, 2 * width),
        *_conv_bn(2 * width, 2 * width, stride=2),
        *_conv_bn(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


# --------------------------------------------------------------------------- CIFAR ResNets


class _ShortcutA(nn.Module):
    """Option A: identity with stride-2 subsampling and zero channels appended; no parameters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != planes:
            self.shortcut = (_ShortcutA(cin, planes, stride) if shortcut == "A" else
                             nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """The official TRP code's bottleneck (1x1, 3x3 with the stride, 1x1 to 4x the planes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != out:
            self.shortcut = (_ShortcutA(cin, out, stride) if shortcut == "A" else
                             nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))      # no ReLU here, as in the official TRP code's bottleneck
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


VARIANTS = ("he", "trp")


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: conv3x3(16), three stages (16, 32, 64 planes), avg-pool, fc.
    ``variant``: ``he`` (basic blocks, option A) or ``trp`` (the official TRP code's network:
    option B; bottleneck blocks from depth 44); ``shortcut`` overrides the variant's."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, variant: str = "he",
                 shortcut: Optional[str] = None):
        super().__init__()
        if variant not in VARIANTS:
            raise bad("variant", variant, "he (He et al. 2016: basic blocks, shortcut A), "
                      "trp (the official TRP code's network: shortcut B, bottleneck blocks from depth 44)")
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise bad("depth", depth, "6n+2, n >= 1")
        block = "bottleneck" if variant == "trp" and depth >= 44 else "basic"
        blk: type[nn.Module] = BasicBlock if block == "basic" else Bottleneck
        shortcut = shortcut or ("A" if variant == "he" else "B")
        if shortcut not in ("A", "B"):
            raise bad("shortcut", shortcut, "'A' (identity, zero-padded) or 'B' (1x1 conv + BN projection)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(blk(cin, planes, stride if i == 0 else 1, shortcut))
                cin = planes * blk.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _cifar(depth: int) -> Callable[..., nn.Module]:
    def make(num_classes: int, input_shape: Sequence[int], variant: str = "he",
             shortcut: Optional[str] = None) -> nn.Module:
        return CifarResNet(depth, num_classes, input_shape[0], variant, shortcut)
    make.__doc__ = f"CIFAR ResNet-{depth}: variant he (He et al. 2016) or trp (the official TRP code's)."
    return make


# --------------------------------------------------------------------------- torchvision


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def make(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        c, h = input_shape[0], input_shape[-1]
        if h <= 64:  # 7x7/2 + max-pool would leave 1x1 maps on CIFAR-size inputs
            model.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif c != 3:
            model.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
        return model
    make.__doc__ = f"torchvision {arch}, adapted to the input shape and class count."
    return make


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet20": _cifar(20),
    "resnet32": _cifar(32),
    "resnet56": _cifar(56),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
}

# Layers a torchvision model may have replaced to fit the data: they keep their fresh init.
_ADAPTABLE = ("conv1.weight", "fc.weight", "fc.bias")


def _read_state(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a local file: bare, or under "state_dict"/"model", "module." peeled."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained: no such file {str(p)!r}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if not mmap:
            raise
        state = torch.load(p, map_location="cpu", weights_only=True)   # legacy format: no mmap
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained: {str(p)!r} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _matching(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: str,
              adaptable: Sequence[str]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` to load into a model whose state dict is ``own``; ValueError
    naming the first key that is missing, unexpected or of another shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        hint = f"; closest to {missing[0]!r} in the file: {difflib.get_close_matches(missing[0], list(state), 1)}" if missing else ""
        raise ValueError(f"pretrained: {str(path)!r} does not match the model: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}{hint}")
    load = {}
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            if k in adaptable:
                continue
            raise ValueError(f"pretrained: key {k!r} has shape {tuple(v.shape)} in {str(path)!r}, "
                             f"the model expects {tuple(own[k].shape)}")
        load[k] = v
    return load


def load_weights(model: nn.Module, path: str, adaptable: Sequence[str] = ()) -> nn.Module:
    """Load a local state dict into ``model``, checking every key and shape. Accepts a bare state
    dict or one under "state_dict"/"model", with or without DataParallel's "module." prefix.
    Keys in ``adaptable`` whose shapes differ (layers replaced to fit the data) are left as built."""
    own = model.state_dict()
    own.update(_matching(own, _read_state(path), path, adaptable))
    model.load_state_dict(own)
    return model


# --------------------------------------------------------------------------- by name


def canonical_name(name: Any) -> str | None:
    """The builder key of model ``name`` (``resnet34`` -> ``torchvision:resnet34``), or None."""
    from rankbench.bench.models.zoo import is_zoo_name, torchvision_names

    if not isinstance(name, str):
        return None
    if name in MODELS or is_zoo_name(name):
        return name
    return f"torchvision:{name}" if name in torchvision_names() else None


def model_names() -> list[str]:
    """What a spec's ``model`` accepts: rankbench's models, then the zoo forms."""
    return sorted(MODELS) + ["torchvision:NAME", "timm:NAME"]


def get_builder(name: str, field: str = "model") -> Callable[..., nn.Module]:
    """The builder ``make(num_classes, input_shape, **options)`` of model ``name``; the one-line
    error for an unknown name (a zoo name is looked up in torchvision or timm)."""
    from rankbench.bench.models.zoo import zoo_builder

    key = canonical_name(name)
    if key is None:
        raise unknown(field, name, model_names())
    return MODELS[key] if key in MODELS else zoo_builder(key)


def _adaptable(name: str, model: nn.Module) -> tuple[str, ...]:
    from rankbench.bench.models.zoo import adaptable_keys

    key = canonical_name(name) or name
    if key in ("resnet18", "resnet50"):
        return _ADAPTABLE
    return adaptable_keys(model) if key.startswith("torchvision:") else ()


def is_zoo_model(name: str) -> bool:
    """Whether ``name`` is a torchvision/timm model built by ``rankbench.bench.models.zoo`` (options unchecked by
    a signature: its constructor takes ``**kwargs``)."""
    key = canonical_name(name)
    return key is not None and key not in MODELS


def check_options(name: str, num_classes: int, input_shape: Sequence[int], **options: Any) -> nn.Module:
    """Build ``name`` with ``options`` on the meta device (no memory, no init), so an option its
    constructor refuses fails before training, with one line; returns the meta model."""
    try:
        with torch.device("meta"):
            return get_builder(name)(num_classes, tuple(input_shape), **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
        raise bad("model", name, f"options its constructor takes (given {given})",
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def check_pretrained(name: str, num_classes: int, input_shape: Sequence[int], pretrained: str,
                     **options: Any) -> None:
    """The key and shape check of ``build_model(..., pretrained=...)``, done before any training:
    the model is built on the meta device (no memory, no init) and the file is memory-mapped, so
    checking a ResNet-50 file costs well under a second. Raises what ``build_model`` would."""
    model = check_options(name, num_classes, input_shape, **options)
    own = model.state_dict()
    timm = (canonical_name(name) or "").startswith("timm:")
    # timm's loader adapts head, input channels and position embeddings itself: names only
    _matching(own, _read_state(pretrained, mmap=True), pretrained, tuple(own) if timm else _adaptable(name, model))


def build_model(name: str, num_classes: int, input_shape: Sequence[int], pretrained: Optional[str] = None,
                **options: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes and inputs of ``input_shape`` (C, H, W),
    optionally loading a local state dict (``pretrained``: path). ``options`` go to the builder
    (e.g. ``shortcut="B"`` for the CIFAR ResNets)."""
    builder = get_builder(name)
    if num_classes < 1:
        raise bad("num_classes", num_classes, "an int >= 1")
    if pretrained and (canonical_name(name) or "").startswith("timm:"):
        return builder(num_classes, tuple(input_shape), pretrained=pretrained, **options)
    model = builder(num_classes, tuple(input_shape), **options)
    if pretrained:
        load_weights(model, pretrained, _adaptable(name, model))
    return model
