"""``python -m sglang_memserve.sim.plots``: PNG plots of the simulator's JSON results.

* ``policies SWEEP.jsonl --out PNG``: the policy sweep (``sim.sweep``'s ``--out``) against the
  cluster size: hit rate over the oracle's, TTFT and JCT (avg solid, P99 dashed), and the
  router's decision time (p50), one line per policy.
* ``validation TABLE.md --out PNG``: ``sim.validate``'s table as measured against predicted
  average TTFT, one point per configuration and simulator setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def policies(rows: list[dict[str, Any]], path: Path) -> Path:
    """Four panels over the cluster size, one line per policy (module docstring).

    Returns:
        ``path`` (written).
    """
    plt = _plt()
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["policy"]].append(r)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for k, (policy, runs) in enumerate(sorted(by.items())):
        runs.sort(key=lambda r: r["instances"])
        n = [r["instances"] for r in runs]
        color = f"C{k}"
        axes[0].plot(n, [r["hit_rate"] / r["oracle_hit_rate"] for r in runs], "o-", color=color,
                     label=policy)
        for ax, key in ((axes[1], "ttft"), (axes[2], "jct")):
            ax.plot(n, [r[f"{key}_avg_s"] for r in runs], "o-", color=color, label=policy)
            ax.plot(n, [r[f"{key}_p99_s"] for r in runs], "x--", color=color)
        axes[3].plot(n, [r["decision_p50_us"] for r in runs], "o-", color=color, label=policy)
    titles = ("hit rate / oracle's", "TTFT (s): avg -, P99 --", "JCT (s): avg -, P99 --",
              "decision p50 (us, wall clock)")
    sizes = sorted({r["instances"] for r in rows})
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("instances")
        ax.set_title(title, fontsize=10)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def parse_validation(text: str) -> list[dict[str, Any]]:
    """The predicted-vs-measured rows of ``sim.validate``'s first table."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or "/" not in cells[6] or cells[0] == "KV tokens":
            continue
        sim, meas = (float(x) for x in cells[6].split("/"))
        out.append({"kv": cells[0], "config": cells[1], "cores": cells[3],
                    "scale": float(cells[4]), "sim": sim, "measured": meas})
    return out


def validation(rows: list[dict[str, Any]], path: Path) -> Path:
    """Measured against predicted TTFT avg (log-log, the diagonal is a perfect prediction).

    Returns:
        ``path`` (written).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    marks = {(False, False): ("o", "table, a device per instance"),
             (True, False): ("s", "table, 2 shared cores"),
             (False, True): ("^", "measured CPU demand, a device each"),
             (True, True): ("D", "measured CPU demand, 2 shared cores")}
    seen = set()
    for r in rows:
        key = (r["cores"] != "-", r["scale"] != 1.0)
        marker, label = marks[key]
        ax.scatter(r["sim"], r["measured"], marker=marker, color=f"C{list(marks).index(key)}",
                   label=None if key in seen else label)
        seen.add(key)
    lo = min(min(r["sim"], r["measured"]) for r in rows) / 1.5
    hi = max(max(r["sim"], r["measured"]) for r in rows) * 1.5
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("simulated TTFT avg (s)")
    ax.set_ylabel("measured TTFT avg (s)")
    ax.set_title("router_bench hits, 4 tiny instances on 2 cores", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim.plots",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("policies", "validation"))
    p.add_argument("inputs", type=Path, nargs="+",
                   help="policies: sweep JSON lines; validation: sim.validate outputs")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        if a.kind == "policies":
            rows = [json.loads(line) for f in a.inputs for line in f.read_text().splitlines()
                    if line.strip()]
            policies(rows, a.out)
        else:
            vrows = [r for f in a.inputs for r in parse_validation(f.read_text())]
            if not vrows:
                raise ValueError("no predicted-vs-measured rows in the inputs")
            validation(vrows, a.out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
