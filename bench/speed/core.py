"""``rankbench speed``: the numbers that decide what an ImageNet comparison costs.

Four benchmarks, each reported as a ratio measured in one process on one machine (timings are
noisy and machines differ, so absolute numbers from different runs do not compare):

1. step       images/s of the harness's own training step (``rankbench.bench.train.loop.train_step``): plain
              vs TRP (projection every step, +Nu) for each scheme and projection solver.
2. projection one ``lowrank.project`` over all TRP layers, per solver, with the ranks and the
              relative error against an exact float64 SVD (the accuracy a fast solver must keep).
3. latency    measured inference speed-up of the decomposed model beside its MAC speed-up, each
              model on its fastest layout (``rankbench.bench.measure.inference``: memory format, BN folding, jit).
4. packed     aggregate throughput of N concurrent training processes sharing one GPU vs one
              alone, after checking that N copies fit in the GPU's memory (CUDA only).

On CPU everything runs with small sizes so the command (and its test) finishes quickly; on
CUDA it uses bf16 autocast and channels_last, as a real run would.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from rankbench.bench.checks import bad, check
from rankbench.bench.measure.metrics import compare_latency, count_macs
from rankbench.bench.preflight.memory import peak_step_memory, share_fits
from rankbench.bench.models.builtin import build_model
from rankbench.bench.speed import ranks
from rankbench.bench.train.loop import compiled, make_optimizer, train_step
from rankbench.methods import lowrank
from rankbench.methods.api.base import Context
from rankbench.methods.api.registry import build as build_method

# the networks the speed benchmarks time: name -> (input shape, classes, batch on CUDA, batch on CPU)
SPEED_MODELS: dict[str, tuple[tuple[int, int, int], int, int, int]] = {
    "resnet20": ((3, 32, 32), 10, 128, 32),
    "resnet56": ((3, 32, 32), 10, 128, 16),
    "resnet18": ((3, 224, 224), 1000, 256, 4),
    "resnet50": ((3, 224, 224), 1000, 256, 2),
}


@dataclass(frozen=True)
class Setup:
    device: torch.device
    amp: bool              # bf16 autocast (CUDA only)
    channels_last: bool
    steps: int
    warmup: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_in_turns(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int
           ) -> dict[str, list[float]]:
    """Seconds of each run of each of ``fns``, ``repeats`` runs after ``warmup`` runs. The
    functions are timed in turns (a, b, c, a, b, c, ...), so a machine that slows down
    mid-benchmark slows every variant alike and the ratios between them stay honest."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def _model(name: str, setup: Setup) -> nn.Module:
    shape, classes, _, _ = SPEED_MODELS[name]
    model = build_model(name, classes, shape).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _batch(name: str, batch: int, setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    shape, classes, _, _ = SPEED_MODELS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=g).to(setup.device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), generator=g).to(setup.device)
    return x, y


