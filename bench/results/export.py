"""Export a trial's compressed model for deployment, checked against the eager model.

``rankbench export TRIAL_OR_PATH --format torch|onnx [--out FILE]``:

- ``torch``: ``torch.export`` (an ``ExportedProgram``, ``<trial_id>.pt2``; load it with
  ``torch.export.load(path).module()``);
- ``onnx``: ``torch.onnx.export`` (``<trial_id>.onnx``), run with onnxruntime. Needs the
  optional extra: ``pip install 'rankbench[onnx]'`` (onnx, onnxruntime, onnxscript).

Both have a dynamic batch dimension. The exported program is run on two random batches of
different sizes and its outputs compared with the eager model's (``load_compressed``); a
mismatch beyond float32 rounding is an error, and the file is still written for inspection.

Both carry what a deployment needs to feed the model and read its output (``export_metadata``):
the trial id, method and its parameters, a summary of the kept ranks, the class count (and the
class names where the data has them), the input shape and the normalisation (``x * scale``, then
``(x - mean) / std`` per channel). In the ONNX file they are ``metadata_props`` (``rankbench.*``
keys, read with ``onnx.load(path).metadata_props`` or onnxruntime's ``get_modelmeta()``); in the
``.pt2`` file, extra files of ``torch.export.save`` (``rankbench.*.json``, read with
``torch.export.load(path, extra_files={name: ""})``). Data facts come from the trial's row beside
the model file (its spec's ``data``); where that data cannot be read here (a CIFAR root on another
machine), the normalisation is the dataset's constants and the class names are left out.
Every file written honours the umask, as the rows and checkpoints do.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rankbench.bench.checks import PATH_QUOTE, UserError, bad, unknown
from rankbench.bench.results.compressed import SUFFIX, example_input, find_compressed, load_compressed, read_payload
from rankbench.bench.results.filesystem import Location, location, read_bytes_io
from rankbench.bench.results.store import atomic_write_bytes, current_umask
from rankbench.bench.version import __version__

FORMATS: dict[str, str] = {"torch": ".pt2", "onnx": ".onnx"}
# checked batches: the traced one and another size, so a batch size baked into the graph shows
BATCHES = (2, 3)


class ExportMismatch(UserError):
    """The exported model's outputs differ from the eager model's beyond rounding."""


@dataclass
class Exported:
    path: Location
    format: str
    max_abs_diff: float      # largest |exported - eager| over the checked batches
    scale: float             # largest |eager| output, for reading max_abs_diff


def _default_out(model_file: Location, fmt: str) -> Location:
    return model_file.with_name(model_file.name.removesuffix(SUFFIX) + FORMATS[fmt])


def _write_via_file(out: Location, write: Callable[[str], None]) -> bytes:
    """Call ``write(tmp_path)`` for exporters that want a file name, then move it into place
    atomically (``out`` is complete or absent; on a storage URI it is uploaded whole); returns
    what was written. The file gets the mode ``open()`` would give it (``0o666 & ~umask``), not
    the 0600 of the temp file."""
    remote = not isinstance(out, Path)
    if not remote:
        out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=None if remote else out.parent)
    os.close(fd)
    try:
        write(tmp)
        data = Path(tmp).read_bytes()
        if remote:
            out.write_bytes(data)
        else:
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, out)
        return data
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- metadata

def _row_beside(model_file: Location) -> dict[str, Any]:
    """The trial's row (``<trial_id>.json`` beside its model file); {} when there is none."""
    row_file = model_file.with_name(model_file.name.removesuffix(SUFFIX) + ".json")
    try:
        with read_bytes_io(row_file) as f:
            row = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return row if isinstance(row, dict) else {}


def _data_facts(data_cfg: Any, seed: int, channels: int) -> dict[str, Any]:
    """Class names and normalisation of a trial's data (its spec's ``data``): read from the data
    where it is cheap and at hand (digits, synthetic; CIFAR and ImageNet when their root is
    here), else the dataset's constants; {} for a config this version cannot read."""
    from rankbench.bench.data import IMAGENET_MEAN, IMAGENET_STD, OFFICIAL_MEAN, OFFICIAL_STD
    from rankbench.bench.data.cifar import CIFAR_LAYOUT, load_cifar
    from rankbench.bench.data.digits import load_digits
    from rankbench.bench.data.imagenet import imagenet_classes
    from rankbench.bench.data.options import options
    from rankbench.bench.data.synthetic import load_synthetic

    try:
        name, opts = options(data_cfg if isinstance(data_cfg, dict) else {"name": data_cfg})
    except (ValueError, TypeError):
        return {}
    facts: dict[str, Any] = {"dataset": name}
    try:
        if name == "imagenet":
            facts.update(mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1 / 255)
            facts["class_names"] = imagenet_classes(opts)
            return facts
        if name in CIFAR_LAYOUT:
            official = opts.get("normalize") == "official"
            lay = CIFAR_LAYOUT[name]
            facts.update(mean=OFFICIAL_MEAN if official else lay["mean"], std=OFFICIAL_STD if official else lay["std"],
                         scale=1 / 255)
        s = load_digits(opts, seed) if name == "digits" else load_synthetic(opts) if name == "synthetic" else \
            load_cifar(name, opts)
        facts.update(mean=s.mean, std=s.std, scale=s.scale, class_names=s.class_names)
    except (OSError, ValueError, KeyError):
        pass    # the data is not here: what the constants say is kept, the names left out
    for k in ("mean", "std"):   # a 1-channel statistic repeated to the model's channels
        v = facts.get(k)
        if v is not None and len(v) == 1 and channels > 1:
            facts[k] = tuple(v) * channels
    return facts


