"""Token-level ReAct and Mooncake sessions (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_memserve.bench.sessions import SegmentEncoder, react_sessions, trace_sessions
from sglang_memserve.workloads import episode_calls, load_react
from sglang_memserve.workloads.trace import synthetic_trace


@pytest.fixture(scope="module")
def tok(tiny_model: Path):  # noqa: ANN201 -- a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_react_trace_history_prompts_extend_each_other(tok, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # the shipped sample
    episodes, prompts = load_react(limit=4)
    sessions = react_sessions(episodes, prompts, tok, max_new_tokens=12, history="trace")
    assert [s.id for s in sessions] == [e.episode_id for e in episodes]
    for s, ep in zip(sessions, episodes, strict=True):
        assert len(s.calls) == len(ep.steps)
        assert all(not c.append and 1 <= c.max_new_tokens <= 12 for c in s.calls)
        texts = episode_calls(ep, prompts)
        for a, b, text in zip(s.calls, s.calls[1:], texts, strict=False):
            # Segments tokenized one by one: every prompt starts with the previous one's ids
            # less its last segment (the cue), so a prefix cache sees the whole history.
            history = SegmentEncoder(tok).join(text.segments[:-1])
            assert a.ids[:len(history)] == b.ids[:len(history)] == history
            assert len(b.ids) > len(a.ids)
    # Every call of one task starts with the same few-shot prompt.
    fewshot = tok(prompts["factcheck_v1"], add_special_tokens=False).input_ids
    assert all(s.calls[0].ids[:len(fewshot)] == tuple(fewshot)
               for s, e in zip(sessions, episodes, strict=True) if e.task == "factcheck")


def test_react_generated_history_appends_and_respects_the_prompt_limit(
        tok, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))
    episodes, prompts = load_react(limit=2)
    full = react_sessions(episodes, prompts, tok, max_new_tokens=8)
    assert all(c.append for s in full for c in s.calls[1:]) and not full[0].calls[0].append
    first = len(full[0].calls[0].ids)
    cut = react_sessions(episodes, prompts, tok, max_new_tokens=8,
                         max_prompt_tokens=first + 8 + len(full[0].calls[1].ids))
    assert len(cut[0].calls) == 2 < len(full[0].calls)
    with pytest.raises(ValueError, match="history"):
        react_sessions(episodes, prompts, tok, max_new_tokens=8, history="live")


def test_trace_sessions_keep_shared_blocks_and_arrivals() -> None:
    trace = synthetic_trace(20, seed=1)
    sessions = trace_sessions(trace, block_tokens=4, speedup=2.0, max_new_tokens=5,
                              max_prompt_tokens=40)
    assert [s.start_s for s in sessions] == [r.arrival_s / 2.0 for r in trace]
    assert all(len(s.calls[0].ids) <= 40 and 1 <= s.calls[0].max_new_tokens <= 5
               for s in sessions)
    # Every synthetic prompt starts with block 0: the same 4 ids.
    assert len({s.calls[0].ids[:4] for s in sessions}) == 1
    with pytest.raises(ValueError, match="speedup"):
        trace_sessions(trace, block_tokens=4, speedup=0, max_new_tokens=5)
