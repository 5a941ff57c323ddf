"""Result rows (results/<sweep>/trials/<trial_id>.json) -> pandas DataFrames.

``load_results`` gives one row per trial, failed ones included; ``summarize`` groups the
successful ones per (dataset, model, method, variant) with mean, std, 95% CI and n over seeds;
``failed_trials`` lists the failures so that no trial disappears from a report unnoticed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from rankbench.bench.results import row as result_row
from rankbench.bench.trial import BASELINE
from rankbench.reports.format import clip_interval

# The keys of the Result row, as rankbench.bench.results.row defines them. Missing keys become None so that a row
# written by an older or partial harness still lines up with the rest.
ROW_KEYS: tuple[str, ...] = result_row.KEYS
# Row keys read when present even if ``rankbench.bench.results.row`` does not list them (rows of a newer harness):
# the conv-only MAC count, the basis the TRP paper reports its speed-ups on, and the count as the
# method's paper formula makes it (layers it factorizes but counts dense).
OPTIONAL_KEYS: tuple[str, ...] = tuple(
    k for k in ("conv_macs", "dense_conv_macs", "conv_macs_speedup", "claimed_conv_macs", "claimed_conv_speedup")
    if k not in ROW_KEYS)

GROUP_KEYS: tuple[str, ...] = ("dataset", "model", "method", "variant")

# Metrics summarized over seeds; each gets <m>_mean, <m>_std, <m>_ci95 and <m>_n columns.
METRICS: tuple[str, ...] = (
    "top1", "top5", "f1",
    "macs", "dense_macs", "macs_speedup", "params_count", "dense_params_count",
    "conv_macs", "dense_conv_macs", "conv_macs_speedup", "claimed_conv_macs", "claimed_conv_speedup",
    "latency_ms", "dense_latency_ms", "latency_speedup",
    # wall_s / gpu_hours: the trial's own cost (a method that starts from the trained dense
    # baseline does not pay for that training there); *_total adds the baseline's training
    "wall_s", "gpu_hours", "wall_s_total", "gpu_hours_total",
    "n_factorized", "n_skipped",
)

# What each metric can take: the CI columns <m>_lo / <m>_hi are clipped to it.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    **{m: (0.0, None) for m in METRICS}, "top1": (0.0, 100.0), "top5": (0.0, 100.0), "f1": (0.0, 100.0),
}

FAILED_COLUMNS: tuple[str, ...] = (
    "sweep", "trial_id", "dataset", "model", "method", "variant", "seed",
    "error", "last_good_epoch", "source",
)

# Two-sided 95% t quantiles (t_{0.975, df}), used only when scipy is not installed.
_T975 = {
    1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
    6: 2.446911851, 7: 2.364624252, 8: 2.306004135, 9: 2.262157163, 10: 2.228138852,
    11: 2.200985160, 12: 2.178812830, 13: 2.160368656, 14: 2.144786688, 15: 2.131449546,
    16: 2.119905299, 17: 2.109815578, 18: 2.100922040, 19: 2.093024054, 20: 2.085963447,
    21: 2.079613845, 22: 2.073873068, 23: 2.068657610, 24: 2.063898562, 25: 2.059538553,
    26: 2.055529439, 27: 2.051830516, 28: 2.048407142, 29: 2.045229642, 30: 2.042272456,
    40: 2.021075390, 60: 2.000297822, 120: 1.979930405,
}


def t_quantile_975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom: the factor of a two-sided 95% CI."""
    if df < 1:
        raise ValueError(f"df: need at least 1 degree of freedom, got {df}")
    if df in _T975:  # exact to 9 digits, and spares a 1-3 s scipy import for the usual 2-10 seeds
        return _T975[df]
    try:
        from scipy import stats
    except ImportError:  # scipy comes with scikit-learn, but keep reports usable without it
        return _t975_table(df)
    return float(stats.t.ppf(0.975, df))


