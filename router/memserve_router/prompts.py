"""Token ids of a request, exactly as the instance will compute them.

The router's trees are over token ids, so it must tokenize as the instance does: SGLang encodes a
text prompt with the model's tokenizer (special tokens added) and a chat with the tokenizer's chat
template (``add_generation_prompt=True``). A text ``/generate`` or ``/v1/completions`` request is
forwarded as those ids, so the instance serves exactly the ids the router routed on; a chat is
forwarded as it came (tests check that the ids agree, through SGLang's ``return_input_ids``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sglang_memserve.validate import InvalidRequest, RequestLimits, check_request


class BadRequest(ValueError):
    """A request the router cannot route (answered with HTTP 400 and this message)."""


@dataclass(frozen=True)
class Prompt:
    """The routing view of one request.

    Attributes:
        tokens: its prompt token ids (empty when they cannot be known: routed by load alone).
        body: the body to forward (text prompts replaced by their ids).
        stream: whether the client asked for a stream.
    """

    tokens: list[int]
    body: dict[str, Any]
    stream: bool


def _model_vocab(path: str) -> int | None:
    """``vocab_size`` of the model's ``config.json`` (None when it has none)."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return int(size) if size else None


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _chat_text(content: Any) -> Any:
    """SGLang joins a message's text parts; anything else (images) is left as it is."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         for p in content):
        return "".join(p.get("text", "") for p in content)
    return content


class Tokenizer:
    """The model's tokenizer (Hugging Face), loaded once from a local path.

    Args:
        path: the model (or tokenizer) directory the instances serve.
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.path = path
        self.hf = AutoTokenizer.from_pretrained(path)
        self.vocab_size = _model_vocab(path) or len(self.hf)

    def check_ids(self, ids: list[int]) -> None:
        """Refuse ids outside the model's vocabulary (the instance's embedding lookup would
        fail on them, taking its scheduler down).

        Raises:
            BadRequest: an id < 0 or >= the vocabulary size.
        """
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(t for t in ids if t < 0 or t >= self.vocab_size)
            raise BadRequest(f"token id {bad} is outside the model's vocabulary "
                             f"[0, {self.vocab_size})")

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text)["input_ids"])

    def chat(self, messages: list[dict], tools: Any = None, **kwargs: Any) -> list[int]:
        msgs = [{**m, "content": _chat_text(m.get("content"))} for m in messages]
        ids = self.hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                          tools=tools, return_dict=False, **kwargs)
        return list(ids)


def _generate(body: dict, tok: Tokenizer | None) -> Prompt:
    ids = body.get("input_ids")
    text = body.get("text")
    if ids is not None:
        if _int_list(ids):
            return Prompt(list(ids), body, bool(body.get("stream")))
        if isinstance(ids, list) and ids and all(_int_list(x) for x in ids):
            # A batch (SGLang's DSL sends them for select): routed by its first prompt.
            return Prompt(list(ids[0]), body, bool(body.get("stream")))
        raise BadRequest("input_ids must be a list of token ids, or a list of such lists")
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return Prompt(tok.encode(text[0]) if tok else [], body, bool(body.get("stream")))
    if isinstance(text, str):
        if tok is None:
            return Prompt([], body, bool(body.get("stream")))
        tokens = tok.encode(text)
        fwd = {k: v for k, v in body.items() if k != "text"} | {"input_ids": tokens}
        return Prompt(tokens, fwd, bool(body.get("stream")))
    raise BadRequest("/generate needs 'text' (a string or list of strings) or 'input_ids'")


def _completions(body: dict, tok: Tokenizer | None) -> Prompt:
    prompt = body.get("prompt")
    stream = bool(body.get("stream"))
    if _int_list(prompt) and prompt:
        return Prompt(list(prompt), body, stream)
    if isinstance(prompt, str):
        if tok is None:
            return Prompt([], body, stream)
        tokens = tok.encode(prompt)
        return Prompt(tokens, body | {"prompt": tokens}, stream)
    if isinstance(prompt, list) and len(prompt) == 1:
        return _completions(body | {"prompt": prompt[0]}, tok)
    raise BadRequest("'prompt' must be a string or a list of token ids (one prompt a request)")


def _chat(body: dict, tok: Tokenizer | None) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and "role" in m for m in messages):
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    stream = bool(body.get("stream"))
    if tok is None:
        return Prompt([], body, stream)
    try:
        tokens = tok.chat(messages, body.get("tools"), **(body.get("chat_template_kwargs") or {}))
    except Exception:  # noqa: BLE001 -- a template the router cannot render: route by load
        tokens = []
    return Prompt(tokens, body, stream)


PARSERS: dict[str, Callable[[dict, Tokenizer | None], Prompt]] = {
    "/generate": _generate,
    "/v1/completions": _completions,
    "/v1/chat/completions": _chat,
}


def parse(path: str, body: Any, tok: Tokenizer | None,
          limits: RequestLimits | None = None) -> Prompt:
    """The routing view of a request to ``path``.

    Args:
        limits: when given, the checks SGLang itself does not make
            (:func:`sglang_memserve.validate.check_request`: ``n``, ``top_k``, empty prompts,
            token lists of the wrong shape) run first.
    Raises:
        BadRequest: a body that is not a JSON object, a prompt of the wrong shape, or one
            that those checks refuse.
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if limits is not None:
        try:
            check_request(path, body, limits)
        except InvalidRequest as e:
            raise BadRequest(str(e)) from e
    prompt = PARSERS[path](body, tok)
    if tok is not None:
        batch = body.get("input_ids") if path == "/generate" else None
        for ids in batch if isinstance(batch, list) and batch and isinstance(batch[0], list) \
                else [prompt.tokens]:
            tok.check_ids(ids)
    return prompt
