"""A small ZMQ request/reply channel (the pool's control channel).

Messages are orjson dicts. A reply is ``{"ok": true, "instance": ID, ...}`` or ``{"ok": false,
"instance": ID, "error": TYPE, "message": TEXT}``; :func:`rpc_call` turns the latter back into the
typed error. The server runs one thread with a ROUTER socket bound to the configured host; ops
named slow run on threads of their own.

With a shared secret (:mod:`.auth`: ``MEMSERVE_SECRET_FILE`` / ``MEMSERVE_SECRET`` or an explicit
:class:`~.auth.ControlAuth`) every request and reply carries an HMAC frame before its body; the
server answers unauthenticated, stale and replayed requests with an ``AuthError`` reply without
running them, and keeps serving.
"""

from __future__ import annotations

import hmac
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import orjson
import zmq

from . import errors
from .auth import AuthError, ControlAuth, RequestVerifier, load_auth
from .errors import MemPoolError, TransferError, TransferTimeout, UnknownPeer

Handler = Callable[[dict], dict]


class _FromEnv:
    """Type of :data:`FROM_ENV`."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV: Final = _FromEnv()
"""``auth=FROM_ENV``: the secret of the process's environment (:func:`~.auth.load_auth`), so
code that does not pass one (the cache backend, peers, clients) follows the launcher's setting."""

AuthArg = ControlAuth | None | _FromEnv


def _resolve(auth: AuthArg) -> ControlAuth | None:
    return load_auth() if isinstance(auth, _FromEnv) else auth


def _error_class(name: object) -> type[MemPoolError]:
    cls = AuthError if name == "AuthError" else getattr(errors, str(name), None)
    if isinstance(cls, type) and issubclass(cls, MemPoolError):
        return cls
    return TransferError


def _error_reply(instance: str, e: BaseException) -> dict:
    typed = isinstance(e, MemPoolError)
    return {"ok": False, "instance": instance,
            "error": type(e).__name__ if typed else "MemPoolError",
            "message": str(e) if typed else f"{type(e).__name__}: {e}"}


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
        auth: the shared secret requests must be signed with (None: no authentication;
            default: the environment's, see :mod:`.auth`).

    Raises:
        AuthError: the environment names a secret file that cannot be read.
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
        auth: AuthArg = FROM_ENV,
    ) -> None:
        self.instance_id = instance_id
        self.handlers = handlers
        self.slow_ops = slow_ops
        resolved = _resolve(auth)
        self._verifier = RequestVerifier(resolved) if resolved is not None else None
        self.refused = 0  # requests answered with an AuthError (for tests and logs)
        self._done: queue.SimpleQueue[tuple[list[bytes], bytes | None, dict]] = \
            queue.SimpleQueue()
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

    @property
    def authenticated(self) -> bool:
        """Whether requests must be signed."""
        return self._verifier is not None

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
                        self._send(*self._done.get())
                if self._sock in ready:
                    self._receive(self._sock.recv_multipart())
                if self._on_idle is not None:
                    self._on_idle()
        finally:
            self._sock.close(0)
            self._wake_rx.close(0)
            self._wake_tx.close(0)

    def _receive(self, frames: list[bytes]) -> None:
        # A DEALER's request arrives as [identity, b"", (auth header,) body]; anything else is
        # answered on the identity frame with an error.
        cut = frames.index(b"", 1) + 1 if b"" in frames[1:] else 1
        envelope, payload = frames[:cut], frames[cut:]
        nonce: bytes | None = None
        try:
            if len(payload) not in (1, 2):
                raise MemPoolError(f"malformed request: {len(payload)} payload frames")
            header, body = (payload[0] if len(payload) == 2 else None), payload[-1]
            if self._verifier is not None:
                try:
                    nonce = self._verifier.verify(header, body)
                except AuthError:
                    self.refused += 1
                    raise
            msg = orjson.loads(body)
            if not isinstance(msg, dict):
                raise MemPoolError(f"a request is a JSON object, got {type(msg).__name__}")
        except (MemPoolError, orjson.JSONDecodeError) as e:
            self._send(envelope, nonce, _error_reply(self.instance_id, e))
            return
        # isinstance first: an unhashable op (a list) raised here and killed this thread.
        if isinstance(msg.get("op"), str) and msg["op"] in self.slow_ops:
            threading.Thread(target=self._slow, args=(envelope, nonce, msg), daemon=True,
                             name=f"rpc-slow-{self.instance_id}").start()
        else:
            self._send(envelope, nonce, self._handle(msg))

    def _send(self, envelope: list[bytes], nonce: bytes | None, reply: dict) -> None:
        body = orjson.dumps(reply)
        if nonce is not None and self._verifier is not None:
            self._sock.send_multipart([*envelope, self._verifier.auth.reply_mac(nonce, body),
                                       body])
        else:
            self._sock.send_multipart([*envelope, body])

    def _slow(self, envelope: list[bytes], nonce: bytes | None, msg: dict) -> None:
        self._done.put((envelope, nonce, self._handle(msg)))
        with self._wake_lock:
            self._wake_tx.send(b"")

    def _handle(self, msg: dict) -> dict:
        try:
            to = msg.get("to")
            if to is not None and to != self.instance_id:
                # Checked before any handler runs: a misaddressed request changes nothing here.
                raise UnknownPeer(f"request for {to!r} reached {self.instance_id!r}")
            handler = self.handlers.get(msg.get("op"))
            if handler is None:
                raise MemPoolError(f"unknown op {msg.get('op')!r}")
            return {"ok": True, "instance": self.instance_id, **handler(msg)}
        except Exception as e:  # noqa: BLE001 -- a bad request must not kill the server
            return _error_reply(self.instance_id, e)

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._ctx.term()


