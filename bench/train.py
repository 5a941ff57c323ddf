"""The training loop every trial uses: SGD + momentum + weight decay, cosine or step schedule,
the Method's hooks around each step, and a per-epoch checkpoint so a trial resumes where it stopped.

The method is attached before ``train`` is called, so the optimizer built here holds the model's
parameters as they are after ``attach`` (a method may replace layers to train them), grouped as
the method's ``param_groups`` says. The checkpoint carries the method's ``state_dict``.

The loop never syncs with the host inside a step: the loss is summed on the device and read once
per epoch, which is also where a NaN/inf loss is detected (``TrainingDiverged``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.fs import read_bytes_io
from bench.store import atomic_torch_save
from methods.base import Method


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf. ``epoch`` is the 1-based epoch it happened in."""

    def __init__(self, epoch: int, loss: float, phase: str = "train"):
        self.epoch = epoch
        self.loss = loss
        self.phase = phase
        super().__init__(f"{phase} loss became {loss} in epoch {epoch}; "
                         f"try a lower lr or amp: false")


@dataclass
class Progress:
    """Shared with the caller so a failure can say which epoch was the last good one."""

    last_good_epoch: int | None = None   # counted over the whole trial (train, then fine-tune)
    elapsed_s: float = 0.0               # epoch time over all attempts (carried in the checkpoint)
    ran_s: float = 0.0                   # epoch time run by this process only
    history: list[dict[str, Any]] = field(default_factory=list)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """SGD over ``model``'s current parameters, or over ``groups`` (a method's ``param_groups``:
    each dict's own settings override ``lr``, ``momentum`` and ``weight_decay``)."""
    params: Any = groups if groups is not None else model.parameters()
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int,
                   milestones: list[int] | tuple[int, ...] = (), gamma: float = 0.1
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration: cosine decays smoothly over all iterations; step multiplies
    by ``gamma`` at each milestone epoch (as the official TRP recipe: 81 and 122 of 164)."""
    total = max(1, epochs * steps_per_epoch)
    spe = max(1, steps_per_epoch)
    ms = sorted(milestones)
    if schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    elif schedule == "step":
        def factor(step: int) -> float:
            epoch = step // spe
            return gamma ** sum(1 for m in ms if epoch >= m)
    else:
        raise ValueError(f"train.schedule: {schedule!r}: accepted: cosine, step")
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               method: Method | None = None, step: int = 0, amp: bool = False,
               forward: nn.Module | None = None) -> torch.Tensor:
    """One SGD step with the method's hooks; returns the detached loss (no host sync), the
    method's ``extra_loss`` included.

    ``amp``: bf16 autocast (no loss scaling needed), used on CUDA only; on CPU it is ignored,
    because CPU bf16 autocast is slower than float32 for these models.
    ``forward``: the module that runs the forward pass when it is not ``model`` itself (the
    DistributedDataParallel wrapper of ``model``); the method's hooks always get bare ``model``,
    whose layer names they picked at attach."""
    amp = bool(amp) and x.device.type == "cuda"
    if method is not None:
        method.before_step(model, step)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy((model if forward is None else forward)(x), y)
    if method is not None:
        extra = method.extra_loss(model, step)   # outside autocast: regularizers want full precision
        if extra is not None:
            loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if method is not None:
        method.after_backward(model, step)
    opt.step()
    return loss.detach()


def skipped_files(data: Any) -> dict[str, str]:
    """Unreadable files this process's loaders skipped so far (path -> error); {} for in-memory data."""
    out: dict[str, str] = {}
    for loader in (getattr(data, "train", None), getattr(data, "val", None)):
        out.update(getattr(loader, "skipped_files", None) or {})
    return out


def _log_skipped(data: Any, log: Callable[[str], None], phase: str, total: int, seen: set[str]) -> set[str]:
    """Write the count of skipped images (every rank's, summed) and each newly skipped file of
    this rank to the trial's log. Returns the files named so far."""
    if total <= 0:
        return seen
    files = skipped_files(data)
    log(f"[{phase}] {total} unreadable images skipped so far ({len(files)} distinct files on this rank; "
        f"not trained or evaluated on)")
    new = [p for p in files if p not in seen]
    for p in new[:20]:
        log(f"[{phase}] skipped {p}: {files[p]}")
    if len(new) > 20:
        log(f"[{phase}] ... and {len(new) - 20} more skipped files")
    return seen | set(new)


def compiled(module: nn.Module, how: bool | str) -> nn.Module:
    """``torch.compile(module)`` as ``train.compile`` asks: true -> inductor, a mode name ->
    inductor in that mode, anything else -> that dynamo backend (names checked at spec time)."""
    from bench.spec import COMPILE_MODES

    if how is True:
        return torch.compile(module)
    if how in COMPILE_MODES:
        return torch.compile(module, mode=str(how))
    return torch.compile(module, backend=str(how))


