"""One trial, as a plain function (no Ray): Trial -> Result row, written atomically.

Three kinds of method (``methods.base.Method``):
- ``dense``: train from scratch, save ``baseline.pt`` for every method that starts from it;
- ``starts_from_baseline`` (svd, arsvd, ...): load that baseline's weights, attach, compress,
  then fine-tune ``finetune_epochs`` epochs;
- training-time (trp, deeptwist, ...): attach to a fresh model, train every epoch with the
  method's hooks, compress (then fine-tune if the method asks for it).
Then measure the deployed model next to the dense architecture. A failure still writes a row
(status failed, error, last good epoch) so a sweep never loses track of a trial.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from bench.ddp import DistContext, check_identical, sum_over_ranks, sync_batch_norm, wrap
from bench.fs import open_append, read_bytes_io
from bench.row import clean, empty_row
from bench.store import Store, atomic_torch_save, previous, set_aside
from bench.train import Progress, train
from bench.tracking import open_tracker
from bench.trial import Trial
from methods.base import Method, MethodReport, start


class BaselineMissing(RuntimeError):
    """A method that starts from the dense baseline ran before the baseline was saved."""


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(trial: Trial) -> torch.device:
    # a trial asks for GPUs through resources; Ray hides GPUs from trials that asked for none
    if trial.resources_cfg.get("gpus", 0) > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def run_trial(trial: Trial, results_root: Path | str, log: Callable[[str], None] | None = None,
              base_dir: Path | str | None = None, dist: DistContext | None = None,
              mlflow: str | None = None) -> dict:
    """Run one trial end to end and write its Result row to ``results/<sweep>/trials/<id>.json``.

    ``base_dir``: where relative paths of the spec (data.root, model.pretrained) start; the
    sweep passes the directory ``rankbench run`` was started in (Ray workers run elsewhere).

    Returns the row. Exceptions inside the trial do not propagate: they become a row with
    ``status: failed``, ``error`` ("Type: message") and ``last_good_epoch``.

    ``dist``: this process's rank in a data-parallel trial (``bench.ddp``; the processes are
    started by ``bench.distributed``). Rank 0 writes the log, checkpoints and the row; the other
    ranks write nothing and return their partial row. Under DDP a failure is raised after rank 0 wrote its row: the other ranks would otherwise wait
    forever in the next collective, and raising makes Ray Train stop the whole worker group.

    Rank 0 also sends every epoch's metrics to TensorBoard (``<results>/<sweep>/tensorboard/<id>``)
    and, with ``mlflow`` (a tracking URI), to MLflow (``bench.tracking``).
    """
    base = Path(base_dir or os.getcwd())
    row = empty_row(trial)
    if dist is not None and not dist.is_main:
        _run(trial, row, Store(results_root, trial.sweep), Progress(), lambda line: None, base, dist)
        return row
    store = Store(results_root, trial.sweep)
    store.log_path(trial.id).parent.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    failure: Exception | None = None
    with open_append(store.log_path(trial.id)) as logf:
        def _log(line: str) -> None:
            logf.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            if log is not None:
                log(line)

        _log(f"trial {trial.id}: {trial.label}")
        tracker = open_tracker(trial, store.dir, _log, mlflow=mlflow)
        try:
            _run(trial, row, store, progress, _log, base, dist, on_epoch=tracker.epoch)
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (every failure becomes a row; Ctrl-C still propagates)
            row["status"] = "failed"
            row["error"] = f"{type(e).__name__}: {e}"
            row["last_good_epoch"] = progress.last_good_epoch
            _log("".join(traceback.format_exception(e)).rstrip())
            _log(f"trial {trial.id}: failed: {row['error']}")
            failure = e
        row["history"] = progress.history
        row = clean(row)
        tracker.finish(row)
        try:
            store.write_result(row)
        except OSError as e:
            # no row (disk full, folder gone): the trial stays not-done and keeps its epoch
            # checkpoint, so the next run resumes it; say why here, where `rankbench run` points
            with contextlib.suppress(OSError):
                _log(f"trial {trial.id}: result not written: {type(e).__name__}: {e}")
            raise
        if row["status"] == "ok":
            # the result is safely written: resume points are no longer needed (baseline.pt stays)
            for p in (store.epoch_checkpoint(trial.id), store.checkpoint_dir(trial.id) / "finetune.pt"):
                for q in (p, previous(p)):
                    with contextlib.suppress(FileNotFoundError):
                        q.unlink()
            with contextlib.suppress(OSError):
                store.checkpoint_dir(trial.id).rmdir()   # only when empty (no baseline.pt)
            # after the row is written nothing may fail: a metric that came out null prints as such
            top1, speedup = row.get("top1"), row.get("macs_speedup")
            _log(f"trial {trial.id}: ok top-1 {'n/a' if top1 is None else f'{top1:.2f}%'} "
                 f"macs x{'n/a' if speedup is None else f'{speedup:.2f}'}")
    if failure is not None and dist is not None and dist.world_size > 1:
        raise failure
    return row


def _resolve(path: Any, base_dir: Path) -> Any:
    if isinstance(path, str) and path and not Path(path).expanduser().is_absolute():
        return str(base_dir / Path(path).expanduser())
    return path


def _run(trial: Trial, row: dict[str, Any], store: Store, progress: Progress, log: Callable[[str], None],
         base_dir: Path, dist: DistContext | None = None,
         on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Train, compress, fine-tune and measure ``trial``, filling ``row`` (``bench.row``) as it goes."""
    from bench.data import build_data
    from bench.measure import compare_latency, count_macs, count_params, evaluate
    from bench.models import build_model
    from methods.base import Context
    from methods.registry import build

    t_start = time.perf_counter()
    tc = trial.train_cfg
    mc = trial.measure_cfg
    world = dist.world_size if dist is not None else 1
    main = dist is None or dist.is_main
    cpus = trial.resources_cfg.get("cpus", 1) / world   # a distributed trial's CPUs are shared by its workers
    # one trial per core on a laptop: more threads than the trial's CPUs oversubscribes the machine
    torch.set_num_threads(max(1, int(cpus)))
    _seed_everything(trial.seed)
    device = dist.device if dist is not None else _device(trial)

    data_cfg = trial.data_cfg
    if data_cfg.get("root"):
        data_cfg["root"] = _resolve(data_cfg["root"], base_dir)
    # train.batch_size is the global batch: each of the `world` ranks gets its exact share
    data = build_data(data_cfg, trial.seed, tc["batch_size"] // world, tc["augment"], device,
                      **({"rank": dist.rank, "world_size": world} if dist is not None else {}))
    model_opts = trial.model_cfg
    pretrained = _resolve(model_opts.pop("pretrained", None), base_dir)
    method = build(trial.method, trial.params_dict)
    from_baseline = trial.method != "dense" and method.starts_from_baseline
    # a method that starts from the baseline gets the baseline's weights: no need to read pretrained
    model = build_model(trial.model, data.num_classes, data.input_shape,
                        pretrained=None if from_baseline else pretrained, **model_opts)
    ckdir = store.checkpoint_dir(trial.id)
    if main:
        ckdir.mkdir(parents=True, exist_ok=True)
    fit = dict(momentum=tc["momentum"], weight_decay=tc["weight_decay"], amp=tc["amp"],
               channels_last=tc["channels_last"], compile=tc.get("compile", False), device=device,
               progress=progress, log=log, on_epoch=on_epoch)
    row["train_device"] = str(device)
    sync_bn = bool(tc.get("sync_bn", False))
    train_epochs = 0 if from_baseline else tc["epochs"]

    if from_baseline:
        base = trial.baseline()
        bpath = store.baseline_weights(base.id)
        if not bpath.exists():
            raise BaselineMissing(
                f"baseline {base.id} ({base.label}) has no saved weights at {bpath}; "
                f"run the dense baseline first (rankbench run trains it before the trials that start from it)")
        try:
            with read_bytes_io(bpath) as f:
                model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 (truncated or damaged: named, set aside, trained again)
            moved = set_aside(bpath)
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            raise BaselineMissing(
                f"baseline weights {bpath} are unreadable ({type(e).__name__}: {detail}); set aside as "
                f"{moved.name}: run the same command again to train baseline {base.id} again") from None
        row["baseline_id"] = base.id
    model.to(device)
    if sync_bn and world > 1:
        # before attach: SyncBatchNorm replaces modules, and the hooks must see the final model
        model = sync_batch_norm(model)
    ctx = Context(input_shape=tuple(data.input_shape), num_classes=data.num_classes,
                  steps_per_epoch=data.steps_per_epoch, epochs=train_epochs, device=device, log=log,
                  train_batches=_train_batches(data.train, device))
    start(method, model, ctx)
    # after attach: DDP must hold (and all-reduce) the layers a method may have replaced
    model, forward = wrap(model, dist)
    if not from_baseline:
        train(model, data, epochs=train_epochs, lr=tc["lr"], schedule=tc["schedule"],
              milestones=tc["milestones"], gamma=tc["gamma"], method=method,
              checkpoint=store.epoch_checkpoint(trial.id), phase="train", forward=forward, **fit)
        if dist is not None and world > 1:
            row["ddp"] = {"world_size": world, "backend": dist.backend, "sync_bn": sync_bn,
                          "weights_sha256": check_identical(model, "train")}
        if trial.method == "dense" and main:
            atomic_torch_save(model.state_dict(), store.baseline_weights(trial.id))

    small = method.compress(model)
    fe = int(method.finetune_epochs)
    if fe > 0:
        # fine-tuning the factorized network: small lr, cosine decay
        small, small_forward = wrap(small, dist)   # BN layers were already converted with model
        train(small, data, epochs=fe, lr=tc["finetune_lr"], schedule="cosine", method=None,
              checkpoint=ckdir / "finetune.pt", phase="finetune", epoch_offset=train_epochs,
              forward=small_forward, **fit)
        if dist is not None and world > 1:
            row.setdefault("ddp", {"world_size": world, "backend": dist.backend, "sync_bn": sync_bn})
            row["ddp"]["finetuned_weights_sha256"] = check_identical(small, "finetune")
    # work done before a resume counts too: the row reports what the compression cost in all
    wall_s = time.perf_counter() - t_start + _resumed_seconds(progress)

    # --- measure the deployed model next to the dense architecture ---------------------------
    small.eval()
    metrics = evaluate(small, data.val, data.num_classes)   # under DDP: summed over every rank's shard
    skipped = sum_over_ranks(data.skipped)                   # a collective: before rank 0 goes on alone
    if not main:
        return   # rank 0 measures cost and writes the row
    row["skipped_images"] = skipped
    # how much data the numbers came from: a paper diff needs the dataset's full size
    row["train_images"], row["val_images"] = data.train_size or None, data.val_size or None
    if skipped:
        log(f"{skipped} unreadable images skipped in all (every rank, every epoch and evaluation)")
    shape = tuple(data.input_shape)
    dense = model if trial.method == "dense" else build_model(trial.model, data.num_classes, shape, **model_opts)
    macs, dense_macs = count_macs(small, shape), count_macs(dense, shape)
    conv_macs, dense_conv_macs = count_macs(small, shape, conv_only=True), count_macs(dense, shape, conv_only=True)
    # dense and compressed timed in one round-robin run, each on its fastest layout of one menu
    models = {"compressed": small} if trial.method == "dense" else {"compressed": small, "dense": dense}
    lats = compare_latency(models, shape, device=mc["latency_device"], dtype=mc["latency_dtype"],
                           batch=mc["latency_batch"], repeats=mc["latency_repeats"],
                           layout=mc.get("latency_layout", "auto"))
    lat = lats["compressed"]
    dense_lat = lats.get("dense", lat)
    report = method.report()
    claimed = claimed_conv_macs(conv_macs, report)
    gpus = trial.resources_cfg.get("gpus", 0) if device.type == "cuda" else 0
    row.update({
        "conv_macs": int(conv_macs), "dense_conv_macs": int(dense_conv_macs),
        "conv_macs_speedup": dense_conv_macs / conv_macs if conv_macs else None,
        "claimed_conv_macs": claimed, "claimed_conv_speedup": dense_conv_macs / claimed if claimed else None,
        "top1": metrics.get("top1"), "top5": metrics.get("top5"), "f1": metrics.get("f1"),
        "macs": int(macs), "dense_macs": int(dense_macs),
        "macs_speedup": dense_macs / macs if macs else None,
        "params_count": count_params(small), "dense_params_count": count_params(dense),
        "latency_ms": lat["ms"], "dense_latency_ms": dense_lat["ms"],
        "latency_speedup": dense_lat["ms"] / lat["ms"] if lat["ms"] else None,
        "latency_device": lat["device"], "latency_dtype": lat["dtype"], "latency_batch": lat["batch"],
        "latency_layout": lat["layout"], "dense_latency_layout": dense_lat["layout"],
        # every layout's median ms (and why any was skipped), so the choice can be checked
        "latency_layouts": {k: {"ms": v["candidates"], "skipped": v["skipped"]} for k, v in lats.items()},
        "layers": [dataclasses.asdict(L) if dataclasses.is_dataclass(L) else dict(L) for L in report.layers],
        "scheme": report.scheme, "rule": report.rule,
        # whatever else the method reports (e.g. how often TRP's warm start held) rides along as is
        "method_info": dict(report.info),
        "wall_s": wall_s, "gpu_hours": wall_s / 3600.0 * float(gpus),
    })
    # the deployed model is an output too: saved beside the row (before it, so an ok row always
    # has its model), rebuilt by bench.load_compressed from the reports just taken
    from bench.compressed import compressed_path, save_compressed

    mpath = compressed_path(store.trials_dir, trial.id)
    save_compressed(small, mpath, model_name=trial.model, model_options=model_opts,
                    num_classes=data.num_classes, input_shape=shape, layers=row["layers"],
                    method=trial.method, params=trial.params_dict,
                    info={"trial_id": trial.id, "sweep": trial.sweep, "seed": trial.seed, "top1": row["top1"]})
    row["compressed_model"] = mpath.name


