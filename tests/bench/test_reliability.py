"""Bad input gets one clear line, faults lose nothing, a sweep always finishes.

Faults are injected for real: a method plugin that raises (installed as a third-party plugin so
Ray workers find it), a Ray worker process killed with SIGKILL mid-trial, the driver interrupted
with Ctrl-C (SIGINT to its process group), a second driver on the same folder, and ENOSPC while a
row is being written. Already covered elsewhere (not repeated here):
- every bad-input message, word by word, at the parser: tests/bench/test_spec.py (ERRORS),
  tests/bench/test_data_cifar.py (dataset layout), tests/bench/test_pretrained_check.py (pretrained keys/shapes);
- the driver killed with SIGKILL and resumed, each trial exactly once: tests/bench/test_resume.py;
- a failed os.replace leaves the old file and no temp file: tests/bench/test_store.py;
- an unwritable results folder: tests/bench/test_store.py; a NaN baseline failing its methods:
  tests/bench/test_sweep.py; trial ids independent of key order: tests/bench/test_spec.py.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from rankbench.bench.cli import main
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store
from rankbench.bench.running.sweep import run_sweep
from procs import bench_run, epochs_logged, install, kill_session, session_pids

ROOT = Path(__file__).resolve().parents[2]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _no_run(monkeypatch) -> None:
    """Anything that would start Ray or a trial fails the test: bad input must stop before."""
    def started(*a, **kw):
        raise AssertionError("bad input reached Ray / a trial")

    monkeypatch.setattr("rankbench.bench.running.sweep.init_ray", started)
    monkeypatch.setattr("rankbench.bench.running.run.run_trial", started)


# ---------------------------------------------------------------------------- 1. bad input

def _cifar_two_batches(tmp: Path) -> Path:
    root = tmp / "cifar"
    root.mkdir()
    for f in ("data_batch_1", "data_batch_2"):
        (root / f).write_bytes(b"")
    return root


def _wrong_head(tmp: Path) -> Path:
    from rankbench.bench.models.builtin import build_model

    w = tmp / "cnn-3-classes.pt"
    torch.save(build_model("cnn", 3, (1, 8, 8)).state_dict(), w)   # digits has 10 classes
    return w


# case -> (spec text, [field, value, what is accepted, ...]); ``tmp`` is the test's folder
BAD = {
    "malformed-yaml": lambda tmp: ("sweep: t\nmethods: [{name: dense}\n",
                                   ["yaml: ", "line 3, column 1", "accepted: a valid YAML mapping"]),
    "unknown-key": lambda tmp: ("sweep: t\ntrain: {epocs: 3}\nmethods: [dense]\n",
                                ["train.epocs", "did you mean 'epochs'", "accepted: epochs, batch_size"]),
    "unknown-method": lambda tmp: ("sweep: t\nmethods: [{name: tpr}]\n",
                                   ["methods[0].name", "'tpr'", "did you mean 'trp'", "accepted: arsvd, ", ", dense, ", ", trp"]),
    "unknown-model": lambda tmp: ("sweep: t\nmodel: resnet21\nmethods: [dense]\n",
                                  ["model: ", "'resnet21'", "accepted: cnn, mlp"]),
    "unknown-dataset": lambda tmp: ("sweep: t\ndata: {name: mnist}\nmethods: [dense]\n",
                                    ["data.name", "'mnist'", "accepted: cifar10, cifar100, digits"]),
    "energy-above-1": lambda tmp: ("sweep: t\nmethods: [{name: trp, energy: 1.5}]\n",
                                   ["energy", "1.5", "accepted: a number in (0, 1]"]),
    "energy-0": lambda tmp: ("sweep: t\nmethods: [{name: arsvd, rule: 'energy:0'}]\n",
                             ["rule", "'energy:0'", "accepted: ", "0<E<=1"]),
    "negative-period": lambda tmp: ("sweep: t\nmethods: [{name: deeptwist, period: -5}]\n",
                                    ["period", "-5", "accepted: an int >= 1"]),
    "speedup-1-trp-export": lambda tmp: ("sweep: t\nmethods: [{name: trp, export: 'speedup:1.0'}]\n",
                                         ["export", "'speedup:1.0'", "accepted: ", "S>1"]),
    "speedup-0.5-svd-rule": lambda tmp: ("sweep: t\nmethods: [{name: svd, rule: 'speedup:0.5'}]\n",
                                         ["rule", "'speedup:0.5'", "accepted: ", "S>1"]),
    "data-root-missing": lambda tmp: (f"sweep: t\ndata: {{name: cifar10, root: {tmp}/nope}}\nmethods: [dense]\n",
                                      ["data.root", f"{tmp}/nope", "does not exist",
                                       "accepted: the CIFAR-10 python layout"]),
    "data-root-wrong-layout": lambda tmp: (
        f"sweep: t\ndata: {{name: cifar10, root: {_cifar_two_batches(tmp)}}}\nmethods: [dense]\n",
        ["data.root", f"{tmp}/cifar", "has no data_batch_3", "accepted: the CIFAR-10 python layout"]),
    "pretrained-shapes": lambda tmp: (
        f"sweep: t\nmodel: {{name: cnn, pretrained: {_wrong_head(tmp)}}}\nmethods: [dense]\n",
        ["model.pretrained", f"'{tmp}/cnn-3-classes.pt'", "has shape (3, ", "the model expects (10, ",
         "accepted: a state dict of cnn for 10 classes"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_before_anything_runs(case, tmp_path, capsys, monkeypatch):
    text, needles = BAD[case](tmp_path)
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    _no_run(monkeypatch)
    rc, out, err = _cli(["run", str(spec), "--results", str(tmp_path / "res")], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert not (tmp_path / "res").exists()            # refused before any folder was made


def test_results_folder_of_an_incompatible_version_exits_2_and_is_left_alone(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "ok.yaml"
    spec.write_text("sweep: t\nseeds: [0]\nmethods: [dense]\n")
    fmt = tmp_path / "res" / "t" / "FORMAT"
    fmt.parent.mkdir(parents=True)
    fmt.write_text('{"format": 999}')
    _no_run(monkeypatch)
    rc, out, err = _cli(["run", str(spec), "--results", str(tmp_path / "res")], capsys)
    assert rc == 2 and out == ""
    assert err.strip() == (f"error: results: {str(fmt.parent)!r}: format 999 (written by another rankbench "
                           f"version); accepted: format 1, or a new --results folder")
    assert fmt.read_text() == '{"format": 999}'
    assert {str(p.relative_to(fmt.parent)) for p in fmt.parent.rglob("*")} <= {"FORMAT", "trials"}


# ------------------------------------------------------------- 2. faults: a trial that raises

PLUGIN = '''
"""Test-only rankbench plugin: fails in epoch ``at_epoch`` by raising, or by a NaN weight."""
import torch

from rankbench.methods.api.base import Method, check_param


class Boom(Method):
    def __init__(self, mode: str = "raise", at_epoch: int = 2):
        check_param("mode", mode, mode in ("raise", "nan", "none"), "raise, nan, none")
        self.mode, self.at_epoch = mode, at_epoch

    def before_step(self, model, step):
        if step == (self.at_epoch - 1) * self.ctx.steps_per_epoch:
            if self.mode == "none":
                return
            if self.mode == "raise":
                raise RuntimeError(f"boom in epoch {self.at_epoch}")
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
'''

BOOM_SPEC = """
sweep: boom
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: test-boom, mode: [raise, nan, none]}
"""


def test_a_trial_that_raises_or_goes_nan_is_failed_with_reason_and_epoch_and_the_sweep_goes_on(
        tmp_path, capsys):
    plugins = tmp_path / "plugins"
    install(plugins, "rb_boom", PLUGIN, {"test-boom": "rb_boom:Boom"})
    spec = tmp_path / "boom.yaml"
    spec.write_text(BOOM_SPEC)
    # two slots, three trials: the third can only start once one of the first two ended
    p = bench_run([str(spec), "--results", str(tmp_path / "res"), "--max-concurrent", "2"], tmp_path,
               pythonpath=str(plugins))
    try:
        out, _ = p.communicate(timeout=240)
    finally:
        kill_session(p.pid)
    assert p.returncode == 1, out                        # 1: the sweep finished, some trials failed
    store = Store(tmp_path / "res", "boom")
    rows = {r["params"]["mode"]: r for r in store.results()}
    assert sorted(rows) == ["nan", "none", "raise"]
    assert rows["raise"]["status"] == "failed" and rows["raise"]["error"] == "RuntimeError: boom in epoch 2"
    assert rows["nan"]["status"] == "failed"
    assert rows["nan"]["error"].startswith("TrainingDiverged: train loss became nan in epoch 2")
    assert rows["raise"]["last_good_epoch"] == rows["nan"]["last_good_epoch"] == 1
    # the sweep went on after the failures and finished the last trial
    assert rows["none"]["status"] == "ok" and rows["none"]["top1"] > 50
    lines = out.splitlines()
    first_fail = next(i for i, ln in enumerate(lines) if "| FAIL " in ln)
    assert any("| start " in ln for ln in lines[first_fail:]), out    # a trial began after it
    assert "3 trials: 1 ok, 2 failed" in out and "RuntimeError: boom in epoch 2" in out

    rc, rep, _ = _cli(["report", str(store.dir), "--out", str(tmp_path / "tables")], capsys)
    assert rc == 0
    assert "2 failed trial(s)" in rep
    failed = [ln for ln in rep.splitlines() if ln.startswith("- `boom/")]
    assert len(failed) == 2
    assert any("RuntimeError: boom in epoch 2 (last good epoch 1)" in ln for ln in failed), failed
    assert any("TrainingDiverged: train loss became nan in epoch 2" in ln and "(last good epoch 1)" in ln
               for ln in failed), failed


# ------------------------------------------------------------ 2. faults: a Ray worker killed

WORKER_SPEC = """
sweep: wk
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 4, batch_size: 32, lr: 0.05}
measure: {latency_repeats: 2}
methods: [dense]
"""


def _pid_holding(path: Path) -> int | None:
    """The process that has ``path`` open (the Ray worker running the trial holds its log)."""
    target = str(path.resolve())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            for fd in (d / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(d.name)
        except OSError:
            continue
    return None


def test_a_killed_ray_worker_is_retried_from_its_last_epoch_checkpoint(tmp_path, ray_session):
    sweep = parse_spec(WORKER_SPEC)
    (t,) = sweep.trials
    store = Store(tmp_path, "wk")
    log, ck = store.log_path(t.id), store.epoch_checkpoint(t.id)
    killed: dict[str, int] = {}

    def kill_worker_after_an_epoch() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not store.trial_path(t.id).exists():
            if ck.exists() and epochs_logged(log) >= 1:
                pid = _pid_holding(log)
                if pid is not None:
                    killed["epochs"] = torch.load(ck, weights_only=False)["epoch"]
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_worker_after_an_epoch, daemon=True)
    watcher.start()
    lines: list[str] = []
    s = run_sweep(sweep, tmp_path, out=lines.append)
    watcher.join(5)
    assert killed.get("pid"), "the trial finished before its worker could be killed"
    assert 1 <= killed["epochs"] < 4
    assert any(f"retry {t.id}" in ln for ln in lines), lines
    assert s.failed == {} and s.ran == 1
    row = store.read_result(t.id)
    assert row["status"] == "ok"
    text = log.read_text()
    # the second attempt resumed from the checkpoint it found (at least the one seen at the kill)
    resumed = [ln for ln in text.splitlines() if "[train] resumed from epoch " in ln]
    assert len(resumed) == 1, text
    at = int(resumed[0].split("resumed from epoch ")[1].split("/")[0])
    assert at >= killed["epochs"] >= 1
    after = text.split(resumed[0], 1)[1]
    assert "[train] epoch 1/4" not in after                      # not from scratch
    assert [h["epoch"] for h in row["history"]] == [1, 2, 3, 4]      # every epoch exactly once
    assert text.count(f"trial {t.id}: ok") == 1


# ------------------------------------- 2. faults: the driver interrupted; two sweeps at once

SIGINT_EPOCHS = 8
SIGINT_SPEC = f"""
sweep: sig
seeds: [0, 1]
data: {{name: digits}}
model: cnn
train: {{epochs: {SIGINT_EPOCHS}, batch_size: 32, lr: 0.05}}
measure: {{latency_repeats: 2}}
methods: [dense]
"""


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict:
    """``rankbench run`` in a subprocess (driver A, one trial at a time); while A holds the
    folder, this process starts the same sweep on it; then Ctrl-C reaches A's process group once
    one trial is finished and the other is on its way (1 or 2 of its 8 epochs checkpointed). The
    6 epochs left are a wide window, but how long the signal takes to land is up to the machine,
    so the test accepts the second trial finished too (see the test)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("sigint")
    spec = tmp / "sig.yaml"
    spec.write_text(SIGINT_SPEC)
    res = tmp / "res"
    sdir = res / "sig"
    seen: dict = {"spec": spec, "res": res, "dir": sdir}
    p = bench_run([str(spec), "--results", str(res), "--max-concurrent", "1"], tmp)
    seen["pid"] = p.pid
    try:
        deadline = time.monotonic() + 120
        lock = sdir / ".lock"
        while p.poll() is None and time.monotonic() < deadline:
            if lock.exists() and lock.read_text().strip() == str(p.pid):
                break
            time.sleep(0.05)
        err, out = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            _no_run(mp)
            try:
                rc = main(["run", str(spec), "--results", str(res)])
            except AssertionError as e:               # it got past the lock: record, fail that test only
                rc = f"not refused: {e}"
            seen["second"] = (rc, out.getvalue(), err.getvalue())
        seen["second_alive"] = p.poll() is None       # A really was running meanwhile

        while p.poll() is None and time.monotonic() < deadline:
            rows = {f.stem for f in (sdir / "trials").glob("*.json")}
            early = [c.parent.name for c in (sdir / "checkpoints").glob("*/epoch.pt")
                     if c.parent.name not in rows and epochs_logged(sdir / "logs" / f"{c.parent.name}.log") <= 2]
            if rows and early:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the sweep ended before Ctrl-C:\n" + p.stdout.read()
        os.killpg(p.pid, signal.SIGINT)               # what Ctrl-C in a terminal does
        seen["out"], _ = p.communicate(timeout=90)
        seen["rc"] = p.returncode
        for _ in range(100):                          # Ray's processes go with their driver
            seen["left"] = session_pids(p.pid)
            if not seen["left"]:
                break
            time.sleep(0.1)
        seen["done"] = {f.stem for f in (sdir / "trials").glob("*.json")}
        seen["partial"] = {c.parent.name for c in (sdir / "checkpoints").glob("*/epoch.pt")} - seen["done"]
        seen["logs"] = {f.stem: f.read_text() for f in (sdir / "logs").glob("*.log")}
    finally:
        kill_session(p.pid)
    return seen


