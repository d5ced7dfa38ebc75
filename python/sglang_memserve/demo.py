"""The main job on the embedded default: start one MemServe instance and replay a few chats.

``python -m sglang_memserve.demo`` starts a colocated instance on the embedded model, sends a
handful of multi-turn conversations (ShareGPT from ``../shared/data`` when present, else the
shipped sample) through the OpenAI-compatible chat API, each turn carrying the previous answer,
and prints each answer with its latency and how much of its prompt was served from the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.workloads import load_sharegpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "bench"), default="tiny")
    p.add_argument("--conversations", type=int, default=4)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--log-dir", type=Path, default=None)
    args = p.parse_args()

    convs = load_sharegpt(limit=args.conversations, min_turns=2, max_turns=args.turns,
                          max_chars=600)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="memserve-demo-"))
    t0 = time.perf_counter()
    with ServerProcess(["--embedded-model", args.model], log_dir, name="memserve") as server:
        print(f"MemServe instance up at {server.url} in {time.perf_counter() - t0:.1f}s "
              f"(log: {server.log_path})")
        total_prompt = total_cached = 0
        for conv in convs:
            print(f"\n=== conversation {conv.id} ===")
            messages: list[dict[str, str]] = []
            for turn in conv.user_turns:
                messages.append({"role": "user", "content": turn})
                start = time.perf_counter()
                r = requests.post(f"{server.url}/v1/chat/completions", timeout=300, json={
                    "model": "default", "messages": messages, "temperature": 0,
                    "max_tokens": args.max_new_tokens})
                r.raise_for_status()
                body = r.json()
                answer = body["choices"][0]["message"]["content"]
                usage = body["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                total_prompt += usage["prompt_tokens"]
                total_cached += cached
                messages.append({"role": "assistant", "content": answer})
                print(f"user> {turn[:70]!r}")
                print(f"  ai> {answer[:70]!r}")
                print(f"      {1000 * (time.perf_counter() - start):.0f} ms, prompt "
                      f"{usage['prompt_tokens']} tokens, {cached} from cache")
        print(f"\nprompt tokens {total_prompt}, served from cache {total_cached} "
              f"({total_cached / max(total_prompt, 1):.0%})")


if __name__ == "__main__":
    main()
