"""Spec-time check that a method compresses something: a method that picks layers
(``Method.choose_layers``) must pick at least one layer of each model it runs on, or its trial
would report the dense model as a compression. The model is built on the meta device (no
weights, no data) at the shape ``rankbench.bench.data.describe`` gives; ``rankbench.bench.spec.parse`` calls this after
the data roots are checked. The error names the method entry, its scheme, the model, and the
schemes of that method that would select layers.
"""
from __future__ import annotations

import itertools

import torch

from rankbench.bench.checks import UserError, bad
from rankbench.bench.data import describe
from rankbench.bench.models.builtin import get_builder
from rankbench.bench.trial import freeze
from rankbench.methods.lowrank import SCHEMES
from rankbench.methods.api.registry import build, parameters


def check_layers(checks: list[tuple[str, str, dict, list, list]]) -> None:
    """``checks``: one ``(where, method name, params, models, datas)`` per method entry of a spec
    (``models``: (name, options) pairs; ``datas``: data configs). Raises the one-line
    ``UserError`` for the first whose method selects no layer of one of its models."""
    def picks(name: str, params: dict, model: torch.nn.Module) -> bool | None:
        chosen = build(name, params).choose_layers(model)
        return None if chosen is None else any(reason is None for _, reason in chosen)

    def other_picks(name: str, params: dict, model: torch.nn.Module) -> bool:
        try:
            return bool(picks(name, params, model))
        except (ValueError, TypeError, KeyError):
            return False          # e.g. a scheme this method does not take

    seen: set = set()
    for where, name, params, models, datas in checks:
        for (mname, mopts), data in itertools.product(models, datas):
            key = (name, freeze(params), mname, freeze(mopts), freeze(data))
            if key in seen:
                continue
            seen.add(key)
            shape, nc = describe(data)
            opts = {k: v for k, v in mopts.items() if k != "pretrained"}
            try:
                with torch.device("meta"):
                    model = get_builder(mname)(nc, tuple(shape), **opts)
            except (ValueError, TypeError) as e:
                raise UserError(f"model.{e.args[0] if e.args else e}") from None
            if picks(name, params, model) is not False:
                continue
            problem = f"selects no layer of model {mname!r}: {name} would deploy the dense model"
            if "scheme" not in parameters(name):     # e.g. tucker2, cp: convs only, no scheme to change
                raise bad(where, name, f"a model with layers {name} decomposes", problem)
            scheme = getattr(build(name, params), "scheme", params.get("scheme"))
            fits = [sc for sc in SCHEMES if sc != scheme and other_picks(name, {**params, "scheme": sc}, model)]
            raise bad(f"{where}.scheme", scheme,
                      ", ".join(fits) if fits else f"none: no scheme of {name} selects a layer of {mname}", problem)
