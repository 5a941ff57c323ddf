"""Memory check before small trials share a GPU (fractional ``resources.gpus``).

Ray's fractional GPUs are a scheduling promise, not a memory limit: four trials at
``gpus: 0.25`` land on one device whatever they allocate, and one that does not fit takes its
neighbours down with it. So before a packed phase starts, one training step of each distinct
(model, input, batch, precision) is run on a GPU the cluster gives out (a Ray task holding the
same GPU fraction), its peak memory is compared with its share of the device, and trials that
would not fit fail at once with the numbers and the ``gpus`` that would fit, instead of dying of
out-of-memory hours into a sweep.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

HEADROOM = 0.85   # of a trial's share: CUDA context, cuDNN workspaces, allocator fragmentation
GIB = 2**30


def is_packed(resources: dict[str, Any]) -> bool:
    """A single-process trial holding a fraction of one GPU."""
    gpus = float(resources.get("gpus", 0))
    return 0 < gpus < 1 and int(resources.get("workers", 1)) == 1


def probe_key(trial: Any) -> tuple:
    """What decides a trial's step memory: model, its options, data shape, batch and precision."""
    t = trial.train_cfg
    return (trial.model, repr(sorted(trial.model_cfg.items())), repr(sorted(trial.data_cfg.items())),
            int(t.get("batch_size", 128)), bool(t.get("amp", False)), bool(t.get("channels_last", False)))


def share_fits(peak_bytes: int, gpus: float, total_bytes: int, headroom: float = HEADROOM) -> bool:
    """Whether a trial peaking at ``peak_bytes`` fits in its ``gpus`` share of a ``total_bytes`` GPU."""
    return peak_bytes <= headroom * gpus * total_bytes


def gpus_needed(peak_bytes: int, total_bytes: int, headroom: float = HEADROOM) -> float:
    """The smallest share (rounded up to 0.05) in which ``peak_bytes`` fits."""
    return min(1.0, math.ceil(peak_bytes / (headroom * total_bytes) * 20) / 20)


def peak_step_memory(model_name: str, model_cfg: dict[str, Any], data_cfg: dict[str, Any], batch: int,
                     amp: bool, channels_last: bool) -> tuple[int, int]:
    """(peak bytes of one training step, the device's total bytes), measured on this process's GPU
    with random inputs of the data's shape. Runs inside a Ray task that holds a GPU share."""
    import torch

    from rankbench.bench.data import describe
    from rankbench.bench.models.builtin import build_model
    from rankbench.bench.train.loop import make_optimizer, train_step

    shape, classes = describe(data_cfg)
    opts = {k: v for k, v in model_cfg.items() if k != "pretrained"}   # weights do not change memory
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    model = build_model(model_name, classes, shape, **opts).to(dev)
    x = torch.randn(batch, *shape, device=dev)
    if channels_last and x.dim() == 4:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=dev)
    opt = make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    for step in range(2):   # the second step holds the optimizer's momentum buffers too
        train_step(model, x, y, opt, None, step, amp=amp)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    return int(peak), int(torch.cuda.get_device_properties(dev).total_memory)


Probe = Callable[[Any], tuple[int, int]]


def ray_probe(trial: Any) -> tuple[int, int]:
    """Run :func:`peak_step_memory` for ``trial`` as a Ray task holding the trial's GPU share."""
    import ray

    t = trial.train_cfg
    task = ray.remote(num_gpus=float(trial.resources_cfg["gpus"]), num_cpus=0)(peak_step_memory)
    return ray.get(task.remote(trial.model, trial.model_cfg, trial.data_cfg, int(t.get("batch_size", 128)),
                               bool(t.get("amp", False)), bool(t.get("channels_last", False))))


def check_packing(trials: Sequence[Any], probe: Probe | None = None,
                  log: Callable[[str], None] = print) -> dict[str, str]:
    """Trial id -> why it cannot run in its GPU share, for every packed trial that would not fit.
    One probe (default :func:`ray_probe`) per distinct :func:`probe_key`; unpacked trials are not probed."""
    probe = probe or ray_probe
    measured: dict[tuple, tuple[int, int]] = {}
    refused: dict[str, str] = {}
    for t in trials:
        if not is_packed(t.resources_cfg):
            continue
        key = probe_key(t)
        if key not in measured:
            measured[key] = probe(t)
            peak, total = measured[key]
            log(f"packing: {t.model} batch {key[3]} needs {peak / GIB:.2f} GiB per trial "
                f"({total / GIB:.0f} GiB GPU)")
        peak, total = measured[key]
        gpus = float(t.resources_cfg["gpus"])
        if not share_fits(peak, gpus, total):
            refused[t.id] = (f"GPUMemory: one training step needs {peak / GIB:.2f} GiB; its share "
                             f"resources.gpus={gpus:g} of a {total / GIB:.0f} GiB GPU gives "
                             f"{HEADROOM * gpus * total / GIB:.2f} GiB ({HEADROOM:.0%} usable); "
                             f"accepted: resources.gpus >= {gpus_needed(peak, total):g} or a smaller batch")
    return refused
