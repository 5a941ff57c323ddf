"""``rankbench speed --suite gpu --out DIR``: every GPU measurement in one command, in about 10
minutes on one GPU, into ``DIR/results.json`` and a readable ``DIR/summary.md``.

Parts (:data:`SUITE_PARTS`, run in this order, the JSON rewritten after each so a run cut short
keeps what it measured):

- ``step``           plain vs TRP training step per scheme and solver (eager), TRP started from
                     paper-level ranks (``rankbench.bench.speed.ranks``);
- ``projection``     one projection of all TRP layers per solver, on He-initialised, TRP-steady
                     and paper-rank weights, checked against an exact float64 SVD;
- ``latency``        dense vs decomposed inference, bf16, batch 1 and 256, each on its fastest layout;
- ``packed``         N training processes on one GPU vs one alone;
- ``pipeline``       the ImageNet input pipeline per decode path and layout (``rankbench.bench.data``'s
                     probe functions on synthetic JPEGs);
- ``step-compiled``  the plain and TRP steps under ``torch.compile`` (last: compiling costs the most).

``--suite cpu-smoke`` runs the same parts shrunk to seconds on a CPU (what the test runs). A
part that would overrun the suite's time budget is skipped, and one that fails is recorded
with its error; neither stops the others.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from rankbench.bench.speed import core, ranks
from rankbench.bench.speed.summary import summary_markdown
from rankbench.methods import lowrank

SUITES: tuple[str, ...] = ("gpu", "cpu-smoke")
SUITE_PARTS: tuple[str, ...] = ("step", "projection", "latency", "packed", "pipeline", "step-compiled")


@dataclass(frozen=True)
class Pipeline:
    """What the input-pipeline part times: synthetic JPEGs, each (layout, decode) pair."""

    images: int
    classes: int
    size: tuple[int, int]           # JPEG width x height
    image_size: int                 # the training crop
    resize: int
    batch: int
    batches: int
    workers: int
    decodes: tuple[str, ...] = ("pil", "torchvision")
    layouts: tuple[str, ...] = ("imagefolder", "tar")
    shard_size: int = 1000


@dataclass(frozen=True)
class Plan:
    """Everything a suite measures, and how long each part is expected to take (seconds)."""

    suite: str
    device: str
    step: dict[str, int]                    # model -> training batch
    step_schemes: dict[str, tuple[str, ...]]
    solvers: tuple[str, ...]
    steps: int
    warmup: int
    compile: bool | str
    compiled_solver: str
    compiled_schemes: dict[str, tuple[str, ...]]
    projection: tuple[tuple[str, str], ...]  # (model, scheme)
    projection_repeats: int
    latency: tuple[str, ...]
    latency_batches: tuple[int, ...]
    latency_repeats: int
    latency_layout: str | tuple[str, ...]
    packed: tuple[str, int, int, int]       # model, batch, processes, timed steps
    pipeline: Pipeline
    estimate_s: dict[str, float] = field(default_factory=dict)
    budget_s: float = 570.0
    step_size: float = ranks.STEP_SIZE      # each step's copy of the paper-rank weights: ranks.perturbed
    # the step part (eager) and the paper-rank projections of these models run again at this
    # step size: SGD at lr 0.1, half of the CIFAR recipe, moves ResNet-20's layers 1-2e-2 per step
    large_step: float = 1e-2
    large_step_models: tuple[str, ...] = ("resnet20",)


def make_plan(suite: str, device: torch.device, steps: Optional[int] = None, warmup: Optional[int] = None,
              batch: Optional[int] = None, compile: bool | str | None = None,
              step_size: float = ranks.STEP_SIZE) -> Plan:
    """The suite's plan on ``device``; ``steps``/``warmup``/``batch``/``compile`` override the
    training-step parts' defaults, ``step_size`` the random step of each copy of the paper-rank
    weights (:func:`ranks.perturbed`)."""
    solver = core.default_solver()
    if suite == "gpu":
        return Plan(
            suite, str(device),
            step={"resnet20": batch or 128, "resnet50": batch or 256},
            # ResNet-50: the paper exports the channel scheme only (spatial's SVD would cost minutes)
            step_schemes={"resnet20": ("channel", "spatial"), "resnet50": ("channel",)},
            solvers=lowrank.SOLVERS, steps=steps or 20, warmup=10 if warmup is None else warmup,
            compile=True if compile is None else compile, compiled_solver=solver,
            compiled_schemes={"resnet20": ("channel", "spatial"), "resnet50": ("channel",)},
            projection=(("resnet20", "channel"), ("resnet20", "spatial"), ("resnet50", "channel"),
                        ("resnet50", "spatial")),
            projection_repeats=5,
            latency=("resnet20", "resnet50"), latency_batches=(1, 256), latency_repeats=20, latency_layout="auto",
            packed=("resnet20", 128, 4, 50),
            pipeline=Pipeline(images=3072, classes=32, size=(500, 375), image_size=224, resize=256, batch=256,
                              batches=8, workers=min(16, os.cpu_count() or 1)),
            estimate_s={"step": 100, "projection": 125, "latency": 50, "packed": 50, "pipeline": 70,
                        "step-compiled": 150},
            budget_s=570.0, step_size=step_size)
    return Plan(
        suite, str(device),
        step={"resnet20": batch or 4}, step_schemes={"resnet20": ("channel", "spatial")},
        solvers=lowrank.SOLVERS, steps=steps or 1, warmup=1 if warmup is None else warmup,
        compile="aot_eager" if compile is None else compile, compiled_solver=solver,
        compiled_schemes={"resnet20": ("channel",)},
        projection=(("resnet20", "channel"), ("resnet20", "spatial")), projection_repeats=1,
        latency=("resnet20",), latency_batches=(1,), latency_repeats=2, latency_layout=("contiguous",),
        packed=("resnet20", batch or 4, 2, 1),
        pipeline=Pipeline(images=16, classes=2, size=(64, 48), image_size=32, resize=36, batch=4, batches=2,
                          workers=0),
        estimate_s={"step": 14, "projection": 7, "latency": 3, "packed": 15, "pipeline": 3, "step-compiled": 10},
        budget_s=300.0, step_size=step_size)


def describe(plan: Plan, parts: Sequence[str]) -> list[str]:
    """One line per planned part (printed before anything runs)."""
    lines = [f"[suite {plan.suite}] on {plan.device}, parts in order (estimated seconds; budget "
             f"{plan.budget_s:.0f} s: a part that would overrun it is skipped):"]
    larger = [m for m in plan.step if len(_step_sizes(plan, m)) > 1]
    sizes = f"paper-rank steps {plan.step_size:g} apart" + (
        f", {'/'.join(larger)} also {plan.large_step:g}" if larger else "")
    what = {
        "step": ", ".join(f"{m} batch {b} ({'/'.join(plan.step_schemes[m])})" for m, b in plan.step.items())
                + f": plain + TRP x {'/'.join(plan.solvers)}, {plan.warmup} warm-up + {plan.steps} timed steps, "
                + sizes,
        "projection": ", ".join(f"{m} {s}" for m, s in plan.projection)
                      + f": init, trp-steady, paper-ranks weights, {plan.projection_repeats} timed calls, {sizes}",
        "latency": f"{', '.join(plan.latency)}: dense vs decomposed, batch "
                   f"{' and '.join(map(str, plan.latency_batches))}",
        "packed": f"{plan.packed[2]} x {plan.packed[0]} (batch {plan.packed[1]}) vs one",
        "pipeline": f"{plan.pipeline.images} JPEGs {plan.pipeline.size[0]}x{plan.pipeline.size[1]}, "
                    f"{'/'.join(plan.pipeline.decodes)} x {'/'.join(plan.pipeline.layouts)}, batch "
                    f"{plan.pipeline.batch}, {plan.pipeline.batches} batches",
        "step-compiled": ", ".join(f"{m} ({'/'.join(plan.compiled_schemes[m])})" for m in plan.compiled_schemes)
                         + f": plain and TRP ({plan.compiled_solver}), torch.compile {plan.compile!r}",
    }
    return lines + [f"  {p:<14} ~{plan.estimate_s.get(p, 0):>4.0f} s  {what[p]}" for p in parts]


def _setup(plan: Plan, steps: Optional[int] = None) -> core.Setup:
    dev = torch.device(plan.device)
    cuda = dev.type == "cuda"
    return core.Setup(dev, amp=cuda, channels_last=cuda, steps=steps or plan.steps, warmup=plan.warmup)


def _over(deadline: Optional[float], what: str) -> Optional[dict[str, Any]]:
    """A row saying ``what`` was skipped when the suite's time is up, else None."""
    if deadline is not None and time.perf_counter() > deadline:
        return {"what": what, "skipped": "time budget: the suite's time was up before it started"}
    return None