def bench_step(name: str, batch: int, setup: Setup, variants: Sequence[tuple[str, dict[str, Any], bool | str]],
               start: Optional[dict[str, ranks.PaperRanks]] = None, step_size: float = ranks.STEP_SIZE
               ) -> list[dict[str, Any]]:
    """Images/s of the training step for each (label, trp params or {} for plain, train.compile);
    a compiled variant compiles during the warm-up steps, which are not timed.

    ``start`` (scheme -> :class:`ranks.PaperRanks`): before every step, each variant's TRP layers
    get the next of a few slightly perturbed copies of that scheme's paper-rank weights (plain
    variants: the channel scheme's), so TRP projects at paper-level ranks on every timed step
    (the projection would otherwise cut the ranks further at each step of synthetic training)
    and the warm solver sees consecutive steps' weights (``step_size``: each copy's distance
    from the paper-rank weights, relative to their norm; :func:`ranks.perturbed`). Every variant
    pays the same copy."""
    x, y = _batch(name, batch, setup)
    shape, classes, _, _ = SPEED_MODELS[name]
    steps: dict[str, Callable[[], None]] = {}
    methods: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for label, params, compile in variants:
        torch.manual_seed(0)
        model = _model(name, setup)
        opt = make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
        method = None
        if params:
            method = build_method("trp", params)
            method.ctx = Context(input_shape=shape, num_classes=classes, steps_per_epoch=1, epochs=1,
                                 device=setup.device)
            method.attach(model, method.ctx)
        forward = compiled(model, compile) if compile else None
        scheme = params.get("scheme", "channel") if params else "channel"
        paper = (start or {}).get(scheme) or (None if params else next(iter((start or {}).values()), None))
        refresh = _refresher(model, paper, setup.device, step_size) if paper else None
        kinds[label] = paper.describe() if paper else "init"
        steps[label] = _stepper(model, x, y, opt, method, setup.amp, forward, refresh)
        methods[label] = method
    runs = timed_in_turns(steps, setup.device, setup.steps, setup.warmup)
    secs = {k: median(v) for k, v in runs.items()}
    compiled_ = {label for label, _, how in variants if how}

    def plain(label: str) -> float:  # a compiled TRP step is compared with the compiled plain step
        base = secs.get("plain-compiled") if label in compiled_ else None
        return base or secs.get("plain") or math.nan
    # ms: the median step; ms_min: the fastest (on a shared machine the least disturbed)
    return [{"model": name, "batch": batch, "variant": label, "weights": kinds[label], "ms": sec * 1e3,
             "ms_min": min(runs[label]) * 1e3, "images_per_s": batch / sec, "slowdown_vs_plain": sec / plain(label),
             "warm_share": _warm_share(methods[label]), "step_size": step_size if kinds[label] != "init" else None}
            for label, sec in secs.items()]


def _refresher(model: nn.Module, paper: ranks.PaperRanks, device: torch.device, step_size: float = ranks.STEP_SIZE,
               copies: int = 3) -> Callable[[], None]:
    """A function that copies the next perturbed set of ``paper``'s weights into ``model``."""
    sets = ranks.perturbed(paper.weights, copies, step_size)
    sets = [[w.to(device) for w in ws] for ws in sets]
    params = [model.get_submodule(n).weight for n in paper.names]
    turn = [0]

    def refresh() -> None:
        with torch.no_grad():
            for p, w in zip(params, sets[turn[0] % copies]):
                p.copy_(w)
        turn[0] += 1
    return refresh


def _warm_share(method: Any) -> Optional[float]:
    """Share of a TRP variant's shape-group projections (warm-up steps included) that took the
    warm path (solvers ``warm`` and ``auto``); None for other variants."""
    counts = method.report().info.get("warm_start") if method is not None else None
    return counts["warm"] / max(1, counts["warm"] + counts["cold"]) if counts else None


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
             method: Any, amp: bool, forward: nn.Module | None = None,
             refresh: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """One training step per call, counting steps (TRP projects when step % period == 0)."""
    step = [0]

    def one() -> None:
        if refresh is not None:
            refresh()
        train_step(model, x, y, opt, method, step[0], amp=amp, forward=forward)
        step[0] += 1
    return one


def solvers(device: torch.device) -> list[str]:
    """Projection solvers worth timing on ``device``: every portable one, plus cuSOLVER's drivers on CUDA."""
    return list(lowrank.SOLVERS) + ([f"svd-{d}" for d in lowrank.CUDA_SVD_DRIVERS] if device.type == "cuda" else [])


