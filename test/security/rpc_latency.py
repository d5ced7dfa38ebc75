"""Round-trip time of one control-channel call on loopback (``python test/security/rpc_latency.py``).

Compares: a new ZMQ context per call (rpc_call before the process-wide context), the shared
context unsigned, and signed (HMAC-SHA256 request + reply). Prints medians over N calls.
"""

from __future__ import annotations

import statistics
import sys
import time

import orjson
import zmq

from sglang_memserve.mempool.auth import ControlAuth
from sglang_memserve.mempool.rpc import RpcServer, rpc_call


def _per_call_context(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([b"", orjson.dumps({"op": "ping"})])
    sock.poll(5000)
    sock.recv_multipart()
    sock.close(0)
    ctx.term()


def _median_us(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(n: int = 2000) -> None:
    auth = ControlAuth(b"bench-secret-0123456789abcdef0123")
    plain = RpcServer("plain", "127.0.0.1", 0, {"ping": lambda m: {}}, auth=None)
    signed = RpcServer("signed", "127.0.0.1", 0, {"ping": lambda m: {}}, auth=auth)
    try:
        rows = {
            "new context per call (before)": lambda: _per_call_context(plain.endpoint),
            "process-wide context, unsigned": lambda: rpc_call(
                plain.endpoint, {"op": "ping"}, timeout_s=5, auth=None),
            "process-wide context, signed": lambda: rpc_call(
                signed.endpoint, {"op": "ping"}, timeout_s=5, auth=auth),
        }
        for name, fn in rows.items():
            _median_us(fn, 100)  # warm up
            print(f"{name:34s} {_median_us(fn, n):8.0f} us (median of {n})")
    finally:
        plain.close()
        signed.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
