"""Export a trial's compressed model for deployment, checked against the eager model.

``rankbench export TRIAL_OR_PATH --format torch|onnx [--out FILE]``:

- ``torch``: ``torch.export`` (an ``ExportedProgram``, ``<trial_id>.pt2``; load it with
  ``torch.export.load(path).module()``);
- ``onnx``: ``torch.onnx.export`` (``<trial_id>.onnx``), run with onnxruntime. Needs the
  optional extra: ``pip install 'rankbench[onnx]'`` (onnx, onnxruntime, onnxscript).

Both have a dynamic batch dimension. The exported program is run on two random batches of
different sizes and its outputs compared with the eager model's (``load_compressed``); a
mismatch beyond float32 rounding is an error, and the file is still written for inspection.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rankbench.bench.checks import PATH_QUOTE, UserError, bad, unknown
from rankbench.bench.results.compressed import SUFFIX, example_input, find_compressed, load_compressed, read_payload
from rankbench.bench.results.filesystem import Location, location
from rankbench.bench.results.store import atomic_write_bytes

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
    what was written."""
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
            os.replace(tmp, out)
        return data
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export_torch(model: nn.Module, x: torch.Tensor, out: Location) -> Callable[[torch.Tensor], torch.Tensor]:
    import io

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    atomic_write_bytes(out, buf.getvalue())
    loaded = torch.export.load(io.BytesIO(buf.getvalue())).module()   # the bytes just written
    return lambda t: loaded(t)


def _export_onnx(model: nn.Module, x: torch.Tensor, out: Location) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise bad("--format", "onnx", "torch, or onnx with the extra installed: pip install 'rankbench[onnx]'",
                  "onnxruntime is not installed") from None

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)

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
        run = (_export_torch if fmt == "torch" else _export_onnx)(model, x, dest)
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
