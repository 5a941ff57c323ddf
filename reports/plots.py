"""Pareto plot: top-1 accuracy against speed-up, counted (MACs) and measured (latency).

One row of two panels per (dataset, model); one series per method variant (its points are the
rank rules / operating points), named by the spec's ``label:`` when it has one, error bars of
the 95% interval clipped to what the metric can take, our Pareto front as a dashed step line
through its points, and published points as hollow markers on the MAC panel (papers report
FLOP/MAC speed-ups only). Every plotted value is the table's value. Series that would hide one
another (several methods exported at a matched 2x) are drawn a marker's width apart (an offset
of the drawing, in points; the series on the front stay in place), and an error-bar end cut by a
bound of the metric or by the axis gets a triangle; a note under the plot says both.

``ranks_plot`` draws the per-layer ranks of the rows: layer names (shortened) on the x axis in
model order, kept rank / full rank on the y axis, one line per method variant (mean over seeds).

One mapping of series label to colour and marker (``report_styles``, computed once for a report
and passed to each plot) gives a method the same style in every figure.

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
# sideways distance between series that would hide one another, in points (about a marker's
# width at markersize 7); a drawing offset only: every plotted value is the table's
DODGE_PT = 7.0
# how close two speed-ups are to hide each other's markers and bars: this fraction of the x span
NEAR = 0.02


def series_label(row: pd.Series) -> str:
    """Method, scheme and every parameter but the rank rule: the rule picks the point on the
    curve, everything else picks the curve."""
    p = row.get("params") if isinstance(row.get("params"), dict) else {}
    extra = [f"{k}={p[k]}" for k in sorted(p) if k not in COLUMN_PARAMS]
    scheme = row.get("scheme")
    label = display_name(row) + ("" if is_missing(scheme) or not scheme else f" {scheme}")
    return label + (f" ({', '.join(extra)})" if extra else "")


def style_map(labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """One colour and marker per label, from the sorted labels: the same label gets the same
    style in every figure given this mapping (ten colours; past ten the markers shift, so no two
    of the first hundred labels share both)."""
    out = {}
    for i, lab in enumerate(sorted(set(labels))):
        out[lab] = {"color": f"C{i % 10}", "marker": MARKERS[(i + i // 10) % len(MARKERS)]}
    return out


def report_styles(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """:func:`style_map` of the series labels of a whole report: ``collate.load_results`` rows
    (their successful ones) or ``collate.summarize`` groups give the same mapping."""
    if rows is None or rows.empty:
        return {}
    ok = rows[rows["status"] == "ok"] if "status" in rows else rows
    return style_map([series_label(r) for _, r in ok.iterrows()])


def _style(styles: dict[str, dict[str, str]], label: str) -> dict[str, str]:
    # a label the mapping lacks (a caller that passed another report's mapping) still gets one
    return styles.get(label) or style_map([*styles, label])[label]


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


def series_slots(xs: Sequence[float], ys: Sequence[float], series: Sequence[str], step: float) -> dict[str, int]:
    """A sideways slot per series (0: in place; +1, -1, +2, ...: that many ``DODGE_PT`` apart) so
    that series whose points lie less than ``step`` apart in x (their markers and error bars would
    cover each other) are drawn apart, while the series holding a point of the Pareto front stay
    in place (the first series holding each front point): the front is drawn through its points."""
    order = list(dict.fromkeys(series))
    valid = [i for i in range(len(xs)) if not (math.isnan(xs[i]) or math.isnan(ys[i]))]
    slots: dict[str, int] = {}
    for fx, fy in pareto_front([(xs[i], ys[i]) for i in valid]):
        holder = next(series[i] for i in valid if (xs[i], ys[i]) == (fx, fy))
        slots[holder] = 0
    idx = sorted(valid, key=lambda i: (xs[i], order.index(series[i])))
    clusters: list[list[int]] = []
    for i in idx:
        if clusters and xs[i] - xs[clusters[-1][-1]] < step:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    clusters = [c for c in clusters if len({series[i] for i in c}) > 1]
    for s in order:
        if s in slots:
            continue
        taken = {slots[series[j]] for c in clusters if any(series[i] == s for i in c)
                 for j in c if series[j] in slots}
        slots[s] = next(c for k in range(len(order) + 1) for c in ((k, -k) if k else (0,)) if c not in taken)
    return slots


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
    """Draw one panel; returns the points drawn (position, error-bar ends and cuts, colour, the
    transform that draws them aside, sideways slot; [] when none), for :func:`mark_clipped`."""
    from matplotlib.transforms import offset_copy

    points: list[dict[str, Any]] = []
    ok = groups[groups[f"{x}_mean"].notna() & groups["top1_mean"].notna()]
    xs = [float(v) for v in ok[f"{x}_mean"]]
    span = (max(xs) - min(xs)) if xs else 0.0
    slots = series_slots(xs, [float(v) for v in ok["top1_mean"]], list(ok["_series"]),
                         NEAR * (span or max(xs + [1.0])))
    for label, g in ok.groupby("_series", sort=False):
        g = g.sort_values(f"{x}_mean")
        # the values are the table's; a series that would hide another is drawn DODGE_PT aside
        where = ax.transData if not slots[label] else offset_copy(
            ax.transData, fig=ax.figure, x=slots[label] * DODGE_PT, y=0.0, units="points")
        ax.errorbar(g[f"{x}_mean"], g["top1_mean"], yerr=_bars(g, "top1"), xerr=_bars(g, x), label=label,
                    capsize=3, linewidth=1.2, markersize=7, transform=where, **_style(styles, label))
        for _, r in g.iterrows():
            (ylo, yhi, ycut), (xlo, xhi, xcut) = _ends(r, "top1"), _ends(r, x)
            # the axes scale to the data only for what is drawn in data coordinates: add the
            # values of a series drawn aside (its offset is in points, not data)
            ax.update_datalim([(xlo, r["top1_mean"]), (xhi, r["top1_mean"]), (r[f"{x}_mean"], ylo),
                               (r[f"{x}_mean"], yhi)])
            points.append({"x": float(r[f"{x}_mean"]), "y": float(r["top1_mean"]), "y_ends": (ylo, yhi),
                           "y_cut": ycut, "x_ends": (xlo, xhi), "x_cut": xcut, "transform": where,
                           "color": _style(styles, label)["color"], "shift": slots[label]})
    # The front is the boundary of what is attainable: any speed-up up to a point's own is
    # reachable at that point's accuracy, hence the step drops at each front point ("pre").
    front = pareto_front(list(zip(xs, ok["top1_mean"])))
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="pre", color="0.35", linestyle="--", linewidth=1,
                label="Pareto front (ours)", zorder=0)
    ax.autoscale_view()
    if xs:
        # room around the data, so a dodge never reads as a difference in speed-up (all points at
        # 1.0x would otherwise fill the axis)
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
                        clip_on=False, zorder=5, transform=p.get("transform", ax.transData))
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
                title: str | None = None, styles: dict[str, dict[str, str]] | None = None) -> list[Path]:
    """Write the Pareto plot as PNG and SVG (``path`` with each suffix); returns both paths.

    ``summary``: ``collate.summarize`` output. ``published``: dicts with ``label``, ``top1``,
    ``speedup`` (and optional ``dataset``/``model`` to pick the panel), drawn hollow.
    ``styles``: the report's :func:`report_styles` (default: those of ``summary``).
    """
    if summary.empty:
        raise ValueError("plot: no successful trials to plot")
    s = sort_rows(summary)
    s["_series"] = [series_label(r) for _, r in s.iterrows()]
    styles = styles if styles is not None else report_styles(s)
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
                        color="0.15", label=f"published: {p['label']}")   # no method's colour
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
        notes.append("Series that would hide one another at nearly the same speed-up are drawn about a marker's "
                     "width apart (the Pareto front's points stay in place); the tables give the exact values.")
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


def _rank_lines(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per (dataset, model) and line of the ranks plot: its ``line`` name (the series
    label, with the rank rule where one series has several), ``series`` (the colour key),
    ``layers`` (layer name -> (mean kept fraction over seeds, skipped), in model order) and
    ``shapes`` (layer name -> weight shape)."""
    ok = df[(df["status"] == "ok") & df["layers"].map(lambda v: isinstance(v, list) and len(v) > 0)]
    if ok.empty:
        return []
    ok = ok.assign(_series=[series_label(r) for _, r in ok.iterrows()], _rule=ok["rule"].fillna("").astype(str))
    # a series with several rank rules (operating points): one line per rule, named by it
    rules = ok.groupby(["dataset", "model", "_series"])["_rule"].nunique()
    out = []
    for key, g in ok.groupby(["dataset", "model", "_series", "variant"], sort=True):
        dataset, model, series, _ = key
        rule = g["_rule"].iloc[0]
        line = f"{series} [{rule or 'no rule'}]" if rules[(dataset, model, series)] > 1 else series
        acc: dict[str, list[tuple[float, bool]]] = {}
        shapes: dict[str, Any] = {}
        for layers in g["layers"]:
            for L in layers:
                acc.setdefault(str(L.get("name")), []).append(kept_fraction(L))
                shapes.setdefault(str(L.get("name")), L.get("shape"))
        out.append({"dataset": str(dataset), "model": str(model), "line": line, "series": series, "shapes": shapes,
                    "layers": {n: (sum(v for v, _ in fs) / len(fs), all(sk for _, sk in fs)) for n, fs in acc.items()}})
    return out


