"""Atomic writes: a result file is complete or absent, whatever fails in between."""
from __future__ import annotations

import json
import os

import pytest

from rankbench.bench.results.store import Store, StoreError, atomic_write_json


def test_a_failed_replace_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    p = tmp_path / "row.json"
    atomic_write_json(p, {"status": "ok", "top1": 1.0})

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(p, {"status": "ok", "top1": 2.0})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"status": "ok", "top1": 1.0}
    assert [f.name for f in tmp_path.iterdir()] == ["row.json"]


def test_nan_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "row.json", {"top1": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_results_folder_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"          # root ignores permissions: use a file in the way
        blocker.write_text("")
        store = Store(blocker, "s")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        store = Store(ro, "s")
    with pytest.raises(StoreError, match="results: .*accepted: a writable folder"):
        store.ensure()


def test_unreadable_row_counts_as_not_done(tmp_path):
    store = Store(tmp_path, "s")
    store.ensure()
    store.trial_path("abc").write_text('{"status": "ok", "trunc')
    assert store.read_result("abc") is None and not store.is_done("abc")
