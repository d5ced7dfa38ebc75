"""Slow-loris at the router: a request whose headers arrive byte by byte gets 408 and its
connection is closed within ``--header-read-timeout-secs``; other clients are served meanwhile;
an idle keep-alive connection is not cut (the deadline runs from a request's first byte). A
real memserve-router process over real sockets, in front of a stand-in instance."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import requests

from sglang_memserve.cluster import MemServeRouterProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_liveness import Stub  # noqa: E402

TIMEOUT_S = 2.0
REQUEST = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 20\r\n\r\n" + b'{"input_ids": [1,2]}')


def _read_all(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_slow_headers_get_408_and_keepalive_survives(tmp_path: Path) -> None:
    stub = Stub()
    try:
        args = ["--worker-urls", stub.url, "--header-read-timeout-secs", str(TIMEOUT_S)]
        with MemServeRouterProcess(args, tmp_path).start(probe=False) as router:
            host, port = router.host, router.port
            slow = socket.create_connection((host, port))
            t0 = time.monotonic()
            sent = 0
            answer = b""
            slow.settimeout(0.3)
            # One byte every 0.3 s: the head would take ~30 s.
            while sent < len(REQUEST) and time.monotonic() - t0 < TIMEOUT_S + 5:
                try:
                    slow.sendall(REQUEST[sent:sent + 1])
                except OSError:
                    break
                sent += 1
                try:
                    answer = slow.recv(4096)
                except TimeoutError:
                    continue
                break
            elapsed = time.monotonic() - t0
            answer += _read_all(slow, 2.0)
            slow.close()
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"--header-read-timeout-secs" in answer and b"Connection: close" in answer
            assert TIMEOUT_S - 0.5 <= elapsed <= TIMEOUT_S + 2.0, elapsed
            assert sent < len(REQUEST)

            # Others are served while a slow client holds a connection.
            slow2 = socket.create_connection((host, port))
            slow2.sendall(REQUEST[:10])
            r = requests.post(f"{router.url}/generate", json={"input_ids": [1]}, timeout=5)
            assert r.status_code == 200, r.text
            assert _read_all(slow2, TIMEOUT_S + 3).startswith(b"HTTP/1.1 408")
            slow2.close()

            # A keep-alive connection idle for longer than the deadline still works.
            keep = socket.create_connection((host, port))
            for _ in range(2):
                keep.sendall(REQUEST)
                keep.settimeout(5)
                head = keep.recv(65536)
                assert head.startswith(b"HTTP/1.1 200"), head
                time.sleep(TIMEOUT_S + 1)
            keep.close()
    finally:
        stub.stop()
