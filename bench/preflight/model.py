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

# the class count a preview builds a model with when counting the data's classes would read files
STAND_IN_CLASSES = 10
# a model is warned about when the data's side is below 1/NATIVE_FRACTION of its native input's side
NATIVE_FRACTION = 4


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


def check_models(trials: Iterable[Trial], wheres: dict[str, tuple[str, str]], read_files: bool = True) -> None:
    """Each distinct model is built on the meta device (no memory, no init) and runs one example
    input in eval mode and two in training mode, so what a builder or a zoo constructor accepts
    but cannot use (a zero width, an option the harness passes itself, a rate outside [0, 1), a
    stem whose smallest input exceeds the data's) fails here, naming the model field, instead of
    as a torch error in a Ray worker. A failure on the meta device is confirmed on the CPU before
    it refuses anything (an op without a meta kernel is no fault of the spec). A model whose
    native input side is far above the data's gets a ``warning:`` line on stderr (it runs, but
    likely near chance). ``read_files=False`` (a preview whose data may not be there yet): the
    input shape from the data options alone (data whose options are refused is skipped: the
    preview's file checks name it), and a stand-in class count where counting the classes would
    read files."""
    from rankbench.bench.data import data_shape, describe

    seen = set()
    for t in trials:
        key = (t.model, t.model_options, t.data)
        if key in seen:
            continue
        seen.add(key)
        opts = t.model_cfg
        opts.pop("pretrained", None)
        try:
            shape, nc = describe(t.data_cfg) if read_files else (data_shape(t.data_cfg), STAND_IN_CLASSES)
        except UserError:
            if read_files:
                raise
            continue      # the preview names a data option's problem with the files' (file_problems)
        where = wheres.get(t.id, ("", "model"))[1]
        check_model(t.model, opts, tuple(shape), nc, where, _fix_field(t.data_cfg))
        warn_native(t.model, opts, tuple(shape), where, _fix_field(t.data_cfg))


def _fix_field(data: dict[str, Any]) -> str:
    """The data option that sets the side of its images: ``image_size`` for ImageNet (its
    ``resize`` is the shorter side before the crop), ``resize`` for every other dataset."""
    return "image_size" if data.get("name") == "imagenet" else "resize"


def warn_native(name: str, opts: dict[str, Any], shape: tuple[int, ...], where: str, fix: str = "resize") -> None:
    """One ``warning:`` line on stderr when images of ``shape`` have a side below 1/``NATIVE_FRACTION``
    of the native input side of model ``name`` (a torchvision or timm model's pretrained input,
    ``rankbench.bench.models.zoo.native_side``): it runs, but what it was built to see is gone."""
    import sys

    from rankbench.bench.models.builtin import canonical_name, is_zoo_model
    from rankbench.bench.models.zoo import native_side

    if len(shape) != 3 or not is_zoo_model(name):
        return
    native = native_side(canonical_name(name) or name, opts)
    side = min(shape[1:])
    if native is None or side * NATIVE_FRACTION >= native:
        return
    print(f"warning: {where}: {name} was built for {native}x{native} inputs, the data's are {shape[1]}x{shape[2]} "
          f"(below 1/{NATIVE_FRACTION} of its side: it may train near chance); data.{fix}: {native} (or at "
          f"least {-(-native // NATIVE_FRACTION)}), or a model for small inputs (cnn, resnet20, resnet18)",
          file=sys.stderr)


def check_model(name: str, opts: dict[str, Any], shape: tuple[int, ...], nc: int, where: str,
                fix: str = "resize") -> None:
    """:func:`check_models` for one model ``name`` with ``opts`` on inputs ``shape`` with ``nc``
    classes; ``where`` is the spec field that names the model; ``fix`` the data option that sets
    the images' side (named in the refusal of a model whose smallest input exceeds the data's)."""
    from rankbench.bench.models.builtin import check_options, get_builder, is_zoo_model
    from rankbench.bench.models.zoo import check_zoo_options

    zoo = is_zoo_model(name)
    if zoo:   # its constructor takes **kwargs: refuse what the harness passes itself, and silly rates
        check_zoo_options(name, opts, where, nc, shape)

    def make(s: tuple[int, ...], device: str) -> Any:
        # on meta, a zoo constructor's refusal is check_options' one line naming the model and its
        # options (check_options builds on meta); on the CPU the model was built on meta already
        if zoo and device == "meta":
            return check_options(name, nc, s, **opts)
        return get_builder(name)(nc, s, **opts)

    err, output = _try_model(make, shape, nc, "meta")
    given = {"name": name, **opts}
    if err is not None:
        least = _smallest_input(make, shape, nc)     # it runs on bigger inputs: the stem does not fit
        if least is not None:
            c, m = shape[0], least
            raise bad(where, given, f"images of at least {m}x{m} (data.{fix}: {m} or more), a model option that "
                      "shrinks its smallest input (e.g. a ViT's patch_size), or a model for small inputs (cnn, "
                      "resnet20, resnet18)",
                      f"{name} does not run on the data's inputs {shape}: its smallest input is {c}x{m}x{m} "
                      f"({_detail(err)})")
        if not isinstance(err, UserError):
            err, output = _try_model(make, shape, nc, "cpu")    # meta kernels can fail where torch runs
    if err is None and output is None:
        return
    if err is None:
        raise bad(where, given, "a model whose training forward returns the logits (torchvision's inception_v3 "
                  "and googlenet: aux_logits: false)", f"in training it returns {output}")
    if isinstance(err, UserError) and (zoo or str(err).split(":")[0] in opts):
        # the constructor refused (zoo: check_options' line), or the builder named its option
        raise (err if zoo else UserError(f"{where}.{err}")) from None
    raise bad(where, given, f"options that build a {name} for inputs {shape}",
              f"cannot build it ({_detail(err)})") from None


