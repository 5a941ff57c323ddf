"""Experiment tracking of a sweep's trials: TensorBoard always, MLflow when asked.

``rankbench.bench.running.run`` opens one :class:`Tracker` per trial on rank 0; its :meth:`Tracker.epoch`
is the training loop's ``on_epoch`` callback (the loop knows nothing about trackers). An epoch
record (``EpochRecord``) carries the phase (``train`` or ``finetune``), the epoch counted over the
whole trial, mean training loss, validation top-1, the lr of the epoch's first step and what the
method reports (``Method.epoch_metrics``: TRP's mean kept rank and each layer's, ``rank/<layer>``).
:meth:`Tracker.export` takes each factorized layer's singular values of the saved deployed model
(:func:`spectra`); :meth:`Tracker.finish` sends the row's final numbers and artifacts. The
driver's part is :func:`sweep_tracking` (``rankbench.bench.running.sweep``), and before that
``rankbench run --mlflow URI`` calls :func:`check_mlflow` and :func:`open_mlflow`.

TensorBoard (``tensorboard --logdir results/<sweep>/tensorboard``): one run per trial, at
``<label>/<model>/<data>/seed<k>-<trial_id>`` (:func:`run_name`; label: the spec's ``label:`` or
``method[variant]``; characters other than letters, digits and ``._,=+-`` become ``_``). Scalars
``<phase>/<name>`` (``train/loss``, ``train/rank/<layer>``, ``finetune/val_top1``...) at step =
epoch; ``final/<name>`` (the row's numbers) and the histograms ``spectrum/<layer>`` at the last
epoch. For the HParams dashboard each trial's run starts with its hyperparameters
(:func:`trial_hparams`) and ends with its status; the driver writes the sweep's experiment (every
trial's hparams; metrics :data:`HPARAM_METRICS`) at the folder's root. Results on a storage URI
(s3://...) get no TensorBoard files: the trial's log says so.

MLflow (the extra ``rankbench[mlflow]``): the driver opens the store and writes the sweep's
experiment (named after the sweep) before any trial, so a bad URI or a store that refuses is one
``error:`` line (exit 2); MLflow 3 takes a database (``sqlite:///PATH.db`` needs no server), a
server (``http://HOST:PORT``), and a folder or ``file:`` URI only with ``MLFLOW_ALLOW_FILE_STORE=true``.
A sweep has one parent run (reused when it runs again); each trial a child run named by
:func:`run_name` (continued when a killed trial resumes) with every flattened spec field as a
param (``train.lr``, ``params.rank``...), the epoch scalars at step = epoch (``train.loss``...),
``final.<name>``, and the artifacts ``row.json``, ``spec.json``, ``spectra.json``, its log and
its compressed model.

A tracker that fails (a full disk, an unreachable MLflow server) never fails the trial: the
error is written once to the trial's log and that tracker is dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from rankbench.bench.checks import bad
from rankbench.bench.trial import Trial
from rankbench.methods.lowrank import Factorized

EpochRecord = dict[str, Any]
# the row's numbers sent to the trackers when the trial ends
FINAL_METRICS = ("top1", "top5", "macs_speedup", "latency_speedup", "params_count", "wall_s")
# what the HParams dashboard compares trials by (TensorBoard tags of the trials' runs)
HPARAM_METRICS = {"final/top1": "top-1 (%)", "final/macs_speedup": "MAC speed-up",
                  "final/latency_speedup": "measured speed-up", "final/wall_s": "wall time (s)"}
# record keys that name the epoch rather than measure it
_IDENTITY = ("phase", "epoch")
MLFLOW_EXTRA = "pip install 'rankbench[mlflow]'"
MLFLOW_ACCEPTED = ("sqlite:///PATH.db (a local store, no server), http(s)://HOST:PORT (an MLflow server), "
                   "postgresql://... or mysql://..., or file:PATH with MLFLOW_ALLOW_FILE_STORE=true")
# the driver's check of an MLflow server: a few seconds, not MLflow's default 7 retries (minutes)
_MLFLOW_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
_PART_MAX = 100   # characters of one folder name in a run's path (the trial id keeps runs apart)


# --- names and hyperparameters ----------------------------------------------------------------

def _part(text: str) -> str:
    """``text`` as one safe folder name: other characters as ``_`` (``timm:vit`` -> ``timm_vit``)."""
    return (_UNSAFE.sub("_", text).strip("_.") or "_")[:_PART_MAX]


def method_label(trial: Trial) -> str:
    """The spec's ``label:`` of the trial's method, else ``method[variant]`` (``method`` without params)."""
    return trial.display_label or (f"{trial.method}[{trial.variant}]" if trial.params else trial.method)


def run_name(trial: Trial) -> str:
    """``<label>/<model>/<data>/seed<k>-<trial_id>``, each part a safe folder name."""
    return "/".join([_part(method_label(trial)), _part(trial.model), _part(str(trial.data_cfg.get("name"))),
                     f"seed{trial.seed}-{trial.id}"])


def tensorboard_dir(sweep_dir: Any, trial: Trial) -> Any:
    """Where a trial's TensorBoard event files go: ``<results>/<sweep>/tensorboard/<run_name>``."""
    return sweep_dir / "tensorboard" / run_name(trial)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``); lists and
    None as JSON text, so every value is a str, int, float or bool."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (str, int, float, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