def part_step(plan: Plan, deadline: Optional[float] = None, compiled: bool = False) -> list[dict[str, Any]]:
    setup = _setup(plan)
    rows = []
    models = plan.compiled_schemes if compiled else plan.step_schemes
    for name, schemes in models.items():
        late = _over(deadline, name)
        if late:
            rows.append({"model": name, **late})
            continue
        if compiled:
            variants = core.step_variants((), schemes, plan.compile, (plan.compiled_solver,), eager=False)
        else:
            variants = core.step_variants(plan.solvers, schemes)
        start = core.paper_start(name, setup, schemes)
        batch = plan.step[name]
        sizes = (plan.step_size,) if compiled else _step_sizes(plan, name)
        for size in sizes:
            rows += core.bench_step(name, batch, setup, variants, start, size)
    return rows


def _step_sizes(plan: Plan, name: str) -> tuple[float, ...]:
    """The step sizes ``name``'s paper-rank rows run at: the plan's, and its large step where it differs."""
    large = name in plan.large_step_models and plan.large_step != plan.step_size
    return (plan.step_size, plan.large_step) if large else (plan.step_size,)


def part_projection(plan: Plan, deadline: Optional[float] = None) -> list[dict[str, Any]]:
    setup = _setup(plan)
    rows = []
    for name, scheme in plan.projection:
        late = _over(deadline, f"{name} {scheme}")
        if late:
            rows.append({"model": name, "scheme": scheme, **late})
            continue
        rows += core.bench_projection(name, setup, scheme, repeats=plan.projection_repeats, step_size=plan.step_size)
        for size in _step_sizes(plan, name)[1:]:
            rows += core.bench_projection(name, setup, scheme, repeats=plan.projection_repeats,
                                          kinds=("paper-ranks",), step_size=size)
    return rows


