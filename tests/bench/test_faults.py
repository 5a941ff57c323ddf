"""Faults beside bad input (issue 15): damaged checkpoints, a driver stopped by SIGTERM, the folder
lock reached through a file:// URI, file modes under a umask, and rows damaged by hand.

Checkpoints are damaged for real (truncated, random bytes) and read by the real training loop
and trial; the SIGTERM goes to a real ``rankbench run`` process.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rankbench.bench.cli import main
from rankbench.bench.data import build_data
from rankbench.bench.models.builtin import build_model
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store, StoreError, atomic_write_json, previous, rotate_and_save
from rankbench.bench.running.sweep import run_sweep
from rankbench.bench.train.config import TrainConfig
from rankbench.bench.train.loop import Loop, train
from procs import bench_run, kill_session, session_pids

SPEC = """
sweep: f
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: svd, rule: "energy:0.9"}
"""


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 3])


def test_a_damaged_epoch_checkpoint_is_set_aside_and_training_resumes_from_the_one_before(tmp_path):
    data = build_data({"name": "digits"}, 0, 64, False)
    ck = tmp_path / "epoch.pt"
    lines: list[str] = []
    torch.manual_seed(0)
    train(build_model("mlp", 10, (1, 8, 8)), data, TrainConfig(epochs=2, lr=0.05), loop=Loop(checkpoint=ck, log=lines.append))
    assert ck.exists() and previous(ck).exists()          # epoch 2, and epoch 1 kept beside it
    _truncate(ck)
    lines.clear()
    torch.manual_seed(0)
    prog = train(build_model("mlp", 10, (1, 8, 8)), data, TrainConfig(epochs=3, lr=0.05),
                 loop=Loop(checkpoint=ck, log=lines.append))
    text = "\n".join(lines)
    assert f"checkpoint {ck} is unreadable" in text and "set aside as epoch.pt.bad" in text, text
    assert "resumed from epoch 1/3" in text, text        # the state before it: epoch 1
    assert (tmp_path / "epoch.pt.bad").exists()
    assert [h["epoch"] for h in prog.history] == [1, 2, 3]


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_a_save_killed_half_way_leaves_the_last_checkpoint_where_resume_looks(tmp_path, monkeypatch, links):
    """Ctrl-C lands while epoch 3 is written: epoch.pt still holds epoch 2 (not only epoch.prev.pt)."""
    import rankbench.bench.results.store as store_mod

    ck = tmp_path / "epoch.pt"
    rotate_and_save({"epoch": 1}, ck)
    rotate_and_save({"epoch": 2}, ck)
    if not links:
        def no_link(*a):
            raise OSError(1, "Operation not permitted")
        monkeypatch.setattr(store_mod.os, "link", no_link)

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "atomic_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rotate_and_save({"epoch": 3}, ck)
    assert torch.load(ck)["epoch"] == 2 and torch.load(previous(ck))["epoch"] == 2
    monkeypatch.undo()
    rotate_and_save({"epoch": 3}, ck)
    assert torch.load(ck)["epoch"] == 3 and torch.load(previous(ck))["epoch"] == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["epoch.prev.pt", "epoch.pt"]   # no temp file


def test_random_bytes_as_the_only_checkpoint_train_from_the_start(tmp_path):
    trial = next(t for t in parse_spec(SPEC).trials if t.method == "dense")
    store = Store(tmp_path, "f")
    ck = store.epoch_checkpoint(trial.id)
    ck.parent.mkdir(parents=True)
    ck.write_bytes(np.random.default_rng(0).bytes(5000))
    row = run_trial(trial, tmp_path)
    assert row["status"] == "ok", row.get("error")
    log = store.log_path(trial.id).read_text()
    assert f"checkpoint {ck} is unreadable" in log and "resumed from" not in log
    assert [h["epoch"] for h in row["history"]] == [1, 2]
    assert (ck.parent / "epoch.pt.bad").exists()


def test_a_truncated_baseline_is_named_set_aside_and_trained_again(tmp_path, ray_session):
    sweep = parse_spec(SPEC)
    dense = next(t for t in sweep.trials if t.method == "dense")
    svd = next(t for t in sweep.trials if t.method == "svd")
    store = Store(tmp_path, "f")
    assert run_sweep(sweep, tmp_path, out=lambda s: None).failed == {}
    w = store.baseline_weights(dense.id)
    _truncate(w)
    # the trial itself, reading it: a failed row that names the file; the file is set aside
    row = run_trial(svd, tmp_path)
    assert row["status"] == "failed"
    assert str(w) in row["error"] and "unreadable" in row["error"] and "set aside as baseline.pt.bad" in row["error"]
    assert not w.exists() and (w.parent / "baseline.pt.bad").exists()
    # the next run trains the baseline again, then the svd trial starts from it
    lines: list[str] = []
    s = run_sweep(sweep, tmp_path, out=lines.append)
    assert s.failed == {} and s.ran == 2, lines
    assert w.exists() and store.read_result(svd.id)["status"] == "ok"
    # a baseline damaged between runs is caught by the driver before any trial starts
    _truncate(w)
    store.trial_path(svd.id).unlink()
    lines.clear()
    s = run_sweep(sweep, tmp_path, out=lines.append)
    assert s.failed == {} and s.ran == 2
    assert any(f"{w} is unreadable" in ln and "set aside as baseline.pt.bad2" in ln for ln in lines), lines


def test_the_lock_holds_for_the_same_folder_reached_through_a_file_uri(tmp_path):
    store = Store(tmp_path, "f")
    store.ensure()
    with store.lock():
        with pytest.raises(StoreError, match="in use by another sweep"):
            run_sweep(parse_spec(SPEC), f"file://{tmp_path}", out=lambda s: None)
        link = tmp_path.parent / f"{tmp_path.name}-link"
        link.symlink_to(tmp_path)
        with pytest.raises(StoreError, match="in use by another sweep"):
            run_sweep(parse_spec(SPEC), str(link), out=lambda s: None)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "row.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "row.json").stat().st_mode & 0o777 == mode


def _damaged_row(store: Store, trial) -> None:
    from rankbench.bench.results.row import empty_row

    row = empty_row(trial)
    row.update(status="ok", top1="high", seed="zero", layers=5, wall_s=1.0)
    store.ensure()
    atomic_write_json(store.trial_path(trial.id), row)


def test_a_row_damaged_by_hand_is_listed_and_skipped_by_report(tmp_path, capsys):
    trial = parse_spec(SPEC).trials[0]
    store = Store(tmp_path, "f")
    _damaged_row(store, trial)
    rc = main(["report", str(store.dir), "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Traceback" not in cap.out + cap.err
    assert trial.id in cap.out and "damaged result file" in cap.out and "top1" in cap.out


def test_run_treats_a_damaged_row_as_not_done_and_replaces_it(tmp_path, capsys, ray_session):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("  - {name: svd, rule: \"energy:0.9\"}", "  - {name: dense}"))
    trial = parse_spec(spec.read_text()).trials[0]
    store = Store(tmp_path / "res", "f")
    _damaged_row(store, trial)
    rc = main(["run", str(spec), "--results", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 already done, 1 to run" in out and "1 trials: 1 ok, 0 failed" in out
    assert isinstance(store.read_result(trial.id)["top1"], float)


SLOW = """
sweep: term
seeds: [0, 1, 2]
data: {name: digits}
model: cnn
train: {epochs: 40, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods: [dense]
"""


def test_sigterm_to_the_driver_prints_what_finished_and_the_resume_command(tmp_path):
    spec = tmp_path / "term.yaml"
    spec.write_text(SLOW)
    res = tmp_path / "res"
    p = bench_run([str(spec), "--results", str(res), "--max-concurrent", "1"], tmp_path)
    try:
        deadline = time.monotonic() + 240
        logs = res / "term" / "logs"
        while p.poll() is None and time.monotonic() < deadline:
            if any("[train] epoch 2/" in f.read_text() for f in logs.glob("*.log")):
                break
            time.sleep(0.1)
        assert p.poll() is None, p.stdout.read()
        os.kill(p.pid, signal.SIGTERM)                  # the driver only, as a scheduler's kill does
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 143, out
        assert "terminated (SIGTERM): finished trials are kept; run the same command again to resume" in out
        assert "sweep term: 3 trials, 0 ok, 0 failed, 3 not finished" in out, out
        assert f"resume with: rankbench run {spec} --results {res} --max-concurrent 1" in out, out
        assert "Traceback" not in out
        for _ in range(100):                            # Ray's processes go with their driver
            left = session_pids(p.pid)
            if not left:
                break
            time.sleep(0.1)
        assert left == []
    finally:
        kill_session(p.pid)


def test_a_ray_fault_under_the_driver_exits_3_with_the_summary(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    res = tmp_path / "res"

    def gcs_gone(*a, **kw):
        # what tuner.fit raises when Ray's GCS dies under the driver
        raise RuntimeError("Failed to connect to GCS at address 10.0.0.1:6379 within 60 seconds")

    monkeypatch.setattr("rankbench.bench.running.sweep.init_ray", lambda *a, **kw: None)
    monkeypatch.setattr("rankbench.bench.running.sweep._tune", gcs_gone)
    monkeypatch.setattr("ray.cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr("rankbench.bench.preflight.capacity.check_cluster", lambda *a, **kw: None)
    monkeypatch.setattr("sys.argv", ["rankbench", "run", str(spec), "--results", str(res)])
    rc = main(["run", str(spec), "--results", str(res)])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert ("stopped by a fault of Ray or the driver (RuntimeError: Failed to connect to GCS at address "
            "10.0.0.1:6379 within 60 seconds): finished trials are kept") in err
    assert "sweep f: 2 trials, 0 ok, 0 failed, 2 not finished" in err
    assert f"resume with: rankbench run {spec} --results {res}" in err
    assert "Traceback" not in err


def test_the_gcs_killed_under_the_driver_still_gives_the_summary_and_exit_3(tmp_path, monkeypatch):
    # Ray's core ends the driver process from C++ 60 s after its GCS is gone (5 s here, Ray's
    # own setting, so the test does not wait a minute); the command's supervising process
    # reports what finished instead: of the sweep as the command's overrides made it (here its
    # name: the spec file says `term`, the results are under `g`)
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "5")
    spec = tmp_path / "g.yaml"
    spec.write_text(SLOW)
    res = tmp_path / "res"
    p = bench_run([str(spec), "sweep=g", "--results", str(res), "--max-concurrent", "1"], tmp_path)
    try:
        deadline = time.monotonic() + 240
        while p.poll() is None and time.monotonic() < deadline:
            if any("[train] epoch 2/" in f.read_text() for f in (res / "g" / "logs").glob("*.log")):
                break
            time.sleep(0.2)
        gcs = [pid for pid in session_pids(p.pid) if b"gcs_server" in _cmdline(pid)]
        assert gcs, "no GCS process found in the driver's session"
        for pid in gcs:
            os.kill(pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=200)
        assert p.returncode == 3, out
        assert "stopped by a fault of Ray or the driver" in out and "finished trials are kept" in out, out
        assert "sweep g: 3 trials, " in out and "not finished" in out, out
        assert f"resume with: rankbench run {spec} sweep=g --results {res} --max-concurrent 1" in out, out
    finally:
        kill_session(p.pid)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
