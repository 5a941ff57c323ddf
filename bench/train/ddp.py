"""DDP helpers for one trial trained by N processes (the process group is already up).

``DistContext`` says where this process sits; ``wrap`` gives the DDP forward next to the bare
module the method's hooks and checkpoints see; ``epoch_sync``, ``sum_over_ranks`` and
``check_identical`` are the collectives ``rankbench.bench.train.loop`` and ``rankbench.bench.running.run`` call so every rank
holds the same weights and reports the same numbers. Without a process group every helper is
the single-process identity, so the same code runs a plain trial. Backend: nccl on CUDA, gloo
on CPU. Starting the processes (Ray Train) is ``rankbench.bench.running.distributed``'s part.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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


def gather_objects(mine: Any) -> list[Any]:
    """Every rank's ``mine``, rank 0 first (a collective: all ranks must call it); [mine] alone."""
    ctx = current()
    if ctx is None:
        return [mine]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


def gather_checksums(model: nn.Module) -> list[str]:
    """Every rank's ``weights_checksum`` (a collective: all ranks must call it)."""
    return [str(x) for x in gather_objects(weights_checksum(model))]


# what a collective raises when another rank's process or node is gone: gloo fails a read or write
# on its TCP pair; NCCL and the store raise torch's DistBackendError / DistNetworkError
PEER_LOST = ("gloo/transport", "Connection reset by peer", "Connection closed by peer")


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank is gone (its process or node
    lost), which Ray retries from the checkpoint, rather than a fault of the trial itself."""
    dist_errors = tuple(getattr(torch.distributed, n) for n in ("DistBackendError", "DistNetworkError")
                        if hasattr(torch.distributed, n))
    return isinstance(e, dist_errors) or (isinstance(e, RuntimeError) and any(s in str(e) for s in PEER_LOST))


class RanksDiverged(RuntimeError):
    """Data-parallel ranks ended training with different weights: the trial's numbers are void."""


def check_identical(model: nn.Module, where: str) -> list[str]:
    sums = gather_checksums(model)
    if len(set(sums)) != 1:
        short = ", ".join(f"rank {i}: {s[:12]}" for i, s in enumerate(sums))
        raise RanksDiverged(f"{where}: ranks hold different weights ({short}); "
                            f"every rank must apply the same update")
    return sums