def claimed_conv_macs(conv_macs: int, report: MethodReport) -> int:
    """``conv_macs`` with every layer the method lists in ``info["counted_dense"]`` counted at its
    dense MACs instead of its factorized ones: the count the method's paper would print for
    this model (TRP's official formula counts stride-2 convs dense in every scheme)."""
    names = set(report.info.get("counted_dense", ()))
    layers = [dataclasses.asdict(L) if dataclasses.is_dataclass(L) else dict(L) for L in report.layers]
    delta = sum(int(L["dense_macs"]) - int(L["macs"]) for L in layers
                if L["name"] in names and L.get("dense_macs") is not None and L.get("macs") is not None)
    return int(conv_macs) + delta


def _train_batches(loader: Any, device: torch.device) -> Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]:
    """``Context.train_batches``: the first ``n`` batches (at most one epoch) of the training split
    on ``device``, without augmentation where the loader can turn it off, and without moving the
    loader to its next epoch (the training loop sees the epochs it would have seen)."""
    def take(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        epoch = getattr(loader, "epoch", None)
        augment = getattr(loader, "augment", None)
        if augment is not None:
            loader.augment = None
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for x, y in loader:
                if len(out) >= n:
                    break
                out.append((x.to(device), y.to(device)))
        finally:
            if augment is not None:
                loader.augment = augment
            if epoch is not None and hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
        return out

    return take


def _resumed_seconds(progress: Progress) -> float:
    """Seconds of epochs run by earlier attempts (loaded from a checkpoint), not by this one."""
    return max(0.0, progress.elapsed_s - progress.ran_s)
