"""Data-parallel trials: one trial trained by N processes with DistributedDataParallel.

A trial whose ``resources`` ask for ``workers: N`` (N > 1), or for more than one GPU
(``gpus: 8`` means 8 workers with one GPU each unless ``workers`` says otherwise), runs through
Ray Train's ``TorchTrainer``. Ray 2.60 runs Ray Train V2, in which a Trainer is no longer a Tune
trainable: the trial's Tune function (``rankbench.bench.running.sweep``) calls ``run_distributed``, which starts the
TorchTrainer and waits for it. The Tune trial itself then holds no CPU or GPU (Train's workers
hold them), so a 2-CPU machine can run a 2-worker trial.

Every worker runs ``rankbench.bench.running.run.run_trial`` with a ``DistContext``: the data gives each rank its
exact share of every global batch (``train.batch_size`` is the global batch, split evenly), DDP
all-reduces (averages) the gradients, and every rank then runs the same method hooks on the same
weights, so TRP's projection and nuclear-norm sub-gradient are identical everywhere (checked at
the end of training: every rank's weight checksum is gathered into the row, and a mismatch fails
the trial). Evaluation sums counts over ranks (``rankbench.bench.measure.metrics.evaluate``). Rank 0 alone writes
checkpoints, the log and the result row. Backend: nccl on CUDA, gloo on CPU.

The DDP helpers every rank calls (``DistContext``, ``wrap``, the collectives) are in ``rankbench.bench.train.ddp``;
this module starts the processes.
"""
from __future__ import annotations

from typing import Any

import torch

from rankbench.bench.train.ddp import DistContext
from rankbench.bench.running.run import run_trial
from rankbench.bench.trial import Trial, per_worker, workers_for

# the Tune trial of a distributed trial only waits for its Train workers; Tune needs a
# non-empty resource request, and a token of memory (bytes) takes no CPU or GPU from them
DRIVER_RESOURCES: dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "memory": 1.0}


# --- Ray Train -----------------------------------------------------------------------------

def _train_worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: this rank's part of ``run_trial``."""
    import ray.train

    ctx = ray.train.get_context()
    device = torch.device("cpu")
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    dctx = DistContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                       local_rank=ctx.get_local_rank(), device=device)
    run_trial(Trial.from_dict(config["trial"]), config["results_root"], base_dir=config["base_dir"],
              dist=dctx, mlflow=config.get("mlflow"))


def run_distributed(trial: Trial, results_root: str, base_dir: str, mlflow: str | None = None) -> dict | None:
    """Train ``trial`` on ``workers_for(trial.resources_cfg)`` Ray Train workers with DDP and
    return the row rank 0 wrote (None if none was written). A worker that dies raises here
    (``ray.train.TrainingFailedError``), so Tune retries the trial, which resumes from its last
    epoch checkpoint like any other trial."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray.train import TrainingFailedError

    from rankbench.bench.results.filesystem import ray_storage
    from rankbench.bench.results.store import Store

    res = trial.resources_cfg
    n = workers_for(res)
    share = per_worker(res)
    use_gpu = share["GPU"] > 0
    store = Store(results_root, trial.sweep)
    storage_path, storage_fs = ray_storage(store.ray_dir / "train")
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trial": trial.to_dict(), "results_root": str(results_root), "base_dir": base_dir,
                           "use_gpu": use_gpu, "mlflow": mlflow},
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
