"""memserve-router in PD mode over two prefill instances and one decode instance (real processes,
Mooncake over loopback TCP, PD-Caching-3): the router picks one prefill and one decode per request
and injects SGLang's bootstrap fields itself; conversations stay on the prefill that holds their
prefix, the KV decode returns lands on that prefill, and outputs equal an uncached server's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from router_helpers import generate, start_router, wait_for

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.cluster.process import free_port_pairs
from sglang_memserve.pd.cluster import INSTANCE_ENV


class Pd2P1D:
    def __init__(self, prefills: list[ServerProcess], decode: ServerProcess,
                 router: MemServeRouterProcess) -> None:
        self.prefills, self.decode, self.router = prefills, decode, router


@pytest.fixture(scope="module")
def pd2p1d(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pd2P1D]:
    logs = tmp_path_factory.mktemp("router-2p1d")
    model = ["--model-path", str(tiny_model)]
    boot = free_port_pairs(2)  # each prefill's control port is its bootstrap port + 1
    prefills = [ServerProcess([*model, "--role", "prefill", "--instance-id", f"prefill-{i}",
                               "--disaggregation-bootstrap-port", str(port)], logs,
                              name=f"prefill-{i}", env=dict(INSTANCE_ENV))
                for i, port in enumerate(boot)]
    decode = ServerProcess([*model, "--role", "decode", "--instance-id", "decode-0",
                            "--disaggregation-decode-enable-radix-cache", "--kv-return"], logs,
                           name="decode-0", env=dict(INSTANCE_ENV))
    servers = [*prefills, decode]
    try:
        for s in servers:
            s.start(timeout=300)
        args = ["--pd-disaggregation"]
        for p, port in zip(prefills, boot, strict=True):
            args += ["--prefill", p.url, str(port)]
        router = start_router([*args, "--decode", decode.url], logs)
        try:
            yield Pd2P1D(prefills, decode, router)
        finally:
            router.stop()
    finally:
        for s in servers:
            s.stop()


def _received(server: ServerProcess) -> int:
    info = requests.get(f"{server.url}/server_info", timeout=10).json()
    return int(info["internal_states"][0]["memserve"]["peer"]["pages_received"])


def test_turns_stay_on_their_prefill_and_hit_the_returned_answer(
        pd2p1d: Pd2P1D, reference: ServerProcess, tiny_tokenizer: Any) -> None:
    questions = ["Explain why the sky is blue.", "What is a radix tree?",
                 "Name three rivers.", "Why do cats purr?"]
    prompts = [tiny_tokenizer.encode(q) for q in questions]
    by_id = {f"prefill-{i}": p for i, p in enumerate(pd2p1d.prefills)}
    served: dict[int, str] = {}
    used: set[str] = set()
    for turn in range(2):
        for i, ids in enumerate(prompts):
            before = {k: _received(p) for k, p in by_id.items()}
            out, headers = generate(pd2p1d.router.url, ids)
            ref, _ = generate(reference.url, ids)
            assert out["output_ids"] == ref["output_ids"], (i, turn)
            prefill = headers["X-MemServe-Prefill"]
            used.add(prefill)
            if turn:
                assert prefill == served[i], f"conversation {i} changed prefill"
            else:
                # Decode returns prompt + answer (but its last token) to the prefill that
                # served it: that one receives pages, the other does not.
                wait_for(lambda p=prefill, b=before: _received(by_id[p]) > b[p],
                         what="the KV return to the serving prefill")
                other = next(k for k in by_id if k != prefill)
                assert _received(by_id[other]) == before[other]
            served[i] = prefill
            prompts[i] = ids + out["output_ids"] + tiny_tokenizer.encode("Go on.")
    assert used == set(by_id), "new conversations were spread over both prefills"


def test_route_debug_explains_both_choices(pd2p1d: Pd2P1D) -> None:
    r = requests.post(f"{pd2p1d.router.url}/route", json={"input_ids": [5, 6, 7, 8]},
                      timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prefill"]["choice"] in {"prefill-0", "prefill-1"}
    assert body["decode"]["choice"] == "decode-0"
