"""Commands that wait on nothing: `--address auto` that resolves to a cluster that is gone is
refused in one line before anything is created, and Ctrl-C on a command that is not a sweep
does not talk about resuming one."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rankbench.bench import cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_auto_resolving_to_a_dead_cluster_is_refused_at_once_and_creates_nothing(tmp_path):
    dead = f"127.0.0.1:{_free_port()}"          # what a stale RAY_ADDRESS or cluster file names
    env = dict(os.environ, RAY_ADDRESS=dead, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    res = tmp_path / "res"
    # timeout: before this was refused, ray.init retried the dead address for a minute and more
    p = subprocess.run([sys.executable, "-m", "rankbench.bench", "run", "quick", "train.epochs=1", "seeds=[0]",
                        "--address", "auto", "--results", str(res)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=50)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --address: 'auto': it resolves to " + dead), p.stderr
    assert "nothing answers there" in lines[0]
    assert not res.exists()


def test_ctrl_c_on_show_does_not_speak_of_resuming(monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_show", interrupted)
    assert cli.main(["show", "quick"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: nothing was written", err


SLOW = """
sweep: orphans
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 40, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods: [dense]
"""


def test_a_driver_killed_outright_leaves_no_ray_process_behind(tmp_path):
    """SIGKILL to `rankbench run` mid-sweep: its sweep process dies with it, and so must every
    process the sweep's local Ray started (the raylet's agents outlived it by minutes before)."""
    import signal

    from procs import bench_run, epochs_logged, kill_session, session_pids

    spec = tmp_path / "o.yaml"
    spec.write_text(SLOW)
    res = tmp_path / "res"
    p = bench_run([str(spec), "--results", str(res)], tmp_path)
    try:
        deadline = time.monotonic() + 180          # a hang guard, not a timing assertion
        while p.poll() is None and time.monotonic() < deadline:
            if any(epochs_logged(f) >= 1 for f in (res / "orphans" / "logs").glob("*.log")):
                break
            time.sleep(0.2)
        assert p.poll() is None, p.stdout.read()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        left = session_pids(p.pid)
        deadline = time.monotonic() + 40           # the watchdog polls every second
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = session_pids(p.pid)
        names = [Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in left if Path(f"/proc/{pid}").exists()]
        assert not left, names
    finally:
        kill_session(p.pid)
