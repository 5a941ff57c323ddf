"""Whether our trials ran the recipe a published table's numbers came from.

A published table (``reports/published/<name>.yaml``) names the spec that regenerates it
(``spec: bench/configs/<name>.yaml``). A published row is diffed against one of our groups only
when the group's trials ran that spec's recipe: the same training (epochs, schedule and
milestones, batch, learning rates, ...), the same data options (subset sizes, normalisation),
the same model and model options, and the same method parameters (export rule included). Every
field is compared with its default filled in, so a spec that leaves a default out and one that
spells it out are the same recipe. What only says where or how fast a trial runs (data root,
loader workers, decoder, torch.compile, channels_last, resources, latency settings, seed, sweep
name) is not part of the recipe.

``recipe_differences(ours, paper_trials, selector)`` returns the differences as short phrases,
``"epochs 1 vs 164"`` (ours first); an empty list means the recipe matches. How many images
the dataset held is checked beside it, by ``rankbench.reports.paper`` (the rows' ``train_images`` and
``val_images`` against the table's ``data_size``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

# Fields that say where or how fast a trial runs, not what it computes.
IGNORED_TRAIN = frozenset({"compile", "channels_last"})
IGNORED_DATA = frozenset({"name", "root", "workers", "decode", "layout"})
# Training fields in the order a reader checks them; others follow alphabetically.
TRAIN_ORDER = ("epochs", "schedule", "milestones", "gamma", "batch_size", "lr", "momentum",
               "weight_decay", "augment", "finetune_lr", "amp", "sync_bn")


def repo_root() -> Path:
    """The folder that holds ``bench/`` and ``reports/``: paper specs are named relative to it."""
    return Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- values

def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def same_value(a: Any, b: Any) -> bool:
    """Spec values compared the way a person means them: 3e-4 == 0.0003, "speedup:2" ==
    "speedup:2.0", a YAML string "1e-4" (PyYAML reads it as text) == 0.0001, [81, 122] ==
    (81, 122); True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if a == b:
        return True
    fa, fb = _num(a), _num(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str) and ":" in a and ":" in b:
        (ka, va), (kb, vb) = a.split(":", 1), b.split(":", 1)
        return ka.strip() == kb.strip() and same_value(va.strip(), vb.strip())
    return False


def show(v: Any) -> str:
    """A recipe value as a reader writes it: ``[81, 122]``, ``0.0003``, ``unset``."""
    if v is None:
        return "unset"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------------------- recipes

def _model_defaults(model: str) -> dict[str, Any]:
    import inspect

    from rankbench.bench.models.builtin import MODELS

    builder = MODELS.get(model)
    if builder is None:
        return {}
    return {k: p.default for k, p in inspect.signature(builder).parameters.items()
            if k not in ("num_classes", "input_shape") and p.default is not inspect.Parameter.empty}


def _method_defaults(method: str) -> dict[str, Any]:
    import inspect

    from rankbench.methods.api.registry import available, parameters

    if method not in available():
        return {}
    return {k: p.default for k, p in parameters(method).items() if p.default is not inspect.Parameter.empty}


def recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """A trial spec (``Trial.to_dict()``, the row's ``spec``) as ``{field: value}`` with every
    default filled: training fields by their name, ``data.<option>``, ``model`` and
    ``model.<option>``, ``method`` and the method's parameters by their name."""
    from rankbench.bench.data.options import OPTIONS
    from rankbench.bench.train.config import defaults

    out: dict[str, Any] = {}
    train = {**defaults(), **(spec.get("train") or {})}
    for k in list(TRAIN_ORDER) + sorted(set(train) - set(TRAIN_ORDER)):
        if k in train and k not in IGNORED_TRAIN:
            out[k] = train[k]
    data = spec.get("data") or {}
    out["dataset"] = data.get("name")
    for k, v in sorted({**OPTIONS.get(str(data.get("name")), {}), **data}.items()):
        if k not in IGNORED_DATA:
            out[f"data.{k}"] = v
    model = str(spec.get("model"))
    out["model"] = model
    for k, v in sorted({**_model_defaults(model), **(spec.get("model_options") or {})}.items()):
        # a pretrained file's path differs between machines: compare whether there is one
        out[f"model.{k}"] = bool(v) if k == "pretrained" else v
    method = str(spec.get("method"))
    out["method"] = method
    for k, v in sorted({**_method_defaults(method), **(spec.get("params") or {})}.items()):
        out[k if k not in out else f"{method}.{k}"] = v
    return out


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """``"<field> <ours> vs <theirs>"`` for every field of the two recipes that differs."""
    keys = list(theirs) + [k for k in ours if k not in theirs]
    return [f"{k} {show(ours.get(k))} vs {show(theirs.get(k))}"
            for k in keys if not same_value(ours.get(k), theirs.get(k))]


def paper_trials(spec_path: str | Path) -> list[dict[str, Any]]:
    """The trials of a paper spec (relative paths from the repository root), as ``to_dict()``
    without resources; the spec's structure is checked, its dataset root is not."""
    from rankbench.bench.spec.parse import load_spec

    p = Path(spec_path)
    if not p.is_absolute():
        p = repo_root() / p
    return [t.to_dict(with_resources=False) for t in load_spec(p, check=False).trials]


def _selected(trial: dict[str, Any], selector: dict[str, Any]) -> bool:
    if trial.get("method") != selector.get("method"):
        return False
    params = trial.get("params") or {}
    return all(k in params and same_value(params[k], v) for k, v in (selector.get("params") or {}).items())


def recipe_differences(ours: Iterable[dict[str, Any]], paper: Sequence[dict[str, Any]],
                       selector: dict[str, Any]) -> list[str] | None:
    """How our group's trial specs (``ours``, one per distinct recipe) differ from the paper
    spec's trial that the published row selects (the closest one where several fit: e.g. svd
    with and without fine-tuning). ``[]``: same recipe; ``None``: the paper spec has no trial
    for this row, so nothing can be checked."""
    candidates = [recipe(t) for t in paper if _selected(t, selector)]
    if not candidates:
        return None
    found: list[str] = []
    for spec in ours:
        mine = recipe(spec)
        best = min((differences(mine, c) for c in candidates), key=len)
        found += [d for d in best if d not in found]
    return found
