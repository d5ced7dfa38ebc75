"""Workload loaders: the shared data sets when present, the shipped sample otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_memserve.bench.metrics import RequestRecord, summarize
from sglang_memserve.bench.replay import ChatEncoder, ReplayConfig, arrival_times
from sglang_memserve.workloads import episode_calls, load_longdoc, load_react, load_sharegpt
from sglang_memserve.workloads.react import ReactFormatError


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


def test_react_sample_without_shared_data(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # an empty data dir
    episodes, prompts = load_react(limit=6)
    assert len(episodes) == 6
    # A small limit still mixes the tasks (taken in turn from each).
    assert {e.task for e in episodes} == {"factcheck", "shopping"}
    for ep in episodes:
        calls = episode_calls(ep, prompts)
        assert len(calls) == len(ep.steps) >= 2
        few_shot = prompts[ep.prompt_id]
        assert all(c.text.startswith(few_shot + ep.question) for c in calls)
        for a, b in zip(calls, calls[1:], strict=False):
            # Call i+1 = call i's history + the step call i generated (+ its observation).
            assert b.segments[:len(a.segments) - 1] == a.segments[:-1]
            assert a.expected_output.strip() and a.expected_output.strip() in b.text
            # A live agent's next prompt: this prompt + what it generated + the observation.
            assert a.text + a.expected_output + a.followup == b.text
        assert calls[-1].followup == ""


def _react_files(tmp_path: Path, episodes: list[dict], prompts: dict) -> tuple[Path, Path]:
    t, p = tmp_path / "t.jsonl", tmp_path / "p.json"
    t.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    p.write_text(json.dumps(prompts))
    return t, p


def test_react_fever_format_matches_the_notebook(tmp_path: Path) -> None:
    ep = {"episode_id": "fever/1", "task": "fever", "prompt_id": "f", "question": "Claim: X.",
          "steps": [{"thought": "t1", "action": "Search[X]", "observation": "o" * 50},
                    {"thought": "t2", "action": "Finish[SUPPORTS]", "observation": "done"}]}
    shop = {"episode_id": "webshop/1", "task": "webshop", "prompt_id": "w", "question": "Q",
            "steps": [{"action": "search[a]", "observation": "page"},
                      {"action": "click[b]", "observation": ""}]}
    t, p = _react_files(tmp_path, [ep, shop], {"f": "FEW\n", "w": "SHOT\n"})
    episodes, prompts = load_react(t, p, max_steps=5)
    f_calls = episode_calls(episodes[0], prompts, max_observation_chars=10)
    assert f_calls[0].text == "FEW\nClaim: X.\nThought 1:"
    assert f_calls[0].expected_output == " t1\nAction 1: Search[X]"
    assert f_calls[1].text == ("FEW\nClaim: X.\nThought 1: t1\nAction 1: Search[X]\n"
                               "Observation 1: " + "o" * 10 + "\nThought 2:")
    assert f_calls[0].followup == "\nObservation 1: " + "o" * 10 + "\nThought 2:"
    w_calls = episode_calls(episodes[1], prompts)
    assert w_calls[0].text == "SHOT\nQ\n\nAction:" and w_calls[0].expected_output == " search[a]"
    assert w_calls[1].text == "SHOT\nQ\n\nAction: search[a]\nObservation: page\n\nAction:"
    assert load_react(t, p, tasks=["webshop"])[0][0].episode_id == "webshop/1"
    assert len(load_react(t, p, max_steps=1)[0][0].steps) == 1


def test_react_bad_input_is_a_typed_error(tmp_path: Path) -> None:
    ok = {"episode_id": "e", "task": "fever", "prompt_id": "f", "question": "q",
          "steps": [{"action": "a", "observation": "o"}]}
    t, p = _react_files(tmp_path, [ok], {"other": "x"})
    with pytest.raises(ReactFormatError, match="prompt_id 'f'"):
        load_react(t, p)
    t, p = _react_files(tmp_path, [{"episode_id": "e", "task": "fever"}], {"f": "x"})
    with pytest.raises(ReactFormatError, match=r"t\.jsonl:1"):
        load_react(t, p)
    t.write_text("{not json\n")
    with pytest.raises(ReactFormatError, match="not JSON"):
        load_react(t, p)
    p.write_text("[1, 2]")
    with pytest.raises(ReactFormatError, match="prompt_id -> prompt text"):
        load_react(t, p)
    with pytest.raises(ValueError, match="both"):
        load_react(t)
