"""Colocated vs prefill/decode disaggregation on one multi-turn ShareGPT replay.

Configurations (each started fresh, one after another, same conversations and arrival times):

* ``colo-nocache``  one colocated instance, no prefix cache (``--memserve-cache off``)
* ``colo-cache``    one colocated instance with MemServe's tree cache
* ``pd-basic``      1P1D behind memserve-router, no prefix cache anywhere (PD-Basic)
* ``pd-cache``      1P1D, prefill's cache + decode's cache, delta-only transfers (PD-Caching-1+2)
* ``pd-caching1``   1P1D, prefill's cache only (optional)
* ``pd-caching3``   1P1D, PD-Caching-1+2 plus decode's KV return to prefill (MemServe)
* ``sglang-pd`` / ``sglang-pd-dcache``  stock SGLang PD (its own radix cache), without / with
  its decode radix cache

``--rounds N`` runs the list N times, forward on even rounds and reversed on odd ones (every
configuration starts fresh each time); every round is kept, and each ratio is computed per round
and reported as mean (min-max, sd) over the rounds.

Writes ``<out>/pd_bench.json`` (per config, a list of rounds: summary, per-request records, PD
counters) and ``<out>/pd_bench.md`` (means over rounds, per-round JCT/TTFT, ratios with their
spread)::

    .venv/bin/python benchmarks/pd_bench.py --out results/pd-<date> --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from sglang_memserve import compat

compat.apply_import_patches()

import profiling  # noqa: E402  (beside this script)
import ttft_stages  # noqa: E402  (beside this script)
from transformers import AutoTokenizer  # noqa: E402

from sglang_memserve.bench.metrics import summarize, to_jsonable  # noqa: E402
from sglang_memserve.bench.replay import OUTPUT_LENS, ReplayConfig, replay  # noqa: E402
from sglang_memserve.bench.rounds import ratio_spread, round_order  # noqa: E402
from sglang_memserve.bench.setups import SETUPS, Setup, serving  # noqa: E402
from sglang_memserve.model import ensure_model  # noqa: E402
from sglang_memserve.workloads import load_longdoc, load_sharegpt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


DEFAULT_CONFIGS = ("colo-nocache", "colo-cache", "pd-basic", "pd-cache")


def _fmt(v: float, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _new_tokens(meta: dict[str, Any]) -> str:
    if meta.get("output_len") == "dataset":
        return f"answers as long as the data set's, at most {meta['max_new_tokens']} tokens"
    return f"{meta['max_new_tokens']} new tokens"


def _prefill_tokens(run: dict[str, Any]) -> int:
    """Prompt tokens computed on prefill (the colocated server) in one round."""
    on_prefill = run["facts"].get("computed_on_prefill")
    return run["summary"]["prompt_tokens"] if on_prefill is None else on_prefill  # no cache


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(float(r["summary"][key]) for r in runs)


def markdown(results: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    """The report: one row per configuration (means over rounds; the per-round JCT and TTFT
    columns show the spread), then the target ratios with their spread across rounds."""
    base = results.get("colo-nocache")
    rounds = meta.get("rounds", 1)
    lines = [
        f"# PD benchmark ({meta['started']})", "",
        (f"{meta['conversations']} single-turn questions on long documents (max "
         f"{meta['max_chars']} chars of context), Poisson {meta['rate']} requests/s, "
         if meta.get("workload") == "longdoc" else
         f"{meta['conversations']} ShareGPT conversations x <= {meta['max_turns']} turns "
         f"(max {meta['max_chars']} chars per turn), Poisson {meta['rate']} conv/s, ")
        +
        f"{_new_tokens(meta)} (greedy, EOS ignored), model `{meta['model']}`, "
        f"{meta['host_cpus']} cores; PD cores {meta['cpus'] or 'one each'}, colocated "
        f"OMP threads {meta['colo_omp_threads'] or 'default'}, page size {meta['page_size']}; "
        f"{rounds} round(s), order {meta.get('order', 'forward')} (figures: mean over rounds).",
        "",
        "| config | JCT avg (s) | JCT p50 | JCT p99 | TTFT avg (s) | TTFT p50 | TTFT p99 | "
        "hit rate | output tok | computed prompt tok | computed on prefill | KV sent (MB) | "
        "KV MB / req | failed | JCT avg / colo | JCT avg per round | TTFT avg per round | "
        "CPU s (prefill + decode, or colocated; router) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        kvs = [r["facts"].get("kv_transfer_mb") for r in runs]
        kv = None if any(k is None for k in kvs) else statistics.fmean(kvs)
        ok = statistics.fmean(r["summary"]["requests"] - r["summary"]["failed"] for r in runs)
        ratio = (ratio_spread([r["summary"]["jct_avg"] for r in runs],
                              [r["summary"]["jct_avg"] for r in base]).fmt()
                 if base else "-")
        lines.append(
            f"| {SETUPS[name].label} | " + " | ".join(_fmt(_mean(runs, k)) for k in (
                "jct_avg", "jct_p50", "jct_p99", "ttft_avg", "ttft_p50", "ttft_p99"))
            + f" | {_fmt(_mean(runs, 'hit_rate'), 2)} | {round(_mean(runs, 'output_tokens'))} | "
            f"{round(_mean(runs, 'computed_prompt_tokens'))} | "
            f"{round(statistics.fmean(_prefill_tokens(r) for r in runs))} | "
            f"{'-' if kv is None else _fmt(kv, 1)} | "
            f"{'-' if kv is None else _fmt(kv / max(1.0, ok), 2)} | "
            f"{sum(r['summary']['failed'] for r in runs)} | {ratio} | "
            + " / ".join(f"{r['summary']['jct_avg']:.2f}" for r in runs) + " | "
            + " / ".join(f"{r['summary']['ttft_avg']:.3f}" for r in runs) + " | "
            + _cpu_cell(runs) + " |")
    return "\n".join(lines + _target_ratios(results) + _return_breakdown(results)
                     + _stage_rows(results) + _host_rows(results) + _step_rows(results)) + "\n"


def _stage_rows(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """TTFT by stage (``--ttft-stages``): per configuration, the mean ms per request of each
    stage, mean over rounds (min-max of the rounds' means); all requests, then later turns."""
    named = {n: [r["facts"]["ttft_stages"] for r in runs if r["facts"].get("ttft_stages")]
             for n, runs in results.items()}
    named = {n: v for n, v in named.items() if v and v[0]["mean_ms"]}
    if not named:
        return []
    out: list[str] = []
    for key, title in (("mean_ms", "all requests"), ("later_mean_ms", "turns after the first")):
        out += ["", f"TTFT by stage, ms per request ({title}; SGLang's request timestamps, "
                "benchmarks/ttft_stages.py), mean over rounds (min-max of the rounds):", "",
                "| stage | " + " | ".join(SETUPS[n].label for n in named) + " |",
                "|---|" + "---|" * len(named)]
        for stage in (*ttft_stages.STAGE_NAMES, "TTFT"):
            cells = []
            for v in named.values():
                xs = [s[key][stage] for s in v if s[key]]
                cells.append(f"{statistics.fmean(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"
                             if xs else "-")
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        counts = " / ".join(
            str(round(statistics.fmean(s["requests" if key == "mean_ms" else "later_turns"]
                                       for s in v))) for v in named.values())
        out.append(f"| requests joined (mean per round) | {counts.replace(' / ', ' | ')} |")
    return out


def _host_rows(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per round and configuration: what else used the host's cores during the replay."""
    rows = [(r["round"], name, r["facts"]["host"], r["facts"].get("runqueue_wait_s"))
            for name, runs in results.items() for r in runs if "host" in r["facts"]]
    if not rows:
        return []
    out = ["", "Other work on the host during each replay (CPU of processes outside this "
           "benchmark, in cores; 1-minute load average; the largest other users):", "",
           "| round | config | others (cores) | load avg (mean / max) | instances waited for "
           "their core (s, prefill + decode) | top others (CPU s) |",
           "|---|---|---|---|---|---|"]
    for rnd, name, h, waits in sorted(rows, key=lambda x: x[0]):
        top = ", ".join(f"{cmd} {c:.1f}" for c, _, cmd in h["top"][:3]) or "-"
        wait = " + ".join(f"{w:.1f}" for w in waits) if waits else "-"
        out.append(f"| {rnd} | {SETUPS[name].label} | {h['others_cores']:.2f} | "
                   f"{h['loadavg_mean']:.1f} / {h['loadavg_max']:.1f} | {wait} | {top} |")
    return out


def _steps(run: dict[str, Any]) -> dict[int, list[float]]:
    return {int(k): v for k, v in (run["facts"].get("decode_steps_ms") or {}).items()}


def _step_rows(results: dict[str, list[dict[str, Any]]], sizes: int = 8) -> list[str]:
    """Decode step time at equal batch size (median ms over SGLang's decode log lines, all
    rounds), and the per-round step ratio of MemServe PD-Caching-3 to stock."""
    named = {n: [s for s in (_steps(r) for r in runs) if s] for n, runs in results.items()}
    named = {n: v for n, v in named.items() if v}
    if not named:
        return []
    pooled = {n: {b: [x for s in v for x in s.get(b, [])] for b in range(1, sizes + 1)}
              for n, v in named.items()}
    out = ["", "Decode step time (ms, median of SGLang's decode log lines over all rounds; "
           "lines in parentheses) by running batch size:", "",
           "| config | " + " | ".join(str(b) for b in range(1, sizes + 1)) + " |",
           "|---|" + "---|" * sizes]
    for n, by in pooled.items():
        out.append(f"| {SETUPS[n].label} | " + " | ".join(
            f"{statistics.median(v):.1f} ({len(v)})" if v else "-" for v in by.values()) + " |")
    ours, ref = results.get("pd-caching3"), results.get("sglang-pd-dcache")
    if ours and ref:
        per = [profiling.step_ratio(_steps(a), _steps(b)) for a, b in zip(ours, ref,
                                                                           strict=False)]
        per = [x for x in per if x is not None]
        if per:
            out += ["", "Decode step time, PD-Caching-3 / stock PD + decode cache at equal batch "
                    "size (per round; geometric mean over batch sizes, weighted by lines): "
                    + ratio_spread(per, [1.0] * len(per)).fmt(3)]
    return out


# The KV return's cost on decode, from decode's peer counters (cache/peer.py, cache/staging.py):
# (label, counter path under memserve.decode.peer, scale to ms or a count per return).
RETURN_FIGURES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("match + lock (scheduler) ms", ("match_s",), 1e3),
    ("worker batch wall ms", ("batch_wall_s",), 1e3),
    ("worker thread CPU ms", ("batch_cpu_s",), 1e3),
    ("gather ms", ("write", "gather_s"), 1e3),
    ("Mooncake write wall ms", ("write", "transfer_s"), 1e3),
    ("blocks planned", ("write", "blocks_planned"), 1.0),
    ("blocks sent", ("write", "blocks_sent"), 1.0),
)


def _return_breakdown(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per return, mean over rounds: where decode's time for PD-Caching-3's return goes.
    Empty when no round has the counters (another configuration, an older build)."""
    peers = [r["facts"].get("memserve", {}).get("decode", {}).get("peer") or {}
             for r in results.get("pd-caching3", [])]
    peers = [p for p in peers if p.get("pushes") and "write" in p]
    if not peers:
        return []

    def per_return(p: dict[str, Any], path: tuple[str, ...], scale: float) -> float:
        v: Any = p
        for k in path:
            v = v[k]
        return float(v) * scale / p["pushes"]

    cells = [f"{statistics.fmean(per_return(p, path, k) for p in peers):.2f}"
             for _, path, k in RETURN_FIGURES]
    return ["", f"PD-Caching-3's KV return on decode, per return, mean of {len(peers)} round(s) "
            f"({statistics.fmean(p['pushes'] for p in peers):.0f} returns per round):", "",
            "| " + " | ".join(f for f, _, _ in RETURN_FIGURES) + " |",
            "|" + "---|" * len(RETURN_FIGURES), "| " + " | ".join(cells) + " |"]


def _cpu_cell(runs: list[dict[str, Any]]) -> str:
    per = [r["facts"].get("cpu_s") for r in runs]
    if any(not c for c in per):
        return "-"
    parts = zip(*per, strict=True)
    cell = " + ".join(f"{statistics.fmean(p):.1f}" for p in parts)
    routers = [r["facts"].get("router_cpu_s") for r in runs]
    if all(x is not None for x in routers):
        cell += f" (router {statistics.fmean(routers):.1f})"
    return cell


def _cpu(run: dict[str, Any], which: int | None) -> float:
    """CPU seconds of one instance (0 prefill, 1 decode) or all (None) in one round."""
    c = run["facts"].get("cpu_s") or [float("nan")]
    return sum(c) if which is None else c[min(which, len(c) - 1)]


# Figures compared against each reference: (label, per-round value).
RATIO_FIGURES: tuple[tuple[str, Any], ...] = (
    ("JCT avg", lambda r: r["summary"]["jct_avg"]),
    ("JCT p99", lambda r: r["summary"]["jct_p99"]),
    ("TTFT avg", lambda r: r["summary"]["ttft_avg"]),
    ("TTFT p99", lambda r: r["summary"]["ttft_p99"]),
    ("prefill tokens computed", _prefill_tokens),
    ("prefill CPU s", lambda r: _cpu(r, 0)),
    ("decode CPU s", lambda r: _cpu(r, 1)),
    ("router CPU s", lambda r: r["facts"].get("router_cpu_s") or float("nan")),
)


def _ratio_cell(ours: list[float], ref: list[float]) -> str:
    """``mean (min-max, sd)`` of the per-round ratios; "-" when a round lacks the figure (an
    older build's results)."""
    if any(math.isnan(x) for x in ours + ref):
        return "-"
    return ratio_spread(ours, ref).fmt()


def _target_ratios(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The issue's targets: MemServe PD+cache against PD-Basic and stock decode-cache PD, one
    ratio per round (rounds pair up by index), as mean (min-max, sd)."""
    name = next((n for n in ("pd-caching3", "pd-cache") if n in results), None)
    if name is None:
        return []
    ours = results[name]
    out = ["", f"Ratios of MemServe PD + cache ({'1+2+3' if name == 'pd-caching3' else '1+2'}),"
           " per round, as mean (min-max, sd) over rounds:", "",
           "| against | " + " | ".join(f for f, _ in RATIO_FIGURES) + " |",
           "|---|" + "---|" * len(RATIO_FIGURES)]
    for ref, label in (("pd-basic", "PD-Basic"), ("sglang-pd-dcache", "stock PD + decode cache"),
                       ("colo-nocache", "colocated, no cache")):
        if ref not in results:
            continue
        cells = [_ratio_cell([f(r) for r in ours], [f(r) for r in results[ref]])
                 for _, f in RATIO_FIGURES]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def run_config(setup: Setup, rnd: int, model_args: list[str], out: Path, args: Any,
               colo_env: dict[str, str] | None, convs: list[Any], tok: Any,
               cfg: ReplayConfig) -> dict[str, Any]:
    """One round of one configuration: start it fresh, replay, stop it.

    Returns:
        ``{"round", "summary", "facts", "records"}``.
    """
    tag = setup.name if rnd == 0 else f"{setup.name}-r{rnd}"
    print(f"[pd_bench] round {rnd} {setup.name}: starting", flush=True)
    with serving(setup, model_args, out / "logs" / f"round{rnd}", args.cpus,
                 colo_env, args.pin_instances) as served:
        facts: dict[str, Any] = {"startup_s": served.startup_s}
        if served.decode_url is not None:
            facts["cpus"] = served.cpus
        pids = served.pids
        if args.server_nice is not None:
            # Every process this benchmark started (instances, their helpers, the router) and
            # this client: other sessions' work at a higher nice value yields to them.
            facts["niced_threads"] = profiling.renice_tree(os.getpid(), args.server_nice)
        profile = (profiling.recording(args.profile, tag, pids)
                   if args.profile else nullcontext())
        mark = served.mark()
        cpu0 = [profiling.tree_cpu_s(pid) for pid in pids]
        all0, self0 = profiling.tree_cpu_s(os.getpid()), profiling.own_cpu_s()
        sched0 = [profiling.sched_s(pid) for pid in pids]
        decode_log = out / "logs" / f"round{rnd}" / setup.name / "decode.log"
        log_at = decode_log.stat().st_size if decode_log.exists() else 0
        t0, wall0 = time.perf_counter(), time.time()
        with profile, profiling.host_load() as load:
            records = replay(served.url, convs, tok, cfg)
        facts["wall_s"] = time.perf_counter() - t0
        facts["host"] = load.as_dict()
        if served.decode_url is not None:
            facts["decode_steps_ms"] = profiling.decode_steps(decode_log, log_at)
        # CPU seconds each instance's process tree used during the replay: the work it did,
        # much less sensitive to other jobs on the machine than latencies are.
        facts["cpu_s"] = [profiling.tree_cpu_s(pid) - c for pid, c in zip(pids, cpu0,
                                                                           strict=True)]
        # The rest of what this benchmark started: the router (and py-spy when profiling);
        # unpinned, it shares both cores with the instances. And the replay client itself.
        facts["client_cpu_s"] = profiling.own_cpu_s() - self0
        # Per instance: seconds its threads waited for their core while runnable (others on
        # the core delayed it), beside their time on it.
        sched = [profiling.sched_s(pid) for pid in pids]
        facts["run_s"] = [a[0] - b[0] for a, b in zip(sched, sched0, strict=True)]
        facts["runqueue_wait_s"] = [a[1] - b[1] for a, b in zip(sched, sched0, strict=True)]
        facts["router_cpu_s"] = (profiling.tree_cpu_s(os.getpid()) - all0
                                 - facts["client_cpu_s"] - sum(facts["cpu_s"]))
        facts.update(served.delta(mark))
        facts.update(served.state())
    if args.ttft_stages and served.decode_url is not None:
        tl = {k: v.pop("timeline", []) for k, v in facts.get("memserve", {}).items()}
        joined = ttft_stages.join(to_jsonable(records), wall0, tl.get("prefill", []),
                                  tl.get("decode", []))
        facts["ttft_stages"] = ttft_stages.summary(joined)
        facts["ttft_stages_per_request"] = joined
    summary = summarize(records)
    later = [r.jct for r in records if r.turn > 0 and r.error is None]
    summary["jct_later_turns_avg"] = statistics.fmean(later) if later else float("nan")
    host = facts["host"]
    print(f"[pd_bench] round {rnd} {setup.name}: jct_avg={summary['jct_avg']:.3f}s "
          f"ttft_avg={summary['ttft_avg']:.3f}s hit={summary['hit_rate']:.2f} "
          f"failed={summary['failed']} wall={facts['wall_s']:.1f}s "
          f"waited for the core: {' + '.join(f'{w:.1f}' for w in facts['runqueue_wait_s'])}s "
          f"others={host['others_cores']:.2f} cores (load {host['loadavg_mean']:.1f}; "
          f"{', '.join(f'{c:.1f}s {cmd}' for c, _, cmd in host['top'][:3])})", flush=True)
    return {"round": rnd, "summary": summary, "facts": facts, "records": to_jsonable(records)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path,
                    default=REPO / "results" / f"pd-{datetime.now():%Y%m%d-%H%M%S}")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {', '.join(SETUPS)}")
    ap.add_argument("--embedded-model", default="bench", choices=("tiny", "bench"))
    ap.add_argument("--model-path", default=None, help="instead of the embedded model")
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--min-turns", type=int, default=2)
    ap.add_argument("--max-chars", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=0.5, help="conversations per second")
    ap.add_argument("--max-new-tokens", type=int, default=32,
                    help="tokens per answer; with --output-len dataset, the cap")
    ap.add_argument("--output-len", choices=OUTPUT_LENS, default="fixed",
                    help="dataset: answers as long as the data set's (ShareGPT's real answers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--think-time", type=float, default=0.0,
                    help="mean pause (s) between a reply and the user's next turn")
    ap.add_argument("--workload", choices=("sharegpt", "longdoc"), default="sharegpt",
                    help="longdoc: several questions per long document (--conversations "
                         "documents x --max-turns questions, --max-chars of context)")
    ap.add_argument("--cpus", default=None,
                    help="PD core split 'P/D' (e.g. '0/1'), or 'shared'; default: one core each")
    ap.add_argument("--pin-instances", action="store_true",
                    help="hold every process of a PD instance to its cores (before stop 9), "
                         "not only its scheduler")
    ap.add_argument("--page-size", type=int, default=None,
                    help="SGLang --page-size for every configuration (default: SGLang's, 1)")
    ap.add_argument("--colo-omp-threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the colocated server (default: torch's choice, "
                         "one per core)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration this many times, forward order on even "
                         "rounds and reversed on odd ones; ratios are per round")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record the schedulers with py-spy during each replay into this dir")
    ap.add_argument("--decode-log-interval", type=int, default=None,
                    help="SGLang's --decode-log-interval for every instance (default: SGLang's "
                         "40): its decode log lines give the step times by batch size")
    ap.add_argument("--server-nice", type=int, default=None,
                    help="niceness of this benchmark's own scheduling group (a new session, "
                         "so a new autogroup, see profiling.own_autogroup) and of every thread "
                         "it starts (negative: root only); e.g. -5 so that other sessions' "
                         "work yields to the measured one")
    ap.add_argument("--ttft-stages", action="store_true",
                    help="PD: break each request's TTFT into stages from SGLang's request "
                         "timestamps (starts every instance with "
                         "--enable-request-time-stats-logging; benchmarks/ttft_stages.py)")
    args = ap.parse_args(argv)
    colo_env = ({"OMP_NUM_THREADS": str(args.colo_omp_threads)}
                if args.colo_omp_threads else None)

    model = Path(args.model_path) if args.model_path else ensure_model(args.embedded_model)
    model_args = ["--model-path", str(model)]
    if args.page_size:
        model_args += ["--page-size", str(args.page_size)]
    if args.decode_log_interval:
        model_args += ["--decode-log-interval", str(args.decode_log_interval)]
    if args.ttft_stages:
        model_args.append("--enable-request-time-stats-logging")
    tok = AutoTokenizer.from_pretrained(str(model))
    if args.workload == "longdoc":
        convs = load_longdoc(docs=args.conversations, questions_per_doc=args.max_turns,
                             max_context_chars=args.max_chars)
    else:
        convs = load_sharegpt(limit=args.conversations, min_turns=args.min_turns,
                              max_turns=args.max_turns, max_chars=args.max_chars)
    cfg = ReplayConfig(rate=args.rate, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       think_time_s=args.think_time, output_len=args.output_len)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = {"started": f"{datetime.now():%Y-%m-%d %H:%M:%S}", "model": model.name,
            "conversations": len(convs), "max_turns": args.max_turns, "max_chars": args.max_chars,
            "rate": args.rate, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
            "output_len": args.output_len,
            "workload": args.workload, "think_time": args.think_time,
            "requests": sum(len(c.user_turns) for c in convs), "host_cpus": os.cpu_count(),
            "cpus": args.cpus, "colo_omp_threads": args.colo_omp_threads,
            "page_size": args.page_size or 1, "rounds": args.rounds,
            "server_nice": args.server_nice, "decode_log_interval": args.decode_log_interval,
            "ttft_stages": args.ttft_stages,
            "order": "forward on even rounds, reversed on odd rounds"}
    if args.server_nice is not None:
        meta["autogroup"] = profiling.own_autogroup(args.server_nice)
        print(f"[pd_bench] scheduling group: {meta['autogroup']}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    configs = args.configs.split(",")
    for rnd in range(args.rounds):
        for name in round_order(configs, rnd):
            run = run_config(SETUPS[name], rnd, model_args, out, args, colo_env, convs, tok, cfg)
            results.setdefault(name, []).append(run)
            (out / "pd_bench.json").write_text(json.dumps({"meta": meta, "results": results},
                                                          indent=1, default=str))
    md = markdown(results, meta)
    (out / "pd_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