def bench_projection(name: str, setup: Setup, scheme: str = "channel", energy: float = 0.9,
                     repeats: int = 5, kinds: Sequence[str] = ("init", "trp-steady", "paper-ranks"),
                     step_size: float = ranks.STEP_SIZE) -> list[dict[str, Any]]:
    """One projection of all TRP layers per solver: time, ranks vs exact, relative error, on
    each kind of weights in ``kinds``: He-initialised (``init``), TRP-steady
    (:func:`ranks.trp_steady_weights`: about 10 ranks per layer) and at the ranks of the paper's
    exports where :data:`ranks.PAPER_SPEEDUPS` has them (``paper-ranks``, constructed spectra).
    ``warm`` and ``auto`` keep their state across the timed calls, as in training; ``warm_share``
    says how many of their shape-group projections took the warm path (the rest ran the full
    solve).
    ``init`` and ``trp-steady`` project the same weights at every call; ``paper-ranks``
    projects a slightly different copy at each call (consecutive training steps; each copy
    ``step_size`` of the weights' norm from them, :func:`ranks.perturbed`), since repeating one
    input would flatter the warm start."""
    torch.manual_seed(0)
    model = _model(name, setup)
    names = [n for n, why in lowrank.layer_choice(model, scheme) if why is None]
    rule = lowrank.Rule("energy", energy)
    init = [model.get_submodule(n).weight.detach() for n in names]
    cases: list[tuple[dict[str, Any], list[list[torch.Tensor]]]] = []
    if "init" in kinds:
        cases.append(({"weights": "init"}, [init]))
    if "trp-steady" in kinds:
        cases.append(({"weights": "trp-steady"}, [ranks.trp_steady_weights(init, scheme, rule)]))
    if "paper-ranks" in kinds:
        example = torch.zeros(1, *SPEED_MODELS[name][0], device=setup.device)
        for target in ranks.PAPER_SPEEDUPS.get((name, scheme), ()):
            paper = ranks.paper_rank_weights(model, name, scheme, target, example)
            facts = {"weights": paper.describe(), "target_speedup": target, "speedup_at_ranks": paper.speedup,
                     "step_size": step_size}
            cases.append((facts, ranks.perturbed(paper.weights, repeats + 2, step_size)))
    rows = []
    for facts, sets in cases:
        rows += _time_solvers(name, scheme, rule, sets, setup, repeats, facts)
    return rows


