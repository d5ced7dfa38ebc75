"""TTFT by stage (benchmarks/ttft_stages.py) and the timeline records the plugin keeps."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ttft_stages  # noqa: E402


def _pair(room: int, t: float, n: int, held: float = 0.0) -> tuple[dict, dict]:
    p = {"bootstrap_room": room, "input_len": n, "scheduler_recv": t + 0.010,
         "wait_queue_entry": t + 0.030, "forward_entry": t + 0.040 + held, "prefill_finished": t + 0.140 + held,
         "prefill_kv_transfer_finish": t + 0.150 + held}
    d = {"bootstrap_room": room, "input_len": n, "wait_queue_entry": t + 0.155 + held,
         "forward_entry": t + 0.165 + held, "decode_prebuilt_finish": t + 0.185 + held}
    return p, d


def test_stages_add_up_to_the_clients_ttft_and_follow_each_request() -> None:
    wall0 = 1000.0
    p1, d1 = _pair(7, wall0 + 1.0, 100)
    p2, d2 = _pair(8, wall0 + 2.0, 300, held=0.25)
    warm, _ = _pair(9, wall0 - 30.0, 100)  # the router's readiness probe, before the replay
    records = [{"turn": 0, "sent_at": 1.0, "ttft": 0.200, "prompt_tokens": 100, "error": None},
               {"turn": 1, "sent_at": 2.0, "ttft": 0.460, "prompt_tokens": 300, "error": None},
               {"turn": 2, "sent_at": 3.0, "ttft": 0.0, "prompt_tokens": 50, "error": "HTTP 500"}]
    joined = ttft_stages.join(records, wall0, [warm, p2, p1], [d1, d2])
    assert [j["turn"] for j in joined] == [0, 1]
    for j in joined:
        assert sum(j["stages"].values()) == pytest.approx(j["ttft"])
    first, second = (j["stages"] for j in joined)
    assert first["prefill queued"] == pytest.approx(0.010)
    assert second["prefill queued"] == pytest.approx(0.26)  # held for a return
    assert first["prefill forward"] == pytest.approx(0.100)
    assert first["to prefill"] == pytest.approx(0.010)
    assert first["to client"] == pytest.approx(0.015)
    s = ttft_stages.summary(joined)
    assert s["requests"] == 2 and s["later_turns"] == 1
    assert s["mean_ms"]["prefill queued"] == pytest.approx(135.0)
    assert s["later_mean_ms"]["TTFT"] == pytest.approx(460.0)


def test_a_request_missing_a_stamp_or_its_decode_record_is_left_out() -> None:
    p, d = _pair(1, 10.0, 64)
    del d["forward_entry"]
    rec = [{"turn": 0, "sent_at": 0.0, "ttft": 0.2, "prompt_tokens": 64, "error": None}]
    assert ttft_stages.join(rec, 10.0, [p], [d]) == []
    p2, _ = _pair(2, 10.0, 64)
    assert ttft_stages.join(rec, 10.0, [p2], []) == []
    assert ttft_stages.summary([]) == {"requests": 0, "mean_ms": {}, "later_turns": 0,
                                       "later_mean_ms": {}}


def test_the_plugin_keeps_a_finished_requests_stamps_once() -> None:
    from sglang.srt.observability.req_time_stats import convert_time_to_realtime

    from sglang_memserve import timeline

    timeline.clear()
    stats = SimpleNamespace(disagg_mode_str=lambda: "prefill", scheduler_recv_time=5.0,
                            forward_entry_time=6.5, completion_time=0.0)
    req = SimpleNamespace(rid="r1", bootstrap_room=42, origin_input_ids=[1, 2, 3],
                          output_ids=[4], cached_tokens=2, time_stats=stats)
    timeline.record(None, req)
    timeline.record(None, req)  # the overlap schedule logs a request twice
    (rec,) = timeline.snapshot()
    assert rec["rid"] == "r1" and rec["bootstrap_room"] == 42 and rec["input_len"] == 3
    assert rec["scheduler_recv"] == pytest.approx(convert_time_to_realtime(5.0))
    assert rec["forward_entry"] - rec["scheduler_recv"] == pytest.approx(1.5)
    assert "completion" not in rec  # unset stamps are left out
    timeline.clear()
    assert timeline.snapshot() == []
