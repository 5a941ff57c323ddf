"""``rankbench plan SPEC``: what a sweep will cost, before it runs.

Per trial: the seconds of a few training steps of its own model, batch and method hooks, timed
on this machine's device (or the one named with ``--device``), scaled to the trial's epochs and
dataset size, plus its fixed costs (loading the data, compressing, measuring latency, starting
the trial). Then the sweep as a whole: device-hours (GPU-hours for GPU trials, CPU-hours for CPU
trials) and the makespan on ``--gpus N`` (or ``--cpus N``) over ``--nodes K`` under the harness's
own queue order (``rankbench.bench.running.queue``: baselines first, a trial that starts from a
baseline waits for it and only for it, every other trial starts as soon as its share is free).

What the estimate leaves out, said in the printed notes: a baseline-started method fine-tunes
its compressed (smaller, faster) model, timed here as the dense one (an upper bound); packed
trials (``gpus < 1``) are timed alone; data-parallel trials are timed per worker, without the
gradient all-reduce; a step timed on CPU at a smaller batch is scaled per image.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from rankbench.bench.checks import UserError, bad
from rankbench.bench.data.build import build_data, describe
from rankbench.bench.models.builtin import build_model
from rankbench.bench.speed.core import median, timed_in_turns
from rankbench.bench.train.config import TrainConfig
from rankbench.bench.train.loop import train_step
from rankbench.bench.trial import Trial, per_worker, workers_for
from rankbench.methods.api.base import Context
from rankbench.methods.api.registry import build as build_method, get_method

# datasets whose files may be absent where the plan is made: their standard split sizes
KNOWN_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}
KNOWN_SHAPES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
# on CPU a step is timed at no more than this many images and scaled per image (a ResNet-50 step
# at batch 256 takes minutes on a laptop); on CUDA at the trial's own per-worker batch
CPU_PROBE_BATCH = 16
# ... unless the step scaled to the full batch would take less than this: then it is timed at full batch
FULL_BATCH_BELOW_S = 1.0


@dataclass(frozen=True)
class PlanConfig:
    """Where the sweep is planned to run and how its steps are timed."""

    gpus: int | None = None        # GPUs in all (default: this machine's, for GPU trials)
    cpus: int | None = None        # CPUs in all (default: this machine's, for CPU trials)
    nodes: int = 1                 # the GPUs/CPUs split evenly over this many nodes
    device: str | None = None      # where steps are timed: cuda when there is one, else cpu
    steps: int = 3                 # timed steps per measurement (after one warm-up step)
    startup_s: float = 1.0         # per trial: a Ray worker, imports, writing the row (BENCHMARKS.md)
    # trial id -> {step_s, eval_s, fixed_s, device} of an earlier plan (--timings): not timed again
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TrialCost:
    """One trial's estimate: ``seconds`` = ``steps`` x ``step_s`` + ``evals`` x ``eval_s`` + ``fixed_s``."""

    id: str
    label: str
    resource: str                  # "GPU" or "CPU": what the trial holds while it runs
    amount: float                  # how much of it (all workers together)
    workers: int
    steps: int
    step_s: float
    evals: int
    eval_s: float
    fixed_s: float
    baseline: str | None           # the trial it waits for
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- sizes and shapes -----------------------------------------------------------------------

def data_facts(cfg: dict[str, Any]) -> tuple[tuple[int, ...], int, int, int, float]:
    """(input shape, classes, train images, val images, seconds to load) of a data config; a
    dataset whose files are not here is planned at its standard size (ImageNet-1k, CIFAR)."""
    name = cfg.get("name", "digits")
    try:
        shape, classes = describe(cfg)
    except UserError:
        if name not in KNOWN_SIZES:
            raise
        size = int(cfg.get("image_size", 224))
        shape, classes = KNOWN_SHAPES.get(name, ((3, size, size), 1000))
        per_class = cfg.get("train_per_class")
        train, val = KNOWN_SIZES[name]
        if per_class:
            train = min(train, int(per_class) * classes)
        return tuple(shape), classes, train, val, 0.0
    if name == "imagenet" or (name in KNOWN_SIZES and cfg.get("root") is None):
        train, val = KNOWN_SIZES[name]
        return tuple(shape), classes, train, val, 0.0
    t0 = time.perf_counter()
    data = build_data(cfg, seed=0, batch_size=64, augment=False)
    return tuple(shape), classes, data.train_size, data.val_size, time.perf_counter() - t0


