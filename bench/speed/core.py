"""``rankbench speed``: the numbers that decide what an ImageNet comparison costs.

Four benchmarks, each reported as a ratio measured in one process on one machine (these
machines are noisy; absolute numbers from different runs do not compare):

1. step       images/s of the harness's own training step (``bench.train.train_step``): plain
              vs TRP (projection every step, +Nu) for each scheme and projection solver.
2. projection one ``lowrank.project`` over all TRP layers, per solver, with the ranks and the
              relative error against an exact float64 SVD (the accuracy a fast solver must keep).
3. latency    measured inference speed-up of the decomposed model beside its MAC speed-up, each
              model on its fastest layout (``bench.inference``: memory format, BN folding, jit).
4. packed     aggregate throughput of N concurrent training processes sharing one GPU vs one
              alone, after checking that N copies fit in the GPU's memory (CUDA only).

On CPU everything runs with small sizes so the command (and its test) finishes quickly; on
CUDA it uses bf16 autocast and channels_last, as a real run would.
"""
from __future__ import annotations

import argparse
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

from bench.inference import layout_menu
from bench.measure import compare_latency, count_macs
from bench.packing import peak_step_memory, share_fits
from bench.models import build_model
from bench.spec import check_compile
from bench.train import compiled, make_optimizer, train_step
from methods import lowrank
from methods.base import Context
from methods.registry import build as build_method

