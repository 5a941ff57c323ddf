"""Pareto plot: top-1 accuracy against speed-up, counted (MACs) and measured (latency).

One row of two panels per (dataset, model); one series per method variant (its points are the
rank rules / operating points), 95% CI error bars, our Pareto front as a dashed step line, and
published points as hollow markers on the MAC panel (papers report FLOP/MAC speed-ups only).
Drawn on a bare ``Figure`` (no pyplot), so it works headless and in Ray workers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure

from reports.format import COLUMN_PARAMS, is_missing, sort_rows

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def series_label(row: pd.Series) -> str:
    """Method, scheme and every parameter but the rank rule: the rule picks the point on the
    curve, everything else picks the curve."""
    p = row.get("params") if isinstance(row.get("params"), dict) else {}
    extra = [f"{k}={p[k]}" for k in sorted(p) if k not in COLUMN_PARAMS]
    scheme = row.get("scheme")
    label = str(row["method"]) + ("" if is_missing(scheme) or not scheme else f" {scheme}")
    return label + (f" ({', '.join(extra)})" if extra else "")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (speed-up, top-1) not beaten on both axes, sorted by speed-up ascending."""
    pts = sorted(((x, y) for x, y in points if not (math.isnan(x) or math.isnan(y))),
                 key=lambda p: (-p[0], -p[1]))
    front, best = [], -math.inf
    for x, y in pts:  # from the fastest down: keep a point only if it is more accurate
        if y > best:
            front.append((x, y))
            best = y
    return front[::-1]


def _bars(g: pd.DataFrame, m: str) -> Any:
    """Error bars of metric ``m``: the 95% interval clipped to what the metric can take
    (``<m>_lo`` / ``<m>_hi`` of ``collate.summarize``), else the symmetric half-width."""
    if f"{m}_lo" in g and f"{m}_hi" in g:
        return [(g[f"{m}_mean"] - g[f"{m}_lo"]).fillna(0).clip(lower=0),
                (g[f"{m}_hi"] - g[f"{m}_mean"]).fillna(0).clip(lower=0)]
    return g[f"{m}_ci95"].fillna(0)


def _panel(ax, groups: pd.DataFrame, x: str, styles: dict[str, dict], xlabel: str) -> bool:
    """Draw one panel; False when there is nothing to draw on this axis."""
    drawn = False
    for label, g in groups.groupby("_series", sort=False):
        g = g.sort_values(f"{x}_mean")
        g = g[g[f"{x}_mean"].notna() & g["top1_mean"].notna()]
        if g.empty:
            continue
        drawn = True
        ax.errorbar(g[f"{x}_mean"], g["top1_mean"], yerr=_bars(g, "top1"), xerr=_bars(g, x),
                    label=label, capsize=3, linewidth=1.2, markersize=7, **styles[label])
    # The front is the boundary of what is attainable: any speed-up up to a point's own is
    # reachable at that point's accuracy, hence the step drops at each front point ("pre").
    front = pareto_front(list(zip(groups[f"{x}_mean"], groups["top1_mean"])))
    if len(front) > 1:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="pre", color="0.35", linestyle="--", linewidth=1,
                label="Pareto front (ours)", zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    return drawn


def _setting(groups: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("latency_device", "{}"), ("latency_dtype", "{}"), ("latency_batch", "batch {}")):
        vals = sorted({str(v) for v in groups.get(col, []) if not is_missing(v) and v is not None})
        if vals:
            parts.append(fmt.format("/".join(vals)))
    return ", ".join(parts)


def pareto_plot(summary: pd.DataFrame, path: str | Path,
                published: Sequence[dict[str, Any]] | None = None,
                title: str | None = None) -> list[Path]:
    """Write the Pareto plot as PNG and SVG (``path`` with each suffix); returns both paths.

    ``summary``: ``collate.summarize`` output. ``published``: dicts with ``label``, ``top1``,
    ``speedup`` (and optional ``dataset``/``model`` to pick the panel), drawn hollow.
    """
    if summary.empty:
        raise ValueError("plot: no successful trials to plot")
    s = sort_rows(summary)
    s["_series"] = [series_label(r) for _, r in s.iterrows()]
    series = list(dict.fromkeys(s["_series"]))
    styles = {lab: {"marker": MARKERS[i % len(MARKERS)], "color": f"C{i % 10}"}
              for i, lab in enumerate(series)}
    pairs = list(s[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None))

    fig = Figure(figsize=(13, 4.8 * len(pairs) + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (dataset, model), (ax_mac, ax_lat) in zip(pairs, axes):
        g = s[(s["dataset"] == dataset) & (s["model"] == model)]
        _panel(ax_mac, g, "macs_speedup", styles, "MAC speed-up (dense MACs / MACs, ×)")
        ax_mac.set_title(f"{model} on {dataset}: counted (MACs)", fontsize=11)
        pub = [p for p in (published or [])
               if p.get("dataset", dataset) == dataset and p.get("model", model) == model
               and p.get("top1") is not None and p.get("speedup") is not None]
        for j, p in enumerate(pub):
            ax_mac.plot([p["speedup"]], [p["top1"]], linestyle="none", marker=MARKERS[j % len(MARKERS)],
                        markersize=9, markerfacecolor="none", markeredgewidth=1.6,
                        color=f"C{(len(series) + j) % 10}", label=f"published: {p['label']}")
        setting = _setting(g)
        if not _panel(ax_lat, g, "latency_speedup", styles,
                      "Measured speed-up (dense latency / latency, ×)"
                      + (f"\n{setting}" if setting else "")):
            ax_lat.text(0.5, 0.5, "no latency measured", ha="center", va="center",
                        transform=ax_lat.transAxes, color="0.4")
        ax_lat.set_title(f"{model} on {dataset}: measured (latency)", fontsize=11)

    # Error bars are clipped to what the quantities can take; the axes stop there too, so a wide
    # interval of few seeds (the t factor is 12.7 for n=2) does not squash the data.
    for ax in axes.flat:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.5))
        left, right = ax.get_xlim()
        ax.set_xlim(max(left, 0.0), right)

    # One legend for all panels, outside the data on the right.
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=9,
               title="hollow = published" if published else None, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".svg") else out
    written = []
    for suffix in (".png", ".svg"):
        p = stem.with_name(stem.name + suffix)
        fig.savefig(p)
        written.append(p)
    return written
