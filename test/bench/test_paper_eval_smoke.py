"""benchmarks/paper_eval.py --smoke end to end: real servers (one colocated, and two behind
memserve-router / stock sglang-router cache_aware; --smoke starts two configurations at once),
every workload, the report and its plots, and a re-render that keeps the report's prose (so the
harness cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "paper_eval.py"


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def test_smoke_runs_every_workload_and_writes_the_report(tmp_path: Path,
                                                         tiny_model: Path) -> None:
    data = tmp_path / "no-data"
    data.mkdir()
    env = {**os.environ, "MEMSERVE_DATA_DIR": str(data)}  # the package's samples
    out = tmp_path / "out"
    proc = _run(["--smoke", "--out", str(out)], env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((out / "paper-eval.json").read_text())
    meta, res = run["meta"], run["results"]
    assert meta["workloads"] == ["sharegpt", "longdoc", "react", "mooncake"]
    routed = ("colo2-memserve-router", "colo2-sglang-cache-aware")
    assert set(res) == {"colo-nocache", "colo-cache", *routed}
    for config in res.values():
        for w in meta["workloads"]:
            s = config["workloads"][w]["summary"]
            assert s["failed"] == 0 and s["requests"] == meta["workload_requests"][w] > 0
            assert all(r["ttft"] > 0 and r["jct"] >= r["ttft"]
                       for r in config["workloads"][w]["records"])
    nocache, cache = res["colo-nocache"]["workloads"], res["colo-cache"]["workloads"]
    for w in meta["workloads"]:
        assert nocache[w]["summary"]["hit_rate"] == 0.0
        # The same requests for both configurations.
        for c in ("colo-cache", *routed):
            assert res[c]["workloads"][w]["summary"]["prompt_tokens"] == \
                nocache[w]["summary"]["prompt_tokens"], (c, w)
    # Shared prefixes: a ReAct episode's growing history, a chat's earlier turns, the synthetic
    # trace's shared first block; the cache computes fewer prompt tokens on prefill.
    for w in ("sharegpt", "react", "mooncake"):
        assert cache[w]["summary"]["hit_rate"] > 0.1, w
        assert cache[w]["facts"]["computed_on_prefill"] < \
            nocache[w]["facts"]["computed_on_prefill"], w
    # Behind a router the work counters are the sum over both instances: what the client was told
    # each request computed (prompt - cached tokens), wherever it was routed.
    for c in routed:
        assert set(res[c]["state"]["metrics"]) == {"inst-0", "inst-1"}
        # Measured (a handful of requests may cost the Rust router less than a clock tick).
        assert all(res[c]["workloads"][w]["facts"]["router_cpu_s"] >= 0
                   for w in meta["workloads"])
        for w in meta["workloads"]:
            run_w = res[c]["workloads"][w]
            assert run_w["facts"]["computed_on_prefill"] == \
                sum(r["computed_tokens"] for r in run_w["records"]), (c, w)
        for w in ("sharegpt", "react"):
            assert res[c]["workloads"][w]["summary"]["hit_rate"] > 0.1, (c, w)
    md = (out / "paper-eval.md").read_text()
    assert "| colocated + cache vs colocated | react |" in md and "### Provenance" in md
    assert "### Routing: memserve-router vs stock sglang-router" in md
    assert "| 2 x colocated + cache, memserve-router vs 2 x stock SGLang, sglang-router " \
           "cache_aware | sharegpt |" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "paper-eval-cdf-react.png" in pngs and "paper-eval-ratios.png" in pngs
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # Re-render from the JSON (two copies: two rounds) into a report with prose of its own.
    report = tmp_path / "docs" / "eval.md"
    report.parent.mkdir()
    report.write_text("# Title\n\nProse kept.\n<!-- paper-eval:tables -->\nold\n"
                      "<!-- /paper-eval:tables -->\nTail kept.\n")
    second = tmp_path / "second.json"
    second.write_text((out / "paper-eval.json").read_text())
    proc = _run(["--render", str(out / "paper-eval.json"), str(second), "--report", str(report),
                 "--no-plots"], env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Title\n\nProse kept.\n") and text.endswith("Tail kept.\n")
    assert "\nold\n" not in text and "2 round(s)" in text and "Every round's averages" in text
