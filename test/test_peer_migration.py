"""Peer-to-peer prefix migration between two real MemServe instances: the owner pushes a cached
prefix's KV over Mooncake (TCP, loopback) into the other's SGLang KV pool and tree, which then
serves the prompt from cache with unchanged greedy output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.mempool import MemPoolError
from sglang_memserve.mempool.rpc import rpc_call

PROMPT = [((i * 37) % 900) + 10 for i in range(300)]
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


def state(server: ServerProcess) -> dict:
    info = requests.get(f"{server.url}/server_info", timeout=30).json()
    return info["internal_states"][0]["memserve"]


def generate(server: ServerProcess, ids: list[int]) -> dict:
    r = requests.post(f"{server.url}/generate", timeout=120,
                      json={"input_ids": ids, "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def owner(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-path", str(tiny_model), "--instance-id", "owner"],
                       tmp_path_factory.mktemp("logs"), name="owner") as s:
        yield s


def test_push_prefix_then_hit_on_peer(owner: ServerProcess, memserve_server: ServerProcess
                                      ) -> None:
    first = generate(owner, PROMPT)
    dst = state(memserve_server)["endpoints"]["control"]
    src = state(owner)["endpoints"]["control"]
    reply = rpc_call(src, {"op": "kv_push", "tokens": PROMPT, "dst": dst}, timeout_s=60)
    assert reply["sent_pages"] == len(PROMPT)  # page size 1: one page per token
    peer = state(memserve_server)["peer"]
    assert peer["pages_received"] >= len(PROMPT)
    second = generate(memserve_server, PROMPT)
    assert second["meta_info"]["cached_tokens"] >= len(PROMPT) - 1
    assert second["output_ids"] == first["output_ids"]
    # Pushing again moves nothing: the peer already has every page (delta only).
    again = rpc_call(src, {"op": "kv_push", "tokens": PROMPT, "dst": dst}, timeout_s=60)
    assert again["sent_pages"] == 0 and again["skip"] == len(PROMPT)
    assert state(memserve_server)["pending_transfers"] == 0


def test_push_to_dead_or_wrong_peer_fails_cleanly(owner: ServerProcess, tmp_path) -> None:
    prompt = PROMPT[::-1]
    generate(owner, prompt)
    src = state(owner)["endpoints"]["control"]
    with pytest.raises(MemPoolError):
        rpc_call(src, {"op": "kv_push", "tokens": prompt, "dst": "tcp://127.0.0.1:9"},
                 timeout_s=60)
    # The owner keeps serving and its locks were released (everything evictable again).
    generate(owner, [5, 6, 7])
    assert state(owner)["protected_tokens"] == 0
