"""The control channel's slow ops: a handler that waits on another instance does not block the
channel (two instances pushing to each other must not deadlock)."""

from __future__ import annotations

import threading
import time

from sglang_memserve.mempool.rpc import RpcServer, rpc_call


def test_cross_calls_between_two_channels_do_not_deadlock() -> None:
    servers: dict[str, RpcServer] = {}

    def push(peer: str) -> dict:
        # Like kv_push: the handler itself calls the peer's channel and waits for its answer.
        out = rpc_call(servers[peer].endpoint, {"op": "prepare"}, timeout_s=5)
        return {"peer_said": out["instance"]}

    for name, peer in (("a", "b"), ("b", "a")):
        servers[name] = RpcServer(name, "127.0.0.1", 0, {
            "push": lambda _m, p=peer: push(p),
            "prepare": lambda _m: {"ready": True}}, slow_ops=frozenset({"push"}))
    try:
        results: dict[str, dict] = {}

        def call(name: str) -> None:
            results[name] = rpc_call(servers[name].endpoint, {"op": "push"}, timeout_s=10)

        threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert results["a"]["peer_said"] == "b" and results["b"]["peer_said"] == "a"
        assert time.monotonic() - t0 < 5  # no timeout was needed to break a deadlock
        # The fast ops kept working alongside.
        assert rpc_call(servers["a"].endpoint, {"op": "prepare"}, timeout_s=5)["ready"]
    finally:
        for s in servers.values():
            s.close()