def trial_hparams(trial: Trial) -> dict[str, Any]:
    """What the HParams dashboard compares a trial by: label, method, its params, model (and its
    options), data, seed and train options, flattened (``params.rank``, ``train.lr``...)."""
    spec = trial.to_dict(with_resources=False)
    keep = {k: spec[k] for k in ("method", "model", "model_options", "params", "data", "seed", "train") if k in spec}
    return {"label": method_label(trial), **flatten(keep)}


def scalars(record: EpochRecord) -> dict[str, float]:
    """The finite numbers of an epoch record, without its phase and epoch."""
    out = {}
    for k, v in record.items():
        if k in _IDENTITY or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def _finals(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(row[k]) for k in FINAL_METRICS if isinstance(row.get(k), (int, float))
            and not isinstance(row.get(k), bool) and math.isfinite(row[k])}


# --- singular-value spectra of the deployed model ----------------------------------------------

def factor_product(layer: Factorized) -> Tensor:
    """The product of a factorized layer's two factors in its scheme's matrix view
    (``rankbench.methods.lowrank.to_matrix`` of the weight it replaces, rank-r): ``(rows, cols)``,
    or a batch (tiles, decoupling's filters). The inverse of the reshapes in ``factorize``."""
    first, second = layer[0].weight.detach(), layer[1].weight.detach()
    r, scheme = layer.rank, layer.scheme
    if scheme == "linear":
        return second @ first
    if scheme == "channel":                   # first (T*r, C/T, kh, kw), second (N, T*r, 1, 1)
        t, n = layer.tiles, second.shape[0]
        a = second.reshape(n, t, r).permute(1, 0, 2)
        return a @ first.reshape(t, r, -1)    # (T, N, C/T*kh*kw)
    if scheme == "spatial":                   # first (r, C, kh, 1), second (N, r, 1, kw)
        a = first.reshape(r, -1).t()
        return a @ second.squeeze(2).permute(1, 0, 2).reshape(r, -1)
    n = second.shape[0]                       # decoupling: first (N*r, C, 1, 1), second (N, r, kh, kw)
    return first.reshape(n, r, -1).permute(0, 2, 1) @ second.reshape(n, r, -1)


