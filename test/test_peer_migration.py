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


PAGE = 16


def paged(tiny_model: Path, name: str, logs: Path) -> ServerProcess:
    return ServerProcess(["--model-path", str(tiny_model), "--instance-id", name,
                          "--page-size", str(PAGE)], logs, name=name)


@pytest.fixture(scope="module")
def owner(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with paged(tiny_model, "owner", tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="module")
def peer(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with paged(tiny_model, "peer", tmp_path_factory.mktemp("logs")) as s:
        yield s


def test_push_prefix_then_hit_on_peer(owner: ServerProcess, peer: ServerProcess, settled
                                      ) -> None:
    first = generate(owner, PROMPT)
    dst = state(peer)["endpoints"]["control"]
    src = state(owner)["endpoints"]["control"]
    head = PROMPT[: len(PROMPT) // 2]
    reply = rpc_call(src, {"op": "kv_push", "tokens": head, "dst": dst}, timeout_s=60)
    assert reply["sent_pages"] == len(head) // PAGE and reply["skip"] == 0
    # The whole prompt now: only the pages the peer lacks cross the wire (delta only).
    reply = rpc_call(src, {"op": "kv_push", "tokens": PROMPT, "dst": dst}, timeout_s=60)
    whole = len(PROMPT) // PAGE * PAGE
    assert reply["skip"] == len(head) // PAGE * PAGE
    assert reply["sent_pages"] == (whole - reply["skip"]) // PAGE
    assert state(peer)["peer"]["pages_received"] == whole // PAGE
    second = generate(peer, PROMPT)
    assert second["meta_info"]["cached_tokens"] >= whole - PAGE
    assert second["output_ids"] == first["output_ids"]
    again = rpc_call(src, {"op": "kv_push", "tokens": PROMPT, "dst": dst}, timeout_s=60)
    assert again["sent_pages"] == 0
    assert state(peer)["pending_transfers"] == 0
    assert settled(peer.url)["cached"] >= whole // PAGE
    settled(owner.url)


def test_layout_mismatch_is_refused(owner: ServerProcess, memserve_server: ServerProcess,
                                    settled) -> None:
    """Page size 16 -> page size 1: the layouts differ; nothing is sent or indexed."""
    generate(owner, PROMPT)
    dst = state(memserve_server)["endpoints"]["control"]
    before = state(memserve_server)
    with pytest.raises(MemPoolError, match="[Ll]ayout|page"):
        rpc_call(state(owner)["endpoints"]["control"],
                 {"op": "kv_push", "tokens": PROMPT, "dst": dst}, timeout_s=60)
    after = state(memserve_server)
    assert after["pending_transfers"] == 0
    assert after["peer"]["pages_received"] == before["peer"]["pages_received"]
    assert after["protected_tokens"] == 0
    settled(memserve_server.url)  # the pages allocated for the refused transfer went back


def test_push_to_dead_or_wrong_peer_fails_cleanly(owner: ServerProcess, tmp_path, settled
                                                  ) -> None:
    prompt = PROMPT[::-1]
    generate(owner, prompt)
    src = state(owner)["endpoints"]["control"]
    with pytest.raises(MemPoolError):
        rpc_call(src, {"op": "kv_push", "tokens": prompt, "dst": "tcp://127.0.0.1:9"},
                 timeout_s=60)
    # The owner keeps serving and its locks were released (everything evictable again).
    generate(owner, [5, 6, 7])
    assert state(owner)["protected_tokens"] == 0
    settled(owner.url)
