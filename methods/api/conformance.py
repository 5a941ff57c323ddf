"""The conformance suite: what every method (built-in or plugin) must do for the harness to run
it. It ships with the package, so a plugin author runs it without a checkout of this repository::

    rankbench check-method NAME          # one line per check, exit 1 if any fails
    python -c "from rankbench.methods.api.conformance import run; print(run('NAME'))"

The suite drives the method through the protocol ``rankbench.methods.api.base`` documents (attach, optimizer
from ``param_groups``, ``before_step`` / ``extra_loss`` / ``after_backward`` around each step,
``state_dict`` checkpoints, ``compress``, ``report``) on a small CNN (or an MLP for a method
whose ``scheme`` defaults to ``linear``) with 1x8x8 inputs and random data. Checks:

- ``parameters``  every constructor parameter has a default, the defaults build, a bad value is
                  refused with the one-line error naming the parameter, an unknown one by name.
- ``compress``    attach keeps what the model computes; compress keeps the output shape and
                  leaves the trained model untouched; report() is a ``MethodReport``;
                  ``choose_layers`` (unless None) names every Conv2d/Linear and covers every
                  layer compress() decomposed.
- ``round-trip``  the compressed model's state dict loads into the structure rebuilt from the
                  report (``method.rebuild(model, layers)``) and gives the same outputs.
- ``macs``        asked for ``speedup:2.0`` (every parameter named ``rule``/``export`` or whose
                  default is a rank rule), the
                  MAC speed-up is 2 within 2%; a method that refuses it, asked ``energy:0.5``,
                  has fewer MACs; none is ever above dense.
- ``full-rank``   asked for full rank (``ratio:1.0``, else ``energy:1.0``), the compressed model
                  computes what the trained one does. A method whose decomposition has no exact
                  full rank (CP) says so with the class attribute ``exact_full_rank = False``;
                  the check then passes with a note.
- ``hooks``       every hook the class overrides is called by the protocol (a method that starts
                  from the baseline is never trained: it must not override the training hooks),
                  and no public method's name is a near miss of a hook's (``before_steps``).
- ``resume``      a run stopped after a checkpoint and resumed (fresh method and model, the
                  checkpoint's model, optimizer and ``state_dict`` loaded) ends where an
                  uninterrupted run ends, and the method's state is restored as saved.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import io
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from rankbench.methods import lowrank
from rankbench.methods.api.base import Context, Method, MethodReport, start
from rankbench.methods.api import registry

SHAPE = (1, 8, 8)
CLASSES = 10
STEPS = 4          # training steps of the protocol run; the resume check stops after half
CHECKS = ("parameters", "compress", "round-trip", "macs", "full-rank", "hooks", "resume")
TRAINING_HOOKS = ("before_step", "extra_loss", "after_backward", "param_groups")
HOOKS = ("attach", *TRAINING_HOOKS, "compress", "report", "state_dict", "load_state_dict")


@dataclass
class Result:
    """One check's outcome; ``detail`` says what failed (or what was checked)."""

    check: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.check}{': ' + self.detail if self.detail else ''}"


def tiny_model(kind: str = "cnn", seed: int = 0) -> nn.Module:
    """The suite's models: ``cnn`` (four 3x3 convs, one with stride 2, BN, a linear head) or ``mlp``."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, CLASSES))
    layers: list[nn.Module] = []
    for cin, cout, stride in ((1, 16, 1), (16, 32, 1), (32, 32, 2), (32, 64, 1)):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES))


def batch(i: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``i``-th random batch (the same on every call)."""
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn((size, *SHAPE), generator=g), torch.randint(0, CLASSES, (size,), generator=g)


def context(epochs: int = 1) -> Context:
    """A trial context with calibration batches from :func:`batch`."""
    return Context(input_shape=SHAPE, num_classes=CLASSES, steps_per_epoch=STEPS, epochs=epochs,
                   train_batches=lambda n: [batch(100 + i) for i in range(n)])


def _arch(name: str) -> str:
    scheme = registry.parameters(name).get("scheme")
    return "mlp" if scheme is not None and scheme.default == "linear" else "cnn"


RULE_NAMES = ("rule", "export")   # parameters taken for rank rules whatever their default (e.g. "vbmf")


