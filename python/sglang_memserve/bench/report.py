"""The paper-style report of :mod:`sglang_memserve.bench.paper` results: tables, ratios, plots.

A *round* is one run's JSON (``{"meta", "results": {config: {"workloads": {name: {"summary",
"facts", "records"}}}}}``). Rounds may run different configurations (e.g. the routing pair in
rounds of their own); tables show each configuration's first round; every ratio is taken within a
round that ran both sides and shown as ``mean (min-max)`` over those rounds, so a second run
states the spread. matplotlib is
imported only when plots are drawn.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Round = dict[str, Any]
Run = dict[str, Any]  # one configuration x one workload: summary, facts, records

# (label, getter) of the figures compared in the ratio table.
FIGURES: tuple[tuple[str, Callable[[Run], float]], ...] = (
    ("JCT avg", lambda r: r["summary"]["jct_avg"]),
    ("JCT P99", lambda r: r["summary"]["jct_p99"]),
    ("TTFT avg", lambda r: r["summary"]["ttft_avg"]),
    ("TTFT P99", lambda r: r["summary"]["ttft_p99"]),
    ("prefill tokens computed", lambda r: float(r["facts"]["computed_on_prefill"])),
)
# The ratio rows the paper reports: (label, ours, reference).
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("PD-Basic vs colocated (no cache)", "pd-basic", "colo-nocache"),
    ("PD + cache (MemServe) vs PD-Basic", "pd-caching3", "pd-basic"),
    ("colocated + cache vs colocated", "colo-cache", "colo-nocache"),
    ("MemServe vs stock, colocated", "colo-cache", "colo-stock"),
    ("MemServe vs stock PD + decode cache", "pd-caching3", "sglang-pd-dcache"),
    ("MemServe vs stock PD", "pd-caching3", "sglang-pd"),
    # Two colocated instances behind each router.
    ("memserve-router vs cache_aware", "colo2-memserve-router", "colo2-sglang-cache-aware"),
    ("memserve-router vs round_robin", "colo2-memserve-router", "colo2-sglang-rr"),
    # The pair crossed: one of router and instance cache changed at a time.
    ("router alone: memserve-router vs cache_aware, stock instances",
     "colo2-memserve-router-stock", "colo2-sglang-cache-aware"),
    ("router alone: memserve-router vs cache_aware, MemServe instances",
     "colo2-memserve-router", "colo2-cache-aware-memserve"),
    ("cache alone: MemServe vs stock, behind memserve-router", "colo2-memserve-router",
     "colo2-memserve-router-stock"),
    ("cache alone: MemServe vs stock, behind cache_aware", "colo2-cache-aware-memserve",
     "colo2-sglang-cache-aware"),
    ("memserve-router's hold vs none", "colo2-memserve-router", "colo2-memserve-router-nohold"),
    ("memserve-router, 50 ms per request vs cache_aware", "colo2-memserve-router-lpr05",
     "colo2-sglang-cache-aware"),
    ("memserve-router, 50 ms per request vs 1 ms", "colo2-memserve-router-lpr05",
     "colo2-memserve-router"),
)
# The routing comparison (prompt-tree vs the stock router's), shown in a table of its own.
ROUTING: tuple[tuple[str, str], ...] = (
    ("colo2-memserve-router", "colo2-sglang-cache-aware"),
    ("colo2-memserve-router", "colo2-sglang-rr"),
    ("colo2-memserve-router-stock", "colo2-sglang-cache-aware"),
    ("colo2-memserve-router", "colo2-cache-aware-memserve"),
    ("colo2-memserve-router-lpr05", "colo2-sglang-cache-aware"),
)
# The MemServe paper's PD + cache vs PD-Basic figures (as ratios: -29% JCT -> 0.71).
PAPER: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("pd-caching3", "pd-basic"): {
        "sharegpt": {"JCT avg": 0.71, "TTFT avg": 0.42},
        "longdoc": {"JCT avg": 0.731, "TTFT avg": 0.44},
        "react": {"TTFT avg": 0.215},
    },
}


def _run(rnd: Round, config: str, workload: str) -> Run | None:
    return rnd["results"].get(config, {}).get("workloads", {}).get(workload)


def _first(rounds: Sequence[Round], config: str, workload: str) -> Run | None:
    """The configuration's run of ``workload`` in the first round that has one."""
    return next((r for r in (_run(x, config, workload) for x in rounds) if r is not None), None)


