"""bench/report.py over rounds that ran different configurations: the routing pair measured in
rounds of its own beside earlier rounds of the other configurations (pure Python)."""

from __future__ import annotations

from typing import Any

import pytest

from sglang_memserve.bench import report
from sglang_memserve.bench.setups import SETUPS, Setup


def _run(jct: float, ttft: float, hit: float) -> dict[str, Any]:
    summary = {"jct_avg": jct, "jct_p50": jct, "jct_p90": jct, "jct_p99": 2 * jct,
               "ttft_avg": ttft, "ttft_p50": ttft, "ttft_p90": ttft, "ttft_p99": 2 * ttft,
               "tpot_avg": 0.01, "hit_rate": hit, "requests": 4, "failed": 0,
               "prompt_tokens": 400, "throughput_rps": 1.0}
    return {"summary": summary, "facts": {"computed_on_prefill": 100}, "records": []}


def _round(runs: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    meta = {"configs": list(runs), "workloads": ["sharegpt"],
            "workload_desc": {"sharegpt": "chats"}}
    return {"meta": meta, "results": {c: {"label": SETUPS[c].label,
                                          "workloads": {"sharegpt": _run(*v)}}
                                      for c, v in runs.items()}}


def test_routing_rows_use_only_rounds_that_ran_both_routers() -> None:
    old = _round({"colo-nocache": (4.0, 2.0, 0.0), "colo-cache": (3.0, 1.0, 0.5)})
    r1 = _round({"colo2-memserve-router": (1.0, 0.5, 0.6),
                 "colo2-sglang-cache-aware": (2.0, 1.0, 0.4)})
    r2 = _round({"colo2-sglang-cache-aware": (2.0, 0.5, 0.4),
                 "colo2-memserve-router": (1.0, 0.5, 0.8)})
    rounds = [old, r1, r2]
    assert report._configs(rounds) == ["colo-nocache", "colo-cache", "colo2-memserve-router",
                                       "colo2-sglang-cache-aware"]
    rows = report.routing_table(rounds)
    assert len(rows) == 3  # header, rule, one workload of the one pair present
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    # JCT avg 0.50 in both rounds; TTFT avg 0.5 and 1.0 -> mean 0.75 (0.50-1.00); hit rates.
    assert cells[1:] == ["sharegpt", "0.50 (0.50-0.50)", "0.50 (0.50-0.50)", "0.75 (0.50-1.00)",
                         "0.75 (0.50-1.00)", "0.70 (0.60-0.80)", "0.40 (0.40-0.40)", "2"]
    md = report.tables_markdown(rounds)
    assert "### Routing: memserve-router vs stock sglang-router" in md
    # The older configurations' ratio still comes from the round that ran them only.
    assert "| colocated + cache vs colocated | sharegpt | 0.75 |" in md
    # Tables take each configuration from its first round.
    assert "| 2 x colocated + cache, memserve-router | 1.000 | 2.000 | 0.500 | 1.000 |" in md


def test_no_routing_section_without_the_pair() -> None:
    rounds = [_round({"colo-nocache": (4.0, 2.0, 0.0), "colo2-memserve-router": (1, 1, 1)})]
    assert report.routing_table(rounds)[2:] == []
    assert "### Routing" not in report.tables_markdown(rounds)


def test_a_router_needs_two_colocated_instances() -> None:
    with pytest.raises(ValueError, match="router"):
        Setup("bad", "bad", None, "stock", "sglang-cache-aware", 1)
    with pytest.raises(ValueError, match="router"):
        Setup("bad", "bad", "caching1", "stock", "memserve", 2)
    with pytest.raises(ValueError, match="router"):
        Setup("bad", "bad", None, "stock", "no-such-router", 2)
    assert SETUPS["colo2-memserve-router"].topology == "routed"