def rule_params(name: str) -> list[str]:
    """Parameters that take a rank rule (named ``rule``/``export``, or defaulting to a rule): how
    the suite asks a method for a rank."""
    out = []
    for k, p in registry.parameters(name).items():
        if k in RULE_NAMES:
            out.append(k)
        elif isinstance(p.default, str):
            try:
                lowrank.parse_rule(p.default)
            except ValueError:
                continue
            out.append(k)
    return out


def ask(name: str, rules: tuple[str, ...]) -> dict[str, str]:
    """Every rule parameter set to the first of ``rules`` the method accepts."""
    params: dict[str, str] = {}
    for k in rule_params(name):
        for rule in rules:
            try:
                registry.build(name, {k: rule})
            except ValueError:
                continue
            params[k] = rule
            break
    return params


def optimizer(method: Method, model: nn.Module) -> torch.optim.Optimizer:
    groups = method.param_groups(model)
    return torch.optim.SGD(groups if groups is not None else model.parameters(), lr=0.01, momentum=0.9,
                           weight_decay=1e-4)


def train(method: Method, model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    """Steps ``start .. stop-1`` of the documented training loop."""
    model.train()
    for step in range(start, stop):
        x, y = batch(step)
        opt.zero_grad()
        method.before_step(model, step)
        loss = nn.functional.cross_entropy(model(x), y)
        extra = method.extra_loss(model, step)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        method.after_backward(model, step)
        opt.step()
    model.eval()


def _saved(obj: Any) -> Any:
    """``obj`` after a torch.save / torch.load round trip, as a checkpoint carries it: read with
    ``weights_only`` (the harness never unpickles code from a checkpoint), so a method whose state
    holds anything but tensors and plain values fails here, not on a user's resume."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def same(a: Any, b: Any, atol: float = 1e-5) -> bool:
    """Deep equality of nested dicts/lists/tuples of tensors and plain values (tensors to ``atol``)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and (a.dtype == torch.bool or not a.is_floating_point() and torch.equal(a, b)
                     or a.is_floating_point() and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))
                and (a.dtype != torch.bool or torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, atol) for x, y in zip(a, b))
    return bool(a == b)


class _Counted:
    """Counts the calls of the instance's hooks (wrapping them on the instance)."""

    def __init__(self, method: Method, counts: dict[str, int]) -> None:
        for hook in HOOKS:
            orig = getattr(method, hook)

            def wrapped(*a: Any, _orig: Callable = orig, _hook: str = hook, **kw: Any) -> Any:
                counts[_hook] = counts.get(_hook, 0) + 1
                return _orig(*a, **kw)
            setattr(method, hook, wrapped)


@dataclass
class Run:
    """One protocol run: the method, its trained and compressed models, the checkpoint taken
    half-way (or, resumed, ``restored``: the state right after ``load_state_dict``), and how
    often each hook was called."""

    method: Method
    model: nn.Module
    small: nn.Module
    checkpoint: dict[str, Any]
    counts: dict[str, int]


def protocol(name: str, params: dict[str, Any], resume_from: Optional[dict[str, Any]] = None) -> Run:
    """One trial as the harness runs it, checkpointed after step ``STEPS // 2``; ``resume_from``:
    a checkpoint to resume from (a fresh method and model, as a rerun has)."""
    method = registry.build(name, params)
    counts: dict[str, int] = {}
    _Counted(method, counts)
    model = tiny_model(_arch(name))
    baseline = method.starts_from_baseline
    if baseline:   # the harness trains the dense baseline; the method itself trains 0 epochs
        dense = registry.build("dense", {})
        train(dense, model, optimizer(dense, model), 0, STEPS)
    start(method, model, context(epochs=0 if baseline else 1))
    stop_at = STEPS // 2
    opt = None if baseline else optimizer(method, model)
    checkpoint: dict[str, Any] = {}
    first = 0
    if resume_from is not None:      # what the harness does on a rerun: load the checkpoint, go on
        if opt is not None:
            model.load_state_dict(resume_from["model"])
            opt.load_state_dict(resume_from["optimizer"])
        method.load_state_dict(resume_from["method"])
        checkpoint["restored"] = _saved(method.state_dict())
        first = resume_from["step"]
    if opt is not None:
        if first < stop_at:
            train(method, model, opt, first, stop_at)
            checkpoint.update(_saved({"step": stop_at, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                      "method": method.state_dict()}))
        train(method, model, opt, max(first, stop_at), STEPS)
    elif resume_from is None:        # nothing trains: the state after attach is what a rerun must restore
        checkpoint.update(_saved({"step": 0, "method": method.state_dict()}))
    model.eval()
    small = method.compress(model)
    small.eval()
    method.report()
    return Run(method, model, small, checkpoint, counts)


