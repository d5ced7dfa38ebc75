"""``python -m sglang_memserve.sim``: one simulated run, its figures on stdout (``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .config import DEFAULT_TABLE, InstanceSpec, SimConfig
from .simulator import Simulator
from .workload import SimRequest, longdoc, mooncake, react, sharegpt


def _mooncake(a: argparse.Namespace) -> list[SimRequest]:
    scaled = a.unit_tokens if a.scale_trace else None
    return mooncake(a.trace, limit=a.requests, replicas=a.replicas, speedup=a.speedup,
                    block_tokens=scaled, max_prompt_tokens=a.max_prompt_tokens,
                    output_tokens=a.output_tokens)


def _sharegpt(a: argparse.Namespace) -> list[SimRequest]:
    return sharegpt(a.trace, conversations=a.requests or 200, rate=a.rate, think_s=a.think_s,
                    unit_tokens=a.unit_tokens or 16)


def _longdoc(a: argparse.Namespace) -> list[SimRequest]:
    return longdoc(a.trace, docs=a.requests or 16, rate=a.rate, unit_tokens=a.unit_tokens or 16)


def _react(a: argparse.Namespace) -> list[SimRequest]:
    if (a.trace is None) != (a.prompts is None):
        raise ValueError("react: give both --trace (episodes) and --prompts, or neither")
    return react(a.trace, a.prompts, episodes=a.requests or 200, rate=a.rate,
                 think_s=a.think_s, unit_tokens=a.unit_tokens or 16)


# Workload name -> (loader, default tokens per block).
WORKLOADS: dict[str, tuple[Callable[[argparse.Namespace], list[SimRequest]], int]] = {
    "mooncake": (_mooncake, 512),
    "sharegpt": (_sharegpt, 16),
    "longdoc": (_longdoc, 16),
    "react": (_react, 16),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--policy", default="memserve", help="a memserve_router policy name")
    p.add_argument("--decode-policy", default=None)
    p.add_argument("--pd", action="store_true", help="prefill/decode disaggregation")
    p.add_argument("--prefill-share", type=float, default=0.5)
    p.add_argument("--no-kv-return", action="store_true", help="PD: no decode -> prefill return")
    p.add_argument("--no-migrate", action="store_true")
    p.add_argument("--no-cache", action="store_true",
                   help="instances reuse no KV (SGLang without a radix cache; pair it with a "
                        "load policy, e.g. --policy least_load)")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="mooncake")
    p.add_argument("--trace", type=Path, default=None,
                   help="workload file (default: the data directory's, else built in)")
    p.add_argument("--prompts", type=Path, default=None,
                   help="react: the few-shot prompts file (with --trace: the episodes)")
    p.add_argument("--requests", type=int, default=None,
                   help="mooncake: first N requests; sharegpt: N conversations; longdoc: N "
                        "documents; react: N episodes")
    p.add_argument("--replicas", type=int, default=1, help="mooncake: trace copies (rate x N)")
    p.add_argument("--speedup", type=float, default=1.0, help="mooncake: arrival times / S")
    p.add_argument("--scale-trace", action="store_true",
                   help="mooncake: lengths x unit-tokens / 512, as router_bench's prompts")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="mooncake: cut prompts")
    p.add_argument("--output-tokens", type=int, default=None,
                   help="mooncake: every request generates this many tokens")
    p.add_argument("--rate", type=float, default=2.0,
                   help="sharegpt: conversations, longdoc: requests, react: episodes per second")
    p.add_argument("--think-s", type=float, default=5.0,
                   help="sharegpt: pause between turns; react: the tool's latency")
    p.add_argument("--cost-table", default=DEFAULT_TABLE, help="shipped table name or a path")
    p.add_argument("--unit-tokens", type=int, default=None,
                   help="tokens per block (mooncake 512, sharegpt 16)")
    p.add_argument("--hbm-tokens", type=int, default=InstanceSpec.hbm_tokens)
    p.add_argument("--dram-tokens", type=int, default=0)
    p.add_argument("--chunk-tokens", type=int, default=InstanceSpec.chunk_tokens)
    p.add_argument("--max-batch", type=int, default=InstanceSpec.max_batch)
    p.add_argument("--batch-prefill", action="store_true",
                   help="queued prompts that fit the rest of the chunk share a prefill iteration "
                        "(SGLang's prefill batch)")
    p.add_argument("--iteration-overhead-s", type=float, default=0.0,
                   help="fixed seconds per prefill chunk and decode step beyond the table's "
                        "(the engine's own work per iteration)")
    p.add_argument("--link-gbps", type=float, default=None,
                   help="KV link bandwidth, GB/s (default: the table's per-page figure)")
    p.add_argument("--min-migrate-gain-s", type=float, default=0.05)
    p.add_argument("--event-delay-s", type=float, default=0.0)
    p.add_argument("--migration-overhead-s", type=float, default=0.0,
                   help="fixed cost of a migration beyond its pages' transfer")
    p.add_argument("--load-per-request-s", type=float, default=None,
                   help="the router's --load-per-request-secs (default: the router's)")
    p.add_argument("--affinity-slack", type=float, default=None,
                   help="the router's --affinity-slack (default: the router's)")
    p.add_argument("--shared-cores", type=float, default=None,
                   help="all instances share this many cores by processor sharing (the CPU "
                        "bench: 2); default: a device each")
    p.add_argument("--router-cost-table", default=None,
                   help="the router's own --cost-table for its estimates (default: "
                        "--cost-table's)")
    p.add_argument("--cost-scale", type=float, default=1.0,
                   help="what-if: instances take this many times the table's time")
    p.add_argument("--request-overhead-s", type=float, default=0.0,
                   help="fixed latency per request outside the instances (client and router "
                        "hops), added before its prefill is queued")
    p.add_argument("--check", action="store_true",
                   help="after the run, verify the router's trees equal the instances' indexes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    load, unit = WORKLOADS[a.workload]
    a.unit_tokens = a.unit_tokens or unit
    try:
        spec = InstanceSpec(hbm_tokens=a.hbm_tokens, dram_tokens=a.dram_tokens,
                            chunk_tokens=a.chunk_tokens, max_batch=a.max_batch,
                            prefix_cache=not a.no_cache, batch_prefill=a.batch_prefill,
                            iteration_overhead_s=a.iteration_overhead_s)
        cfg = SimConfig(instances=a.instances, pd=a.pd, prefill_share=a.prefill_share,
                        instance=spec, policy=a.policy, decode_policy=a.decode_policy,
                        cost_table=a.cost_table, unit_tokens=a.unit_tokens,
                        link_gbps=a.link_gbps, kv_return=not a.no_kv_return,
                        migrate=not a.no_migrate, min_migrate_gain_s=a.min_migrate_gain_s,
                        event_delay_s=a.event_delay_s,
                        migration_overhead_s=a.migration_overhead_s,
                        load_per_request_s=a.load_per_request_s,
                        affinity_slack=a.affinity_slack, shared_cores=a.shared_cores,
                        router_cost_table=a.router_cost_table, cost_scale=a.cost_scale,
                        request_overhead_s=a.request_overhead_s)
        sim = Simulator(cfg)
        t0 = time.perf_counter()
        requests = load(a)
        load_s = time.perf_counter() - t0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = sim.run(requests)
    print(res.text())
    print(f"  workload: {a.workload}, {len(requests)} requests (first turns), loaded in "
          f"{load_s:.1f} s; table {sim.table.device} ({a.cost_table})")
    if a.check:
        bad = sim.check_mirrors()
        print("  router trees == instance indexes: " + ("yes" if not bad else f"NO: {bad}"))
        if bad:
            return 1
    if a.json:
        a.json.write_text(json.dumps(res.to_json() | {"argv": sys.argv[1:]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
