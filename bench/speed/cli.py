"""The ``rankbench speed`` command line: one benchmark run (``--only``, ``--model``) or a whole
suite (``--suite gpu``: every GPU measurement in one command; ``--suite cpu-smoke``: the same,
shrunk). Every argument is checked before anything is measured; a bad one is a
:class:`rankbench.bench.checks.UserError` (one line; the ``rankbench`` CLI prints it and exits 2)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import torch

from rankbench.bench.checks import UserError, bad, check, missing
from rankbench.bench.measure.inference import layout_menu
from rankbench.bench.train.config import check_compile
from rankbench.bench.speed import core, ranks, suite


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (an int that is not one, an unknown option) as one UserError line."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rankbench speed", description=(core.__doc__ or "").split("\n\n")[0])
    p.add_argument("--suite", default=None, metavar="SUITE",
                   help=f"run a whole suite into --out DIR (one JSON and a markdown summary): "
                        f"{', '.join(suite.SUITES)} (gpu: every GPU measurement, about 10 minutes; "
                        f"cpu-smoke: the same parts, shrunk to seconds on a CPU)")
    p.add_argument("--model", nargs="+", default=None,
                   help=f"models to run (default: resnet20 resnet50 on CUDA, resnet20 on CPU); "
                        f"any of {', '.join(core.SPEED_MODELS)}")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per variant (default 50 CUDA, 3 CPU); timed calls per projection solver "
                        "(default 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per variant first (default 10 CUDA, 1 CPU)")
    p.add_argument("--batch", type=int, default=None,
                   help="training batch (default: the paper's on CUDA, small on CPU)")
    p.add_argument("--packed", type=int, default=4, help="trials packed on one GPU (CUDA only; 0 or 1 = skip)")
    p.add_argument("--only", nargs="+", default=None, metavar="PART",
                   help=f"benchmarks to run (default: all); any of {', '.join(core.PARTS)}; with --suite, "
                        f"any of {', '.join(suite.SUITE_PARTS)}")
    p.add_argument("--weights", default="paper", metavar="W",
                   help="TRP's training step starts from: paper (weights at the ranks of the paper's exports, "
                        "constructed spectra; default) or init (He-initialised: the energy rule then cuts "
                        "the ranks at every step)")
    p.add_argument("--step-size", type=float, default=ranks.STEP_SIZE, metavar="REL",
                   help=f"each timed step's weights are the paper-rank weights plus their own random step of "
                        f"REL times their norm, so consecutive steps lie about 1.4 REL apart (default "
                        f"{ranks.STEP_SIZE:g}; SGD at lr 0.1 moves ResNet-20's layers 1-2e-2 per step)")
    p.add_argument("--out", type=Path, default=None,
                   help="a JSON file for the results (with --suite: a folder for results.json and summary.md); "
                        "its parent folder must exist")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="also time compiled steps: true, a torch.compile mode (reduce-overhead: CUDA graphs) "
                        "or backend")
    p.add_argument("--layout", nargs="+", default=["auto"], metavar="LAYOUT",
                   help="latency: the layouts to time each model on (default auto: the device's menu); "
                        "contiguous alone is plain eager; any of contiguous|channels_last[+folded|+jit|+compiled]")
    return p


def _count(field: str, value: Optional[int], least: int) -> None:
    if value is not None:
        check(field, value, value >= least, f"an integer >= {least}")


def check_args(args: argparse.Namespace) -> torch.device:
    """Refuse what cannot run, before anything is measured; returns the device to run on."""
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        raise bad("--device", args.device, "auto, cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise bad("--device", args.device, "auto or cpu", "no CUDA device is available")
    if args.device.startswith("cuda:"):
        idx = args.device.partition(":")[2]
        check("--device", args.device, idx.isdigit() and int(idx) < torch.cuda.device_count(),
              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}", "no such CUDA device")
    _count("--steps", args.steps, 1)
    _count("--batch", args.batch, 1)
    _count("--warmup", args.warmup, 0)
    _count("--packed", args.packed, 0)
    for m in args.model or ():
        if m not in core.SPEED_MODELS:
            raise bad("--model", m, ", ".join(core.SPEED_MODELS))
    check("--weights", args.weights, args.weights in ("paper", "init"), "paper, init")
    check("--step-size", args.step_size, 0 <= args.step_size < 1, "a number in [0, 1)")
    if args.suite is not None:
        if args.suite not in suite.SUITES:
            raise bad("--suite", args.suite, ", ".join(suite.SUITES))
        for part in args.only or ():
            if part not in suite.SUITE_PARTS:
                raise bad("--only", part, ", ".join(suite.SUITE_PARTS))
        if args.out is None:
            raise missing("--out", "a folder for the suite's results.json and summary.md")
        if args.out.exists() and not args.out.is_dir():
            raise bad("--out", str(args.out), "a folder (created if only it is missing)", "a file is there")
    else:
        for part in args.only or ():
            if part not in core.PARTS:
                raise bad("--only", part, ", ".join(core.PARTS))
        if args.out is not None and args.out.is_dir():
            raise bad("--out", str(args.out), "a JSON file path", "that is a folder")
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise bad("--out", str(args.out), "a path in an existing folder", "its parent folder does not exist")
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if args.suite == "gpu" and not cuda:
        raise bad("--suite", args.suite, "cpu-smoke on a machine without CUDA", "no CUDA device is available")
    return torch.device(("cuda" if cuda else "cpu") if args.device == "auto" else args.device)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = check_args(args)
    # names checked here, before any benchmark runs
    layout = "auto" if args.layout == ["auto"] else layout_menu(args.layout, "cpu", "--layout")
    compile = False if args.compile is None else check_compile("--compile", args.compile)
    if args.suite is not None:
        return suite.main_suite(args.suite, args.out, device, parts=args.only, steps=args.steps,
                                warmup=args.warmup, batch=args.batch, compile=compile or None,
                                step_size=args.step_size)
    models = args.model or (["resnet20", "resnet50"] if device.type == "cuda" else ["resnet20"])

    def save(result: dict[str, Any]) -> None:
        if args.out:
            core.write_json(args.out, result)

    options = core.SpeedOptions(device=str(device), steps=args.steps, batch=args.batch, warmup=args.warmup,
                                packed=args.packed, parts=args.only or core.PARTS, compile=compile, layout=layout,
                                weights=args.weights, step_size=args.step_size)
    result = core.run_speed(models, options, save=save)
    save(result)
    print(core.format_report(result))
    if args.out:
        print(f"JSON: {args.out}")
    return 0
