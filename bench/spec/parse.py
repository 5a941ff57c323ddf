"""Experiment spec: YAML -> Sweep -> list[Trial] (see docs/CONTRACTS.md, "Spec YAML").

Everything a sweep could trip over is checked here, before any training: malformed YAML (with
its line), unknown keys at every level (with a "did you mean"), unknown method / model / dataset,
unknown method parameters and out-of-range values (each method's constructor validates its
own), train / measure / resources values, and the dataset root (``rankbench.bench.data.check_data``).
Every error is a ``SpecError`` (``rankbench.bench.checks.UserError``) with one line in the format of
``rankbench.bench.checks``: ``<field>: <value>: <problem>; accepted: <what is accepted>``.

The ``Trial`` itself lives in ``rankbench.bench.trial`` (re-exported here); this module adds the YAML.
It holds one concern past 500 lines, the spec from its YAML to its trials: the loader, each level's
checks, the count of the grid and its expansion, which call one another.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from rankbench.bench.checks import (MAX_QUOTE, MAX_TEXT, PATH_QUOTE, UserError, bad, check_keys, clip, int_digits,
                                    is_int, missing, need_choice, need_float, need_int, need_mapping, quote, shown)
from rankbench.bench.train.config import TrainConfig
from rankbench.bench.spec.shipped import default_spec_path, resolve_spec, shipped_specs
from rankbench.bench.trial import Trial, freeze
from rankbench.bench.preflight.model import check_model_option, check_models, check_pretrained_files, check_reachable

__all__ = ["SpecError", "Sweep", "Trial", "default_spec_path", "file_problems", "load_spec",
           "parse_spec", "resolve_spec", "shipped_specs"]

# every refusal of a spec is a UserError (one line, exit 2 in the CLI); the old name stays
SpecError = UserError


# --- defaults and the keys each level accepts ----------------------------------------------

TOP_KEYS = ("sweep", "seeds", "data", "model", "train", "resources", "measure", "methods")
# plus the method's own parameters; label: the display name in tables and plots (not in the id)
ENTRY_KEYS = ("name", "label", "model", "data", "train")

# cpus and gpus are for the whole trial; workers > 1 (or gpus > 1) trains it data-parallel,
# each worker taking an equal share (rankbench.bench.running.distributed)
RESOURCES_DEFAULTS: dict[str, Any] = {"cpus": 1, "gpus": 0, "workers": 1}
# latency_layout: "auto" (each model timed on its fastest layout of the device's menu, see
# rankbench.bench.measure.inference), one layout, or a list; left out of the Trial while "auto", so trials keep their ids
MEASURE_DEFAULTS: dict[str, Any] = {"latency_device": "cpu", "latency_dtype": "float32",
                                    "latency_batch": 1, "latency_repeats": 30, "latency_layout": "auto"}
LATENCY_DEVICES = ("cpu", "cuda")
LATENCY_DTYPES = ("float32", "float16", "bfloat16")
MAX_SEED = 2**32 - 1   # numpy's seeds are 32-bit
MAX_INT_DIGITS = 4300  # Python's int-to-str limit: a longer integer could not even be printed or hashed
MAX_TRIALS = 10_000    # trials a spec may expand to (--max-trials N raises it), counted before expanding
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

@dataclass(frozen=True)
class Sweep:
    """A parsed, expanded spec. ``trials`` also holds every dense baseline a method needs."""

    name: str
    trials: tuple[Trial, ...]
    source: str = "<string>"

    def baselines(self) -> list[Trial]:
        return [t for t in self.trials if t.is_baseline]

    def by_id(self) -> dict[str, Trial]:
        return {t.id: t for t in self.trials}


# --- YAML loading ----------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``) and refuses
    duplicate keys (PyYAML silently keeps the last one, which hides typos in a long spec)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise SpecError(f"yaml: line {line}: duplicate key {quote(key)}; accepted: each key once per mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


class _TooManyDigits(yaml.constructor.ConstructorError):
    """An integer past ``MAX_INT_DIGITS`` digits."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """PyYAML's int, refused past ``MAX_INT_DIGITS`` digits: there its ``int()`` raises a ValueError
    (not a YAMLError), and a hex or binary one passes, to break whatever prints or hashes it."""
    try:
        value = loader.construct_yaml_int(node)
        digits = int_digits(value) if abs(value).bit_length() > 3 * MAX_INT_DIGITS else 0
    except ValueError:                           # a decimal integer past Python's limit
        digits = sum(c.isdigit() for c in str(node.value))
        if digits <= MAX_INT_DIGITS:
            raise
    if digits > MAX_INT_DIGITS:
        raise _TooManyDigits(None, None, f"an integer of {digits} digits: too many digits", node.start_mark)
    return value


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _load_yaml(text: str, source: str, field: str | None = None) -> Any:
    """``text`` read from ``source`` (a file); errors name the file, or ``field`` (an override's key)
    for an integer of too many digits in ``text``, a single value."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    except _TooManyDigits as e:
        where = f"line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}: {e.problem}"
        raise bad(field or "yaml", text if field else source, f"integers of at most {MAX_INT_DIGITS} digits",
                  where, MAX_QUOTE if field else PATH_QUOTE) from None
    except RecursionError:
        raise bad("yaml", source, "a valid YAML mapping", "nested too deeply", PATH_QUOTE) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = (e.problem or e.context or "malformed").strip()
        raise bad("yaml", source, "a valid YAML mapping", f"{where}: {problem}", PATH_QUOTE) from None
    except yaml.YAMLError as e:
        raise bad("yaml", source, "a valid YAML mapping", str(e).splitlines()[0], PATH_QUOTE) from None


# --- validation helpers ----------------------------------------------------------------------

def _normalize_resources(where: str, r: dict) -> dict:
    check_keys(where, r, RESOURCES_DEFAULTS)
    out = dict(RESOURCES_DEFAULTS)
    out.update(r)
    out["cpus"] = need_float(f"{where}.cpus", out["cpus"], 0.0, lo_open=True)
    out["gpus"] = need_float(f"{where}.gpus", out["gpus"], 0.0)
    if out["gpus"] > 1 and out["gpus"] != int(out["gpus"]):
        raise bad(f"{where}.gpus", r.get("gpus"), "a fraction in [0, 1] or a whole number of GPUs")
    if "workers" not in r and out["gpus"] > 1:
        out["workers"] = int(out["gpus"])          # gpus: 8 alone means 8 workers, one GPU each
    out["workers"] = need_int(f"{where}.workers", out["workers"], 1)
    if out["workers"] > 1 and out["gpus"] not in (0, out["workers"]):
        # each data-parallel worker drives exactly one device: NCCL refuses two ranks on one GPU,
        # and a second GPU per worker would sit idle
        raise bad(f"{where}.gpus", r.get("gpus"),
                    f"0 (CPU workers) or {out['workers']}, one GPU per worker (resources.workers is "
                    f"{out['workers']}; a data-parallel worker drives one GPU)")
    return out


def _normalize_measure(where: str, m: dict) -> dict:
    check_keys(where, m, MEASURE_DEFAULTS)
    out = dict(MEASURE_DEFAULTS)
    out.update(m)
    out["latency_device"] = need_choice(f"{where}.latency_device", out["latency_device"], LATENCY_DEVICES)
    out["latency_dtype"] = need_choice(f"{where}.latency_dtype", out["latency_dtype"], LATENCY_DTYPES)
    out["latency_batch"] = need_int(f"{where}.latency_batch", out["latency_batch"], 1)
    out["latency_repeats"] = need_int(f"{where}.latency_repeats", out["latency_repeats"], 1)
    lay = out["latency_layout"]
    if lay in ("auto", ["auto"]):
        del out["latency_layout"]
    else:
        from rankbench.bench.measure.inference import accepted_layouts   # imports torch: only when a layout is named

        for name in (lay if isinstance(lay, list) and lay else [lay]):
            need_choice(f"{where}.latency_layout", name,
                    accepted_layouts() if isinstance(lay, list) else ["auto", *accepted_layouts()])
    return out


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _non_empty(where: str, v: Any, what: str) -> list:
    """``v`` as a grid (a list); an empty list would expand to no trial at all, silently."""
    if isinstance(v, list) and not v:
        raise bad(where, v, f"a {what} or a non-empty list of them (a grid)", "an empty grid runs nothing")
    return _as_list(v)


def _dataset_names() -> list[str]:
    from rankbench.bench import data as bdata

    for attr in ("DATASETS", "READERS", "NAMES"):
        names = getattr(bdata, attr, None)
        if names:
            return sorted(names)
    return ["cifar10", "cifar100", "digits", "imagenet", "synthetic"]


def _normalize_model(where: str, m: Any, check: bool) -> tuple[str, dict]:
    """``cnn`` or ``{name: resnet50, pretrained: path, <builder option>: ...}`` -> (name, options)."""
    import inspect

    from rankbench.bench.models.builtin import get_builder, model_names

    if isinstance(m, str):
        get_builder(m, where)
        return m, {}
    m = need_mapping(where, m)
    if "name" not in m:
        raise missing(f"{where}.name", ", ".join(model_names()))
    name = m["name"]
    builder = inspect.signature(get_builder(name, f"{where}.name")).parameters
    accepted = ["name", "pretrained"] + [k for k in builder if k not in ("num_classes", "input_shape")]
    if not any(p.kind is p.VAR_KEYWORD for p in builder.values()):   # zoo models: the constructor checks
        check_keys(where, m, accepted)
    opts = {k: v for k, v in m.items() if k != "name"}
    for k, v in opts.items():
        if k != "pretrained" and k in builder:   # a zoo model's own options: its constructor checks them
            check_model_option(f"{where}.{k}", v, builder[k].default)
    pre = opts.get("pretrained")
    if pre is not None:
        if not isinstance(pre, str) or not pre:
            raise bad(f"{where}.pretrained", pre, "a path to a local state dict file", limit=PATH_QUOTE)
        if check and not Path(pre).expanduser().is_file():
            raise bad(f"{where}.pretrained", pre, "an existing file (a saved state dict; nothing is downloaded)",
                      limit=PATH_QUOTE)
    return name, opts


def _normalize_data(where: str, d: Any) -> dict:
    if isinstance(d, str):  # `data: digits` is short for `data: {name: digits}`
        d = {"name": d}
    d = need_mapping(where, d)
    if "name" not in d:
        raise missing(f"{where}.name", ", ".join(_dataset_names()))
    need_choice(f"{where}.name", d["name"], _dataset_names())
    return dict(d)


def _coerce_param(name: str, key: str, v: Any) -> Any:
    """An int given for a float parameter becomes a float, so ``1`` and ``1.0`` give one id."""
    from rankbench.methods.api.registry import parameters

    p = parameters(name).get(key)
    if p is None or not is_int(v):
        return v
    ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
    if ann == "float" or isinstance(p.default, float) and not is_int(p.default):
        return float(v)
    return v


# --- parse + expand ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Globals:
    """The spec's top-level fields, checked: what every method entry inherits unless it says otherwise."""

    sweep: str
    seeds: list
    data: list
    models_raw: Any
    train: dict
    resources: dict
    measure: dict


@dataclass
class _Expansion:
    """The trials found so far, where in the spec each came from, and the layer checks to run."""

    trials: dict[str, Trial] = field(default_factory=dict)
    wheres: dict[str, tuple[str, str]] = field(default_factory=dict)   # id -> (methods[i] field, model field)
    layer_checks: list[tuple[str, str, dict, list, list]] = field(default_factory=list)


def parse_spec(text: str, source: str = "<string>", check: bool = True, overrides: Sequence[str] = (),
               check_files: bool = True, max_trials: int | None = None) -> Sweep:
    """Parse a spec's text into a Sweep, after the dotted ``overrides`` (``rankbench.bench.spec.overrides``).
    ``check=False``: the structure only (no method built, no file touched); ``check_files=False``:
    no file (:func:`file_problems`). A spec whose grids expand to more than ``max_trials`` trials
    (default ``MAX_TRIALS``) is refused before anything is expanded."""
    raw = _read_raw(text, source, overrides)
    _check_count(raw, MAX_TRIALS if max_trials is None else max_trials)
    g = _globals(raw)
    out = _Expansion()
    for i, entry in enumerate(raw["methods"]):
        _expand_entry(i, entry, g, out, check, check_files)
    if check and check_files:
        _check_expansion(out)
    elif check:   # a preview: the models against the data's shape, read from its options (no file)
        check_models(out.trials.values(), out.wheres, read_files=False)
    # baselines first, then in spec order: `show` and the sweep list them the way they run
    ordered = sorted(out.trials.values(), key=lambda t: not t.is_baseline)
    return Sweep(name=g.sweep, trials=tuple(ordered), source=source)


def _read_raw(text: str, source: str, overrides: Sequence[str]) -> dict:
    """The spec's YAML with the overrides applied: a mapping of known keys with a sweep and methods."""
    from rankbench.bench.spec.overrides import apply_overrides

    raw = apply_overrides(_load_yaml(text, source), overrides, _load_yaml)
    if raw is None:
        raise bad("spec", source, f"a mapping with keys {', '.join(TOP_KEYS)}", "empty", PATH_QUOTE)
    raw = need_mapping("spec", raw)
    check_keys("spec", raw, TOP_KEYS)
    for req in ("sweep", "methods"):
        if req not in raw:
            raise missing(req, "a spec needs sweep, methods")
    return raw


def _check_count(raw: dict, max_trials: int) -> None:
    """Refuse a spec of more than ``max_trials`` trials, counted before anything is expanded or
    checked: per method entry, the product of its parameters' list lengths times its data, models
    and seeds (the baselines they start from not counted). A malformed part counts as one value:
    the checks after this one name it."""
    def n(v: Any) -> int:
        return len(v) if isinstance(v, list) and v else 1

    counts = []
    for e in raw["methods"] if isinstance(raw.get("methods"), list) else []:
        e = e if isinstance(e, dict) else {}
        count = n(raw.get("seeds")) * n(e.get("data", raw.get("data"))) * n(e.get("model", raw.get("model")))
        for k, v in e.items():      # counted up to 10**18 (past it, "more than"), never a huge int
            count = min(count * (1 if k in ENTRY_KEYS else n(v)), 10**18)
        counts.append(count)
    total, most = sum(counts), max(counts, default=0)
    if total > max_trials:
        def say(k: int) -> str:
            return str(k) if k < 10**18 else "10**18 or more"

        raise bad("methods", total, f"at most {max_trials} trials (rankbench run / show --max-trials N raises the "
                  f"limit)", f"the grids expand to {say(total)} trials, {say(most)} of them from "
                  f"methods[{counts.index(most)}]")


def _globals(raw: dict) -> _Globals:
    """The top-level fields, each checked in the order a reader meets them."""
    sweep = raw["sweep"]
    if not isinstance(sweep, str) or not SWEEP_NAME.match(sweep):
        raise bad("sweep", sweep, "a folder name of letters, digits, '_', '.', '-'")
    seeds = _as_list(raw.get("seeds", [0]))
    if not seeds or not all(is_int(s) and 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise bad("seeds", raw.get("seeds"), f"a list of distinct integers in [0, {MAX_SEED}], e.g. [0, 1]")
    data = [_normalize_data(f"data[{i}]" if isinstance(raw.get("data"), list) else "data", d)
            for i, d in enumerate(_non_empty("data", raw.get("data", {"name": "digits"}), "dataset"))]
    models_raw = raw.get("model", "cnn")
    _non_empty("model", models_raw, "model")
    train = need_mapping("train", raw.get("train") or {})
    resources = _normalize_resources("resources", need_mapping("resources", raw.get("resources") or {}))
    measure = _normalize_measure("measure", need_mapping("measure", raw.get("measure") or {}))
    if measure["latency_device"] == "cuda" and resources["gpus"] == 0:
        # a trial only sees a GPU when it asks for one (Ray hides the others): fail now, not after training
        raise bad("measure.latency_device", "cuda", "cpu, or cuda together with resources.gpus > 0")
    entries = raw["methods"]
    if not isinstance(entries, list) or not entries:
        raise bad("methods", entries, "a non-empty list of {name: <method>, <param>: <value>...}")
    return _Globals(sweep, seeds, data, models_raw, train, resources, measure)


def _expand_entry(i: int, entry: Any, g: _Globals, out: _Expansion, check: bool, check_files: bool) -> None:
    """One ``methods[i]`` entry: its grid of parameters times its data, models and seeds, each
    trial (and the baseline it starts from) added to ``out``."""
    from rankbench.methods.api.registry import needs_baseline

    name, where, label = _entry_head(i, entry)
    entry = entry if isinstance(entry, dict) else {"name": name}
    mwhere = f"{where}.model" if "model" in entry else "model"
    mraw = entry.get("model", g.models_raw)
    _non_empty(mwhere, mraw, "model")
    models = [_normalize_model(f"{mwhere}[{j}]" if isinstance(mraw, list) else mwhere, m, check and check_files)
              for j, m in enumerate(_as_list(mraw))]
    datas = ([_normalize_data(f"{where}.data", d) for d in _non_empty(f"{where}.data", entry["data"], "dataset")]
             if "data" in entry else g.data)
    train = _entry_train(where, entry, g)
    if check and train.get("drop_path"):
        _check_drop_path(where, entry, train["drop_path"], models)
    for p in _grid(where, name, entry):
        if check:
            _build_method(where, name, p)
            out.layer_checks.append((where, name, p, models, datas))
        for d, m, seed in itertools.product(datas, models, g.seeds):
            t = Trial(sweep=g.sweep, data=freeze(d), model=m[0], model_options=freeze(m[1]),
                      method=name, params=freeze(p), seed=seed, train=freeze(train), measure=freeze(g.measure),
                      resources=freeze(g.resources), display_label=label)
            if needs_baseline(name):
                b = t.baseline()
                out.trials.setdefault(b.id, b)
            out.trials.setdefault(t.id, t)
            out.wheres.setdefault(t.id, (where, mwhere))


def _entry_head(i: int, entry: Any) -> tuple[str, str, str]:
    """A method entry's registered name, the field that names it in errors, and its label."""
    from rankbench.methods.api.registry import available, skipped

    where = f"methods[{i}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = need_mapping(where, entry)
    if "name" not in entry:
        raise missing(f"{where}.name", ", ".join(available()))
    why = skipped().get(entry["name"]) if isinstance(entry["name"], str) else None
    if why is not None and entry["name"] not in available():
        raise bad(f"{where}.name", entry["name"], "a method whose plugin loads (fix or reinstall that package)", why)
    name = need_choice(f"{where}.name", entry["name"], available())
    where = f"methods[{i}]({name})"
    label = entry.get("label", "")
    if not isinstance(label, str) or ("label" in entry and not label.strip()):
        raise bad(f"{where}.label", label, 'a non-empty display name, e.g. "TRP+Nu"')
    return name, where, label.strip()


def _entry_train(where: str, entry: dict, g: _Globals) -> dict:
    """The entry's training options (the spec's, updated by its own ``train``), in id form."""
    train = dict(g.train)
    train.update(need_mapping(f"{where}.train", entry.get("train") or {}))
    twhere = f"{where}.train" if "train" in entry else "train"
    train = TrainConfig.parse(twhere, train).id_form()
    workers = g.resources["workers"]
    if train["batch_size"] % workers:
        # train.batch_size is the global batch; every rank takes an equal share of it
        raise bad(f"{twhere}.batch_size", train["batch_size"],
                  f"a multiple of resources.workers ({workers}): the global batch, split evenly")
    if train.get("sync_bn") and g.resources["gpus"] == 0:
        raise bad(f"{twhere}.sync_bn", True, "false on CPU, or true together with resources.gpus > 0 "
                  "(torch's SyncBatchNorm runs on GPUs only)")
    return train


def _check_drop_path(where: str, entry: dict, rate: float, models: list) -> None:
    """``train.drop_path`` for each model of the entry: a timm model that takes drop_path_rate
    (``rankbench.bench.models.zoo.check_drop_path``), or a one-line refusal naming the model."""
    from rankbench.bench.models.builtin import canonical_name
    from rankbench.bench.models.zoo import check_drop_path

    own = isinstance(entry.get("train"), dict) and "drop_path" in entry["train"]
    for name, options in models:
        check_drop_path(name, canonical_name(name), options, rate,
                        f"{where}.train.drop_path" if own else "train.drop_path")


def _grid(where: str, name: str, entry: dict) -> list[dict]:
    """The entry's method parameters, one dict per point of their grid (a list is a grid axis)."""
    params = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    keys = sorted(params)
    for k in keys:
        if isinstance(params[k], list) and not params[k]:
            raise bad(f"{where}.{k}", [], "a value or a non-empty list of values (a grid)")
    return [{k: _coerce_param(name, k, v) for k, v in zip(keys, combo)}
            for combo in itertools.product(*[_as_list(params[k]) for k in keys])]


def _check_expansion(out: _Expansion) -> None:
    """The checks that read files or build models, once every trial is known."""
    from rankbench.bench.preflight.layers import check_layers

    _check_data_roots(out.trials.values())
    check_pretrained_files(out.trials.values())
    check_models(out.trials.values(), out.wheres)
    check_layers(out.layer_checks)                # a method that selects no layer, before its rule's reach
    check_reachable(out.trials.values(), out.wheres)


def _build_method(where: str, name: str, params: dict) -> None:
    from rankbench.methods.api.registry import build

    try:
        build(name, params)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        msg = str(msg)
        # the registry already names the field ("rankbench.methods.svd.x: ..."); a method's own check may not
        if not msg.startswith("methods."):
            # the label is capped (each name and value, then the whole) like every piece of an error
            given = clip(", ".join(f"{clip(k)}={shown(v)}" for k, v in sorted(params.items())), MAX_TEXT)
            msg = f"{clip(where)} [{given}]: {clip(msg, 2 * MAX_TEXT)}"
        raise SpecError(msg) from None


def _check_data_roots(trials: Iterable[Trial]) -> None:
    from rankbench.bench.data import check_data

    seen = set()
    for t in trials:
        if t.data in seen:
            continue
        seen.add(t.data)
        try:
            check_data(t.data_cfg)
        except (ValueError, KeyError, FileNotFoundError, NotADirectoryError) as e:
            msg = str(e.args[0] if e.args else e)
            if not msg.startswith("data"):
                msg = f"data: {msg}"
            raise SpecError(msg) from None


def file_problems(sweep: Sweep) -> list[str]:
    """What keeps a sweep parsed with ``check_files=False`` from running: one line per missing file."""
    out = []
    for checker in (_check_data_roots, check_pretrained_files):
        try:
            checker(sweep.trials)
        except UserError as e:
            out.append(str(e))
    return out


def load_spec(path: str | Path, check: bool = True, overrides: Sequence[str] = (), check_files: bool = True,
              max_trials: int | None = None) -> Sweep:
    """Read and validate a spec (a file or a shipped spec's name) with ``overrides``; one-line SpecErrors.
    ``max_trials``: the most trials it may expand to (default ``MAX_TRIALS``)."""
    p = resolve_spec(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise bad("spec", str(p), f"a path to a YAML spec or a shipped spec ({', '.join(shipped_specs())})",
                  "no such file", PATH_QUOTE) from None
    except IsADirectoryError:
        raise bad("spec", str(p), "a path to a YAML spec", "is a folder", PATH_QUOTE) from None
    except UnicodeDecodeError:
        raise bad("spec", str(p), "a YAML file", "not text", PATH_QUOTE) from None
    return parse_spec(text, source=str(p), check=check, overrides=overrides, check_files=check_files,
                      max_trials=max_trials)
