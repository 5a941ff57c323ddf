"""The ``Trial``: one training + compression + measurement run, and its stable id.

A Trial is frozen and hashable (every dict of the spec is stored as sorted ``(key, value)``
pairs, every list as a tuple), and ``trial.id`` is the first 12 hex digits of the sha256 of its
canonical JSON: the same trial has the same id on every machine and Python, so a finished trial
is found again and never re-run. ``rankbench.bench.spec.parse`` builds Trials from YAML; ``rankbench.bench.running.run``,
``rankbench.bench.running.sweep`` and ``rankbench.bench.running.distributed`` use them without importing the YAML parser.

A Trial crosses process boundaries (Ray Tune, Ray Train) as ``trial.to_dict()`` and comes back
with ``Trial.from_dict``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

Pairs = tuple[tuple[str, Any], ...]
# the registry key of the baseline method (the one whose ``Method.is_baseline`` is true: a test
# checks they agree); written here once, for the modules that must not import the methods
BASELINE = "dense"


def freeze(v: Any) -> Any:
    """Lists become tuples and dicts sorted ``(key, value)`` tuples, so a Trial is hashable."""
    if isinstance(v, dict):
        return tuple(sorted((k, freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


def thaw(v: Any) -> Any:
    """Tuples back to lists (the inverse of :func:`freeze` for values)."""
    if isinstance(v, tuple):
        return [thaw(x) for x in v]
    return v


def pairs_to_dict(pairs: Pairs) -> dict[str, Any]:
    """A frozen mapping back to a plain dict (values thawed)."""
    return {k: thaw(v) for k, v in pairs}


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats by repr (json's default): identical on every Python."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def format_value(v: Any) -> str:
    """A parameter value as it appears in a variant: floats by repr, lists as ``[a,b]``."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


@dataclass(frozen=True)
class Trial:
    """One training + compression + measurement run. Frozen and hashable; ``id`` is stable."""

    sweep: str
    data: Pairs
    model: str
    method: str
    params: Pairs
    seed: int
    train: Pairs
    measure: Pairs
    # builder options of the model, e.g. (("pretrained", "weights/r50.pth"),); empty for most
    # trials, and then left out of the id so plain model names keep the ids they always had
    model_options: Pairs = ()
    # resources say where a trial runs, not what it computes: not part of the id or equality
    resources: Pairs = field(default=(), compare=False)
    # the method entry's display name (spec ``label:``, e.g. "TRP+Nu") for tables and plots:
    # presentation only, so not part of the id or equality either ("" when the spec gives none)
    display_label: str = field(default="", compare=False)

    # dict views ----------------------------------------------------------------------------
    @property
    def data_cfg(self) -> dict[str, Any]:
        return pairs_to_dict(self.data)

    @property
    def model_cfg(self) -> dict[str, Any]:
        return pairs_to_dict(self.model_options)

    @property
    def params_dict(self) -> dict[str, Any]:
        return pairs_to_dict(self.params)

    @property
    def train_cfg(self) -> dict[str, Any]:
        return pairs_to_dict(self.train)

    @property
    def measure_cfg(self) -> dict[str, Any]:
        return pairs_to_dict(self.measure)

    @property
    def resources_cfg(self) -> dict[str, Any]:
        return pairs_to_dict(self.resources)

    @property
    def variant(self) -> str:
        """Canonical ``k=v,k=v`` of the params (sorted): the grouping key next to ``method``."""
        return ",".join(f"{k}={format_value(v)}" for k, v in self.params)

    def to_dict(self, with_resources: bool = True) -> dict[str, Any]:
        """Plain JSON-able dict (the row's ``spec``; what crosses to a Ray worker).
        ``with_resources=False``: only the fields the id hashes (no resources, no label)."""
        d = {"sweep": self.sweep, "data": self.data_cfg, "model": self.model, "method": self.method,
             "params": self.params_dict, "seed": self.seed, "train": self.train_cfg,
             "measure": self.measure_cfg}
        if self.model_options:
            d["model_options"] = self.model_cfg
        if with_resources:
            d["resources"] = self.resources_cfg
            if self.display_label:
                d["label"] = self.display_label
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trial":
        """The inverse of :meth:`to_dict`: ``Trial.from_dict(t.to_dict()) == t``, same id."""
        return cls(sweep=d["sweep"], data=freeze(d["data"]), model=d["model"], method=d["method"],
                   params=freeze(d.get("params") or {}), seed=int(d["seed"]), train=freeze(d["train"]),
                   measure=freeze(d["measure"]), model_options=freeze(d.get("model_options") or {}),
                   resources=freeze(d.get("resources") or {}), display_label=str(d.get("label") or ""))

    @property
    def id(self) -> str:
        text = canonical_json(self.to_dict(with_resources=False))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def baseline(self) -> "Trial":
        """The baseline Trial with the same data, model, seed and train (its weights are reused)."""
        return dataclasses.replace(self, method=BASELINE, params=())

    @property
    def is_baseline(self) -> bool:
        """A trial of the baseline method: what other trials start from and are measured against."""
        return self.method == BASELINE

    @property
    def label(self) -> str:
        v = f"[{self.variant}]" if self.params else ""
        return f"{self.method}{v} {self.model}/{self.data_cfg.get('name')} seed={self.seed}"


# --- resources: where a trial runs, how many processes train it ---------------------------

def workers_for(resources: dict[str, Any]) -> int:
    """Processes a trial trains with: ``workers`` if given, else one per GPU when it asks for
    more than one, else 1."""
    w = resources.get("workers")
    if w:
        return int(w)
    gpus = float(resources.get("gpus", 0) or 0)
    return int(gpus) if gpus > 1 else 1


def is_distributed(resources: dict[str, Any]) -> bool:
    return workers_for(resources) > 1


def per_worker(resources: dict[str, Any]) -> dict[str, float]:
    """A trial's ``cpus`` and ``gpus`` are for the whole trial; each worker gets an equal share."""
    n = workers_for(resources)
    return {"CPU": float(resources.get("cpus", 1)) / n, "GPU": float(resources.get("gpus", 0) or 0) / n}
