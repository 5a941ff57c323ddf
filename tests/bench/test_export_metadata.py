"""An exported model says what feeds it and what it outputs (trial, method, ranks, classes,
input shape, normalisation), read back without running any code; every exported file honours
the umask."""
from __future__ import annotations

import importlib.util
import json
import os
import stat

import pytest
import torch

from rankbench.bench.results.export import export_compressed
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from test_compressed import SPEC    # the digits TRP trial that test exports too

HAS_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    trial = parse_spec(SPEC).trials[0]
    row = run_trial(trial, root)
    assert row["status"] == "ok", row.get("error")
    return root, trial, row


def _check(meta: dict[str, str], trial, row) -> None:
    """The metadata of an export of the digits TRP trial, each value JSON text."""
    got = {k.removeprefix("rankbench."): json.loads(v) for k, v in meta.items()}
    assert got["trial_id"] == trial.id and got["method"] == "trp" and got["params"]["scheme"] == "channel"
    assert got["num_classes"] == 10 and got["class_names"] == [str(i) for i in range(10)]
    assert got["input_shape"] == ["N", 1, 8, 8] and got["dataset"] == "digits"
    norm = got["normalization"]
    # digits: the training split's scalar statistics of pixels in [0, 1]
    assert len(norm["mean"]) == len(norm["std"]) == 1 and 0 < norm["mean"][0] < 1 and norm["std"][0] > 0
    ranks = got["ranks"]
    assert ranks["factorized"] == sum(1 for L in row["layers"] if not L["skipped"]) > 0
    assert [L.get("rank") for L in ranks["layers"] if "rank" in L] == [L["rank"] for L in row["layers"]
                                                                         if not L["skipped"]]


@pytest.mark.skipif(not HAS_ONNX, reason="the [onnx] extra (onnx, onnxruntime, onnxscript) is not installed")
def test_onnx_metadata_props_carry_the_trial_and_its_data(trained, tmp_path):
    import onnx

    root, trial, row = trained
    out = export_compressed(trial.id, "onnx", tmp_path / "m.onnx", results=root)
    proto = onnx.load(str(out.path))        # a protobuf: nothing runs
    _check({p.key: p.value for p in proto.metadata_props}, trial, row)


def test_torch_export_extra_files_carry_the_trial_and_its_data(trained, tmp_path):
    root, trial, row = trained
    out = export_compressed(trial.id, "torch", tmp_path / "m.pt2", results=root)
    keys = ("trial_id", "method", "params", "ranks", "num_classes", "class_names", "input_shape",
            "normalization", "dataset")
    extra = {f"rankbench.{k}.json": "" for k in keys}
    torch.export.load(str(out.path), extra_files=extra)
    _check({k.removesuffix(".json"): v for k, v in extra.items()}, trial, row)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_exported_file_honours_the_umask(trained, tmp_path, mask):
    root, trial, _ = trained
    formats = ["torch"] + (["onnx"] if HAS_ONNX else [])
    old = os.umask(mask)
    try:
        paths = [export_compressed(trial.id, f, tmp_path / f"m-{f}", results=root).path for f in formats]
    finally:
        os.umask(old)
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p
