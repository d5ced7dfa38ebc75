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


def _chain(first):  # a closed loop's requests, first to last
    out = [first]
    while out[-1].follow is not None:
        out.append(out[-1].follow[0])
    return out


def test_longdoc_questions_share_their_document_and_nothing_else(no_data: None) -> None:
    from sglang_memserve.sim.workload import longdoc

    reqs = longdoc(docs=3, questions_per_doc=4, unit_tokens=16)
    assert len(reqs) == 12 and [r.arrival_s for r in reqs] == sorted(r.arrival_s for r in reqs)
    by_doc: dict[str, list] = {}
    for r in reqs:
        by_doc.setdefault(r.session.rsplit("#", 1)[0], []).append(r)
    assert len(by_doc) == 3
    heads = {}
    for doc, rs in by_doc.items():
        common = set.intersection(*(set(r.blocks) for r in rs))
        assert len(common) >= 10, doc  # the instruction and document: a long shared prefix
        assert all(r.blocks[:len(common)] == rs[0].blocks[:len(common)] for r in rs)
        assert len({r.blocks[len(common):] for r in rs}) == len(rs)  # questions differ
        heads[doc] = common
    a, b, c = heads.values()
    assert not (a & b) and not (a & c) and not (b & c)


def test_react_calls_grow_by_answer_and_observation_and_share_the_few_shot_prompt(
        no_data: None) -> None:
    from sglang_memserve.sim.workload import react
    from sglang_memserve.workloads.react import load_react

    firsts = react(episodes=6, think_s=0.5, unit_tokens=16)
    episodes, _ = load_react(limit=6)
    assert len(firsts) == 6
    for ep, first in zip(episodes, firsts, strict=True):
        calls = _chain(first)
        assert len(calls) == len(ep.steps) and calls[0].arrival_s >= 0
        for prev, nxt in zip(calls, calls[1:], strict=False):
            carried = prev.blocks + prev.output_blocks
            assert nxt.blocks[:len(carried)] == carried and len(nxt.blocks) > len(carried)
            assert nxt.tokens > prev.tokens + prev.output_tokens and prev.follow[1] == 0.5
    by_prompt: dict[str, list] = {}
    for ep, first in zip(episodes, firsts, strict=True):
        by_prompt.setdefault(ep.prompt_id, []).append(first.blocks)
    shared = [set.intersection(*map(set, b)) for b in by_prompt.values() if len(b) > 1]
    assert shared and all(len(s) >= 2 for s in shared)  # the few-shot prompt's blocks
    if len(by_prompt) > 1:
        tasks = [set(b[0]) for b in by_prompt.values()]
        assert not set.intersection(*tasks)
