"""Bad control-channel messages against a real MemPool control server (ZMQ ROUTER, in process):
not JSON, not an object, msgpack, wrong types, an unknown or unhashable op, wrong frame counts
and a huge body each get a typed error reply, run nothing, and the channel keeps serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))
from test_feed import make_pool  # noqa: E402

from sglang_memserve.mempool import MemPool  # noqa: E402
from sglang_memserve.mempool.auth import SECRET_ENV  # noqa: E402
from sglang_memserve.mempool.rpc import rpc_call  # noqa: E402


@pytest.fixture()
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemPool]:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("MEMSERVE_SECRET_FILE", raising=False)
    p = make_pool("ctl")
    yield p
    p.close()


def _raw(endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> list[bytes]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), f"no reply to {[f[:40] for f in frames]}"
        return sock.recv_multipart()
    finally:
        sock.close(0)
        ctx.term()


BAD: list[tuple[str, list[bytes], str]] = [
    ("not JSON", [b"", b"\xff\x00 garbage"], "MemPoolError"),
    ("msgpack", [b"", b"\x81\xa2op\xa8snapshot"], "MemPoolError"),
    ("a list", [b"", b"[1, 2]"], "MemPoolError"),
    ("a string", [b"", b'"snapshot"'], "MemPoolError"),
    ("no op", [b"", b"{}"], "MemPoolError"),
    ("unknown op", [b"", b'{"op": "format_disk"}'], "MemPoolError"),
    ("op a list", [b"", b'{"op": ["snapshot"]}'], "MemPoolError"),
    ("op a dict", [b"", b'{"op": {"a": 1}}'], "MemPoolError"),
    ("op a number", [b"", b'{"op": 7}'], "MemPoolError"),
    ("match, tokens a string", [b"", b'{"op": "match", "tokens": "abc"}'], ""),
    ("kv_push, no dst", [b"", b'{"op": "kv_push", "tokens": [1, 2, 3, 4]}'], ""),
    ("kv_push, dst a number", [b"", b'{"op": "kv_push", "tokens": [1], "dst": 5}'], ""),
    ("three payload frames", [b"", b"a", b"b", b"{}"], "MemPoolError"),
    ("huge", [b"", b"[" + b"1," * (8 << 20) + b"1]"], "MemPoolError"),
]


@pytest.mark.parametrize(("name", "frames", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_message_gets_a_typed_error(pool: MemPool, name: str, frames: list[bytes],
                                        error: str) -> None:
    endpoint = pool.member_info().control_endpoint
    before = pool.tree.flatten()
    reply = orjson.loads(_raw(endpoint, frames)[-1])
    assert reply["ok"] is False, reply
    assert reply["error"] and reply["message"], reply
    if error:
        assert reply["error"] == error, reply
    assert pool.tree.flatten() == before  # nothing ran
    # ... and the channel keeps serving.
    snap = rpc_call(endpoint, {"op": "snapshot"}, timeout_s=10, auth=None)
    assert snap["v"] == 2