# --- timing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Probe:
    """What a timed step depends on: trials that share it share one measurement."""

    model: str
    model_options: tuple
    shape: tuple[int, ...]
    classes: int
    method: str                    # the method whose hooks run in the step; "" for none
    params: tuple
    batch: int                     # the per-worker batch it stands for
    amp: bool
    threads: int


def _probe_batch(batch: int, device: torch.device) -> int:
    return batch if device.type == "cuda" else max(1, min(batch, CPU_PROBE_BATCH))


def _inputs(p: _Probe, device: torch.device, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    b = p.batch if full else _probe_batch(p.batch, device)
    g = torch.Generator().manual_seed(0)
    return (torch.randn((b, *p.shape), generator=g).to(device),
            torch.randint(0, p.classes, (b,), generator=g).to(device))


def _model(p: _Probe, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(p.model, p.classes, p.shape, **dict(p.model_options)).to(device)


def _attached(p: _Probe, model: torch.nn.Module, device: torch.device) -> Any:
    method = build_method(p.method, dict(p.params))
    batch = _inputs(p, device)
    ctx = Context(input_shape=p.shape, num_classes=p.classes, steps_per_epoch=100, epochs=1, device=device,
                  log=lambda _line: None, train_batches=lambda n: [batch] * n)
    method.ctx = ctx
    method.attach(model, ctx)
    return method


def time_step(p: _Probe, device: torch.device, steps: int) -> tuple[float, float, list[str]]:
    """(seconds per training step, per evaluation batch) at ``p.batch`` images, and notes. On
    CPU a large step is timed at a smaller batch and scaled per image, with the method's hooks
    (a projection's SVD does not shrink with the batch) timed apart and added once per step; a
    step that is cheap at full batch is timed at full batch (small models do not scale per image)."""
    x, y = _inputs(p, device)
    plain_s, eval_s = _timed_steps(replace(p, method="", params=()), (x, y), device, steps)
    if len(x) < p.batch and plain_s * p.batch / len(x) < FULL_BATCH_BELOW_S:
        x, y = _inputs(replace(p, batch=p.batch), device, full=True)
        plain_s, eval_s = _timed_steps(replace(p, method="", params=()), (x, y), device, steps)
    notes = [f"step timed at batch {len(x)} and scaled to {p.batch} per image"] if len(x) != p.batch else []
    hooks_s = 0.0
    if p.method:
        hooked_s, _ = _timed_steps(p, (x, y), device, steps)
        hooks_s = max(0.0, hooked_s - plain_s)
    scale = p.batch / len(x)
    return plain_s * scale + hooks_s, eval_s * scale, notes


def _timed_steps(p: _Probe, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, steps: int
                 ) -> tuple[float, float]:
    """Median seconds of a training step (with ``p.method``'s hooks) and of an evaluation batch."""
    x, y = batch
    model = _model(p, device)
    method = _attached(p, model, device) if p.method else None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    count = [0]

    def step() -> None:
        train_step(model, x, y, opt, method, count[0], amp=p.amp)
        count[0] += 1

    def forward() -> None:
        with torch.no_grad():
            model.eval()(x)
        model.train()
    # one warm-up each (allocations, cuDNN's choice, TRP's first SVD), then in turns
    runs = timed_in_turns({"step": step, "forward": forward}, device, steps, 1)
    return median(runs["step"]), median(runs["forward"])


def compress_seconds(p: _Probe, device: torch.device) -> float:
    """One attach + compress of ``p.method`` on a fresh model (a trained model's ranks differ,
    the decomposition costs about the same)."""
    model = _model(p, device)
    t0 = time.perf_counter()
    _attached(p, model, device).compress(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _measured(key: tuple, cache: dict, fn: Callable[[], Any]) -> Any:
    if key not in cache:
        cache[key] = fn()
    return cache[key]


@contextlib.contextmanager
def _threads(n: int, device: torch.device) -> Iterator[None]:
    """A CPU trial trains with its own ``cpus`` threads (as the sweep runs it): time it so."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- one trial ------------------------------------------------------------------------------

def _latency_seconds(trial: Trial, eval_s: float, batch: int) -> float:
    """The measure phase: ``latency_repeats`` forwards of the dense and of the compressed model
    at the latency batch, with as many warm-up forwards, from the evaluation batch's time."""
    m = trial.measure_cfg
    per_image = eval_s / max(1, batch)
    return 2 * 2 * int(m.get("latency_repeats", 20)) * per_image * int(m.get("latency_batch", 1))


def trial_cost(trial: Trial, cfg: PlanConfig, device: torch.device, cache: dict) -> TrialCost:
    """The estimate for one trial; ``cache`` holds the measurements trials share, and the
    timings of an earlier plan (``cfg.timings``) are reused for the trials it has."""
    res = trial.resources_cfg
    workers = workers_for(res)
    gpus = float(res.get("gpus", 0) or 0)
    resource, amount = ("GPU", gpus) if gpus > 0 else ("CPU", float(res.get("cpus", 1)))
    shape, classes, n_train, n_val, load_s = _measured(("data", json.dumps(trial.data_cfg, sort_keys=True)), cache,
                                                       lambda: data_facts(trial.data_cfg))
    tc = TrainConfig.of(trial)
    cls = get_method(trial.method)
    method = build_method(trial.method, trial.params_dict)
    from_baseline = bool(cls.starts_from_baseline)
    epochs = (0 if from_baseline else tc.epochs) + int(method.finetune_epochs)
    cost = TrialCost(trial.id, trial.label, resource, amount, workers, epochs * math.ceil(n_train / tc.batch_size),
                     0.0, epochs * math.ceil(n_val / tc.batch_size) + 1, 0.0, 0.0,
                     trial.baseline().id if from_baseline else None)
    known = cfg.timings.get(trial.id)
    if known is not None:
        cost.step_s, cost.eval_s, cost.fixed_s = (float(known[k]) for k in ("step_s", "eval_s", "fixed_s"))
        cost.notes = [f"timings reused from an earlier plan ({known['device']})"]
    else:
        _measure(cost, trial, (shape, classes, load_s), cfg, device, cache)
    if from_baseline and method.finetune_epochs:
        cost.notes.append("fine-tuning timed on the dense model: an upper bound")
    cost.seconds = cost.steps * cost.step_s + cost.evals * cost.eval_s + cost.fixed_s
    return cost


def _measure(cost: TrialCost, trial: Trial, facts: tuple, cfg: PlanConfig, device: torch.device, cache: dict
             ) -> None:
    """Time ``trial``'s step, evaluation and compression on ``device`` into ``cost``."""
    shape, classes, load_s = facts
    cls = get_method(trial.method)
    hooks = not (cls.starts_from_baseline or cls.is_baseline)
    batch = max(1, TrainConfig.of(trial).batch_size // cost.workers)
    # pretrained weights change no step's cost, and need not be here to plan
    options = tuple((k, v) for k, v in trial.model_options if k != "pretrained")
    p = _Probe(trial.model, options, shape, classes, trial.method if hooks else "", trial.params if hooks else (),
               batch, TrainConfig.of(trial).amp, max(1, int(per_worker(trial.resources_cfg)["CPU"])))
    with _threads(p.threads, device):
        cost.step_s, cost.eval_s, notes = _measured(("step", p), cache, lambda: time_step(p, device, cfg.steps))
        compress_s = 0.0 if cls.is_baseline else _measured(
            ("compress", p.model, p.model_options, p.shape, trial.method, trial.params), cache,
            lambda: compress_seconds(replace(p, method=trial.method, params=trial.params), device))
    cost.fixed_s = cfg.startup_s + load_s + compress_s + _latency_seconds(trial, cost.eval_s, batch)
    cost.notes = list(notes)


# --- the sweep: makespan under the queue's order --------------------------------------------

@dataclass
class Slot:
    """One trial as scheduled: when it starts and ends, and on which node(s)."""

    id: str
    start: float
    end: float
    nodes: list[int]


def _place(c: TrialCost, free: list[float]) -> list[int] | None:
    """The nodes ``c`` takes: one node that holds it all, or (data-parallel) a worker's share on
    each of several nodes; None when it does not fit now."""
    for i, f in enumerate(free):
        if f + 1e-9 >= c.amount:
            return [i] * c.workers
    if c.workers > 1:
        share, left, taken = c.amount / c.workers, list(free), []
        for _ in range(c.workers):
            i = next((j for j, f in enumerate(left) if f + 1e-9 >= share), None)
            if i is None:
                return None
            left[i] -= share
            taken.append(i)
        return taken
    return None


def _startable(pending: list[TrialCost], running: dict[str, Slot], free: list[float]) -> list[tuple[TrialCost, list[int]]]:
    """The trials the queue hands out now, in its order: a trial waits for a baseline still
    pending or running, and for a free share; later trials may pass one that waits."""
    waiting = {c.id for c in pending} | set(running)
    out = []
    for c in pending:
        if c.baseline in waiting:
            continue
        nodes = _place(c, free)
        if nodes is None:
            continue
        for i in nodes:
            free[i] -= c.amount / len(nodes)
        out.append((c, nodes))
    return out


def makespan(costs: list[TrialCost], per_node: float, nodes: int) -> list[Slot]:
    """Simulate the sweep: every trial as soon as the queue lets it start and a node has room."""
    free = [per_node] * nodes
    pending, running, done, now = list(costs), {}, [], 0.0
    while pending or running:
        for c, where in _startable(pending, running, free):
            pending.remove(c)
            running[c.id] = Slot(c.id, now, now + c.seconds, where)
        if not running:     # nothing runs and nothing can start: a trial larger than every node
            raise bad("plan", pending[0].label, f"trials that fit {nodes} node(s) of {per_node:g} "
                      f"{pending[0].resource}s each", f"needs {pending[0].amount:g}")
        first = min(running.values(), key=lambda s: s.end)
        now = first.end
        del running[first.id]
        c = next(c for c in costs if c.id == first.id)
        for i in first.nodes:
            free[i] += c.amount / len(first.nodes)
        done.append(first)
    return done


def capacity(costs: list[TrialCost], cfg: PlanConfig) -> tuple[str, float]:
    """(resource, total amount) the sweep is planned on."""
    if any(c.resource == "GPU" for c in costs):
        here = torch.cuda.device_count()
        n = cfg.gpus if cfg.gpus is not None else here
        if not n:
            raise bad("--gpus", n, "the number of GPUs to plan on (this machine has none)")
        return "GPU", float(n)
    return "CPU", float(cfg.cpus if cfg.cpus is not None else (os.cpu_count() or 1))


def plan(trials: Sequence[Trial], cfg: PlanConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every trial's estimate and the sweep's device-hours and makespan, as a JSON-able dict."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cache: dict = {}
    t0 = time.perf_counter()
    costs = [trial_cost(t, cfg, device, cache) for t in trials]
    log(f"timed {sum(k[0] == 'step' for k in cache)} distinct training steps and "
        f"{sum(k[0] == 'compress' for k in cache)} compressions in {time.perf_counter() - t0:.0f} s")
    resource, total = capacity(costs, cfg)
    slots = makespan(costs, total / cfg.nodes, cfg.nodes)
    span = max((s.end for s in slots), default=0.0)
    busy = sum(c.seconds * c.amount for c in costs)
    reused = [cfg.timings[t.id]["device"] for t in trials if t.id in cfg.timings]
    if reused and len(reused) == len(trials):   # nothing timed here: the steps are the earlier plan's
        device = reused[0]
    return {"device": str(device), "reused": len(reused), "torch_threads": torch.get_num_threads(), "resource": resource,
            "total": total, "nodes": cfg.nodes, "device_hours": busy / 3600, "makespan_s": span,
            "utilisation": busy / (span * total) if span else 0.0, "startup_s": cfg.startup_s,
            "trials": [asdict(c) for c in costs], "schedule": [asdict(s) for s in slots],
            "notes": sorted({n for c in costs for n in c.notes})}


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_plan(result: dict[str, Any]) -> str:
    """The table ``rankbench plan`` prints: a line per trial, then the sweep."""
    start = {s["id"]: s["start"] for s in result["schedule"]}
    lines = [f"{'trial':12}  {'label':44}  {'steps':>8}  {'step ms':>8}  {'fixed s':>7}  {'time':>9}  "
             f"{'holds':>7}  {'starts at':>9}"]
    for c in result["trials"]:
        lines.append(f"{c['id']:12}  {c['label'][:44]:44}  {c['steps']:8d}  {c['step_s'] * 1e3:8.1f}  "
                     f"{c['fixed_s']:7.1f}  {_duration(c['seconds']):>9}  {c['amount']:5g} {c['resource']}  "
                     f"{_duration(start[c['id']]):>9}")
    r = result
    lines.append(f"sweep: {len(r['trials'])} trials, {r['device_hours']:.2f} {r['resource']}-hours; makespan "
                 f"{_duration(r['makespan_s'])} on {r['total']:g} {r['resource']}s over {r['nodes']} node(s) "
                 f"({r['utilisation']:.0%} busy); steps timed on {r['device']}")
    lines += [f"note: {n}" for n in r["notes"]]
    if r["resource"] == "GPU" and r["device"] == "cpu":
        lines.append("note: GPU trials timed on this machine's CPU: the hours above are CPU-hours; time them "
                     "on one GPU (--device cuda --json FILE) and plan the cluster with --timings FILE")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankbench plan", description="What a sweep will cost before it runs: "
                                "per-trial time from a few measured steps, device-hours, makespan.")
    p.add_argument("spec", nargs="?", help="a spec file or a shipped spec's name (default: quick)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=3")
    p.add_argument("--gpus", type=int, default=None, help="GPUs in all (default: this machine's)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs in all, for CPU trials (default: this machine's)")
    p.add_argument("--nodes", type=int, default=1, help="the GPUs (CPUs) split evenly over K nodes (default 1)")
    p.add_argument("--device", default=None, help="where to time the steps: cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per measurement (default 3)")
    p.add_argument("--startup", type=float, default=1.0, metavar="SECONDS",
                   help="fixed cost of starting one trial (default 1)")
    p.add_argument("--timings", default=None, metavar="FILE",
                   help="reuse the step timings of an earlier plan's JSON (e.g. made with --device cuda on "
                        "one GPU node) for the trials it has, and plan another cluster size without timing again")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan as JSON here")
    return p


def _config(a: argparse.Namespace) -> PlanConfig:
    for name, v, least in (("--gpus", a.gpus, 1), ("--cpus", a.cpus, 1), ("--nodes", a.nodes, 1), ("--steps", a.steps, 1)):
        if v is not None and v < least:
            raise bad(name, v, f"an integer >= {least}")
    if a.startup < 0:
        raise bad("--startup", a.startup, "seconds >= 0")
    for name, total in (("--gpus", a.gpus), ("--cpus", a.cpus)):
        if total is not None and total % a.nodes:
            raise bad(name, total, f"a multiple of --nodes {a.nodes} (each node holds as many)")
    if a.device is not None:
        try:
            torch.device(a.device)
        except RuntimeError:
            raise bad("--device", a.device, "cpu, cuda or cuda:N") from None
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            raise bad("--device", a.device, "cpu (this machine has no CUDA device)")
    return PlanConfig(gpus=a.gpus, cpus=a.cpus, nodes=a.nodes, device=a.device, steps=a.steps, startup_s=a.startup,
                      timings=read_timings(a.timings) if a.timings else {})


def read_timings(path: str) -> dict[str, dict[str, Any]]:
    """Trial id -> timings of an earlier plan's JSON (read as data only)."""
    try:
        result = json.loads(Path(path).read_text())
        return {str(c["id"]): {"step_s": float(c["step_s"]), "eval_s": float(c["eval_s"]),
                               "fixed_s": float(c["fixed_s"]), "device": str(result["device"])}
                for c in result["trials"]}
    except FileNotFoundError:
        raise bad("--timings", path, "the JSON file an earlier `rankbench plan --json` wrote", "no such file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise bad("--timings", path, "the JSON file an earlier `rankbench plan --json` wrote",
                  f"not a plan ({type(e).__name__}: {e})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``rankbench plan``: print the plan's table and write its JSON (``--json``)."""
    from rankbench.bench.spec.parse import load_spec

    a = _parser().parse_args(argv)
    cfg = _config(a)
    # the plan needs no data on disk: absent datasets are planned at their standard size
    sweep = load_spec(a.spec or "quick", overrides=a.overrides, check_files=False)
    print(f"plan {sweep.name}: {len(sweep.trials)} trials, timing their steps...")
    result = {"sweep": sweep.name, **plan(sweep.trials, cfg)}
    print(format_plan(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0