def spectra(model: nn.Module) -> dict[str, Tensor]:
    """Each factorized layer's singular values (of :func:`factor_product`, in float64 on the CPU;
    every tile's or filter's, concatenated), by layer name. Layers of other forms (Tucker-2, CP)
    are left out."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Factorized):
            out[name] = torch.linalg.svdvals(factor_product(m).double().cpu()).flatten()
    return out


# --- TensorBoard ----------------------------------------------------------------------------

def _hparams_summary(tag: str, plugin_data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR)
    return summary


def write_hparams_config(tb_root: Path, trials: list[Trial]) -> None:
    """The sweep's HParams experiment at ``tb_root`` (its own run, "."): every hparam any trial
    has and the :data:`HPARAM_METRICS`. TensorBoard takes a run's first summary of a tag, so the
    previous run's file is replaced, not added to."""
    from tensorboard.plugins.hparams import summary_v2 as hp
    from torch.utils.tensorboard import SummaryWriter

    names = sorted({k for t in trials for k in trial_hparams(t)})
    pb = hp.hparams_config_pb([hp.HParam(k) for k in names],
                              [hp.Metric(tag, display_name=shown) for tag, shown in HPARAM_METRICS.items()])
    tb_root.mkdir(parents=True, exist_ok=True)
    for old in tb_root.glob("events.out.tfevents.*"):
        old.unlink()
    with contextlib.closing(SummaryWriter(log_dir=str(tb_root))) as w:
        w.file_writer.add_summary(pb)


class _TensorBoard:
    def __init__(self, logdir: Path, trial: Trial):
        from tensorboard.plugins.hparams import summary_v2 as hp
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))
        # the session's start: what the HParams dashboard lists this trial by
        self.writer.file_writer.add_summary(hp.hparams_pb(trial_hparams(trial), trial_id=run_name(trial)))
        self.writer.flush()

    def epoch(self, record: EpochRecord) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(f"{record['phase']}/{k}", v, global_step=int(record["epoch"]))
        self.writer.flush()   # a trial killed mid-sweep keeps the epochs it finished

    def export(self, spectra: dict[str, Tensor], step: int) -> None:
        for name, s in spectra.items():
            self.writer.add_histogram(f"spectrum/{name}", s.numpy(), global_step=step)
        self.writer.flush()

    def finish(self, row: dict[str, Any], step: int, files: list[Any]) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG

        for k, v in _finals(row).items():
            self.writer.add_scalar(f"final/{k}", v, global_step=step)
        status = api_pb2.STATUS_SUCCESS if row.get("status") == "ok" else api_pb2.STATUS_FAILURE
        end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self.writer.file_writer.add_summary(
            _hparams_summary(SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))
        self.writer.close()


# --- MLflow ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MlflowTarget:
    """Where a sweep's trials log to MLflow: the tracking URI, the sweep's experiment and its
    parent run (None: each trial's run is a top-level run)."""

    uri: str
    experiment_id: str
    parent_run_id: str | None = None


def check_mlflow(uri: str | None) -> None:
    """Refuse ``--mlflow URI`` with one line when it is empty or the mlflow package is not
    installed (before the spec is read)."""
    if uri is None:
        return
    if not uri:
        raise bad("--mlflow", uri, MLFLOW_ACCEPTED)
    if importlib.util.find_spec("mlflow") is None:
        raise bad("--mlflow", uri, MLFLOW_EXTRA, "the mlflow package is not installed")


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP retries cut to seconds (a user's own setting wins), restored after."""
    old = {k: os.environ.get(k) for k in _MLFLOW_CHECK_ENV}
    for k, v in _MLFLOW_CHECK_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing (another process may create it first)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags={"rankbench.sweep": name})
    except Exception:  # noqa: BLE001 (created meanwhile by another trial)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _absolute(uri: str) -> str:
    """A local store's URI with its path made absolute: trials run in other folders (Ray's)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())   # a bare folder (MLflow's file store)
    return uri


def open_mlflow(uri: str | None, sweep: str) -> MlflowTarget | None:
    """The driver opens the store at ``uri`` and writes the sweep's experiment once, before any
    trial: a bad URI, an unreachable server or a store that refuses is one line (``bad``). A
    local store's relative path is resolved here, against the folder ``rankbench run`` runs in."""
    if uri is None:
        return None
    check_mlflow(uri)
    given, uri = uri, _absolute(uri)
    try:
        from mlflow.tracking import MlflowClient

        with _quick_http():
            client = MlflowClient(tracking_uri=uri)
            exp_id = _experiment(client, sweep)
            client.set_experiment_tag(exp_id, "rankbench.opened", time.strftime("%Y-%m-%dT%H:%M:%S"))
    except Exception as e:  # noqa: BLE001 (MLflow raises many kinds; each is the same user error)
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise bad("--mlflow", given, MLFLOW_ACCEPTED,
                  f"the MLflow store refused it ({type(e).__name__}: {detail})") from None
    return MlflowTarget(uri, exp_id)


