"""Data-parallel trials: one trial trained by N processes with DistributedDataParallel.

A trial whose ``resources`` ask for ``workers: N`` (N > 1), or for more than one GPU
(``gpus: 8`` means 8 workers with one GPU each unless ``workers`` says otherwise), runs through
Ray Train's ``TorchTrainer``. Ray 2.60 runs Ray Train V2, in which a Trainer is no longer a Tune
trainable: the trial's Tune function (``bench.sweep``) calls ``run_distributed``, which starts the
TorchTrainer and waits for it. The Tune trial itself then holds no CPU or GPU (Train's workers
hold them), so a 2-CPU machine can run a 2-worker trial.

Every worker runs ``bench.run.run_trial`` with a ``DistContext``: the data gives each rank its
exact share of every global batch (``train.batch_size`` is the global batch, split evenly), DDP
all-reduces (averages) the gradients, and every rank then runs the same method hooks on the same
weights, so TRP's projection and nuclear-norm sub-gradient are identical everywhere (checked at
the end of training: every rank's weight checksum is gathered into the row, and a mismatch fails
the trial). Evaluation sums counts over ranks (``bench.measure.evaluate``). Rank 0 alone writes
checkpoints, the log and the result row. Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# the Tune trial of a distributed trial only waits for its Train workers; Tune needs a
# non-empty resource request, and a token of memory (bytes) takes no CPU or GPU from them
DRIVER_RESOURCES: dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "memory": 1.0}


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel trial (the process group is already up)."""

    rank: int
    world_size: int
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return backend_for(self.device)


def backend_for(device: torch.device) -> str:
    """nccl for GPUs, gloo for CPUs (nccl has no CPU tensors)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def workers_for(resources: dict[str, Any]) -> int:
    """Processes a trial trains with: ``workers`` if given, else one per GPU when it asks for
    more than one, else 1."""
    w = resources.get("workers")
    if w:
        return int(w)
    gpus = float(resources.get("gpus", 0) or 0)
    return int(gpus) if gpus > 1 else 1


def is_distributed(resources: dict[str, Any]) -> bool:
    return workers_for(resources) > 1


def per_worker(resources: dict[str, Any]) -> dict[str, float]:
    """A trial's ``cpus`` and ``gpus`` are for the whole trial; each worker gets an equal share."""
    n = workers_for(resources)
    return {"CPU": float(resources.get("cpus", 1)) / n, "GPU": float(resources.get("gpus", 0) or 0) / n}


def current() -> DistContext | None:
    """The DistContext of this process when a process group is initialized, else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    rank, ws = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    return DistContext(rank=rank, world_size=ws, local_rank=local, device=dev)


def is_main() -> bool:
    """True in a single-process trial and on rank 0 of a distributed one: the writer of files."""
    ctx = current()
    return ctx is None or ctx.is_main


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer replaced by a SyncBatchNorm (statistics over the global batch in
    training; DDP accepts it on GPUs only). Module names, state-dict keys and the eval-mode
    forward stay as they were, so the method's layer choice and checkpoints carry over."""
    # module replacement before DDP, as torch requires
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, ctx: DistContext | None, sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
    """(model, forward): ``model`` is the bare module the method's hooks and the checkpoints see
    (SyncBatchNorm swapped in when ``sync_bn``), ``forward`` the DDP wrapper the training step
    calls (gradients all-reduced during backward). Without a context both are ``model``."""
    if ctx is None or ctx.world_size == 1:
        return model, model
    if sync_bn:
        model = sync_batch_norm(model)
    model.to(ctx.device)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model, ddp


def epoch_sync(model: nn.Module, loss_sum: torch.Tensor, n_seen: int) -> tuple[torch.Tensor, int]:
    """At the end of an epoch under DDP: the global loss sum and sample count (so every rank
    sees the same mean loss and a NaN stops all ranks at the same epoch, not one rank while the
    others wait in the next all-reduce), and rank 0's buffers (BN running statistics, which
    each rank updates from its own shard) on every rank, so evaluation and checkpoints agree."""
    if current() is None:
        return loss_sum, n_seen
    t = torch.stack([loss_sum.float().reshape(()), torch.tensor(float(n_seen), device=loss_sum.device)])
    torch.distributed.all_reduce(t)
    for b in model.buffers():
        torch.distributed.broadcast(b, src=0)
    return t[0], int(t[1].item())


def sum_over_ranks(n: int) -> int:
    """``n`` summed over every rank (a collective under DDP: all ranks must call it); ``n`` itself
    in a single-process trial."""
    ctx = current()
    if ctx is None:
        return int(n)
    t = torch.tensor([int(n)], dtype=torch.long, device=ctx.device)
    torch.distributed.all_reduce(t)
    return int(t.item())


def weights_checksum(model: nn.Module) -> str:
    """sha256 over every parameter and buffer, bit for bit, in state-dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_checksums(model: nn.Module) -> list[str]:
    """Every rank's ``weights_checksum`` (a collective: all ranks must call it)."""
    mine = weights_checksum(model)
    ctx = current()
    if ctx is None:
        return [mine]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, mine)
    return [str(x) for x in out]


class RanksDiverged(RuntimeError):
    """Data-parallel ranks ended training with different weights: the trial's numbers are void."""


def check_identical(model: nn.Module, where: str) -> list[str]:
    sums = gather_checksums(model)
    if len(set(sums)) != 1:
        short = ", ".join(f"rank {i}: {s[:12]}" for i, s in enumerate(sums))
        raise RanksDiverged(f"{where}: ranks hold different weights ({short}); "
                            f"every rank must apply the same update")
    return sums


# --- Ray Train -----------------------------------------------------------------------------

def _train_worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: this rank's part of ``run_trial``."""
    import ray.train

    from bench.run import run_trial
    from bench.spec import Trial

    ctx = ray.train.get_context()
    device = torch.device("cpu")
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    dctx = DistContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                       local_rank=ctx.get_local_rank(), device=device)
    run_trial(Trial.from_dict(config["trial"]), config["results_root"], base_dir=config["base_dir"],
              dist=dctx)


def run_distributed(trial: Any, results_root: str, base_dir: str) -> dict | None:
    """Train ``trial`` on ``workers_for(trial.resources_cfg)`` Ray Train workers with DDP and
    return the row rank 0 wrote (None if none was written). A worker that dies raises here
    (``ray.train.TrainingFailedError``), so Tune retries the trial, which resumes from its last
    epoch checkpoint like any other trial."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray.train import TrainingFailedError

    from bench.fs import ray_storage
    from bench.store import Store

    res = trial.resources_cfg
    n = workers_for(res)
    share = per_worker(res)
    use_gpu = share["GPU"] > 0
    store = Store(results_root, trial.sweep)
    storage_path, storage_fs = ray_storage(store.ray_dir / "train")
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trial": trial.to_dict(), "results_root": str(results_root), "base_dir": base_dir,
                           "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=use_gpu,
                                     resources_per_worker={k: v for k, v in share.items() if v > 0}),
        # Tune owns the retries (and counts them in the progress line): Train gives up at once
        run_config=RunConfig(name=trial.id, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=0)),
    )
    before = store.read_result(trial.id)   # a failed row of an earlier run must not pass as this one's
    try:
        trainer.fit()
    except TrainingFailedError:
        row = store.read_result(trial.id)
        if row is not None and row != before and row.get("status") == "failed":
            # the trial itself failed (rank 0 wrote why, then raised to stop the other ranks):
            # report it; retrying would fail the same way
            return row
        raise   # a worker died before any row: Tune retries from the epoch checkpoint
    return store.read_result(trial.id)
