"""Layer choice: which Conv2d/Linear layers of a model a method compresses, and why the others stay dense.

``layers="official"`` is the official TRP choice (convs larger than 1x1 except the network's
first; every Linear for the linear scheme), ``"all"`` every layer the scheme can take, or an
explicit list of names. ``include_stride2=False`` leaves strided convs out of the choice (the
official TRP export factorizes stride-1 convs only; ``rankbench.methods.trp`` applies it at export, after
training them). :func:`set_module` swaps a layer for its replacement.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import nn

from rankbench.bench.checks import bad

from rankbench.methods.lowrank.schemes import check_scheme, pair, scheme_for


def layer_reasons(model: nn.Module, kinds: Sequence[str] = ("conv",), min_kernel: int = 2,
                  skip_first: bool = True, include_stride2: bool = True) -> list[tuple[str, Optional[str]]]:
    """Every Conv2d/Linear in ``model`` with None (chosen) or the reason it is not chosen."""
    for k in kinds:
        if k not in ("conv", "linear"):
            raise bad("kinds", k, "'conv', 'linear'")
    out: list[tuple[str, Optional[str]]] = []
    first_conv_seen = False
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            is_first = not first_conv_seen
            first_conv_seen = True
            kh, kw = m.kernel_size
            if "conv" not in kinds:
                out.append((name, "conv layers not selected"))
            elif skip_first and is_first:
                out.append((name, "first conv (kept dense, as the official TRP code does)"))
            elif m.groups != 1 and m.groups == m.in_channels:
                # one k x k filter per channel: its matrix views are rank 1 already
                out.append((name, f"depthwise conv (groups={m.groups}): nothing low-rank to remove"))
            elif m.groups != 1:
                out.append((name, f"grouped conv (groups={m.groups})"))
            elif max(kh, kw) < min_kernel:
                out.append((name, f"{kh}x{kw} kernel (min_kernel={min_kernel})"))
            elif not include_stride2 and max(pair(m.stride)) > 1:
                out.append((name, f"stride {tuple(pair(m.stride))}: stride-2 convs not chosen"))
            else:
                out.append((name, None))
        elif isinstance(m, nn.Linear):
            out.append((name, None if "linear" in kinds else "linear layers not selected"))
    return out


def select_layers(model: nn.Module, kinds: Sequence[str] = ("conv",), min_kernel: int = 2,
                  skip_first: bool = True, include_stride2: bool = True) -> list[str]:
    """Names of the layers to compress. Defaults are the official TRP choice: every Conv2d with a
    kernel larger than 1x1 except the network's first conv (stride-2 convs included)."""
    return [n for n, r in layer_reasons(model, kinds, min_kernel, skip_first, include_stride2) if r is None]


def default_kinds(scheme: str) -> tuple[str, ...]:
    """The layer kinds a scheme takes by default: Linear for ``linear``, Conv2d for the others."""
    return ("linear",) if scheme == "linear" else ("conv",)


LAYER_CHOICES: tuple[str, ...] = ("official", "all")


def layer_choice(model: nn.Module, scheme: str, layers: Union[str, Sequence[str]] = "official",
                 include_stride2: bool = True) -> list[tuple[str, Optional[str]]]:
    """Every Conv2d/Linear with None (to compress under ``scheme``) or why it stays dense.

    ``layers``: ``"official"`` (TRP's choice: convs larger than 1x1 except the first; every
    Linear for the linear scheme), ``"all"`` (every layer the scheme can take, first conv and
    1x1 convs included), or an explicit list of layer names."""
    check_scheme(scheme)
    if isinstance(layers, str):
        if layers not in LAYER_CHOICES:
            raise bad("layers", layers, f"{', '.join(LAYER_CHOICES)} or a list of layer names")
        official = layers == "official"
        rows = layer_reasons(model, default_kinds(scheme), min_kernel=2 if official else 1,
                             skip_first=official, include_stride2=include_stride2)
    else:
        rows = layer_reasons(model, ("conv", "linear"))
        known = {n for n, _ in rows}
        unknown = [n for n in layers if n not in known]
        if unknown:
            names = [n for n, _ in rows]  # model order reads best
            raise bad("layers", unknown, f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}",
                      "not Conv2d/Linear layers of the model")
        wanted = set(layers)
        rows = [(n, None if n in wanted else "not in layers") for n, _ in rows]
    return [(n, r if r is not None else scheme_for(model.get_submodule(n), scheme)) for n, r in rows]



def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (works inside Sequential/ModuleList too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)

