"""``python -m sglang_memserve.sim.validate RUN_DIR``: the simulator against a real router_bench run.

``benchmarks/router_bench.py hits`` (Mooncake workload) keeps its arguments in
``RUN_DIR/router_bench.json`` and every request's record in ``RUN_DIR/kv<N>/<config>-r<k>.jsonl``.
This replays the same requests (same lengths, blocks, arrival times, KV tokens per instance, one
output token) in the simulator for each measured router configuration, once per
``--shared-cores`` setting, and prints predicted against measured hit rate and TTFT (avg, P99).
The replayed prompt lengths are checked against the records first. The router estimates with
its own table (``--router-cost-table``, memserve-router's default ``cpu-bench``), the instances
take the served model's (``--cost-table``, ``cpu-tiny`` for router_bench's tiny model).

``--cpu-demand`` adds, per setting, a what-if run in which every iteration costs the measured
CPU seconds: the table scaled by the run's instance CPU seconds (router_bench's
``instances_cpu_s``) over the table seconds the simulator spent on the same requests.

It also prints, for memserve-router's runs (whose ``X-MemServe-Instance`` headers say where each
request ran): the wall time an instance was busy per request (the union of its requests'
send-to-first-token intervals) and the instances' measured CPU seconds per request, against the
table's seconds per request on an idle instance; and the TTFT of the requests that found their
instance empty against the table's time for them. That is where a latency gap shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import InstanceSpec, SimConfig
from .results import mean, percentile
from .simulator import Simulator
from .workload import SimRequest, mooncake


@dataclass(frozen=True)
class Replayed:
    """How a router_bench configuration runs in the simulator.

    Attributes:
        policy: the ``memserve_router`` policy that makes the same decisions.
        settings: further :class:`SimConfig` fields (``affinity_slack``, ``migrate``).
        default_slack: the configuration used memserve-router's default ``--affinity-slack``,
            which ``--memserve-slack`` states for the measured commit.
    """

    policy: str
    settings: dict[str, Any] = field(default_factory=dict)
    default_slack: bool = False


# router_bench.py's ROUTERS names (and the slack variants it ran) -> simulator settings.
CONFIGS: dict[str, Replayed] = {
    "memserve": Replayed("memserve", default_slack=True),
    "memserve-s95": Replayed("memserve", {"affinity_slack": 0.95}),
    "memserve-s8": Replayed("memserve", {"affinity_slack": 0.8}),
    "memserve-nomig": Replayed("memserve", {"migrate": False}, default_slack=True),
    "memserve-greedy": Replayed("memserve", {"affinity_slack": 0.0}),
    "memserve-prefix": Replayed("prefix"),
    "sglang-cache-aware": Replayed("prefix"),  # sglang-router's cache_aware rule
    "sglang-rr": Replayed("round_robin"),
}


def _records(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["i"])


def busy_per_request(records: Sequence[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """Per instance (``X-MemServe-Instance``): requests and wall seconds busy, the union of
    their ``[sent, sent + ttft]`` intervals. Empty when the records name no instance."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("X-MemServe-Instance") and r.get("ttft") is not None:
            spans[r["X-MemServe-Instance"]].append((r["sent"], r["sent"] + r["ttft"]))
    out = {}
    for iid, iv in sorted(spans.items()):
        iv.sort()
        busy, (s, e) = 0.0, iv[0]
        for a, b in iv[1:]:
            if a > e:
                busy, s, e = busy + e - s, a, b
            else:
                e = max(e, b)
        out[iid] = (len(iv), busy + e - s)
    return out