def rank_series(df: pd.DataFrame) -> dict[tuple[str, str], dict[str, dict[str, tuple[float, bool]]]]:
    """Per (dataset, model) and line (the series label as in the Pareto plot, plus the rank rule
    where one series has several): layer name -> (mean kept fraction over seeds, skipped),
    layers in model order."""
    out: dict[tuple[str, str], dict[str, dict[str, tuple[float, bool]]]] = {}
    for e in _rank_lines(df):
        out.setdefault((e["dataset"], e["model"]), {})[e["line"]] = e["layers"]
    return out


def _kind(shape: Any) -> str:
    """A weight shape as a reader names the layer: ``conv3x3 16→32``, ``fc 64→10``; "" if unknown."""
    if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape):
        return f"conv{shape[2]}x{shape[3]} {shape[1]}→{shape[0]}"
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape):
        return f"fc {shape[1]}→{shape[0]}"
    return ""


def layer_ticks(names: Sequence[str], shapes: dict[str, Any] | None = None, keep: int = 3) -> list[str]:
    """Tick labels for layer names: the dotted prefix every name shares dropped, then at most the
    last ``keep`` components (``backbone.layer1.0.conv1`` -> ``layer1.0.conv1``); a name that is
    only an index (an ``nn.Sequential``'s ``3``) gets its kind from ``shapes`` (``3 conv3x3 16→32``)."""
    parts = [n.split(".") for n in names]
    common = 0
    while parts and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    out = []
    for n, p in zip(names, parts):
        short = ".".join(p[common:][-keep:])
        kind = _kind((shapes or {}).get(n))
        out.append(f"{short} {kind}" if kind and short.replace(".", "").isdigit() else short)
    return out