def _ranks_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """How much of each layer was kept: factorized and dense layer counts, and per layer its name,
    rank and full rank (or why it was left dense)."""
    per = [{"name": L.get("name"), "rank": L.get("rank"), "full_rank": L.get("full_rank")}
           if not L.get("skipped") else {"name": L.get("name"), "dense": str(L["skipped"])} for L in layers]
    return {"factorized": sum(1 for L in layers if not L.get("skipped")),
            "dense": sum(1 for L in layers if L.get("skipped")), "layers": per}


def export_metadata(model_file: Location, payload: dict[str, Any]) -> dict[str, str]:
    """What an exported file carries beside the graph, as ``rankbench.<key>`` -> JSON text:
    trial id, method and params, ranks summary, class count and names, input shape (``N`` is the
    dynamic batch) and normalisation."""
    info = payload.get("info") or {}
    row = _row_beside(model_file)
    spec = row.get("spec") if isinstance(row.get("spec"), dict) else {}
    shape = [int(s) for s in payload["input_shape"]]
    facts = _data_facts(spec.get("data"), int(info.get("seed") or spec.get("seed") or 0), shape[0] if shape else 1)
    norm = ({"mean": list(facts["mean"]), "std": list(facts["std"]), "scale": facts.get("scale", 1.0),
             "rule": "x * scale, then (x - mean) / std per channel"}
            if facts.get("mean") is not None and facts.get("std") is not None else None)
    names = facts.get("class_names")
    meta: dict[str, Any] = {
        "trial_id": info.get("trial_id") or row.get("trial_id"), "sweep": info.get("sweep") or row.get("sweep"),
        "method": payload.get("method"), "params": payload.get("params") or {}, "model": payload.get("model"),
        "dataset": facts.get("dataset") or row.get("dataset"), "ranks": _ranks_summary(payload.get("layers") or []),
        "num_classes": int(payload["num_classes"]),
        "class_names": list(names) if names and len(names) == int(payload["num_classes"]) else None,
        "input_shape": ["N", *shape], "normalization": norm,
        "top1": None if info.get("top1") is None or not math.isfinite(float(info["top1"])) else float(info["top1"]),
        "rankbench": __version__,
    }
    return {f"rankbench.{k}": json.dumps(v, sort_keys=True) for k, v in meta.items()}


def _export_torch(model: nn.Module, x: torch.Tensor, out: Location,
                  meta: dict[str, str]) -> Callable[[torch.Tensor], torch.Tensor]:
    import io

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={f"{k}.json": v for k, v in meta.items()})
    atomic_write_bytes(out, buf.getvalue())
    loaded = torch.export.load(io.BytesIO(buf.getvalue())).module()   # the bytes just written
    return lambda t: loaded(t)


def _export_onnx(model: nn.Module, x: torch.Tensor, out: Location,
                 meta: dict[str, str]) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise bad("--format", "onnx", "torch, or onnx with the extra installed: pip install 'rankbench[onnx]'",
                  "onnxruntime is not installed") from None

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
        proto = onnx.load(tmp)    # a protobuf: loading it runs no code
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, tmp)

    data = _write_via_file(out, write)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])   # the bytes just written
    name = session.get_inputs()[0].name
    return lambda t: torch.from_numpy(session.run(None, {name: t.numpy()})[0])


def export_compressed(ref: str | Path, fmt: str = "torch", out: str | Path | None = None,
                      results: str | Path = "results", rtol: float = 1e-4) -> Exported:
    """Export the compressed model ``ref`` names (see ``rankbench.bench.results.compressed.find_compressed``) to
    ``out`` (default: beside the model file, ``<trial_id>.pt2`` / ``.onnx``) and check it against
    the eager model on two batch sizes. Raises :class:`ExportMismatch` when
    ``max |exported - eager| > rtol * max(1, max |eager|)``."""
    if fmt not in FORMATS:
        raise unknown("--format", fmt, FORMATS)
    src = find_compressed(ref, results)
    payload = read_payload(src)
    model = load_compressed(src)
    dest = location(out) if out else _default_out(src, fmt)
    x = example_input(payload, BATCHES[0])
    with torch.no_grad():
        run = (_export_torch if fmt == "torch" else _export_onnx)(model, x, dest, export_metadata(src, payload))
        diff, scale = 0.0, 0.0
        for b in BATCHES:
            xb = example_input(payload, b)
            want = model(xb)
            got = run(xb)
            if tuple(got.shape) != tuple(want.shape):
                raise ExportMismatch(f"export: {dest}: output shape {tuple(got.shape)} for batch {b}, eager gives "
                                     f"{tuple(want.shape)}; accepted: the eager model's outputs")
            diff = max(diff, float((got - want).abs().max()))
            scale = max(scale, float(want.abs().max()))
    if diff > rtol * max(1.0, scale):
        raise ExportMismatch(str(bad("export", str(dest), f"outputs within {rtol:g} x max(1, |eager|) of the "
                                     "eager model's", f"max |diff| {diff:.3g} (|eager| up to {scale:.3g})",
                                     PATH_QUOTE)))
    return Exported(dest, fmt, diff, scale)
