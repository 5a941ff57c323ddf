"""Any classification model of torchvision or timm, by name: ``torchvision:NAME`` and ``timm:NAME``.

- ``torchvision:NAME`` (``torchvision:mobilenet_v2``, ``torchvision:vgg16_bn``, ...; a bare
  torchvision name that is not one of rankbench's own models, e.g. ``resnet34``, means the same):
  ``torchvision.models.get_model(NAME, weights=None, num_classes=...)``. Inputs with other than 3
  channels get a fresh first conv (same kernel, stride, padding); ViTs get ``image_size``.
- ``timm:NAME`` (``timm:resnet50``, ``timm:deit_tiny_patch16_224``, ...): ``timm.create_model``
  with ``num_classes``, ``in_chans`` and, where the model takes it, ``img_size`` from the data.
  timm is an optional extra: ``pip install 'rankbench[timm]'``.

Other options of the model entry go to the constructor (e.g. ``width_mult: 0.5``,
``drop_path_rate: 0.1``), except what the harness passes itself (:data:`RESERVED`: the class
count, input channels and image size come from the data, weights from ``pretrained: FILE``);
a rate (``*_rate``, ``*dropout``, ``*_prob``) is a probability in [0, 1), even where the
constructor would take another value (timm turns a negative ``drop_path_rate`` into no drop
path). :func:`check_zoo_options` refuses both at spec time, naming the option. Weights come
only from a local file (``pretrained: FILE``), never a download: torchvision files load with
every key and shape checked (the classifier and an adapted first conv keep their fresh init
when their shapes differ); timm files load through timm's own loader pointed at the file, which
also adapts the classifier, the input channels and a ViT's position embedding to the data.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from torch import nn

from rankbench.bench.checks import bad, did_you_mean, is_number

PREFIXES = ("torchvision", "timm")

# What the harness passes a zoo constructor itself, so a spec's model entry may not: option -> why.
_FROM_DATA = {"num_classes": "the data's class count", "input_shape": "the data's input shape"}
_WEIGHTS = "weights come only from a local file, pretrained: FILE"
RESERVED: dict[str, dict[str, str]] = {
    "torchvision": {**_FROM_DATA, "weights": _WEIGHTS},
    "timm": {**_FROM_DATA, "in_chans": "the data's channel count", "pretrained_cfg": _WEIGHTS,
             "pretrained_cfg_overlay": _WEIGHTS, "checkpoint_path": _WEIGHTS},
}


def torchvision_names() -> list[str]:
    """torchvision's classification models (not detection, segmentation, video...)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_zoo_name(name: Any) -> bool:
    """Whether ``name`` has a zoo prefix (``torchvision:``/``timm:``); the name itself is checked
    by :func:`zoo_builder`."""
    return isinstance(name, str) and name.partition(":")[0] in PREFIXES and ":" in name


def _unknown(prefix: str, arch: str, names: Sequence[str]) -> ValueError:
    hint = did_you_mean(arch, names)
    return bad("model", f"{prefix}:{arch}", f"{prefix}:NAME with NAME one of {prefix}'s {len(names)} "
               f"classification models (e.g. {', '.join(list(names)[:4])})", "unknown model" + hint)


def zoo_builder(name: str) -> Callable[..., nn.Module]:
    """The builder ``make(num_classes, input_shape, **options)`` of zoo model ``name``; a one-line
    error naming the model when torchvision or timm has no such classification model."""
    prefix, _, arch = name.partition(":")
    if prefix == "torchvision":
        names = torchvision_names()
        if arch not in names:
            raise _unknown(prefix, arch, names)
        return _torchvision(arch)
    if prefix == "timm":
        try:
            import timm
        except ImportError:
            raise bad("model", name, "torchvision models, or timm models with the extra installed: "
                      "pip install 'rankbench[timm]'", "timm is not installed") from None
        if not timm.is_model(arch):
            raise _unknown(prefix, arch, timm.list_models())
        return _timm(arch)
    raise bad("model", name, "torchvision:NAME or timm:NAME")


def is_rate(option: str) -> bool:
    """Whether a constructor option is a dropout / drop-path / stochastic-depth probability."""
    return option.endswith(("_rate", "dropout", "_prob"))


def check_zoo_options(name: str, options: dict[str, Any], where: str, num_classes: int,
                      input_shape: Sequence[int]) -> None:
    """Refuse, naming ``<where>.<option>``, an option the harness passes itself (:data:`RESERVED`)
    and a rate outside [0, 1), before anything is built."""
    prefix = name.partition(":")[0] if is_zoo_name(name) else "torchvision"   # a bare name is torchvision's
    reserved = RESERVED.get(prefix, {})
    own = {"num_classes": num_classes, "input_shape": tuple(input_shape), "in_chans": input_shape[0]}
    for key, value in options.items():
        if key in reserved:
            now = f" ({own[key]} for this data)" if key in own else ""
            raise bad(f"{where}.{key}", value, f"{name}'s other options (not {', '.join(reserved)})",
                      f"the harness passes {key} itself: {reserved[key]}{now}")
        if is_rate(key) and not (is_number(value) and 0 <= value < 1):
            raise bad(f"{where}.{key}", value, "a number in [0, 1)",
                      "a dropout / drop-path rate is a probability")


