"""``rankbench speed``: the numbers that decide what an ImageNet comparison costs.

- :mod:`bench.speed.core`: the benchmarks (training step, TRP's projection, latency, packed trials);
- :mod:`bench.speed.ranks`: weights at the ranks TRP reaches in practice (paper-level ranks);
- :mod:`bench.speed.suite`: every GPU measurement in one command (``--suite gpu``), and its
  shrunk CPU twin (``--suite cpu-smoke``); :mod:`bench.speed.summary` writes its markdown;
- :mod:`bench.speed.cli`: the command line (``rankbench speed``), arguments checked first.
"""
from bench.speed.core import (MODELS, PARTS, Setup, bench_latency, bench_packed, bench_projection, bench_step,
                              environment, format_report, run_speed, solvers)
from bench.speed.ranks import trp_steady_weights
from bench.speed.cli import main

__all__ = ["MODELS", "PARTS", "Setup", "bench_latency", "bench_packed", "bench_projection", "bench_step",
           "environment", "format_report", "main", "run_speed", "solvers", "trp_steady_weights"]
