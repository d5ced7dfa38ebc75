"""Cost of one routing decision (``Policy.select``) by cluster size (issue 16).

    .venv/bin/python benchmarks/router_policies.py [--sizes 16 64 256 1024] [--calls 300]

Each policy decides for a 4,096-token prompt over 16 / 64 / 256 / 1,024 hand-made candidates
(random loads; a quarter hold a prefix of the prompt, some of it in DRAM; the state is what the
router builds from its trees and polls, prebuilt here: only ``select`` is timed). Prints p50 and
p99 microseconds per call; ``memserve`` runs with the decision's explanation (every option as an
``Estimate``) and without (``RouteRequest(explain=False)``, the router's hot path).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from memserve_router.policies import Candidate, Load, RouteRequest, make_policy

PROMPT_TOKENS = 4096


def cluster(n: int, rng: random.Random) -> list[Candidate]:
    """``n`` candidates with random loads; a quarter hold a page-aligned prefix of the prompt."""
    out = []
    for i in range(n):
        hit = rng.choice((256, 1024, 2048, 3072)) if rng.random() < 0.25 else 0
        host = rng.choice((0, hit // 2)) if hit else 0
        load = Load(running=rng.randrange(8), queued=rng.randrange(3), kv_usage=rng.random(),
                    inflight=rng.randrange(8), queue_wait_s=rng.random() * 0.5)
        out.append(Candidate(f"inst-{i:04d}", load, hit, host))
    return out


def time_select(policy_name: str, cands: list[Candidate], explain: bool, calls: int) -> list[float]:
    """Microseconds per ``select`` call, ``calls`` calls (after a warm-up)."""
    policy = make_policy(policy_name)
    reqs = [RouteRequest(PROMPT_TOKENS, session_id=f"s{i % 64}", explain=explain)
            for i in range(calls)]
    for r in reqs[:10]:
        policy.select(r, cands)
    out = []
    for r in reqs:
        t0 = time.perf_counter_ns()
        policy.select(r, cands)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    rng = random.Random(args.seed)
    configs = [("round_robin", True), ("least_load", True), ("session", True), ("prefix", True),
               ("memserve", True), ("memserve", False)]
    rows = []
    for n in args.sizes:
        cands = cluster(n, rng)
        for name, explain in configs:
            us = sorted(time_select(name, cands, explain, args.calls))
            rows.append({"policy": name if explain else f"{name} (explain off)", "candidates": n,
                         "p50_us": statistics.median(us),
                         "p99_us": us[min(len(us) - 1, int(0.99 * len(us)))]})
    names = list(dict.fromkeys(r["policy"] for r in rows))
    print("| policy | " + " | ".join(f"{n} cands p50 (p99) us" for n in args.sizes) + " |")
    print("| --- |" + " --- |" * len(args.sizes))
    for name in names:
        cells = [f"{r['p50_us']:.1f} ({r['p99_us']:.1f})" for r in rows if r["policy"] == name]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