def check_drop_path(name: str, key: str | None, options: dict[str, Any], rate: float, where: str) -> None:
    """``train.drop_path`` (``where``) at ``rate`` > 0 for model ``name`` (builder key ``key``, from
    ``rankbench.bench.models.builtin.canonical_name``): refused, in one line, unless ``key`` is a
    timm model whose constructor takes ``drop_path_rate`` (found by building it on the meta
    device: no memory, no init) and its model entry does not set ``drop_path_rate`` itself."""
    if "drop_path_rate" in options:
        raise bad(where, rate, f"0 when the model sets drop_path_rate itself ({name}: "
                  f"drop_path_rate={options['drop_path_rate']})", "two values for one rate")
    if not (key or "").startswith("timm:"):
        raise bad(where, rate, "0 for this model; drop path is for timm models that take drop_path_rate",
                  f"{name} has no drop path")
    if not _takes_drop_path(key.partition(":")[2]):
        raise bad(where, rate, "0 for this model; drop path is for timm models that take drop_path_rate",
                  f"{name}'s constructor takes no drop_path_rate")


@functools.lru_cache(maxsize=None)
def _takes_drop_path(arch: str) -> bool:
    """Whether timm's ``arch`` accepts ``drop_path_rate``: a TypeError naming it says no; any
    other failure is left to the model check (``rankbench.bench.preflight.model``)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(arch, pretrained=False, drop_path_rate=0.1)
    except TypeError as e:
        return "drop_path_rate" not in str(e)
    except Exception:  # noqa: BLE001 (not this check's business: the model check names it)
        return True
    return True


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n, m
    return None


def last_linear(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def make(num_classes: int, input_shape: Sequence[int], **options: Any) -> nn.Module:
        import torchvision

        from rankbench.methods.lowrank import set_module

        c, h = input_shape[0], input_shape[-1]
        if arch.startswith("vit_"):
            options.setdefault("image_size", h)
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
        stem = first_conv(model)
        if stem is not None and stem[1].in_channels != c:
            n, m = stem
            set_module(model, n, nn.Conv2d(c, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                           m.groups, m.bias is not None, m.padding_mode))
        return model
    make.__doc__ = f"torchvision {arch}, for the data's class count and input channels."
    return make


def _timm(arch: str) -> Callable[..., nn.Module]:
    def make(num_classes: int, input_shape: Sequence[int], pretrained: str | None = None,
             **options: Any) -> nn.Module:
        import timm

        c, h = input_shape[0], input_shape[-1]
        kw: dict[str, Any] = {"num_classes": num_classes, "in_chans": c, **options}
        cfg = timm.models.get_pretrained_cfg(arch)
        default = tuple(getattr(cfg, "input_size", None) or ()) if cfg is not None else ()
        # timm's loader, pointed at the local file: no download; it adapts head, channels, pos-embed
        load = ({"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained)}} if pretrained
                else {"pretrained": False})
        if default and default[-1] != h and "img_size" not in kw:
            try:   # ViT-style models fix their token grid at build time; CNNs take no img_size
                return timm.create_model(arch, img_size=h, **load, **kw)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
        return timm.create_model(arch, **load, **kw)
    make.__doc__ = f"timm {arch}, for the data's class count, input channels and image size."
    return make


def native_side(name: str, options: dict[str, Any]) -> int | None:
    """The side of the square input zoo model ``name`` (``torchvision:NAME``/``timm:NAME``) was
    built for, as its library records it: timm's ``pretrained_cfg.input_size``, torchvision's
    first weights' evaluation crop (``crop_size``); None where neither says. A timm model built
    with another ``patch_size`` than its own sees its native token grid at the side scaled by the
    ratio of the two (the default read from the model built on the meta device)."""
    import torch

    prefix, _, arch = name.partition(":")
    if prefix == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        size = tuple(getattr(cfg, "input_size", None) or ()) if cfg is not None else ()
        if not size:
            return None
        side = int(size[-1])
        patch = options.get("patch_size")
        if is_number(patch) and patch > 0:
            with torch.device("meta"):
                embed = getattr(timm.create_model(arch, pretrained=False), "patch_embed", None)
            own = getattr(embed, "patch_size", None)
            if own:
                side = round(side * patch / tuple(own)[-1])
        return side
    if prefix == "torchvision":
        import torchvision

        try:
            weights = list(torchvision.models.get_model_weights(arch))
        except (ValueError, KeyError):
            return None
        keywords = getattr(weights[0].transforms, "keywords", {}) if weights else {}
        crop = keywords.get("crop_size")
        return int(crop) if is_number(crop) else None
    return None


def adaptable_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys a torchvision model may have re-made to fit the data (first conv, classifier):
    a pretrained file's entries for them are skipped when their shapes differ."""
    keys: list[str] = []
    stem = first_conv(model)
    if stem is not None:
        keys += [f"{stem[0]}.weight", f"{stem[0]}.bias"]
    head = last_linear(model)
    if head is not None:
        keys += [f"{head}.weight", f"{head}.bias"]
    return tuple(keys)
