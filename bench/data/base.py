"""What every dataset module shares: the ``Data`` a builder returns, the error for a dataset
file or folder that is not as expected, and the CPU count the loaders size themselves by."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from rankbench.bench import checks
from rankbench.bench.checks import UserError


@dataclass
class Data:
    """What a trial trains and evaluates on. ``train``/``val`` yield ``(x, y)`` on the device;
    each ``iter()`` over ``train`` is one new epoch (deterministic given the seed)."""

    train: Iterable[tuple[torch.Tensor, torch.Tensor]]
    val: Iterable[tuple[torch.Tensor, torch.Tensor]]
    input_shape: tuple[int, ...]
    num_classes: int
    steps_per_epoch: int
    name: str = ""
    train_size: int = 0
    val_size: int = 0
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Unreadable files skipped so far (ImageNet); 0 for in-memory datasets."""
        return int(getattr(self.train, "skipped", 0)) + int(getattr(self.val, "skipped", 0))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which cgroups, ``taskset`` and cluster
    schedulers narrow), not every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bad_path(path: str | os.PathLike, problem: str, accepted: str, field: str = "data.root") -> UserError:
    """``data.root: '<path>': <problem>; accepted: <layout>``: ``checks.bad`` with the path quoted
    whole (its tail names the file)."""
    return checks.bad(field, str(path), accepted, problem, limit=checks.PATH_QUOTE)
