"""Mooncake-format request traces, turned into token-id prompts.

A trace line is ``{timestamp (ms), input_length, output_length, hash_ids}``; each hash id names
one block of the prompt (512 tokens in Mooncake's trace) and equal ids mean equal blocks, so
requests sharing leading ids share a prefix. :func:`trace_prompts` makes one deterministic block
of ``block_tokens`` token ids per hash id (scaled down to fit a small model) and concatenates a
request's blocks, so a prefix cache sees exactly the sharing the trace records.

Without a trace file (``mooncake_conversation_trace.jsonl`` in the data directory) a synthetic one
of the same format is generated: sessions of several turns, each turn's ids extending the
previous turn's, all sessions sharing a leading system-prompt block.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from sglang_memserve.workloads.data import data_dir

TRACE_FILE = "mooncake_conversation_trace.jsonl"
TRACE_BLOCK_TOKENS = 512  # tokens per hash id in Mooncake's trace


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace.

    Attributes:
        arrival_s: seconds after the trace's first request.
        hash_ids: the prompt's blocks.
        input_length / output_length: tokens, as the trace gives them.
    """

    arrival_s: float
    hash_ids: tuple[int, ...]
    input_length: int
    output_length: int


def load_trace(path: Path | None = None, *, limit: int | None = None,
               seed: int = 0) -> list[TraceRequest]:
    """The trace at ``path``, else the data directory's, else a synthetic one (``limit`` or 500
    requests).

    Raises:
        ValueError: a line without the four fields.
    """
    if path is None:
        d = data_dir()
        if d is not None and (d / TRACE_FILE).exists():
            path = d / TRACE_FILE
    if path is None:
        return synthetic_trace(limit or 500, seed=seed)
    out: list[TraceRequest] = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out.append(TraceRequest(float(r["timestamp"]) / 1000.0, tuple(r["hash_ids"]),
                                        int(r["input_length"]), int(r["output_length"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{n}: not a Mooncake trace line ({exc})") from exc
    t0 = min((r.arrival_s for r in out), default=0.0)
    return [TraceRequest(r.arrival_s - t0, r.hash_ids, r.input_length, r.output_length)
            for r in out]


def synthetic_trace(n: int, *, seed: int = 0, sessions: int = 40, rate: float = 4.0
                    ) -> list[TraceRequest]:
    """``n`` requests in Mooncake's format: ``sessions`` multi-turn sessions interleaved at
    ``rate`` requests/s; every prompt starts with block 0 (a shared system prompt) and each
    turn appends 1-4 blocks to its session's previous prompt."""
    rng = random.Random(seed)
    next_id = 1
    prompts: list[list[int]] = [[0] for _ in range(sessions)]
    out, t = [], 0.0
    for _ in range(n):
        s = rng.randrange(sessions)
        if len(prompts[s]) > 40:  # a session ends; a new one takes its slot
            prompts[s] = [0]
        for _ in range(rng.randint(1, 4)):
            prompts[s].append(next_id)
            next_id += 1
        ids = tuple(prompts[s])
        out.append(TraceRequest(t, ids, len(ids) * TRACE_BLOCK_TOKENS, rng.randint(1, 400)))
        t += rng.expovariate(rate)
    return out


def trace_prompts(trace: list[TraceRequest], *, block_tokens: int = 16,
                  vocab: tuple[int, int] = (10, 1000), seed: int = 0) -> list[list[int]]:
    """Token ids of each request: one fixed block of ``block_tokens`` ids in ``[lo, hi)`` per
    hash id, the last block cut so the prompt is ``input_length`` scaled by
    ``block_tokens / 512`` tokens (at least one)."""
    lo, hi = vocab
    blocks: dict[int, list[int]] = {}

    def block(h: int) -> list[int]:
        b = blocks.get(h)
        if b is None:
            rng = random.Random(hash((seed, h)))
            b = blocks[h] = [rng.randrange(lo, hi) for _ in range(block_tokens)]
        return b

    out = []
    for r in trace:
        ids = [t for h in r.hash_ids for t in block(h)]
        want = max(1, round(r.input_length * block_tokens / TRACE_BLOCK_TOKENS))
        out.append(ids[:want] if want < len(ids) else ids)
    return out
