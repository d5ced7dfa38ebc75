"""``sim.validate``: a router_bench run replayed, and the measured service-time figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_memserve.sim.validate import busy_per_request, found_empty, main, workload


def _rec(i: int, sent: float, ttft: float, inst: str, prompt: int = 100) -> dict:
    return {"i": i, "sent": sent, "ttft": ttft, "prompt": prompt, "cached": 0, "error": None,
            "X-MemServe-Instance": inst}


def test_busy_time_is_the_union_of_each_instance_s_intervals() -> None:
    recs = [_rec(0, 0.0, 1.0, "a"), _rec(1, 0.5, 1.0, "a"),  # overlap: [0, 1.5]
            _rec(2, 3.0, 0.5, "a"),  # alone: [3, 3.5]
            _rec(3, 0.0, 2.0, "b")]
    assert busy_per_request(recs) == {"a": (3, pytest.approx(2.0)), "b": (1, pytest.approx(2.0))}
    # 1 arrived while 0 was in flight on 'a'; 3 is alone on 'b' although 'a' is busy.
    assert [r["i"] for r in found_empty(recs)] == [0, 2, 3]
    assert busy_per_request([{**r, "X-MemServe-Instance": None} for r in recs]) == {}


def _run_dir(tmp: Path, configs: list[str], prompts: list[int] | None = None) -> Path:
    args = {"cmd": "hits", "workload": "mooncake", "trace": None, "requests": 60,
            "instances": 2, "block_tokens": 16, "max_prompt_tokens": 2000, "speedup": 8.0}
    reqs = workload(args)
    lens = prompts or [q.tokens for q in reqs]
    (tmp / "kv8192").mkdir()
    for name in configs:
        with open(tmp / "kv8192" / f"{name}-r0.jsonl", "w") as f:
            for q, n in zip(reqs, lens, strict=True):
                f.write(json.dumps(_rec(q.rid, q.arrival_s, 0.2, f"inst-{q.rid % 2}", n)) + "\n")
    summary = {"label": "a label", "instances_cpu_s": 6.0}
    (tmp / "router_bench.json").write_text(json.dumps({"args": args, "sizes": {"8192": {
        "configs": {name: [summary] for name in configs}}}}))
    return tmp


def test_validate_replays_each_configuration_and_each_core_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # the synthetic trace
    run = _run_dir(tmp_path, ["memserve-s95", "sglang-rr"])
    assert main([str(run), "--shared-cores", "none", "1", "--cpu-demand"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 8192 |")]
    # 2 configurations x 2 core settings x (table, measured CPU demand), + a service row each
    # (both name their instances).
    assert len(rows) == 2 * 2 * 2 + 2
    assert "memserve (slack 0.95)" in rows[0] and "round_robin" in rows[4]
    # Shared cores slow the same requests down; the measured-CPU scale slows them further.
    ttft = [float(r.split("|")[7].split("/")[0]) for r in rows[:4]]
    assert ttft[0] < ttft[2] and ttft[0] < ttft[1]
    assert "| 0.200 " not in rows[0] and "/ 0.200 |" in rows[0]  # measured TTFT avg


def test_validate_refuses_records_of_other_prompts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))
    run = _run_dir(tmp_path, ["sglang-rr"], prompts=[7] * 60)
    assert main([str(run)]) == 1
    assert "not the replayed prompts" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
