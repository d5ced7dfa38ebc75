"""The control channel's HMAC authentication, on real ZMQ sockets (no SGLang): signed requests
work; unsigned, wrong-key, tampered, stale and replayed ones get a typed AuthError reply without
running; the server keeps serving; the process-wide client context survives fork."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zmq

from sglang_memserve.mempool import rpc
from sglang_memserve.mempool.auth import (
    MAGIC,
    SECRET_ENV,
    SECRET_FILE_ENV,
    AuthError,
    ControlAuth,
    load_auth,
)
from sglang_memserve.mempool.rpc import RpcServer, rpc_call

AUTH = ControlAuth(b"s3cret-s3cret-s3cret-0123456789", max_skew_s=5.0)


@pytest.fixture()
def server() -> Iterator[tuple[RpcServer, list[dict]]]:
    ran: list[dict] = []

    def push(msg: dict) -> dict:
        ran.append(msg)
        return {"pushed": len(msg.get("tokens", []))}

    srv = RpcServer("inst-a", "127.0.0.1", 0, {"kv_push": push, "snapshot": lambda m: {"n": 1}},
                    slow_ops=frozenset({"kv_push"}), auth=AUTH)
    try:
        yield srv, ran
    finally:
        srv.close()


def _raw(endpoint: str, frames: list[bytes]) -> tuple[list[bytes], dict]:
    """Send raw frames on a DEALER and return (reply payload frames, reply)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply"
        parts = sock.recv_multipart()
    finally:
        sock.close(0)
    payload = parts[1:] if parts[0] == b"" else parts
    return payload, orjson.loads(payload[-1])


def _header(auth: ControlAuth, body: bytes, ts_ms: int) -> bytes:
    nonce = b"n" * 16
    ts = ts_ms.to_bytes(8, "big")
    mac = hmac.new(auth.secret, b"memserve-rpc-req\0" + nonce + ts + body, hashlib.sha256)
    return MAGIC + nonce + ts + mac.digest()


def test_signed_requests_work_and_replies_are_signed(server: tuple[RpcServer, list[dict]]
                                                     ) -> None:
    srv, ran = server
    assert srv.authenticated
    assert rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)["n"] == 1
    out = rpc_call(srv.endpoint, {"op": "kv_push", "tokens": [1, 2, 3]}, timeout_s=5, auth=AUTH,
                   expect_instance="inst-a")
    assert out["pushed"] == 3 and len(ran) == 1 and srv.refused == 0


@pytest.mark.parametrize("op", ["kv_push", "snapshot"])
def test_unsigned_and_wrong_key_refused_and_not_run(server: tuple[RpcServer, list[dict]],
                                                    op: str) -> None:
    srv, ran = server
    with pytest.raises(AuthError, match="unauthenticated"):
        rpc_call(srv.endpoint, {"op": op, "tokens": [1]}, timeout_s=5, auth=None)
    other = ControlAuth(b"another-secret-of-enough-length")
    with pytest.raises(AuthError, match="bad MAC"):
        rpc_call(srv.endpoint, {"op": op, "tokens": [1]}, timeout_s=5, auth=other)
    assert ran == [] and srv.refused == 2
    # Still serving signed requests.
    assert rpc_call(srv.endpoint, {"op": op, "tokens": [1]}, timeout_s=5, auth=AUTH)["ok"]


