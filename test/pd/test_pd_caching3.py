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
