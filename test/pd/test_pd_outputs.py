"""Greedy outputs through a 1P1D cluster (router -> prefill -> Mooncake TCP -> decode) are
token-identical to a colocated instance without a prefix cache, for PD-Basic and for
PD-Caching-1+2; with caching on, later turns hit prefill's cache."""

from __future__ import annotations

from typing import Any

import pytest

from sglang_memserve.bench.replay import ReplayConfig, replay
from sglang_memserve.cluster import ServerProcess
from sglang_memserve.pd import PdCluster
from sglang_memserve.pd.client import generate, hit_tokens
from sglang_memserve.workloads import Conversation, load_sharegpt

STAGES = ["pd_basic", "pd_cached"]
CFG = ReplayConfig(rate=float("inf"), max_new_tokens=12)


def conversations(n: int = 3, turns: int = 3) -> list[Conversation]:
    return load_sharegpt(limit=n, min_turns=turns, max_turns=turns, max_chars=300)


def replay_outputs(url: str, tok: Any, convs: list[Conversation]):
    records = replay(url, convs, tok, CFG)
    assert all(r.error is None for r in records), [r.error for r in records if r.error]
    assert len(records) == sum(len(c.user_turns) for c in convs)
    return records


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    texts = ["Hello, how are you today?",
             "Explain disaggregated inference in one paragraph. " * 6,
             "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 12]
    return [list(tokenizer(t).input_ids) for t in texts]


@pytest.mark.parametrize("stage", STAGES)
def test_single_requests_identical(stage: str, request: pytest.FixtureRequest,
                                   reference: ServerProcess, prompts: list[list[int]]) -> None:
    pd: PdCluster = request.getfixturevalue(stage)
    for ids in prompts:
        want = generate(reference.url, ids, 24)["output_ids"]
        got = generate(pd.url, ids, 24)
        assert got["output_ids"] == want, f"{stage}: {len(ids)}-token prompt diverged"
        assert got["meta_info"]["prompt_tokens"] == len(ids)
    # The same prompt again: a cache hit on the caching cluster must not change the output.
    again = generate(pd.url, prompts[-1], 24)["output_ids"]
    assert again == generate(reference.url, prompts[-1], 24)["output_ids"]


@pytest.mark.parametrize("stage", STAGES)
def test_conversation_replay_identical(stage: str, request: pytest.FixtureRequest,
                                       reference: ServerProcess, tokenizer: Any) -> None:
    pd: PdCluster = request.getfixturevalue(stage)
    convs = conversations()
    want = {(r.conv_id, r.turn): r.output_ids
            for r in replay_outputs(reference.url, tokenizer, convs)}
    hits_before = hit_tokens(pd.prefill.url) if stage == "pd_cached" else 0
    records = replay_outputs(pd.url, tokenizer, convs)
    got = {(r.conv_id, r.turn): r.output_ids for r in records}
    assert got == want
    later = [r for r in records if r.turn > 0]
    if stage == "pd_basic":
        assert all(r.cached_tokens == 0 for r in records)
    else:
        # Every later turn carries the previous prompt + answer: it must hit.
        assert all(r.cached_tokens > 0 for r in later), [(r.turn, r.cached_tokens) for r in later]
        # ... on prefill itself (meta_info reports the larger of prefill's and decode's hit).
        assert hit_tokens(pd.prefill.url) - hits_before > 0
