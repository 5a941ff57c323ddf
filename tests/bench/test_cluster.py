"""A Ray cluster of real processes on loopback: a head and worker nodes started with `ray start`
(each its own session, stopped by session id at the end, also when a test fails), and
`rankbench run --address` against it. Marked `cluster`; run by CI with the rest."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import epochs_logged, kill_session, session_pids

pytestmark = pytest.mark.cluster

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
ENV.pop("RAY_ADDRESS", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the head notices a lost node in a few seconds (Ray's default is about 15 s of failed checks);
# a check's own timeout stays generous: a node starting on a loaded machine must not be taken
# for a lost one before it has registered
HEAD_ENV = dict(ENV, RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="5",
                RAY_health_check_timeout_ms="2000")


class Cluster:
    """Ray nodes on 127.0.0.1, each started in a session of its own so it can be stopped by sid."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sids: dict[str, int] = {}

    def _start(self, name: str, args: list[str], private: Path | None = None, cpus: int = 1,
               env: dict | None = None) -> subprocess.Popen:
        cmd = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--disable-usage-stats", *args]
        if private is not None:
            # this node sees its own empty tmpfs where the others see the results folder: what a
            # node-local /results looks like on a real cluster
            quoted = " ".join(shlex.quote(str(c)) for c in cmd)
            cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(str(private))} && exec {quoted}"]
        p = subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        self.sids[name] = p.pid
        return p

    @staticmethod
    def _started(*procs: subprocess.Popen) -> None:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out

    def head(self, resource: str, cpus: int = 1) -> None:
        """The head; with ``cpus=0`` no trial can run on it (placement on the workers only)."""
        self._started(self._start(resource, ["--head", "--port", str(self.port), "--include-dashboard", "false",
                                             "--resources", json.dumps({resource: 1})], cpus=cpus, env=HEAD_ENV))

    def worker(self, *resources: str, private: Path | None = None) -> None:
        """Worker nodes, one per name (its custom resource), one after the other (two raylets
        registering at once on a loaded 2-core machine can miss `ray start`'s deadline)."""
        for r in resources:
            self._started(self._start(r, ["--address", self.address, "--resources", json.dumps({r: 1})], private))

    def kill(self, name: str) -> None:
        """Lose a node: every process of its session (raylet, object store, workers) SIGKILLed."""
        kill_session(self.sids[name])

    def stop(self) -> None:
        for sid in self.sids.values():
            kill_session(sid)
        # `ray start --head` left the file `--address auto` reads: it would name this dead cluster
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
        assert not any(session_pids(sid) for sid in self.sids.values())


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
# ImageNet's .tar shard layout (what a cluster reads from shared storage), written by the test
SHARDS_SPEC = """
sweep: c
seeds: [0, 1]
data: {name: imagenet, root: ROOT, layout: tar, image_size: 16, resize: 18, workers: 0}
model: cnn
train: {epochs: 1, batch_size: 16}
measure: {latency_repeats: 2}
methods: [dense]
"""


