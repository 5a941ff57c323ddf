"""The compressed model is an output: saved beside its row, loaded in one line, exported."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import rankbench.bench
import rankbench.bench.running.run
from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.results.compressed import SUFFIX, compressed_path, read_payload
from rankbench.bench.results.export import export_compressed
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store

SPEC = """
sweep: c
seeds: [0]
data: digits
model: cnn
train: {epochs: 1, batch_size: 64}
measure: {latency_repeats: 2}
methods:
  - {name: trp, scheme: channel, export: "speedup:1.5"}
"""
X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One TRP trial on digits (1 epoch); the model the harness evaluated and its outputs on X."""
    root = tmp_path_factory.mktemp("results")
    trial = parse_spec(SPEC).trials[0]
    seen = {}
    evaluate = rankbench.bench.running.run.evaluate

    def spy(model, *a, **kw):
        out = evaluate(model, *a, **kw)
        seen["model"] = copy.deepcopy(model).cpu().eval()
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(rankbench.bench.running.run, "evaluate", spy)
    try:
        row = run_trial(trial, root)
    finally:
        mp.undo()
    assert row["status"] == "ok", row.get("error")
    with torch.no_grad():
        want = seen["model"](X)
    return root, trial, row, want


def test_a_trial_saves_its_compressed_model_beside_its_row_and_it_loads_to_the_same_outputs(trained):
    root, trial, row, want = trained
    store = Store(root, "c")
    path = compressed_path(store.trials_dir, trial.id)
    assert row["compressed_model"] == path.name == f"{trial.id}{SUFFIX}" and path.is_file()
    payload = read_payload(path)
    # rebuilt from the layer reports (no pickled module), at the ranks the row reports
    assert payload["architecture"] == "layers" and "module" not in payload
    assert [L["rank"] for L in payload["layers"]] == [L["rank"] for L in row["layers"]]
    assert any(L["rank"] for L in row["layers"])        # something was factorized
    for ref in (path, store.trial_path(trial.id)):       # the model file or the row
        model = rankbench.bench.load_compressed(ref)
        assert not model.training
        with torch.no_grad():
            assert torch.allclose(model(X), want, rtol=0, atol=1e-6)
    by_id = rankbench.bench.load_compressed(trial.id, results=root)   # a trial id, looked up under results
    with torch.no_grad():
        assert torch.allclose(by_id(X), want, rtol=0, atol=1e-6)


def test_load_and_export_from_a_storage_uri(trained, tmp_path, capsys):
    # file:// goes through pyarrow's file system, the code path s3:// and gs:// take
    root, trial, _, want = trained
    uri = f"file://{root}"
    model = rankbench.bench.load_compressed(trial.id, results=uri)            # a trial id under a URI
    with torch.no_grad():
        assert torch.allclose(model(X), want, rtol=0, atol=1e-6)
    row_uri = f"{uri}/c/trials/{trial.id}.json"                     # the row, by URI
    assert torch.allclose(rankbench.bench.load_compressed(row_uri)(X), want, rtol=0, atol=1e-6)
    out = export_compressed(trial.id, "torch", f"{uri}/exported/m.pt2", results=uri)
    assert str(out.path).startswith("file://") and (root / "exported" / "m.pt2").is_file()
    assert main(["export", trial.id, "--results", uri]) == 0        # default: beside the model
    assert (root / "c" / "trials" / f"{trial.id}.pt2").is_file() and "max |diff|" in capsys.readouterr().out
    program = torch.export.load(str(root / "c" / "trials" / f"{trial.id}.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(program(X), want, rtol=1e-5, atol=1e-5)


def test_a_missing_or_foreign_model_gets_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^model: 'nope': not found; accepted: "):
        rankbench.bench.load_compressed("nope", results=tmp_path)
    other = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(UserError, match=r"another kind of file"):
        rankbench.bench.load_compressed(other)


def test_torch_export_runs_and_matches_the_eager_model(trained, tmp_path):
    root, trial, _, want = trained
    out = export_compressed(trial.id, "torch", tmp_path / "m.pt2", results=root)
    assert out.path.is_file() and out.max_abs_diff <= 1e-4 * max(1.0, out.scale)
    program = torch.export.load(str(out.path)).module()
    with torch.no_grad():
        assert torch.allclose(program(X), want, rtol=1e-5, atol=1e-5)   # another batch size: 5


def test_onnx_export_runs_in_onnxruntime_and_matches(trained, tmp_path):
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("the [onnx] extra (onnx, onnxruntime, onnxscript) is not installed")
    import onnxruntime as ort

    root, trial, _, want = trained
    out = export_compressed(trial.id, "onnx", tmp_path / "m.onnx", results=root)
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_rankbench_export_from_the_command_line(trained, tmp_path, capsys):
    root, trial, _, _ = trained
    dest = tmp_path / "cli.pt2"
    assert main(["export", trial.id, "--format", "torch", "--results", str(root), "--out", str(dest)]) == 0
    assert dest.is_file() and "max |diff|" in capsys.readouterr().out
    assert main(["export", trial.id, "--format", "tflite", "--results", str(root)]) == 2
    assert capsys.readouterr().err.startswith("error: --format: ")


def test_a_method_with_layers_of_its_own_rebuilds_them_from_its_report(tmp_path):
    """Tucker-2 builds its own layer type: the saved model is rebuilt through the method's
    ``rebuild`` (no pickled module) and computes what the evaluated model computed."""
    sweep = parse_spec(SPEC.replace('{name: trp, scheme: channel, export: "speedup:1.5"}', "{name: tucker2}"))
    seen = {}
    evaluate = rankbench.bench.running.run.evaluate

    def spy(model, *a, **kw):
        seen["model"] = copy.deepcopy(model).cpu().eval()
        return evaluate(model, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(rankbench.bench.running.run, "evaluate", spy)
    try:
        rows = [run_trial(t, tmp_path) for t in sweep.trials]      # the dense baseline first
    finally:
        mp.undo()
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    path = compressed_path(Store(tmp_path, "c").trials_dir, rows[1]["trial_id"])
    payload = read_payload(path)
    assert payload["architecture"] == "layers" and payload["method"] == "tucker2"
    assert any(L["rank"] for L in payload["layers"])
    with torch.no_grad():
        assert torch.allclose(rankbench.bench.load_compressed(path)(X), seen["model"](X), rtol=0, atol=1e-6)