# (model, input shape, classes, batch on CUDA, batch on CPU)
MODELS: dict[str, tuple[tuple[int, int, int], int, int, int]] = {
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


def _timed(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``repeats`` runs after ``warmup`` runs. The functions
    are timed in turns (a, b, c, a, b, c, ...), so a machine that slows down mid-benchmark slows
    every variant alike and the ratios between them stay honest."""
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
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _model(name: str, setup: Setup) -> nn.Module:
    shape, classes, _, _ = MODELS[name]
    model = build_model(name, classes, shape).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _batch(name: str, batch: int, setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    shape, classes, _, _ = MODELS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=g).to(setup.device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), generator=g).to(setup.device)
    return x, y


def bench_step(name: str, batch: int, setup: Setup, variants: Sequence[tuple[str, dict[str, Any], bool | str]]
               ) -> list[dict[str, Any]]:
    """Images/s of the training step for each (label, trp params or {} for plain, train.compile);
    a compiled variant compiles during the warm-up steps, which are not timed."""
    x, y = _batch(name, batch, setup)
    shape, classes, _, _ = MODELS[name]
    steps: dict[str, Callable[[], None]] = {}
    methods: dict[str, Any] = {}
    for label, params, compile in variants:
        torch.manual_seed(0)
        model = _model(name, setup)
        opt = make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
        method = None
        if params:
            method = build_method("trp", params)
            method.attach(model, Context(input_shape=shape, num_classes=classes, steps_per_epoch=1,
                                         epochs=1, device=setup.device))
        forward = compiled(model, compile) if compile else None
        steps[label], methods[label] = _stepper(model, x, y, opt, method, setup.amp, forward), method
    secs = _timed(steps, setup.device, setup.steps, setup.warmup)
    plain = secs.get("plain")
    return [{"model": name, "batch": batch, "variant": label, "ms": sec * 1e3, "images_per_s": batch / sec,
             "slowdown_vs_plain": sec / plain if plain else math.nan, "warm_share": _warm_share(methods[label])}
            for label, sec in secs.items()]


def _warm_share(method: Any) -> Optional[float]:
    """Share of a ``warm`` TRP's shape-group projections (warm-up steps included) that took the
    warm path; None for other variants."""
    counts = method.report().get("warm_start") if method is not None else None
    return counts["warm"] / max(1, counts["warm"] + counts["cold"]) if counts else None


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
             method: Any, amp: bool, forward: nn.Module | None = None) -> Callable[[], None]:
    """One training step per call, counting steps (TRP projects when step % period == 0)."""
    step = [0]

    def one() -> None:
        train_step(model, x, y, opt, method, step[0], amp=amp, forward=forward)
        step[0] += 1
    return one


def solvers(device: torch.device) -> list[str]:
    """Projection solvers worth timing on ``device``: every portable one, plus cuSOLVER's drivers on CUDA."""
    return list(lowrank.SOLVERS) + ([f"svd-{d}" for d in lowrank.CUDA_SVD_DRIVERS] if device.type == "cuda" else [])


def trp_steady_weights(weights: Sequence[torch.Tensor], scheme: str, rule: lowrank.Rule, steps: int = 30,
                       noise: float = 1e-3) -> list[torch.Tensor]:
    """Weights as period-1 TRP leaves them: projected at every step with a small random update
    between (``noise`` times the weight's RMS per element), so the spectrum has the few large
    values over a small tail that TRP training produces. The cost of the ``warm`` solver depends
    on it; He-initialised weights (full spectrum, no gap) are its worst case."""
    g = torch.Generator(device=weights[0].device).manual_seed(0)
    out = [w.clone() for w in weights]
    for _ in range(steps):
        out, _ = lowrank.project(out, scheme, rule, with_subgradient=False, solver="gram")
        out = [w + noise * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype)
               for w in out]
    return out


def bench_projection(name: str, setup: Setup, scheme: str = "channel", energy: float = 0.9,
                     repeats: int = 5) -> list[dict[str, Any]]:
    """One projection of all TRP layers per solver, on He-initialised weights and on TRP-steady
    ones (:func:`trp_steady_weights`): time, ranks vs exact, relative error. ``warm`` keeps its
    state across the timed calls, as in training; ``warm_share`` says how many of its shape-group
    projections took the warm path (the rest fell back to the full eigensolve)."""
    torch.manual_seed(0)
    model = _model(name, setup)
    names = [n for n, why in lowrank.layer_choice(model, scheme) if why is None]
    rule = lowrank.Rule("energy", energy)
    init = [model.get_submodule(n).weight.detach() for n in names]
    rows = []
    for kind, weights in (("init", init), ("trp-steady", trp_steady_weights(init, scheme, rule))):
        # the trusted reference: an exact float64 SVD on the CPU
        ref_p, ref_g = lowrank.project([w.double().cpu() for w in weights], scheme, rule, solver="svd")
        ref_ranks = [_rank(g, scheme) for g in ref_g]
        names_ = solvers(setup.device)
        states = {sv: lowrank.WarmStart() for sv in names_}
        for sv in names_:  # prime warm's state, as the previous training step would have
            lowrank.project(weights, scheme, rule, solver=sv, state=states[sv])
            states[sv].warm = states[sv].cold = 0
        secs = _timed({sv: (lambda sv=sv: lowrank.project(weights, scheme, rule, solver=sv, state=states[sv]))
                       for sv in names_}, setup.device, repeats, 1)
        for solver in names_:
            st = states[solver]
            share = st.warm / (st.warm + st.cold) if solver == "warm" else None
            proj, sub = lowrank.project(weights, scheme, rule, solver=solver, state=st)
            perr = max(float((p.double().cpu() - r).norm() / r.norm()) for p, r in zip(proj, ref_p))
            gerr = max(float((g.double().cpu() - r).norm() / r.norm()) for g, r in zip(sub, ref_g))
            ranks = [_rank(g, scheme) for g in sub]
            rows.append({"model": name, "scheme": scheme, "weights": kind, "solver": solver, "layers": len(weights),
                         "ms": secs[solver] * 1e3, "ranks_equal_exact": ranks == ref_ranks, "rank_sum": sum(ranks),
                         "exact_rank_sum": sum(ref_ranks), "max_rel_err_weight": perr, "max_rel_err_subgrad": gerr,
                         "warm_share": share})
    return rows


def _rank(subgrad: torch.Tensor, scheme: str) -> int:
    """Rank a projection kept, read from its sub-gradient U_r V_r^T: exactly r singular values are 1."""
    return int((torch.linalg.svdvals(lowrank.to_matrix(subgrad.double().cpu(), scheme)) > 0.5).sum())


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
    shape = MODELS[name][0]
    torch.manual_seed(0)
    dense = build_model(name, MODELS[name][1], shape).eval()
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


def _packed_worker(name: str, batch: int, steps: int, queue: Any) -> None:
    setup = Setup(torch.device("cuda"), amp=True, channels_last=True, steps=steps, warmup=3)
    row = bench_step(name, batch, setup, [("plain", {})])[0]
    queue.put(row["images_per_s"])


def bench_packed(name: str, batch: int, n: int, steps: int, setup: Setup) -> dict[str, Any]:
    """Aggregate images/s of ``n`` processes training at once on one GPU vs one alone."""
    shape, classes, _, _ = MODELS[name]
    peak, _ = peak_step_memory(name, {}, {"name": "synthetic", "shape": list(shape), "num_classes": classes},
                               batch, setup.amp, setup.channels_last)
    free, _ = torch.cuda.mem_get_info(setup.device)
    if not share_fits(peak, 1 / n, free):       # the sweep's own check (bench.packing), on free memory
        return {"model": name, "n": n, "skipped": f"{n} x {peak / 2**30:.1f} GiB does not fit in "
                                                  f"{free / 2**30:.1f} GiB free"}
    ctx = mp.get_context("spawn")

    def run(k: int) -> list[float]:
        q = ctx.Queue()
        procs = [ctx.Process(target=_packed_worker, args=(name, batch, steps, q)) for _ in range(k)]
        for p in procs:
            p.start()
        out = [q.get() for _ in procs]
        for p in procs:
            p.join()
        return out

    single = run(1)[0]
    together = run(n)
    return {"model": name, "n": n, "batch": batch, "peak_gib_per_trial": peak / 2**30,
            "single_images_per_s": single, "aggregate_images_per_s": sum(together),
            "aggregate_vs_single": sum(together) / single}


def environment() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}