def part_latency(plan: Plan, deadline: Optional[float] = None) -> list[dict[str, Any]]:
    setup = _setup(plan)
    rows = []
    for name in plan.latency:
        got, _ = core.bench_latency(name, setup, batches=plan.latency_batches, repeats=plan.latency_repeats,
                                    layout=plan.latency_layout)
        rows += got
    return rows


def part_packed(plan: Plan, deadline: Optional[float] = None) -> list[dict[str, Any]]:
    name, batch, n, steps = plan.packed
    return [core.bench_packed(name, batch, n, steps, _setup(plan, steps))]


def part_pipeline(plan: Plan, deadline: Optional[float] = None) -> list[dict[str, Any]]:
    """Images/s of the training input pipeline for every (layout, decode) pair, on one set of
    synthetic JPEGs written as an ImageFolder and converted to shards (``rankbench.bench.data``'s probe
    functions)."""
    from rankbench.bench.data import fake_imagefolder, imagefolder_to_shards
    from rankbench.bench.data.probe import input_throughput

    pl = plan.pipeline
    rows = []
    with tempfile.TemporaryDirectory(prefix="rankbench-pipeline-") as tmp:
        folder = fake_imagefolder(Path(tmp) / "imagefolder", pl.images, pl.classes, pl.size)
        roots = {"imagefolder": folder}
        if "tar" in pl.layouts:
            imagefolder_to_shards(folder, Path(tmp) / "shards", pl.shard_size)
            roots["tar"] = Path(tmp) / "shards"
        for layout in pl.layouts:
            for decode in pl.decodes:
                cfg = {"name": "imagenet", "root": str(roots[layout]), "layout": layout, "decode": decode,
                       "workers": pl.workers, "image_size": pl.image_size, "resize": pl.resize}
                got = input_throughput(cfg, plan.device, pl.batch, pl.batches)
                rows.append({"layout": layout, "decode": decode, **{k: v for k, v in got.items()
                                                                  if k not in ("layout", "decode")}})
    return rows