def train(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    milestones: list[int] | tuple[int, ...] = (),
    gamma: float = 0.1,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool | str = False,
    method: Method | None = None,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    phase: str = "train",
    epoch_offset: int = 0,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    forward: nn.Module | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Progress:
    """Train ``model`` in place for ``epochs`` epochs on ``data.train``; evaluate on ``data.val``.

    ``checkpoint``: written atomically after every epoch (model, optimizer, scheduler, method
    state, RNG, epoch); if it already holds this ``phase``, training resumes after its epoch.
    ``method`` (already attached): its ``before_step`` / ``extra_loss`` / ``after_backward`` hooks
    run around each step, its ``param_groups`` shape the optimizer, and its ``state_dict`` is
    checkpointed and restored on resume.
    ``epoch_offset``: numbering for ``progress.last_good_epoch`` when this is a later phase.
    ``forward``: DDP wrapper of ``model`` for data-parallel training (``bench.distributed``); then
    the epoch's loss is averaged over ranks and only rank 0 writes the checkpoint.
    ``compile``: ``torch.compile`` the training forward (``forward`` or ``model``): true for
    inductor, a mode name (``"reduce-overhead"``: CUDA graphs) or a dynamo backend. Only the
    training forward is compiled; evaluation and checkpoints use ``model`` itself. The method's
    hooks change the weights in place between steps, which a compiled forward reads as inputs.
    ``on_epoch``: called on rank 0 after each epoch with ``{"phase", "epoch"`` (counted over the
    trial, as ``last_good_epoch``), ``"loss"``, ``"val_top1"``, ``"lr"`` (of the epoch's first
    step)``}`` plus the method's ``epoch_metrics(model)``; the run sends it to the trackers
    (``bench.tracking``).
    """
    from bench.ddp import epoch_sync, is_main, sum_over_ranks
    from bench.measure import evaluate

    progress = progress or Progress()
    device = torch.device(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    spe = int(data.steps_per_epoch)
    if compile:
        forward = compiled(model if forward is None else forward, compile)
    # built here, after the method's attach: the parameters of any layer it replaced are the ones trained
    opt = make_optimizer(model, lr, momentum, weight_decay, method.param_groups(model) if method is not None else None)
    sched = make_scheduler(opt, schedule, epochs, spe, milestones, gamma)
    # bf16 autocast needs no loss scaling; on CPU it is slower, so amp only applies on CUDA
    use_amp = bool(amp) and device.type == "cuda"

    start_epoch = 0
    named_skips: set[str] = set()     # unreadable files already named in the log
    if checkpoint is not None and checkpoint.exists():
        with read_bytes_io(checkpoint) as f:   # a local file, or a buffer from the storage URI
            ck = torch.load(f, map_location=device, weights_only=False)
        if ck.get("phase") == phase:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if method is not None and ck.get("method") is not None:
                method.load_state_dict(ck["method"])
            _set_rng_state(ck["rng"])
            start_epoch = int(ck["epoch"])
            progress.elapsed_s = float(ck.get("elapsed_s", 0.0))
            progress.history = list(ck.get("history", []))
            progress.last_good_epoch = epoch_offset + start_epoch
            log(f"[{phase}] resumed from epoch {start_epoch}/{epochs} ({checkpoint})")

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)   # the shuffle of epoch e is the same after a resume
        model.train()
        lr_now = float(opt.param_groups[0]["lr"])
        loss_sum = torch.zeros((), device=device)
        n_seen = 0
        for i, (x, y) in enumerate(data.train):
            step = epoch * spe + i
            x = _to_input(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            loss = train_step(model, x, y, opt, method, step, amp=use_amp, forward=forward)
            sched.step()
            loss_sum += loss.float() * y.shape[0]
            n_seen += y.shape[0]
        loss_sum, n_seen = epoch_sync(model, loss_sum, n_seen)   # no-op without DDP
        mean_loss = (loss_sum / max(1, n_seen)).item()   # the one host sync of the epoch
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(epoch_offset + epoch + 1, mean_loss, phase)
        amp_dtype = torch.bfloat16 if use_amp else None
        top1 = evaluate(model, data.val, data.num_classes, amp_dtype=amp_dtype)["top1"]
        secs = time.perf_counter() - t0
        progress.elapsed_s += secs
        progress.ran_s += secs
        progress.history.append({"phase": phase, "epoch": epoch + 1, "loss": mean_loss, "val_top1": top1,
                                 "seconds": secs})
        log(f"[{phase}] epoch {epoch + 1}/{epochs} loss {mean_loss:.4f} val top-1 {top1:.2f}% {secs:.1f}s")
        if on_epoch is not None and is_main():
            extra = dict(method.epoch_metrics(model)) if method is not None else {}
            # the loop's own keys win over a method's of the same name
            on_epoch({**extra, "phase": phase, "epoch": epoch_offset + epoch + 1, "loss": mean_loss,
                      "val_top1": top1, "lr": lr_now})
        named_skips = _log_skipped(data, log, phase, sum_over_ranks(getattr(data, "skipped", 0)), named_skips)
        if checkpoint is not None and is_main():
            state = {
                "phase": phase, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "method": method.state_dict() if method is not None else None,
                "rng": _rng_state(), "elapsed_s": progress.elapsed_s, "history": progress.history,
            }
            atomic_torch_save(state, checkpoint)
        progress.last_good_epoch = epoch_offset + epoch + 1
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return progress
