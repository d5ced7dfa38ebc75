"""Overload limits without SGLang: the admission gate, and uvicorn (the server SGLang runs) with
the launcher's request guard and read deadline on a trivial app, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn
import uvicorn.config

from sglang_memserve.cluster import free_port
from sglang_memserve.guard import RequestGuard
from sglang_memserve.overload import Admission, Overloaded, OverloadLimits, install_deadline
from sglang_memserve.validate import RequestLimits


def test_admission_bounds_running_and_queued() -> None:
    async def main() -> None:
        gate = Admission(OverloadLimits(max_concurrent=2, max_queued=1, queue_timeout_s=5))
        await gate.acquire()
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert gate.active == 2 and gate.queued == 1
        with pytest.raises(Overloaded) as info:
            await gate.acquire()
        assert info.value.status == 429 and info.value.retry_after_s == 1
        gate.release()  # the slot moves to the waiter
        await asyncio.wait_for(waiter, 1)
        assert gate.active == 2 and gate.queued == 0
        gate.release()
        gate.release()
        assert gate.active == 0
        assert gate.refused == {429: 1, 503: 0}

    asyncio.run(main())


def test_admission_queue_timeout_is_503_and_frees_its_place() -> None:
    async def main() -> None:
        gate = Admission(OverloadLimits(max_concurrent=1, max_queued=1, queue_timeout_s=0.1))
        await gate.acquire()
        with pytest.raises(Overloaded) as info:
            await gate.acquire()
        assert info.value.status == 503
        assert gate.queued == 0 and gate.active == 1
        # A cancelled waiter leaves the queue too.
        t = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert gate.queued == 0
        gate.release()
        assert gate.active == 0

    asyncio.run(main())


def test_unlimited_admits_everything() -> None:
    async def main() -> None:
        gate = Admission(OverloadLimits())
        for _ in range(1000):
            await gate.acquire()
        assert gate.active == 1000

    asyncio.run(main())


@pytest.mark.parametrize("bad", [dict(max_concurrent=-1), dict(max_queued=-2),
                                 dict(queue_timeout_s=0), dict(retry_after_s=0),
                                 dict(read_timeout_s=-1)])
def test_bad_limits_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OverloadLimits(**bad)


async def _slow_app(scope: Any, receive: Any, send: Any) -> None:
    """A generation endpoint that takes 0.5 s (drains the body first, as SGLang does)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"text": "ok"}'})


@pytest.fixture(scope="module")
def guarded() -> Iterator[str]:
    """uvicorn (h11, the launcher's read deadline of 1 s) serving the guard with 2 slots and a
    queue of 2 in front of :func:`_slow_app`, in a thread."""
    saved = dict(uvicorn.config.HTTP_PROTOCOLS)
    assert install_deadline(1.0)
    app = RequestGuard(_slow_app, RequestLimits(), fields={"/generate": frozenset({"text"})},
                       overload=OverloadLimits(max_concurrent=2, max_queued=2,
                                               queue_timeout_s=10, retry_after_s=2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    uvicorn.config.HTTP_PROTOCOLS.clear()
    uvicorn.config.HTTP_PROTOCOLS.update(saved)  # other tests' servers get uvicorn's own


def _post(url: str) -> requests.Response:
    return requests.post(f"{url}/generate", json={"text": "hi"}, timeout=30)


def test_burst_over_the_limit_gets_429_with_retry_after(guarded: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _i: _post(guarded), range(10)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 4 and codes.count(429) >= 1, codes
    assert set(codes) <= {200, 429}, codes
    for r in answers:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "2"
            assert "overloaded" in r.json()["error"]["message"]
    assert _post(guarded).status_code == 200  # still serving


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_slow_headers_are_cut_off_without_blocking_others(guarded: str) -> None:
    sock = _raw(guarded)
    t0 = time.monotonic()
    cut = None
    for b in b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n":
        try:
            sock.sendall(bytes([b]))
        except OSError:
            cut = time.monotonic() - t0
            break
        # Others are served meanwhile.
        if b == ord("H"):
            assert _post(guarded).status_code == 200
        time.sleep(0.1)
        if time.monotonic() - t0 > 5:
            break
    answer = _read_all(sock)
    cut = cut or (time.monotonic() - t0)
    assert b"408" in answer.split(b"\r\n", 1)[0], answer[:200]
    assert b"not received within 1s" in answer
    assert cut < 4.5, cut
    sock.close()


def test_unfinished_body_is_cut_off(guarded: str) -> None:
    sock = _raw(guarded)
    t0 = time.monotonic()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"text\":")
    answer = _read_all(sock)  # returns once the server closes
    assert time.monotonic() - t0 < 4, time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    sock.close()
    assert _post(guarded).status_code == 200


def test_keepalive_connection_serves_several_requests(guarded: str) -> None:
    with requests.Session() as s:
        for _ in range(3):
            r = s.post(f"{guarded}/generate", json={"text": "hi"}, timeout=30)
            assert r.status_code == 200
            time.sleep(0.3)