def _fmt_rows(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
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


def run_speed(models: Sequence[str], device: str = "auto", steps: int | None = None, batch: int | None = None,
              warmup: int | None = None,
              packed: int = 4, parts: Sequence[str] = PARTS, log: Callable[[str], None] = print,
              save: Callable[[dict[str, Any]], None] | None = None, compile: bool | str = False,
              layout: str | Sequence[str] = "auto") -> dict[str, Any]:
    """Run the benchmarks in ``parts`` for each model; rows per benchmark, plus the environment.
    ``compile`` (a ``train.compile`` value) adds compiled plain and TRP (channel, warm) steps.
    ``layout`` is the latency menu (``bench.inference``; "auto": the device's default menu).
    ``save`` gets the results so far after each model, so a crash or Ctrl-C keeps what was measured."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    cuda = dev.type == "cuda"
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"--only: {part!r}; accepted: {', '.join(PARTS)}")
    for name in models:
        if name not in MODELS:
            raise ValueError(f"--model: {name!r}; accepted: {', '.join(MODELS)}")
    setup = Setup(dev, amp=cuda, channels_last=cuda, steps=steps or (50 if cuda else 3),
                  warmup=(10 if cuda else 1) if warmup is None else warmup)
    out: dict[str, Any] = {"environment": environment(), "device": str(dev), "step": [], "projection": [],
                           "latency": [], "latency_layouts": [], "packed": []}
    for name in models:
        b = batch or (MODELS[name][2] if cuda else MODELS[name][3])
        if "step" in parts:
            trp = {"period": 1, "nuclear": 3e-4}
            variants: list[tuple[str, dict[str, Any], bool | str]] = [("plain", {}, False)]
            for scheme in ("channel", "spatial"):
                for solver in lowrank.SOLVERS:
                    variants.append((f"trp-{scheme}-{solver}", {**trp, "scheme": scheme, "solver": solver}, False))
            if compile:
                variants += [("plain-compiled", {}, compile),
                             ("trp-channel-warm-compiled", {**trp, "scheme": "channel", "solver": "warm"}, compile)]
            log(f"[speed] {name}: training step, batch {b}, {len(variants)} variants")
            out["step"] += bench_step(name, b, setup, variants)
        if "projection" in parts:
            log(f"[speed] {name}: projection solvers")
            for scheme in ("channel", "spatial"):
                out["projection"] += bench_projection(name, setup, scheme)
        if "latency" in parts:
            log(f"[speed] {name}: latency")
            runs = [(setup, (1, 256) if cuda else (1,))]
            if cuda:   # deployment on a CPU too: float32, batch 1
                runs.append((Setup(torch.device("cpu"), amp=False, channels_last=False, steps=setup.steps,
                                   warmup=1), (1,)))
            for where, batches in runs:
                rows, layouts = bench_latency(name, where, batches=batches, layout=layout)
                out["latency"] += rows
                out["latency_layouts"] += layouts
        if "packed" in parts and cuda and packed > 1:
            log(f"[speed] {name}: {packed} packed trials vs one")
            out["packed"].append(bench_packed(name, b, packed, setup.steps, setup))
        if save:
            save(out)
    if "packed" in parts and not cuda:
        out["packed"].append({"skipped": "packing several trials on one GPU needs CUDA"})
    return out


def format_report(result: dict[str, Any]) -> str:
    env = result["environment"]
    head = (f"# rankbench speed on {result['device']} ({env['gpu'] or env['machine']}, torch {env['torch']}, "
            f"{env['cpu_threads']} CPU threads)\n")
    return head + "\n".join(s for s in (
        _fmt_rows("training step (images/s; slowdown = TRP step / plain step)", result["step"]),
        _fmt_rows("projection of all TRP layers (energy 0.9) vs exact float64 SVD", result["projection"]),
        _fmt_rows("inference latency, decomposed at 2x MACs (or 3/4 of the most reachable), each model on its "
                  "fastest layout; eager_speedup: both in plain eager", result["latency"]),
        _fmt_rows("latency of every layout tried (ms: median)",
                  [{k: v for k, v in r.items() if k != "skipped"} for r in result.get("latency_layouts", [])]),
        _fmt_rows("packed trials on one GPU", result["packed"])) if s)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rankbench speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=None,
                   help=f"models to run (default: resnet20 resnet50 on CUDA, resnet20 on CPU); any of {', '.join(MODELS)}")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 50 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per variant first (default 10 CUDA, 1 CPU); TRP's ranks settle in a few "
                        "dozen steps, which is when the warm solver starts to hold (its rows say how often it did)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the paper's on CUDA, small on CPU)")
    p.add_argument("--packed", type=int, default=4, help="trials packed on one GPU (CUDA only; 0 or 1 = skip)")
    p.add_argument("--only", nargs="+", default=list(PARTS), metavar="PART",
                   help=f"benchmarks to run (default: all); any of {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="also time compiled steps: true, a torch.compile mode (reduce-overhead: CUDA graphs) or backend")
    p.add_argument("--layout", nargs="+", default=["auto"], metavar="LAYOUT",
                   help="latency: the layouts to time each model on (default auto: the device's menu); "
                        "contiguous alone is plain eager; any of contiguous|channels_last[+folded|+jit|+compiled]")
    args = p.parse_args(argv)
    # names checked here, before any benchmark runs
    layout = "auto" if args.layout == ["auto"] else layout_menu(args.layout, "cpu", "--layout")
    compile = False if args.compile is None else check_compile("--compile", args.compile)
    models = args.model or (["resnet20", "resnet50"] if (args.device != "cpu" and torch.cuda.is_available())
                            else ["resnet20"])

    def save(result: dict[str, Any]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_name(args.out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(args.out)   # atomic: the file is always a complete JSON document

    result = run_speed(models, args.device, args.steps, args.batch, args.warmup, args.packed, args.only, save=save,
                       compile=compile, layout=layout)
    save(result)
    print(format_report(result))
    if args.out:
        print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
