"""Overload limits and slow clients against a real MemServe instance (tiny model) and a real
memserve-router in front of it: a burst over the limit gets 429s with ``Retry-After`` and a JSON
message, the rest succeed, and both keep serving; a client that sends its headers byte by byte,
or never finishes its body, is cut off after the read deadline while others are served."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess

READ_TIMEOUT_S = 3
LONG = {"input_ids": list(range(5, 40)),
        "sampling_params": {"max_new_tokens": 96, "ignore_eos": True, "temperature": 0}}
SHORT = {"input_ids": [5, 6, 7, 8], "sampling_params": {"max_new_tokens": 2}}


@dataclass(frozen=True)
class Limited:
    server: ServerProcess
    router: MemServeRouterProcess


@pytest.fixture(scope="module")
def limited(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    logs = tmp_path_factory.mktemp("overload")
    read = ["--request-read-timeout-secs", str(READ_TIMEOUT_S)]
    server = ServerProcess(["--model-path", str(tiny_model), "--instance-id", "limited",
                            "--max-concurrent-requests", "2", "--queue-size", "2", *read],
                           logs, name="limited")
    with server:
        # The router admits fewer than the instance, so what it forwards is never refused.
        router = MemServeRouterProcess(["--worker-urls", server.url, "--log-level", "warning",
                                        "--max-concurrent-requests", "2", "--queue-size", "0",
                                        *read], logs)
        with router:
            yield Limited(server, router)


def _burst(url: str, n: int = 12) -> list[requests.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _i: requests.post(f"{url}/generate", json=LONG, timeout=120),
                             range(n)))


def _check_burst(answers: list[requests.Response]) -> None:
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 2, codes
    for r in answers:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            err = r.json()["error"]
            assert err["code"] == 429 and "overloaded" in err["message"]
        else:
            assert len(r.json()["output_ids"]) == 96


@pytest.mark.parametrize("which", ["instance", "router"])
def test_burst_over_the_limit(limited: Limited, which: str,
                              settled: Callable[[str], dict[str, int]]) -> None:
    url = limited.server.url if which == "instance" else limited.router.url
    _check_burst(_burst(url))
    r = requests.post(f"{url}/generate", json=SHORT, timeout=60)
    assert r.status_code == 200, r.text
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    settled(limited.server.url)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _drain(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_slow_headers_cut_off_at_the_instance(limited: Limited) -> None:
    url = limited.server.url
    sock = _connect(url)
    t0 = time.monotonic()
    served_meanwhile = 0
    header = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        for i, b in enumerate(header):
            sock.sendall(bytes([b]))
            if i % 20 == 0:  # others are served while it dribbles
                r = requests.post(f"{url}/generate", json=SHORT, timeout=30)
                served_meanwhile += r.status_code == 200
            time.sleep(0.05)
            if time.monotonic() - t0 > 2 * READ_TIMEOUT_S:
                break
    except OSError:
        pass
    answer = _drain(sock)
    elapsed = time.monotonic() - t0
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert READ_TIMEOUT_S - 0.5 <= elapsed < READ_TIMEOUT_S + 3, elapsed
    assert served_meanwhile >= 2


@pytest.mark.parametrize("which", ["instance", "router"])
def test_unfinished_body_cut_off(limited: Limited, which: str) -> None:
    url = limited.server.url if which == "instance" else limited.router.url
    sock = _connect(url)
    t0 = time.monotonic()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{\"input_ids\": [1, 2")
    r = requests.post(f"{url}/generate", json=SHORT, timeout=30)
    assert r.status_code == 200, r.text
    answer = _drain(sock)
    elapsed = time.monotonic() - t0
    sock.close()
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:300]
    assert b"within" in answer
    assert elapsed < READ_TIMEOUT_S + 3, elapsed
    assert requests.post(f"{url}/generate", json=SHORT, timeout=30).status_code == 200