def found_empty(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests sent while no other request was in flight on their instance (from the
    client's records and ``X-MemServe-Instance``): their TTFT is service time, no queueing at
    their own instance."""
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for r in records:
        if r.get("X-MemServe-Instance") and r.get("ttft") is not None:
            spans[r["X-MemServe-Instance"]].append((r["sent"], r["sent"] + r["ttft"], r["i"]))
    return [r for r in records if r.get("X-MemServe-Instance") and r.get("ttft") is not None
            and not any(s < r["sent"] < e and i != r["i"]
                        for s, e, i in spans[r["X-MemServe-Instance"]])]


def workload(args: dict[str, Any]) -> list[SimRequest]:
    """router_bench's Mooncake requests as simulated ones (its prompt cut, one output token)."""
    if args.get("workload", "mooncake") != "mooncake":
        raise ValueError(f"only router_bench's mooncake workload replays, not {args['workload']}")
    return mooncake(Path(args["trace"]) if args.get("trace") else None, limit=args["requests"],
                    speedup=args["speedup"], block_tokens=args["block_tokens"],
                    max_prompt_tokens=args["max_prompt_tokens"], output_tokens=1)


@dataclass(frozen=True)
class Setting:
    """The simulator's side of a replay.

    Attributes:
        table / router_table: the instances' and the router's cost tables.
        memserve_slack: memserve-router's default ``--affinity-slack`` at the measured commit
            (None: today's default).
        overhead_s: ``SimConfig.request_overhead_s``.
    """

    table: str = "cpu-tiny"
    router_table: str | None = "cpu-bench"
    memserve_slack: float | None = None
    overhead_s: float = 0.0


def replay(requests: list[SimRequest], args: dict[str, Any], kv: int, rep: Replayed,
           setting: Setting, shared_cores: float | None, cost_scale: float = 1.0) -> Simulator:
    """One simulated run of ``requests`` as router_bench ran them at ``kv`` tokens.

    Returns:
        The simulator after the run (its ``result()`` and instances' stats).
    """
    settings = dict(rep.settings)
    if rep.default_slack and setting.memserve_slack is not None:
        settings["affinity_slack"] = setting.memserve_slack
    cfg = SimConfig(instances=args["instances"], policy=rep.policy, cost_table=setting.table,
                    router_cost_table=setting.router_table, cost_scale=cost_scale,
                    unit_tokens=args["block_tokens"], instance=InstanceSpec(hbm_tokens=kv),
                    shared_cores=shared_cores, request_overhead_s=setting.overhead_s,
                    **settings)
    sim = Simulator(cfg)
    sim.run(requests)
    return sim


def _cores(text: str) -> float | None:
    return None if text == "none" else float(text)


def _x(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _table_s(sim: Simulator) -> float:
    """Table seconds the instances computed (before any ``cost_scale``)."""
    return sum((i.stats.prefill_s + i.stats.decode_s) / i.cost_scale
               for i in sim.instances.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim.validate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a router_bench.py hits --out directory")
    p.add_argument("--cost-table", default="cpu-tiny", help="the instances' table")
    p.add_argument("--router-cost-table", default="cpu-bench",
                   help="the router's own --cost-table ('same': the instances')")
    p.add_argument("--cpu-demand", action="store_true",
                   help="also replay with every iteration scaled to the measured CPU seconds")
    p.add_argument("--shared-cores", type=_cores, nargs="+", default=[None, 2.0],
                   help="one replay per value ('none': a device per instance)")
    p.add_argument("--memserve-slack", type=float, default=None,
                   help="memserve-router's default --affinity-slack at the measured commit "
                        "(0.5 before 9a21bd4, 0.95 since but 2 at 08bfc50; default: today's)")
    p.add_argument("--request-overhead-s", type=float, default=0.0)
    p.add_argument("--trace", type=Path, default=None, help="override the run's trace path")
    a = p.parse_args(argv)
    setting = Setting(a.cost_table, None if a.router_cost_table == "same" else a.router_cost_table,
                      a.memserve_slack, a.request_overhead_s)
    try:
        meta = json.loads((a.run_dir / "router_bench.json").read_text())
        args = meta["args"] | ({"trace": str(a.trace)} if a.trace else {})
        requests = workload(args)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| KV tokens | configuration | policy | shared cores | cost scale | hit rate sim / "
          "measured | TTFT avg sim / measured (s) | TTFT P99 sim / measured (s) | measured / "
          "sim TTFT avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    busy_rows = []
    for kv, size in meta["sizes"].items():
        for name, runs in size["configs"].items():
            rep = CONFIGS.get(name)
            if rep is None:
                print(f"| {kv} | {name} | (no simulator mapping) |||||")
                continue
            recs = _records(a.run_dir / f"kv{kv}" / f"{name}-r0.jsonl")
            if [r["prompt"] for r in recs] != [q.tokens for q in requests]:
                print(f"error: {name}'s records are not the replayed prompts", file=sys.stderr)
                return 1
            ttft = [r["ttft"] for r in recs if r.get("error") is None]
            hit = sum(r["cached"] for r in recs) / sum(r["prompt"] for r in recs)
            m_avg, m_p99 = mean(ttft), percentile(ttft, 0.99)
            cpu_s = runs[0].get("instances_cpu_s")
            for cores in a.shared_cores:
                sim = base = replay(requests, args, int(kv), rep, setting, cores)
                scales = [1.0]
                if a.cpu_demand and cpu_s:
                    scales.append(cpu_s / _table_s(base))
                for scale in scales:
                    if scale != 1.0:
                        sim = replay(requests, args, int(kv), rep, setting, cores, scale)
                    res = sim.result()
                    slack = sim.router.config.affinity_slack if rep.policy == "memserve" else None
                    label = rep.policy + (f" (slack {slack:g})" if slack is not None else "")
                    print(f"| {kv} | {runs[0].get('label', name)} | {label} | "
                          f"{'-' if cores is None else f'{cores:g}'} | {scale:.2f} | "
                          f"{res.hit_rate:.3f} / {hit:.3f} | {res.ttft_avg_s:.3f} / {m_avg:.3f} | "
                          f"{res.ttft_p99_s:.3f} / {m_p99:.3f} | {_x(m_avg / res.ttft_avg_s)} |",
                          flush=True)
                if cores == a.shared_cores[0] and busy_per_request(recs):
                    busy = busy_per_request(recs)
                    n = sum(c for c, _ in busy.values())
                    empty = found_empty(recs)
                    tab = [base.table.exec_time(r["prompt"], min(r["cached"], r["prompt"] - 1))
                           for r in empty]
                    busy_rows.append((kv, name, sum(b for _, b in busy.values()) / n,
                                      _table_s(base) / len(requests), cpu_s,
                                      (len(empty), percentile([r["ttft"] for r in empty], 0.5),
                                       percentile(tab, 0.5))))
    if busy_rows:
        print("\n| KV tokens | configuration | an instance's wall time busy per request, "
              "measured (ms) | instances' CPU per request, measured (ms) | table time per "
              "request, simulated (ms) | requests that found their instance empty | their "
              "TTFT median, measured (ms) | their table time median (ms) |")
        print("|---|---|---|---|---|---|---|---|")
        for kv, name, m, t, cpu, (n_e, e_ttft, e_tab) in busy_rows:
            c = f"{cpu / len(requests) * 1e3:.0f}" if cpu else "-"
            print(f"| {kv} | {name} | {m * 1e3:.0f} | {c} | {t * 1e3:.1f} | {n_e} | "
                  f"{e_ttft * 1e3:.0f} | {e_tab * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
