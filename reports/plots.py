"""Pareto plot: top-1 accuracy against speed-up, counted (MACs) and measured (latency).

One row of two panels per (dataset, model); one series per method variant (its points are the
rank rules / operating points), named by the spec's ``label:`` when it has one, error bars of
the 95% interval clipped to what the metric can take, our Pareto front as a dashed step line,
and published points as hollow markers on the MAC panel (papers report FLOP/MAC speed-ups only).
Points that would hide each other (several methods exported at a matched 2x) are spread sideways
by about a marker's width, and an error-bar end cut by a bound of the metric or by the axis gets
a triangle; a note under the plot says both.

``ranks_plot`` draws the per-layer ranks of the rows: layer on the x axis (in model order), kept
rank / full rank on the y axis, one line per method variant (mean over seeds).

Drawn on a bare ``Figure`` (no pyplot), so it works headless and in Ray workers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure

from rankbench.reports.format import COLUMN_PARAMS, display_name, is_missing, sort_rows

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
# sideways spacing of points that would hide each other, as a fraction of the panel's x span
# (about one marker's width)
DODGE = 0.02


def series_label(row: pd.Series) -> str:
    """Method, scheme and every parameter but the rank rule: the rule picks the point on the
    curve, everything else picks the curve."""
    p = row.get("params") if isinstance(row.get("params"), dict) else {}
    extra = [f"{k}={p[k]}" for k in sorted(p) if k not in COLUMN_PARAMS]
    scheme = row.get("scheme")
    label = display_name(row) + ("" if is_missing(scheme) or not scheme else f" {scheme}")
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


def dodge(xs: Sequence[float], series: Sequence[str], step: float) -> list[float]:
    """Sideways offsets so that no two points sit closer than ``step`` where they would hide each
    other: points less than ``step`` apart form a cluster, whose members (by speed-up, then series
    order) shift by ``(j - (k-1)/2) * step`` each; a point alone stays where it is."""
    order = list(dict.fromkeys(series))
    idx = sorted((i for i, x in enumerate(xs) if not math.isnan(x)), key=lambda i: (xs[i], order.index(series[i])))
    out = [0.0] * len(xs)
    cluster: list[int] = []
    for i in idx + [None]:   # None closes the last cluster
        if i is not None and cluster and xs[i] - xs[cluster[-1]] < step:
            cluster.append(i)
            continue
        k = len(cluster)
        for j, c in enumerate(cluster if k > 1 else []):
            out[c] = (j - (k - 1) / 2) * step
        cluster = [i] if i is not None else []
    return out


def _bars(g: pd.DataFrame, m: str) -> Any:
    """Error bars of metric ``m``: the 95% interval clipped to what the metric can take
    (``<m>_lo`` / ``<m>_hi`` of ``collate.summarize``), else the symmetric half-width."""
    if f"{m}_lo" in g and f"{m}_hi" in g:
        return [(g[f"{m}_mean"] - g[f"{m}_lo"]).fillna(0).clip(lower=0),
                (g[f"{m}_hi"] - g[f"{m}_mean"]).fillna(0).clip(lower=0)]
    return g[f"{m}_ci95"].fillna(0)


def _ends(r: pd.Series, m: str) -> tuple[float, float, tuple[bool, bool]]:
    """The drawn error bar of metric ``m`` in one summary row: its low and high end, and whether
    a bound of the metric (``collate.BOUNDS``) cut each end."""
    mean = float(r[f"{m}_mean"])
    ci = 0.0 if is_missing(r.get(f"{m}_ci95")) else float(r[f"{m}_ci95"])
    lo = r.get(f"{m}_lo")
    hi = r.get(f"{m}_hi")
    lo = mean - ci if is_missing(lo) else float(lo)
    hi = mean + ci if is_missing(hi) else float(hi)
    return lo, hi, (mean - ci < lo - 1e-9, mean + ci > hi + 1e-9)


def _panel(ax, groups: pd.DataFrame, x: str, styles: dict[str, dict], xlabel: str) -> list[dict[str, Any]]:
    """Draw one panel; returns the points drawn (position, error-bar ends and cuts, colour,
    sideways shift; [] when none), for :func:`mark_clipped`."""
    points: list[dict[str, Any]] = []
    ok = groups[groups[f"{x}_mean"].notna() & groups["top1_mean"].notna()]
    xs = [float(v) for v in ok[f"{x}_mean"]]
    span = (max(xs) - min(xs)) if xs else 0.0
    shift = dict(zip(ok.index, dodge(xs, list(ok["_series"]), DODGE * (span or max(xs + [1.0])))))
    for label, g in ok.groupby("_series", sort=False):
        g = g.sort_values(f"{x}_mean")
        gx = g[f"{x}_mean"] + pd.Series([shift[i] for i in g.index], index=g.index)
        ax.errorbar(gx, g["top1_mean"], yerr=_bars(g, "top1"), xerr=_bars(g, x),
                    label=label, capsize=3, linewidth=1.2, markersize=7, **styles[label])
        for (i, r), px in zip(g.iterrows(), gx):
            (ylo, yhi, ycut), (xlo, xhi, xcut) = _ends(r, "top1"), _ends(r, x)
            points.append({"x": px, "y": r["top1_mean"], "y_ends": (ylo, yhi), "y_cut": ycut,
                           "x_ends": (px - (r[f"{x}_mean"] - xlo), px + (xhi - r[f"{x}_mean"])), "x_cut": xcut,
                           "color": styles[label]["color"], "shift": shift[i]})
    # The front is the boundary of what is attainable: any speed-up up to a point's own is
    # reachable at that point's accuracy, hence the step drops at each front point ("pre").
    front = pareto_front(list(zip(groups[f"{x}_mean"], groups["top1_mean"])))
    if len(front) > 1:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="pre", color="0.35", linestyle="--", linewidth=1,
                label="Pareto front (ours)", zorder=0)
    if xs:
        # room around the data, so a dodge never reads as a difference in speed-up (all points at
        # 1.0x would otherwise fill the axis with their small shifts)
        left, right = ax.get_xlim()
        pad = 0.1 * max(abs(v) for v in xs)
        ax.set_xlim(min(left, min(xs) - pad), max(right, max(xs) + pad))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    return points


def mark_clipped(ax, points: Sequence[dict[str, Any]]) -> int:
    """A triangle pointing out of the data at each error-bar end that was cut, by what the metric
    can take (top-1 at 100%, a speed-up at 0) or by the axis limits; returns how many."""
    lo, hi = ax.get_ylim()
    left, right = ax.get_xlim()
    n = 0
    for p in points:
        (ylo, yhi), (xlo, xhi) = p["y_ends"], p["x_ends"]
        for cut, at, marker in ((p["y_cut"][1] or yhi > hi, (p["x"], min(yhi, hi)), "^"),
                                (p["y_cut"][0] or ylo < lo, (p["x"], max(ylo, lo)), "v"),
                                (p["x_cut"][0] or xlo < left, (max(xlo, left), p["y"]), "<"),
                                (p["x_cut"][1] or xhi > right, (min(xhi, right), p["y"]), ">")):
            if cut:
                ax.plot([at[0]], [at[1]], marker=marker, color=p["color"], markersize=8, linestyle="none",
                        clip_on=False, zorder=5)
                n += 1
    return n


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
    drawn: dict[Any, list[dict[str, Any]]] = {}
    for (dataset, model), (ax_mac, ax_lat) in zip(pairs, axes):
        g = s[(s["dataset"] == dataset) & (s["model"] == model)]
        drawn[ax_mac] = _panel(ax_mac, g, "macs_speedup", styles, "MAC speed-up (dense MACs / MACs, ×)")
        ax_mac.set_title(f"{model} on {dataset}: counted (MACs)", fontsize=11)
        pub = [p for p in (published or [])
               if p.get("dataset", dataset) == dataset and p.get("model", model) == model
               and p.get("top1") is not None and p.get("speedup") is not None]
        for j, p in enumerate(pub):
            ax_mac.plot([p["speedup"]], [p["top1"]], linestyle="none", marker=MARKERS[j % len(MARKERS)],
                        markersize=9, markerfacecolor="none", markeredgewidth=1.6,
                        color=f"C{(len(series) + j) % 10}", label=f"published: {p['label']}")
        setting = _setting(g)
        drawn[ax_lat] = _panel(ax_lat, g, "latency_speedup", styles,
                               "Measured speed-up (dense latency / latency, ×)" + (f"\n{setting}" if setting else ""))
        if not drawn[ax_lat]:
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
    clipped = sum(mark_clipped(ax, pts) for ax, pts in drawn.items())
    notes = []
    if any(p["shift"] for pts in drawn.values() for p in pts):
        notes.append("Points at nearly the same speed-up are shifted sideways by about a marker's width so that "
                     "none hides another; the tables give the exact values.")
    if clipped:
        notes.append("A triangle at an error bar's end: the 95% interval was cut there, at what the metric "
                     "can take (100% top-1, 0x) or at the axis (few seeds give wide intervals).")
    if notes:   # the plot's caption notes, under the panels
        import textwrap

        # wrapped to the figure's width (about 17 characters of 8-point text per inch)
        fig.supxlabel(textwrap.fill(" ".join(notes), int(fig.get_figwidth() * 17)), fontsize=8, color="0.3")
    # One legend for all panels, outside the data on the right.
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=9,
               title="hollow = published" if published else None, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)

    return save(fig, path)


def save(fig: Figure, path: str | Path) -> list[Path]:
    """``path`` as PNG and SVG (whatever its suffix); the SVG keeps its text as text, so a
    paper's author can edit a label."""
    import matplotlib

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".svg") else out
    written = []
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for suffix in (".png", ".svg"):
            p = stem.with_name(stem.name + suffix)
            fig.savefig(p)
            written.append(p)
    return written


