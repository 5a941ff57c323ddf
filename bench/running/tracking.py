"""Per-epoch metrics of a trial sent to experiment trackers: TensorBoard always, MLflow when asked.

``rankbench.bench.running.run`` opens one :class:`Tracker` per trial on rank 0 and hands its :meth:`Tracker.epoch`
to the training loop as ``rankbench.bench.train.loop.train``'s ``on_epoch`` callback; the loop itself knows
nothing about trackers. Each epoch record (``EpochRecord``) carries the phase (``train`` or
``finetune``), the epoch counted over the whole trial, the mean training loss, validation top-1,
the learning rate of the epoch's first step and whatever the method reports for the epoch
(``Method.epoch_metrics``, e.g. TRP's mean kept rank).

TensorBoard: ``<results>/<sweep>/tensorboard/<trial_id>/`` (one folder per sweep, one run per
trial: ``tensorboard --logdir results/<sweep>/tensorboard``), scalars tagged ``<phase>/<name>``
(``train/loss``, ``train/val_top1``, ``train/lr``, ``train/mean_kept_rank``, ``finetune/loss``...)
at step = epoch, and the row's final numbers under ``final/<name>`` at the last epoch. Results on
a storage URI (s3://...) get no TensorBoard files: the trial's log says so.

MLflow (``rankbench run --mlflow URI``, the optional extra ``rankbench[mlflow]``): one
experiment per sweep, one run per trial (named by the trial's label, tagged with its id), the
trial's identity as params, the same scalars as metrics (``train.loss``...) and the final numbers.

A tracker that fails (a full disk, an unreachable MLflow server) never fails the trial: the
error is written once to the trial's log and that tracker is dropped.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable

from rankbench.bench.checks import bad
from rankbench.bench.trial import Trial

EpochRecord = dict[str, Any]
# the row's numbers sent to the trackers when the trial ends
FINAL_METRICS = ("top1", "top5", "macs_speedup", "latency_speedup", "params_count", "wall_s")
# record keys that name the epoch rather than measure it
_IDENTITY = ("phase", "epoch")
MLFLOW_EXTRA = "pip install 'rankbench[mlflow]'"


def check_mlflow(uri: str | None) -> None:
    """Refuse ``--mlflow URI`` with one line when the mlflow package is not installed (before Ray)."""
    if uri is None:
        return
    if not uri:
        raise bad("--mlflow", uri, "a tracking URI, e.g. http://host:5000 or sqlite:///mlflow.db")
    if importlib.util.find_spec("mlflow") is None:
        raise bad("--mlflow", uri, MLFLOW_EXTRA, "the mlflow package is not installed")


def tensorboard_dir(sweep_dir: Any, trial_id: str) -> Any:
    """Where a trial's TensorBoard event files go: ``<results>/<sweep>/tensorboard/<trial_id>``."""
    return sweep_dir / "tensorboard" / trial_id


def scalars(record: EpochRecord) -> dict[str, float]:
    """The finite numbers of an epoch record, without its phase and epoch."""
    out = {}
    for k, v in record.items():
        if k in _IDENTITY or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class _TensorBoard:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def epoch(self, record: EpochRecord) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(f"{record['phase']}/{k}", v, global_step=int(record["epoch"]))
        self.writer.flush()   # a trial killed mid-sweep keeps the epochs it finished

    def finish(self, row: dict[str, Any], step: int) -> None:
        for k in FINAL_METRICS:
            v = row.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"final/{k}", float(v), global_step=step)
        self.writer.close()


class _MLflow:
    def __init__(self, uri: str, trial: Trial):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(trial.sweep)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(trial.sweep)
            except Exception:  # noqa: BLE001 (another trial created it first)
                exp = self.client.get_experiment_by_name(trial.sweep)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=trial.label,
                                     tags={"rankbench.trial_id": trial.id, "rankbench.sweep": trial.sweep})
        self.run_id = run.info.run_id
        ident = {"method": trial.method, "variant": trial.variant, "model": trial.model,
                 "dataset": str(trial.data_cfg.get("name")), "seed": trial.seed, "trial_id": trial.id}
        for k, v in ident.items():
            self.client.log_param(self.run_id, k, v)

    def epoch(self, record: EpochRecord) -> None:
        for k, v in scalars(record).items():
            self.client.log_metric(self.run_id, f"{record['phase']}.{k}", v, step=int(record["epoch"]))

    def finish(self, row: dict[str, Any], step: int) -> None:
        for k in FINAL_METRICS:
            v = row.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.client.log_metric(self.run_id, f"final.{k}", float(v), step=step)
        self.client.set_terminated(self.run_id, "FINISHED" if row.get("status") == "ok" else "FAILED")


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

    def finish(self, row: dict[str, Any]) -> None:
        """Send the row's final numbers and close every tracker."""
        self._each("finish", row, self.last_epoch)
        self.sinks.clear()


def open_tracker(trial: Trial, sweep_dir: Any, log: Callable[[str], None],
                 mlflow: str | None = None, tensorboard: bool = True) -> Tracker:
    """The trackers for ``trial``: TensorBoard under ``sweep_dir`` (a local folder), MLflow at the
    ``mlflow`` tracking URI. One that cannot start is named in ``log`` and left out."""
    sinks: dict[str, Any] = {}
    if tensorboard:
        if isinstance(sweep_dir, Path):
            try:
                sinks["tensorboard"] = _TensorBoard(tensorboard_dir(sweep_dir, trial.id))
            except Exception as e:  # noqa: BLE001
                log(f"tensorboard: not written: {type(e).__name__}: {e}")
        else:
            log(f"tensorboard: not written for results on a storage URI ({sweep_dir})")
    if mlflow:
        try:
            sinks["mlflow"] = _MLflow(mlflow, trial)
        except Exception as e:  # noqa: BLE001
            log(f"mlflow: not logging to {mlflow}: {type(e).__name__}: {e}")
    return Tracker(sinks, log)
