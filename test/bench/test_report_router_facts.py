"""The crossed routing configurations, the router's own figures in the report and the
provenance of re-rendered rounds (no servers; memserve-router's /metrics is replaced by a
stand-in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sglang_memserve.bench import report, setups
from sglang_memserve.bench.setups import SETUPS, Served

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_eval.py"


def test_the_crossed_pair_changes_one_of_router_and_cache() -> None:
    base = {n: SETUPS[n] for n in ("colo2-memserve-router", "colo2-sglang-cache-aware")}
    ms_stock, ca_ms = SETUPS["colo2-memserve-router-stock"], SETUPS["colo2-cache-aware-memserve"]
    assert (ms_stock.router, ms_stock.cache) == (base["colo2-memserve-router"].router, "stock")
    assert (ca_ms.router, ca_ms.cache) == (base["colo2-sglang-cache-aware"].router, "memserve")
    nohold = setups.COLO_ROUTERS[SETUPS["colo2-memserve-router-nohold"].router or ""]
    assert nohold.program == "memserve" and nohold.args[-2:] == ("--prefill-hold-secs", "0")
    lpr = setups.COLO_ROUTERS[SETUPS["colo2-memserve-router-lpr05"].router or ""]
    assert lpr.args[-2:] == ("--load-per-request-secs", "0.05")
    labels = [s.label for s in SETUPS.values()]
    assert len(labels) == len(set(labels))


_SUMMARY = {"jct_avg": 2.0, "jct_p50": 2.0, "jct_p90": 2.0, "jct_p99": 2.0, "ttft_avg": 1.0,
            "ttft_p50": 1.0, "ttft_p90": 1.0, "ttft_p99": 1.0, "tpot_avg": 0.01,
            "hit_rate": 0.0, "requests": 24, "failed": 0, "prompt_tokens": 240,
            "throughput_rps": 1.0}


def _run(router: dict[str, float] | None, cpu: float | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"computed_on_prefill": 10}
    if cpu is not None:
        facts["router_cpu_s"] = cpu
    if router is not None:
        facts["router"] = router
    return {"summary": _SUMMARY, "facts": facts, "records": []}


def _round(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"meta": {"configs": list(runs), "workloads": ["mooncake"],
                     "workload_desc": {"mooncake": "trace"}},
            "results": {c: {"label": SETUPS[c].label, "workloads": {"mooncake": r}}
                        for c, r in runs.items()}}


def test_router_table_averages_cpu_decisions_and_holds_over_rounds() -> None:
    def ms(dec_s: float, n: int, holds: int, held: float) -> dict[str, float]:
        return {"memserve_router_decision_seconds_sum": dec_s,
                "memserve_router_decision_seconds_count": n,
                "memserve_router_prefill_holds_total": holds,
                "memserve_router_prefill_hold_seconds_sum": held}

    r1 = _round({"colo2-memserve-router": _run(ms(0.024, 24, 2, 1.0), 3.0),
                 "colo2-sglang-cache-aware": _run(None, 0.5)})
    r2 = _round({"colo2-memserve-router": _run(ms(0.048, 24, 4, 3.0), 5.0),
                 "colo-cache": _run(None, None)})
    rows = report.router_table([r1, r2])
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]
    assert cells == [
        ["2 x colocated + cache, memserve-router", "mooncake", "4.00 (3.00-5.00)",
         "1.50 (1.00-2.00)", "3.00 (2.00-4.00)", "2.00 (1.00-3.00)", "2"],
        # The Rust router has no counters of ours: only its CPU time.
        ["2 x stock SGLang, sglang-router cache_aware", "mooncake", "0.50", "-", "-", "-", "1"],
    ]  # colo-cache has no router: no row
    assert "### The router's own work" in report.tables_markdown([r1, r2])


def test_router_counters_keep_the_routers_own_series(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
        seen.append(url)
        return {"memserve_router_prefill_holds_total": 3.0,
                "memserve_router_prefill_hold_seconds_bucket": 9.0,
                "memserve_router_prefill_hold_seconds_sum": 1.5,
                "memserve_router_decision_seconds_count": 7.0,
                "memserve_router_decision_seconds_created": 1e9,
                "memserve_router_requests_total": 7.0}

    monkeypatch.setattr(setups, "scrape", fake_scrape)
    served = Served(SETUPS["colo2-memserve-router"], "http://r", "http://a", None, [], 0.0,
                    router_metrics_url="http://r")
    assert served.router_counters() == {"memserve_router_prefill_holds_total": 3.0,
                                        "memserve_router_prefill_hold_seconds_sum": 1.5,
                                        "memserve_router_decision_seconds_count": 7.0}
    assert seen == ["http://r"]
    no_router = Served(SETUPS["colo-cache"], "http://a", "http://a", None, [], 0.0)
    assert no_router.router_counters() == {} and seen == ["http://r"]


def test_render_names_each_rounds_file_in_the_provenance(tmp_path: Path) -> None:
    meta = {"command": "benchmarks/paper_eval.py --quick", "started": "s", "finished": "f",
            "load_before": "1.0", "load_after": "2.0", "model": "m", "page_size": 16,
            "colo_omp_threads": 1, "machine": {"cores": 2, "cpu": "x", "ram_gib": 1.0,
                                               "platform": "p", "python": "3"}}
    files = []
    for name, commit in (("paper-eval-round7.json", "aaa"), ("paper-eval-round8.json", "bbb")):
        rnd = _round({"colo2-memserve-router": _run(None, 1.0)})
        rnd["meta"].update(meta, commit=commit)
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(rnd))
    out = tmp_path / "r.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--render", *map(str, files),
                           "--report", str(out), "--no-plots"], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "* round 1 (`paper-eval-round7.json`): `benchmarks/paper_eval.py --quick` at " \
           "commit `aaa`" in text
    assert "* round 2 (`paper-eval-round8.json`): " in text