def test_a_second_sweep_on_a_folder_in_use_is_refused_and_writes_nothing(interrupted):
    rc, out, err = interrupted["second"]
    assert interrupted["second_alive"]
    assert rc == 2 and out == ""                      # refused before its first progress line
    assert err.strip() == (f"error: results: {str(interrupted['dir'])!r}: in use by another sweep "
                           f"(pid {interrupted['pid']}); accepted: one sweep per results folder at a time")
    # nothing mixed in: each trial's log holds only driver A's single attempt
    for tid, text in interrupted["logs"].items():
        assert text.count(f"trial {tid}: dense") == 1, text


def test_ctrl_c_mid_sweep_then_the_same_command_resumes_and_runs_each_trial_once(interrupted, ray_session,
                                                                                   capsys):
    assert interrupted["rc"] == 130, interrupted["out"]
    assert "interrupted: finished trials are kept; run the same command again to resume" in interrupted["out"]
    assert interrupted["left"] == []                  # no Ray process outlives the interrupted driver
    trials = parse_spec(SIGINT_SPEC).trials
    done, partial = interrupted["done"], interrupted["partial"]
    # Ctrl-C came with one trial finished and the other checkpointed mid-way; before the signal
    # landed that one may have finished too (a fast machine). Either way nothing is lost: every
    # trial has its row or its epoch checkpoint.
    assert len(done) >= 1, (done, partial)
    assert done | partial == {t.id for t in trials}, (done, partial)

    # the same command again (in this process, on the test session's Ray): runs exactly the
    # trials without a row, each resuming from its checkpoint
    rc, out, _ = _cli(["run", str(interrupted["spec"]), "--results", str(interrupted["res"])], capsys)
    assert rc == 0, out
    assert f"2 trials, {len(done)} already done, {len(partial)} to run" in out
    store = Store(interrupted["res"], "sig")
    for t in trials:
        row = store.read_result(t.id)
        assert row is not None and row["status"] == "ok", (t.id, row)
        log = store.log_path(t.id).read_text()
        assert log.count(f"trial {t.id}: ok") == 1, log          # finished exactly once
        if t.id in done:
            assert log == interrupted["logs"][t.id]               # never touched again
        else:
            assert log.count(f"trial {t.id}: dense") == 2         # the cut attempt and the resume
            assert "[train] resumed from epoch " in log.split(f"trial {t.id}: dense")[2]
        assert [h["epoch"] for h in row["history"]] == list(range(1, SIGINT_EPOCHS + 1))   # each epoch once
    # each trial's row and compressed model, nothing else (no temp file left behind)
    assert sorted(p.name for p in (store.dir / "trials").iterdir()) == \
        sorted(f"{t.id}{ext}" for t in trials for ext in (".json", ".model.pt"))