def _detail(e: BaseException) -> str:
    """``Type: first line`` of what torch raised, capped (of check_options' line: what the
    constructor raised, as it quotes it)."""
    text = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, UserError) and text.startswith("model: ") and "': " in text:
        return text.split("': ", 1)[1].split("; accepted: ")[0][:200]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _try_model(make: Any, shape: tuple[int, ...], nc: int, device: str) -> tuple[BaseException | None, str | None]:
    """Build with ``make(shape)`` on ``device``, run one input in eval mode and two in training
    mode: (what it raised or None, what is wrong with the training output or None)."""
    import torch

    try:
        with torch.device(device), torch.no_grad():
            model = make(shape, device)
            model.eval()(torch.zeros((1, *shape)))
            out = model.train()(torch.zeros((2, *shape)))
    except Exception as e:  # noqa: BLE001 (whatever torch raises: the message names the model)
        return e, None
    if not isinstance(out, torch.Tensor):
        return None, f"{type(out).__name__}, not a tensor of logits"
    if tuple(out.shape) != (2, nc):
        return None, f"outputs of shape {tuple(out.shape)}, not (batch, {nc}) logits"
    return None, None


def _smallest_input(make: Any, shape: tuple[int, ...], nc: int, largest: int = 1024) -> int | None:
    """For an image shape (C, H, W) the model does not run on: the least side ``m`` (up to
    ``largest``) at which it runs on (C, max(H, m), max(W, m)), found on the meta device by
    doubling then bisection; None if it runs at no size (so the fault is not the size)."""
    if len(shape) != 3:
        return None

    def runs(m: int) -> bool:
        return _try_model(make, (shape[0], max(shape[1], m), max(shape[2], m)), nc, "meta")[0] is None

    lo = max(shape[1:])
    hi = lo * 2
    if lo >= largest:
        return None
    while not runs(hi):
        if hi >= largest:
            return None
        lo, hi = hi, min(hi * 2, largest)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs(mid) else (mid, hi)
    return hi


def check_reachable(trials: Iterable[Trial], wheres: dict[str, tuple[str, str]]) -> None:
    """A ``speedup:S`` rule (a method's ``rule`` or ``export``) out of reach even at rank 1 on every
    layer fails here, on the untrained network, not after its baseline trained. A method that
    decomposes by its own structure rather than a ``lowrank`` scheme (``cp``) checks its rules
    itself: its ``check_reachable(model, example_input)``, what its ``attach`` calls. Each model
    is built once, and each rule checked once per model and layer choice (the reach depends on
    the architecture alone), however many methods and parameters share them."""
    import torch

    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods import lowrank
    from rankbench.methods.api.registry import build

    models: dict[tuple, tuple[Any, Any]] = {}
    seen = set()
    for t in trials:
        if t.is_baseline:
            continue
        method = build(t.method, t.params_dict)
        rules = [(f, getattr(method, f, None)) for f in ("rule", "export")]
        rules = [(f, r) for f, r in rules if isinstance(r, str) and r.startswith("speedup:")]
        scheme = getattr(method, "scheme", None)
        own = getattr(method, "check_reachable", None)
        if not rules or (scheme is None and not callable(own)):
            continue
        mkey = (t.model, t.model_options, t.data)
        choice = (getattr(method, "layers", None), getattr(method, "include_stride2", True),
                  getattr(method, "tiles", 1))
        todo = ([((t.method, t.params), None)] if callable(own)
                else [((scheme, f, rule, repr(choice)), (f, rule)) for f, rule in rules])
        todo = [(k, fr) for k, fr in todo if (mkey, k) not in seen]
        if not todo:
            continue
        if mkey not in models:
            opts = t.model_cfg
            opts.pop("pretrained", None)
            shape, nc = describe(t.data_cfg)
            models[mkey] = (build_model(t.model, nc, shape, **opts), torch.zeros((1, *shape)))
        model, x = models[mkey]
        try:
            for k, fr in todo:
                seen.add((mkey, k))
                if fr is None:
                    own(model, x)
                else:
                    lowrank.check_reachable(model, scheme, fr[1], x, *choice, field=fr[0])
        except ValueError as e:
            raise UserError(f"{wheres.get(t.id, ('methods',))[0]}.{e}") from None


def check_pretrained_files(trials: Iterable[Trial]) -> None:
    """Every pretrained file against the model its trials build (keys and shapes), so a wrong
    file fails here rather than in a Ray worker after the sweep started."""
    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import check_pretrained, is_zoo_model
    from rankbench.bench.models.zoo import check_zoo_options

    seen = set()
    for t in trials:
        opts = t.model_cfg
        pre = opts.pop("pretrained", None)
        if not pre or (t.model, t.model_options, t.data) in seen:
            continue
        seen.add((t.model, t.model_options, t.data))
        shape, nc = describe(t.data_cfg)
        if is_zoo_model(t.model):
            try:
                check_zoo_options(t.model, opts, "model", nc, shape)
            except UserError:
                continue    # not the file's fault: check_models refuses the option, naming its field
        try:
            check_pretrained(t.model, nc, shape, str(Path(pre).expanduser()), **opts)
        except Exception as e:  # noqa: BLE001 (random bytes, an empty file: pickle's and zipfile's errors too)
            detail = (str(e).strip().splitlines() or [""])[0].removeprefix("pretrained: ")
            if not isinstance(e, (ValueError, RuntimeError, OSError)) or not detail:
                detail = f"not a readable state dict file ({type(e).__name__})"
            raise bad("model.pretrained", pre, f"a state dict of {t.model} for {nc} classes and inputs {shape}",
                      detail, PATH_QUOTE) from None