def _time_solvers(name: str, scheme: str, rule: lowrank.Rule, sets: list[list[torch.Tensor]], setup: Setup,
                  repeats: int, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every solver projects ``sets`` in turn (call k: ``sets[k % len(sets)]``), timed round-robin,
    then once more, checked against an exact float64 SVD of the weights it projected last."""
    names_ = solvers(setup.device)
    states = {sv: lowrank.WarmStart() for sv in names_}
    turn = {sv: 0 for sv in names_}

    def call(sv: str) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
        weights = sets[turn[sv] % len(sets)]
        turn[sv] += 1
        return lowrank.project(weights, scheme, rule, solver=sv, state=states[sv])

    for sv in names_:  # prime warm's state, as the previous training step would have
        call(sv)
        states[sv].warm = states[sv].cold = 0
    runs = timed_in_turns({sv: (lambda sv=sv: call(sv)) for sv in names_}, setup.device, repeats, 1)
    secs = {k: median(v) for k, v in runs.items()}
    rows = []
    refs: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], list[int]]] = {}
    for solver in names_:
        st = states[solver]
        share = st.warm / max(1, st.warm + st.cold) if solver in ("warm", "auto") else None
        last = sets[turn[solver] % len(sets)]
        proj, sub = call(solver)
        if id(last) not in refs:  # the trusted reference: an exact float64 SVD on the CPU
            ref_p, ref_g = lowrank.project([w.double().cpu() for w in last], scheme, rule, solver="svd")
            refs[id(last)] = ref_p, ref_g, ranks.ranks_of(ref_g, scheme)
        ref_p, ref_g, ref_ranks = refs[id(last)]
        perr = max(float((p.double().cpu() - r).norm() / r.norm()) for p, r in zip(proj, ref_p))
        gerr = max(float((g.double().cpu() - r).norm() / r.norm()) for g, r in zip(sub, ref_g))
        got = ranks.ranks_of(sub, scheme)
        rows.append({"model": name, "scheme": scheme, **facts, "solver": solver, "layers": len(last),
                     "ms": secs[solver] * 1e3, "ms_min": min(runs[solver]) * 1e3,
                     "ranks_equal_exact": got == ref_ranks, "rank_sum": sum(got), "exact_rank_sum": sum(ref_ranks),
                     "max_rel_err_weight": perr, "max_rel_err_subgrad": gerr, "warm_share": share})
    return rows


def bench_latency(name: str, setup: Setup, speedup: float = 2.0, scheme: str = "channel",
                  batches: Sequence[int] = (1,), repeats: int = 20, layout: str | Sequence[str] = "auto"
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measured latency speed-up of a model decomposed to ``speedup`` by MACs. Where the TRP layers
    cannot reach it (ResNet-50's channel scheme tops out at 1.8x with rank 1 everywhere), three
    quarters of the reachable gain is used instead; the row's ``macs_speedup`` says what it was.

    Dense and decomposed are timed in one round-robin run (``compare_latency``), each on its
    fastest ``layout``; ``eager_speedup`` is the same pair both in plain eager PyTorch as rankbench
    timed them before layouts were chosen (contiguous on CPU, channels_last on CUDA), from the
    same run. Returns the rows and every layout's time (the second list)."""
    shape = SPEED_MODELS[name][0]
    torch.manual_seed(0)
    dense = build_model(name, SPEED_MODELS[name][1], shape).eval()
    example = torch.zeros(1, *shape)
    speedup = min(speedup, 1 + 0.75 * (lowrank.max_speedup(dense, scheme, example) - 1))
    small, _ = lowrank.decompose_model(dense, scheme, f"speedup:{speedup}", example_input=example)
    macs_dense, macs_small = count_macs(dense, shape), count_macs(small, shape)
    dtype = "bfloat16" if setup.amp else "float32"
    eager = "channels_last" if setup.device.type == "cuda" else "contiguous"
    rows, layouts = [], []
    for b in batches:
        r = compare_latency({"dense": dense, "decomposed": small}, shape, device=setup.device, dtype=dtype,
                            batch=b, repeats=repeats, layout=layout)
        d, s = r["dense"], r["decomposed"]
        de, se = d["candidates"].get(eager), s["candidates"].get(eager)
        rows.append({"model": name, "scheme": scheme, "device": d["device"], "dtype": dtype, "batch": b,
                     "dense_ms": d["ms"], "ms": s["ms"], "latency_speedup": d["ms"] / s["ms"],
                     "macs_speedup": macs_dense / macs_small, "dense_layout": d["layout"], "layout": s["layout"],
                     "eager_speedup": de / se if de and se else None})
        for which, res in r.items():
            for lay, ms in res["candidates"].items():
                layouts.append({"model": name, "batch": b, "dtype": dtype, "which": which, "layout": lay,
                                "ms": ms, "chosen": lay == res["layout"]})
            for lay, why in res["skipped"].items():
                layouts.append({"model": name, "batch": b, "dtype": dtype, "which": which, "layout": lay,
                                "ms": None, "chosen": False, "skipped": why})
    return rows, layouts


def _packed_worker(name: str, batch: int, steps: int, device: str, queue: Any) -> None:
    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(1)        # n processes share the cores, as packed trials with cpus: 1 do
    setup = Setup(torch.device(device), amp=cuda, channels_last=cuda, steps=steps, warmup=min(3, steps))
    row = bench_step(name, batch, setup, [("plain", {}, False)])[0]
    queue.put(row["images_per_s"])


def bench_packed(name: str, batch: int, n: int, steps: int, setup: Setup) -> dict[str, Any]:
    """Aggregate images/s of ``n`` processes training at once on one device vs one alone (on
    CUDA after checking, as the sweep does, that ``n`` copies fit in the GPU's free memory)."""
    shape, classes, _, _ = SPEED_MODELS[name]
    peak = None
    if setup.device.type == "cuda":
        peak, _ = peak_step_memory(name, {}, {"name": "synthetic", "shape": list(shape), "num_classes": classes},
                                   batch, setup.amp, setup.channels_last)
        free, _ = torch.cuda.mem_get_info(setup.device)
        if not share_fits(peak, 1 / n, free):       # the sweep's own check (rankbench.bench.preflight.memory), on free memory
            return {"model": name, "n": n, "skipped": f"{n} x {peak / 2**30:.1f} GiB does not fit in "
                                                      f"{free / 2**30:.1f} GiB free"}
    ctx = mp.get_context("spawn")

    def run(k: int) -> list[float]:
        q = ctx.Queue()
        procs = [ctx.Process(target=_packed_worker, args=(name, batch, steps, str(setup.device), q))
                 for _ in range(k)]
        for p in procs:
            p.start()
        out = [q.get() for _ in procs]
        for p in procs:
            p.join()
        return out

    single = run(1)[0]
    together = run(n)
    return {"model": name, "n": n, "batch": batch, "device": str(setup.device),
            "peak_gib_per_trial": peak / 2**30 if peak is not None else None,
            "single_images_per_s": single, "aggregate_images_per_s": sum(together),
            "aggregate_vs_single": sum(together) / single}


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Atomic: the file is always a complete JSON document, even after a crash mid-run."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)


def environment() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}