_MEMO: dict[tuple[str, str, bool], Run] = {}   # runs shared by the checks of one run() call


def _run(name: str, params: dict[str, Any], resumed: bool = False) -> Run:
    key = (name, repr(sorted(params.items())), resumed)
    if key not in _MEMO:
        _MEMO[key] = protocol(name, params, _run(name, params).checkpoint if resumed else None)
    return _MEMO[key]


# --- the checks: each returns a failure message, or "" -------------------------------------------

def check_parameters(name: str) -> str:
    params = registry.parameters(name)
    for k, p in params.items():
        if p.default is inspect.Parameter.empty:
            return f"parameter {k!r} has no default (every parameter needs one)"
        try:
            registry.build(name, {k: object()})
            return f"parameter {k!r} accepted object(): validate it (rankbench.methods.api.base.check_param)"
        except ValueError as e:
            if not str(e).startswith(f"{k}: ") or "\n" in str(e):
                return f"parameter {k!r}: a bad value's error must be one line starting {k + ': '!r}, got {str(e)!r}"
    registry.build(name, {})
    try:
        registry.build(name, {"no_such_parameter": 1})
        return "an unknown parameter was accepted"
    except ValueError:
        pass
    return ""


def check_compress(name: str) -> str:
    method = registry.build(name, ask(name, ("speedup:2.0", "energy:0.5")))
    model = tiny_model(_arch(name)).eval()
    x = batch(0)[0]
    with torch.no_grad():
        y = model(x)
        start(method, model, context(epochs=0 if method.starts_from_baseline else 1))
        if not torch.allclose(model(x), y, rtol=1e-4, atol=1e-5):
            return "attach() changed what the model computes (a replaced layer must start as the layer it replaces)"
        before = model(x)
        small = method.compress(model)
        small.eval()
        if small(x).shape != y.shape:
            return f"compress() changed the output shape: {tuple(small(x).shape)} != {tuple(y.shape)}"
        if not torch.equal(model(x), before):
            return "compress() modified the model it was given (compress a copy)"
    rep = method.report()
    if not (isinstance(rep, MethodReport) and isinstance(rep.layers, list) and isinstance(rep.info, dict)):
        return f"report() must return a rankbench.methods.api.base.MethodReport, got {type(rep).__name__}"
    fresh = tiny_model(_arch(name))
    chosen = method.choose_layers(fresh)
    if chosen is not None:
        layers = [n for n, m in fresh.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if [n for n, _ in chosen] != layers:
            return f"choose_layers() must name every Conv2d/Linear in order: {layers}, got {[n for n, _ in chosen]}"
        done = {r["name"] for r in rep.layers if r.get("skipped") is None and r.get("rank") is not None}
        extra = sorted(done - {n for n, r in chosen if r is None})
        if extra:
            return f"compress() decomposed layers choose_layers() said stay dense: {', '.join(extra)}"
    return ""


def check_round_trip(name: str) -> str:
    r = _run(name, ask(name, ("speedup:2.0", "energy:0.5")))
    method, small = r.method, r.small
    fresh = method.rebuild(tiny_model(_arch(name), seed=1), method.report().layers).eval()
    try:
        fresh.load_state_dict(_saved(small.state_dict()))
    except RuntimeError as e:
        return (f"the compressed model's state dict does not load into the structure rebuilt from the report "
                f"(a method with layers of its own overrides rebuild(model, layers)): {str(e).splitlines()[0]}")
    x = batch(0)[0]
    with torch.no_grad():
        if not torch.allclose(fresh(x), small(x), atol=1e-6):
            return "the rebuilt model with the saved state dict computes something else"
    return ""


def check_macs(name: str) -> str:
    asked = ask(name, ("speedup:2.0", "energy:0.5"))
    small = _run(name, asked).small
    x = batch(0)[0]
    dense, macs = lowrank.model_macs(tiny_model(_arch(name)), x), lowrank.model_macs(small, x)
    if any(v.startswith("speedup") for v in asked.values()):
        if abs(dense / macs - 2.0) > 0.04:
            return f"asked speedup:2.0 ({asked}), got a {dense / macs:.3f}x MAC speed-up"
    elif asked and macs >= dense:
        return f"asked {asked}, MACs {macs} are not below dense {dense}"
    elif macs > dense:
        return f"MACs {macs} are above dense {dense}"
    return ""


def check_full_rank(name: str) -> str:
    r = _run(name, ask(name, ("ratio:1.0", "energy:1.0")))
    model, small = r.model, r.small
    x = batch(0)[0]
    with torch.no_grad():
        a, b = model(x), small(x)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        return f"at full rank the compressed model differs from the trained one by {float((a - b).abs().max()):.2e}"
    return ""


def _near_misses(cls: type) -> list[str]:
    api = set(dir(Method))
    out = []
    for attr, value in inspect.getmembers(cls, callable):
        if attr.startswith("_") or attr in api:
            continue
        close = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.85)
        if close:
            out.append(f"{attr!r} (did you mean the hook {close[0]!r}?)")
    return out


