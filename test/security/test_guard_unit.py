"""The request checks without servers: validate.check_request, the launcher's ASGI guard (driven
directly), and the plugin's token-id check on SGLang's tokenizer manager."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from sglang_memserve.guard import RequestGuard
from sglang_memserve.plugin import _check_prompt_ids
from sglang_memserve.validate import InvalidRequest, RequestLimits, check_request

LIMITS = RequestLimits(max_body_bytes=4096, max_n=4)


@pytest.mark.parametrize(("path", "body", "match"), [
    ("/generate", [], "JSON object"),
    ("/generate", {"text": ""}, "empty"),
    ("/generate", {"text": []}, "empty batch"),
    ("/generate", {"input_ids": [[1], []]}, r"input_ids\[1\]"),
    ("/generate", {"input_ids": [1, True]}, "integer"),
    ("/generate", {"text": "a", "sampling_params": {"n": 5}}, r"\[1, 4\]"),
    ("/generate", {"text": "a", "sampling_params": [{"top_k": -2}]}, "top_k"),
    ("/generate", {"text": "a", "sampling_params": "x"}, "sampling_params"),
    ("/v1/completions", {"prompt": [], "n": 1}, "empty"),
    ("/v1/completions", {"prompt": "a", "n": 0}, r"\[1, 4\]"),
    ("/v1/completions", {"prompt": "a", "n": 2.0}, "integer"),
    ("/v1/chat/completions", {"messages": [], "n": 10**9}, r"\[1, 4\]"),
    ("/v1/chat/completions", {"messages": [], "bogus": 1}, "unknown field"),
])
def test_refused(path: str, body: Any, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        check_request(path, body, LIMITS, frozenset({"messages", "n"}) if "chat" in path
                      else None)


@pytest.mark.parametrize(("path", "body"), [
    ("/generate", {"text": "a", "sampling_params": {"n": 4, "top_k": -1}}),
    ("/generate", {"input_ids": [[1, 2], [3]]}),
    ("/v1/completions", {"prompt": [1, 2, 3], "top_k": 0}),
    ("/v1/completions", {"prompt": ["a", "b"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}),
])
def test_accepted(path: str, body: Any) -> None:
    check_request(path, body, LIMITS)


def _run(guard: RequestGuard, path: str, chunks: list[bytes], method: str = "POST",
         headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, Any, list[bytes]]:
    """Drive the guard: (status, reply JSON or None, the body the app behind it received)."""
    got: list[bytes] = []
    sent: list[dict] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            got.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    msgs = [{"type": "http.request", "body": c, "more_body": i + 1 < len(chunks)}
            for i, c in enumerate(chunks)]

    async def receive() -> dict:
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        sent.append(msg)

    guard.app = app
    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    body = orjson.loads(sent[1]["body"]) if status != 200 else None
    return status, body, got


def test_guard_refuses_and_passes_through() -> None:
    guard = RequestGuard(lambda *a: None, LIMITS, fields={"/generate": frozenset({"text"})})
    status, body, got = _run(guard, "/generate", [b'{"text": ', b'"hi"}'])
    assert status == 200 and b"".join(got) == b'{"text": "hi"}'  # the same bytes, re-sent
    status, body, got = _run(guard, "/generate", [b'{"text": "a\xffb"}'])
    assert status == 400 and "not valid JSON" in body["error"]["message"] and not got
    status, body, _ = _run(guard, "/generate", [b'{"text": "a", "x": 1}'])
    assert status == 400 and "unknown field" in body["error"]["message"]
    status, body, _ = _run(guard, "/generate", [b"x" * 3000, b"x" * 3000])
    assert status == 413 and "4096" in body["error"]["message"]
    status, body, _ = _run(guard, "/generate", [b"{}"], headers=[(b"content-length", b"9999")])
    assert status == 413
    status, _, got = _run(guard, "/health", [b"anything"], method="GET")
    assert status == 200 and got == [b"anything"]
    assert guard.refused == 4


def test_token_ids_checked_in_the_tokenizer_manager() -> None:
    manager = SimpleNamespace(model_config=SimpleNamespace(vocab_size=100))
    text_only = SimpleNamespace(image_data=None, video_data=None, audio_data=None,
                                input_embeds=None)
    _check_prompt_ids(manager, text_only, [0, 99])
    with pytest.raises(ValueError, match="empty"):
        _check_prompt_ids(manager, text_only, [])
    with pytest.raises(ValueError, match="token id 100 is outside"):
        _check_prompt_ids(manager, text_only, [1, 100])
    with pytest.raises(ValueError, match="token id -1"):
        _check_prompt_ids(manager, text_only, [-1, 5])
    image = SimpleNamespace(**{**vars(text_only), "image_data": ["img"]})
    _check_prompt_ids(manager, image, [10**6])  # multimodal placeholders are not judged here


def test_generate_accepts_the_model_field_sglang_router_adds() -> None:
    """Stock sglang-router forwards every /generate with a ``model`` field (SGLang ignores it):
    refusing it would break every cluster behind the stock router."""
    from sglang_memserve.guard import schema_fields

    fields = schema_fields()["/generate"]
    check_request("/generate", {"input_ids": [1, 2, 3], "model": "default"}, LIMITS, fields)
    with pytest.raises(InvalidRequest, match="unknown field"):
        check_request("/generate", {"input_ids": [1, 2, 3], "modell": "x"}, LIMITS, fields)