def _find_run(client: Any, exp_id: str, tags: dict[str, str], statuses: tuple[str, ...]) -> str | None:
    """The newest run of ``exp_id`` with all of ``tags`` whose status is one of ``statuses``."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    for run in client.search_runs([exp_id], filter_string=where, order_by=["attributes.start_time DESC"],
                                  max_results=20):
        if run.info.status in statuses:
            return run.info.run_id
    return None


def _parent_run(target: MlflowTarget, sweep: str, n_trials: int) -> str:
    """The sweep's parent run: the one an earlier run of the sweep made, else a new one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.uri)
    run_id = _find_run(client, target.experiment_id, {"rankbench.role": "sweep"},
                       ("RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"))
    if run_id is None:
        run_id = client.create_run(target.experiment_id, run_name=sweep,
                                   tags={"rankbench.role": "sweep", "rankbench.sweep": sweep}).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "rankbench.trials_to_run", str(n_trials))
    return run_id


class _MLflow:
    def __init__(self, target: MlflowTarget | str, trial: Trial):
        from mlflow.tracking import MlflowClient

        if isinstance(target, str):   # a trial run on its own: its experiment, no parent
            target = MlflowTarget(target, _experiment(MlflowClient(tracking_uri=target), trial.sweep))
        self.client = MlflowClient(tracking_uri=target.uri)
        self.trial = trial
        tags = {"rankbench.trial_id": trial.id, "rankbench.sweep": trial.sweep}
        if target.parent_run_id:
            tags["mlflow.parentRunId"] = target.parent_run_id
        # a trial resumed (a retried worker, the sweep run again) goes on in the run it started
        self.run_id = _find_run(self.client, target.experiment_id, tags, ("RUNNING", "KILLED", "SCHEDULED"))
        if self.run_id is None:
            self.run_id = self.client.create_run(target.experiment_id, run_name=run_name(trial), tags=tags).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._params()

    def _params(self) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        spec = flatten(self.trial.to_dict())
        spec.update({"trial_id": self.trial.id, "variant": self.trial.variant, "label": method_label(self.trial)})
        # MLflow refuses a param logged again with another value: a resumed run keeps its own
        new = [Param(k, str(v)[:6000]) for k, v in sorted(spec.items()) if k not in have]
        for i in range(0, len(new), 100):   # at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def epoch(self, record: EpochRecord) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        step = int(record["epoch"])
        metrics = [Metric(f"{record['phase']}.{k}", v, ms, step) for k, v in scalars(record).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def export(self, spectra: dict[str, Tensor], step: int) -> None:
        self.client.log_dict(self.run_id, {k: v.tolist() for k, v in spectra.items()}, "spectra.json")

    def finish(self, row: dict[str, Any], step: int, files: list[Any]) -> None:
        for k, v in _finals(row).items():
            self.client.log_metric(self.run_id, f"final.{k}", v, step=step)
        self.client.log_dict(self.run_id, row, "row.json")
        self.client.log_dict(self.run_id, self.trial.to_dict(), "spec.json")
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:   # a local path or a RemotePath: both read_bytes
                try:
                    data = f.read_bytes()
                except FileNotFoundError:
                    continue
                local = Path(tmp) / f.name
                local.write_bytes(data)
                self.client.log_artifact(self.run_id, str(local))
        self.client.set_terminated(self.run_id, "FINISHED" if row.get("status") == "ok" else "FAILED")


# --- one trial's trackers, and the sweep's ------------------------------------------------------

class Tracker:
    """The trackers of one trial; ``epoch`` is the training loop's ``on_epoch`` callback."""

    def __init__(self, sinks: dict[str, Any], log: Callable[[str], None]):
        self.sinks = sinks
        self.log = log
        self.last_epoch = 0

    def _each(self, what: str, *args: Any) -> None:
        for name, sink in list(self.sinks.items()):
            try:
                getattr(sink, what)(*args)
            except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
                self.log(f"{name}: stopped logging: {type(e).__name__}: {e}")
                del self.sinks[name]

    def epoch(self, record: EpochRecord) -> None:
        self.last_epoch = max(self.last_epoch, int(record.get("epoch", 0)))
        self._each("epoch", record)

    def export(self, model: nn.Module) -> None:
        """Each factorized layer's singular-value spectrum of the deployed ``model``."""
        if not self.sinks:
            return
        try:
            found = spectra(model)
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            self.log(f"tracking: no singular-value spectra: {type(e).__name__}: {e}")
            return
        if found:
            self._each("export", found, self.last_epoch)

    def finish(self, row: dict[str, Any], files: list[Any] = ()) -> None:
        """Send the row's final numbers and ``files`` (the log, the compressed model; MLflow
        only), then close every tracker."""
        self._each("finish", row, self.last_epoch, list(files))
        self.sinks.clear()


def open_tracker(trial: Trial, sweep_dir: Any, log: Callable[[str], None],
                 mlflow: MlflowTarget | str | None = None, tensorboard: bool = True) -> Tracker:
    """The trackers for ``trial``: TensorBoard under ``sweep_dir`` (a local folder), MLflow at
    ``mlflow`` (the sweep's target from :func:`sweep_tracking`, or a tracking URI). One that
    cannot start is named in ``log`` and left out."""
    sinks: dict[str, Any] = {}
    if tensorboard:
        if isinstance(sweep_dir, Path):
            try:
                sinks["tensorboard"] = _TensorBoard(tensorboard_dir(sweep_dir, trial), trial)
            except Exception as e:  # noqa: BLE001
                log(f"tensorboard: not written: {type(e).__name__}: {e}")
        else:
            log(f"tensorboard: not written for results on a storage URI ({sweep_dir})")
    if mlflow:
        try:
            sinks["mlflow"] = _MLflow(mlflow, trial)
        except Exception as e:  # noqa: BLE001
            uri = mlflow.uri if isinstance(mlflow, MlflowTarget) else mlflow
            log(f"mlflow: not logging to {uri}: {type(e).__name__}: {e}")
    return Tracker(sinks, log)


@contextlib.contextmanager
def sweep_tracking(sweep_dir: Any, name: str, trials: list[Trial], n_todo: int,
                   mlflow: MlflowTarget | str | None, out: Callable[[str], None]) -> Iterator[MlflowTarget | None]:
    """The driver's part around the run of a sweep's trials: the HParams experiment of ``trials``
    under ``<sweep_dir>/tensorboard`` (a local folder), and with ``mlflow`` the sweep's parent
    run, yielded as the target every trial logs under (``None`` without MLflow). The parent run
    ends FINISHED, or KILLED when the sweep stops early."""
    if isinstance(sweep_dir, Path):
        try:
            write_hparams_config(sweep_dir / "tensorboard", trials)
        except Exception as e:  # noqa: BLE001 (tracking never stops a sweep)
            out(f"tensorboard: no HParams experiment written: {type(e).__name__}: {e}")
    target = open_mlflow(mlflow, name) if isinstance(mlflow, str) else mlflow
    if target is None:
        yield None
        return
    try:
        with _quick_http():
            target = dataclasses.replace(target, parent_run_id=_parent_run(target, name, n_todo))
    except Exception as e:  # noqa: BLE001
        raise bad("--mlflow", target.uri, MLFLOW_ACCEPTED, f"no parent run for the sweep ({type(e).__name__}: {e})") from None
    status = "KILLED"
    try:
        yield target
        status = "FINISHED"
    finally:
        from mlflow.tracking import MlflowClient

        with contextlib.suppress(Exception):   # a store gone now must not hide why the sweep stopped
            MlflowClient(tracking_uri=target.uri).set_terminated(target.parent_run_id, status)