def _t975_table(df: int) -> float:
    if df in _T975:
        return _T975[df]
    z = 1.959963985  # the normal limit (df -> infinity)
    if df > 120:
        # linear in 1/df between df=120 and the limit; within 0.01% of the exact quantile
        return z + (_T975[120] - z) * 120 / df
    # Between tabulated df the quantile is close to linear in 1/df.
    lo = max(k for k in _T975 if k < df)
    hi = min(k for k in _T975 if k > df)
    w = (1 / df - 1 / hi) / (1 / lo - 1 / hi)
    return _T975[hi] + w * (_T975[lo] - _T975[hi])


def ci95_halfwidth(values: Iterable[float]) -> float:
    """Half-width of the two-sided 95% CI of the mean (t distribution, sample std, ddof=1).

    NaN for fewer than two finite values: one seed says nothing about the spread.
    """
    xs = [float(v) for v in values if v is not None and not _isnan(v)]
    n = len(xs)
    if n < 2:
        return math.nan
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return t_quantile_975(n - 1) * std / math.sqrt(n)


def _isnan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def trial_files(path: str | Path) -> list[Path]:
    """Every result file under ``path``.

    Accepts a sweep folder (``results/quick``, holding ``trials/``), a results root holding
    several sweeps (``results``), a ``trials`` folder, or one JSON file.
    """
    from rankbench.bench.results.filesystem import location

    p = location(path)          # a folder, or a storage URI (s3://, gs://, file://) read through pyarrow
    if not p.exists():
        raise FileNotFoundError(f"results: {p} does not exist")
    if p.is_file():
        return [p]
    if (p / "trials").is_dir():
        dirs = [p / "trials"]
    else:
        dirs = sorted(d for d in p.glob("*/trials") if d.is_dir())
        if not dirs:
            dirs = [p]  # a trials folder itself
    # Atomic writes go through temp files; skip hidden and non-.json names so a sweep that is
    # still running never contributes half a row.
    return [f for d in dirs for f in sorted(d.glob("*.json")) if not f.name.startswith(".")]


def _read_row(f: Path) -> dict:
    try:
        row = json.loads(f.read_text())
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    except (OSError, ValueError) as e:
        # An unreadable file is a trial whose outcome we do not know: list it as failed
        # rather than dropping it.
        sweep = f.parent.parent.name if f.parent.name == "trials" else f.parent.name
        return {"trial_id": f.stem, "sweep": sweep, "status": "failed",
                "error": f"unreadable result file: {e}", "source": str(f)}
    damaged = [p for p in result_row.problems(row) if "; accepted:" in p]
    if damaged:
        # a field of the wrong type (edited by hand, written by a foreign tool): the row is listed
        # as failed, naming the field, and none of its values enters a table
        sweep = f.parent.parent.name if f.parent.name == "trials" else f.parent.name
        tid = row.get("trial_id") if isinstance(row.get("trial_id"), str) else f.stem
        return {"trial_id": tid, "sweep": row.get("sweep") if isinstance(row.get("sweep"), str) else sweep,
                "status": "failed", "error": f"damaged result file (bad fields: {', '.join(d.split(':')[0] for d in damaged)}): {damaged[0]}",
                "source": str(f)}
    row["source"] = str(f)
    return row


def _layer_counts(layers: object) -> tuple[float, float]:
    if not isinstance(layers, list):
        return math.nan, math.nan
    skipped = sum(1 for L in layers if isinstance(L, dict) and L.get("skipped"))
    return float(len(layers) - skipped), float(skipped)


