"""The compressed model as an output: saved beside its trial's row, loaded back in one line.

Each finished trial writes ``results/<sweep>/trials/<trial_id>.model.pt`` (atomically, before its
row) holding the deployed model's state dict and what rebuilds its architecture:

- ``model``, ``model_options``, ``num_classes``, ``input_shape``: the dense network
  (``rankbench.bench.models.builtin.build_model``, no pretrained file: the state dict carries every weight);
- ``layers``: the method's per-layer reports (``rankbench.methods.lowrank.LayerReport``): which layers are
  factorized, under which scheme, at which rank;
- ``method``, ``params``: the method whose ``rebuild(model, layers)`` replays those reports on the
  dense network (``rankbench.methods.lowrank.build_factorized`` for the lowrank schemes; Tucker-2 and CP
  build their own layers).

The file holds tensors and plain values only, and is read with ``torch.load(weights_only=True)``:
opening a model file from someone else's storage never runs code. A method whose deployed model
is not that structure (a plugin that builds its own layers and has no ``rebuild``) still gets its
weights and reports saved (``architecture: "weights"``), but no module: ``load_compressed`` says
why and what would make it loadable (the method's ``rebuild``).

``load_compressed(ref)`` takes the file, the row's ``.json`` or a trial id (looked up under a
results folder) and returns the model in eval mode on the CPU, computing what the evaluated
model computed.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.torch_version import TorchVersion

from rankbench.bench.checks import PATH_QUOTE, bad
from rankbench.bench.results.filesystem import Location, location, read_bytes_io
from rankbench.bench.results.store import atomic_torch_save
from rankbench.bench.version import __version__

FORMAT = "rankbench.compressed/1"
SUFFIX = ".model.pt"


def compressed_path(trials_dir: Path, trial_id: str) -> Path:
    """Where trial ``trial_id``'s compressed model lives: beside its row in ``trials_dir``."""
    return trials_dir / f"{trial_id}{SUFFIX}"


def _rebuild(payload: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The architecture the payload describes, with freshly initialized weights."""
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods.lowrank import build_factorized
    from rankbench.methods.api.registry import build

    with torch.device(device):
        dense = build_model(payload["model"], payload["num_classes"], tuple(payload["input_shape"]),
                            **payload["model_options"])
        if not payload["layers"]:
            return dense
        if payload.get("method"):
            return build(payload["method"], payload.get("params") or {}).rebuild(dense, payload["layers"])
        return build_factorized(dense, payload["layers"])


def _same_structure(model: nn.Module, payload: dict[str, Any]) -> bool:
    """Whether rebuilding from the reports gives ``model``'s state-dict keys and shapes (checked on
    the meta device: no memory, no real SVDs)."""
    try:
        rebuilt = _rebuild(payload, "meta")
    except Exception:  # noqa: BLE001 (any failure to rebuild means: the weights alone are saved)
        return False
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    return want == got


def save_compressed(model: nn.Module, path: Path, *, model_name: str, model_options: dict[str, Any],
                    num_classes: int, input_shape: Sequence[int], layers: Sequence[dict[str, Any]],
                    method: str | None = None, params: dict[str, Any] | None = None,
                    info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (the deployed model) to ``path`` atomically, with what rebuilds it:
    ``method`` (a registry name) and its ``params`` rebuild ``layers`` (None: the lowrank schemes).

    ``info`` (e.g. trial id, top-1) rides along for whoever opens the file."""
    opts = {k: v for k, v in model_options.items() if k != "pretrained"}
    payload: dict[str, Any] = {
        "format": FORMAT, "rankbench": __version__, "torch": str(torch.__version__), "model": model_name, "model_options": opts,
        "num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape],
        "layers": [dict(L) for L in layers], "method": method, "params": dict(params or {}),
        "info": dict(info or {}),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
    }
    payload["architecture"] = "layers" if _same_structure(model, payload) else "weights"
    atomic_torch_save(payload, path)
    return path


def find_compressed(ref: str | Path, results: str | Path = "results") -> Location:
    """The model file ``ref`` names: the ``.model.pt`` itself, the trial's row (``<id>.json``),
    or a trial id, looked up in every sweep under ``results``. Paths and ``results`` may be
    storage URIs (``s3://...``, ``file:///...``), as for ``rankbench run --storage``."""
    p = location(ref)
    if p.is_file():
        if p.name.endswith(SUFFIX):
            return p
        if p.suffix == ".json":
            q = p.with_name(p.stem + SUFFIX)
            if q.is_file():
                return q
            raise bad("model", str(p), "a trial row with a saved compressed model beside it",
                      f"no {q.name} next to it (a failed trial, or one run before models were saved)",
                      PATH_QUOTE)
        return p   # any other file: let load_compressed say whether it holds a compressed model
    if p.is_dir() and p.name != "trials" and (p / "trials").is_dir():
        raise bad("model", str(p), f"a trial id, a <trial_id>{SUFFIX} file or a row's .json",
                  "a sweep folder holds many trials", PATH_QUOTE)
    hits = sorted(location(results).glob(f"*/trials/{p.name}{SUFFIX}")) if p.name == str(ref) else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise bad("model", str(ref), f"a path: {', '.join(str(h) for h in hits[:3])}",
                  f"trial id found in {len(hits)} sweeps", PATH_QUOTE)
    raise bad("model", str(ref), f"a <trial_id>{SUFFIX} file, a row's .json, or a trial id under {str(results)!r}",
              "not found", PATH_QUOTE)


def read_payload(path: Location) -> dict[str, Any]:
    """The saved dict of a compressed-model file; a one-line error if it is not one."""
    try:
        with read_bytes_io(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise bad("model", str(path), f"an existing <trial_id>{SUFFIX} file", "no such file", PATH_QUOTE) from None
    try:   # tensors and plain values only: a file that needs more would run code to load
        # files written before 0.2 name torch's version as a TorchVersion (a str subclass)
        with torch.serialization.safe_globals([TorchVersion]):
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        problem = (f"holds objects other than tensors and plain values, refused unloaded (loading them could run "
                   f"code; {type(e).__name__})" if isinstance(e, pickle.UnpicklingError)
                   else f"unreadable ({type(e).__name__})")
        raise bad("model", str(path), f"a {SUFFIX} file written by rankbench", problem, PATH_QUOTE) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise bad("model", str(path), f"a {SUFFIX} file written by rankbench ({FORMAT})",
                  "another kind of file", PATH_QUOTE)
    return payload


def load_compressed(ref: str | Path, results: str | Path = "results") -> nn.Module:
    """The compressed model of a trial, in eval mode on the CPU, with its saved weights.

    ``ref``: a ``<trial_id>.model.pt`` file, the trial's row ``<trial_id>.json``, or a trial id
    (found under ``results``). Its outputs equal those of the model the trial evaluated."""
    path = find_compressed(ref, results)
    payload = read_payload(path)
    if payload.get("architecture") != "layers":
        raise bad("model", str(path), "a model whose method can rebuild its layers from their reports (give the "
                  "method a rebuild(model, layers)); the weights are in the file's state_dict",
                  f"method {payload.get('method')!r} built layers rankbench cannot rebuild", PATH_QUOTE)
    model = _rebuild(payload)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()


def example_input(path_or_payload: Location | dict[str, Any], batch: int = 2) -> torch.Tensor:
    """A random batch of the shape the saved model takes (for exporting and checking it)."""
    payload = path_or_payload if isinstance(path_or_payload, dict) else read_payload(path_or_payload)
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *payload["input_shape"]), generator=g)
