"""The MemServe paper's evaluation: workloads, their sizes per mode, and the run loop.

Every configuration (:data:`~sglang_memserve.bench.setups.SETUPS`) is started from scratch once
and serves the chosen workloads one after another, in a fixed order, with the same requests and
arrival times as every other configuration; its processes are torn down afterwards, also on
error. Each workload's work counters are read around its replay, so figures are per workload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sglang_memserve.bench.metrics import RequestRecord, summarize, tpot_of
from sglang_memserve.bench.replay import ReplayConfig, replay
from sglang_memserve.bench.sessions import react_sessions, replay_sessions, trace_sessions
from sglang_memserve.bench.setups import SETUPS, serving
from sglang_memserve.workloads import load_longdoc, load_react, load_sharegpt
from sglang_memserve.workloads.trace import load_trace


@dataclass(frozen=True)
class EvalSizes:
    """How big each workload is (one preset per mode; the command line overrides fields).

    Attributes:
        sharegpt_*: conversations (>= 2 user turns), turns kept, characters per turn, Poisson
            conversations/s; answers as long as the data set's, capped at ``sharegpt_new``.
        longdoc_*: documents x questions (question-major, so questions on one document
            interleave), characters of context, Poisson requests/s, tokens per answer.
        react_*: episodes (tasks alternating), steps kept, characters per observation, Poisson
            episodes/s, cap of each call's output, prompt-length limit, history mode
            (:data:`~sglang_memserve.bench.sessions.REACT_HISTORIES`).
        trace_*: first N requests of the Mooncake trace, tokens per 512-token block, replay
            speed-up over recorded time, output cap, prompt-length limit.
    """

    sharegpt_conversations: int = 6
    sharegpt_turns: int = 3
    sharegpt_chars: int = 600
    sharegpt_rate: float = 1.0
    sharegpt_new: int = 128
    longdoc_docs: int = 3
    longdoc_questions: int = 3
    longdoc_chars: int = 3000
    longdoc_rate: float = 1.0
    longdoc_new: int = 16
    react_episodes: int = 6
    react_steps: int = 6
    react_obs_chars: int = 200
    react_rate: float = 1.0
    react_new: int = 32
    react_max_prompt: int = 2500
    react_history: str = "generated"
    trace_requests: int = 24
    trace_block_tokens: int = 16
    trace_speedup: float = 0.5
    trace_new: int = 16
    trace_max_prompt: int = 2000


PRESETS: dict[str, EvalSizes] = {
    "quick": EvalSizes(),
    "smoke": EvalSizes(sharegpt_conversations=2, sharegpt_turns=2, sharegpt_chars=200,
                       sharegpt_rate=4.0, sharegpt_new=8, longdoc_docs=2, longdoc_questions=2,
                       longdoc_chars=600, longdoc_rate=4.0, longdoc_new=4, react_episodes=2,
                       react_steps=3, react_obs_chars=80, react_rate=4.0, react_new=8,
                       react_max_prompt=1900, trace_requests=6, trace_block_tokens=16,
                       trace_speedup=4.0, trace_new=4, trace_max_prompt=800),
    "full": EvalSizes(sharegpt_conversations=16, sharegpt_turns=3, sharegpt_chars=1500,
                      sharegpt_rate=0.25, sharegpt_new=256, longdoc_docs=4, longdoc_questions=4,
                      longdoc_chars=4000, longdoc_rate=0.5, longdoc_new=32, react_episodes=16,
                      react_steps=8, react_obs_chars=400, react_rate=0.25, react_new=48,
                      react_max_prompt=4000, trace_requests=120, trace_block_tokens=16,
                      trace_speedup=1.0, trace_new=32, trace_max_prompt=4000),
}


@dataclass(frozen=True)
class DataPaths:
    """Workload files given on the command line (None: the data directory's, else the
    package's sample)."""

    sharegpt: Path | None = None
    longdoc: Path | None = None
    react_traces: Path | None = None
    react_prompts: Path | None = None
    mooncake_trace: Path | None = None


@dataclass(frozen=True)
class Workload:
    """A built workload: ``run(url)`` replays it against a server and returns its records."""

    name: str
    label: str
    describe: str
    requests: int
    run: Callable[[str], list[RequestRecord]]


def _sharegpt(s: EvalSizes, p: DataPaths, tok: Any, seed: int) -> Workload:
    convs = load_sharegpt(p.sharegpt, limit=s.sharegpt_conversations, min_turns=2,
                          max_turns=s.sharegpt_turns, max_chars=s.sharegpt_chars)
    cfg = ReplayConfig(rate=s.sharegpt_rate, max_new_tokens=s.sharegpt_new,
                       output_len="dataset", seed=seed)
    return Workload("sharegpt", "ShareGPT multi-turn",
                    f"{len(convs)} conversations x <= {s.sharegpt_turns} turns (<= "
                    f"{s.sharegpt_chars} chars each; each turn carries the previous answer's "
                    f"ids), answers as long as the data set's (<= {s.sharegpt_new} tokens), "
                    f"Poisson {s.sharegpt_rate} conv/s",
                    sum(len(c.user_turns) for c in convs),
                    lambda url: replay(url, convs, tok, cfg))


def _longdoc(s: EvalSizes, p: DataPaths, tok: Any, seed: int) -> Workload:
    convs = load_longdoc(p.longdoc, docs=s.longdoc_docs, questions_per_doc=s.longdoc_questions,
                         max_context_chars=s.longdoc_chars)
    cfg = ReplayConfig(rate=s.longdoc_rate, max_new_tokens=s.longdoc_new, seed=seed)
    return Workload("longdoc", "long-document QA (LooGLE / L-Eval)",
                    f"{s.longdoc_docs} documents (<= {s.longdoc_chars} chars) x "
                    f"{s.longdoc_questions} questions, interleaved, {s.longdoc_new} tokens per "
                    f"answer, Poisson {s.longdoc_rate} requests/s",
                    len(convs), lambda url: replay(url, convs, tok, cfg))


def _react(s: EvalSizes, p: DataPaths, tok: Any, seed: int) -> Workload:
    episodes, prompts = load_react(p.react_traces, p.react_prompts, limit=s.react_episodes,
                                   max_steps=s.react_steps)
    sessions = react_sessions(episodes, prompts, tok, max_new_tokens=s.react_new,
                              history=s.react_history, max_observation_chars=s.react_obs_chars,
                              max_prompt_tokens=s.react_max_prompt)
    cfg = ReplayConfig(rate=s.react_rate, seed=seed)
    tasks = sorted({e.task for e in episodes})
    return Workload("react", "ReAct agent traces",
                    f"{len(sessions)} episodes ({', '.join(tasks)}; <= {s.react_steps} calls, "
                    f"observations <= {s.react_obs_chars} chars, history: {s.react_history}), "
                    f"each call's output as long as the trace's step (<= {s.react_new} tokens), "
                    f"calls of an episode in order, Poisson {s.react_rate} episodes/s",
                    sum(len(x.calls) for x in sessions),
                    lambda url: replay_sessions(url, sessions, cfg))


def _mooncake(s: EvalSizes, p: DataPaths, tok: Any, seed: int) -> Workload:
    trace = load_trace(p.mooncake_trace, limit=s.trace_requests, seed=seed)
    sessions = trace_sessions(trace, block_tokens=s.trace_block_tokens, speedup=s.trace_speedup,
                              max_new_tokens=s.trace_new, max_prompt_tokens=s.trace_max_prompt)
    span = max((x.start_s or 0.0 for x in sessions), default=0.0)
    return Workload("mooncake", "Mooncake conversation trace",
                    f"first {len(sessions)} requests, {s.trace_block_tokens} tokens per 512-token "
                    f"block (prompts <= {s.trace_max_prompt} tokens), recorded arrivals x"
                    f"{1 / s.trace_speedup:g} ({span:.1f} s), outputs <= {s.trace_new} tokens",
                    len(sessions), lambda url: replay_sessions(url, sessions))


WORKLOADS: dict[str, Callable[[EvalSizes, DataPaths, Any, int], Workload]] = {
    "sharegpt": _sharegpt, "longdoc": _longdoc, "react": _react, "mooncake": _mooncake,
}


def build_workloads(names: Sequence[str], sizes: EvalSizes, paths: DataPaths, tokenizer: Any,
                    seed: int = 0) -> list[Workload]:
    """Build the named workloads (same requests for every configuration).

    Raises:
        ValueError: an unknown name.
    """
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {sorted(WORKLOADS)}")
    return [WORKLOADS[n](sizes, paths, tokenizer, seed) for n in names]


def slim(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """Per-request figures without the output ids (small enough to commit)."""
    out = []
    for r in records:
        d = asdict(r)
        d["output_tokens"] = len(d.pop("output_ids"))
        d["computed_tokens"] = r.prompt_tokens - r.cached_tokens
        d["tpot"] = tpot_of(r)
        out.append({k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()})
    return out


def run_config(name: str, workloads: Sequence[Workload], model_args: list[str], log_dir: Path,
               *, cpus: str | None = None, colo_env: dict[str, str] | None = None,
               cpu_s: Callable[[int], float] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start configuration ``name``, replay every workload on it in order, stop it.

    Args:
        cpu_s: CPU seconds used so far by a process tree (pid -> s); None: not measured
            (else ``facts["cpu_s"]`` per instance, and ``facts["router_cpu_s"]`` behind a
            colocated router). Behind a colocated memserve-router, ``facts["router"]`` holds
            its hold / migration / retry counters' change over the workload.
    Returns:
        ``{"startup_s", "workloads": {name: {"summary", "facts", "records"}}}``.
    Raises:
        KeyError: an unknown configuration.
    """
    setup = SETUPS[name]
    out: dict[str, Any] = {"label": setup.label, "workloads": {}}
    log(f"[paper_eval] {name}: starting")
    with serving(setup, model_args, log_dir, cpus, colo_env) as served:
        out["startup_s"] = served.startup_s
        for i, w in enumerate(workloads, 1):
            mark = served.mark()
            cpu0 = [cpu_s(p) for p in served.pids] if cpu_s else []
            router0 = cpu_s(served.router_pid) if cpu_s and served.router_pid else 0.0
            counters0 = served.router_counters()
            t0 = time.perf_counter()
            records = w.run(served.url)
            facts: dict[str, Any] = {"wall_s": time.perf_counter() - t0}
            if cpu_s:
                facts["cpu_s"] = [cpu_s(p) - c for p, c in zip(served.pids, cpu0, strict=True)]
                if served.router_pid:  # a colocated router, on the instances' cores
                    facts["router_cpu_s"] = cpu_s(served.router_pid) - router0
            if served.router_metrics_url:  # memserve-router: holds, migrations, retries
                facts["router"] = {k: v - counters0.get(k, 0.0)
                                   for k, v in served.router_counters().items()}
            facts.update(served.delta(mark))
            summary = summarize(records)
            summary["throughput_rps"] = len(records) / facts["wall_s"]
            out["workloads"][w.name] = {"summary": summary, "facts": facts,
                                        "records": slim(records)}
            log(f"[paper_eval] {name} [{i}/{len(workloads)}] {w.name}: {len(records)} requests, "
                f"JCT {summary['jct_avg']:.3f}s TTFT {summary['ttft_avg']:.3f}s "
                f"hit {summary['hit_rate']:.2f} prefill computed "
                f"{facts['computed_on_prefill']} failed {summary['failed']} "
                f"({facts['wall_s']:.1f}s)")
        out["state"] = served.state()
    return out


def with_overrides(sizes: EvalSizes, overrides: dict[str, Any]) -> EvalSizes:
    """``sizes`` with the given fields replaced (unknown names raise ``TypeError``)."""
    return replace(sizes, **overrides) if overrides else sizes
