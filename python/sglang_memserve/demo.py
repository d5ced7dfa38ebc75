"""The main job: a MemServe cluster on an embedded model, a few chats replayed through it.

``python -m sglang_memserve.demo`` (``make demo``) starts ``memserve-router`` in front of one
prefill and one decode instance (PD-Caching-3: decode returns each finished request's KV to
prefill, so the next turn hits on the answer too) on SmolLM2-135M-Instruct (``--model smollm2``, a
real instruct model built from its PyPI wheel; ``tiny`` and ``bench`` are random-weight models
that answer noise). It sends a handful of multi-turn conversations (ShareGPT from
``../shared/data`` when present, else the shipped sample) through the router's OpenAI chat API,
each turn carrying the previous answers, and prints each answer with its time to first token
(streamed) and how much of its prompt was served from the cache, under a progress bar.
``--colocated`` serves from one colocated instance instead (no router).

:func:`replay_chats` does the replay against any base URL (one instance, or a router in front of
several), so other entry points can reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.model import MODELS, ensure_model
from sglang_memserve.pd import PdCluster, PdOptions
from sglang_memserve.pd.client import hit_tokens
from sglang_memserve.workloads import Conversation, load_sharegpt


@dataclass(frozen=True)
class TurnResult:
    """One answered turn: its text, timing and the prompt tokens the cache served."""

    conv_id: str
    turn: int
    question: str
    answer: str
    ttft_s: float
    latency_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def stream_chat(base_url: str, messages: list[dict[str, str]], max_new_tokens: int,
                headers: dict[str, str] | None = None, timeout: float = 300.0
                ) -> tuple[str, float, float, dict[str, Any]]:
    """One greedy streamed ``/v1/chat/completions`` call.

    Returns:
        (answer text, seconds to the first content token, seconds in all, the usage object of
        the final chunk: ``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details``).
    Raises:
        requests.HTTPError: the server refused the request.
    """
    body = {"model": "default", "messages": messages, "temperature": 0,
            "max_tokens": max_new_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    with requests.post(f"{base_url}/v1/chat/completions", json=body, stream=True,
                       timeout=timeout, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.perf_counter()
                    parts.append(text)
    end = time.perf_counter()
    return "".join(parts), (first or end) - start, end - start, usage


def replay_chats(base_url: str, conversations: Sequence[Conversation], max_new_tokens: int,
                 *, headers: dict[str, str] | None = None,
                 emit: Callable[[str], None] = print, width: int = 100) -> list[TurnResult]:
    """Replay each conversation turn by turn (each prompt carries the earlier answers) and print
    one block per turn: question, answer, TTFT, latency, prompt and cached tokens.

    Args:
        base_url: an OpenAI-compatible server or router (``http://host:port``).
        conversations: the chats (user turns only; answers come from the server).
        max_new_tokens: answer length cap per turn.
        headers: extra HTTP headers (e.g. a router's API key).
        emit: where lines go (default: stdout).
        width: characters of question and answer shown.
    Returns:
        The turns in the order they were sent.
    """
    results: list[TurnResult] = []
    for conv in conversations:
        emit(f"\n=== conversation {conv.id} ===")
        messages: list[dict[str, str]] = []
        for turn, question in enumerate(conv.user_turns):
            messages.append({"role": "user", "content": question})
            answer, ttft, latency, usage = stream_chat(base_url, messages, max_new_tokens,
                                                       headers)
            messages.append({"role": "assistant", "content": answer})
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            res = TurnResult(conv.id, turn, question, answer, ttft, latency,
                             int(usage.get("prompt_tokens", 0)), cached,
                             int(usage.get("completion_tokens", 0)))
            results.append(res)
            emit(f"user> {_clip(question, width)}")
            emit(f"  ai> {_clip(answer, width)}")
            emit(f"      TTFT {1000 * ttft:.0f} ms, {1000 * latency:.0f} ms in all, "
                 f"{res.completion_tokens} tokens; prompt {res.prompt_tokens} tokens, "
                 f"{cached} from cache")
    return results


def summary(results: Sequence[TurnResult]) -> str:
    """One line: prompt tokens, the share served from cache, mean TTFT of first vs later turns."""
    prompt = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)

    def mean_ttft(rs: list[TurnResult]) -> str:
        return f"{1000 * sum(r.ttft_s for r in rs) / len(rs):.0f} ms" if rs else "-"

    return (f"prompt tokens {prompt}, served from cache {cached} ({cached / max(prompt, 1):.0%}); "
            f"mean TTFT first turns {mean_ttft([r for r in results if r.turn == 0])}, "
            f"later turns {mean_ttft([r for r in results if r.turn > 0])}")


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[:width - 3] + "...")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--conversations", type=int, default=3)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-chars", type=int, default=300,
                   help="cut each user turn to this many characters (ShareGPT turns can be long)")
    p.add_argument("--colocated", action="store_true",
                   help="one colocated instance instead of the router + prefill + decode cluster")
    p.add_argument("--log-dir", type=Path, default=None)
    args = p.parse_args()

    convs = load_sharegpt(limit=args.conversations, min_turns=2, max_turns=args.turns,
                          max_chars=args.max_chars)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="memserve-demo-"))
    ensure_model(args.model)  # a first run builds the model (~30 s for smollm2)
    t0 = time.perf_counter()
    with _serving(args, log_dir) as (url, what, prefill_url):
        print(f"{what} on {args.model} up at {url} in {time.perf_counter() - t0:.1f}s "
              f"(logs: {log_dir})")
        before = hit_tokens(prefill_url) if prefill_url else 0
        turns = sum(len(c.user_turns) for c in convs)
        # The bar only where someone watches: piped output keeps just the per-turn lines.
        with tqdm(total=turns, unit="turn", leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            def emit(line: str) -> None:
                tqdm.write(line)
                if line.startswith("      TTFT"):
                    bar.update(1)

            results = replay_chats(url, convs, args.max_new_tokens, emit=emit)
        print("\n" + summary(results))
        if prefill_url:
            hit = hit_tokens(prefill_url) - before
            prompt = sum(r.prompt_tokens for r in results)
            print(f"prefill: {hit} of {prompt} prompt tokens came from its cache "
                  f"({hit / max(prompt, 1):.0%}), earlier answers included (returned by decode)")


@contextmanager
def _serving(args: argparse.Namespace, log_dir: Path) -> Iterator[tuple[str, str, str | None]]:
    """Yields (base URL, what serves it, the prefill instance's URL or None)."""
    if args.colocated:
        with ServerProcess(["--embedded-model", args.model], log_dir, name="memserve") as s:
            yield s.url, "MemServe instance", None
        return
    options = PdOptions(stage="caching3", common_args=("--embedded-model", args.model),
                        start_timeout=600.0)
    with PdCluster(options, log_dir) as pd:
        yield pd.url, "memserve-router + prefill + decode (PD-Caching-3)", pd.prefill.url


if __name__ == "__main__":
    main()
