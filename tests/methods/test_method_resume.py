"""A method's state survives a real crash: ``rankbench run`` is killed with SIGKILL (the driver and
every process it started) after a trial's first epoch checkpoint, the same command is run again,
and the trial goes on from the checkpoint with the method's ``state_dict`` restored.

Two methods with state run side by side: a step counter installed as a third-party plugin (its
state is the number of steps it has seen, so a lost state shows as a short count), and
``svd-training``, which replaces layers at attach (the checkpoint's U, s, V load into them)."""
from __future__ import annotations

from pathlib import Path

from rankbench.bench.results.store import Store
from procs import bench_run, epochs_logged, install, kill_driver_when, kill_session

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 16          # long enough that both trials are mid-run together on a slow or busy machine

COUNTER = '''
"""Test-only rankbench plugin: its state is how many training steps it has seen."""
from rankbench.methods.api.base import Method, MethodReport


class Counter(Method):
    def __init__(self, scale: float = 1.0) -> None:
        self.scale, self.steps, self.last, self.loaded = scale, 0, -1, None

    def before_step(self, model, step):
        self.steps += 1
        self.last = step

    def state_dict(self):
        return {"steps": self.steps, "last": self.last}

    def load_state_dict(self, state):
        self.steps, self.last, self.loaded = state["steps"], state["last"], dict(state)

    def report(self):
        return MethodReport(info={"steps": self.steps, "last": self.last, "loaded": self.loaded})
'''

SPEC = f"""
sweep: mstate
seeds: [0]
data: {{name: digits}}
model: cnn
train: {{epochs: {EPOCHS}, batch_size: 32, lr: 0.05}}
measure: {{latency_repeats: 2}}
methods:
  - {{name: test-counter}}
  - {{name: svd-training, rule: "speedup:2.0"}}
"""


def test_a_killed_trial_resumes_with_the_method_state_restored(tmp_path):
    plugins = tmp_path / "plugins"
    install(plugins, "rb_counter", COUNTER, {"test-counter": "rb_counter:Counter"})
    spec = tmp_path / "mstate.yaml"
    spec.write_text(SPEC)
    results = tmp_path / "res"
    sweep_dir = results / "mstate"
    pythonpath = str(plugins)
    p = bench_run([str(spec), "--results", str(results), "--max-concurrent", "2"], tmp_path, pythonpath=pythonpath)

    def both_started_neither_done() -> bool:
        """Both trials have an epoch checkpoint, neither a row, and neither is near its end."""
        cks = list((sweep_dir / "checkpoints").glob("*/epoch.pt"))
        rows = list((sweep_dir / "trials").glob("*.json"))
        return len(cks) == 2 and not rows and all(
            1 <= epochs_logged(sweep_dir / "logs" / f"{c.parent.name}.log") <= EPOCHS - 3 for c in cks)

    kill_driver_when(p, both_started_neither_done, timeout=240)
    assert not list((sweep_dir / "trials").glob("*.json"))

    q = bench_run([str(spec), "--results", str(results), "--max-concurrent", "2"], tmp_path, pythonpath=pythonpath)
    try:
        out, _ = q.communicate(timeout=300)
    finally:
        kill_session(q.pid)
    assert q.returncode == 0, out
    rows = {r["method"]: r for r in Store(results, "mstate").results()}
    assert sorted(rows) == ["svd-training", "test-counter"] and all(r["status"] == "ok" for r in rows.values())
    for r in rows.values():
        log = Store(results, "mstate").log_path(r["trial_id"]).read_text()
        assert "[train] resumed from epoch" in log, log
        assert [h["epoch"] for h in r["history"]] == list(range(1, EPOCHS + 1))   # each epoch once
    info = rows["test-counter"]["method_info"]
    # restored: the count went on from the checkpoint, so it equals the number of steps in all
    assert info["loaded"] is not None and info["loaded"]["steps"] >= 1
    assert info["steps"] == info["last"] + 1 > info["loaded"]["steps"]
    # svd-training's factors were restored into its replaced layers: the run compressed as asked
    assert abs(rows["svd-training"]["macs_speedup"] - 2.0) < 0.04
    assert rows["svd-training"]["top1"] > 50
