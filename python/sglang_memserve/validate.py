"""Checks of a generation request that stock SGLang 0.5.23 does not make (docs/reliability.md).

Stock SGLang answers most malformed requests with a 400 itself. What it lets through, and what
then hangs or kills the server or gets a 500, is refused here first, by the launcher's HTTP guard
(:mod:`sglang_memserve.guard`) and by memserve-router (``prompts.parse``): a body that is not a
JSON object, fields the route's schema does not have, ``n`` outside ``[1, max_n]`` (a huge ``n``
leaves the server unresponsive), ``top_k < -1`` (accepted silently), and empty prompts or token
lists of the wrong shape (an empty ``text`` kills the scheduler). Token ids outside the
vocabulary are refused where the vocabulary is known (the plugin's tokenizer-manager check,
the router's tokenizer). Pure Python; no SGLang import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENERATE, COMPLETIONS, CHAT = "/generate", "/v1/completions", "/v1/chat/completions"
ROUTES: tuple[str, ...] = (GENERATE, COMPLETIONS, CHAT)


class InvalidRequest(ValueError):
    """A request refused before it reaches SGLang; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one generation request.

    Attributes:
        max_body_bytes: largest request body (413 beyond).
        max_n: largest ``n`` (parallel samples of one prompt).
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_n: int = 64

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {self.max_n}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_ids(ids: Any, what: str) -> None:
    """A non-empty list of ints, or a non-empty list of such lists (a batch)."""
    if not isinstance(ids, list) or not ids:
        raise InvalidRequest(f"{what} must be a non-empty list of token ids")
    if all(_is_int(t) for t in ids):
        return
    if all(isinstance(x, list) for x in ids):
        for i, x in enumerate(ids):
            if not x or not all(_is_int(t) for t in x):
                raise InvalidRequest(f"{what}[{i}] must be a non-empty list of token ids")
        return
    bad = next(t for t in ids if not _is_int(t))
    raise InvalidRequest(f"{what} must hold integer token ids, got {bad!r}")


def _check_text(text: Any, what: str) -> None:
    if isinstance(text, str):
        if not text:
            raise InvalidRequest(f"{what} is empty")
    elif isinstance(text, list):
        if not text:
            raise InvalidRequest(f"{what} is an empty batch")
        for i, t in enumerate(text):
            if not isinstance(t, str) or not t:
                raise InvalidRequest(f"{what}[{i}] must be a non-empty string")


def _check_sampling(sp: dict, limits: RequestLimits, n_key: str = "n") -> None:
    n = sp.get(n_key)
    if n is not None:
        if not _is_int(n):
            raise InvalidRequest(f"{n_key} must be an integer, got {n!r}")
        if not 1 <= n <= limits.max_n:
            raise InvalidRequest(f"{n_key} must be in [1, {limits.max_n}], got {n}")
    top_k = sp.get("top_k")
    if _is_int(top_k) and top_k < -1:
        raise InvalidRequest(f"top_k must be -1 (off) or >= 0, got {top_k}")


def _samplings(sp: Any) -> Iterable[dict]:
    if isinstance(sp, dict):
        return [sp]
    if isinstance(sp, list) and all(isinstance(x, dict) for x in sp):
        return sp
    if sp is None:
        return []
    raise InvalidRequest("sampling_params must be an object (or a list of objects)")


def check_request(path: str, body: Any, limits: RequestLimits,
                  known_fields: frozenset[str] | None = None) -> None:
    """Refuse what SGLang would mishandle; changes nothing.

    Args:
        path: one of :data:`ROUTES`. body: the parsed JSON body.
        limits: the bounds. known_fields: the route schema's field names (None: not checked).
    Raises:
        InvalidRequest: the first problem found, with a message for the client.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if known_fields is not None:
        unknown = sorted(set(body) - known_fields)
        if unknown:
            raise InvalidRequest(f"unknown field(s) for {path}: {', '.join(unknown[:8])}")
    if path == GENERATE:
        for sp in _samplings(body.get("sampling_params")):
            _check_sampling(sp, limits)
        if body.get("input_ids") is not None:
            _check_ids(body["input_ids"], "input_ids")
        elif body.get("text") is not None:
            _check_text(body["text"], "text")
    elif path == COMPLETIONS:
        _check_sampling(body, limits)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(isinstance(p, str) for p in prompt):
            _check_ids(prompt, "prompt")
        elif prompt is not None:
            _check_text(prompt, "prompt")
    elif path == CHAT:
        _check_sampling(body, limits)
