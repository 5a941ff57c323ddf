"""Shared fixtures: one local Ray for the whole test session (starting Ray costs seconds)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # tests run from a checkout even before `pip install -e .`
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

# the models here are tiny: on a 2-core CI machine, with Ray workers beside the test process,
# more than one intra-op thread only adds contention (measured: 4x slower with 2 threads)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray, started once per session and shut down at its end."""
    from bench.sweep import init_ray

    import ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