def format_rows(title: str, rows: list[dict[str, Any]]) -> str:
    """``rows`` as an aligned text table under a ``## title`` line (the union of their keys as columns)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [f"## {title}", "  ".join(c.ljust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


PARTS: tuple[str, ...] = ("step", "projection", "latency", "packed")
TRP_STEP = {"period": 1, "nuclear": 3e-4}   # TRP+Nu as the paper trains it: project every step


def step_variants(solvers_: Sequence[str] = lowrank.SOLVERS, schemes: Sequence[str] = ("channel", "spatial"),
                  compile: bool | str = False, compiled_solvers: Sequence[str] = ("warm",),
                  eager: bool = True) -> list[tuple[str, dict[str, Any], bool | str]]:
    """(label, TRP params or {} for plain, compile) for :func:`bench_step`: plain, then TRP per
    scheme and solver; with ``compile``, compiled plain and TRP per scheme for ``compiled_solvers``."""
    out: list[tuple[str, dict[str, Any], bool | str]] = []
    if eager:
        out.append(("plain", {}, False))
        out += [(f"trp-{sc}-{so}", {**TRP_STEP, "scheme": sc, "solver": so}, False)
                for sc in schemes for so in solvers_]
    if compile:
        out.append(("plain-compiled", {}, compile))
        out += [(f"trp-{sc}-{so}-compiled", {**TRP_STEP, "scheme": sc, "solver": so}, compile)
                for sc in schemes for so in compiled_solvers]
    return out


def default_solver() -> str:
    """TRP's default projection solver (what a spec that names none runs)."""
    return str(build_method("trp", {}).solver)


def paper_start(name: str, setup: Setup, schemes: Sequence[str] = ("channel", "spatial")
                ) -> dict[str, ranks.PaperRanks]:
    """scheme -> paper-rank weights (the first of :data:`ranks.PAPER_SPEEDUPS`' targets) for
    :func:`bench_step`'s ``start``; schemes without a paper target are left out (they start
    from He-initialised weights, and their rows say so)."""
    torch.manual_seed(0)
    model = _model(name, setup)
    example = torch.zeros(1, *SPEED_MODELS[name][0], device=setup.device)
    return {sc: ranks.paper_rank_weights(model, name, sc, ranks.PAPER_SPEEDUPS[(name, sc)][0], example)
            for sc in schemes if (name, sc) in ranks.PAPER_SPEEDUPS}


@dataclass(frozen=True)
class SpeedOptions:
    """What :func:`run_speed` measures and how; each default is the command's without that option."""
    device: str = "auto"                      # auto (CUDA when present), cpu, cuda or cuda:N
    steps: int | None = None                  # timed steps per variant (None: 50 CUDA, 3 CPU) and solver (5)
    batch: int | None = None                  # training batch (None: the paper's on CUDA, small on CPU)
    warmup: int | None = None                 # untimed steps per variant first (None: 10 CUDA, 1 CPU)
    packed: int = 4                           # trials packed on one GPU (CUDA only; 0 or 1: skip)
    parts: Sequence[str] = PARTS              # the benchmarks to run
    compile: bool | str = False               # a ``train.compile`` value: adds compiled plain and TRP steps
    layout: str | Sequence[str] = "auto"      # the latency menu (``measure.inference``; "auto": the device's)
    weights: str = "paper"                    # TRP starts from: paper (:func:`paper_start`) or init (He)
    step_size: float = ranks.STEP_SIZE        # each timed copy's random step off the paper ranks (ranks.perturbed)