def _same_line(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-9 for x, y in zip(a, b))


def _aside(ax, k: int) -> Any:
    """The transform of the ``k``-th line identical to one drawn before: ``k`` half markers to
    the side (+, -, alternating), so every series stays visible; its values stay the data's."""
    if not k:
        return ax.transData
    from matplotlib.transforms import offset_copy

    step = (k + 1) // 2 * (1 if k % 2 else -1)
    return offset_copy(ax.transData, fig=ax.figure, x=step * DODGE_PT / 2, y=0.0, units="points")


def ranks_plot(df: pd.DataFrame, path: str | Path, styles: dict[str, dict[str, str]] | None = None) -> list[Path]:
    """Per-layer kept rank / full rank, one line per method variant, one panel per (dataset,
    model), from ``collate.load_results`` rows (their ``layers``), layers named on the x axis.
    ``styles``: the report's :func:`report_styles` (default: those of ``df``), so a method has the
    colour and marker it has in the Pareto plot. Writes PNG and SVG; returns both."""
    entries = _rank_lines(df)
    if not entries:
        raise ValueError("ranks: no successful trial reports per-layer ranks (dense rows have none)")
    styles = styles if styles is not None else report_styles(df)
    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        panels.setdefault((e["dataset"], e["model"]), []).append(e)
    n_layers = max(len({n for e in lines for n in e["layers"]}) for lines in panels.values())
    fig = Figure(figsize=(max(9.0, 0.4 * n_layers + 4), 4.6 * len(panels) + 0.8), dpi=110, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    any_skipped = any_aside = False
    for ax, ((dataset, model), lines) in zip(axes, panels.items()):
        order = list(dict.fromkeys(n for e in lines for n in e["layers"]))   # model order
        shapes = {n: s for e in lines for n, s in e["shapes"].items()}
        dashes = {}   # several lines of one series (rank rules): told apart by the line style
        seen: list[list[float]] = []   # lines already drawn: an identical one is drawn aside
        for e in lines:
            style = _style(styles, e["series"])
            linestyle = ("-", "--", ":", "-.")[dashes.get(e["series"], 0) % 4]
            dashes[e["series"]] = dashes.get(e["series"], 0) + 1
            xs = list(range(len(order)))
            ys = [e["layers"].get(n, (math.nan, False))[0] for n in order]
            k = sum(1 for s in seen if _same_line(s, ys))
            any_aside |= k > 0
            where = _aside(ax, k)
            seen.append(ys)
            ax.plot(xs, ys, label=e["line"], linewidth=1.2, markersize=6, linestyle=linestyle, transform=where,
                    **style)
            dense = [(x, 1.0) for x, n in zip(xs, order) if e["layers"].get(n, (0, False))[1]]
            if dense:
                any_skipped = True
                ax.plot(*zip(*dense), linestyle="none", marker=style["marker"], markersize=9,
                        markerfacecolor="white", color=style["color"], transform=where)
        ax.set_xticks(range(len(order)), layer_ticks(order, shapes), rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer (in model order)")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept rank / full rank")
        ax.set_title(f"{model} on {dataset}: per-layer ranks (mean over seeds)", fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)   # per panel: each has its own methods
    notes = ["Hollow marker at 1.0: the layer was left dense (skipped)."] if any_skipped else []
    if any_aside:
        notes.append("Lines with the same ranks are drawn half a marker apart so each stays visible.")
    if notes:
        fig.supxlabel(" ".join(notes), fontsize=8, color="0.3")
    return save(fig, path)


# ---------------------------------------------------------------------------- SVG text for a page

def svg_text(plot: Any, *args: Any, **kwargs: Any) -> str:
    """What one of this module's plots (``pareto_plot``, ``ranks_plot``: ``path`` given by keyword)
    draws, as SVG text for a page to inline (``rankbench.reports.html``): drawn into a temporary
    folder and read back, nothing left on disk."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        written = plot(*args, path=Path(d) / "figure", **kwargs)
        return next(p for p in written if p.suffix == ".svg").read_text(encoding="utf-8")
