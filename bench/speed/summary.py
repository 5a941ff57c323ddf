"""The readable summary (markdown) of a ``rankbench speed --suite`` result: one table per part,
with the columns that answer its question, and every skipped or failed part named."""
from __future__ import annotations

from typing import Any, Sequence

STEP_COLS = ("model", "batch", "variant", "weights", "step_size", "ms", "ms_min", "images_per_s", "slowdown_vs_plain",
             "warm_share", "skipped")
PROJ_COLS = ("model", "scheme", "weights", "step_size", "solver", "layers", "ms", "ms_min", "rank_sum",
             "ranks_equal_exact", "max_rel_err_weight", "max_rel_err_subgrad", "warm_share", "skipped")
LATENCY_COLS = ("model", "device", "dtype", "batch", "dense_ms", "ms", "latency_speedup", "macs_speedup",
                "dense_layout", "layout")
PACKED_COLS = ("model", "n", "batch", "peak_gib_per_trial", "single_images_per_s", "aggregate_images_per_s",
               "aggregate_vs_single", "skipped")
PIPELINE_COLS = ("layout", "decode", "images_per_s", "images", "batch", "workers", "device", "skipped")

TITLES = {
    "step": "Training step, eager (slowdown = TRP step / plain step; TRP starts from paper-level ranks)",
    "step-compiled": "Training step, torch.compile (slowdown = TRP step / compiled plain step)",
    "projection": "One projection of all TRP layers (energy 0.9), against an exact float64 SVD",
    "latency": "Inference latency, dense vs decomposed, each on its fastest layout",
    "packed": "Packed trials on one device",
    "pipeline": "Input pipeline (synthetic JPEGs), images/s per layout and decode path",
}
COLUMNS = {"step": STEP_COLS, "step-compiled": STEP_COLS, "projection": PROJ_COLS, "latency": LATENCY_COLS,
           "packed": PACKED_COLS, "pipeline": PIPELINE_COLS}


def fmt(v: Any) -> str:
    """A cell: floats to 3 significant digits (thousands separated), None as blank."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    """A markdown table of ``rows`` on the ``cols`` any row has."""
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def projection_pivot(rows: Sequence[dict[str, Any]]) -> str:
    """ms per solver side by side for each (model, scheme, weights, step size), the warm share,
    and the exact SVD's and the default solver's time over warm's."""
    rows = [r for r in rows if "solver" in r]     # not the rows of skipped models
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["scheme"], r["weights"], r.get("step_size")), {})[r["solver"]] = r
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    head = ["model", "scheme", "weights", "step", "rank sum", *(f"{s} ms" for s in solvers), "warm share",
            "svd / warm", "auto / warm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, scheme, weights, size), by in groups.items():
        warm = by.get("warm", {}).get("ms")

        def over(name: str) -> str:
            return f"{by[name]['ms'] / warm:.2f}x" if warm and name in by else ""
        any_row = next(iter(by.values()))
        cells = [model, scheme, weights, fmt(size), fmt(any_row.get("exact_rank_sum")),
                 *(fmt(by[s]["ms"]) if s in by else "" for s in solvers),
                 fmt(by.get("warm", {}).get("warm_share")), over("svd"), over("auto")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    where = env.get("gpu") or env.get("cpu") or env.get("machine")
    out = [f"# rankbench speed --suite {result['suite']}",
           "",
           f"Device {result['device']} ({where}); torch {env['torch']}, CUDA {env.get('cuda')}, Python "
           f"{env['python']}, {env.get('cpu_count')} CPUs ({env['cpu_threads']} torch threads); started "
           f"{result['started']}, {result.get('wall_s', 0):.0f} s in all. Ratios compare variants timed in turns "
           f"in one run; absolute numbers from different runs do not compare."]
    for part, entry in result["parts"].items():
        out += ["", f"## {TITLES.get(part, part)}", ""]
        if entry.get("skipped"):
            out.append(f"Skipped: {entry['skipped']}.")
            continue
        if entry.get("error"):
            out.append(f"Failed: `{entry['error']}`.")
        rows = entry["rows"]
        if part == "projection" and any("solver" in r for r in rows):
            out += [projection_pivot(rows), ""]
        if rows:
            out.append(table(rows, COLUMNS.get(part, list(rows[0]))))
        out.append(f"\n({len(rows)} rows, {entry['seconds']:.1f} s)")
    return "\n".join(out) + "\n"