def load_results(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """One row per trial from one or more results folders, failed trials included.

    Columns: the Result row keys (``rankbench.bench.results.row.KEYS``), plus ``source`` (the file), ``params.<k>``
    for each method parameter and ``env.<k>`` for each environment field (``rankbench.bench.results.row.spread``,
    the names results.csv uses), ``n_factorized`` / ``n_skipped`` layer counts. ``params``,
    ``layers``, ``env``, ``spec`` and the other dict/list fields stay as dict/list columns.
    A trial found twice (the same sweep reached through two paths) appears once.
    """
    from rankbench.bench.results.filesystem import RemotePath

    if isinstance(paths, (str, Path, RemotePath)):
        paths = [paths]
    seen_files: set[Path] = set()
    rows: list[dict] = []
    for p in paths:
        for f in trial_files(p):
            rf = f.resolve()
            if rf in seen_files:
                continue
            seen_files.add(rf)
            rows.append(_read_row(f))

    records = []
    seen_ids: set[tuple] = set()
    for r in rows:
        key = (r.get("sweep"), r.get("trial_id"))
        if key in seen_ids:
            continue
        seen_ids.add(key)
        rec = {k: r.get(k) for k in ROW_KEYS + OPTIONAL_KEYS}
        rec["source"] = r.get("source")
        rec.update(result_row.spread(r))
        rec["n_factorized"], rec["n_skipped"] = _layer_counts(r.get("layers"))
        if rec["variant"] is None and isinstance(r.get("params"), dict):
            rec["variant"] = canonical_variant(r["params"])
        if rec["variant"] is None:
            rec["variant"] = ""
        records.append(rec)

    _add_totals(records)
    df = pd.DataFrame.from_records(records, columns=_columns(records))
    # Numeric columns arrive as Python ints/None; make them float so that NaN means "absent".
    for m in METRICS:
        if m in df:
            df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
    return df


def _add_totals(records: list[dict]) -> None:
    """``wall_s_total`` / ``gpu_hours_total``: the trial's cost plus, for a method that started
    from a trained dense baseline (``baseline_id``), that baseline's training; NaN when the
    baseline's row is not among the results read."""
    by_id = {r.get("trial_id"): r for r in records}
    for r in records:
        for own, total in (("wall_s", "wall_s_total"), ("gpu_hours", "gpu_hours_total")):
            v = _float(r.get(own))
            if r.get("baseline_id"):
                base = by_id.get(r["baseline_id"])
                v = v + _float(base.get(own)) if base is not None else math.nan
            r[total] = v


def _float(v: object) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def _columns(records: list[dict]) -> list[str]:
    cols = list(ROW_KEYS) + list(OPTIONAL_KEYS) + ["source", "n_factorized", "n_skipped"]
    extra = sorted({k for r in records for k in r} - set(cols))
    return cols + extra


def canonical_variant(params: dict) -> str:
    """``k=v,k=v`` sorted by key: what bench writes as ``variant`` (used when a row lacks it)."""
    return ",".join(f"{k}={params[k]}" for k in sorted(params))


def mixed_code(df: pd.DataFrame) -> dict[str, list[str]]:
    """Methods whose ok rows were made by more than one code version (rankbench's commit or the
    method's own source): method -> the versions, each as ``describe_code`` names it. Rows that
    predate the ``code`` field count as "unrecorded"."""
    from rankbench.bench.results.provenance import describe_code

    ok = ok_trials(df)
    if ok.empty or "code" not in ok:
        return {}
    out: dict[str, list[str]] = {}
    for method, codes in ok.groupby("method")["code"]:
        names = sorted({describe_code(c if isinstance(c, dict) else None) for c in codes})
        if len(names) > 1:
            out[str(method)] = names
    return out


def ok_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def failed_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Every trial that did not finish with status "ok" (failed, unreadable, unknown)."""
    bad = df[df["status"] != "ok"]
    return bad.reindex(columns=list(FAILED_COLUMNS)).reset_index(drop=True)


def _recipe(spec: object) -> str | None:
    # Seeds of one group must share their training recipe; a fingerprint of the trial spec
    # minus the seed tells when results from two differently trained sweeps were merged.
    if not isinstance(spec, dict):
        return None
    keep = {k: v for k, v in spec.items() if k not in ("seed", "sweep", "resources", "label")}
    data = keep.get("data")
    if isinstance(data, dict):  # the same data read from another path is the same recipe
        keep["data"] = {k: v for k, v in data.items() if k != "root"}
    return json.dumps(keep, sort_keys=True, default=str)


def _joined(values: pd.Series) -> str | None:
    vals = sorted({str(v) for v in values if v is not None and not _isnan(v)})
    return "/".join(vals) if vals else None


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Successful trials grouped per (dataset, model, method, variant).

    Per metric m in ``METRICS``: ``m_mean``, ``m_std`` (ddof=1), ``m_ci95`` (t half-width),
    ``m_lo`` / ``m_hi`` (the 95% interval clipped to what the metric can take, ``BOUNDS``),
    ``m_clipped`` (True when a bound cut it) and ``m_n`` (seeds with a value). Also ``n`` (ok
    trials), ``seeds``, ``scheme``, ``rule``, ``params``, latency device/dtype/batch and
    ``latency_layout_setting`` (what the spec asked: "auto" = each model on its fastest layout),
    ``gpu``, ``n_failed`` (failed trials of that group), ``n_uncompressed`` (trials of a
    compressing method whose deployed model has the dense model's MACs), ``specs`` (the distinct
    trial specs, seed left out) and ``mixed_recipes`` (True when there is more than one).
    """
    ok = ok_trials(df)
    out_rows = []
    if len(ok):
        for key, g in ok.groupby(list(GROUP_KEYS), dropna=False, sort=True):
            rec: dict = dict(zip(GROUP_KEYS, key))
            rec["n"] = len(g)
            rec["seeds"] = sorted(int(s) for s in g["seed"].dropna())
            rec["scheme"] = _first(g["scheme"])
            rec["rule"] = _first(g["rule"])
            rec["params"] = _first(g["params"])
            rec["label"] = _first(g["label"]) if "label" in g else None   # the spec's display name
            for m in METRICS:
                vals = g[m].dropna() if m in g else pd.Series(dtype=float)
                rec[f"{m}_n"] = len(vals)
                rec[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
                rec[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
                rec[f"{m}_ci95"] = ci95_halfwidth(vals)
                rec[f"{m}_lo"], rec[f"{m}_hi"], rec[f"{m}_clipped"] = _interval(
                    rec[f"{m}_mean"], rec[f"{m}_ci95"], BOUNDS.get(m, (None, None)))
            rec["latency_device"] = _joined(g["latency_device"])
            rec["latency_dtype"] = _joined(g["latency_dtype"])
            rec["latency_batch"] = _joined(g["latency_batch"])
            # the layout each model was fastest in; seeds may differ between near-equal layouts
            rec["latency_layout"] = _joined(g["latency_layout"])
            rec["dense_latency_layout"] = _joined(g["dense_latency_layout"])
            rec["gpu"] = _joined(g["env.gpu"]) if "env.gpu" in g else None
            rec["sweeps"] = _joined(g["sweep"])
            rec["latency_layout_setting"] = _joined(g["spec"].map(_layout_setting))
            rec["n_uncompressed"] = int(sum(
                1 for m, d in zip(g["macs"], g["dense_macs"])
                if key[2] != BASELINE and not _isnan(m) and not _isnan(d) and m >= d))
            # the dataset sizes the group's trials loaded (a paper diff needs the full dataset)
            for k in ("train_images", "val_images"):
                rec[k] = sorted({int(v) for v in g[k] if v is not None and not _isnan(v)}) if k in g else []
            specs = {_recipe(s): s for s in g["spec"]}
            rec["specs"] = list(specs.values())
            rec["mixed_recipes"] = len(specs) > 1
            out_rows.append(rec)
    out = pd.DataFrame(out_rows)
    if out.empty:
        return pd.DataFrame(columns=list(GROUP_KEYS) + ["n"])
    bad = df[df["status"] != "ok"]
    counts = bad.groupby(list(GROUP_KEYS), dropna=False).size() if len(bad) else None
    out["n_failed"] = [
        int(counts.get(tuple(r[k] for k in GROUP_KEYS), 0)) if counts is not None else 0
        for _, r in out.iterrows()
    ]
    return out.reset_index(drop=True)


def _interval(mean: float, ci: float, bounds: tuple[float | None, float | None]) -> tuple[float, float, bool]:
    if _isnan(mean) or _isnan(ci):
        return math.nan, math.nan, False
    return clip_interval(mean, ci, bounds)


def _layout_setting(spec: object) -> str:
    # measure.latency_layout of the trial: "auto" (left out of the Trial while auto), one layout or a list
    measure = spec.get("measure") if isinstance(spec, dict) else None
    v = measure.get("latency_layout", "auto") if isinstance(measure, dict) else "auto"
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _first(s: pd.Series):
    for v in s:
        if v is not None and not _isnan(v):
            return v
    return None