def test_replayed_tampered_and_stale_requests_refused(server: tuple[RpcServer, list[dict]]
                                                      ) -> None:
    srv, ran = server
    body = orjson.dumps({"op": "kv_push", "tokens": [7, 8]})
    header, _nonce = AUTH.sign_request(body)
    payload, first = _raw(srv.endpoint, [b"", header, body])
    assert first["ok"] and len(payload) == 2  # accepted once, reply carries a MAC
    _, again = _raw(srv.endpoint, [b"", header, body])  # the exact same frames: a replay
    assert again == {"ok": False, "instance": "inst-a", "error": "AuthError",
                     "message": "replayed request: nonce already used"}
    _, tampered = _raw(srv.endpoint, [b"", AUTH.sign_request(body)[0],
                                      body.replace(b"[7,8]", b"[7,9]")])
    assert tampered["error"] == "AuthError" and "bad MAC" in tampered["message"]
    old = int((time.time() - 60) * 1000)
    _, stale = _raw(srv.endpoint, [b"", _header(AUTH, body, old), body])
    assert stale["error"] == "AuthError" and "stale" in stale["message"]
    _, short = _raw(srv.endpoint, [b"", b"MSV1xx", body])
    assert short["error"] == "AuthError" and "malformed" in short["message"]
    assert len(ran) == 1 and srv.refused == 4


def test_malformed_frames_get_typed_errors(server: tuple[RpcServer, list[dict]]) -> None:
    srv, _ = server
    _, three = _raw(srv.endpoint, [b"", b"a", b"b", b"c"])
    assert three["ok"] is False and "payload frames" in three["message"]
    for junk in (b"not json", b"[1, 2]", b"\xff\xfe"):
        header, _ = AUTH.sign_request(junk)
        _, rep = _raw(srv.endpoint, [b"", header, junk])
        assert rep["ok"] is False and rep["error"] == "MemPoolError", rep
    assert rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)["ok"]


def test_client_refuses_an_unsigned_reply() -> None:
    plain = RpcServer("plain", "127.0.0.1", 0, {"snapshot": lambda m: {"n": 1}}, auth=None)
    try:
        assert not plain.authenticated
        assert rpc_call(plain.endpoint, {"op": "snapshot"}, timeout_s=5, auth=None)["n"] == 1
        with pytest.raises(AuthError, match="reply not signed"):
            rpc_call(plain.endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)
    finally:
        plain.close()


def test_secret_from_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    assert load_auth() is None
    f = tmp_path / "secret"
    f.write_text("file-secret-0123456789abcdef\n")
    assert load_auth(str(f)).secret == b"file-secret-0123456789abcdef"  # type: ignore[union-attr]
    monkeypatch.setenv(SECRET_ENV, "env-secret-0123456789abcdef")
    assert load_auth().secret == b"env-secret-0123456789abcdef"  # type: ignore[union-attr]
    monkeypatch.setenv(SECRET_FILE_ENV, str(f))
    assert load_auth().secret == b"file-secret-0123456789abcdef"  # type: ignore[union-attr]
    assert "file-secret" not in repr(load_auth())
    with pytest.raises(AuthError, match="cannot read"):
        load_auth(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(AuthError, match="empty"):
        load_auth(str(tmp_path / "empty"))
    with pytest.raises(AuthError, match="at least 16"):
        ControlAuth(b"short")


def test_server_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    monkeypatch.setenv(SECRET_ENV, AUTH.secret.decode())
    srv = RpcServer("env", "127.0.0.1", 0, {"snapshot": lambda m: {"n": 1}})
    try:
        assert srv.authenticated
        assert rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5)["n"] == 1  # env secret
        with pytest.raises(AuthError):
            rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5, auth=None)
    finally:
        srv.close()


def _child_call(endpoint: str, out: mp.Queue) -> None:
    out.put(rpc_call(endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)["n"])


def test_one_context_per_process_and_fork(server: tuple[RpcServer, list[dict]]) -> None:
    srv, _ = server
    rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)
    ctx = rpc._CONTEXT.get()
    for _ in range(3):
        rpc_call(srv.endpoint, {"op": "snapshot"}, timeout_s=5, auth=AUTH)
    assert rpc._CONTEXT.get() is ctx  # reused, not one per call
    fork = mp.get_context("fork")
    out: mp.Queue = fork.Queue()
    child = fork.Process(target=_child_call, args=(srv.endpoint, out))
    child.start()
    child.join(20)
    assert child.exitcode == 0 and out.get(timeout=5) == 1
    assert rpc._CONTEXT.get() is ctx  # the parent's is untouched
