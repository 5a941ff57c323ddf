"""Loading a file never runs code: every loader of a file a user may have been handed (CIFAR
batches, epoch checkpoints, baseline weights, pretrained state dicts, compressed models) is given
a pickle whose unpickling would call ``os.system``. Each must refuse (or set the file aside) with
a clear message, and the marker file the payload would create must not exist."""
from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.data import check_data
from rankbench.bench.results.compressed import FORMAT, load_compressed
from rankbench.bench.results.store import Store
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec


class Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious file on shared storage would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def cifar_root(tmp: Path, marker: Path) -> Path:
    """A CIFAR-10 folder in the official layout whose first training batch is the payload."""
    root = tmp / "cifar"
    root.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    return root


def test_the_payload_does_run_under_a_plain_unpickler(tmp_path):
    """The payload is real: plain pickle.load runs it (so the tests below prove the loaders refuse it)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_a_cifar_batch_that_would_run_code_is_refused_unloaded(tmp_path):
    marker = tmp_path / "ran"
    root = cifar_root(tmp_path, marker)
    with pytest.raises(UserError) as e:
        check_data({"name": "cifar10", "root": str(root)})
    msg = str(e.value)
    assert "data_batch_1" in msg and "refused unloaded" in msg and "posix.system" in msg, msg
    assert "\n" not in msg and not marker.exists()


def test_a_cifar_batch_of_float_pixels_is_refused(tmp_path):
    root = cifar_root(tmp_path, tmp_path / "unused")
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072)), b"labels": [0, 1, 2, 3]}))
    with pytest.raises(UserError, match=r"data_batch_1.*dtype float64; accepted: uint8 pixels"):
        check_data({"name": "cifar10", "root": str(root)})


def test_an_empty_cifar_test_batch_is_refused(tmp_path):
    root = cifar_root(tmp_path, tmp_path / "unused")
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4}))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}))
    with pytest.raises(UserError, match=r"test_batch.*holds no images"):
        check_data({"name": "cifar10", "root": str(root)})


def crafted_model_file(path: Path, marker: Path) -> Path:
    torch.save({"format": FORMAT, "architecture": "layers", "state_dict": {}, "x": Payload(marker)}, path)
    return path


def test_a_model_file_that_would_run_code_is_refused_by_load_and_export(tmp_path, capsys):
    marker = tmp_path / "ran"
    f = crafted_model_file(tmp_path / "evil.model.pt", marker)
    with pytest.raises(UserError, match="holds objects other than tensors and plain values, refused unloaded"):
        load_compressed(f)
    assert main(["export", str(f), "--out", str(tmp_path / "out.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model: ") and "refused unloaded" in err and "\n" not in err
    assert not marker.exists() and not (tmp_path / "out.pt2").exists()


SPEC = """
sweep: u
seeds: [0]
data: {name: digits}
model: mlp
train: {epochs: 1, batch_size: 64}
measure: {latency_repeats: 2}
methods:
  - {name: svd, scheme: linear, rule: "speedup:1.5"}
"""


def test_an_epoch_checkpoint_that_would_run_code_is_set_aside_and_training_starts_over(tmp_path):
    marker = tmp_path / "ran"
    dense = next(t for t in parse_spec(SPEC).trials if t.is_baseline)
    ck = Store(tmp_path, "u").epoch_checkpoint(dense.id)
    ck.parent.mkdir(parents=True)
    torch.save({"phase": "train", "epoch": 1, "model": Payload(marker)}, ck)
    row = run_trial(dense, tmp_path)
    assert row["status"] == "ok", row["error"]
    log = Store(tmp_path, "u").log_path(dense.id).read_text()
    assert f"checkpoint {ck} is unreadable" in log and "resumed from" not in log
    assert not marker.exists()


def test_baseline_weights_that_would_run_code_are_set_aside_not_loaded(tmp_path):
    marker = tmp_path / "ran"
    sweep = parse_spec(SPEC)
    dense = next(t for t in sweep.trials if t.is_baseline)
    svd = next(t for t in sweep.trials if not t.is_baseline)
    w = Store(tmp_path, "u").baseline_weights(dense.id)
    w.parent.mkdir(parents=True)
    torch.save({"weight": Payload(marker)}, w)
    row = run_trial(svd, tmp_path)
    assert row["status"] == "failed" and "unreadable" in row["error"] and "set aside" in row["error"]
    assert not marker.exists()


def test_a_pretrained_state_dict_that_would_run_code_is_refused_at_spec_time(tmp_path):
    marker = tmp_path / "ran"
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": Payload(marker)}, weights)
    spec = SPEC.replace("model: mlp", f"model: {{name: mlp, pretrained: {weights}}}")
    with pytest.raises(UserError) as e:
        parse_spec(spec)
    assert "pretrained" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
