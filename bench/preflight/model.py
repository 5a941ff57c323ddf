"""The spec checks that build something: a model on torch's meta device (its options, one input
through it), a pretrained file against that model, and a method's ``speedup:`` rule on the
untrained network. ``rankbench.bench.spec.parse`` calls them
on the expanded trials, so what a builder or a method would refuse in a Ray worker, after the
sweep started (or after a baseline trained), is refused before anything runs, naming the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rankbench.bench.checks import PATH_QUOTE, UserError, bad, is_int
from rankbench.bench.trial import Trial


def check_model_option(where: str, v: Any, default: Any) -> None:
    """A builder option has the type of its default: a size is an int >= 1, a list of sizes a
    non-empty list of them, a choice a string (its value is checked when the model is built)."""
    if is_int(default):
        if not is_int(v) or v < 1:
            raise bad(where, v, "an integer >= 1")
    elif isinstance(default, (tuple, list)) and all(is_int(x) for x in default):
        if not isinstance(v, list) or not v or not all(is_int(x) and x >= 1 for x in v):
            raise bad(where, v, f"a non-empty list of integers >= 1, e.g. {list(default)}")
    elif isinstance(default, str) and not isinstance(v, str):
        raise bad(where, v, f"a string, e.g. {default!r}")
    elif isinstance(default, bool) and not isinstance(v, bool):
        raise bad(where, v, "true or false")


def check_models(trials: Iterable[Trial], wheres: dict[str, tuple[str, str]]) -> None:
    """Each distinct model is built on the meta device (no memory, no init) and runs one example
    input, so options a builder accepts but cannot use (a zero width, a stem too deep for the
    input) fail here, naming the model field, instead of as a torch error in a Ray worker."""
    import torch

    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import check_options, get_builder, is_zoo_model

    seen = set()
    for t in trials:
        key = (t.model, t.model_options, t.data)
        if key in seen:
            continue
        seen.add(key)
        opts = t.model_cfg
        opts.pop("pretrained", None)
        shape, nc = describe(t.data_cfg)
        if is_zoo_model(t.model):   # its constructor takes **kwargs: rankbench.bench.models.builtin names what it refused
            check_options(t.model, nc, shape, **opts)
            continue
        try:
            with torch.device("meta"):
                get_builder(t.model)(nc, tuple(shape), **opts).eval()(torch.empty((2, *shape)))
        except Exception as e:  # noqa: BLE001 (whatever torch raises: the message names the model)
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            mwhere = wheres.get(t.id, ("", "model"))[1]
            if isinstance(e, UserError) and detail.split(":")[0] in opts:
                raise UserError(f"{mwhere}.{detail}") from None   # the builder named its option
            given = {"name": t.model, **opts}
            raise bad(mwhere, given,
                      f"options that build a {t.model} for inputs {tuple(shape)}",
                      f"cannot build it ({type(e).__name__}: {detail})") from None


def check_reachable(trials: Iterable[Trial], wheres: dict[str, tuple[str, str]]) -> None:
    """A ``speedup:S`` rule (a method's ``rule`` or ``export``) out of reach even at rank 1 on every
    layer fails here, on the untrained network, not after its baseline trained."""
    import torch

    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods import lowrank
    from rankbench.methods.api.registry import build

    seen = set()
    for t in trials:
        if t.is_baseline:
            continue
        method = build(t.method, t.params_dict)
        rules = [(f, getattr(method, f, None)) for f in ("rule", "export")]
        rules = [(f, r) for f, r in rules if isinstance(r, str) and r.startswith("speedup:")]
        scheme = getattr(method, "scheme", None)
        key = (t.method, t.params, t.model, t.model_options, t.data)
        if not rules or scheme is None or key in seen:
            continue
        seen.add(key)
        opts = t.model_cfg
        opts.pop("pretrained", None)
        shape, nc = describe(t.data_cfg)
        model = build_model(t.model, nc, shape, **opts)
        for f, rule in rules:
            try:
                lowrank.check_reachable(model, scheme, rule, torch.zeros((1, *shape)),
                                        getattr(method, "layers", None), getattr(method, "include_stride2", True),
                                        getattr(method, "tiles", 1), field=f)
            except ValueError as e:
                raise UserError(f"{wheres.get(t.id, ('methods',))[0]}.{e}") from None


def check_pretrained_files(trials: Iterable[Trial]) -> None:
    """Every pretrained file against the model its trials build (keys and shapes), so a wrong
    file fails here rather than in a Ray worker after the sweep started."""
    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import check_pretrained

    seen = set()
    for t in trials:
        opts = t.model_cfg
        pre = opts.pop("pretrained", None)
        if not pre or (t.model, t.model_options, t.data) in seen:
            continue
        seen.add((t.model, t.model_options, t.data))
        shape, nc = describe(t.data_cfg)
        try:
            check_pretrained(t.model, nc, shape, str(Path(pre).expanduser()), **opts)
        except Exception as e:  # noqa: BLE001 (random bytes, an empty file: pickle's and zipfile's errors too)
            detail = (str(e).strip().splitlines() or [""])[0].removeprefix("pretrained: ")
            if not isinstance(e, (ValueError, RuntimeError, OSError)) or not detail:
                detail = f"not a readable state dict file ({type(e).__name__})"
            raise bad("model.pretrained", pre, f"a state dict of {t.model} for {nc} classes and inputs {shape}",
                      detail, PATH_QUOTE) from None
