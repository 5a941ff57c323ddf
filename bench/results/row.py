"""The Result row: one JSON object per trial (``results/<sweep>/trials/<trial_id>.json``).

This module is the row's one definition: its keys, their JSON types and meaning (``FIELDS``,
the table in docs/CONTRACTS.md), the row a trial starts from (``empty_row``), the clean-up
before JSON (``clean``: NaN and inf become null) and the flattening into columns (``flatten``
for results.csv, ``spread`` for the report DataFrame), which name a nested entry
``<key>.<entry>`` (``params.scheme``, ``env.torch``) in both.

``rankbench.bench.running.run`` fills the row, ``rankbench.bench.running.sweep`` writes rows for trials that cannot start,
``rankbench.bench.results.store`` flattens rows into results.csv, ``rankbench.reports.collate`` reads them back: all through
this module. It imports no torch (reports use it); ``environment()`` imports torch when called.
"""
from __future__ import annotations

import json
import math
import platform
import socket
from dataclasses import dataclass
from typing import Any

from rankbench.bench.checks import is_int
from rankbench.bench.trial import Trial


@dataclass(frozen=True)
class Field:
    """One key of the row: the JSON types its value may take (``None`` = null) and what it means."""

    key: str
    types: tuple[type | None, ...]
    meaning: str
    always: bool = True        # False: present only in some rows (see the meaning)


_S, _I, _F, _D, _L, _N = str, int, float, dict, list, None
# a whole number in a float column (e.g. 50.0 percent) is written by JSON as 50.0: floats stay
# floats. Ints are not floats here: a MAC count is an int.
FIELDS: tuple[Field, ...] = (
    Field("trial_id", (_S,), "the Trial's id: 12 hex digits of the sha256 of its canonical JSON"),
    Field("sweep", (_S,), "the spec's sweep name (the results folder)"),
    Field("status", (_S,), '"ok" or "failed"'),
    Field("error", (_S, _N), '"Type: message" when failed'),
    Field("last_good_epoch", (_I, _N), "when failed: the last epoch that finished with a finite loss"),
    Field("dataset", (_S, _N), "data.name of the spec"),
    Field("model", (_S,), "model name"),
    Field("method", (_S,), "method name (registry key)"),
    Field("seed", (_I,), "the trial's seed"),
    Field("params", (_D,), "the method's parameters as given in the spec"),
    Field("variant", (_S,), "canonical k=v,k=v of params (sorted): the grouping key next to method"),
    Field("label", (_S, _N), "the method entry's display name (spec label:) for tables and plots; null: none"),
    Field("scheme", (_S, _N), "decomposition scheme, from the method's report()"),
    Field("rule", (_S, _N), "rank rule of the exported model, from the method's report()"),
    Field("top1", (_F, _N), "top-1 accuracy in percent on the validation split"),
    Field("top5", (_F, _N), "top-5 accuracy in percent"),
    Field("f1", (_F, _N), "macro F1 in percent"),
    Field("macs", (_I, _N), "MACs per image of the model actually run (fvcore)"),
    Field("dense_macs", (_I, _N), "MACs per image of the dense architecture"),
    Field("macs_speedup", (_F, _N), "dense_macs / macs"),
    Field("conv_macs", (_I, _N), "MACs per image of the deployed model's convolutions only (fvcore; the "
          "basis TRP's published speed-ups count on: no FC, no BN)"),
    Field("dense_conv_macs", (_I, _N), "conv-only MACs per image of the dense architecture"),
    Field("conv_macs_speedup", (_F, _N), "dense_conv_macs / conv_macs"),
    Field("claimed_conv_macs", (_I, _N), "conv_macs as the method's paper counts them: the layers listed in "
          "method_info.counted_dense at their dense MACs (the official TRP formula counts stride-2 convs "
          "dense though network decoupling factorizes them); equals conv_macs when none are listed"),
    Field("claimed_conv_speedup", (_F, _N), "dense_conv_macs / claimed_conv_macs"),
    Field("params_count", (_I, _N), "parameters of the deployed model"),
    Field("dense_params_count", (_I, _N), "parameters of the dense architecture"),
    Field("latency_ms", (_F, _N), "median latency of the deployed model"),
    Field("dense_latency_ms", (_F, _N), "median latency of the dense architecture, timed alongside"),
    Field("latency_speedup", (_F, _N), "dense_latency_ms / latency_ms"),
    Field("latency_device", (_S, _N), "where latency was timed (cpu, cuda)"),
    Field("latency_dtype", (_S, _N), "dtype latency was timed in"),
    Field("latency_batch", (_I, _N), "batch size latency was timed at"),
    Field("latency_layout", (_S, _N), "the layout the deployed model was timed on: its fastest of one "
          "shared menu (rankbench.bench.measure.inference), e.g. channels_last+jit"),
    Field("dense_latency_layout", (_S, _N), "the layout the dense model was timed on"),
    Field("latency_layouts", (_D, _N), "per model (compressed, dense): ms of every layout timed, and the "
          "skipped layouts with the reason"),
    Field("layers", (_L,), "one LayerReport dict per Conv2d/Linear (name, shape, scheme, rank, full_rank, "
          "dense_macs, macs, skipped)"),
    Field("wall_s", (_F, _N), "compression cost in seconds (train + compress + fine-tune, resumed epochs included)"),
    Field("gpu_hours", (_F, _N), "wall_s / 3600 x the GPUs the trial held"),
    Field("method_info", (_D,), "the method's other report() facts (e.g. TRP with a warm start, solvers auto and warm: warm_start {warm, cold})"),
    Field("train_images", (_I, _N), "images in the training split as loaded (after subset options), every rank's"),
    Field("val_images", (_I, _N), "images in the validation split as loaded, every rank's"),
    Field("skipped_images", (_I, _N), "unreadable images skipped and counted (every rank, epoch and evaluation)"),
    Field("baseline_id", (_S, _N), "the dense Trial whose weights a starts_from_baseline method loaded"),
    Field("train_device", (_S, _N), "the device the trial trained on"),
    Field("node", (_D,), "trials run by Ray: where it ran, {id: Ray node id, ip}", always=False),
    Field("baseline_node", (_D,), "trials that started from a baseline run by Ray: where the baseline ran",
          always=False),
    Field("rank_nodes", (_L,), "data-parallel trials run by Ray: every rank's node {id, ip}, rank 0 first",
          always=False),
    Field("history", (_L,), "one dict per epoch run (phase, epoch, loss, val_top1, seconds)"),
    Field("compressed_model", (_S,), "ok trials: the deployed model's file beside the row, <trial_id>.model.pt "
          "(rankbench.bench.load_compressed loads it)", always=False),
    Field("ddp", (_D,), "data-parallel trials only: world_size, backend, sync_bn, every rank's weight checksum",
          always=False),
    Field("env", (_D,), "torch, cuda, gpu, python, rankbench, hostname, platform, cpu_threads"),
    Field("code", (_D,), "the code that made the row: rankbench {version, commit, dirty, changes_sha256} and "
          "method {name, module, distribution, version, source_sha256} (rows written since 0.2)", always=False),
    Field("spec", (_D,), "the Trial's fields (Trial.to_dict())"),
)
BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}
KEYS: tuple[str, ...] = tuple(f.key for f in FIELDS)
# dict fields whose entries also get a column of their own, named "<key>.<entry>"
SPREAD: tuple[str, ...] = ("params", "env")


