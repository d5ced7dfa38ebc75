"""The router's overload limits: bounded admission of generation requests, a body read deadline.

An aiohttp middleware in front of the generation routes (``Limits.middleware``). It first reads the request's body
within ``read_timeout_s`` (a client that never finishes it gets 408 and the connection is
closed; aiohttp keeps the bytes, so the handler reads them again for free), then takes a slot
of an :class:`~sglang_memserve.overload.Admission` gate (``--max-concurrent-requests``,
``--queue-size``, ``--queue-timeout-secs``, sglang-router's flag names), held until the
response, streamed or not, is over. No slot: 429 (queue full) or 503 (waited too long) with
``Retry-After`` and a JSON message. Other routes (health, admin, metrics) pass untouched, so an
overloaded router still answers its health checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

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