def _workloads(rounds: Sequence[Round]) -> list[str]:
    return list(rounds[0]["meta"]["workloads"])


def _configs(rounds: Sequence[Round]) -> list[str]:
    """Every round's configurations, in order of first appearance."""
    out: list[str] = []
    for rnd in rounds:
        out += [c for c in rnd["meta"]["configs"] if c in rnd["results"] and c not in out]
    return out


def _f(v: float, nd: int = 3) -> str:
    return "-" if v != v else f"{v:.{nd}f}"  # NaN: no successful request


def ratios(rounds: Sequence[Round], ours: str, ref: str, workload: str,
           figure: Callable[[Run], float]) -> list[float]:
    """``figure(ours) / figure(ref)`` in every round that has both (and a nonzero reference)."""
    out = []
    for rnd in rounds:
        a, b = _run(rnd, ours, workload), _run(rnd, ref, workload)
        if a is not None and b is not None and figure(b):
            out.append(figure(a) / figure(b))
    return out


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _label(rounds: Sequence[Round], config: str) -> str:
    res = next(x["results"][config] for x in rounds if config in x["results"])
    return res.get("label", config)


def summary_table(rounds: Sequence[Round]) -> list[str]:
    """Rows: configurations; columns: workload x (JCT avg, JCT P99, TTFT avg, TTFT P99)."""
    ws = _workloads(rounds)
    head = "| configuration | " + " | ".join(
        f"{w} {m}" for w in ws for m in ("JCT avg", "JCT P99", "TTFT avg", "TTFT P99")) + " |"
    lines = [head, "|---|" + "---|" * (4 * len(ws))]
    for c in _configs(rounds):
        cells = []
        for w in ws:
            r = _first(rounds, c, w)
            cells += (["-"] * 4 if r is None else
                      [_f(r["summary"][k]) for k in ("jct_avg", "jct_p99", "ttft_avg",
                                                      "ttft_p99")])
        lines.append(f"| {_label(rounds, c)} | " + " | ".join(cells) + " |")
    return lines


def workload_table(rounds: Sequence[Round], workload: str) -> list[str]:
    """Every per-run figure of one workload, one row per configuration (first round)."""
    lines = ["| configuration | requests | failed | JCT avg | P50 | P90 | P99 | TTFT avg | P50 | "
             "P90 | P99 | TPOT avg | hit rate | prompt tok | prefill tok computed | KV sent (MB) "
             "| req/s | CPU s (per instance) |", "|---|" + "---|" * 17]
    for c in _configs(rounds):
        r = _first(rounds, c, workload)
        if r is None:
            continue
        s, f = r["summary"], r["facts"]
        kv = f.get("kv_transfer_mb")
        cpu = " + ".join(f"{x:.1f}" for x in f.get("cpu_s", [])) or "-"
        if "router_cpu_s" in f:
            cpu += f" (router {f['router_cpu_s']:.1f})"
        lines.append(
            f"| {_label(rounds, c)} | {s['requests']} | {s['failed']} | "
            + " | ".join(_f(s[k]) for k in ("jct_avg", "jct_p50", "jct_p90", "jct_p99",
                                             "ttft_avg", "ttft_p50", "ttft_p90", "ttft_p99"))
            + f" | {_f(s['tpot_avg'], 4)} | {s['hit_rate']:.2f} | {s['prompt_tokens']} | "
            f"{f['computed_on_prefill']} | {'-' if kv is None else f'{kv:.1f}'} | "
            f"{s['throughput_rps']:.2f} | {cpu} |")
    return lines


