"""Shared storage through rankbench.bench.results.filesystem and rankbench.bench.results.store: a store on a file:// URI (pyarrow's file
system, the code path s3:// and gs:// take), an object store without rename, a bad storage URI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rankbench.bench.results.filesystem import RemotePath, StorageURIError, location, open_append, read_bytes_io
from rankbench.bench.results.store import Store, atomic_torch_save


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp")]


def test_store_on_a_file_uri_reads_and_writes_through_pyarrow(tmp_path):
    uri = f"file://{tmp_path}/shared"
    store = Store(uri, "s")
    assert isinstance(store.dir, RemotePath) and str(store.dir) == f"{uri}/s"
    store.ensure()
    assert json.loads((tmp_path / "shared/s/FORMAT").read_text())["format"] == 1
    row = {"trial_id": "abc", "status": "ok", "top1": 90.0}
    store.write_result(row)
    assert store.read_result("abc") == row and store.is_done("abc")
    assert store.read_result("missing") is None
    assert [r["trial_id"] for r in store.results()] == ["abc"]
    atomic_torch_save({"w": torch.arange(4)}, store.epoch_checkpoint("abc"))
    with read_bytes_io(store.epoch_checkpoint("abc")) as f:
        assert torch.equal(torch.load(f, weights_only=True)["w"], torch.arange(4))
    # a log appended by two attempts of one trial keeps both
    for line in ("first\n", "second\n"):
        with open_append(store.log_path("abc")) as f:
            f.write(line)
    assert (tmp_path / "shared/s/logs/abc.log").read_text() == "first\nsecond\n"
    assert "top1" in store.write_csv().read_text()
    with pytest.raises(OSError):
        store.checkpoint_dir("abc").rmdir()            # not empty: kept, as Path.rmdir does
    store.epoch_checkpoint("abc").unlink()
    store.checkpoint_dir("abc").rmdir()
    assert not (tmp_path / "shared/s/checkpoints/abc").exists()
    assert _no_temp_files(tmp_path)                    # every write went temp -> move


def test_object_store_without_rename_writes_each_file_once(tmp_path):
    """An fs with no atomic move (like S3): one upload per write, never a temp file left over."""
    fsspec = pytest.importorskip("fsspec")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    mem = fsspec.filesystem("memory")
    mem.store.clear()
    fs = PyFileSystem(FSSpecHandler(mem))
    created: list[str] = []
    real_open = mem.open

    def spy_open(path, mode="rb", *a, **kw):       # noqa: ANN001
        if "w" in mode:
            created.append(path)
        return real_open(path, mode, *a, **kw)

    mem.open = spy_open
    root = RemotePath(fs, "/bucket/results", "memory://")
    store = Store(root, "s")
    store.ensure()
    store.write_result({"trial_id": "t1", "status": "ok"})
    assert store.read_result("t1") == {"trial_id": "t1", "status": "ok"}
    assert all(not Path(p).name.startswith(".") for p in created), created   # no temp + move
    assert any(p.endswith("trials/t1.json") for p in created)


def test_a_bad_storage_uri_is_one_line_before_anything_runs(capsys):
    from rankbench.bench.cli import main

    with pytest.raises(StorageURIError, match=r"^storage: 'nope://x': .*; accepted: a local or NFS path"):
        location("nope://x")
    assert main(["run", "--storage", "nope://bucket/dir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: storage: 'nope://bucket/dir': ")


def test_storage_that_never_answers_is_given_up_after_the_timeout(capsys, monkeypatch):
    # a real S3 client against a real server that accepts the connection and never answers:
    # the first request is given up after $RANKBENCH_STORAGE_TIMEOUT, one line, exit 2
    import socket
    import threading

    from rankbench.bench.cli import main
    from rankbench.bench.results import filesystem

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:            # the server closed at the end of the test
                return

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    monkeypatch.setenv("RANKBENCH_STORAGE_TIMEOUT", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")          # no credential lookup on the network
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    uri = f"s3://bucket/dir?endpoint_override=127.0.0.1:{server.getsockname()[1]}&scheme=http&region=us-east-1"
    # how each bounded wait on the storage ended (the wall clock is never asserted: it depends
    # on the machine's load; one wait, ended by its 1 s limit, is what bounds the run)
    waits: list[str] = []
    bounded = filesystem._with_timeout

    def recorded(text, fn):   # noqa: ANN001, ANN202
        try:
            out = bounded(text, fn)
        except BaseException as e:
            waits.append(type(e).__name__)
            raise
        waits.append("answered")
        return out

    monkeypatch.setattr(filesystem, "_with_timeout", recorded)
    try:
        assert main(["run", "--storage", uri]) == 2
        assert held                                        # it did reach the server
    finally:
        server.close()
        for conn in held:                                  # the abandoned request fails and its thread ends
            conn.close()
    assert waits == ["TimeoutError"]                         # one wait, given up at the limit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: storage: {uri!r}: no answer within 1s"), err
