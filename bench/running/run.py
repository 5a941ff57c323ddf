"""One trial, as a plain function (no Ray): Trial -> Result row, written atomically.

Three kinds of method (``rankbench.methods.api.base.Method``):
- ``dense``: train from scratch, save ``baseline.pt`` for every method that starts from it;
- ``starts_from_baseline`` (svd, arsvd, ...): load that baseline's weights, attach, compress,
  then fine-tune ``finetune_epochs`` epochs;
- training-time (trp, deeptwist, ...): attach to a fresh model, train every epoch with the
  method's hooks, compress (then fine-tune if the method asks for it).
Fine-tuning runs without the method's hooks and ``param_groups`` unless the method sets
``hooks_in_finetune``; each phase trains with its own recipe (``TrainConfig.train_phase`` /
``finetune_phase``). With ``train.ema`` a phase ends with the model holding its averaged
weights, so compress, the final evaluation and the saved model all use them.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rankbench.bench.data import build_data
from rankbench.bench.measure.metrics import compare_latency, count_macs, count_params, evaluate
from rankbench.bench.models.builtin import build_model
from rankbench.bench.results.compressed import compressed_path, save_compressed
from rankbench.bench.results.filesystem import open_append, read_bytes_io, resolve_against
from rankbench.bench.results.provenance import code_identity
from rankbench.bench.results.row import clean, empty_row
from rankbench.bench.results.store import Store, atomic_torch_save, previous, set_aside
from rankbench.bench.running.tracking import MlflowTarget, open_tracker
from rankbench.bench.train.config import TrainConfig
from rankbench.bench.train.ddp import (DistContext, check_identical, current, gather_objects, peer_lost, sum_over_ranks,
                                      sync_batch_norm, wrap)
from rankbench.bench.train.loop import Loop, Progress, train
from rankbench.bench.trial import Trial
from rankbench.methods.api.base import Context, Method, MethodReport, start
from rankbench.methods.api.registry import build, needs_baseline


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
              mlflow: MlflowTarget | str | None = None) -> dict:
    """Run one trial end to end and write its Result row to ``results/<sweep>/trials/<id>.json``.

    ``base_dir``: where relative paths of the spec (data.root, model.pretrained) start; the
    sweep passes the directory ``rankbench run`` was started in (Ray workers run elsewhere).

    Returns the row. Exceptions inside the trial do not propagate: they become a row with
    ``status: failed``, ``error`` ("Type: message") and ``last_good_epoch``.

    ``dist``: this process's rank in a data-parallel trial (``rankbench.bench.train.ddp``; the processes are
    started by ``rankbench.bench.running.distributed``). Rank 0 writes the log, checkpoints and the row; the other
    ranks write nothing and return their partial row. Under DDP a failure is raised after rank 0 wrote its row: the other ranks would otherwise wait
    forever in the next collective, and raising makes Ray Train stop the whole worker group.

    Rank 0 also sends every epoch's metrics, the deployed model's spectra and the row's numbers
    to TensorBoard (``<results>/<sweep>/tensorboard/<run name>``) and, with ``mlflow`` (the sweep's
    ``MlflowTarget`` or a tracking URI), to MLflow (``rankbench.bench.running.tracking``).
    """
    base = Path(base_dir or os.getcwd())
    row = empty_row(trial)
    row["code"] = code_identity(trial.method)
    if dist is not None and not dist.is_main:
        _run(trial, row, _Env(Store(results_root, trial.sweep), Progress(), lambda line: None, base, dist))
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
        node = ray_node()
        if node is not None:     # a trial retried after its node was lost starts again elsewhere
            _log(f"on node {node['ip']} (Ray node {node['id']})")
        tracker = open_tracker(trial, store.dir, _log, mlflow=mlflow)
        try:
            _run(trial, row, _Env(store, progress, _log, base, dist, on_epoch=tracker.epoch,
                                  on_export=tracker.export))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (every failure becomes a row; Ctrl-C still propagates)
            if dist is not None and dist.world_size > 1 and peer_lost(e):
                # another rank's node or process is gone: not the trial's fault, and no row, so
                # Ray starts the group again and it resumes from the last epoch checkpoint
                _log(f"trial {trial.id}: a rank was lost ({type(e).__name__}: {str(e)[:200]}); "
                     f"the group restarts from the last epoch checkpoint")
                raise
            row["status"] = "failed"
            row["error"] = f"{type(e).__name__}: {e}"
            row["last_good_epoch"] = progress.last_good_epoch
            _log("".join(traceback.format_exception(e)).rstrip())
            _log(f"trial {trial.id}: failed: {row['error']}")
            failure = e
        row["history"] = progress.history
        row = clean(row)
        try:
            store.write_result(row)
        except OSError as e:
            # no row (disk full, folder gone): the trial stays not-done and keeps its epoch
            # checkpoint, so the next run resumes it; say why here, where `rankbench run` points
            with contextlib.suppress(OSError):
                _log(f"trial {trial.id}: result not written: {type(e).__name__}: {e}")
            raise
        if row["status"] == "ok":
            _finished(trial, row, store, _log)
        # after the row is written (a row that could not be written leaves the trackers' runs
        # open: the trial runs again and goes on in them), with the log up to its last line
        tracker.finish(row, [store.log_path(trial.id), compressed_path(store.trials_dir, trial.id)])
    if failure is not None and dist is not None and dist.world_size > 1:
        raise failure
    return row


def _finished(trial: Trial, row: dict[str, Any], store: Store, log: Callable[[str], None]) -> None:
    """An ok row is safely written: its resume points go (baseline.pt stays), the log says so."""
    for p in (store.epoch_checkpoint(trial.id), store.checkpoint_dir(trial.id) / "finetune.pt"):
        for q in (p, previous(p)):
            with contextlib.suppress(FileNotFoundError):
                q.unlink()
    with contextlib.suppress(OSError):
        store.checkpoint_dir(trial.id).rmdir()   # only when empty (no baseline.pt)
    # after the row is written nothing may fail: a metric that came out null prints as such
    top1, speedup = row.get("top1"), row.get("macs_speedup")
    log(f"trial {trial.id}: ok top-1 {'n/a' if top1 is None else f'{top1:.2f}%'} "
        f"macs x{'n/a' if speedup is None else f'{speedup:.2f}'}")


@dataclass
class _Env:
    """Where one trial runs and what it reports to: its results store, log, progress and
    trackers, the folder relative spec paths start from, and its rank (None: one process)."""

    store: Store
    progress: Progress
    log: Callable[[str], None]
    base_dir: Path
    dist: DistContext | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    on_export: Callable[[nn.Module], None] | None = None   # the deployed model, once saved

    @property
    def world(self) -> int:
        return self.dist.world_size if self.dist is not None else 1

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main


@dataclass
class _Built:
    """What a trial is made of once built: data, model (its builder options too), method."""

    data: Any
    model: nn.Module
    model_opts: dict[str, Any]
    method: Method
    from_baseline: bool
    device: torch.device
    config: TrainConfig


def _run(trial: Trial, row: dict[str, Any], env: _Env) -> None:
    """Train, compress, fine-tune and measure ``trial``, filling ``row``
    (``rankbench.bench.results.row``) as it goes."""
    t_start = time.perf_counter()
    b = _build(trial, env)
    row["train_device"] = str(b.device)
    _record_nodes(trial, row, env, b.from_baseline)
    if b.from_baseline:
        row["baseline_id"] = _load_baseline(trial, b.model, env.store)
    model, forward = _attach(trial, b, env)
    if not b.from_baseline:
        _train_phase(trial, row, b, env, model, forward)
    small = _finetune_phase(trial, row, b, env, b.method.compress(model))
    # work done before a resume counts too: the row reports what the compression cost in all
    wall_s = time.perf_counter() - t_start + _resumed_seconds(env.progress)
    small.eval()
    metrics = evaluate(small, b.data.val, b.data.num_classes)   # under DDP: summed over every rank's shard
    skipped = sum_over_ranks(b.data.skipped)                     # a collective: before rank 0 goes on alone
    if not env.is_main:
        return   # rank 0 measures cost and writes the row
    _record_data(row, b.data, skipped, env.log)
    dense = model if trial.is_baseline else build_model(trial.model, b.data.num_classes, tuple(b.data.input_shape),
                                                        **b.model_opts)
    row.update(_measure(trial, small, dense, tuple(b.data.input_shape)))
    row.update(_report_fields(b.method.report(), row["conv_macs"], row["dense_conv_macs"]))
    row.update({"top1": metrics.get("top1"), "top5": metrics.get("top5"), "f1": metrics.get("f1"), "wall_s": wall_s,
                "gpu_hours": wall_s / 3600.0 * float(trial.resources_cfg.get("gpus", 0) if b.device.type == "cuda" else 0)})
    row["compressed_model"] = _save_model(trial, row, b, small, env.store)
    if env.on_export is not None:
        env.on_export(small)


def _build(trial: Trial, env: _Env) -> _Built:
    """Threads and seeds, then the trial's data, method and model on its device."""
    # a distributed trial's CPUs are shared by its workers; one trial per core on a laptop: more
    # threads than the trial's CPUs oversubscribes the machine
    torch.set_num_threads(max(1, int(trial.resources_cfg.get("cpus", 1) / env.world)))
    _seed_everything(trial.seed)
    device = env.dist.device if env.dist is not None else _device(trial)
    data_cfg = trial.data_cfg
    if data_cfg.get("root"):
        data_cfg["root"] = resolve_against(data_cfg["root"], env.base_dir)
    tc = TrainConfig.of(trial)
    # train.batch_size is the global batch: each of the `world` ranks gets its exact share
    shard = {"rank": env.dist.rank, "world_size": env.world} if env.dist is not None else {}
    data = build_data(data_cfg, trial.seed, tc.batch_size // env.world, tc.augment, device, **shard)
    model_opts = trial.model_cfg
    pretrained = resolve_against(model_opts.pop("pretrained", None), env.base_dir)
    method = build(trial.method, trial.params_dict)
    from_baseline = needs_baseline(trial.method)
    # a method that starts from the baseline gets the baseline's weights: no need to read pretrained
    # train.drop_path: timm's drop_path_rate (the spec check refused it for a model without one)
    model = build_model(trial.model, data.num_classes, data.input_shape,
                        pretrained=None if from_baseline else pretrained, **model_opts,
                        **({"drop_path_rate": tc.drop_path} if tc.drop_path else {}))
    if env.is_main:
        env.store.checkpoint_dir(trial.id).mkdir(parents=True, exist_ok=True)
    return _Built(data, model, model_opts, method, from_baseline, device, tc)


def _record_nodes(trial: Trial, row: dict[str, Any], env: _Env, from_baseline: bool) -> None:
    """Where the trial runs (the Ray node, when Ray runs it; every rank's under DDP) and where
    its baseline ran."""
    node = ray_node()
    if node is not None:
        row["node"] = node
    if current() is not None:    # a collective: every rank of a data-parallel trial is here
        row["rank_nodes"] = gather_objects(node)
        if node is not None:
            env.log("ranks on Ray nodes " + " ".join(n["id"] if n else "?" for n in row["rank_nodes"]))
    base = env.store.read_result(trial.baseline().id) if from_baseline else None
    if base is not None and base.get("node"):
        row["baseline_node"] = base["node"]


def ray_node() -> dict[str, str] | None:
    """This process's Ray node: {id, ip}; None outside a Ray worker or driver."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        node_id = ray.get_runtime_context().get_node_id()
        # the address the node registered with (what `ray status` and the preflight name)
        ip = next((n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node_id), None)
        return {"id": node_id, "ip": ip or ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 (no Ray, or a Ray without a runtime context here)
        return None


def _load_baseline(trial: Trial, model: nn.Module, store: Store) -> str:
    """Load the trained baseline's weights into ``model``; return the baseline's trial id."""
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
    return base.id


def _attach(trial: Trial, b: _Built, env: _Env) -> tuple[nn.Module, nn.Module | None]:
    """Attach the method to the model on its device; under DDP, wrap the result. Returns the
    model and the module that runs its training forward."""
    model = b.model.to(b.device)
    if b.config.sync_bn and env.world > 1:
        # before attach: SyncBatchNorm replaces modules, and the hooks must see the final model
        model = sync_batch_norm(model)
    epochs = 0 if b.from_baseline else b.config.epochs
    ctx = Context(input_shape=tuple(b.data.input_shape), num_classes=b.data.num_classes,
                  steps_per_epoch=b.data.steps_per_epoch, epochs=epochs, device=b.device, log=env.log,
                  train_batches=_train_batches(b.data.train, b.device))
    start(b.method, model, ctx)
    # after attach: DDP must hold (and all-reduce) the layers a method may have replaced
    return wrap(model, env.dist)


def _loop(env: _Env, device: torch.device, checkpoint: Path, forward: nn.Module | None) -> Loop:
    return Loop(device=device, checkpoint=checkpoint, progress=env.progress, log=env.log, forward=forward,
                on_epoch=env.on_epoch)


def _train_phase(trial: Trial, row: dict[str, Any], b: _Built, env: _Env, model: nn.Module,
                 forward: nn.Module | None) -> None:
    """Train with the method's hooks; a baseline saves its weights for the trials that start from it."""
    tc = b.config
    train(model, b.data, tc, tc.train_phase(), b.method,
          _loop(env, b.device, env.store.epoch_checkpoint(trial.id), forward))
    if env.world > 1:
        row["ddp"] = {"world_size": env.world, "backend": env.dist.backend, "sync_bn": tc.sync_bn,
                      "weights_sha256": check_identical(model, "train")}
    if trial.is_baseline and env.is_main:
        atomic_torch_save(model.state_dict(), env.store.baseline_weights(trial.id))


def _finetune_phase(trial: Trial, row: dict[str, Any], b: _Built, env: _Env, small: nn.Module) -> nn.Module:
    """Fine-tune the compressed model for the method's ``finetune_epochs`` (none: as it is), at
    ``train.finetune_lr`` with the fine-tuning recipe (``train.finetune``; a cosine decay), and
    with the method's hooks and ``param_groups`` only when it sets ``hooks_in_finetune``."""
    fe = int(b.method.finetune_epochs)
    if fe <= 0:
        return small
    tc = b.config
    small, small_forward = wrap(small, env.dist)   # BN layers were already converted with model
    phase = tc.finetune_phase(fe, epoch_offset=0 if b.from_baseline else tc.epochs)
    method = b.method if b.method.hooks_in_finetune else None
    ckpt = env.store.checkpoint_dir(trial.id) / "finetune.pt"
    train(small, b.data, tc, phase, method, _loop(env, b.device, ckpt, small_forward))
    if env.world > 1:
        row.setdefault("ddp", {"world_size": env.world, "backend": env.dist.backend, "sync_bn": tc.sync_bn})
        row["ddp"]["finetuned_weights_sha256"] = check_identical(small, "finetune")
    return small


def _record_data(row: dict[str, Any], data: Any, skipped: int, log: Callable[[str], None]) -> None:
    """How much data the numbers came from (a paper diff needs the dataset's full size)."""
    row["skipped_images"] = skipped
    row["train_images"], row["val_images"] = data.train_size or None, data.val_size or None
    if skipped:
        log(f"{skipped} unreadable images skipped in all (every rank, every epoch and evaluation)")


def _measure(trial: Trial, small: nn.Module, dense: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """MACs, parameters and latency of the deployed model next to the dense architecture."""
    mc = trial.measure_cfg
    macs, dense_macs = count_macs(small, shape), count_macs(dense, shape)
    conv_macs, dense_conv_macs = count_macs(small, shape, conv_only=True), count_macs(dense, shape, conv_only=True)
    # dense and compressed timed in one round-robin run, each on its fastest layout of one menu
    models = {"compressed": small} if trial.is_baseline else {"compressed": small, "dense": dense}
    lats = compare_latency(models, shape, device=mc["latency_device"], dtype=mc["latency_dtype"],
                           batch=mc["latency_batch"], repeats=mc["latency_repeats"],
                           layout=mc.get("latency_layout", "auto"))
    lat = lats["compressed"]
    dense_lat = lats.get("dense", lat)
    return {
        "conv_macs": int(conv_macs), "dense_conv_macs": int(dense_conv_macs),
        "conv_macs_speedup": dense_conv_macs / conv_macs if conv_macs else None,
        "macs": int(macs), "dense_macs": int(dense_macs),
        "macs_speedup": dense_macs / macs if macs else None,
        "params_count": count_params(small), "dense_params_count": count_params(dense),
        "latency_ms": lat["ms"], "dense_latency_ms": dense_lat["ms"],
        "latency_speedup": dense_lat["ms"] / lat["ms"] if lat["ms"] else None,
        "latency_device": lat["device"], "latency_dtype": lat["dtype"], "latency_batch": lat["batch"],
        "latency_layout": lat["layout"], "dense_latency_layout": dense_lat["layout"],
        # every layout's median ms (and why any was skipped), so the choice can be checked
        "latency_layouts": {k: {"ms": v["candidates"], "skipped": v["skipped"]} for k, v in lats.items()},
    }


def _report_fields(report: MethodReport, conv_macs: int, dense_conv_macs: int) -> dict[str, Any]:
    """The method's report in the row: layers, scheme, rule, its own info, and the conv MACs its
    paper would count."""
    claimed = claimed_conv_macs(conv_macs, report)
    return {
        "claimed_conv_macs": claimed, "claimed_conv_speedup": dense_conv_macs / claimed if claimed else None,
        "layers": [dataclasses.asdict(L) if dataclasses.is_dataclass(L) else dict(L) for L in report.layers],
        "scheme": report.scheme, "rule": report.rule,
        # whatever else the method reports (e.g. how often TRP's warm start held) rides along as is
        "method_info": dict(report.info),
    }


def _save_model(trial: Trial, row: dict[str, Any], b: _Built, small: nn.Module, store: Store) -> str:
    """The deployed model is an output too: saved beside the row (before it, so an ok row always
    has its model), rebuilt by ``rankbench.bench.load_compressed`` from the reports just taken."""
    mpath = compressed_path(store.trials_dir, trial.id)
    save_compressed(small, mpath, model_name=trial.model, model_options=b.model_opts,
                    num_classes=b.data.num_classes, input_shape=tuple(b.data.input_shape), layers=row["layers"],
                    method=trial.method, params=trial.params_dict,
                    info={"trial_id": trial.id, "sweep": trial.sweep, "seed": trial.seed, "top1": row["top1"]})
    return mpath.name


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