# ---------------------------------------------------------- 2. faults: disk full (ENOSPC)

DENSE_SPEC = """
sweep: full
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods: [dense]
"""


class _DiskFills:
    """A file whose write puts half the bytes on disk, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _disk_full_under(monkeypatch, folder: str) -> None:
    """ENOSPC for every file the store writes whose path contains ``folder``."""
    real = os.fdopen

    def fdopen(fd, *a, **kw):
        f = real(fd, *a, **kw)
        return _DiskFills(f) if folder in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_disk_full_while_a_row_is_written_leaves_no_partial_row_and_the_rerun_resumes(tmp_path, monkeypatch):
    (t,) = parse_spec(DENSE_SPEC).trials
    store = Store(tmp_path, "full")
    _disk_full_under(monkeypatch, "/trials/")
    with pytest.raises(OSError) as ei:
        run_trial(t, tmp_path)
    assert ei.value.errno == errno.ENOSPC and str(store.trial_path(t.id)) in str(ei.value)
    assert list(store.trials_dir.iterdir()) == []        # neither the row nor a half of it
    assert store.read_result(t.id) is None and not store.is_done(t.id)
    assert store.epoch_checkpoint(t.id).exists()          # the trained epochs are kept
    log = store.log_path(t.id).read_text()
    assert f"trial {t.id}: result not written: OSError: [Errno 28] No space left on device" in log, log

    monkeypatch.undo()                                    # space freed: the same trial again
    row = run_trial(t, tmp_path)
    assert row["status"] == "ok" and store.is_done(t.id)
    assert "[train] resumed from epoch 2/2" in store.log_path(t.id).read_text()
    assert [h["epoch"] for h in row["history"]] == [1, 2]


def test_disk_full_in_the_driver_is_one_clear_line_and_no_partial_file(tmp_path, capsys, monkeypatch):
    (t,) = parse_spec(DENSE_SPEC).trials
    spec = tmp_path / "full.yaml"
    spec.write_text(DENSE_SPEC)
    store = Store(tmp_path / "res", "full")
    store.ensure()
    store.write_result({"trial_id": t.id, "sweep": "full", "status": "ok", "method": "dense"})
    store.baseline_weights(t.id).parent.mkdir(parents=True)
    torch.save({}, store.baseline_weights(t.id))          # done: the run only rewrites results.csv
    _disk_full_under(monkeypatch, "results.csv")
    _no_run(monkeypatch)
    rc, out, err = _cli(["run", str(spec), "--results", str(tmp_path / "res")], capsys)
    assert rc == 2 and "1 already done, 0 to run" in out
    assert err.strip() == (f"error: results: {str(store.csv_path)!r}: No space left on device; "
                           f"accepted: a writable folder with free space")
    assert not store.csv_path.exists() and not list(store.dir.glob(".*.tmp"))


# ------------------------------------------------------------------------- 3. determinism

DET_SPEC = """
sweep: det
seeds: [3]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: trp, scheme: channel, nuclear: 1.0e-4, export: "speedup:2.0"}
"""
# measured time, not results: they differ run to run by nature
# timings, and the layouts that won them (the fastest of near-equal layouts varies run to run)
VOLATILE = {"wall_s", "gpu_hours", "latency_ms", "dense_latency_ms", "latency_speedup",
            "latency_layout", "dense_latency_layout", "latency_layouts"}


def _stable(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in VOLATILE}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in row["history"]]
    return out


def test_same_spec_and_seed_on_the_same_machine_give_the_same_row(tmp_path):
    (t,) = parse_spec(DET_SPEC).trials
    a = run_trial(t, tmp_path / "a")
    b = run_trial(parse_spec(DET_SPEC).trials[0], tmp_path / "b")
    assert a["status"] == "ok" and a["top1"] is not None and a["layers"]
    assert _stable(a) == _stable(b)                     # every metric, rank and loss, bit for bit


def test_trial_ids_are_pinned_literals():
    # a change here re-runs (or orphans) every stored result: it must be deliberate, never a side
    # effect of a new default, a refactor of the id, or another Python (canonical JSON + sha256)
    def ids(text: str) -> list[tuple[str, str]]:
        # check=False: ids only (svd's channel scheme on the mlp would be refused: no layer to compress)
        return [(t.method, t.id) for t in parse_spec(text, check=False).trials]

    assert ids("sweep: pin\nseeds: [0]\nmethods: [{name: dense}]\n") == [("dense", "d45dc73eb991")]
    assert ids("sweep: pin\nseeds: [3]\nmodel: mlp\ntrain: {epochs: 2, lr: 0.1}\nmethods: [{name: svd, "
               "scheme: channel, rule: 'speedup:2.0', finetune_epochs: 1}]\n") == \
        [("dense", "e654db65a4c3"), ("svd", "749da5f873d7")]
    # the same trial with every mapping's keys in another order
    assert ids("methods: [{finetune_epochs: 1, rule: 'speedup:2.0', scheme: channel, name: svd}]\n"
               "train: {lr: 0.1, epochs: 2}\nmodel: mlp\nseeds: [3]\nsweep: pin\n") == \
        [("dense", "e654db65a4c3"), ("svd", "749da5f873d7")]
    assert ids("sweep: pin\nmethods: [{name: trp, nuclear: 3.0e-4, export: 'speedup:2.0'}]\n") == \
        [("trp", "4468e2e48690")]