def ratio_table(rounds: Sequence[Round]) -> list[str]:
    """The paper's ratio rows, each per workload, with the paper's figure where it has one."""
    lines = ["| ratio | workload | " + " | ".join(f for f, _ in FIGURES) + " | paper |",
             "|---|---|" + "---|" * (len(FIGURES) + 1)]
    configs = set(_configs(rounds))
    for label, ours, ref in RATIOS:
        if ours not in configs or ref not in configs:
            continue
        for w in _workloads(rounds):
            cells = [_spread(ratios(rounds, ours, ref, w, f)) for _, f in FIGURES]
            paper = PAPER.get((ours, ref), {}).get(w, {})
            ptext = ", ".join(f"{k} {v:.2f}" for k, v in paper.items()) or "-"
            lines.append(f"| {label} | {w} | " + " | ".join(cells) + f" | {ptext} |")
    return lines


def routing_table(rounds: Sequence[Round]) -> list[str]:
    """memserve-router against the stock router in the same rounds, per workload: JCT and TTFT
    ratios (avg, P99) and both sides' hit rates, each as mean (min-max) over those rounds."""
    figures = [f for f in FIGURES if f[0] != "prefill tokens computed"]
    lines = ["| ours vs reference | workload | " + " | ".join(f for f, _ in figures)
             + " | hit rate (ours) | hit rate (reference) | rounds |",
             "|---|---|" + "---|" * (len(figures) + 3)]
    configs = set(_configs(rounds))
    for ours, ref in ROUTING:
        if ours not in configs or ref not in configs:
            continue
        for w in _workloads(rounds):
            both = [x for x in rounds if _run(x, ours, w) and _run(x, ref, w)]
            if not both:
                continue
            cells = [_spread(ratios(both, ours, ref, w, f)) for _, f in figures]
            hits = [_spread([r["summary"]["hit_rate"] for x in both
                             if (r := _run(x, c, w)) is not None]) for c in (ours, ref)]
            lines.append(f"| {_label(rounds, ours)} vs {_label(rounds, ref)} | {w} | "
                         + " | ".join(cells + hits) + f" | {len(both)} |")
    return lines


def router_table(rounds: Sequence[Round]) -> list[str]:
    """Per routed configuration and workload, over the rounds that ran it (mean (min-max)):
    the router's CPU seconds and, for memserve-router (``facts["router"]``), its mean decision
    time and its prefill holds (count, seconds waited in all)."""
    lines = ["| configuration | workload | router CPU s | decision ms (mean) | holds | "
             "held s (sum) | rounds |", "|---|---|" + "---|" * 5]
    for c in _configs(rounds):
        for w in _workloads(rounds):
            facts = [r["facts"] for r in (_run(x, c, w) for x in rounds)
                     if r is not None and "router_cpu_s" in r["facts"]]
            if not facts:
                continue
            ctr = [f["router"] for f in facts if "router" in f]

            def get(key: str, ctr: list[dict[str, float]] = ctr) -> list[float]:
                return [m.get(key, 0.0) for m in ctr]

            dec = [1e3 * s / n for s, n in zip(get("memserve_router_decision_seconds_sum"),
                                               get("memserve_router_decision_seconds_count"),
                                               strict=True) if n]
            holds = get("memserve_router_prefill_holds_total")
            held = get("memserve_router_prefill_hold_seconds_sum")
            lines.append(f"| {_label(rounds, c)} | {w} | "
                         f"{_spread([f['router_cpu_s'] for f in facts])} | {_spread(dec)} | "
                         f"{_spread(holds)} | {_spread(held)} | {len(facts)} |")
    return lines


def round_table(rounds: Sequence[Round]) -> list[str]:
    """JCT and TTFT averages of every round side by side (the absolute spread)."""
    ws = _workloads(rounds)
    lines = ["| configuration | " + " | ".join(f"{w} JCT avg / TTFT avg per round" for w in ws)
             + " |", "|---|" + "---|" * len(ws)]
    for c in _configs(rounds):
        cells = []
        for w in ws:
            runs = [r for r in (_run(x, c, w) for x in rounds) if r is not None]
            cells.append(" ; ".join(f"{_f(r['summary']['jct_avg'], 2)} / "
                                    f"{_f(r['summary']['ttft_avg'], 2)}" for r in runs))
        lines.append(f"| {_label(rounds, c)} | " + " | ".join(cells) + " |")
    return lines


