"""Per-epoch scalars to TensorBoard, one folder per sweep: ``results/<sweep>/tensorboard/<trial_id>/``.

``tensorboard --logdir results/<sweep>/tensorboard`` shows every trial of the sweep as a run.
Each epoch (training, then fine-tuning, numbered over the trial) writes ``loss`` (the training
loss), ``val_top1`` (percent), ``lr`` (at the epoch's end) and whatever the method reports
through an ``epoch_metrics(model) -> dict[str, float]`` method, under ``<method>/<name>`` (TRP:
``trp/mean_kept_rank``, the mean over its layers of the rank its energy rule keeps). The trial's
label is written once as text.

Written with torch's ``SummaryWriter`` (the ``tensorboard`` package). Only local results
folders get event files: a storage URI (s3://, gs://) has no local folder to append to, and
the row's ``history`` holds the same numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

TB_DIR = "tensorboard"


def tensorboard_dir(sweep_dir: Any, trial_id: str) -> Path | None:
    """The trial's event folder under a local sweep folder, or None for a storage URI."""
    if not isinstance(sweep_dir, Path):
        return None
    return sweep_dir / TB_DIR / trial_id


class EpochScalars:
    """The ``on_epoch`` callback of ``bench.train.train``, writing one trial's scalars."""

    def __init__(self, logdir: Path, label: str, method: Any = None, model: Callable[[], nn.Module] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))
        self.writer.add_text("trial", label)
        self.method = method
        self.model = model       # the model the method's metrics look at (the training model)

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key in ("loss", "val_top1", "lr"):
            if record.get(key) is not None:
                self.writer.add_scalar(key, float(record[key]), step)
        metrics = getattr(self.method, "epoch_metrics", None)
        if metrics is not None and self.model is not None and record.get("phase") == "train":
            prefix = getattr(self.method, "name", "") or type(self.method).__name__.lower()
            for name, value in metrics(self.model()).items():
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
