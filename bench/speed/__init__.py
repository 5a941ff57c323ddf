"""``rankbench speed``: the numbers that decide what an ImageNet comparison costs.

- :mod:`rankbench.bench.speed.core`: the benchmarks (training step, TRP's projection, latency, packed trials);
- :mod:`rankbench.bench.speed.ranks`: weights at the ranks TRP reaches in practice (paper-level ranks);
- :mod:`rankbench.bench.speed.suite`: every GPU measurement in one command (``--suite gpu``), and its
  shrunk CPU twin (``--suite cpu-smoke``); :mod:`rankbench.bench.speed.summary` writes its markdown;
- :mod:`rankbench.bench.speed.cli`: the command line (``rankbench speed``), arguments checked first;
- :mod:`rankbench.bench.speed.plan`: ``rankbench plan``, a sweep's device-hours and makespan from
  a few timed steps of each trial, before it runs.

May import: every room of the harness but ``running`` (a benchmark times the parts, not a sweep;
the plan simulates the queue's order rather than running it).
"""
from rankbench.bench.speed.core import (SPEED_MODELS, PARTS, Setup, bench_latency, bench_packed, bench_projection, bench_step,
                              environment, format_report, run_speed, solvers)
from rankbench.bench.speed.ranks import trp_steady_weights
from rankbench.bench.speed.cli import main

__all__ = ["SPEED_MODELS", "PARTS", "Setup", "bench_latency", "bench_packed", "bench_projection", "bench_step",
           "environment", "format_report", "main", "run_speed", "solvers", "trp_steady_weights"]
