"""memserve-router against sglang-router (PyPI) and two offline oracles, on the same instances.

Subcommands:

* ``hits``: N colocated MemServe instances (tiny model, page 16) are started once per memory
  size; each router configuration is started in front of them in turn (the instances' caches
  flushed between configurations) and replays the same requests at the same arrival times:
  the Mooncake conversation trace (prompts synthesized from its hash ids, one block of
  ``--block-tokens`` ids per id; one output token) or ShareGPT multi-turn chats. Reports hit
  rate, TTFT and JCT (avg, P99), migrations, and the oracles' hit rates: one infinite cache
  shared by all instances, and one shared LRU cache as large as the cluster's total KV.
* ``overhead``: the router alone, in front of stand-in instances (``memserve_router.stub``):
  p50 latency added over a direct call, and routing throughput under concurrency.
* ``decision``: one routing decision (``Router._decide``: tree walk, candidates, policy) for a
  4,096-token prompt over 16 to 1,024 instances, in process (p50, p99).

::

    .venv/bin/python benchmarks/router_bench.py hits --out results/router --requests 2000
    .venv/bin/python benchmarks/router_bench.py overhead
    .venv/bin/python benchmarks/router_bench.py decision
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import requests

from sglang_memserve.bench.metrics import RequestRecord, summarize
from sglang_memserve.bench.rounds import Spread, ratio_spread, round_order
from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess, free_port
from sglang_memserve.cluster.sglang_router import SglangRouter
from sglang_memserve.model import ensure_model
from sglang_memserve.workloads.trace import load_trace, trace_prompts

# Router configurations: (label, how to start it in front of the instance URLs).
ROUTERS: dict[str, tuple[str, list[str]]] = {
    "memserve": ("memserve-router (memserve policy)", ["--policy", "memserve"]),
    "memserve-nomig": ("memserve-router (memserve policy, no migration)",
                       ["--policy", "memserve", "--no-migrate"]),
    "memserve-greedy": ("memserve-router (memserve policy, no affinity slack)",
                        ["--policy", "memserve", "--affinity-slack", "0"]),
    "memserve-nohold": ("memserve-router (memserve policy, no prefill hold)",
                        ["--policy", "memserve", "--prefill-hold-secs", "0"]),
    "memserve-slack095": ("memserve-router (memserve policy, affinity slack 0.95)",
                          ["--policy", "memserve", "--affinity-slack", "0.95"]),
    "memserve-slack1": ("memserve-router (memserve policy, affinity slack 1.0)",
                        ["--policy", "memserve", "--affinity-slack", "1.0"]),
    "memserve-slack2": ("memserve-router (memserve policy, affinity slack 2.0)",
                        ["--policy", "memserve", "--affinity-slack", "2.0"]),
    "memserve-flat095": ("memserve-router (memserve policy, flat affinity slack 0.95: the "
                         "default before)",
                         ["--policy", "memserve", "--affinity-slack", "0.95",
                          "--affinity-ignore-pressure"]),
    "memserve-flat2": ("memserve-router (memserve policy, flat affinity slack 2.0)",
                       ["--policy", "memserve", "--affinity-ignore-pressure"]),
    "memserve-survival": ("memserve-router (memserve policy, hits priced by survival: the "
                          "default)", ["--policy", "memserve", "--hit-survival"]),
    "memserve-nosurvival": ("memserve-router (memserve policy, hits counted in full: the "
                            "default before)", ["--policy", "memserve", "--no-hit-survival"]),
    "memserve-steps5": ("memserve-router (memserve policy, 5 decode steps per request)",
                        ["--policy", "memserve", "--load-per-request-steps", "5"]),
    "memserve-prefix": ("memserve-router (prefix policy)", ["--policy", "prefix"]),
    "sglang-cache-aware": ("sglang-router cache_aware", ["--policy", "cache_aware"]),
    "sglang-rr": ("sglang-router round_robin", ["--policy", "round_robin"]),
}


# ---- oracles ---------------------------------------------------------------------------------

def _page_keys(ids: Sequence[int], page: int) -> list[int]:
    keys, h = [], 0
    for i in range(0, len(ids) - page + 1, page):
        h = hash((h, tuple(ids[i:i + page])))
        keys.append(h)
    return keys


def _cacheable(n_tokens: int, page: int) -> int:
    """Pages an instance can serve from cache: whole pages, and one token is always computed."""
    return max(0, (n_tokens - 1) // page)


def oracle_hit_rate(prompts: Sequence[Sequence[int]], page: int,
                    capacity_pages: int | None) -> float:
    """Hit rate of one cache shared by every instance: infinite (``None``) or an LRU of
    ``capacity_pages`` pages that evicts leaves before their prefixes."""
    cache: OrderedDict[int, None] = OrderedDict()
    hit = total = 0
    for ids in prompts:
        keys = _page_keys(ids, page)
        n = 0
        for k in keys[:_cacheable(len(ids), page)]:
            if k not in cache:
                break
            n += 1
        hit += n * page
        total += len(ids)
        for k in reversed(keys):  # a prefix is touched after its extensions: leaves go first
            cache[k] = None
            cache.move_to_end(k)
        if capacity_pages is not None:
            while len(cache) > capacity_pages:
                cache.popitem(last=False)
    return hit / total if total else 0.0


# ---- replay ----------------------------------------------------------------------------------

# memserve-router's explanation headers, kept per request (``--records``).
_ROUTE_HEADERS = ("X-MemServe-Instance", "X-MemServe-Route", "X-MemServe-Migration",
                  "X-MemServe-Hold")


async def _one(session: aiohttp.ClientSession, url: str, i: int, ids: list[int], at: float,
               t0: float, out: list[RequestRecord], routes: dict[int, dict[str, str]]) -> None:
    await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
    sent = time.perf_counter() - t0
    body = {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1}}
    start = time.perf_counter()
    try:
        async with session.post(f"{url}/generate", json=body) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {str(data)[:200]}")
            routes[i] = {h: r.headers[h] for h in _ROUTE_HEADERS if h in r.headers}
    except Exception as exc:  # noqa: BLE001 -- counted as failed
        out.append(RequestRecord(str(i), 0, sent, 0.0, 0.0, len(ids), 0, error=repr(exc)))
        return
    lat = time.perf_counter() - start
    meta = data.get("meta_info", {})
    out.append(RequestRecord(str(i), 0, sent, lat, lat, int(meta.get("prompt_tokens", len(ids))),
                             int(meta.get("cached_tokens", 0)), {}, data.get("output_ids", [])))


async def replay_trace(url: str, prompts: list[list[int]], arrivals: list[float],
                       timeout_s: float = 600.0,
                       routes: dict[int, dict[str, str]] | None = None) -> list[RequestRecord]:
    """Send every prompt at its arrival time (one output token); ``routes``, when given, gets
    each answered request's memserve-router headers by request index."""
    out: list[RequestRecord] = []
    routes = {} if routes is None else routes
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=connector) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(_one(s, url, i, p, a, t0, out, routes)
                               for i, (p, a) in enumerate(zip(prompts, arrivals, strict=True))))
    return out


