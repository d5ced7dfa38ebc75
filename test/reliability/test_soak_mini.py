"""benchmarks/soak.py in miniature: memserve-router in front of a real 1P1D cluster (tiny model),
16 concurrent clients for 60 s mixing /generate and OpenAI chat, streaming and not, multi-turn
sessions and malformed requests, with faults (a prefill frozen past the health timeout, the
router's event connection to prefill cut for 3 s -- it must see the gap and resync from a
snapshot --, the router killed and restarted on its port). Zero lost or hung requests; every failure a clear
error; both instances pass their integrity check and the router's trees equal theirs; the
sampled greedy answers equal a reference instance's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_miniature_with_faults(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "soak"
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--clients", "16",
           "--duration", "60", "--faults", "sigstop,events,router", "--sigstop-s", "6",
           "--model", str(tiny_model), "--verify-share", "0.3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=REPO)
    report = json.loads((out / "soak.json").read_text())
    summary = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["lost"] == 0 and report["hung"] == 0, report["failures"]
    assert report["requests"] >= 40 and report["ok"] >= report["requests"] // 2, summary
    kinds = report["by_kind"]
    for kind in ("generate", "generate-stream", "chat", "chat-stream", "malformed"):
        assert kinds.get(kind, {}).get("ok", 0) > 0, (kind, kinds)
    names = [f["name"] for f in report["faults"]]
    assert names == ["sigstop", "events", "router"], report["faults"]
    for f in report["faults"]:
        assert "failed" not in f["note"], f
        assert f["first_success_s"] is not None and f["lost"] == 0 and f["hung"] == 0, f
    events = report["faults"][1]
    # The router missed messages, saw the seq gap and resynced from a snapshot, promptly.
    assert events["feed"]["gaps"] >= 1 and events["feed"]["resyncs"] >= 1, events
    assert events["resync_s"] is not None and events["resync_s"] <= 5.0, events
    for name, check in report["checks"].items():
        if isinstance(check, dict):
            assert check.get("ok", check.get("equal")), (name, check)
    assert report["verified"] > 0 and report["mismatched"] == 0, report
    # Malformed requests prefill refuses get its 4xx through the PD router, not a 502.
    assert "502" not in report["malformed_status"], report["malformed_status"]
    assert report["malformed_accepted"] == 0, report["malformed_status"]
    # Every malformed request got its 4xx (the router judges it before looking for an
    # instance), and no well-formed one got a 500 (a failed KV transfer is a retry or a 503).
    assert report["malformed_5xx"] == 0, report["malformed_status"]
    assert "500" not in report["status"], (report["status"], report["failed_examples"])
    assert proc.returncode == 0, summary