def run_speed(models: Sequence[str], options: SpeedOptions = SpeedOptions(), log: Callable[[str], None] = print,
              save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the benchmarks in ``options.parts`` for each model; rows per benchmark, plus the environment.
    ``save`` gets the results so far after each model, so a crash or Ctrl-C keeps what was measured."""
    dev = torch.device("cuda" if options.device == "auto" and torch.cuda.is_available() else
                       "cpu" if options.device == "auto" else options.device)
    cuda = dev.type == "cuda"
    for part in options.parts:
        if part not in PARTS:
            raise bad("--only", part, ", ".join(PARTS))
    for name in models:
        if name not in SPEED_MODELS:
            raise bad("--model", name, ", ".join(SPEED_MODELS))
    check("--weights", options.weights, options.weights in ("paper", "init"), "paper, init")
    setup = Setup(dev, amp=cuda, channels_last=cuda, steps=options.steps or (50 if cuda else 3),
                  warmup=(10 if cuda else 1) if options.warmup is None else options.warmup)
    out: dict[str, Any] = {"environment": environment(), "device": str(dev), "step": [], "projection": [],
                           "latency": [], "latency_layouts": [], "packed": []}
    for name in models:
        b = options.batch or (SPEED_MODELS[name][2] if cuda else SPEED_MODELS[name][3])
        if "step" in options.parts:
            variants = step_variants(compile=options.compile, compiled_solvers=(default_solver(),))
            log(f"[speed] {name}: training step, batch {b}, {len(variants)} variants")
            start = paper_start(name, setup) if options.weights == "paper" else None
            out["step"] += bench_step(name, b, setup, variants, start, options.step_size)
        if "projection" in options.parts:
            log(f"[speed] {name}: projection solvers")
            for scheme in ("channel", "spatial"):
                out["projection"] += bench_projection(name, setup, scheme, repeats=options.steps or 5,
                                                      step_size=options.step_size)
        if "latency" in options.parts:
            log(f"[speed] {name}: latency")
            runs = [(setup, (1, 256) if cuda else (1,))]
            if cuda:   # deployment on a CPU too: float32, batch 1
                runs.append((Setup(torch.device("cpu"), amp=False, channels_last=False, steps=setup.steps,
                                   warmup=1), (1,)))
            for where, batches in runs:
                rows, layouts = bench_latency(name, where, batches=batches, layout=options.layout)
                out["latency"] += rows
                out["latency_layouts"] += layouts
        if "packed" in options.parts and cuda and options.packed > 1:
            log(f"[speed] {name}: {options.packed} packed trials vs one")
            out["packed"].append(bench_packed(name, b, options.packed, setup.steps, setup))
        if save:
            save(out)
    if "packed" in options.parts and not cuda:
        out["packed"].append({"skipped": "packing several trials on one GPU needs CUDA"})
    return out


def format_report(result: dict[str, Any]) -> str:
    env = result["environment"]
    head = (f"# rankbench speed on {result['device']} ({env['gpu'] or env['machine']}, torch {env['torch']}, "
            f"{env['cpu_threads']} CPU threads)\n")
    return head + "\n".join(s for s in (
        format_rows("training step (images/s; slowdown = TRP step / plain step)", result["step"]),
        format_rows("projection of all TRP layers (energy 0.9) vs exact float64 SVD", result["projection"]),
        format_rows("inference latency, decomposed at 2x MACs (or 3/4 of the most reachable), each model on its "
                    "fastest layout; eager_speedup: both in plain eager", result["latency"]),
        format_rows("latency of every layout tried (ms: median)",
                    [{k: v for k, v in r.items() if k != "skipped"} for r in result.get("latency_layouts", [])]),
        format_rows("packed trials on one GPU", result["packed"])) if s)