def _tree_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in (root, *root.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def _router_metric(url: str, name: str) -> float:
    try:
        text = requests.get(f"{url}/metrics", timeout=5).text
    except requests.RequestException:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def mooncake_workload(a: argparse.Namespace) -> tuple[list[list[int]], list[float]]:
    """The Mooncake conversation trace: prompts from its hash ids, its own arrival times."""
    trace = load_trace(None if a.trace is None else Path(a.trace), limit=a.requests)
    prompts = trace_prompts(trace, block_tokens=a.block_tokens, vocab=(10, 1000))
    return prompts, [r.arrival_s / a.speedup for r in trace]


def sharegpt_workload(a: argparse.Namespace, model: Path) -> tuple[list[list[int]], list[float]]:
    """ShareGPT multi-turn chats with the data set's own answers as history: turn ``k``'s
    prompt is turns ``1..k`` and answers ``1..k-1`` (the tiny model's tokenizer), so each turn
    extends the previous one. Conversations start as a Poisson process; a user waits an
    exponential think time (mean ``--think-time``) after each turn. All divided by
    ``--speedup``; at most ``--requests`` turns, in arrival order."""
    from transformers import AutoTokenizer

    from sglang_memserve.workloads import load_sharegpt

    tok = AutoTokenizer.from_pretrained(str(model))
    convs = load_sharegpt(None if a.trace is None else Path(a.trace), min_turns=2,
                          limit=a.requests)
    rng = random.Random(0)
    timed: list[tuple[float, list[int]]] = []
    start = 0.0
    for c in convs:
        start += rng.expovariate(a.conversation_rate)
        at, history = start, []
        for turn, answer in zip(c.user_turns, c.reference_answers or [""] * len(c.user_turns),
                                strict=False):
            history += tok.encode(turn, add_special_tokens=False)
            timed.append((at, list(history)))
            history += tok.encode(answer, add_special_tokens=False)
            at += rng.expovariate(1.0 / a.think_time)
    timed.sort(key=lambda t: t[0])
    timed = timed[:a.requests]
    return [ids for _, ids in timed], [t / a.speedup for t, _ in timed]


def _replay_through(name: str, servers: Sequence[ServerProcess], prompts: list[list[int]],
                    arrivals: list[float], logs: Path, rnd: int = 0) -> dict[str, Any]:
    """Start router configuration ``name`` in front of ``servers`` (their caches flushed first),
    replay the requests through it, stop it; returns the replay's summary. Each request's
    record (and memserve-router's route headers) goes to ``logs/<name>-r<rnd>.jsonl``."""
    for s in servers:
        requests.post(f"{s.url}/flush_cache", timeout=30)
    label, args = ROUTERS[name]
    urls = [s.url for s in servers]
    if name.startswith("sglang"):
        proc: Any = SglangRouter(urls, args, logs)
        url = proc.start()
    else:
        proc = MemServeRouterProcess(["--worker-urls", *urls, *args, "--log-level", "warning"],
                                     logs)
        url = proc.start().url
    try:
        inst_pids = [s.proc.pid for s in servers if s.proc is not None]
        cpu0 = (_tree_cpu_s(inst_pids), _tree_cpu_s([proc.proc.pid]))
        t0 = time.perf_counter()
        routes: dict[int, dict[str, str]] = {}
        records = asyncio.run(replay_trace(url, prompts, arrivals, routes=routes))
        wall = time.perf_counter() - t0
        with open(logs / f"{name}-r{rnd}.jsonl", "w") as f:
            for r in sorted(records, key=lambda r: int(r.conv_id)):
                f.write(json.dumps({"i": int(r.conv_id), "sent": r.sent_at, "ttft": r.ttft,
                                    "prompt": r.prompt_tokens, "cached": r.cached_tokens,
                                    "error": r.error, **routes.get(int(r.conv_id), {})}) + "\n")
        # Where the 2 cores went: the router's own CPU competes with the instances'.
        summary = summarize(records) | {
            "wall_s": wall, "label": label,
            "instances_cpu_s": _tree_cpu_s(inst_pids) - cpu0[0],
            "router_cpu_s": _tree_cpu_s([proc.proc.pid]) - cpu0[1]}
        if not name.startswith("sglang"):
            summary["migrations"] = _router_metric(
                url, 'memserve_router_migrations_total{outcome="ok"}')
    finally:
        proc.stop()
    return summary


def run_hits(a: argparse.Namespace) -> None:
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ensure_model("tiny")
    prompts, arrivals = (sharegpt_workload(a, model) if a.workload == "sharegpt"
                         else mooncake_workload(a))
    # The tiny model's context is 2,048 tokens: longer prompts are cut (same cut for everyone).
    prompts = [p[:a.max_prompt_tokens] for p in prompts]
    page = a.block_tokens
    results: dict[str, Any] = {"args": vars(a), "sizes": {}}
    for kv in a.kv_tokens:
        cap = a.instances * kv // page
        size: dict[str, Any] = {
            "oracle_infinite": oracle_hit_rate(prompts, page, None),
            "oracle_lru": oracle_hit_rate(prompts, page, cap),
            "configs": {}}
        print(f"== {a.instances} instances x {kv} KV tokens: oracle infinite "
              f"{size['oracle_infinite']:.3f}, equal-capacity LRU {size['oracle_lru']:.3f}",
              flush=True)
        logs = out_dir / f"kv{kv}"
        logs.mkdir(exist_ok=True)
        servers = [ServerProcess(["--model-path", str(model), "--page-size", str(page),
                                  "--max-total-tokens", str(kv), "--instance-id", f"inst-{i}"],
                                 logs, name=f"inst-{i}") for i in range(a.instances)]
        try:
            for s in servers:
                s.start(timeout=300)
            for rnd in range(a.rounds):
                for name in round_order(a.routers, rnd):
                    summary = _replay_through(name, servers, prompts, arrivals, logs, rnd)
                    summary["round"] = rnd
                    size["configs"].setdefault(name, []).append(summary)
                    print(f"  round {rnd} {summary['label']:40s} hit {summary['hit_rate']:.3f}  "
                          f"TTFT avg {summary['ttft_avg']:.3f} p50 {summary['ttft_p50']:.3f} "
                          f"p99 {summary['ttft_p99']:.3f}  failed {summary['failed']}  CPU s "
                          f"instances {summary['instances_cpu_s']:.1f} router "
                          f"{summary['router_cpu_s']:.1f}  ({summary['wall_s']:.0f} s)",
                          flush=True)
                (out_dir / "router_bench.json").write_text(json.dumps(
                    results | {"sizes": {**results["sizes"], str(kv): size}}, indent=1))
        finally:
            for s in servers:
                s.stop()
        results["sizes"][str(kv)] = size
        (out_dir / "router_bench.json").write_text(json.dumps(results, indent=1))
    (out_dir / "router_bench.md").write_text(_hits_table(results))
    print(_hits_table(results))


def _col(runs: list[dict], key: str) -> Spread:
    return Spread(tuple(float(r[key]) for r in runs))


def _short(sp: Spread, nd: int = 3) -> str:
    """``mean`` or ``mean (min-max)`` over rounds."""
    if len(sp.values) == 1:
        return f"{sp.mean:.{nd}f}"
    return f"{sp.mean:.{nd}f} ({sp.lo:.{nd}f}-{sp.hi:.{nd}f})"


def _ratio(runs: list[dict], ref: list[dict] | None, key: str) -> str:
    """Per-round ``runs[key] / ref[key]`` as ``mean (min-max)``, or ``-`` without ``ref``."""
    if not ref:
        return "-"
    return _short(ratio_spread([r[key] for r in runs], [r[key] for r in ref]), 2)


def _hits_table(results: dict[str, Any]) -> str:
    """Per memory size and configuration: each figure's mean over rounds (min-max when there
    are several), and per-round ratios against sglang-router's policies where both ran."""
    lines = ["| KV tokens / instance | configuration | hit rate | of LRU oracle | hit / "
             "cache_aware's | TTFT avg | TTFT p50 | TTFT p99 | p99 / round robin's | JCT avg "
             "| migrations | CPU s: instances / router | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kv, size in results["sizes"].items():
        lru, confs = size["oracle_lru"], size["configs"]
        lines.append(f"| {kv} | oracle: infinite shared cache | {size['oracle_infinite']:.3f} |"
                     + " |" * 10)
        lines.append(f"| {kv} | oracle: shared LRU, cluster capacity | {lru:.3f} | 1.00 |"
                     + " |" * 9)

        for runs in confs.values():
            hit = _col(runs, "hit_rate")
            mig = _short(_col(runs, "migrations"), 0) if "migrations" in runs[0] else "-"
            cpu = (f"{_col(runs, 'instances_cpu_s').mean:.0f} / "
                   f"{_col(runs, 'router_cpu_s').mean:.1f}")
            lines.append(
                f"| {kv} | {runs[0]['label']} | {_short(hit)} | "
                f"{hit.mean / lru if lru else float('nan'):.2f} | "
                f"{_ratio(runs, confs.get('sglang-cache-aware'), 'hit_rate')} | "
                f"{_short(_col(runs, 'ttft_avg'))} | {_short(_col(runs, 'ttft_p50'))} | "
                f"{_short(_col(runs, 'ttft_p99'))} | "
                f"{_ratio(runs, confs.get('sglang-rr'), 'ttft_p99')} | "
                f"{_short(_col(runs, 'jct_avg'))} | {mig} | {cpu} | "
                f"{sum(int(r['failed']) for r in runs)} |")
    return "\n".join(lines) + "\n"


# ---- overhead --------------------------------------------------------------------------------

async def _latencies(url: str, n: int, concurrency: int) -> tuple[list[float], float]:
    body = {"input_ids": list(range(1, 257)), "sampling_params": {"max_new_tokens": 1}}
    lat: list[float] = []
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    async with aiohttp.ClientSession(connector=connector) as s:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                t = time.perf_counter()
                async with s.post(f"{url}/generate", json=body) as r:
                    await r.read()
                    assert r.status == 200
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return lat, n / (time.perf_counter() - t0)


def run_overhead(a: argparse.Namespace) -> None:
    ports = [free_port() for _ in range(a.stubs)]
    stubs = [subprocess.Popen([sys.executable, "-m", "memserve_router.stub", "--port", str(p)])
             for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    log_dir = Path(a.out)
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        time.sleep(2.0)
        with MemServeRouterProcess(["--worker-urls", *urls, "--log-level", "warning"],
                                   log_dir) as router:
            asyncio.run(_latencies(router.url, 200, 1))  # warm up
            direct, _ = asyncio.run(_latencies(urls[0], a.sequential, 1))
            routed, _ = asyncio.run(_latencies(router.url, a.sequential, 1))
            _, rps = asyncio.run(_latencies(router.url, a.throughput, a.concurrency))
            _, rps_direct = asyncio.run(_latencies(urls[0], a.throughput, a.concurrency))
    finally:
        for p in stubs:
            p.kill()
    d50, r50 = statistics.median(direct), statistics.median(routed)
    print(f"p50 direct {d50 * 1e3:.3f} ms, through the router {r50 * 1e3:.3f} ms: "
          f"router adds {(r50 - d50) * 1e3:.3f} ms ({a.sequential} sequential requests)")
    print(f"throughput at concurrency {a.concurrency}: {rps:.0f} req/s through the router "
          f"({a.stubs} stub instances), {rps_direct:.0f} req/s direct to one stub")


# ---- decision --------------------------------------------------------------------------------

def run_decision(a: argparse.Namespace) -> None:
    """What the router does per request, its own code (``Router._decide``): one walk of the
    role's tree, the candidates (for ``memserve``, only those it can choose, from the cluster's
    load order) and the policy; two instances' loads change before each decision (as answers
    and polls land), so the load order's upkeep is in the time."""
    from memserve_router.cluster import Cluster
    from memserve_router.config import RouterConfig, WorkerSpec
    from memserve_router.prompts import Prompt
    from memserve_router.server import Router
    from memserve_router.workers import Worker, WorkerInfo

    rng = random.Random(0)
    page = 16
    system = [rng.randrange(10, 30000) for _ in range(1024)]
    print(f"one decision, 4,096-token prompt, page {page}, {a.calls} calls per size",
          flush=True)
    print("| instances | tree match p50 (us) | candidates + policy p50 (us) | decision p50 (us) "
          "| decision p99 (us) | candidates passed |")
    print("|---|---|---|---|---|---|")
    for n in a.instances:
        router = Router(RouterConfig())
        cluster = router.cluster = Cluster(router.config, None,  # type: ignore[arg-type]
                                           router.costs.exec_time)
        convs, workers = [], []
        for i in range(n):
            w = Worker(f"i{i}", WorkerSpec(f"http://10.0.0.1:{i + 1}"),
                       WorkerInfo(f"i{i}", page, None, None, None, None))
            w.polled = {"num_running_reqs": rng.randrange(4)}
            w.inflight = rng.randrange(3)
            workers.append(cluster.admit(w))
            conv = system + [rng.randrange(10, 30000) for _ in range(2048)]
            convs.append(conv)
            cluster.trees["colocated"].predict(w.id, conv, ttl_s=1e9)
        tree = cluster.trees["colocated"]
        prompt = Prompt(convs[n // 2] + [rng.randrange(10, 30000) for _ in range(1024)], {},
                        False)
        policy = router.policies["colocated"]
        passed = len(cluster.candidates("colocated", prompt.tokens,
                                        per_request_s=policy.config.load_per_request_s,
                                        last=policy._last))
        tm, td = [], []
        for _ in range(a.calls):
            for w in rng.sample(workers, 2):
                w.inflight = rng.randrange(3)
            t0 = time.perf_counter()
            tree.match_groups(prompt.tokens)
            t1 = time.perf_counter()
            router._decide("colocated", prompt, None)
            t2 = time.perf_counter()
            tm.append(t1 - t0)
            td.append(t2 - t1)
        cluster.feed.close()  # its ZMQ context would block the next size's garbage collection
        med = statistics.median
        p99 = statistics.quantiles(td, n=100)[98]
        print(f"| {n} | {med(tm) * 1e6:.0f} | {(med(td) - med(tm)) * 1e6:.0f} | "
              f"{med(td) * 1e6:.0f} | {p99 * 1e6:.0f} | {passed} of {n} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hits")
    h.add_argument("--out", default="results/router")
    h.add_argument("--workload", choices=["mooncake", "sharegpt"], default="mooncake")
    h.add_argument("--trace", default=None,
                   help="the workload's file: a Mooncake-format trace or a ShareGPT JSON "
                        "(default: the shared data, else the repository's sample)")
    h.add_argument("--conversation-rate", type=float, default=0.5,
                   help="sharegpt: new conversations per second (before --speedup)")
    h.add_argument("--think-time", type=float, default=10.0,
                   help="sharegpt: mean seconds between a turn and the next (before --speedup)")
    h.add_argument("--requests", type=int, default=2000)
    h.add_argument("--instances", type=int, default=4)
    h.add_argument("--block-tokens", type=int, default=16)
    h.add_argument("--max-prompt-tokens", type=int, default=2000)
    h.add_argument("--kv-tokens", type=int, nargs="+", default=[131072, 8192])
    h.add_argument("--speedup", type=float, default=8.0,
                   help="replay the trace this many times faster than recorded")
    h.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    h.add_argument("--rounds", type=int, default=1,
                   help="replay every router this many times per memory size, alternating "
                        "the order (ratios are per round)")
    o = sub.add_parser("overhead")
    o.add_argument("--out", default="results/router-overhead")
    o.add_argument("--stubs", type=int, default=2)
    o.add_argument("--sequential", type=int, default=1000)
    o.add_argument("--throughput", type=int, default=4000)
    o.add_argument("--concurrency", type=int, default=64)
    d = sub.add_parser("decision")
    d.add_argument("--instances", type=int, nargs="+", default=[16, 64, 256, 1024])
    d.add_argument("--calls", type=int, default=1000)
    a = p.parse_args()
    {"hits": run_hits, "overhead": run_overhead, "decision": run_decision}[a.cmd](a)


if __name__ == "__main__":
    main()
