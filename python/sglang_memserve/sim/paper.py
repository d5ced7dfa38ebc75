"""``python -m sglang_memserve.sim.paper``: the MemServe paper's four configurations at its scale.

Colocated, colocated + cache, PD, and PD + cache two ways -- MemServe (the decode instance returns
each finished request's KV to its prefill instance) and stock SGLang's (a decode radix cache, no
return, sglang-router's ``cache_aware`` rule) -- over ShareGPT multi-turn chats, long-document
QA, ReAct agent traces and the Mooncake conversation trace, on one simulated cluster whose times
come from a GPU cost table (see ``Setup``). Prints one markdown table and the ratio rows the
paper reports, its own figures beside them; ``--json`` writes every run's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_TABLE, InstanceSpec, SimConfig
from .results import SimResult
from .simulator import Simulator
from .workload import SimRequest, longdoc, mooncake, react, sharegpt


@dataclass(frozen=True)
class Setup:
    """One configuration: PD or not, a prefix cache or not, and the router's policy.

    ``memserve`` is MemServe (memserve-router's default policy, migrations, and in PD the
    decode -> prefill KV return); ``prefix`` is stock SGLang's PD with its decode radix cache
    behind sglang-router's ``cache_aware`` rule (no return, no migration).
    """

    name: str
    pd: bool
    cache: bool
    policy: str

    def config(self, base: SimConfig) -> SimConfig:
        memserve = self.policy == "memserve"
        return dataclasses.replace(
            base, pd=self.pd, policy=self.policy, decode_policy=self.policy,
            kv_return=memserve, migrate=memserve,
            instance=dataclasses.replace(base.instance, prefix_cache=self.cache))


MEMSERVE_PD = "PD + cache (MemServe)"
SETUPS = (Setup("colocated", False, False, "least_load"),
          Setup("colocated + cache", False, True, "memserve"),
          Setup("PD", True, False, "least_load"),
          Setup("PD + cache, stock-like", True, True, "prefix"),
          Setup(MEMSERVE_PD, True, True, "memserve"))

# Workload name -> requests (the same list object is never run twice: loaders are re-called).
WORKLOADS: dict[str, Callable[[], list[SimRequest]]] = {
    "sharegpt": lambda: sharegpt(conversations=400, rate=4.0, think_s=3.0),
    "longdoc": lambda: longdoc(docs=64, questions_per_doc=8, rate=4.0),
    "react": lambda: react(episodes=400, rate=4.0, think_s=1.0),
    "mooncake": lambda: mooncake(limit=2000, replicas=4, speedup=1.0),
}
UNIT_TOKENS = {"sharegpt": 16, "longdoc": 16, "react": 16, "mooncake": 512}

# The paper's PD + cache vs PD figures (relative change), for the ratio rows.
PAPER = {("sharegpt", "jct_avg_s"): -0.29, ("longdoc", "jct_avg_s"): -0.269,
         ("sharegpt", "ttft_avg_s"): -0.58, ("longdoc", "ttft_avg_s"): -0.56,
         ("react", "ttft_avg_s"): -0.785}
METRICS = ("jct_avg_s", "jct_p99_s", "ttft_avg_s", "ttft_p99_s", "hit_rate")


def run_all(base: SimConfig, workloads: list[str]) -> dict[tuple[str, str], SimResult]:
    """Every setup over every workload. Returns ``{(workload, setup name): result}``."""
    out = {}
    for w in workloads:
        cfg = dataclasses.replace(base, unit_tokens=UNIT_TOKENS[w])
        for s in SETUPS:
            out[(w, s.name)] = Simulator(s.config(cfg)).run(WORKLOADS[w]())
    return out


def table(results: dict[tuple[str, str], SimResult], workloads: list[str]) -> str:
    """The markdown report: absolute figures, then PD + cache against PD and colocated."""
    lines = ["| workload | configuration | JCT avg / P99 (s) | TTFT avg / P99 (s) | hit rate | "
             "KV returns |", "|---|---|---|---|---|---|"]
    for w in workloads:
        for s in SETUPS:
            r = results[(w, s.name)]
            lines.append(f"| {w} | {s.name} | {r.jct_avg_s:.3f} / {r.jct_p99_s:.3f} | "
                         f"{r.ttft_avg_s:.4f} / {r.ttft_p99_s:.4f} | {r.hit_rate:.3f} | "
                         f"{r.kv_returns:,} |")
    lines += ["", "| workload | ratio | JCT avg | TTFT avg | TTFT P99 | the paper (PD + cache vs PD) |",
              "|---|---|---|---|---|---|"]
    for w in workloads:
        for num, den in ((MEMSERVE_PD, "PD"), ("PD", "colocated"),
                         (MEMSERVE_PD, "PD + cache, stock-like"),
                         (MEMSERVE_PD, "colocated + cache")):
            a, b = results[(w, num)], results[(w, den)]
            paper = ""
            if den == "PD":
                paper = ", ".join(f"{k.split('_')[0].upper()} {v:+.1%}"
                                  for (pw, k), v in PAPER.items() if pw == w) or "-"
            lines.append(f"| {w} | {num} / {den} | {_ratio(a.jct_avg_s, b.jct_avg_s)} | "
                         f"{_ratio(a.ttft_avg_s, b.ttft_avg_s)} | "
                         f"{_ratio(a.ttft_p99_s, b.ttft_p99_s)} | {paper} |")
    return "\n".join(lines)


def plot(results: dict[tuple[str, str], SimResult], workloads: list[str], path: Path) -> Path:
    """Bars of each configuration's TTFT and JCT (avg) over PD's, per workload, as a PNG.

    Returns:
        ``path`` (written; matplotlib is imported only here).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    width = 0.8 / len(SETUPS)
    for ax, metric, title in zip(axes, ("ttft_avg_s", "jct_avg_s"), ("TTFT avg", "JCT avg"),
                                 strict=True):
        for k, s in enumerate(SETUPS):
            vals = [getattr(results[(w, s.name)], metric) / getattr(results[(w, "PD")], metric)
                    for w in workloads]
            ax.bar([i + (k - (len(SETUPS) - 1) / 2) * width for i in range(len(workloads))],
                   vals, width, label=s.name)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_title(f"{title}, relative to PD (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim.paper",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--prefill-share", type=float, default=0.5, help="PD: share of prefill")
    p.add_argument("--cost-table", default=DEFAULT_TABLE)
    p.add_argument("--hbm-tokens", type=int, default=InstanceSpec.hbm_tokens)
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS),
                   default=["sharegpt", "longdoc", "react", "mooncake"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="a PNG of the ratios to PD")
    a = p.parse_args(argv)
    try:
        base = SimConfig(instances=a.instances, prefill_share=a.prefill_share,
                         cost_table=a.cost_table,
                         instance=InstanceSpec(hbm_tokens=a.hbm_tokens))
        results = run_all(base, a.workloads)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(results, a.workloads))
    if a.plot:
        plot(results, a.workloads, a.plot)
    if a.json:
        a.json.write_text(json.dumps([{"workload": w, "setup": s} | r.to_json()
                                      for (w, s), r in results.items()], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
