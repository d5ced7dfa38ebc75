"""The launcher's HTTP guard: refuses malformed generation requests before SGLang parses them.

An ASGI middleware that the launcher adds to SGLang's FastAPI ``app``
(``sglang.srt.entrypoints.http_server.app``, served by the launcher's process) before the server
starts. For ``POST /generate``, ``/v1/completions`` and ``/v1/chat/completions`` it bounds the
body (413), parses it (400 on bad JSON or invalid UTF-8) and runs
:func:`sglang_memserve.validate.check_request` with the route schema's own field names; a
request that passes is handed to SGLang with the very same bytes. Every other route and method
passes untouched. Answers are ``{"error": {"message", "type", "code"}}``.

With overload limits (:class:`~sglang_memserve.overload.OverloadLimits`) a request that passes
also needs a slot of the server's :class:`~sglang_memserve.overload.Admission` gate, held until
its response (streamed or not) is over; without one it gets 429 or 503 with ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from sglang_memserve.overload import Admission, Overloaded, OverloadLimits, overload_headers
from sglang_memserve.validate import (
    CHAT,
    COMPLETIONS,
    GENERATE,
    ROUTES,
    InvalidRequest,
    RequestLimits,
    check_request,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
logger = logging.getLogger(__name__)


def schema_fields() -> dict[str, frozenset[str]]:
    """The field names of SGLang's request schemas per route (``GenerateReqInput``, the OpenAI
    ``CompletionRequest`` and ``ChatCompletionRequest``), with their aliases."""
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
    from sglang.srt.managers.io_struct import GenerateReqInput

    def pydantic(model: Any) -> frozenset[str]:
        names = set(model.model_fields)
        names |= {f.alias for f in model.model_fields.values() if f.alias}
        return frozenset(names)

    # NOTE: stock sglang-router adds "model" to every /generate it forwards (SGLang's handler
    # ignores it); refusing it broke every cluster behind sglang-router, the stock baseline.
    generate = {f.name for f in dataclasses.fields(GenerateReqInput)} | {"model"}
    return {GENERATE: frozenset(generate),
            COMPLETIONS: pydantic(CompletionRequest), CHAT: pydantic(ChatCompletionRequest)}


async def _answer(send: Send, status: int, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    kind = "overloaded" if status in (429, 503) else "invalid_request_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": status}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """See the module docstring.

    Args:
        app: the ASGI app behind it.
        limits: body size and ``n`` bounds.
        fields: route -> known field names (default: :func:`schema_fields`).
        overload: admission bounds (default: none).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limits: RequestLimits | None = None,
                 fields: dict[str, frozenset[str]] | None = None,
                 overload: OverloadLimits | None = None) -> None:
        self.app = app
        self.limits = limits or RequestLimits()
        self.fields = schema_fields() if fields is None else fields
        self.refused = 0
        self.admission = Admission(overload or OverloadLimits())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or \
                scope.get("path") not in ROUTES:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-encoding", b"identity") != b"identity":
            await self.app(scope, receive, send)  # compressed: SGLang's decompressor's job
            return
        try:
            raw = await self._body(headers, receive)
            if raw is None:
                return  # the client went away
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise InvalidRequest(f"the body is not valid JSON (UTF-8): {e}") from e
            check_request(scope["path"], body, self.limits, self.fields.get(scope["path"]))
        except InvalidRequest as e:
            self.refused += 1
            await _answer(send, e.status, str(e))
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        try:
            await self.admission.acquire()
        except Overloaded as e:
            await _answer(send, e.status, str(e), overload_headers(e))
            return
        try:
            await self.app(scope, replay, send)
        finally:
            self.admission.release()

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected.

        Raises:
            InvalidRequest: (413) longer than the limit, by its Content-Length or as read.
        """
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length")
        too_big = f"the body exceeds {limit} bytes (--max-payload-size)"
        if declared is not None:
            try:
                length = int(declared)
            except ValueError as e:
                raise InvalidRequest(f"bad Content-Length {declared!r}") from e
            if length > limit:
                raise InvalidRequest(too_big, 413)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(too_big, 413)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


def install(limits: RequestLimits, overload: OverloadLimits | None = None) -> bool:
    """Add the guard to SGLang's FastAPI app (outermost, so it runs first) and, when
    ``overload.read_timeout_s`` is set, the request read deadline to uvicorn. Returns False when
    the app cannot take the guard any more (already started)."""
    from sglang.srt.entrypoints.http_server import app

    from sglang_memserve.overload import install_deadline

    overload = overload or OverloadLimits()
    if overload.read_timeout_s and not install_deadline(overload.read_timeout_s):
        logger.warning("uvicorn uses httptools here: no request read deadline")
    try:
        app.add_middleware(RequestGuard, limits=limits, overload=overload)
    except RuntimeError:
        return False
    return True
