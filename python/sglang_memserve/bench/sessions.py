"""Replay of fixed token-id call sequences: ReAct episodes and Mooncake trace requests.

Unlike a chat (:mod:`sglang_memserve.bench.replay`), whose next prompt carries the answer the
server generated, these prompts are fixed by the trace: call ``i + 1`` of a ReAct episode carries
the step the trace's model took, not ours. A :class:`Session`'s calls run in order, each sent
after the previous answer; sessions start at their own times (the Mooncake trace's timestamps) or
at Poisson times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from sglang_memserve.bench.metrics import RequestRecord
from sglang_memserve.bench.replay import ReplayConfig, _generate, arrival_times
from sglang_memserve.workloads.react import ReactEpisode, episode_calls
from sglang_memserve.workloads.trace import TraceRequest, trace_prompts


@dataclass(frozen=True)
class TokenCall:
    """One call. ``append``: ``ids`` is a suffix; the prompt is the previous call's prompt + the
    ids the server generated for it + ``ids`` (a live agent's history)."""

    ids: tuple[int, ...]
    max_new_tokens: int
    append: bool = False


@dataclass(frozen=True)
class Session:
    """Calls sent one after another. ``start_s``: seconds after the replay's start (None: a
    Poisson arrival from the replay's rate and seed)."""

    id: str
    calls: tuple[TokenCall, ...]
    start_s: float | None = None


class SegmentEncoder:
    """Tokenizes text segments one by one (no special tokens), each distinct segment once, so
    prompts built from the same leading segments share exactly the same leading ids."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self._memo: dict[str, tuple[int, ...]] = {}

    def ids(self, text: str) -> tuple[int, ...]:
        got = self._memo.get(text)
        if got is None:
            got = self._memo[text] = tuple(self.tok(text, add_special_tokens=False).input_ids)
        return got

    def join(self, segments: Sequence[str]) -> tuple[int, ...]:
        return tuple(t for s in segments for t in self.ids(s))


REACT_HISTORIES = ("generated", "trace")


def react_sessions(episodes: Sequence[ReactEpisode], prompts: dict[str, str], tokenizer: Any,
                   *, max_new_tokens: int, history: str = "generated",
                   max_observation_chars: int | None = None,
                   max_prompt_tokens: int | None = None) -> list[Session]:
    """One session per episode; call ``i`` generates as many tokens as the trace's step ``i``
    (at least 1, at most ``max_new_tokens``).

    Args:
        history: ``generated``: call ``i + 1`` is call ``i``'s prompt + the server's output +
            the trace's observation (what a live agent sends); ``trace``: every call's prompt is
            the trace's text (the trace model's thoughts and actions, not the server's).
        max_prompt_tokens: an episode ends before a call whose prompt would be longer (a small
            model's context; for ``generated``, counted with the output at its cap).
    Raises:
        ValueError: an unknown ``history``.
    """
    if history not in REACT_HISTORIES:
        raise ValueError(f"history must be one of {REACT_HISTORIES}, not {history!r}")
    enc = SegmentEncoder(tokenizer)
    out: list[Session] = []
    for ep in episodes:
        calls: list[TokenCall] = []
        length, followup = 0, ""
        for k, call in enumerate(episode_calls(ep, prompts, max_observation_chars)):
            n = max(1, min(max_new_tokens, len(enc.ids(call.expected_output))))
            if history == "trace" or k == 0:
                tc = TokenCall(enc.join(call.segments), n)
                length = len(tc.ids)
            else:  # previous prompt + its output (at most the cap) + this suffix
                tc = TokenCall(enc.ids(followup), n, append=True)
                length += calls[-1].max_new_tokens + len(tc.ids)
            if max_prompt_tokens is not None and length > max_prompt_tokens:
                break
            calls.append(tc)
            followup = call.followup
        if calls:
            out.append(Session(ep.episode_id, tuple(calls)))
    return out


def trace_sessions(trace: Sequence[TraceRequest], *, block_tokens: int, speedup: float,
                   max_new_tokens: int, max_prompt_tokens: int | None = None,
                   vocab: tuple[int, int] = (10, 1000)) -> list[Session]:
    """One single-call session per trace request at its recorded time / ``speedup``: prompts
    from the hash ids (``block_tokens`` per 512-token block, so equal ids are equal prefixes),
    cut to ``max_prompt_tokens``; the trace's output length capped at ``max_new_tokens``."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, not {speedup}")
    prompts = trace_prompts(list(trace), block_tokens=block_tokens, vocab=vocab)
    out = []
    for i, (r, ids) in enumerate(zip(trace, prompts, strict=True)):
        ids = ids[:max_prompt_tokens] if max_prompt_tokens else ids
        n = max(1, min(max_new_tokens, r.output_length))
        out.append(Session(f"trace-{i}", (TokenCall(tuple(ids), n),), r.arrival_s / speedup))
    return out


async def _session(session: aiohttp.ClientSession, url: str, s: Session, start_at: float,
                   t0: float, out: list[RequestRecord]) -> None:
    await asyncio.sleep(max(0.0, start_at - (time.perf_counter() - t0)))
    ids: list[int] = []
    for i, call in enumerate(s.calls):
        sent = time.perf_counter() - t0
        ids = ids + list(call.ids) if call.append else list(call.ids)
        try:
            ttft, jct, last, output = await _generate(session, url, ids, call.max_new_tokens)
        except Exception as exc:  # recorded; the session stops (its next call follows this one)
            out.append(RequestRecord(s.id, i, sent, 0.0, 0.0, len(ids), 0, error=str(exc)))
            return
        meta = last.get("meta_info", {})
        details = meta.get("cached_tokens_details") or {}
        out.append(RequestRecord(
            s.id, i, sent, ttft, jct, int(meta.get("prompt_tokens", len(ids))),
            int(meta.get("cached_tokens", 0)),
            {k: int(v) for k, v in details.items() if isinstance(v, int | float)}, output))
        ids = ids + output


async def replay_sessions_async(url: str, sessions: Sequence[Session],
                                cfg: ReplayConfig) -> list[RequestRecord]:
    poisson = iter(arrival_times(len(sessions), cfg.rate, cfg.seed))
    starts = [next(poisson) if s.start_s is None else s.start_s for s in sessions]
    out: list[RequestRecord] = []
    # force_close: see replay.replay_async (an idle pooled connection dies during a pause).
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                                     connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(_session(session, url, s, st, t0, out)
                               for s, st in zip(sessions, starts, strict=True)))
    out.sort(key=lambda r: (r.sent_at, r.conv_id, r.turn))
    return out


def replay_sessions(url: str, sessions: Sequence[Session],
                    cfg: ReplayConfig | None = None) -> list[RequestRecord]:
    """Replay ``sessions`` against ``url`` (``cfg``: rate and seed of Poisson starts, timeout;
    its token settings do not apply, each call carries its own). One record per call sent."""
    return asyncio.run(replay_sessions_async(url, sessions, cfg or ReplayConfig()))

