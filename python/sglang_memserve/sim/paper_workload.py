"""paper_eval's workloads, token for token, as simulated requests.

``benchmarks/paper_eval.py`` builds its requests with :mod:`sglang_memserve.bench.paper`'s
loaders and the served model's tokenizer; this module calls the same loaders and encoders with
a round's recorded sizes and seed, so the simulator sees the same prompts (token ids), output
lengths and arrival schedule:

* ShareGPT and long-document QA (``bench.replay``): conversations start at
  ``arrival_times(n, rate, seed)``; turn ``k + 1`` is sent when turn ``k``'s answer is complete
  (no think time) and its prompt is turn ``k``'s prompt + answer + ``ChatEncoder.follow_up``.
* ReAct (``bench.sessions.react_sessions``): episodes start at Poisson times from the same
  seed; an ``append`` call carries the previous prompt + answer + its suffix.
* Mooncake (``trace_sessions``): one call per request at its recorded time / speed-up.

The server's answers are not in the records (random-weight model, ids dropped), only their
lengths; each answer token is a fresh placeholder id, which is all the cache can see of it.
Prompts become pages of ``page_tokens`` ids, each page named by everything before and in it
(as a radix tree keys it), so equal prefixes give equal pages. SGLang caches full pages only:
a partial last page is the page of the prompt + answer stream at that place, which only a
later turn that carries the answer can match.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sglang_memserve.bench.paper import EvalSizes
from sglang_memserve.bench.replay import ChatEncoder, arrival_times
from sglang_memserve.bench.sessions import Session, react_sessions, trace_sessions
from sglang_memserve.workloads import load_longdoc, load_react, load_sharegpt
from sglang_memserve.workloads.trace import load_trace

from .workload import SimRequest


@dataclass(frozen=True)
class Call:
    """One request of a replay before it becomes pages.

    Attributes:
        conv_id / turn: as the run's records name it.
        prompt: token ids (an earlier answer's tokens are placeholders, negative ids).
        output_tokens: tokens generated (``ignore_eos``: exactly this many).
        answer: their placeholder ids (the next call of an appending session carries them).
        start_s: first call of a session: its send time; later calls: None (closed loop).
    """

    conv_id: str
    turn: int
    prompt: tuple[int, ...]
    output_tokens: int
    answer: tuple[int, ...]
    start_s: float | None


class _Answers:
    """Fresh placeholder ids for generated tokens (negative: no real token id is)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def take(self, n: int) -> tuple[int, ...]:
        return tuple(-next(self._next) for _ in range(n))


def _chat(convs: Sequence[Any], tok: Any, rate: float, seed: int, cap: int,
          dataset_len: bool) -> list[list[Call]]:
    """``bench.replay``'s conversations: per conversation, its calls in order."""
    enc, ans = ChatEncoder(tok), _Answers()
    out = []
    for conv, start in zip(convs, arrival_times(len(convs), rate, seed), strict=True):
        ids: tuple[int, ...] = ()
        calls = []
        for turn, user in enumerate(conv.user_turns):
            ids = ids + tuple(enc.follow_up(user)) if ids else tuple(enc.first(user))
            n = cap
            if dataset_len and turn < len(conv.reference_answers):
                n = enc.answer_len(conv.reference_answers[turn], cap)
            answer = ans.take(n)
            calls.append(Call(conv.id, turn, ids, n, answer, start if turn == 0 else None))
            ids = ids + answer
        out.append(calls)
    return out


def _sessions(sessions: Sequence[Session], rate: float, seed: int) -> list[list[Call]]:
    """``bench.sessions``' replay: Poisson starts for sessions without their own time."""
    poisson = iter(arrival_times(len(sessions), rate, seed))
    starts = [next(poisson) if s.start_s is None else s.start_s for s in sessions]
    ans = _Answers()
    out = []
    for s, start in zip(sessions, starts, strict=True):
        ids: tuple[int, ...] = ()
        calls = []
        for i, c in enumerate(s.calls):
            ids = ids + tuple(c.ids) if c.append else tuple(c.ids)
            answer = ans.take(c.max_new_tokens)
            calls.append(Call(s.id, i, ids, c.max_new_tokens, answer, start if i == 0 else None))
            ids = ids + answer
        out.append(calls)
    return out


def paper_calls(name: str, sizes: EvalSizes, tok: Any, seed: int) -> list[list[Call]]:
    """Workload ``name`` of a paper_eval run with ``sizes`` and ``seed`` (data files: the data
    directory's, as paper_eval's defaults), as sessions of calls.

    Raises:
        ValueError: an unknown workload.
    """
    s = sizes
    if name == "sharegpt":
        convs = load_sharegpt(None, limit=s.sharegpt_conversations, min_turns=2,
                              max_turns=s.sharegpt_turns, max_chars=s.sharegpt_chars)
        return _chat(convs, tok, s.sharegpt_rate, seed, s.sharegpt_new, dataset_len=True)
    if name == "longdoc":
        convs = load_longdoc(None, docs=s.longdoc_docs, questions_per_doc=s.longdoc_questions,
                             max_context_chars=s.longdoc_chars)
        return _chat(convs, tok, s.longdoc_rate, seed, s.longdoc_new, dataset_len=False)
    if name == "react":
        episodes, prompts = load_react(None, None, limit=s.react_episodes,
                                       max_steps=s.react_steps)
        sessions = react_sessions(episodes, prompts, tok, max_new_tokens=s.react_new,
                                  history=s.react_history,
                                  max_observation_chars=s.react_obs_chars,
                                  max_prompt_tokens=s.react_max_prompt)
        return _sessions(sessions, s.react_rate, seed)
    if name == "mooncake":
        trace = load_trace(None, limit=s.trace_requests, seed=seed)
        sessions = trace_sessions(trace, block_tokens=s.trace_block_tokens,
                                  speedup=s.trace_speedup, max_new_tokens=s.trace_new,
                                  max_prompt_tokens=s.trace_max_prompt)
        return _sessions(sessions, 1.0, seed)
    raise ValueError(f"unknown paper_eval workload {name!r}")


class _Pages:
    """Page ids: a page is named by its parent page and its own tokens (a radix path)."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, tuple[int, ...]], int] = {}

    def of(self, stream: Sequence[int], size: int, n_pages: int) -> Iterator[int]:
        parent = 0
        for j in range(n_pages):
            key = (parent, tuple(stream[j * size:(j + 1) * size]))
            parent = self._ids.setdefault(key, len(self._ids) + 1)
            yield parent


def to_requests(sessions: Sequence[Sequence[Call]], page_tokens: int = 16) -> list[SimRequest]:
    """Sessions of calls -> the simulator's first turns (``follow`` chains, no think time).

    A call's pages are those of its prompt + answer stream (module docstring): ``blocks`` the
    first ``ceil(prompt / page)``, ``output_blocks`` the rest; a stream's partial last page is
    its own (never matched). ``rid`` numbers calls in session order.
    """
    pages = _Pages()
    fresh = itertools.count(-1, -1)  # partial last pages: ids no full page has
    rid = itertools.count()
    firsts = []
    for calls in sessions:
        prev: SimRequest | None = None
        for c in calls:
            stream = c.prompt + c.answer
            ids = list(pages.of(stream, page_tokens, len(stream) // page_tokens))
            if len(stream) % page_tokens:
                ids.append(next(fresh))
            k = -(-len(c.prompt) // page_tokens)
            req = SimRequest(next(rid), c.start_s if c.start_s is not None else -1.0,
                             tuple(ids[:k]), len(c.prompt), c.output_tokens, tuple(ids[k:]),
                             session=c.conv_id)
            if prev is None:
                firsts.append(req)
            else:
                prev.follow = (req, 0.0)
            prev = req
    return firsts
