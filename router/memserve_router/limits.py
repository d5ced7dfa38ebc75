"""The router's overload limits: bounded admission of generation requests, a body read deadline.

An aiohttp middleware in front of the generation routes (``Limits.middleware``). It first reads the request's body
within ``read_timeout_s`` (a client that never finishes it gets 408 and the connection is
closed; aiohttp keeps the bytes, so the handler reads them again for free), then takes a slot
of an :class:`~sglang_memserve.overload.Admission` gate (``--max-concurrent-requests``,
``--queue-size``, ``--queue-timeout-secs``, sglang-router's flag names), held until the
response, streamed or not, is over. No slot: 429 (queue full) or 503 (waited too long) with
``Retry-After`` and a JSON message. Other routes (health, admin, metrics) pass untouched, so an
overloaded router still answers its health checks.

Before any of that, a request's head (request line and headers) must arrive within
``--header-read-timeout-secs`` of its first byte (:class:`HeaderDeadlineHandler`): a client
sending it byte by byte gets 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web, web_protocol, web_server

from sglang_memserve.overload import Admission, Overloaded, OverloadLimits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = "overloaded" if status in (429, 503) else "invalid_request_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status, headers=headers)


class Limits:
    """The middleware's state (one per router).

    Args:
        limits: admission bounds and the read deadline.
        routes: the paths it guards (the generation routes).
    """

    def __init__(self, limits: OverloadLimits, routes: Collection[str]) -> None:
        self.limits = limits
        self.routes = frozenset(routes)
        self.admission = Admission(limits)
        self.read_timeouts = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """See the module docstring; changes the gate's counters."""
        if request.method != "POST" or request.path not in self.routes:
            return await handler(request)
        timeout = self.limits.read_timeout_s or None
        try:
            await asyncio.wait_for(request.read(), timeout)
        except TimeoutError:
            self.read_timeouts += 1
            resp = _error(408, f"request body not received within {timeout:g}s "
                               f"(--request-read-timeout-secs)", {"Connection": "close"})
            # Sent here, then the connection is closed: aiohttp would otherwise linger up to
            # 10 s reading the rest of the body the client is not sending.
            await resp.prepare(request)
            await resp.write_eof()
            if request.protocol is not None:
                request.protocol.force_close()
            return resp
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, f"{exc.text} (--max-payload-size)")
        try:
            await self.admission.acquire()
        except Overloaded as exc:
            return _error(exc.status, str(exc), {"Retry-After": str(exc.retry_after_s)})
        try:
            return await handler(request)
        finally:
            self.admission.release()


class HeaderDeadlineHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler with a deadline on a request's head: from the first byte
    of a request until its handler starts (``HeaderDeadline.middleware``) at most
    ``timeout_s``; a client that sends its headers byte by byte (slow-loris) gets 408 and the
    connection is closed. An idle keep-alive connection is not timed (no byte, no deadline);
    aiohttp's own keep-alive timeout closes it. Set ``timeout_s`` before serving (0: off)."""

    timeout_s: float = 10.0
    expired = 0  # heads not received in time, all connections (a counter for tests, metrics)

    _head_timer: asyncio.TimerHandle | None = None
    _busy = False

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and not self._busy and self.timeout_s > 0 and data:
            self._head_timer = self._loop.call_later(self.timeout_s, self._head_expired)
        super().data_received(data)

    def request_started(self) -> None:
        """The head is in: its handler runs (until :meth:`request_ended` no deadline)."""
        self._busy = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def request_ended(self) -> None:
        self._busy = False

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._busy or self.transport is None or self.transport.is_closing():
            return
        HeaderDeadlineHandler.expired += 1
        body = (b'{"error": {"message": "request headers not received within %gs '
                b'(--header-read-timeout-secs)", "type": "invalid_request_error", '
                b'"code": 408}}' % self.timeout_s)
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json"
                             b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        self.force_close()
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def install_header_deadline(timeout_s: float) -> None:
    """Make aiohttp's servers in this process use :class:`HeaderDeadlineHandler` with
    ``timeout_s`` (0: no deadline). Changes aiohttp's module state: the router's process only.

    NOTE: aiohttp has no header timeout and no option to choose the handler class; its
    ``Server`` builds ``web_server.RequestHandler``, so that name is replaced.
    """
    HeaderDeadlineHandler.timeout_s = timeout_s
    web_server.RequestHandler = HeaderDeadlineHandler  # type: ignore[misc]


@web.middleware
async def header_deadline_middleware(request: web.Request, handler: Handler
                                     ) -> web.StreamResponse:
    """First of the router's middlewares: the request's head arrived in time; stops its
    connection's head deadline while the request is served."""
    proto = request.protocol
    if isinstance(proto, HeaderDeadlineHandler):
        proto.request_started()
        try:
            return await handler(request)
        finally:
            proto.request_ended()
    return await handler(request)