# Bounds on the sockets rpc_call keeps open between calls (per process).
MAX_IDLE_PER_ENDPOINT = 4  # callers of one endpoint at once beyond this connect afresh
MAX_ENDPOINTS = 64  # endpoints kept; the least recently used one's sockets are closed


class _Channels:
    """The ZMQ context of :func:`rpc_call` and its idle connections, one per process.

    A call takes an idle DEALER socket connected to its endpoint (or connects a new one), uses
    it alone and gives it back only after it read that request's reply; after a timeout or any
    error the socket is closed, so a late reply can never be read by a later call. ZMQ sockets
    are not thread-safe, but one may move between threads across a lock (a full memory
    barrier): only one thread holds a socket at a time. A peer that restarted on the same
    endpoint is reached again through ZMQ's own reconnect.

    Why this is safe across processes: a ZMQ context is thread-safe, and a child process never
    uses its parent's -- libzmq contexts do not survive ``fork`` (their I/O thread is not
    copied). ``reset`` runs in every forked child (``os.register_at_fork``) and drops the
    inherited context, sockets and lock without touching them, and the pid check covers a
    child made some other way; the child then creates its own.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._ctx: zmq.Context | None = None
        self._pid = -1
        self._idle: OrderedDict[str, list[zmq.Socket]] = OrderedDict()
        self.opened = 0  # sockets connected since the reset (for tests and stats)

    def _context(self) -> zmq.Context:
        # Under self._lock.
        if self._ctx is None or self._pid != os.getpid() or self._ctx.closed:
            self._ctx, self._pid = zmq.Context(), os.getpid()
            self._idle = OrderedDict()
        return self._ctx

    def get(self) -> zmq.Context:
        """The process's context (created on first use)."""
        with self._lock:
            return self._context()

    def take(self, endpoint: str) -> zmq.Socket:
        """A socket connected to ``endpoint`` that only the caller uses until :meth:`give`."""
        with self._lock:
            ctx = self._context()
            idle = self._idle.get(endpoint)
            if idle:
                self._idle.move_to_end(endpoint)
                return idle.pop()
            sock = ctx.socket(zmq.DEALER)
            self.opened += 1
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        return sock

    def give(self, endpoint: str, sock: zmq.Socket) -> None:
        """Keep ``sock`` for the next call to ``endpoint`` (its last request was answered)."""
        drop: list[zmq.Socket] = []
        with self._lock:
            if self._pid != os.getpid() or self._ctx is None or self._ctx.closed:
                return  # another process's or a closed context's socket: let it go
            idle = self._idle.setdefault(endpoint, [])
            self._idle.move_to_end(endpoint)
            if len(idle) < MAX_IDLE_PER_ENDPOINT:
                idle.append(sock)
            else:
                drop.append(sock)
            while len(self._idle) > MAX_ENDPOINTS:
                drop += self._idle.popitem(last=False)[1]
        for s in drop:
            s.close(0)

    def idle(self, endpoint: str) -> int:
        """Idle sockets kept for ``endpoint``."""
        with self._lock:
            return len(self._idle.get(endpoint, []))


