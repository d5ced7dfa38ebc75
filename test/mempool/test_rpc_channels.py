"""rpc_call keeps one connection per peer between calls: reused after an answered request,
closed after a timeout (a late reply must not reach the next call), thread-safe, bounded, and
a peer restarted on the same endpoint is reached again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sglang_memserve.mempool import rpc
from sglang_memserve.mempool.errors import TransferTimeout
from sglang_memserve.mempool.rpc import RpcServer, rpc_call


def _server(name: str = "srv", port: int = 0) -> RpcServer:
    def slow(msg: dict) -> dict:
        time.sleep(float(msg["sleep"]))
        return {"v": msg["v"]}

    return RpcServer(name, "127.0.0.1", port, {"echo": lambda m: {"v": m["v"]}, "slow": slow},
                     slow_ops=frozenset({"slow"}), auth=None)


@pytest.fixture
def server() -> Iterator[RpcServer]:
    s = _server()
    yield s
    s.close()


def _echo(endpoint: str, v: object, **kw: object) -> object:
    return rpc_call(endpoint, {"op": "echo", "v": v}, timeout_s=5, auth=None, **kw)["v"]


def test_sequential_calls_share_one_connection(server: RpcServer) -> None:
    opened = rpc._CONTEXT.opened
    assert [_echo(server.endpoint, i) for i in range(20)] == list(range(20))
    assert rpc._CONTEXT.opened - opened == 1
    assert rpc._CONTEXT.idle(server.endpoint) == 1


def test_a_late_reply_never_reaches_the_next_call(server: RpcServer) -> None:
    with pytest.raises(TransferTimeout):
        rpc_call(server.endpoint, {"op": "slow", "v": "late", "sleep": 0.5}, timeout_s=0.1,
                 auth=None)
    assert rpc._CONTEXT.idle(server.endpoint) == 0  # the timed-out socket was closed
    time.sleep(0.8)  # the server has answered the slow call by now
    assert _echo(server.endpoint, "fresh") == "fresh"


def test_concurrent_callers_get_their_own_replies(server: RpcServer) -> None:
    opened = rpc._CONTEXT.opened
    wrong: list[tuple[int, int, object]] = []

    def caller(t: int) -> None:
        for i in range(30):
            got = _echo(server.endpoint, [t, i])
            if got != [t, i]:
                wrong.append((t, i, got))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not wrong
    assert rpc._CONTEXT.opened - opened <= 8  # at most one per concurrent caller
    assert rpc._CONTEXT.idle(server.endpoint) <= rpc.MAX_IDLE_PER_ENDPOINT


def test_a_peer_restarted_on_the_same_endpoint_is_reached_again() -> None:
    first = _server("first")
    port = int(first.endpoint.rsplit(":", 1)[1])
    assert _echo(first.endpoint, 1, expect_instance="first") == 1
    first.close()
    second = _server("second", port)
    try:
        assert rpc._CONTEXT.idle(second.endpoint) == 1  # the kept connection is the one used
        assert _echo(second.endpoint, 2, expect_instance="second") == 2
    finally:
        second.close()


def test_least_recently_used_endpoints_are_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "MAX_ENDPOINTS", 2)
    servers = [_server(f"s{i}") for i in range(3)]
    try:
        for s in servers:
            assert _echo(s.endpoint, s.instance_id) == s.instance_id
        assert [rpc._CONTEXT.idle(s.endpoint) for s in servers] == [0, 1, 1]
    finally:
        for s in servers:
            s.close()