def environment() -> dict[str, Any]:
    """What produced a row: enough to tell two machines or library versions apart."""
    import torch

    from rankbench.bench.version import __version__

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(),
        "rankbench": __version__,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }


def empty_row(trial: Trial, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of ``trial`` before anything ran: identity filled, every result null or empty.
    ``env``: the environment fingerprint (default: this process's ``environment()``)."""
    row: dict[str, Any] = {f.key: None for f in FIELDS if f.always}
    row.update({
        "trial_id": trial.id, "sweep": trial.sweep, "dataset": trial.data_cfg.get("name"),
        "model": trial.model, "method": trial.method, "seed": trial.seed,
        "params": trial.params_dict, "variant": trial.variant, "label": trial.display_label or None,
        "layers": [], "history": [], "method_info": {},
        "env": environment() if env is None else env, "spec": trial.to_dict(),
    })
    return row


def failed_row(trial: Trial, error: str, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of a trial that failed (or could not start) with ``error`` ("Type: message")."""
    row = empty_row(trial, env)
    row.update(status="failed", error=error)
    return row


def clean(v: Any) -> Any:
    """NaN/inf are not JSON: they become null (the row says status/error instead)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


def problems(row: dict[str, Any]) -> list[str]:
    """Every way ``row`` departs from ``FIELDS`` (missing or unknown key, wrong JSON type); [] if none."""
    out = [f"{k}: missing" for k in KEYS if BY_KEY[k].always and k not in row]
    out += [f"{k}: not a row key" for k in row if k not in BY_KEY]
    for k, v in row.items():
        f = BY_KEY.get(k)
        if f is None:
            continue
        ok = any(v is None if t is None else is_int(v) if t is int else isinstance(v, t) for t in f.types)
        if not ok:
            out.append(f"{k}: {type(v).__name__} {v!r:.60}; accepted: "
                       + " or ".join("null" if t is None else t.__name__ for t in f.types))
    return out


def spread(row: dict[str, Any]) -> dict[str, Any]:
    """The ``<key>.<entry>`` columns of the ``SPREAD`` dict fields (``params.scheme``, ``env.gpu``)."""
    return {f"{k}.{entry}": v for k in SPREAD if isinstance(row.get(k), dict) for entry, v in row[k].items()}


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One CSV record: nested dicts become ``<key>.<entry>`` columns (an empty one none), lists
    (per-layer reports, epoch history) JSON text that any reader can parse back."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = json.dumps(v, sort_keys=True, default=str)
        else:
            out[name] = v
    return out
