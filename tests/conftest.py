"""Shared fixtures: one local Ray for the whole test session (starting Ray costs seconds)."""
from __future__ import annotations

import os

import pytest

# the code under test is the installed `rankbench` (README: `pip install -e ".[test]"`, which maps
# rankbench.* onto this checkout); the checkout's folders are not put on sys.path, so an import
# of the bare folder names fails here as it does for a user

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

# the models here are tiny: on a 2-core CI machine, with Ray workers beside the test process,
# more than one intra-op thread only adds contention (measured: 4x slower with 2 threads), so 1
# unless OMP_NUM_THREADS asks for more (the suite is run at 1 and at 2 before a change lands: the
# equalities it asserts must hold whatever the threads' rounding)
torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray, started once per session and shut down at its end."""
    from rankbench.bench.running.sweep import init_ray

    import ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def no_run(monkeypatch):
    """Anything that would start Ray or a trial fails the test: bad input stops before."""
    def started(*a, **kw):
        raise AssertionError("bad input reached Ray / a trial")

    monkeypatch.setattr("rankbench.bench.running.sweep.init_ray", started)
    monkeypatch.setattr("rankbench.bench.running.run.run_trial", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
