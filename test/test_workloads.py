"""Workload loaders: the shared data sets when present, the shipped sample otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_memserve.bench.metrics import RequestRecord, summarize
from sglang_memserve.bench.replay import ChatEncoder, ReplayConfig, arrival_times
from sglang_memserve.workloads import load_longdoc, load_sharegpt


def test_shipped_sample_without_shared_data(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # an empty data dir
    convs = load_sharegpt(min_turns=2)
    assert len(convs) >= 10 and all(len(c.user_turns) >= 2 for c in convs)
    docs = load_longdoc(docs=2, questions_per_doc=3, max_context_chars=1000)
    assert len(docs) == 6 and all(len(c.user_turns) == 1 for c in docs)
    # Question-major order: consecutive requests are on different documents.
    assert docs[0].id.split("#")[0] != docs[1].id.split("#")[0]
    assert docs[0].user_turns[0][:200] == docs[2].user_turns[0][:200]  # shared prefix


def test_sharegpt_limits(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 50},
                                      {"from": "gpt", "value": "y"},
                                      {"from": "human", "value": "z"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "only one"}]},
    ]))
    convs = load_sharegpt(f, min_turns=2, max_chars=10)
    assert [c.id for c in convs] == ["a"]
    assert convs[0].user_turns == ("x" * 10, "z")
    # Each user turn keeps the data set's answer to it ("" when the chat ends on the user).
    assert convs[0].reference_answers == ("y", "")


def test_dataset_output_lengths(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    enc = ChatEncoder(AutoTokenizer.from_pretrained(str(tiny_model)))
    long = "the cache keeps the prefix " * 40
    n = len(enc.tok(long, add_special_tokens=False).input_ids)
    assert n > 20
    assert enc.answer_len(long, cap=1000) == n
    assert enc.answer_len(long, cap=16) == 16  # capped
    assert enc.answer_len("", cap=16) == 16  # no reference answer: the cap
    assert enc.answer_len("a", cap=16) >= 1
    with pytest.raises(ValueError, match="output_len"):
        ReplayConfig(output_len="median")


def test_arrivals_are_seeded_poisson() -> None:
    a, b = arrival_times(50, 2.0, seed=3), arrival_times(50, 2.0, seed=3)
    assert a == b and a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:], strict=False))
    assert 15 < a[-1] < 40  # 49 gaps of mean 0.5 s
    assert arrival_times(3, float("inf"), 0) == [0.0, 0.0, 0.0]


def test_summary_counts_failures_and_tiers() -> None:
    ok = RequestRecord("c", 0, 0.0, 0.1, 1.0, 100, 60, {"device": 40, "host": 20})
    bad = RequestRecord("c", 1, 1.0, 0.0, 0.0, 120, 0, error="HTTP 500")
    s = summarize([ok, bad])
    assert s["failed"] == 1 and s["requests"] == 2
    assert s["hit_rate"] == 0.6 and s["computed_prompt_tokens"] == 40
    assert s["cached_by_tier"] == {"device": 40, "host": 20}
