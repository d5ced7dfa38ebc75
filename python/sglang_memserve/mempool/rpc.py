"""A small ZMQ request/reply channel (the pool's control channel).

Messages are orjson dicts. A reply is ``{"ok": true, "instance": ID, ...}`` or ``{"ok": false,
"instance": ID, "error": TYPE, "message": TEXT}``; :func:`rpc_call` turns the latter back into the
typed error. The server runs one thread with a ROUTER socket bound to the configured host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import orjson
import zmq

from . import errors
from .errors import MemPoolError, TransferError, TransferTimeout, UnknownPeer

Handler = Callable[[dict], dict]


class RpcServer:
    """Serves ``handlers[msg["op"]](msg)`` on a background thread.

    Args:
        instance_id: put in every reply so that callers detect a wrong peer.
        host: bind address. port: 0 picks a free port.
        handlers: op name -> function(message) -> reply fields. A raised
            :class:`MemPoolError` becomes an error reply.
        on_idle: called about every ``idle_s`` (e.g. to reap expired transfers).
    """

    def __init__(
        self,
        instance_id: str,
        host: str,
        port: int,
        handlers: dict[str, Handler],
        *,
        on_idle: Callable[[], None] | None = None,
        idle_s: float = 0.1,
    ) -> None:
        self.instance_id = instance_id
        self.handlers = handlers
        self._on_idle = on_idle
        self._idle_ms = int(idle_s * 1000)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if port:
            self._sock.bind(f"tcp://{host}:{port}")
        else:
            port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rpc-{instance_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(self._idle_ms):
                    frames = self._sock.recv_multipart()
                    reply = self._handle(frames[-1])
                    self._sock.send_multipart([*frames[:-1], orjson.dumps(reply)])
                if self._on_idle is not None:
                    self._on_idle()
        finally:
            self._sock.close(0)

    def _handle(self, raw: bytes) -> dict:
        try:
            msg = orjson.loads(raw)
            to = msg.get("to")
            if to is not None and to != self.instance_id:
                # Checked before any handler runs: a misaddressed request changes nothing here.
                raise UnknownPeer(f"request for {to!r} reached {self.instance_id!r}")
            handler = self.handlers.get(msg.get("op"))
            if handler is None:
                raise MemPoolError(f"unknown op {msg.get('op')!r}")
            return {"ok": True, "instance": self.instance_id, **handler(msg)}
        except MemPoolError as e:
            return {
                "ok": False,
                "instance": self.instance_id,
                "error": type(e).__name__,
                "message": str(e),
            }
        except Exception as e:  # noqa: BLE001 -- a bad request must not kill the server
            return {
                "ok": False,
                "instance": self.instance_id,
                "error": "MemPoolError",
                "message": f"{type(e).__name__}: {e}",
            }

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._ctx.term()


def rpc_call(
    endpoint: str, msg: dict, *, timeout_s: float, expect_instance: str | None = None
) -> dict:
    """Send one request and wait for its reply.

    Args:
        endpoint: the server's endpoint. msg: the request (must have ``"op"``).
        timeout_s: bound on connect + send + reply.
        expect_instance: if given, a reply from another instance raises :class:`UnknownPeer`.

    Returns:
        The reply's fields.

    Raises:
        TransferTimeout: no reply within ``timeout_s``.
        UnknownPeer: the answering instance is not ``expect_instance`` (the server refuses such
            a request before acting on it).
        MemPoolError (subclass named by the server): the server refused.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)  # DEALER: no REQ state machine to get stuck after a timeout
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        if expect_instance is not None:
            msg = {**msg, "to": expect_instance}
        sock.send_multipart([b"", orjson.dumps(msg)])
        deadline = time.monotonic() + timeout_s
        if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            raise TransferTimeout(f"{msg.get('op')} to {endpoint}: no reply in {timeout_s:.1f}s")
        reply = orjson.loads(sock.recv_multipart()[-1])
    finally:
        sock.close(0)
        ctx.term()
    if expect_instance is not None and reply.get("instance") != expect_instance:
        raise UnknownPeer(
            f"{endpoint} is {reply.get('instance')!r}, not the expected {expect_instance!r}"
        )
    if not reply.get("ok"):
        cls = getattr(errors, str(reply.get("error")), None)
        if not (isinstance(cls, type) and issubclass(cls, MemPoolError)):
            cls = TransferError
        raise cls(f"{reply.get('instance')}: {reply.get('message')}")
    return reply
