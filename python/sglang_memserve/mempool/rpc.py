"""A small ZMQ request/reply channel (the pool's control channel).

Messages are orjson dicts. A reply is ``{"ok": true, "instance": ID, ...}`` or ``{"ok": false,
"instance": ID, "error": TYPE, "message": TEXT}``; :func:`rpc_call` turns the latter back into the
typed error. The server runs one thread with a ROUTER socket bound to the configured host; ops
named slow run on threads of their own.
"""

from __future__ import annotations

import queue
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
        slow_ops: ops whose handlers may wait long (a whole KV push): each runs on a worker
            thread and is answered when it finishes, while the loop keeps serving the others.
            NOTE: without this two instances pushing to each other deadlock until both time
            out -- each one's only thread waits for its own push, whose ``kv_prepare`` the
            other's busy thread cannot answer.
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
        slow_ops: frozenset[str] = frozenset(),
    ) -> None:
        self.instance_id = instance_id
        self.handlers = handlers
        self.slow_ops = slow_ops
        self._done: queue.SimpleQueue[tuple[list[bytes], dict]] = queue.SimpleQueue()
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
        # Slow handlers' threads signal the loop on this pair (ZMQ sockets are single-thread).
        wake = f"inproc://rpc-wake-{id(self)}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(wake)
        self._wake_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rpc-{instance_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(self._idle_ms))
                if self._wake_rx in ready:
                    self._wake_rx.recv()
                    while not self._done.empty():
                        frames, reply = self._done.get()
                        self._sock.send_multipart([*frames[:-1], orjson.dumps(reply)])
                if self._sock in ready:
                    frames = self._sock.recv_multipart()
                    if self._op(frames[-1]) in self.slow_ops:
                        threading.Thread(target=self._slow, args=(frames,), daemon=True,
                                         name=f"rpc-slow-{self.instance_id}").start()
                    else:
                        reply = self._handle(frames[-1])
                        self._sock.send_multipart([*frames[:-1], orjson.dumps(reply)])
                if self._on_idle is not None:
                    self._on_idle()
        finally:
            self._sock.close(0)
            self._wake_rx.close(0)
            self._wake_tx.close(0)

    @staticmethod
    def _op(raw: bytes) -> str | None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return msg.get("op") if isinstance(msg, dict) else None

    def _slow(self, frames: list[bytes]) -> None:
        self._done.put((frames, self._handle(frames[-1])))
        with self._wake_lock:
            self._wake_tx.send(b"")

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
