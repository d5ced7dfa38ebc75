"""PD-Caching-3: when a request ends on decode, the KV of its prompt and generated tokens flows back
to the prefill instance (MemPool transfer_with_insert over Mooncake), so the next turn of the
conversation -- whose prompt carries that answer -- hits on prefill for the answer too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.pd import PdCluster, PdOptions

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def memserve(server: ServerProcess) -> dict:
    info = requests.get(f"{server.url}/server_info", timeout=30).json()
    return info["internal_states"][0]["memserve"]


def generate(url: str, ids: list[int]) -> list[int]:
    r = requests.post(f"{url}/generate", timeout=120,
                      json={"input_ids": ids, "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


def wait_received(prefill: ServerProcess, at_least: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        peer = memserve(prefill)["peer"]
        if peer["pages_received"] >= at_least or time.monotonic() > deadline:
            return peer
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pd_return(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdCluster]:
    options = PdOptions(stage="caching3", common_args=("--model-path", str(tiny_model)))
    with PdCluster(options, tmp_path_factory.mktemp("pd-caching3")) as pd:
        yield pd


def test_generated_kv_returns_to_prefill_and_next_turn_hits(pd_return: PdCluster,
                                                            reference: ServerProcess,
                                                            tokenizer) -> None:
    assert memserve(pd_return.decode)["kv_return"] is True
    turn1 = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain why the sky is blue, in detail please."}],
        tokenize=True, add_generation_prompt=True, return_dict=False)
    out1 = generate(pd_return.url, turn1)
    assert out1 == generate(reference.url, turn1)
    # Decode pushes prompt + answer (minus its last token, which has no KV yet) to prefill.
    pushed = len(turn1) + len(out1) - 1
    peer = wait_received(pd_return.prefill, pushed - len(turn1))
    assert peer["pages_received"] >= len(out1) - 1, peer
    assert memserve(pd_return.decode)["peer"]["pushes"] >= 1
    follow = tokenizer(f"{tokenizer.eos_token}\n<|user|>\nAnd at sunset?{tokenizer.eos_token}\n"
                       "<|assistant|>\n", add_special_tokens=False).input_ids
    turn2 = turn1 + out1 + follow
    before = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"]
    out2 = generate(pd_return.url, turn2)
    assert out2 == generate(reference.url, turn2)
    hit = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"] - before
    # Without the return, prefill could only have matched turn 1's prompt.
    assert hit >= pushed - 1 > len(turn1)
    assert memserve(pd_return.prefill)["pending_transfers"] == 0


def test_next_turn_sent_at_once_hits_on_the_returned_answer(pd_return: PdCluster,
                                                           reference: ServerProcess,
                                                           tokenizer, settled) -> None:
    """No pause between a reply and the next turn: that turn reaches prefill while the return is
    in flight, and prefill holds it until the answer is indexed (``PeerService.gate``)."""
    for topic in ("rainbows", "tides", "volcanoes"):
        turn1 = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Tell me how {topic} form, step by step."}],
            tokenize=True, add_generation_prompt=True, return_dict=False)
        out1 = generate(pd_return.url, turn1)
        follow = tokenizer(f"{tokenizer.eos_token}\n<|user|>\nWhy?{tokenizer.eos_token}\n"
                           "<|assistant|>\n", add_special_tokens=False).input_ids
        turn2 = turn1 + out1 + follow
        before = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"]
        out2 = generate(pd_return.url, turn2)  # at once: no wait for the return
        hit = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"] - before
        assert hit >= len(turn1) + len(out1) - 1, (topic, hit, len(turn1), len(out1))
        assert out2 == generate(reference.url, turn2)
    settled(pd_return.prefill.url)
    settled(pd_return.decode.url)


def test_concurrent_answers_return_through_the_staging_buffer(pd_return: PdCluster,
                                                              reference: ServerProcess,
                                                              tokenizer, settled) -> None:
    """Answers decoded side by side take turns at decode's allocator, so each one's pages are
    scattered; the return gathers them into the staging buffer (one Mooncake block per
    destination run, ``cache/staging.py``). The gathered KV must be the right KV: every next
    turn hits on prefill for the whole answer and decodes exactly as a server without a cache."""
    from concurrent.futures import ThreadPoolExecutor

    topics = ("glaciers", "comets", "coral reefs", "auroras")
    turns1 = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Describe {t} to a child, in four sentences."}],
        tokenize=True, add_generation_prompt=True, return_dict=False) for t in topics]
    staged0 = memserve(pd_return.decode)["peer"]["write"]["bytes_staged"]
    received0 = memserve(pd_return.prefill)["peer"]["pages_received"]
    with ThreadPoolExecutor(len(topics)) as pool:
        outs1 = list(pool.map(lambda ids: generate(pd_return.url, ids), turns1))
    wait_received(pd_return.prefill, received0 + sum(len(o) - 1 for o in outs1))
    write = memserve(pd_return.decode)["peer"]["write"]
    assert write["bytes_staged"] > staged0, write
    assert write["blocks_sent"] < write["blocks_planned"], write
    follow = tokenizer(f"{tokenizer.eos_token}\n<|user|>\nAnd then?{tokenizer.eos_token}\n"
                       "<|assistant|>\n", add_special_tokens=False).input_ids
    for turn1, out1 in zip(turns1, outs1, strict=True):
        assert out1 == generate(reference.url, turn1)
        turn2 = turn1 + out1 + follow
        before = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"]
        out2 = generate(pd_return.url, turn2)
        hit = memserve(pd_return.prefill)["counters"]["hit_tokens"]["device"] - before
        assert hit >= len(turn1) + len(out1) - 1, (hit, len(turn1), len(out1))
        assert out2 == generate(reference.url, turn2)
    settled(pd_return.prefill.url)
    settled(pd_return.decode.url)


def test_prefill_dies_kv_return_fails_cleanly_and_restart_rejoins(
        pd_return: PdCluster, reference: ServerProcess, settled) -> None:
    """Prefill dies while decode generates: the request still completes on decode, the KV return
    to the dead prefill fails within the bound and leaks nothing on decode; a restarted prefill
    (same address and bootstrap port) rejoins, serves identical outputs and receives returns."""
    ids = list(range(40, 140))
    failures = memserve(pd_return.decode)["peer"]["push_failures"]
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": 400, "ignore_eos": True}}
    with requests.post(f"{pd_return.url}/generate", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith(b"data:"))  # decode is generating
        pd_return.prefill.kill()
        done = [line for line in lines if line.startswith(b"data:")]
    assert done[-1].strip() == b"data: [DONE]"  # decode finished the request without prefill
    deadline = time.monotonic() + 30
    while memserve(pd_return.decode)["peer"]["push_failures"] == failures:
        assert time.monotonic() < deadline, "the KV return to a dead prefill never resolved"
        time.sleep(0.2)
    settled(pd_return.decode.url)
    assert memserve(pd_return.decode)["protected_tokens"] == 0

    pd_return.prefill.start()  # same port, same bootstrap port: the router's worker is back
    deadline = time.monotonic() + 60
    while True:
        try:
            out = generate(pd_return.url, ids)
            break
        except (AssertionError, requests.RequestException):
            assert time.monotonic() < deadline, "the restarted prefill never served again"
            time.sleep(1.0)
    assert out == generate(reference.url, ids)
    peer = wait_received(pd_return.prefill, 1)
    assert peer["pages_received"] >= 1, peer  # KV returns flow to the new prefill process
    settled(pd_return.prefill.url)
    settled(pd_return.decode.url)
