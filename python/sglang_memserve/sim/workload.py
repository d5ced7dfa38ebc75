"""Simulated requests from the project's workload loaders.

* Mooncake conversation trace (:func:`sglang_memserve.workloads.trace.load_trace`, its synthetic
  fallback without the file): each hash id is one block of ``unit_tokens`` tokens, so equal
  hash ids are equal blocks and the real prompt lengths and timestamps are kept. ``replicas``
  copies of the trace, each with its own block ids (block 0, the shared system prompt, stays
  shared) and shifted in time by an equal share of the trace's span, scale the rate with the
  cluster while keeping the trace's sharing pattern.
* ShareGPT multi-turn (:func:`sglang_memserve.workloads.data.load_sharegpt`): token counts from
  characters (4 per token), block ids synthetic and unique per conversation; turn ``k + 1``'s
  prompt is turn ``k``'s prompt + its answer + the next user turn, and it arrives ``think_s``
  after turn ``k`` finished (closed loop), so the answer's KV can be reused.
* Long-document QA (:func:`sglang_memserve.workloads.data.load_longdoc`): one request per
  question, Poisson arrivals; the instruction and document are named by the document, so every
  question on a document shares them, and the question's blocks are its own.
* ReAct agent traces (:func:`sglang_memserve.workloads.react.load_react`): one closed loop per
  episode (episodes Poisson), call ``i + 1`` arriving ``think_s`` (the tool's latency) after
  call ``i``'s answer, its prompt that answer's prompt + answer + the tool's observation; the
  few-shot prompt is named by its ``prompt_id``, so every call of a task shares it.

Token counts come from characters (4 per token); a text segment's blocks never span segments
(its last block may be partial), which is what lets equal names mean equal KV.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

from sglang_memserve.workloads.data import load_longdoc, load_sharegpt
from sglang_memserve.workloads.react import episode_calls, load_react
from sglang_memserve.workloads.trace import TRACE_BLOCK_TOKENS, load_trace

CHARS_PER_TOKEN = 4


@dataclass
class SimRequest:
    """One request.

    Attributes:
        rid: index in the workload.
        arrival_s: when it reaches the router (simulated seconds; a follow-up turn's is set when
            its previous turn ends).
        blocks: the prompt as block ids (one per ``unit_tokens`` tokens, the last one partial).
        tokens: prompt length in tokens.
        output_tokens: tokens it generates (>= 1).
        output_blocks: block ids of its answer (the next turn's prompt carries them).
        session: conversation id (``session`` policy, closed-loop turns).
        follow: the next turn of its conversation and the think time before it, if any.
    """

    rid: int
    arrival_s: float
    blocks: tuple[int, ...]
    tokens: int
    output_tokens: int
    output_blocks: tuple[int, ...] = ()
    session: str | None = None
    follow: tuple[SimRequest, float] | None = field(default=None, repr=False)


def mooncake(path: Path | None = None, *, limit: int | None = None, replicas: int = 1,
             speedup: float = 1.0, block_tokens: int | None = None,
             max_prompt_tokens: int | None = None, output_tokens: int | None = None,
             seed: int = 0) -> list[SimRequest]:
    """The Mooncake conversation trace as simulated requests (module docstring).

    Args:
        path: a trace file (default: the data directory's, else a synthetic trace).
        limit: keep the first ``limit`` requests by arrival (after replication).
        replicas: trace copies (>= 1).
        speedup: divide every arrival time by this (> 0).
        block_tokens: scale the trace down as ``workloads.trace.trace_prompts`` does (each hash
            id a block of this many tokens, lengths x ``block_tokens / 512``); None: real lengths.
        max_prompt_tokens: cut prompts to this many tokens (a small model's context).
        output_tokens: every request generates this many tokens (None: the trace's lengths).

    Returns:
        Requests sorted by arrival; each answer gets fresh block ids (the trace does not say
        whether later turns carry the answer, so it is never assumed to be reused).

    Raises:
        ValueError: ``replicas < 1`` or ``speedup <= 0``, or a bad trace line.
    """
    if replicas < 1 or speedup <= 0:
        raise ValueError(f"need replicas >= 1 and speedup > 0, got {replicas}, {speedup}")
    trace = load_trace(path, seed=seed)
    span = max((r.arrival_s for r in trace), default=0.0) + 1.0
    top = max((h for r in trace for h in r.hash_ids), default=0) + 1
    rows = []
    for c in range(replicas):
        shift = span * c / replicas
        for r in trace:
            ids = tuple(h if h == 0 else h + c * top for h in r.hash_ids)
            rows.append(((r.arrival_s + shift) % span, ids, r.input_length, r.output_length))
    rows.sort(key=lambda x: x[0])
    if limit is not None:
        rows = rows[:limit]
    fresh = itertools.count(replicas * top)
    block = block_tokens or TRACE_BLOCK_TOKENS
    out = []
    for i, (t, ids, n_in, n_out) in enumerate(rows):
        if block_tokens is not None:  # trace_prompts' scaling: at least one token
            n_in = max(1, round(n_in * block_tokens / TRACE_BLOCK_TOKENS))
            n_in = min(n_in, len(ids) * block_tokens)
        if max_prompt_tokens is not None and n_in > max_prompt_tokens:
            n_in = max_prompt_tokens
        blocks = ids[:-(-max(1, n_in) // block)]
        n_out = max(1, n_out if output_tokens is None else output_tokens)
        out_blocks = tuple(next(fresh) for _ in range(-(-n_out // block)))
        out.append(SimRequest(i, t / speedup, blocks, max(1, n_in), n_out, out_blocks,
                              session=f"s{ids[1] if len(ids) > 1 else ids[0]}"))
    return out


def sharegpt(path: Path | None = None, *, conversations: int = 200, rate: float = 2.0,
             think_s: float = 5.0, unit_tokens: int = 16, max_turns: int = 8,
             seed: int = 0) -> list[SimRequest]:
    """ShareGPT multi-turn chats as closed-loop conversations (module docstring).

    Args:
        conversations: how many (file order, at least two user turns each).
        rate: conversations started per second (Poisson).
        think_s: seconds between a turn's answer and the next turn.
        unit_tokens: tokens per block.

    Returns:
        Every conversation's first turn (their ``follow`` chains hold the later turns; their
        ``rid`` numbers every turn).
    """
    rng = random.Random(seed)
    convs = load_sharegpt(path, limit=conversations, min_turns=2, max_turns=max_turns)
    ids = itertools.count(1)
    rid = itertools.count()
    firsts: list[SimRequest] = []
    t = 0.0
    for conv in convs:
        t += rng.expovariate(rate)
        prompt: tuple[int, ...] = ()
        tokens = 0
        prev: SimRequest | None = None
        for k, turn in enumerate(conv.user_turns):
            n_user = max(1, len(turn) // CHARS_PER_TOKEN)
            ans = conv.reference_answers[k] if k < len(conv.reference_answers) else ""
            n_out = max(1, len(ans) // CHARS_PER_TOKEN)
            tokens += n_user
            prompt = prompt + tuple(next(ids) for _ in range(-(-tokens // unit_tokens)
                                                            - len(prompt)))
            out_blocks = tuple(next(ids) for _ in range(-(-(tokens + n_out) // unit_tokens)
                                                        - len(prompt)))
            req = SimRequest(next(rid), t if prev is None else -1.0, prompt, tokens, n_out,
                             out_blocks, session=conv.id)
            if prev is None:
                firsts.append(req)
            else:
                prev.follow = (req, think_s)
            prev = req
            prompt, tokens = prompt + out_blocks, tokens + n_out
    return firsts


class _Names:
    """Block ids for named text segments: equal names give equal blocks (module docstring)."""

    def __init__(self, unit_tokens: int) -> None:
        self.unit = unit_tokens
        self._ids: dict[tuple, int] = {}

    def blocks(self, name: tuple, tokens: int) -> tuple[int, ...]:
        """The ``ceil(tokens / unit)`` blocks (at least one) of the segment called ``name``."""
        n = -(-max(1, tokens) // self.unit)
        return tuple(self._ids.setdefault((name, i), len(self._ids) + 1) for i in range(n))


def _tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def longdoc(path: Path | None = None, *, docs: int = 16, questions_per_doc: int = 8,
            rate: float = 1.0, max_context_chars: int = 200_000, unit_tokens: int = 16,
            max_output_tokens: int = 512, seed: int = 0) -> list[SimRequest]:
    """Long-document QA as independent requests (module docstring).

    Args:
        path: a ``longdoc_qa.jsonl`` file (default: the data directory's, else built in).
        docs / questions_per_doc / max_context_chars: as ``load_longdoc``.
        rate: requests per second (Poisson).
        max_output_tokens: cap on an answer's length (its reference answer's length, >= 1).

    Returns:
        Requests sorted by arrival, question-major (the questions on a document spread out).
    """
    rng = random.Random(seed)
    names = _Names(unit_tokens)
    out: list[SimRequest] = []
    t = 0.0
    for i, conv in enumerate(load_longdoc(path, docs=docs, questions_per_doc=questions_per_doc,
                                          max_context_chars=max_context_chars)):
        doc_id = conv.id.rsplit("#", 1)[0]
        text = conv.user_turns[0]
        cut = text.rfind("\n\nQuestion: ")
        head, question = (text[:cut], text[cut:]) if cut >= 0 else (text, "")
        blocks = (names.blocks(("doc", doc_id), _tokens(head))
                  + names.blocks(("q", conv.id), _tokens(question)))
        n_out = min(max_output_tokens, _tokens(conv.reference_answers[0]))
        t += rng.expovariate(rate)
        out.append(SimRequest(i, t, blocks, _tokens(head) + _tokens(question), n_out,
                              names.blocks(("a", conv.id), n_out), session=conv.id))
    return out


def react(traces: Path | None = None, prompts: Path | None = None, *, episodes: int = 200,
          rate: float = 1.0, think_s: float = 1.0, unit_tokens: int = 16,
          max_output_tokens: int = 512, max_observation_chars: int | None = 4000,
          seed: int = 0) -> list[SimRequest]:
    """ReAct episodes as closed-loop chains of calls (module docstring).

    Args:
        traces / prompts: the episode and few-shot prompt files (both or neither; default: the
            data directory's, else the shipped sample).
        episodes: how many (tasks interleaved, as ``load_react``).
        rate: episodes started per second (Poisson).
        think_s: seconds between a call's answer and the next call (the tool's latency).
        max_output_tokens: cap on a call's output (the trace's step length, >= 1).
        max_observation_chars: cut each observation (WebShop pages run long).

    Returns:
        Every episode's first call (``follow`` chains hold the rest; ``rid`` numbers every call).
    """
    rng = random.Random(seed)
    eps, table = load_react(traces, prompts, limit=episodes)
    names = _Names(unit_tokens)
    rid = itertools.count()
    firsts: list[SimRequest] = []
    t = 0.0
    for ep in eps:
        t += rng.expovariate(rate)
        calls = episode_calls(ep, table, max_observation_chars=max_observation_chars)
        prev: SimRequest | None = None
        for i, call in enumerate(calls):
            n_out = min(max_output_tokens, _tokens(call.expected_output))
            if prev is None:
                n_prompt, n_q = _tokens(call.segments[0]), _tokens("".join(call.segments[1:]))
                blocks = (names.blocks(("prompt", ep.prompt_id), n_prompt)
                          + names.blocks(("q", ep.episode_id), n_q))
                tokens = n_prompt + n_q
            else:
                obs = _tokens(calls[i - 1].followup)
                blocks = (prev.blocks + prev.output_blocks
                          + names.blocks(("obs", ep.episode_id, i), obs))
                tokens = prev.tokens + prev.output_tokens + obs
            req = SimRequest(next(rid), t if prev is None else -1.0, blocks, tokens, n_out,
                             names.blocks(("out", ep.episode_id, i), n_out),
                             session=ep.episode_id)
            if prev is None:
                firsts.append(req)
            else:
                prev.follow = (req, think_s)
            prev = req
    return firsts
