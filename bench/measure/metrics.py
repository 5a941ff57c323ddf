"""Measurements of a model as it is actually run: MACs, parameters, latency, accuracy.

Conventions (docs/CONTRACTS.md, DESIGN.md): one fused multiply-add is one MAC, always per
image; latency is the median of timed runs after warm-up, with device, dtype and batch named,
on the fastest layout (memory format, BN folding, jit: ``rankbench.bench.measure.inference``) of a menu that the
dense and the compressed model share, with the winner named.
"""
from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from typing import Any, Iterable

import torch
from torch import nn

from rankbench.methods.lowrank import model_macs


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        return b.device, (b.dtype if b.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | list[int], conv_only: bool = False) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape`` (no batch dim):
    the project's one counter, ``rankbench.methods.lowrank.model_macs`` (fvcore on conv, linear and
    matmul-type ops), on a zero image of the model's device and dtype, in eval mode.
    ``conv_only``: convolutions alone, the basis TRP's published speed-ups count on."""
    device, dtype = _model_device_dtype(model)
    return model_macs(model, torch.zeros((1, *tuple(input_shape)), device=device, dtype=dtype), conv_only)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once); buffers are not parameters."""
    return int(sum(p.numel() for p in model.parameters()))


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def device_name(device: torch.device | str) -> str:
    """A human-readable name for the latency column: GPU model, or CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    cpu = platform.processor() or platform.machine()
    try:  # /proc/cpuinfo names the model on Linux; platform.processor() is often empty there
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"cpu ({cpu}, {n} thread{'' if n == 1 else 's'})"


# Largest |candidate - eager float32| allowed, as a fraction of the eager output's largest |value|:
# a folded or compiled graph sums in another order (float32: ~1e-6 measured on ResNet-50); half
# types round every activation. A wrong rewrite (a BN dropped, a scale misapplied) is off by O(1).
_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def _check_latency_args(dtype: str, batch: int, repeats: int, device: str | torch.device) -> torch.device:
    if dtype not in _DTYPES:
        raise ValueError(f"measure.latency_dtype: {dtype!r} is not accepted; accepted: {', '.join(_DTYPES)}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"measure.latency_batch: {batch!r} is not accepted; accepted: an integer >= 1")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"measure.latency_repeats: {repeats!r} is not accepted; accepted: an integer >= 1")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"measure.latency_device: {str(device)!r} is not accepted here; accepted: cpu (no CUDA device is visible)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"measure.latency_device: {str(device)!r} is not accepted; accepted: cpu, cuda, cuda:N")
    return device


def _max_rel_diff(out: Any, ref: Any) -> float:
    """Largest |out - ref| over every tensor of a (possibly nested) output, over ref's largest |value|."""
    from torch.utils._pytree import tree_leaves

    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    refs = [t for t in tree_leaves(ref) if isinstance(t, torch.Tensor)]
    if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
        return math.inf
    scale = max((float(r.abs().max()) for r in refs if r.numel()), default=0.0) or 1.0
    return max((float((o.float() - r.float()).abs().max()) for o, r in zip(outs, refs) if r.numel()),
               default=0.0) / scale


