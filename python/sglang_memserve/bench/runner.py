"""Run one server configuration against a replay and summarize it (benchmarks share this)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import requests

from sglang_memserve.bench.metrics import RequestRecord, summarize, to_jsonable
from sglang_memserve.bench.replay import ReplayConfig, replay
from sglang_memserve.cluster import ServerProcess
from sglang_memserve.workloads import Conversation


def run_server_config(name: str, args: Sequence[str], convs: Sequence[Conversation],
                      tokenizer: Any, cfg: ReplayConfig, out_dir: Path,
                      env: dict[str, str] | None = None,
                      around: Callable[[int], AbstractContextManager[Any]] | None = None
                      ) -> dict[str, Any]:
    """Start a server with ``args``, replay ``convs``, stop it; write records and return a summary.

    ``around(server_pid)``, when given, is a context manager held during the replay only
    (e.g. a py-spy recording of the server's scheduler: ``benchmarks/profiling.py``).

    Returns:
        :func:`~sglang_memserve.bench.metrics.summarize` plus ``name``, ``args``, start time,
        wall time and the server's MemServe state (when it has one).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ServerProcess(list(args), out_dir, name=name, env=env) as server:
        started = time.perf_counter() - t0
        assert server.proc is not None
        with around(server.proc.pid) if around is not None else nullcontext():
            t1 = time.perf_counter()
            records: list[RequestRecord] = replay(server.url, convs, tokenizer, cfg)
            wall = time.perf_counter() - t1
        info = requests.get(f"{server.url}/server_info", timeout=60).json()
    state = info["internal_states"][0].get("memserve", {})
    (out_dir / f"{name}.records.json").write_text(json.dumps(to_jsonable(records)))
    return {"name": name, "args": list(args), "start_s": started, "wall_s": wall,
            **summarize(records), "memserve": state}


def markdown_table(rows: list[dict[str, Any]], baseline: str | None = None) -> str:
    """JCT/TTFT avg and P99, hit rate and computed prompt tokens; ratios against ``baseline``."""
    base = next((r for r in rows if r["name"] == baseline), None)
    head = ("| config | JCT avg (s) | JCT P99 | TTFT avg (s) | TTFT P99 | hit rate | "
            "host hits | prompt tokens computed | failed |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ratio = ""
        if base is not None and r is not base:
            ratio = (f" (x{r['jct_avg'] / base['jct_avg']:.2f} JCT, "
                     f"x{r['ttft_avg'] / base['ttft_avg']:.2f} TTFT)")
        lines.append(
            f"| {r['name']}{ratio} | {r['jct_avg']:.3f} | {r['jct_p99']:.3f} | "
            f"{r['ttft_avg']:.3f} | {r['ttft_p99']:.3f} | {r['hit_rate']:.3f} | "
            f"{r['cached_by_tier'].get('host', 0)} | {r['computed_prompt_tokens']} | "
            f"{r['failed']} |")
    return "\n".join(lines)
