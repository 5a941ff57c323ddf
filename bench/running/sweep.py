"""Run a Sweep's trials with Ray Tune, one Tune run for all of them.

Each needed dense baseline is trained once (per data / model / seed / train); methods that
``starts_from_baseline`` load its saved weights instead of training again, and wait for their own
baseline only (``rankbench.bench.running.queue.TrialQueue``): every other trial starts as soon as a worker is free. Trials whose row already exists with ``status: ok`` are skipped, so re-running the
same command resumes an interrupted sweep and runs nothing for a finished one. Inside a trial,
``rankbench.bench.running.run.run_trial`` resumes from the last epoch checkpoint, which is what makes Ray's retries
(``FailureConfig(max_failures)``) after a killed worker continue rather than restart.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rankbench.bench.checks import bad
from rankbench.bench.running.address import RUNNING_CLUSTER, check_address, check_listening
from rankbench.bench.preflight.cluster import NodeNeeds, check_nodes, describe, needs_of, node_problems, write_marker
from rankbench.bench.running.reaper import start_reaper
from rankbench.bench.results.filesystem import ray_storage
from rankbench.bench.results.provenance import describe_code, same_method_code
from rankbench.bench.results.row import failed_row
from rankbench.bench.results.store import Store, set_aside
from rankbench.bench.trial import Trial, is_distributed

if TYPE_CHECKING:
    from rankbench.bench.running.tracking import MlflowTarget
    from rankbench.bench.spec.parse import Sweep

# Ray reads these at import / init time; a user's own setting wins
RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # our rows are the results; skip Tune's CSV/JSON/TB
    "RAY_AIR_NEW_OUTPUT": "0",                  # with verbose=0 the legacy reporter prints nothing
    "TUNE_MAX_PENDING_TRIALS_PG": "4",
    "RAY_DEDUP_LOGS": "1",
    # Ctrl-C must stop the whole sweep (KeyboardInterrupt), not just end the current Tune phase
    # and let the next one start; finished rows are on disk, so the next run resumes
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}
TRIAL_RETRIES = 2   # a worker killed mid-trial is retried (from its checkpoint) this many times


def set_ray_env() -> None:
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


@dataclass
class SweepSummary:
    total: int
    skipped: int            # already finished before this run
    ran: int
    failed: dict[str, dict | None] = field(default_factory=dict)   # trial id -> row (None: no row)
    wall_s: float = 0.0
    csv: Path | None = None


def _trainable(config: dict, results_root: str, base_dir: str, mlflow: MlflowTarget | None = None,
               needs: NodeNeeds | None = None) -> None:
    """Ray Tune function trainable: one trial, handed over as ``config["trial"]`` (``Trial.to_dict``,
    as Ray Train's workers get it). Runs in a Ray worker process. ``needs``: on a cluster, what
    this node must have (``rankbench.bench.preflight.cluster``); a node that joined after the
    sweep's preflight and fails it fails the trial at once, before it trains."""
    from ray import tune

    from rankbench.bench.running.distributed import run_distributed
    from rankbench.bench.running.run import run_trial

    trial = Trial.from_dict(config["trial"])
    problems = node_problems(needs) if needs is not None else []
    if problems:
        from rankbench.bench.running.run import ray_node

        node = ray_node() or {"id": "?", "ip": "?"}
        line = str(describe(node["ip"], node["id"], problems))
        tune.report({"status": "failed", "error": f"NodePreflight: {line}", "wall_s": 0.0, "top1": 0.0})
        return
    if is_distributed(trial.resources_cfg):
        # a data-parallel trial: Ray Train workers run it; a dead worker raises here, and Tune
        # retries the trial from its epoch checkpoint as for any other trial
        row = run_distributed(trial, results_root, base_dir, mlflow=mlflow)
        tune.report({"status": row["status"] if row else "failed",
                     "error": (row.get("error") or "") if row else "no result written (see the trial's log)",
                     "wall_s": (row or {}).get("wall_s") or 0.0, "top1": (row or {}).get("top1") or 0.0})
        return
    try:
        row = run_trial(trial, results_root, base_dir=base_dir, mlflow=mlflow)   # a path or a storage URI
    except Exception as e:  # noqa: BLE001
        # run_trial turns trial errors into rows; what reaches here is the row itself not being
        # written (disk full, folder gone). Report it: retrying would fail the same way.
        tune.report({"status": "failed", "error": f"result not written: {type(e).__name__}: {e}",
                     "wall_s": 0.0, "top1": 0.0})
        return
    tune.report({"status": row["status"], "error": row.get("error") or "",
                 "wall_s": row.get("wall_s") or 0.0, "top1": row.get("top1") or 0.0})


class _StatusLine:
    """One terminal line per change: done / running / failed, and an ETA."""

    def __init__(self, total: int, slots: int, out: Callable[[str], None]):
        self.total, self.slots, self.out = total, max(1, slots), out
        self.done = self.failed = self.running = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.t0 = time.monotonic()

    def start(self, trial_id: str, label: str) -> None:
        self.running += 1
        self.started[trial_id] = time.monotonic()
        self._line(f"start {trial_id} {label}")

    def retry(self, trial_id: str, label: str) -> None:
        self.running = max(0, self.running - 1)
        self.started.pop(trial_id, None)
        self._line(f"retry {trial_id} {label}: its worker died; resuming from the last epoch checkpoint")

    def finish(self, trial_id: str, label: str, status: str, error: str = "") -> None:
        self.running = max(0, self.running - 1)
        self.durations.append(time.monotonic() - self.started.pop(trial_id, time.monotonic()))
        if status == "ok":
            self.done += 1
            self._line(f"ok    {trial_id} {label}")
        else:
            self.failed += 1
            self._line(f"FAIL  {trial_id} {label}: {error}")

    def _eta(self) -> str:
        left = self.total - self.done - self.failed
        if not self.durations or left <= 0:
            return "?" if left > 0 else "0s"
        mean = sum(self.durations) / len(self.durations)
        return f"{mean * left / self.slots:.0f}s"

    def _line(self, what: str) -> None:
        el = time.monotonic() - self.t0
        self.out(f"[{self.done + self.failed}/{self.total}] done {self.done} running {self.running} "
                 f"failed {self.failed} | {el:.0f}s elapsed, ETA {self._eta()} | {what}")


def _trial_id(config: dict) -> str:
    """The id of the Trial a Tune config carries."""
    return Trial.from_dict(config["trial"]).id


def _callback(by_id: dict[str, Trial], prog: _StatusLine, store: Store):
    from ray import tune

    class Cb(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            tid = _trial_id(trial.config)
            prog.start(tid, by_id[tid].label)

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            tid = _trial_id(trial.config)
            res = trial.last_result or {}
            if res.get("status") == "failed" and store.read_result(tid) is None:
                # the trial's node could not write its row (it failed the node check): the driver does
                store.write_result(failed_row(by_id[tid], res.get("error") or "no result written"))
            prog.finish(tid, by_id[tid].label, res.get("status", "failed"), res.get("error", ""))

        def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001
            # the worker died; Tune starts the trial again and run_trial resumes from its checkpoint
            tid = _trial_id(trial.config)
            prog.retry(tid, by_id[tid].label)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            # the worker died TRIAL_RETRIES + 1 times (run_trial itself never raises)
            tid = _trial_id(trial.config)
            # the trial's own log ends where its process was killed: point at what Ray recorded
            where = getattr(trial, "error_file", None) or "Ray's logs (/tmp/ray/session_latest/logs)"
            prog.finish(tid, by_id[tid].label, "failed",
                        f"its worker process died {TRIAL_RETRIES + 1} times (killed, or out of memory); "
                        f"Ray's error: {where}")

    return Cb()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a quiet local Ray with every core."""
    set_ray_env()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                              configure_logging=True)
    # ray.init installs its own SIGTERM handler (a stack dump, then abort): keep the driver's,
    # which stops the sweep with a summary and the resume command (rankbench.bench.cli)
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main_thread else None
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise bad("--address", address, RUNNING_CLUSTER,
                      f"cannot connect ({type(e).__name__}: {detail})") from None
    else:
        # "local" always starts a fresh instance: without it ray.init() silently joins any Ray
        # already running on this machine (another sweep, a test session, a `ray start`), and
        # then refuses num_cpus. A shared cluster is asked for explicitly, with --address auto.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kw)
        # the Ray this process started ends with it, even when it is killed outright
        start_reaper()
    if callable(term):
        signal.signal(signal.SIGTERM, term)
    # Tune logs a worker's death with a full traceback; the progress line says it in one line
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


def _needs_run(store: Store, t: Trial, out: Callable[[str], None] = print, keep_old_code: bool = False) -> bool:
    if not store.is_done(t.id):
        return True
    row = store.read_result(t.id) or {}
    if not same_method_code(row, t.method):
        then = "kept (--keep-old-code)" if keep_old_code else "running it again"
        out(f"trial {t.id} ({t.label}): its row was made by other code of method {t.method!r} "
            f"({describe_code(row.get('code'))}); {then}")
        if not keep_old_code:
            return True
    if not t.is_baseline:
        return False
    # a finished baseline whose weights were deleted, or cannot be read, must run again, or the
    # methods that start from it cannot
    w = store.baseline_weights(t.id)
    if not w.exists():
        return True
    problem = unreadable_weights(w)
    if problem:
        moved = set_aside(w)
        out(f"baseline {t.id} ({t.label}): {w} is unreadable ({problem}); set aside as {moved.name}, "
            f"training the baseline again")
        return True
    return False


def unreadable_weights(path: Path) -> str | None:
    """Why the state dict at ``path`` cannot be loaded, or None. Local files are memory-mapped
    (no copy into memory); a file on remote storage is trusted until a trial reads it."""
    if not isinstance(path, Path):
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (truncated zip, random bytes, empty file)
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
    return None if isinstance(state, dict) else f"holds a {type(state).__name__}, not a state dict"


def relabel(store: Store, done: list[Trial]) -> int:
    """Give finished rows the display name their spec entry has now (``label:`` is not part of
    the id, so a label added or changed after a run re-runs nothing); returns the rows rewritten."""
    n = 0
    for t in done:
        row = store.read_result(t.id)
        if row is None or (row.get("label") or "") == t.display_label:
            continue
        row["label"] = t.display_label or None
        spec = row.get("spec")
        if isinstance(spec, dict):
            spec.pop("label", None)
            if t.display_label:
                spec["label"] = t.display_label
        store.write_result(row)
        n += 1
    return n


def _preflight(todo: list[Trial], store: Store, out: Callable[[str], None]) -> NodeNeeds:
    """Every alive node of the cluster can run ``todo`` (``rankbench.bench.preflight.cluster``),
    or one line naming the first that cannot, before any trial trains."""
    marker, token = write_marker(store.dir)
    needs = needs_of(todo, marker, token, os.getcwd())
    n = check_nodes(needs)
    out(f"preflight: {n} node{'s' if n != 1 else ''} see the results folder, run rankbench {needs.version} "
        f"and have every method and path the trials use")
    return needs


def run_sweep(sweep: Sweep, results_root: Path | str, address: str | None = None,
              max_concurrent: int | None = None, out: Callable[[str], None] = print,
              wait_for_nodes: float | None = None, mlflow: MlflowTarget | str | None = None,
              keep_old_code: bool = False) -> SweepSummary:
    """Run every unfinished trial of ``sweep`` with Ray Tune; write results.csv at the end.
    ``mlflow``: where every trial also logs to MLflow (``rankbench.bench.running.tracking.sweep_tracking``).
    A finished trial whose row was made by other code of its method runs again, unless
    ``keep_old_code`` (``rankbench.bench.results.provenance``).

    Resources no node can hold are refused first (``rankbench.bench.preflight.capacity``): on a local Ray before it
    starts, on a cluster after ``wait_for_nodes`` seconds of waiting for nodes to join."""
    from rankbench.bench.preflight import capacity, memory
    from rankbench.bench.running.tracking import sweep_tracking

    t0 = time.monotonic()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
        check_listening(address)
    else:
        capacity.check_local(sweep.trials)       # this machine is the whole cluster: nothing joins
    wait_s = capacity.wait_seconds(wait_for_nodes) if address else 0.0
    store = Store(results_root, sweep.name)
    store.ensure()
    with store.lock():
        todo = [t for t in sweep.trials if _needs_run(store, t, out, keep_old_code)]
        relabel(store, [t for t in sweep.trials if t not in todo])
        skipped = len(sweep.trials) - len(todo)
        out(f"sweep {sweep.name}: {len(sweep.trials)} trials, {skipped} already done, {len(todo)} to run "
            f"-> {store.dir}")
        summary = SweepSummary(total=len(sweep.trials), skipped=skipped, ran=0)
        if todo:
            init_ray(address)
            import ray

            capacity.check_cluster(todo, wait_s, out)
            needs = _preflight(todo, store, out) if address else None
            cpus = ray.cluster_resources().get("CPU", 1)
            per = max(t.resources_cfg.get("cpus", 1) for t in todo)
            slots = max_concurrent or max(1, int(cpus // per))
            prog = _StatusLine(len(todo), slots, out)
            if any(memory.is_packed(t.resources_cfg) for t in todo):
                # trials sharing a GPU: fail now the ones whose step would not fit in their share
                refused = memory.check_packing(todo, log=out)
                for t in todo:
                    if t.id in refused:
                        row = failed_row(t, refused[t.id])
                        store.write_result(row)
                        prog.finish(t.id, t.label, "failed", row["error"])
                todo = [t for t in todo if t.id not in refused]
            with sweep_tracking(store.dir, sweep.name, sweep.trials, len(todo), mlflow, out) as target:
                if todo:
                    _tune(todo, store, max_concurrent, prog, target, needs)
            summary.ran = len(todo)
        ids = [t.id for t in sweep.trials]
        rows = {i: store.read_result(i) for i in ids}
        summary.failed = {i: r for i, r in rows.items() if not store.is_done(i)}   # damaged rows count as failed
        summary.csv = store.write_csv(ids)
        summary.wall_s = time.monotonic() - t0
    return summary


def _tune(trials: list[Trial], store: Store, max_concurrent: int | None, prog: _StatusLine,
          mlflow: MlflowTarget | None = None, needs: NodeNeeds | None = None) -> None:
    """One Tune run over ``trials``; ``rankbench.bench.running.queue.TrialQueue`` decides when each may start."""
    from ray import tune

    from rankbench.bench.running.queue import TrialQueue

    by_id = {t.id: t for t in trials}
    # Tune's experiment state goes to the same storage as the rows (a URI: through its pyarrow fs)
    storage_path, storage_fs = ray_storage(store.ray_dir)

    def resources(config: dict) -> dict[str, float]:
        from rankbench.bench.running.distributed import DRIVER_RESOURCES

        r = config["trial"]["resources"]
        if is_distributed(r):
            return dict(DRIVER_RESOURCES)   # its Ray Train workers hold the CPUs and GPUs
        return {"cpu": float(r.get("cpus", 1)), "gpu": float(r.get("gpus", 0))}

    trainable = tune.with_resources(
        tune.with_parameters(_trainable, results_root=str(store.root.resolve()),   # path or URI
                             base_dir=os.getcwd(), mlflow=mlflow, needs=needs), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=TrialQueue(trials, store, lambda t, row: prog.finish(t.id, t.label, "failed", row["error"])),
            num_samples=len(trials), max_concurrent_trials=max_concurrent or None, reuse_actors=True),
        run_config=tune.RunConfig(
            name="sweep", storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
            callbacks=[_callback(by_id, prog, store)],
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.fit()


def stopped_lines(sweep: "Sweep", results: Path | str, why: str, resume: str) -> list[str]:
    """What a stopped sweep tells its user: ``why``, what finished, and the command that resumes it."""
    store = Store(results, sweep.name)
    ok = failed = 0
    for t in sweep.trials:
        try:
            row = store.read_result(t.id)
        except OSError:
            row = None
        if row is not None:
            ok += row.get("status") == "ok"
            failed += row.get("status") != "ok"
    return [f"{why}: finished trials are kept; run the same command again to resume",
            f"sweep {sweep.name}: {len(sweep.trials)} trials, {ok} ok, {failed} failed, "
            f"{len(sweep.trials) - ok - failed} not finished (rows in {store.dir / 'trials'})",
            f"resume with: {resume}"]


def rehearse(sweep: "Sweep", results_root: Path | str, address: str | None = None,
             wait_for_nodes: float | None = None, out: Callable[[str], None] = print) -> None:
    """``rankbench run --preflight-only``: every check a run makes before its first trial trains
    (the address, the resources every trial needs, and on a cluster every node's view of the
    results, its rankbench, methods and paths), for every trial of the spec; nothing trains."""
    from rankbench.bench.preflight import capacity

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
        check_listening(address)
    else:
        capacity.check_local(sweep.trials)
    store = Store(results_root, sweep.name)
    store.ensure()
    init_ray(address)
    capacity.check_cluster(list(sweep.trials), capacity.wait_seconds(wait_for_nodes) if address else 0.0, out)
    if address:
        _preflight(list(sweep.trials), store, out)
    out(f"preflight only: the {len(sweep.trials)} trials of {sweep.name} can run "
        f"{'on this cluster' if address else 'here'}; nothing trained")

