"""The simulator's workloads come from the project's loaders and keep their sharing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_memserve.sim import mooncake, sharegpt
from sglang_memserve.workloads.trace import load_trace, trace_prompts


@pytest.fixture()
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # the synthetic trace


def test_scaled_mooncake_prompts_match_router_bench_prompts(no_data: None) -> None:
    prompts = [p[:300] for p in trace_prompts(load_trace(limit=200), block_tokens=16)]
    reqs = mooncake(limit=200, block_tokens=16, max_prompt_tokens=300, output_tokens=1)
    assert [r.tokens for r in reqs] == [len(p) for p in prompts]
    assert all(len(r.blocks) == -(-r.tokens // 16) and r.output_tokens == 1 for r in reqs)


def test_replicas_keep_only_the_shared_block_in_common(no_data: None) -> None:
    one = mooncake(limit=None)
    two = mooncake(replicas=2)
    assert len(two) == 2 * len(one)
    ids_by_copy: list[set[int]] = [set(), set()]
    for r in two:
        # A request of copy c has ids shifted by c * (max id + 1), block 0 excepted.
        copy = 0 if r.blocks[-1] <= max(b for q in one for b in q.blocks) else 1
        ids_by_copy[copy].update(r.blocks)
    assert ids_by_copy[0] & ids_by_copy[1] == {0}


def test_sharegpt_turns_extend_the_previous_prompt_and_answer() -> None:
    firsts = sharegpt(conversations=5, unit_tokens=16)
    assert len(firsts) == 5
    r = firsts[0]
    n = 0
    while r.follow is not None:
        nxt, think = r.follow
        assert nxt.blocks[:len(r.blocks) + len(r.output_blocks)] == r.blocks + r.output_blocks
        assert think == 5.0 and nxt.arrival_s < 0  # set when the previous turn ends
        r, n = nxt, n + 1
    assert n >= 1