def check_hooks(name: str) -> str:
    cls = registry.get_method(name)
    declared = [h for h in HOOKS if getattr(cls, h) is not getattr(Method, h)]
    if cls.starts_from_baseline:
        trained = [h for h in declared if h in TRAINING_HOOKS]
        if trained:
            return (f"starts_from_baseline is True, so the method never trains and the harness never calls "
                    f"{', '.join(trained)}")
    params = ask(name, ("speedup:2.0", "energy:0.5"))
    counts = dict(_run(name, params).counts)
    for hook, n in _run(name, params, resumed=True).counts.items():
        counts[hook] = counts.get(hook, 0) + n
    missed = [h for h in declared if not counts.get(h)]
    if missed:
        return f"declared but never called: {', '.join(missed)}"
    near = _near_misses(cls)
    if near:
        return f"not a hook, so never called: {', '.join(near)}"
    return ""


def check_resume(name: str) -> str:
    params = ask(name, ("speedup:2.0", "energy:0.5"))
    first, again = _run(name, params), _run(name, params, resumed=True)
    whole, small, ck = first.model, first.small, first.checkpoint
    resumed, small2 = again.model, again.small
    if not same(again.checkpoint["restored"], ck["method"]):
        return "load_state_dict(state_dict()) does not restore the method's state"
    if not same(whole.state_dict(), resumed.state_dict(), atol=1e-4):
        return "a resumed run ends with other weights than an uninterrupted one (is all of the method's state in state_dict?)"
    x = batch(0)[0]
    with torch.no_grad():
        if not torch.allclose(small(x), small2(x), rtol=1e-3, atol=1e-4):
            return "a resumed run compresses to another model than an uninterrupted one"
    return ""


_RUNNERS: dict[str, Callable[[str], str]] = {
    "parameters": check_parameters, "compress": check_compress, "round-trip": check_round_trip,
    "macs": check_macs, "full-rank": check_full_rank, "hooks": check_hooks, "resume": check_resume,
}


def run(name: str, checks: tuple[str, ...] = CHECKS) -> list[Result]:
    """Run ``checks`` against the registered method ``name``; an exception fails its check (its
    one-line text in the detail) instead of stopping the suite."""
    registry.get_method(name)        # an unknown name: the registry's KeyError
    out = []
    _MEMO.clear()
    try:
        for c in checks:
            if c == "full-rank" and not getattr(registry.get_method(name), "exact_full_rank", True):
                out.append(Result(c, True, "not checked: the method declares exact_full_rank = False"))
                continue
            try:
                problem = _RUNNERS[c](name)
            except Exception as e:  # noqa: BLE001  (a plugin may raise anything: report it, run the next check)
                problem = f"raised {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            out.append(Result(c, not problem, problem))
    finally:
        _MEMO.clear()
    return out
