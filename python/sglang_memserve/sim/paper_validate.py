"""``python -m sglang_memserve.sim.paper_validate ROUND.json ...``: the simulator against real
``benchmarks/paper_eval.py`` rounds.

Each round's ``paper-eval.json`` keeps its sizes, seed and every request's record. This rebuilds
the same requests (:mod:`.paper_workload`: same loaders and tokenizer, same arrivals; checked
against the records' prompt and output lengths, a round that differs is refused), replays them
through the simulated configuration (:data:`SIM_SETUPS`) with the bench model's CPU table, and
prints predicted against measured hit rate, TTFT and JCT (avg, P99) per configuration and
workload: measured as the median over the rounds that ran it, with the range.

Instances as paper_eval runs them: 16,384 KV tokens each (the launcher's CPU default), page 16;
a colocated server or PD instance computes on one core (``OMP_NUM_THREADS=1`` / pinned), and
two routed instances are pinned to a core each, so every instance has a device of its own.
Each workload starts on empty instances (paper_eval serves its workloads one after another on
one start; their prompts share no page).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglang_memserve.bench.paper import EvalSizes

from .config import InstanceSpec, SimConfig
from .paper_workload import Call, paper_calls, to_requests
from .results import mean, percentile
from .simulator import Simulator

KV_TOKENS = 16384  # launch_server's CPU --max-total-tokens
PAGE = 16
CHUNK_TOKENS = 4096  # SGLang's --chunked-prefill-size without a GPU memory figure


@dataclass(frozen=True)
class SimSetup:
    """How a paper_eval configuration (``bench.setups.SETUPS``) runs in the simulator.

    Attributes:
        instances / pd / policy: the cluster (PD: one prefill, one decode).
        cache: prefill / colocated instances reuse KV.
        decode_cache: PD's decode instance reuses KV (stock PD without its decode cache: no).
        kv_return: PD-Caching-3.
        settings: further :class:`SimConfig` fields (the router's flags).
        note: what the simulator does not tell apart.
    """

    instances: int
    pd: bool = False
    policy: str = "round_robin"
    cache: bool = True
    decode_cache: bool = True
    kv_return: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""


SIM_SETUPS: dict[str, SimSetup] = {
    "colo-nocache": SimSetup(1, cache=False),
    "colo-cache": SimSetup(1),
    "colo-stock": SimSetup(1, note="same as colo-cache"),
    "pd-basic": SimSetup(2, pd=True, cache=False, decode_cache=False),
    "pd-caching1": SimSetup(2, pd=True, decode_cache=False),
    "pd-cache": SimSetup(2, pd=True),
    "pd-caching3": SimSetup(2, pd=True, kv_return=True),
    "sglang-pd": SimSetup(2, pd=True, decode_cache=False),
    "sglang-pd-dcache": SimSetup(2, pd=True),
    "colo2-memserve-router": SimSetup(2, policy="memserve", note="no prefill hold"),
    "colo2-memserve-router-stock": SimSetup(2, policy="memserve", note="no prefill hold"),
    "colo2-memserve-router-nohold": SimSetup(2, policy="memserve"),
    "colo2-memserve-router-lpr05": SimSetup(2, policy="memserve",
                                            settings={"load_per_request_s": 0.05},
                                            note="no prefill hold"),
    "colo2-sglang-cache-aware": SimSetup(2, policy="prefix"),
    "colo2-cache-aware-memserve": SimSetup(2, policy="prefix"),
    "colo2-sglang-rr": SimSetup(2, policy="round_robin"),
}


def sim_config(setup: SimSetup, table: str, overhead_s: float = 0.0,
               batch_prefill: bool = False, **extra: Any) -> SimConfig:
    common = {"hbm_tokens": KV_TOKENS, "chunk_tokens": CHUNK_TOKENS,
              "iteration_overhead_s": overhead_s, "batch_prefill": batch_prefill}
    spec = InstanceSpec(prefix_cache=setup.cache, **common)
    dspec = InstanceSpec(prefix_cache=setup.decode_cache, **common)
    return SimConfig(instances=setup.instances, pd=setup.pd, instance=spec,
                     decode_instance=dspec if setup.pd else None, policy=setup.policy,
                     cost_table=table, router_cost_table="cpu-bench", unit_tokens=PAGE,
                     kv_return=setup.kv_return, **setup.settings, **extra)


@dataclass
class Figures:
    """Prefill-side hit rate and per-request TTFT / JCT / TPOT of one run (measured or
    simulated); TPOT over requests of more than one output token. ``busy_s``: the instances'
    CPU seconds (measured) or compute seconds (simulated), summed over instances."""

    hit: float
    ttft: list[float]
    jct: list[float]
    tpot: list[float]
    busy_s: float | None = None

    def stat(self, what: str) -> float:
        v = getattr(self, what[:-4])
        return mean(v) if what.endswith("_avg") else percentile(v, 0.99)


STATS = ("ttft_avg", "ttft_p99", "jct_avg", "jct_p99", "tpot_avg")


def _tpot(ttft: float, jct: float, out: int) -> float | None:
    return (jct - ttft) / (out - 1) if out > 1 else None


def measured(got: dict[str, Any]) -> Figures:
    """One workload of one round (``records`` and ``facts``). The hit rate is the prefill
    side's, ``1 - computed_on_prefill / prompt tokens``: stock PD with its decode cache reports
    decode's hits in the records' ``cached_tokens``, which the simulator's prefill figure is
    not."""
    ok = [r for r in got["records"] if r.get("error") is None]
    prompt = sum(r["prompt_tokens"] for r in ok)
    computed = got.get("facts", {}).get("computed_on_prefill")
    hit = (1 - computed / prompt if computed is not None else
           sum(r["cached_tokens"] for r in ok) / prompt) if prompt else 0.0
    tpot = [_tpot(r["ttft"], r["jct"], r["output_tokens"]) for r in ok]
    cpu = got.get("facts", {}).get("cpu_s")
    return Figures(hit, [r["ttft"] for r in ok], [r["jct"] for r in ok],
                   [t for t in tpot if t is not None], sum(cpu) if cpu else None)


def simulate(sessions: Sequence[Sequence[Call]], setup: SimSetup, table: str,
             **extra: Any) -> tuple[Figures, Simulator]:
    sim = Simulator(sim_config(setup, table, **extra))
    res = sim.run(to_requests(sessions, PAGE))
    done = [j for j in sim.jobs if j.t_end >= 0 and not j.failed]
    tpot = [_tpot(j.t_first, j.t_end, j.req.output_tokens) for j in done]
    return Figures(res.hit_rate, [j.t_first - j.req.arrival_s for j in done],
                   [j.t_end - j.req.arrival_s for j in done],
                   [t for t in tpot if t is not None],
                   sum(i.stats.prefill_s + i.stats.decode_s for i in sim.instances.values())), sim


def check(sessions: Sequence[Sequence[Call]], records: Sequence[dict[str, Any]]) -> str | None:
    """Why ``records`` are not the replay of ``sessions`` (None: they are)."""
    calls = {(c.conv_id, c.turn): c for s in sessions for c in s}
    if len(records) != len(calls):
        return f"{len(records)} records, {len(calls)} calls"
    for r in records:
        c = calls.get((r["conv_id"], r["turn"]))
        if c is None or len(c.prompt) != r["prompt_tokens"] or c.output_tokens != r[
                "output_tokens"]:
            return f"record {r['conv_id']}#{r['turn']} differs"
    return None


def _cell(sim: float, meas: list[float], digits: int = 2) -> str:
    med = statistics.median(meas)
    spread = f" ({min(meas):.{digits}f}-{max(meas):.{digits}f})" if len(meas) > 1 else ""
    return f"{sim:.{digits}f} / {med:.{digits}f}{spread}"


def rows(rounds: Sequence[dict[str, Any]], tok: Any, table: str,
         **extra: Any) -> list[dict[str, Any]]:
    """Per (configuration, workload) in the rounds: the simulated figures and each round's
    measured ones. Raises ValueError when a round's records are not the rebuilt requests."""
    built: dict[tuple[str, str], list[list[Call]]] = {}
    measured_by: dict[tuple[str, str], list[Figures]] = {}
    for rnd in rounds:
        meta = rnd["meta"]
        key = json.dumps(meta["sizes"], sort_keys=True) + str(meta["seed"])
        for cfg, res in rnd["results"].items():
            for w, got in res.get("workloads", {}).items():
                sessions = built.setdefault((key, w), paper_calls(
                    w, EvalSizes(**meta["sizes"]), tok, meta["seed"]))
                why = check(sessions, got["records"])
                if why:
                    raise ValueError(f"{meta.get('source', '?')} {cfg} {w}: {why}")
                measured_by.setdefault((cfg, w), []).append(measured(got))
                built.setdefault(("", w), sessions)
    out = []
    for (cfg, w), meas in measured_by.items():
        setup = SIM_SETUPS.get(cfg)
        if setup is None:
            continue
        fig, sim = simulate(built[("", w)], setup, table, **extra)
        out.append({"config": cfg, "workload": w, "sim": fig, "measured": meas, "setup": setup,
                    "held": sim.held})
    return out


def markdown(table_rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| configuration | workload | rounds | hit rate sim / measured | TTFT avg sim / "
             "measured (s) | TTFT P99 | JCT avg | JCT P99 | TPOT avg (ms) | instances' CPU s / "
             "sim busy s | measured / sim: TTFT avg, JCT avg, TPOT |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table_rows:
        sim, meas = r["sim"], r["measured"]
        cells = [_cell(sim.stat(s), [m.stat(s) for m in meas]) for s in STATS[:-1]]
        cells.append(_cell(sim.stat("tpot_avg") * 1e3, [m.stat("tpot_avg") * 1e3 for m in meas],
                           0))
        cpu = [m.busy_s for m in meas if m.busy_s is not None]
        cells.append(_cell(sim.busy_s or 0.0, cpu, 1) if cpu else f"{sim.busy_s:.1f} / -")
        ratios = [statistics.median(m.stat(s) for m in meas) / sim.stat(s)
                  if sim.stat(s) > 0 else float("nan") for s in ("ttft_avg", "jct_avg", "tpot_avg")]
        lines.append(f"| {r['config']} | {r['workload']} | {len(meas)} | "
                     f"{_cell(sim.hit, [m.hit for m in meas], 3)} | " + " | ".join(cells)
                     + " | " + ", ".join(f"{x:.2f}" for x in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim.paper_validate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("rounds", type=Path, nargs="+", help="paper_eval.py paper-eval.json files")
    p.add_argument("--cost-table", default="cpu-bench", help="the instances' table")
    p.add_argument("--iteration-overhead-s", type=float, default=0.0,
                   help="fixed seconds per prefill chunk and decode step beyond the table's")
    p.add_argument("--batch-prefill", action="store_true",
                   help="queued prompts share a prefill iteration (SGLang's prefill batch)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    from sglang_memserve.model import ensure_model

    rounds = []
    for path in a.rounds:
        rnd = json.loads(path.read_text())
        rnd["meta"]["source"] = path.name
        rounds.append(rnd)
    models = {r["meta"]["model"] for r in rounds}
    if len(models) != 1 or not next(iter(models)).startswith("bench"):
        print(f"error: rounds of the bench model only, got {sorted(models)}", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(str(ensure_model("bench")))
    try:
        out = rows(rounds, tok, a.cost_table, overhead_s=a.iteration_overhead_s,
                   batch_prefill=a.batch_prefill)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown(out))
    if a.json:
        a.json.write_text(json.dumps([{
            "config": r["config"], "workload": r["workload"], "held": r["held"],
            "sim": vars(r["sim"]), "measured": [vars(m) for m in r["measured"]]}
            for r in out]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