# ---------------------------------------------------------------------------- per-layer ranks

def kept_fraction(layer: dict[str, Any]) -> tuple[float, bool]:
    """``(rank / full rank, skipped)`` of one row's layer: a skipped (dense) layer keeps 1.0;
    per-mode ranks (lists, e.g. Tucker-2) give the mean of their fractions; NaN when unknown."""
    if layer.get("skipped"):
        return 1.0, True
    r, f = layer.get("rank"), layer.get("full_rank")
    rs, fs = (r, f) if isinstance(r, list) and isinstance(f, list) else ([r], [f])
    fr = [a / b for a, b in zip(rs, fs) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b]
    return (sum(fr) / len(fr) if fr else math.nan), False


def rank_series(df: pd.DataFrame) -> dict[tuple[str, str], dict[str, dict[str, tuple[float, bool]]]]:
    """Per (dataset, model) and line (display name, plus the variant where one name has several):
    layer name -> (mean kept fraction over seeds, skipped), layers in model order."""
    ok = df[(df["status"] == "ok") & df["layers"].map(lambda v: isinstance(v, list) and len(v) > 0)]
    if ok.empty:
        return {}
    names = ok.apply(display_name, axis=1)
    # a name with several variants: its lines say the parameters that differ between them
    differ: dict[str, list[str]] = {}
    for n, g in ok.groupby(names):
        plist = [p if isinstance(p, dict) else {} for p in g["params"]]
        differ[n] = sorted(k for k in {k for p in plist for k in p} if len({repr(p.get(k)) for p in plist}) > 1)
    out: dict[tuple[str, str], dict[str, dict[str, tuple[float, bool]]]] = {}
    for key, g in ok.groupby(["dataset", "model", names.rename("_name"), "variant"], sort=True):
        dataset, model, name, variant = key
        p = g["params"].iloc[0] if isinstance(g["params"].iloc[0], dict) else {}
        extra = ", ".join(f"{k}={p.get(k)}" for k in differ.get(name, []))
        line = f"{name} ({extra})" if extra else name
        acc: dict[str, list[tuple[float, bool]]] = {}
        for layers in g["layers"]:
            for L in layers:
                acc.setdefault(str(L.get("name")), []).append(kept_fraction(L))
        out.setdefault((str(dataset), str(model)), {})[line] = {
            n: (sum(v for v, _ in fs) / len(fs), all(sk for _, sk in fs)) for n, fs in acc.items()}
    return out