def _model_candidates(
    name: str,
    model: nn.Module,
    menu: list[str] | tuple[str, ...],
    device: torch.device,
    tdtype: torch.dtype,
    example: torch.Tensor,
) -> tuple[dict[str, tuple[Any, torch.Tensor]], dict[str, str]]:
    """Build and check every layout of ``menu`` for one model: ({layout: (fn, x)}, {layout: why skipped})."""
    from rankbench.bench.measure.inference import inference_model

    tol = _TOLERANCE[tdtype]
    cands: dict[str, tuple[Any, torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    ref_model = copy.deepcopy(model).eval().to(device=device, dtype=torch.float32)
    ref = ref_model(example.to(device))
    del ref_model
    for lay in menu:
        try:
            fn, x = inference_model(model, lay, device, tdtype, example)
            err = _max_rel_diff(fn(x), ref)
        except Exception as e:  # any failure to build or run a candidate only drops that candidate
            skipped[lay] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        # plain eager layouts are the model itself, cast: only a rewrite (folded, jit,
        # compiled) can compute another function, so only a rewrite is rejected for it
        if "+" in lay and not err <= tol:
            skipped[lay] = (f"output differs from eager float32 by {err:.2g} of its largest "
                            f"value (tolerance {tol:g})")
            continue
        cands[lay] = (fn, x)
    if not cands:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ValueError(f"measure.latency_layout: none of {', '.join(menu)} runs {name!r} ({why})")
    return cands, skipped


def _time_candidates(
    cands: dict[tuple[str, str], tuple[Any, torch.Tensor]],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[tuple[str, str], list[float]]:
    """Warm up every candidate, then time all of them in turns for ``repeats`` rounds (ms per run)."""

    def run(key: tuple[str, str]) -> float:
        fn, x = cands[key]
        t0 = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    # at least 2 warm-up calls: the jit profiling executor specializes on its first two
    for key in cands:
        for _ in range(max(2, warmup)):
            run(key)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in cands}
    for _ in range(repeats):
        for key in cands:
            times[key].append(run(key))
    return times


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...] | list[int],
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    layout: str | list[str] | tuple[str, ...] = "auto",
) -> dict[str, dict[str, Any]]:
    """Latency of each of ``models`` on its fastest layout (``rankbench.bench.measure.inference``), timed together.

    Every model gets the same menu of layouts (``"auto"``: the device's default menu; a name or
    a list fixes it). Each candidate is built once (compile time is not timed) and the output of
    each rewritten graph (folded, jit, compiled) checked against the eager float32 model on the
    same input (within 1e-3 of its largest value in float32, 5e-2 in bfloat16: measured rounding
    is ~1e-6 and ~1e-2 on ResNet-20/56/50); one that cannot be built or disagrees is skipped,
    with the reason in ``skipped``. Then all candidates of all models run
    ``repeats`` rounds in turns (a, b, c, a, b, c, ...: a machine that slows down slows every
    variant alike), so the cost is (models x layouts x repeats) runs; fix ``layout`` to bound it.
    A model's latency is the lowest median among its candidates; every run is timed from the
    call to its result being ready (``torch.cuda.synchronize`` on CUDA), in milliseconds.

    Returns, per model name: ``ms``, ``layout`` (the winner), ``candidates`` ({layout: ms}),
    ``skipped`` ({layout: why}), ``device``, ``dtype``, ``batch``, ``repeats``."""
    from rankbench.bench.measure.inference import layout_menu

    device = _check_latency_args(dtype, batch, repeats, device)
    if not models:
        raise ValueError("models: {} is not accepted; accepted: at least one named model")
    menu = layout_menu(layout, device)
    tdtype = _DTYPES[dtype]
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((batch, *tuple(input_shape)), generator=gen)

    cands: dict[tuple[str, str], tuple[Any, torch.Tensor]] = {}
    skipped: dict[str, dict[str, str]] = {}
    with torch.inference_mode():
        for name, model in models.items():
            built, skipped[name] = _model_candidates(name, model, menu, device, tdtype, example)
            cands.update({(name, lay): c for lay, c in built.items()})
        times = _time_candidates(cands, device, warmup, repeats)

    out: dict[str, dict[str, Any]] = {}
    for name in models:
        ms = {lay: float(statistics.median(times[(n, lay)])) for n, lay in cands if n == name}
        best = min(ms, key=ms.__getitem__)
        out[name] = {"ms": ms[best], "layout": best, "candidates": ms, "skipped": skipped[name],
                     "device": device_name(device), "dtype": dtype, "batch": int(batch), "repeats": int(repeats)}
    return out


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    layout: str | list[str] | tuple[str, ...] = "auto",
) -> dict[str, Any]:
    """Median wall time of one inference forward pass of ``batch`` inputs, in milliseconds, on the
    fastest of the layouts in ``layout`` (see :func:`compare_latency`; ``"contiguous"`` alone is
    eager PyTorch as it comes). The caller's model keeps its device, dtype and mode. To compare a
    compressed model with its dense one, time both in one :func:`compare_latency` call."""
    return compare_latency({"model": model}, input_shape, device, dtype, batch, repeats, warmup, layout)["model"]


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    distributed: bool | None = None,
) -> dict[str, float | None]:
    """Top-1, top-5 and macro F1 (percent) of ``model`` over ``loader``.

    Everything accumulates in device tensors (a confusion matrix via bincount), so there is
    one host sync at the end, not one per batch. top5 is None when num_classes < 5. Macro F1
    averages over classes that occur in the labels or the predictions (as scikit-learn does).

    Under torch.distributed (``distributed=None``: whenever a process group is initialized)
    the counts are summed over ranks, so every rank returns the metrics of the whole split
    when each rank evaluated its shard. (Ranks that all saw the same data get the same
    percentages too: every count is then multiplied by the world size.)"""
    was_training = model.training
    model.eval()
    device, _ = _model_device_dtype(model)
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    try:
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if amp_dtype is not None:
                    with torch.autocast(device.type, dtype=amp_dtype):
                        logits = model(x)
                else:
                    logits = model(x)
                pred = logits.argmax(dim=1)
                conf += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
                if num_classes >= 5:
                    top5 += (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).sum()
                n += y.numel()
    finally:
        model.train(was_training)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        counts = torch.cat([conf, top5.view(1), torch.tensor([n], dtype=torch.long, device=device)])
        torch.distributed.all_reduce(counts)
        conf, top5, n = counts[:-2], counts[-2], int(counts[-1])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    conf = conf.view(num_classes, num_classes).double()     # rows: true, cols: predicted
    tp = conf.diagonal()
    support, predicted = conf.sum(1), conf.sum(0)
    denom = support + predicted                              # 2TP + FP + FN
    present = denom > 0
    f1 = torch.where(present, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    f1_macro = f1.sum() / present.sum().clamp(min=1)
    stats = torch.stack([tp.sum(), top5.double(), f1_macro]).cpu().tolist()   # the one sync
    return {"top1": 100.0 * stats[0] / n,
            "top5": 100.0 * stats[1] / n if num_classes >= 5 else None,
            "f1": 100.0 * stats[2]}


def train_step_throughput(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    batch: int = 256,
    device: str | torch.device = "cpu",
    dtype: str = "bfloat16",
    steps: int = 20,
    warmup: int = 5,
) -> dict[str, Any]:
    """Images/s of a plain training step (forward, cross-entropy, backward, SGD step) on
    random data already on the device: the rate an input pipeline has to keep up with.
    ``dtype`` other than float32 runs the forward under autocast; 4-D inputs are channels_last
    on CUDA. The caller's model is copied, not changed."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not accepted; accepted: {', '.join(_DTYPES)}")
    device = torch.device(device)
    m = copy.deepcopy(model).to(device).train()
    x = torch.randn((batch, *tuple(input_shape)), device=device)
    if device.type == "cuda" and x.dim() == 4:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        num_classes = m(x[:2]).shape[1]
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    tdtype = _DTYPES[dtype]

    def step() -> None:
        with torch.autocast(device.type, dtype=tdtype, enabled=tdtype != torch.float32):
            loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": batch * steps / dt, "batch": batch, "device": device_name(device), "dtype": dtype}