def _run(tmp_path: Path, address: str, results: Path, spec_text: str = SPEC, *extra: str,
         wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    spec = tmp_path / "c.yaml"
    spec.write_text(spec_text)
    cmd = [sys.executable, "-m", "rankbench.bench", "run", str(spec), "--address", address, "--results", str(results),
           *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)


def _rows(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (results / "c" / "trials").glob("*.json")]


def test_shards_read_on_two_nodes_and_every_row_names_its_node(tmp_path, cluster):
    from rankbench.bench.data.fake import write_fake_shards

    root = write_fake_shards(tmp_path / "shards", classes=2, per_class=8, val_per_class=2, size=(24, 20),
                             per_shard=5)
    assert len(list((root / "train").glob("*.tar"))) >= 2
    spec = SHARDS_SPEC.replace("ROOT", str(root))
    results = tmp_path / "results"
    cluster.head("head")
    cluster.worker("w1")
    # the rehearsal a user runs before a long sweep: every node checked, nothing trained
    r = _run(tmp_path, cluster.address, results, spec, "--preflight-only")
    assert r.returncode == 0 and "preflight: 2 nodes see the results folder" in r.stdout, r.stdout + r.stderr
    assert "nothing trained" in r.stdout and not _rows(results)
    r = _run(tmp_path, cluster.address, results, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(results)
    assert len(rows) == 2 and all(row["status"] == "ok" and row["train_images"] == 16 for row in rows)
    nodes = [row.get("node") for row in rows]
    assert all(n and n["ip"] and len(n["id"]) >= 12 for n in nodes), nodes
    assert len({n["id"] for n in nodes}) == 2, nodes


def _nodes_in_log(log: str) -> list[str]:
    return re.findall(r"on node \S+ \(Ray node ([0-9a-f]+)\)", log)


def _wait_for_epochs(results: Path, n: int, p: subprocess.Popen, timeout: float = 180) -> Path:
    """The log of the sweep's one trial once it holds ``n`` epoch lines and epoch ``n``'s
    checkpoint is on disk (the loop logs an epoch before it saves it: the test waits for the
    checkpoint file to be replaced after the line, so a slow disk cannot make it resume earlier)."""
    deadline = time.monotonic() + timeout
    seen: int | None = None              # the checkpoint's mtime when the n-th line was seen
    while time.monotonic() < deadline:
        logs = list((results / "c" / "logs").glob("*.log"))
        try:
            mtime = next((results / "c" / "checkpoints").glob("*/epoch.pt")).stat().st_mtime_ns
        except (StopIteration, FileNotFoundError):   # none yet, or mid-rotation: look again
            mtime = -1 if seen is None else seen
        if seen is None and logs and epochs_logged(logs[0]) >= n:
            seen = mtime
        elif seen is not None and mtime != seen:
            return logs[0]
        assert p.poll() is None, p.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"no trial checkpointed epoch {n} in {timeout} s")


LONG_SPEC = """
sweep: c
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 4, batch_size: 16}
measure: {latency_repeats: 2}
resources: RES
methods: [dense]
"""


def _lose_a_node_mid_trial(tmp_path: Path, cluster: Cluster, resources: str, lost: str, spare: str) -> tuple[dict, str]:
    """Run LONG_SPEC, kill node ``lost`` once the trial has checkpointed two epochs, start
    ``spare``; return the row and the log."""
    results = tmp_path / "results"
    p = _run(tmp_path, cluster.address, results, LONG_SPEC.replace("RES", resources), wait=False)
    try:
        log = _wait_for_epochs(results, 2, p)
        cluster.kill(lost)
        cluster.worker(spare)
        out, _ = p.communicate(timeout=300)
    finally:
        kill_session(p.pid)
    assert p.returncode == 0, out
    assert "retry " in out and "resuming from the last epoch checkpoint" in out, out
    (row,) = _rows(results)
    return row, log.read_text()


def _resumed_once_each_epoch_once(row: dict, log: str) -> None:
    assert row["status"] == "ok"
    resumed = [int(k) for k in re.findall(r"\[train\] resumed from epoch (\d+)/4", log)]
    assert len(resumed) == 1 and resumed[0] >= 2, log            # from its checkpoint, not from scratch
    # nothing duplicated: the row's history has every epoch exactly once
    assert [h["epoch"] for h in row["history"]] == list(range(1, 5)), row["history"]
    for e in range(resumed[0] + 1, 5):
        assert log.count(f"[train] epoch {e}/4 ") == 1, log


def test_a_trial_whose_node_is_lost_resumes_on_another_node_from_its_checkpoint(tmp_path, cluster):
    cluster.head("head", cpus=0)         # trials run on the workers only
    cluster.worker("w1")
    row, log = _lose_a_node_mid_trial(tmp_path, cluster, "{cpus: 1}", lost="w1", spare="w2")
    _resumed_once_each_epoch_once(row, log)
    first, second = _nodes_in_log(log)
    assert first != second and row["node"]["id"] == second, (first, second, row["node"])


def test_a_ddp_trial_spans_two_nodes_and_restarts_its_group_when_one_is_lost(tmp_path, cluster):
    cluster.head("head", cpus=0)
    cluster.worker("w1", "w2")
    row, log = _lose_a_node_mid_trial(tmp_path, cluster, "{cpus: 2, workers: 2}", lost="w2", spare="w3")
    _resumed_once_each_epoch_once(row, log)
    # one CPU per node: the two ranks sat on two nodes, before and after the loss
    assert len(row["rank_nodes"]) == 2 and len({n["id"] for n in row["rank_nodes"]}) == 2, row["rank_nodes"]
    assert row["node"] == row["rank_nodes"][0]
    assert len(row["ddp"]["weights_sha256"]) == 2 and len(set(row["ddp"]["weights_sha256"])) == 1
    # rank 0 logs every rank's node once per attempt: the lost node's rank moved to the spare
    before, after = (set(line.split()) for line in re.findall(r"ranks on Ray nodes (.+)", log))
    assert len(before) == len(after) == 2 and len(before & after) == 1, (before, after)
    assert after == {n["id"] for n in row["rank_nodes"]}


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
