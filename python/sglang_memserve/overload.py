"""Overload limits and slow clients: bounded admission for generation requests, request deadlines.

:class:`Admission` caps the generation requests a server works on at once and the ones that may
wait for a slot; beyond both it refuses at once (429 with ``Retry-After``), and a request that
waited longer than ``queue_timeout_s`` is refused too (503 with ``Retry-After``): there is never
an unbounded queue. It is pure asyncio and shared by the launcher's ASGI guard
(:mod:`sglang_memserve.guard`) and memserve-router (``memserve_router.limits``).

:class:`DeadlineH11Protocol` is uvicorn's h11 protocol with a deadline on reading each request:
a client that sends its headers byte by byte, or never finishes its body, is cut off after
``read_timeout_s`` (408 when nothing was answered yet), without holding up the other
connections. The launcher installs it as uvicorn's ``auto`` HTTP protocol (uvicorn picks h11
here: httptools is not installed).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverloadLimits:
    """Admission bounds and the slow-client deadline.

    Attributes:
        max_concurrent: generation requests served at once (0: unlimited, no queue either).
        max_queued: requests that may wait for a slot beyond those (0: refuse at once).
        queue_timeout_s: longest wait for a slot (503 after it).
        retry_after_s: the ``Retry-After`` an overload answer carries (whole seconds, >= 1).
        read_timeout_s: deadline for receiving a whole request, headers and body, from its
            connection's first byte or the previous response (0: none).
    """

    max_concurrent: int = 0
    max_queued: int = 0
    queue_timeout_s: float = 30.0
    retry_after_s: int = 1
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 0 or self.max_queued < 0:
            raise ValueError(f"max_concurrent and max_queued must be >= 0, got "
                             f"{self.max_concurrent}, {self.max_queued}")
        if self.queue_timeout_s <= 0:
            raise ValueError(f"queue_timeout_s must be > 0, got {self.queue_timeout_s}")
        if self.retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {self.retry_after_s}")
        if self.read_timeout_s < 0:
            raise ValueError(f"read_timeout_s must be >= 0, got {self.read_timeout_s}")


class Overloaded(Exception):
    """No slot for a request: ``status`` (429 queue full, 503 waited too long) and the
    ``retry_after_s`` to tell the client."""

    def __init__(self, message: str, status: int, retry_after_s: int) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class Admission:
    """A counting gate with a bounded FIFO queue; one per server, used on one event loop.

    Args:
        limits: the bounds (``max_concurrent == 0`` admits everything).
    """

    def __init__(self, limits: OverloadLimits) -> None:
        self.limits = limits
        self.active = 0
        self.refused = {429: 0, 503: 0}
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room; changes ``active``.

        Raises:
            Overloaded: the queue is full (429) or the wait exceeded ``queue_timeout_s`` (503).
        """
        lim = self.limits
        if lim.max_concurrent == 0:
            self.active += 1
            return
        if self.active < lim.max_concurrent and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= lim.max_queued:
            self.refused[429] += 1
            raise Overloaded(f"server overloaded: {self.active} requests running, "
                             f"{len(self._waiting)} queued (limits {lim.max_concurrent} and "
                             f"{lim.max_queued}); retry later", 429, lim.retry_after_s)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), lim.queue_timeout_s)
        except TimeoutError:
            if fut.done():  # granted just as the wait ended: keep the slot
                return
            fut.cancel()
            self._remove(fut)
            self.refused[503] += 1
            raise Overloaded(f"server overloaded: no slot within {lim.queue_timeout_s:g}s; "
                             f"retry later", 503, lim.retry_after_s) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, but the client went away: pass the slot on
            else:
                fut.cancel()
                self._remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back; hands it to the first waiter, if any."""
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to it: active stays the same
                return
        self.active -= 1

    def _remove(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiting.remove(fut)
        except ValueError:
            pass


def overload_headers(exc: Overloaded) -> list[tuple[bytes, bytes]]:
    """The ``Retry-After`` header of an overload answer (ASGI form)."""
    return [(b"retry-after", str(exc.retry_after_s).encode())]


_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def _timeout_body(seconds: float) -> bytes:
    return (b'{"error":{"message":"request not received within %gs (--request-read-timeout)",'
            b'"type":"invalid_request_error","code":408}}' % seconds)


def deadline_protocol(read_timeout_s: float) -> type:
    """uvicorn's h11 protocol class with a per-request read deadline (see the module docstring).

    Args:
        read_timeout_s: seconds a request may take to arrive in full (> 0).
    Returns:
        A subclass of ``uvicorn.protocols.http.h11_impl.H11Protocol``.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        """H11Protocol + a timer armed when a request may start (connection made, previous
        response done) and cancelled once its last body byte arrived."""

        timeouts = 0
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            # Once the peer's request is complete (or the connection is done) nothing is owed.
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            type(self).timeouts += 1
            logger.warning("cut off %s: request not received within %gs", self.client,
                           read_timeout_s)
            # A keep-alive connection's old cycle has answered: then only close.
            if self.cycle is None or not self.cycle.response_started:
                body = _timeout_body(read_timeout_s)
                self.transport.write(_REQUEST_TIMEOUT % (len(body), body))
            self.transport.close()

    return DeadlineH11Protocol


def install_deadline(read_timeout_s: float) -> bool:
    """Make the read deadline uvicorn's ``auto`` HTTP protocol in this process (SGLang builds
    its ``uvicorn.Config`` with the default ``http="auto"``). Returns False when uvicorn would
    not use h11 (httptools installed), where nothing is changed."""
    import uvicorn.config

    try:
        import httptools  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    cls = deadline_protocol(read_timeout_s)
    import sys
    import types

    mod = types.ModuleType("sglang_memserve._uvicorn_deadline")
    mod.DeadlineH11Protocol = cls  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{mod.__name__}:DeadlineH11Protocol"
    uvicorn.config.HTTP_PROTOCOLS["h11"] = f"{mod.__name__}:DeadlineH11Protocol"
    return True
