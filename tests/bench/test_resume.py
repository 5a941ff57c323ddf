"""A sweep resumes from its storage: re-run on a file:// URI finds its rows, and a sweep whose
driver was killed with SIGKILL goes on from its rows and epoch checkpoints on a fresh head."""
from __future__ import annotations

from pathlib import Path

from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store
from rankbench.bench.running.sweep import run_sweep
from procs import bench_run, epochs_logged, kill_driver_when


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp")]


SPEC = """
sweep: st
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 1, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 3}
methods:
  - {name: svd, scheme: channel, rule: "speedup:2.0"}
"""


def test_sweep_on_a_file_uri_finds_its_rows_on_a_rerun_and_reports_read_them(tmp_path, ray_session):
    # (a plain folder as --storage is what the kill test below runs on)
    from rankbench.reports.collate import load_results

    where = f"file://{tmp_path}/st"
    sweep = parse_spec(SPEC)
    s = run_sweep(sweep, where, out=lambda line: None)
    assert s.failed == {} and s.ran == 2
    files = tmp_path / "st" / "st"
    assert len(list((files / "trials").glob("*.json"))) == 2
    assert (files / "ray" / "sweep").is_dir()           # Tune's experiment state on the storage
    dense = next(t for t in sweep.trials if t.method == "dense")
    assert (files / "checkpoints" / dense.id / "baseline.pt").is_file()
    again = run_sweep(sweep, where, out=lambda line: None)
    assert again.ran == 0 and again.skipped == 2
    df = load_results(f"{where}/st")                         # what `rankbench report <storage>` reads
    assert sorted(df["method"]) == ["dense", "svd"] and (df["status"] == "ok").all()
    assert _no_temp_files(tmp_path)


KILL_SPEC = """
sweep: kill
seeds: [0, 1]
data: {name: digits}
model: cnn
train: {epochs: 6, batch_size: 32, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: trp, scheme: channel, export: ["speedup:1.5", "speedup:2.0"]}
"""


def test_a_sweep_resumes_from_its_storage_after_the_driver_is_killed(tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text(KILL_SPEC)
    storage = tmp_path / "storage"
    sweep_dir = storage / "kill"
    trials = parse_spec(KILL_SPEC).trials
    assert len(trials) == 4

    head1 = tmp_path / "head1"
    head1.mkdir()
    p = bench_run([str(spec), "--storage", str(storage), "--max-concurrent", "2"], head1)

    def one_done_one_early() -> bool:
        """A trial is finished and another early on its way: an epoch checkpoint, no row, at most
        3 of its 6 epochs done (so it cannot finish while the kill lands)."""
        rows = {f.stem for f in (sweep_dir / "trials").glob("*.json")}
        early = [c for c in (sweep_dir / "checkpoints").glob("*/epoch.pt") if c.parent.name not in rows
                 and epochs_logged(sweep_dir / "logs" / f"{c.parent.name}.log") <= 3]
        return bool(rows and early)

    # the head node is gone: kill -9, and every process this driver started (Ray's raylet,
    # agents and trial workers, all in the session the driver leads) with it, as a lost machine
    kill_driver_when(p, one_done_one_early, timeout=120)
    done_before = {f.stem for f in (sweep_dir / "trials").glob("*.json")}
    partial = {c.parent.name for c in (sweep_dir / "checkpoints").glob("*/epoch.pt")} - done_before
    assert 1 <= len(done_before) < 4 and partial

    # the re-run: another working directory (another head node), a fresh Ray, the same storage
    head2 = tmp_path / "head2"
    head2.mkdir()
    q = bench_run([str(spec), "--storage", str(storage), "--max-concurrent", "2"], head2)
    out, _ = q.communicate(timeout=240)
    assert q.returncode == 0, out
    assert f"{len(done_before)} already done, {4 - len(done_before)} to run" in out

    store = Store(storage, "kill")
    for t in trials:
        row = store.read_result(t.id)
        assert row is not None and row["status"] == "ok", (t.id, row)
        log = store.log_path(t.id).read_text()
        assert log.count(f"trial {t.id}: ok") == 1, log           # every trial finished exactly once
        if t.id in done_before:
            assert log.count(f"trial {t.id}: trp") == 1, log      # and a finished one never ran again
    for tid in partial:   # a trial cut mid-way went on from its last epoch, not from scratch
        assert "[train] resumed from epoch" in store.log_path(tid).read_text(), tid
