"""Multi-turn conversation replay over SGLang's ``/generate`` API.

Conversations start at Poisson arrival times; inside a conversation the turns run in order and
each next prompt carries the previous answer. Token ids travel end to end: a turn's prompt is the
previous prompt's ids + the generated ids + the tokenized new turn, so nothing is re-tokenized
(``retokenize=True`` instead renders the whole chat as text each turn, to measure what
re-tokenizing an answer costs in cache hits).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from sglang_memserve.bench.metrics import RequestRecord
from sglang_memserve.workloads import Conversation


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay.

    Attributes:
        rate: conversation arrivals per second (Poisson); ``inf`` starts all at once.
        max_new_tokens: tokens generated per turn (greedy, EOS ignored: equal work per config);
            with ``output_len="dataset"``, the cap.
        output_len: ``"fixed"``: every turn generates ``max_new_tokens``; ``"dataset"``: as many
            tokens as the data set's answer to that turn has (at least 1, at most
            ``max_new_tokens``; ``max_new_tokens`` when the data set has no answer).
        seed: arrival-time seed, so configurations compared in one run see the same schedule.
        retokenize: render the chat as text each turn instead of carrying token ids.
        timeout_s: per-request timeout.
        think_time_s: mean of the exponential pause between a reply and the user's next turn
            (0: none). Pauses let other conversations evict a conversation's prefix, which is
            what a DRAM tier is for.
    """

    rate: float = 0.5
    max_new_tokens: int = 32
    output_len: str = "fixed"
    seed: int = 0
    retokenize: bool = False
    timeout_s: float = 600.0
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.output_len not in OUTPUT_LENS:
            raise ValueError(f"output_len must be one of {OUTPUT_LENS}, not {self.output_len!r}")


OUTPUT_LENS = ("fixed", "dataset")


class ChatEncoder:
    """Turns conversations into token ids with the model's chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer

    def first(self, user: str) -> list[int]:
        return list(self.tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=True, add_generation_prompt=True,
            return_dict=False))

    def follow_up(self, user: str) -> list[int]:
        """Ids that close the previous answer and open the next turn (no BOS)."""
        closing = f"{self.tok.eos_token}\n<|user|>\n{user}{self.tok.eos_token}\n<|assistant|>\n"
        return list(self.tok(closing, add_special_tokens=False).input_ids)

    def answer_len(self, reference: str, cap: int) -> int:
        """Tokens to generate for a turn whose data-set answer is ``reference``."""
        if not reference:
            return cap
        return max(1, min(cap, len(self.tok(reference, add_special_tokens=False).input_ids)))

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.tok.apply_chat_template(messages, tokenize=True,
                                                 add_generation_prompt=True, return_dict=False))


async def _generate(session: aiohttp.ClientSession, url: str, ids: list[int],
                    max_new_tokens: int) -> tuple[float, float, dict, list[int]]:
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    start = time.perf_counter()
    ttft = None
    last: dict = {}
    async with session.post(f"{url}/generate", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            last = json.loads(payload)
            if ttft is None and last.get("output_ids"):
                ttft = time.perf_counter() - start
    jct = time.perf_counter() - start
    return (ttft if ttft is not None else jct), jct, last, list(last.get("output_ids", []))


async def _conversation(session: aiohttp.ClientSession, url: str, conv: Conversation,
                        start_at: float, enc: ChatEncoder, cfg: ReplayConfig, t0: float,
                        out: list[RequestRecord], think: random.Random) -> None:
    await asyncio.sleep(max(0.0, start_at - (time.perf_counter() - t0)))
    ids: list[int] = []
    messages: list[dict[str, str]] = []
    for turn, user in enumerate(conv.user_turns):
        if turn and cfg.think_time_s > 0:
            await asyncio.sleep(think.expovariate(1.0 / cfg.think_time_s))
        if cfg.retokenize:
            messages.append({"role": "user", "content": user})
            ids = enc.render(messages)
        else:
            ids = ids + enc.follow_up(user) if ids else enc.first(user)
        n_new = cfg.max_new_tokens
        if cfg.output_len == "dataset" and turn < len(conv.reference_answers):
            n_new = enc.answer_len(conv.reference_answers[turn], cfg.max_new_tokens)
        sent = time.perf_counter() - t0
        try:
            ttft, jct, last, output = await _generate(session, url, ids, n_new)
        except Exception as exc:  # recorded, and the conversation stops: its next turn needs this
            out.append(RequestRecord(conv.id, turn, sent, 0.0, 0.0, len(ids), 0, error=str(exc)))
            return
        meta = last.get("meta_info", {})
        details = meta.get("cached_tokens_details") or {}
        out.append(RequestRecord(
            conv.id, turn, sent, ttft, jct, int(meta.get("prompt_tokens", len(ids))),
            int(meta.get("cached_tokens", 0)),
            {k: int(v) for k, v in details.items() if isinstance(v, int | float)}, output))
        if cfg.retokenize:
            messages.append({"role": "assistant", "content": last.get("text", "")})
        else:
            ids = ids + output


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Poisson arrivals: exponential gaps with mean 1/rate, from a fixed seed."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def replay_async(url: str, convs: Sequence[Conversation], tokenizer: Any,
                       cfg: ReplayConfig) -> list[RequestRecord]:
    enc = ChatEncoder(tokenizer)
    out: list[RequestRecord] = []
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    # NOTE: no keep-alive. A pooled connection that the server closes after its idle timeout
    # (uvicorn: 5 s) while a user "thinks" fails the next request with "Server disconnected".
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()
        starts = arrival_times(len(convs), cfg.rate, cfg.seed)
        await asyncio.gather(*(
            _conversation(session, url, c, s, enc, cfg, t0, out,
                          random.Random(cfg.seed * 1_000_003 + i))
            for i, (c, s) in enumerate(zip(convs, starts, strict=True))))
    out.sort(key=lambda r: (r.conv_id, r.turn))
    return out


def replay(url: str, convs: Sequence[Conversation], tokenizer: Any,
           cfg: ReplayConfig = ReplayConfig()) -> list[RequestRecord]:
    """Replay ``convs`` against the server at ``url``; returns one record per request."""
    return asyncio.run(replay_async(url, convs, tokenizer, cfg))
