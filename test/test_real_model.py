"""The real embedded model (SmolLM2-135M-Instruct) through every serving path: colocated without
a prefix cache, colocated with MemServe's cache, PD-Basic and PD-Caching-3 (both behind
memserve-router), and memserve-router in front of two colocated instances.

On each path: a few factual questions whose greedy answers must name the expected word (ones a
135M model is known to get right), and a three-turn chat whose later turns hit the cache where
the path has one (none where it has not). Greedy outputs must be identical on every path: each
path's outputs are compared with the first path's that ran in this session (the paths run one
after another, one server or cluster at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.demo import replay_chats
from sglang_memserve.pd import PdCluster, PdOptions
from sglang_memserve.pd.client import hit_tokens
from sglang_memserve.workloads import Conversation

FACTS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
)
CHAT: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("And of Germany?", "Berlin"),
    ("And of Italy?", "Rome"),
)
MAX_NEW_TOKENS = 16
# First path's outputs, keyed by (test, prompt): every later path must reproduce them.
REFERENCE: dict[tuple[str, str], list[int]] = {}


@dataclass(frozen=True)
class Serving:
    """A started serving path: where to send requests and what it should report."""

    name: str
    url: str
    cached: bool  # has a prefix cache (later chat turns must hit)
    prefill_url: str | None = None  # PD: the prefill instance (its own hit counter)


def _colocated(cache: str, model: Path, logs: Path) -> Iterator[Serving]:
    server = ServerProcess(["--model-path", str(model), "--memserve-cache", cache], logs,
                           name=f"smollm2-{cache}")
    server.start(timeout=300)
    try:
        yield Serving(f"colocated-{cache}", server.url, cached=cache != "off")
    finally:
        server.stop()


def _pd(stage: str, model: Path, logs: Path) -> Iterator[Serving]:
    options = PdOptions(stage=stage, common_args=("--model-path", str(model)), start_timeout=300)
    with PdCluster(options, logs) as pd:
        yield Serving(f"pd-{stage}", pd.url, cached=stage != "basic", prefill_url=pd.prefill.url)


def _routed(model: Path, logs: Path) -> Iterator[Serving]:
    """memserve-router in front of two colocated MemServe instances."""
    servers = [ServerProcess(["--model-path", str(model)], logs, name=f"smollm2-routed-{i}")
               for i in range(2)]
    try:
        for s in servers:
            s.start(timeout=300)
        with MemServeRouterProcess(["--worker-urls", *(s.url for s in servers)], logs) as r:
            yield Serving("router-colocated", r.url, cached=True)
    finally:
        for s in servers:
            s.stop()


STARTERS = {
    "colocated-off": lambda m, logs: _colocated("off", m, logs),
    "colocated-memserve": lambda m, logs: _colocated("memserve", m, logs),
    "pd-basic": lambda m, logs: _pd("basic", m, logs),
    "pd-caching3": lambda m, logs: _pd("caching3", m, logs),
    "router-colocated": _routed,
}


@pytest.fixture(scope="module", params=[
    "colocated-off",
    "colocated-memserve",
    pytest.param("pd-basic", marks=pytest.mark.slow),
    pytest.param("pd-caching3", marks=pytest.mark.slow),
    "router-colocated",
])
def path(request: pytest.FixtureRequest, smollm2_model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """One serving path at a time (module scope: shared by this module's tests)."""
    yield from STARTERS[request.param](smollm2_model, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def tokenizer(smollm2_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_model))


def chat_ids(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def greedy(url: str, ids: list[int]) -> dict[str, Any]:
    """Greedy ``/generate`` that stops at the model's end of turn."""
    r = requests.post(f"{url}/generate", timeout=300, json={
        "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS}})
    r.raise_for_status()
    return r.json()


def same_as_reference(path: Serving, key: tuple[str, str], output_ids: list[int]) -> None:
    want = REFERENCE.setdefault(key, output_ids)
    assert output_ids == want, f"{path.name}: greedy output of {key[1]!r} differs from the " \
                               f"first path's"


def test_factual_answers(path: Serving, tokenizer: Any) -> None:
    for question, word in FACTS:
        out = greedy(path.url, chat_ids(tokenizer, [{"role": "user", "content": question}]))
        assert word in out["text"], f"{path.name}: {question!r} -> {out['text']!r}"
        same_as_reference(path, ("facts", question), out["output_ids"])


def test_chat_later_turns_hit_the_cache(path: Serving, tokenizer: Any) -> None:
    messages: list[dict[str, str]] = []
    last_prompt = 0
    prefill_hits = hit_tokens(path.prefill_url) if path.prefill_url and path.cached else 0
    for turn, (question, word) in enumerate(CHAT):
        messages.append({"role": "user", "content": question})
        ids = chat_ids(tokenizer, messages)
        out = greedy(path.url, ids)
        text, cached = out["text"], out["meta_info"]["cached_tokens"]
        assert word in text, f"{path.name} turn {turn}: {question!r} -> {text!r}"
        same_as_reference(path, ("chat", question), out["output_ids"])
        if turn > 0 and path.cached:
            # The prompt repeats the whole earlier chat: at least the last turn's prompt hits.
            assert cached >= last_prompt, (path.name, turn, cached, last_prompt)
        elif not path.cached:
            assert cached == 0, (path.name, turn, cached)
        last_prompt = len(ids)
        messages.append({"role": "assistant", "content": text})
    if path.prefill_url and path.cached:
        assert hit_tokens(path.prefill_url) > prefill_hits  # the hits were prefill's own


def test_openai_chat_matches_generate(path: Serving, tokenizer: Any) -> None:
    """The OpenAI chat API (what the demo uses) answers as ``/generate`` on the template."""
    question = FACTS[0][0]
    r = requests.post(f"{path.url}/v1/chat/completions", timeout=300, json={
        "model": "default", "temperature": 0, "max_tokens": MAX_NEW_TOKENS,
        "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    body = r.json()
    want = greedy(path.url, chat_ids(tokenizer, [{"role": "user", "content": question}]))
    assert body["choices"][0]["message"]["content"] == want["text"].strip()
    assert body["usage"]["completion_tokens"] == len(want["output_ids"])


def test_demo_replay_reports_ttft_and_cached_tokens(path: Serving) -> None:
    """The demo's streamed replay: answers, a first-token time within the request's, and cached
    prompt tokens on the later turn where the path caches."""
    lines: list[str] = []
    conv = Conversation("c0", tuple(q for q, _ in CHAT[:2]), ())
    results = replay_chats(path.url, [conv], MAX_NEW_TOKENS, emit=lines.append)
    assert [r.turn for r in results] == [0, 1] and len(lines) == 1 + 3 * 2
    for r, (_, word) in zip(results, CHAT, strict=False):
        assert word in r.answer, (path.name, r)
        assert 0 < r.ttft_s <= r.latency_s and r.completion_tokens > 0
    later = results[1]
    if path.cached:
        assert later.cached_tokens >= results[0].prompt_tokens, (path.name, later)
    else:
        assert later.cached_tokens == 0, (path.name, later)
