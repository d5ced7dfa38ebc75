"""paper_eval's requests in the simulator: pages, closed loops, the record check, the table."""

from __future__ import annotations

from sglang_memserve.bench.paper import EvalSizes
from sglang_memserve.bench.sessions import trace_sessions
from sglang_memserve.sim.paper_validate import SIM_SETUPS, Figures, check, markdown, simulate
from sglang_memserve.sim.paper_workload import Call, paper_calls, to_requests
from sglang_memserve.workloads.trace import load_trace


def _chat() -> list[list[Call]]:
    """Turn 1 carries turn 0's prompt (20 tokens) and answer (30), then 5 new tokens."""
    p0 = tuple(range(1, 21))
    a0 = tuple(-i for i in range(1, 31))
    p1 = p0 + a0 + (7, 8, 9, 10, 11)
    return [[Call("c", 0, p0, 30, a0, 0.5), Call("c", 1, p1, 4, (-99,) * 4, None)]]


def test_a_follow_up_shares_the_full_pages_of_prompt_and_answer_only() -> None:
    first = to_requests(_chat(), page_tokens=16)[0]
    assert first.follow is not None
    second, think = first.follow
    assert think == 0.0 and second.arrival_s == -1.0  # sent when the answer is complete
    assert (first.tokens, len(first.blocks), first.output_tokens) == (20, 2, 30)
    # 50 tokens of prompt + answer: 3 full pages, the 4th partial and never shared.
    stream = first.blocks + first.output_blocks
    assert len(stream) == 4 and second.blocks[:3] == stream[:3]
    assert second.blocks[3] != stream[3]
    # The second page is full only with the answer's first tokens: the same id in both.
    assert first.blocks[1] == second.blocks[1]


def test_equal_prefixes_in_other_sessions_give_equal_pages() -> None:
    ids = tuple(range(100, 140))
    sessions = [[Call(s, 0, ids + (s_i,), 1, (-1 - s_i,), 0.0)] for s_i, s in enumerate("ab")]
    a, b = to_requests(sessions, page_tokens=16)
    assert a.blocks[:2] == b.blocks[:2] and a.blocks[2] != b.blocks[2]


def test_mooncake_calls_are_paper_evals_trace_sessions() -> None:
    sizes = EvalSizes(trace_requests=12)
    calls = paper_calls("mooncake", sizes, None, seed=0)
    ref = trace_sessions(load_trace(None, limit=12, seed=0), block_tokens=16, speedup=0.5,
                         max_new_tokens=16, max_prompt_tokens=2000)
    assert [c[0].prompt for c in calls] == [tuple(s.calls[0].ids) for s in ref]
    assert [c[0].start_s for c in calls] == [s.start_s for s in ref]
    assert [c[0].output_tokens for c in calls] == [s.calls[0].max_new_tokens for s in ref]


def _records(sessions: list[list[Call]]) -> list[dict]:
    return [{"conv_id": c.conv_id, "turn": c.turn, "prompt_tokens": len(c.prompt),
             "output_tokens": c.output_tokens} for s in sessions for c in s]


def test_records_of_other_prompts_are_refused() -> None:
    sessions = _chat()
    recs = _records(sessions)
    assert check(sessions, recs) is None
    recs[1]["prompt_tokens"] += 1
    assert "differs" in (check(sessions, recs) or "")
    assert check(sessions, recs[:1]) is not None


def test_colocated_cache_hits_the_previous_turn_and_the_table_shows_both_sides() -> None:
    sessions = _chat()
    cached, _ = simulate(sessions, SIM_SETUPS["colo-cache"], "cpu-bench")
    bare, _ = simulate(sessions, SIM_SETUPS["colo-nocache"], "cpu-bench")
    assert cached.hit == 48 / 75  # turn 1's 3 full pages of its 55 tokens; 75 in all
    assert bare.hit == 0.0 and bare.ttft[1] > cached.ttft[1]
    meas = Figures(0.5, [0.1, 0.2], [1.0, 2.0], [0.03], 3.0)
    text = markdown([{"config": "colo-cache", "workload": "chat", "sim": cached,
                      "measured": [meas, meas]}])
    assert "| colo-cache | chat | 2 | 0.640 / 0.500 (0.500-0.500) |" in text
