"""The training loop every trial uses: the phase's recipe (optimizer, warmup then a cosine or
step schedule, label smoothing, gradient clipping, EMA weights: ``rankbench.bench.train.config.Recipe``),
the Method's hooks around each step, and a per-epoch checkpoint so a trial resumes where it stopped.

``train(model, data, config, phase, method, loop)``: what to train with is a ``TrainConfig``
(``rankbench.bench.train.config``), which part of the trial a ``Phase``, where and with what
callbacks a :class:`Loop`. Inside, a call reads in three phases: :func:`resume` (the last good
checkpoint of this phase, if any), :func:`run_epoch` per epoch, and :func:`save` after each.

The method is attached before ``train`` is called, so the optimizer built here holds the model's
parameters as they are after ``attach`` (a method may replace layers to train them), grouped as
the method's ``param_groups`` says. The checkpoint carries the method's ``state_dict``.

With ``ema`` in the recipe, an average of the weights (``rankbench.bench.train.ema``) follows every
step; each epoch's validation reads it, the checkpoint holds it, and the phase ends with the model
holding it: what comes next (compress, fine-tuning, the final evaluation, the saved model) uses
the averaged weights.

The loop never syncs with the host inside a step: the loss is summed on the device and read once
per epoch, which is also where a NaN/inf loss is detected (``TrainingDiverged``). A method hook
that raises (TRP's eigensolver failing on NaN weights, say) has the model's weights and gradients
checked then, and only then: if any is NaN/inf, the training diverged and ends as
``TrainingDiverged`` in that epoch, the hook's error as its cause; on finite weights the hook's own
error is raised as it is.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rankbench.bench.measure.metrics import evaluate
from rankbench.bench.results.filesystem import read_bytes_io
from rankbench.bench.results.store import previous, rotate_and_save, set_aside
from rankbench.bench.train.config import COMPILE_MODES, Phase, Recipe, TrainConfig, build_optimizer
from rankbench.bench.train.ddp import epoch_sync, is_main, sum_over_ranks
from rankbench.bench.train.ema import EmaWeights
from rankbench.methods.api.base import Method


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf, or (``cause``: what the hook raised) a method's hook failed on
    NaN/inf weights. ``epoch`` is the 1-based epoch it happened in, counted over the trial."""

    def __init__(self, epoch: int, loss: float, phase: str = "train", cause: str | None = None):
        self.epoch = epoch
        self.loss = loss
        self.phase = phase
        self.cause = cause
        # the phase names the knob: fine-tuning runs at train.finetune_lr, not train.lr
        knob = "train.finetune_lr" if phase == "finetune" else "train.lr"
        what = f"loss became {loss}" if cause is None else "weights became non-finite"
        why = "" if cause is None else f" ({cause})"
        super().__init__(f"{phase} {what} in epoch {epoch}{why}; try a lower {knob} or amp: false")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled (a data-parallel worker's error crossing to the driver) with its own arguments
        return type(self), (self.epoch, self.loss, self.phase, self.cause)


class NonFiniteWeights(RuntimeError):
    """A method's hook raised while the model's weights or gradients were NaN/inf: ``hook``
    names it (``TRP.before_step``), ``error`` is what it raised. :func:`train` reports it as
    :class:`TrainingDiverged` in the epoch it happened in."""

    def __init__(self, hook: str, error: BaseException):
        self.hook, self.error = hook, error
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        super().__init__(f"{hook} raised {type(error).__name__}: {detail}")


def all_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` and its gradient is free of NaN/inf (host syncs:
    the loop reads it only where a method's hook has raised)."""
    return all(bool(torch.isfinite(t).all()) for p in model.parameters() for t in (p, p.grad) if t is not None)


def call_hook(method: Method, hook: str, model: nn.Module, *args: Any) -> Any:
    """``method.<hook>(model, *args)``; an error it raises on NaN/inf weights is
    :class:`NonFiniteWeights` (the divergence it is), any other is raised as it is. Nothing is
    checked unless the hook raises: no host sync in a step that goes well."""
    try:
        return getattr(method, hook)(model, *args)
    except Exception as e:
        try:
            finite = all_finite(model)
        except Exception:  # noqa: BLE001  (weights that cannot be read now: the hook's error stands)
            finite = True
        if finite:
            raise
        raise NonFiniteWeights(f"{type(method).__name__}.{hook}", e) from e


@dataclass
class Progress:
    """Shared with the caller so a failure can say which epoch was the last good one."""

    last_good_epoch: int | None = None   # counted over the whole trial (train, then fine-tune)
    elapsed_s: float = 0.0               # epoch time over all attempts (carried in the checkpoint)
    ran_s: float = 0.0                   # epoch time run by this process only
    history: list[dict[str, Any]] = field(default_factory=list)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """The default recipe's SGD + momentum over ``model``'s current parameters, or over ``groups``
    (a method's ``param_groups``: each dict's own settings override ``lr``, ``momentum`` and
    ``weight_decay``); a phase's own optimizer comes from its ``Recipe``."""
    params: Any = groups if groups is not None else model.parameters()
    return build_optimizer(params, "sgd", lr, momentum, weight_decay, {})


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int,
                   milestones: list[int] | tuple[int, ...] = (), gamma: float = 0.1, warmup_epochs: float = 0.0
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration. ``warmup_epochs``: the first ``W`` steps (that many epochs,
    at most the phase) run at ``lr * (step + 1) / W``, reaching ``lr`` at step ``W - 1``. Then
    cosine decays smoothly over the remaining iterations; step multiplies by ``gamma`` at each
    milestone epoch, counted from the phase's start (as the official TRP recipe: 81 and 122 of 164)."""
    total = max(1, epochs * steps_per_epoch)
    spe = max(1, steps_per_epoch)
    warm = min(total, max(1, round(warmup_epochs * spe))) if warmup_epochs > 0 else 0
    ms = sorted(milestones)
    if schedule == "cosine":
        def after(step: int) -> float:
            span = total - warm
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span)) if span > 0 else 1.0
    elif schedule == "step":
        def after(step: int) -> float:
            epoch = step // spe
            return gamma ** sum(1 for m in ms if epoch >= m)
    else:
        raise ValueError(f"train.schedule: {schedule!r}: accepted: cosine, step")

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else after(step)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (a checkpoint is read with
    ``weights_only``: numpy's key array travels as a tensor)."""
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               method: Method | None = None, step: int = 0, amp: bool = False,
               forward: nn.Module | None = None, label_smoothing: float = 0.0, grad_clip: float = 0.0
               ) -> torch.Tensor:
    """One optimizer step with the method's hooks; returns the detached loss (no host sync), the
    method's ``extra_loss`` included.

    ``label_smoothing``: of the cross-entropy (torch's). ``grad_clip`` (> 0): the gradients of
    ``model``'s parameters are scaled to a global L2 norm of at most that, after the method's
    ``after_backward`` (a gradient it adds counts) and before the optimizer step.

    ``amp``: bf16 autocast (no loss scaling needed), used on CUDA only; on CPU it is ignored,
    because CPU bf16 autocast is slower than float32 for these models.
    ``forward``: the module that runs the forward pass when it is not ``model`` itself (the
    DistributedDataParallel wrapper of ``model``); the method's hooks always get bare ``model``,
    whose layer names they picked at attach. A hook that raises on NaN/inf weights raises
    :class:`NonFiniteWeights` (:func:`call_hook`)."""
    amp = bool(amp) and x.device.type == "cuda"
    if method is not None:
        call_hook(method, "before_step", model, step)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy((model if forward is None else forward)(x), y,
                                           label_smoothing=label_smoothing)
    if method is not None:
        extra = call_hook(method, "extra_loss", model, step)   # outside autocast: regularizers want full precision
        if extra is not None:
            loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if method is not None:
        call_hook(method, "after_backward", model, step)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)   # no host sync: the scale stays on the device
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
    if how is True:
        return torch.compile(module)
    if how in COMPILE_MODES:
        return torch.compile(module, mode=str(how))
    return torch.compile(module, backend=str(how))


@dataclass
class Loop:
    """Where and how a call of :func:`train` runs, as opposed to what it trains (``TrainConfig``).

    ``checkpoint``: written atomically after every epoch (model, optimizer, scheduler, method
    state, RNG, epoch); if it already holds this phase, training resumes after its epoch.
    ``forward``: DDP wrapper of the model for data-parallel training
    (``rankbench.bench.running.distributed``); then the epoch's loss is averaged over ranks and
    only rank 0 writes the checkpoint.
    ``on_epoch``: called on rank 0 after each epoch with ``{"phase", "epoch"`` (counted over the
    trial, as ``last_good_epoch``), ``"loss"``, ``"val_top1"``, ``"lr"`` (of the epoch's first
    step)``}`` plus the method's ``epoch_metrics(model)``; the runner sends it to the trackers
    (``rankbench.bench.running.tracking``).
    """

    device: torch.device | str = "cpu"
    checkpoint: Path | None = None
    progress: Progress = field(default_factory=Progress)
    log: Callable[[str], None] = print
    forward: nn.Module | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None


@dataclass
class _State:
    """One call of :func:`train` while it runs: what it trains, with what, and where."""

    model: nn.Module
    data: Any
    config: TrainConfig
    phase: Phase
    method: Method | None
    loop: Loop
    device: torch.device
    forward: nn.Module | None
    opt: torch.optim.Optimizer = field(init=False)
    sched: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    ema: EmaWeights | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.fresh_optimizer()

    @property
    def recipe(self) -> Recipe:
        """The phase's recipe; a phase without one trains with the config's training recipe."""
        return self.phase.recipe if self.phase.recipe is not None else self.config.recipe()

    @property
    def use_amp(self) -> bool:
        # bf16 autocast needs no loss scaling; on CPU it is slower, so amp only applies on CUDA
        return bool(self.config.amp) and self.device.type == "cuda"

    def fresh_optimizer(self) -> None:
        """The optimizer, schedule and weight average of the phase's start, over the model's
        current parameters (built after the method's attach: the parameters of any layer it
        replaced are the ones trained)."""
        r, spe = self.recipe, int(self.data.steps_per_epoch)
        groups = self.method.param_groups(self.model) if self.method is not None else None
        self.opt = r.make_optimizer(groups if groups is not None else self.model.parameters(), self.phase.lr)
        self.sched = make_scheduler(self.opt, r.schedule, self.phase.epochs, spe, r.milestones, r.gamma,
                                    r.warmup_epochs)
        self.ema = EmaWeights(self.model, r.ema) if r.ema > 0 else None


def train(model: nn.Module, data: Any, config: TrainConfig, phase: Phase | None = None,
          method: Method | None = None, loop: Loop | None = None) -> Progress:
    """Train ``model`` in place for ``phase.epochs`` epochs on ``data.train`` at ``phase.lr``
    with ``config``'s other options; evaluate on ``data.val`` after each epoch.

    ``phase``: default ``config.train_phase()``. ``method`` (already attached): its
    ``before_step`` / ``extra_loss`` / ``after_backward`` hooks run around each step, its
    ``param_groups`` shape the optimizer, and its ``state_dict`` is checkpointed and restored on
    resume. ``loop``: device, checkpoint, progress, log and callbacks (:class:`Loop`).
    ``config.compile``: the training forward (``loop.forward`` or ``model``) is compiled; evaluation
    and checkpoints use ``model`` itself. The method's hooks change the weights in place between
    steps, which a compiled forward reads as inputs.
    """
    phase = phase or config.train_phase()
    loop = loop or Loop()
    device = torch.device(loop.device)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = compiled(model if loop.forward is None else loop.forward, config.compile) if config.compile \
        else loop.forward
    st = _State(model, data, config, phase, method, loop, device, forward)
    named_skips: set[str] = set()     # unreadable files already named in the log
    for epoch in range(resume(st), phase.epochs):
        try:
            mean_loss, top1, lr_now, secs = run_epoch(st, epoch)
            _record(st, epoch, mean_loss, top1, lr_now, secs)
        except NonFiniteWeights as e:   # a hook failed on weights the epoch's steps blew up
            raise TrainingDiverged(phase.epoch_offset + epoch + 1, math.nan, phase.name, str(e)) from e.error
        named_skips = _log_skipped(data, loop.log, phase.name, sum_over_ranks(getattr(data, "skipped", 0)),
                                   named_skips)
        save(st, epoch)
        loop.progress.last_good_epoch = phase.epoch_offset + epoch + 1
    if st.ema is not None:   # the phase ends with the averaged weights: what follows uses them
        st.ema.copy_to(model)
        loop.log(f"[{phase.name}] the model holds the EMA of its weights (decay {st.ema.decay})")
    if config.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return loop.progress


def resume(st: _State) -> int:
    """Restore the phase's last checkpoint (else the one before it) and return the epoch to
    start from; 0 when there is none, or none of this phase. An unreadable checkpoint is named
    in the log and set aside, and training goes on from the state before it."""
    ck_path = st.loop.checkpoint
    if ck_path is None:
        return 0
    for cand in (ck_path, previous(ck_path)):
        if not cand.exists():
            continue
        init = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
        try:
            ck = _read_checkpoint(cand, st.device)
            if ck["phase"] != st.phase.name:
                return 0
            start = _restore(st, ck)
        except Exception as e:  # noqa: BLE001 (truncated, damaged, or from another model)
            # named and set aside; training goes on from the state before it (the previous
            # checkpoint, else the start of the phase), with a fresh optimizer and schedule
            moved = set_aside(cand)
            st.model.load_state_dict(init)
            st.fresh_optimizer()
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            st.loop.log(f"[{st.phase.name}] checkpoint {cand} is unreadable ({type(e).__name__}: {detail}); "
                        f"set aside as {moved.name}, resuming from the state before it")
            continue
        st.loop.log(f"[{st.phase.name}] resumed from epoch {start}/{st.phase.epochs} ({cand})")
        return start
    return 0


def _read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """An epoch checkpoint, read as tensors and plain containers only: a file from shared
    storage never runs code (``weights_only``)."""
    with read_bytes_io(path) as f:   # a local file, or a buffer from the storage URI
        ck = torch.load(f, map_location=device, weights_only=True)
    if not isinstance(ck, dict) or "phase" not in ck:
        raise ValueError("not a rankbench epoch checkpoint")
    return ck


def _restore(st: _State, ck: dict[str, Any]) -> int:
    """Load a checkpoint's model, optimizer, schedule, method state, RNG and progress; return
    its epoch."""
    st.model.load_state_dict(ck["model"])
    st.opt.load_state_dict(ck["optimizer"])
    st.sched.load_state_dict(ck["scheduler"])
    if st.method is not None and ck.get("method") is not None:
        st.method.load_state_dict(ck["method"])
    if st.ema is not None and ck.get("ema") is not None:
        st.ema.load_state_dict(ck["ema"])
    _set_rng_state(ck["rng"])
    start = int(ck["epoch"])
    p = st.loop.progress
    p.elapsed_s = float(ck.get("elapsed_s", 0.0))
    p.history = list(ck.get("history", []))
    p.last_good_epoch = st.phase.epoch_offset + start
    return start


def run_epoch(st: _State, epoch: int) -> tuple[float, float, float, float]:
    """Train one epoch and evaluate: (mean loss, val top-1, the epoch's first lr, seconds).
    The loss is summed on the device and read once, where a NaN/inf is caught."""
    t0 = time.perf_counter()
    data, model, spe = st.data, st.model, int(st.data.steps_per_epoch)
    if hasattr(data.train, "set_epoch"):
        data.train.set_epoch(epoch)   # the shuffle of epoch e is the same after a resume
    model.train()
    lr_now = float(st.opt.param_groups[0]["lr"])
    loss_sum = torch.zeros((), device=st.device)
    n_seen = 0
    r = st.recipe
    for i, (x, y) in enumerate(data.train):
        x = _to_input(x, st.device, st.config.channels_last)
        y = y.to(st.device, non_blocking=True)
        loss = train_step(model, x, y, st.opt, st.method, epoch * spe + i, amp=st.use_amp, forward=st.forward,
                          label_smoothing=r.label_smoothing, grad_clip=r.grad_clip)
        st.sched.step()
        if st.ema is not None:
            st.ema.update(model)
        loss_sum += loss.float() * y.shape[0]
        n_seen += y.shape[0]
    loss_sum, n_seen = epoch_sync(model, loss_sum, n_seen)   # no-op without DDP
    mean_loss = (loss_sum / max(1, n_seen)).item()   # the one host sync of the epoch
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(st.phase.epoch_offset + epoch + 1, mean_loss, st.phase.name)
    with st.ema.swapped_in(model) if st.ema is not None else contextlib.nullcontext(model):
        top1 = evaluate(model, data.val, data.num_classes, amp_dtype=torch.bfloat16 if st.use_amp else None)["top1"]
    return mean_loss, top1, lr_now, time.perf_counter() - t0


def _record(st: _State, epoch: int, mean_loss: float, top1: float, lr_now: float, secs: float) -> None:
    """The epoch in the progress, the log and (rank 0) the trackers."""
    p, name = st.loop.progress, st.phase.name
    send = st.loop.on_epoch is not None and is_main()
    # first: epoch_metrics failing on NaN weights (NonFiniteWeights) leaves the epoch unrecorded
    extra = dict(call_hook(st.method, "epoch_metrics", st.model)) if send and st.method is not None else {}
    p.elapsed_s += secs
    p.ran_s += secs
    p.history.append({"phase": name, "epoch": epoch + 1, "loss": mean_loss, "val_top1": top1, "seconds": secs})
    st.loop.log(f"[{name}] epoch {epoch + 1}/{st.phase.epochs} loss {mean_loss:.4f} val top-1 {top1:.2f}% "
                f"{secs:.1f}s")
    if send:
        # the loop's own keys win over a method's of the same name
        st.loop.on_epoch({**extra, "phase": name, "epoch": st.phase.epoch_offset + epoch + 1, "loss": mean_loss,
                          "val_top1": top1, "lr": lr_now})


def save(st: _State, epoch: int) -> None:
    """Rank 0 writes the epoch checkpoint (atomically, the previous one kept beside it)."""
    if st.loop.checkpoint is None or not is_main():
        return
    state = {
        "phase": st.phase.name, "epoch": epoch + 1, "model": st.model.state_dict(),
        "optimizer": st.opt.state_dict(), "scheduler": st.sched.state_dict(),
        "method": st.method.state_dict() if st.method is not None else None,
        "ema": st.ema.state_dict() if st.ema is not None else None,
        "rng": _rng_state(), "elapsed_s": st.loop.progress.elapsed_s, "history": st.loop.progress.history,
    }
    rotate_and_save(state, st.loop.checkpoint)