def ranks_plot(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Per-layer kept rank / full rank, one line per method variant, one panel per (dataset,
    model), from ``collate.load_results`` rows (their ``layers``). Writes PNG and SVG; returns both."""
    series = rank_series(df)
    if not series:
        raise ValueError("ranks: no successful trial reports per-layer ranks (dense rows have none)")
    n_layers = max(len({n for line in lines.values() for n in line}) for lines in series.values())
    fig = Figure(figsize=(max(9.0, 0.4 * n_layers + 4), 4.2 * len(series) + 0.8), dpi=110, layout="constrained")
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    any_skipped = False
    for ax, ((dataset, model), lines) in zip(axes, series.items()):
        order = list(dict.fromkeys(n for line in lines.values() for n in line))   # model order
        for i, (label, layers) in enumerate(lines.items()):
            style = {"marker": MARKERS[i % len(MARKERS)], "color": f"C{i % 10}"}
            xs = list(range(len(order)))
            ys = [layers.get(n, (math.nan, False))[0] for n in order]
            ax.plot(xs, ys, label=label, linewidth=1.2, markersize=6, **style)
            dense = [(x, 1.0) for x, n in zip(xs, order) if layers.get(n, (0, False))[1]]
            if dense:
                any_skipped = True
                ax.plot(*zip(*dense), linestyle="none", marker=style["marker"], markersize=9,
                        markerfacecolor="white", color=style["color"])
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept rank / full rank")
        ax.set_title(f"{model} on {dataset}: per-layer ranks (mean over seeds)", fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)   # per panel: each has its own methods
    if any_skipped:
        fig.supxlabel("Hollow marker at 1.0: the layer was left dense (skipped).", fontsize=8, color="0.3")
    return save(fig, path)