# part -> runner(plan, deadline): the step and projection parts check the deadline (the suite's
# budget, perf_counter seconds) before each model and skip what starts too late
PART_RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "step": part_step, "projection": part_projection, "latency": part_latency, "packed": part_packed,
    "pipeline": part_pipeline, "step-compiled": lambda plan, deadline=None: part_step(plan, deadline, compiled=True),
}


def environment(device: torch.device) -> dict[str, Any]:
    env = core.environment()
    env["cpu"] = platform.processor() or platform.machine()
    env["cpu_count"] = os.cpu_count()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"], env["gpu_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
    return env


def run_suite(suite: str, device: torch.device, parts: Optional[Sequence[str]] = None,
              log: Callable[[str], None] = print, save: Optional[Callable[[dict[str, Any]], None]] = None,
              **overrides: Any) -> dict[str, Any]:
    """Run the suite's parts in order; returns (and passes to ``save`` after each part) the
    result: plan, environment, and per part its rows, seconds, and any skip or error."""
    plan = make_plan(suite, device, **overrides)
    chosen = [p for p in SUITE_PARTS if parts is None or p in parts]
    for line in describe(plan, chosen):
        log(line)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"suite": suite, "device": str(device), "environment": environment(device),
                              "plan": asdict(plan), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "parts": {}}
    for part in chosen:
        elapsed = time.perf_counter() - t_start
        entry: dict[str, Any] = {"rows": [], "seconds": 0.0, "skipped": None, "error": None}
        if elapsed + plan.estimate_s.get(part, 0) > plan.budget_s:
            entry["skipped"] = (f"time budget: {elapsed:.0f} s spent, ~{plan.estimate_s[part]:.0f} s more "
                                f"would pass {plan.budget_s:.0f} s")
            log(f"[suite] {part}: skipped ({entry['skipped']})")
        else:
            log(f"[suite] {part} ...")
            t0 = time.perf_counter()
            try:
                entry["rows"] = PART_RUNNERS[part](plan, t_start + plan.budget_s)
            except Exception as e:  # one broken part must not cost the others' numbers
                entry["error"] = f"{type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc(limit=8)
                log(f"[suite] {part}: failed: {entry['error']}")
            entry["seconds"] = time.perf_counter() - t0
            log(f"[suite] {part}: {len(entry['rows'])} rows in {entry['seconds']:.1f} s")
        result["parts"][part] = entry
        result["wall_s"] = time.perf_counter() - t_start
        if save:
            save(result)
    return result


def main_suite(suite: str, out: Path, device: torch.device, parts: Optional[Sequence[str]] = None,
               **overrides: Any) -> int:
    """Run ``suite`` into the folder ``out`` (created if missing; its parent must exist): the
    JSON after every part, the summary at the end. Exit status 0, or 1 if a part failed."""
    out.mkdir(exist_ok=True)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    def save(result: dict[str, Any]) -> None:  # both files after every part: a run cut short keeps both
        core.write_json(out / "results.json", result)
        (out / "summary.md").write_text(summary_markdown(result))

    result = run_suite(suite, device, parts, save=save, **overrides)
    text = summary_markdown(result)
    print(text)
    print(f"JSON: {out / 'results.json'}\nsummary: {out / 'summary.md'}")
    return 1 if any(e["error"] for e in result["parts"].values()) else 0
