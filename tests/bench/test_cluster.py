"""A Ray cluster of real processes on loopback: a head and worker nodes started with `ray start`
(each its own session, stopped by session id at the end, also when a test fails), and
`rankbench run --address` against it. Marked `cluster`; run by CI with the rest."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from procs import kill_session, session_pids

pytestmark = pytest.mark.cluster

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
ENV.pop("RAY_ADDRESS", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Ray nodes on 127.0.0.1, each started in a session of its own so it can be stopped by sid."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sids: list[int] = []

    def _start(self, args: list[str], private: Path | None = None) -> None:
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", *args]
        if private is not None:
            # this node sees its own empty tmpfs where the others see the results folder: what a
            # node-local /results looks like on a real cluster
            quoted = " ".join(shlex.quote(str(c)) for c in cmd)
            cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(str(private))} && exec {quoted}"]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        self.sids.append(p.pid)
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out

    def head(self, resource: str) -> None:
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--resources", json.dumps({resource: 1})])

    def worker(self, resource: str, private: Path | None = None) -> None:
        self._start(["--address", self.address, "--resources", json.dumps({resource: 1})], private)

    def stop(self) -> None:
        for sid in self.sids:
            kill_session(sid)
        # `ray start --head` left the file `--address auto` reads: it would name this dead cluster
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
        assert not any(session_pids(sid) for sid in self.sids)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


SPEC = """
sweep: c
seeds: [0, 1]
data: {name: digits}
model: mlp
train: {epochs: 1, batch_size: 64}
measure: {latency_repeats: 2}
methods: [dense]
"""


def _run(tmp_path: Path, address: str, results: Path) -> subprocess.CompletedProcess:
    spec = tmp_path / "c.yaml"
    spec.write_text(SPEC)
    return subprocess.run([sys.executable, "-m", "rankbench.bench", "run", str(spec), "--address", address,
                           "--results", str(results)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_a_sweep_spreads_over_the_nodes_and_every_row_names_its_node(tmp_path, cluster):
    results = tmp_path / "results"
    cluster.head("head")
    cluster.worker("w1")
    r = _run(tmp_path, cluster.address, results)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "preflight: 2 nodes see the results folder" in r.stdout, r.stdout
    rows = [json.loads(p.read_text()) for p in (results / "c" / "trials").glob("*.json")]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    nodes = [row.get("node") for row in rows]
    assert all(n and n["ip"] and len(n["id"]) >= 12 for n in nodes), nodes
    assert len({n["id"] for n in nodes}) == 2, nodes


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a node with a private view of the results folder needs `unshare -m` as root")
def test_a_node_that_cannot_see_the_results_folder_is_named_before_anything_trains(tmp_path, cluster):
    results = tmp_path / "results"
    results.mkdir()
    cluster.head("head")
    cluster.worker("w1", private=results)
    r = _run(tmp_path, cluster.address, results)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: node ") and "(Ray node " in errors[0], r.stderr
    assert "cannot see the results folder" in errors[0] and "NFS" in errors[0], errors
    assert not list((results / "c" / "trials").glob("*.json"))      # no trial ran, none was lost
    assert not list((results / "c" / "logs").glob("*.log"))