_CONTEXT = _Channels()
os.register_at_fork(after_in_child=_CONTEXT.reset)


def rpc_call(
    endpoint: str, msg: dict, *, timeout_s: float, expect_instance: str | None = None,
    auth: AuthArg = FROM_ENV,
) -> dict:
    """Send one request and wait for its reply.

    Args:
        endpoint: the server's endpoint. msg: the request (must have ``"op"``).
        timeout_s: bound on connect + send + reply.
        expect_instance: if given, a reply from another instance raises :class:`UnknownPeer`.
        auth: sign the request and check the reply's MAC with this secret (None: unsigned;
            default: the environment's, see :mod:`.auth`).

    Returns:
        The reply's fields.

    Raises:
        TransferTimeout: no reply within ``timeout_s``.
        UnknownPeer: the answering instance is not ``expect_instance`` (the server refuses such
            a request before acting on it).
        AuthError: the server refused the request's authentication, or (with ``auth``) its
            reply is not signed with the secret.
        MemPoolError (subclass named by the server): the server refused.
    """
    resolved = _resolve(auth)
    if expect_instance is not None:
        msg = {**msg, "to": expect_instance}
    body = orjson.dumps(msg)
    nonce = b""
    frames = [b"", body]
    if resolved is not None:
        header, nonce = resolved.sign_request(body)
        frames = [b"", header, body]
    # DEALER: no REQ state machine to get stuck after a timeout. The connection is reused
    # (_Channels) only once this request's reply was read; otherwise it is closed, and a late
    # reply to a closed socket is dropped.
    sock = _CONTEXT.take(endpoint)
    answered = False
    try:
        sock.send_multipart(frames)
        if not sock.poll(max(1, int(timeout_s * 1000))):
            raise TransferTimeout(f"{msg.get('op')} to {endpoint}: no reply in {timeout_s:.1f}s")
        parts = sock.recv_multipart()
        answered = True
    finally:
        if answered:
            _CONTEXT.give(endpoint, sock)
        else:
            sock.close(0)
    payload = parts[1:] if parts and parts[0] == b"" else parts
    try:
        reply = orjson.loads(payload[-1])
    except (orjson.JSONDecodeError, IndexError) as e:
        raise TransferError(f"{endpoint}: unreadable reply ({e})") from e
    if not isinstance(reply, dict):
        raise TransferError(f"{endpoint}: reply is not a JSON object")
    if resolved is not None and not (
            len(payload) == 2
            and hmac.compare_digest(payload[0], resolved.reply_mac(nonce, payload[-1]))):
        said = f" (it said {reply.get('error')}: {reply.get('message')})" if not reply.get(
            "ok") else ""
        raise AuthError(f"{endpoint}: reply not signed with the shared secret{said}")
    if expect_instance is not None and reply.get("instance") != expect_instance:
        raise UnknownPeer(
            f"{endpoint} is {reply.get('instance')!r}, not the expected {expect_instance!r}"
        )
    if not reply.get("ok"):
        cls = _error_class(reply.get("error"))
        raise cls(f"{reply.get('instance')}: {reply.get('message')}")
    return reply