def tables_markdown(rounds: Sequence[Round]) -> str:
    """The generated part of the report (tables only; prose is the author's)."""
    meta = rounds[0]["meta"]
    out = ["### Workloads", ""]
    out += [f"* **{w}**: {meta['workload_desc'][w]}" for w in _workloads(rounds)]
    out += ["", "### Paper-style table (each configuration's first round; seconds)", "",
            *summary_table(rounds), "",
            f"### Ratios within a round ({len(rounds)} round(s); each ratio over the rounds that "
            "ran both configurations: mean (min-max))", "", *ratio_table(rounds), ""]
    if routing := routing_table(rounds)[2:]:
        out += ["### Routing: memserve-router vs stock sglang-router (same run, 2 colocated "
                "instances)", "", *routing_table(rounds)[:2], *routing, ""]
    if routers := router_table(rounds)[2:]:
        out += ["### The router's own work (rounds that measured it)", "",
                *router_table(rounds)[:2], *routers, ""]
    if len(rounds) > 1:
        out += ["### Every round's averages (seconds)", "", *round_table(rounds), ""]
    for w in _workloads(rounds):
        out += [f"### {w}: every figure (first round of each configuration)", "", *workload_table(rounds, w), ""]
    return "\n".join(out)


def plot(rounds: Sequence[Round], out_dir: Path, prefix: str) -> list[Path]:
    """TTFT and JCT CDFs per workload, ratio bars and hit-rate bars as PNGs in ``out_dir``.

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    configs, ws = _configs(rounds), _workloads(rounds)
    for w in ws:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, key in zip(axes, ("ttft", "jct"), strict=True):
            for c in configs:
                r = _first(rounds, c, w)
                vals = sorted(x[key] for x in (r or {}).get("records", []) if not x["error"])
                if vals:
                    ax.step(vals, [(i + 1) / len(vals) for i in range(len(vals))], where="post",
                            label=_label(rounds, c))
            ax.set_xlabel(f"{key.upper()} (s)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{w}: {key.upper()} CDF")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        files.append(_save(fig, out_dir / f"{prefix}-cdf-{w}.png"))
        plt.close(fig)
    pairs = [(lbl, a, b) for lbl, a, b in RATIOS if a in configs and b in configs]
    if pairs:
        cols = min(4, len(pairs))  # rows of at most four panels
        rows = -(-len(pairs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.flat[len(pairs):]:
            ax.set_visible(False)
        for ax, (lbl, a, b) in zip(axes.flat, pairs, strict=False):
            width = 0.8 / 3
            for k, (fname, f) in enumerate(FIGURES[::2]):  # JCT avg, TTFT avg, prefill tokens
                vals = [statistics.fmean(v) if (v := ratios(rounds, a, b, w, f)) else 0.0
                        for w in ws]
                ax.bar([i + k * width for i in range(len(ws))], vals, width, label=fname)
            for i, w in enumerate(ws):
                for fname, v in PAPER.get((a, b), {}).get(w, {}).items():
                    k = 0 if fname == "JCT avg" else 1
                    ax.plot(i + k * width, v, "k*", markersize=9)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks([i + width for i in range(len(ws))], ws, fontsize=7)
            ax.set_title(textwrap.fill(lbl, 40), fontsize=8)
        for row in axes:
            row[0].set_ylabel("ratio (ours / reference); * paper")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, out_dir / f"{prefix}-ratios.png"))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(configs)), 3.4))
    width = 0.8 / max(1, len(ws))
    for k, w in enumerate(ws):
        vals = [(_first(rounds, c, w) or {"summary": {"hit_rate": 0.0}})["summary"]["hit_rate"]
                for c in configs]
        ax.bar([i + k * width for i in range(len(configs))], vals, width, label=w)
    ax.set_xticks([i + width * (len(ws) - 1) / 2 for i in range(len(configs))],
                  [_label(rounds, c) for c in configs], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("prompt tokens cached / prompt tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(_save(fig, out_dir / f"{prefix}-hit-rate.png"))
    plt.close(fig)
    return files


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path
